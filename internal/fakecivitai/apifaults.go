package fakecivitai

import "net/http"

// FailAPI makes the next `times` requests to the API server (not the
// storage hosts) answer status with CivitAI's JSON error, like an
// overloaded or broken CivitAI.
func (c *CivitAI) FailAPI(status, times int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.apiFail = apiFault{status: status, times: times}
}

// apiFault is an armed FailAPI.
type apiFault struct{ status, times int }

// takeAPIFault uses up one armed API failure, if any.
func (c *CivitAI) takeAPIFault() (apiFault, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.apiFail.times <= 0 {
		return apiFault{}, false
	}
	c.apiFail.times--
	return c.apiFail, true
}

// serveAPIFault answers with an armed failure and reports whether it did.
func (c *CivitAI) serveAPIFault(w http.ResponseWriter, r *http.Request) bool {
	f, ok := c.takeAPIFault()
	if ok {
		writeJSON(w, r, f.status, errorJSON{Error: http.StatusText(f.status)})
	}
	return ok
}
