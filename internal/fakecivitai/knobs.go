package fakecivitai

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
)

// corruptTail is how many trailing bytes CorruptFile flips: enough to break
// any hash, late enough that a streaming verifier only notices at the end.
const corruptTail = 4 << 10

// errClosing aborts in-flight storage responses when the test ends, so the
// servers' Close does not wait for a gate nobody will release.
var errClosing = errors.New("fakecivitai: shutting down")

// fileKnobs are the fault knobs of one file; the zero value is "healthy".
type fileKnobs struct {
	corrupt bool
	gate    *gate
}

// gate holds full GETs of a file after a byte offset until released.
type gate struct {
	after    int64
	released chan struct{}
	once     sync.Once
}

// updateKnobs edits the knobs of a file under the lock and drops entries
// that went back to the zero value.
func (c *CivitAI) updateKnobs(fileID int, edit func(k *fileKnobs)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := c.knobs[fileID]
	if k == nil {
		k = &fileKnobs{}
	}
	edit(k)
	if *k == (fileKnobs{}) {
		delete(c.knobs, fileID)
		return
	}
	c.knobs[fileID] = k
}

// knobsFor returns a copy of the knobs of a file.
func (c *CivitAI) knobsFor(fileID int) fileKnobs {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if k := c.knobs[fileID]; k != nil {
		return *k
	}
	return fileKnobs{}
}

// CorruptFile makes storage serve the file with the same length but its
// last 4 KiB (or all of it, when smaller) inverted, on full and ranged
// requests, until switched off. The published SHA256 then mismatches.
func (c *CivitAI) CorruptFile(fileID int, on bool) {
	c.updateKnobs(fileID, func(k *fileKnobs) { k.corrupt = on })
}

// GateFile makes every full (non-Range) storage GET of the file that starts
// before release is called write its first `after` bytes, flush, and block
// until release() (or until the request's context ends, or the test ends).
// release is idempotent and also removes the gate for later requests.
// Ranged GETs are not gated.
func (c *CivitAI) GateFile(fileID int, after int64) (release func()) {
	g := &gate{after: max(after, 0), released: make(chan struct{})}
	c.updateKnobs(fileID, func(k *fileKnobs) { k.gate = g })
	return func() {
		g.once.Do(func() { close(g.released) })
		c.updateKnobs(fileID, func(k *fileKnobs) {
			if k.gate == g {
				k.gate = nil
			}
		})
	}
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

// corruptReaderAt reads data with every byte from `from` on inverted, without
// copying the (possibly huge) file.
type corruptReaderAt struct {
	data []byte
	from int64
}

func (cr corruptReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(cr.data)) {
		return 0, io.EOF
	}
	n := copy(p, cr.data[off:])
	for i := range n {
		if off+int64(i) >= cr.from {
			p[i] ^= 0xff
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// gateWriter passes the first g.after bytes, flushes them, then blocks until
// the gate is released.
type gateWriter struct {
	http.ResponseWriter
	ctx     context.Context
	closing <-chan struct{}
	g       *gate
	written int64
	open    bool
}

func (gw *gateWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if !gw.open && gw.written >= gw.g.after {
			if err := http.NewResponseController(gw.ResponseWriter).Flush(); err != nil {
				return n, err
			}
			select {
			case <-gw.g.released:
				gw.open = true
			case <-gw.ctx.Done():
				return n, gw.ctx.Err()
			case <-gw.closing:
				return n, errClosing
			}
		}
		chunk := p
		if !gw.open {
			chunk = p[:min(int64(len(p)), gw.g.after-gw.written)]
		}
		m, err := gw.ResponseWriter.Write(chunk)
		n += m
		gw.written += int64(m)
		p = p[m:]
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Unwrap exposes the underlying writer to http.ResponseController.
func (gw *gateWriter) Unwrap() http.ResponseWriter { return gw.ResponseWriter }
