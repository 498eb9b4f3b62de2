package fakecivitai

// CorruptFile makes storage serve the file with the same length but its
// last 4 KiB (or all of it, when smaller) inverted, on full and ranged
// requests, until switched off. The published SHA256 then mismatches.
func (c *CivitAI) CorruptFile(fileID int, on bool) { c.faults.Corrupt(fileID, on) }

// GateFile makes every full (non-Range) storage GET of the file that starts
// before release is called write its first `after` bytes, flush, and block
// until release() (or until the request's context ends, or the test ends).
// release is idempotent and also removes the gate for later requests.
// Ranged GETs are not gated.
func (c *CivitAI) GateFile(fileID int, after int64) (release func()) {
	return c.faults.Gate(fileID, after)
}

// LoginRedirect makes every download of the version answer a 307 to
// /login?returnUrl=%2Fmodel-versions%2F{id}&reason=download-auth whatever the
// User-Agent and key, the answer a browser gets from the real service when it
// is not logged in. GET /login answers 200 text/html, so a client that
// follows redirects saves an HTML page.
func (c *CivitAI) LoginRedirect(versionID int, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if on {
		c.loginRedirect[versionID] = true
	} else {
		delete(c.loginRedirect, versionID)
	}
}

func (c *CivitAI) loginRedirectOn(versionID int) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.loginRedirect[versionID]
}
