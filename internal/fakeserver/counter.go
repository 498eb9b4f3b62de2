package fakeserver

import (
	"net/http"
	"sync"
)

// Counter counts, per key (a blob hash, a file id), the bodies a fake
// served: the figure tests use to prove caching, e.g. "storage served this
// file once". The zero value is ready to use; a Counter must not be copied
// after first use. All methods are safe for concurrent use.
type Counter[K comparable] struct {
	mu sync.Mutex
	n  map[K]int
}

// Get is how many times key was counted.
func (c *Counter[K]) Get(key K) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

func (c *Counter[K]) inc(key K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[K]int{}
	}
	c.n[key]++
}

// CountGET returns w wrapped so that key is counted if r is a GET answered
// 2xx (full or ranged); HEADs, errors and 304s do not count. The count is
// taken when the status is sent, not when the body ends, so an answer held
// by a gate already counts and a test can assert on it meanwhile.
func (c *Counter[K]) CountGET(w http.ResponseWriter, r *http.Request, key K) http.ResponseWriter {
	if r.Method != http.MethodGet {
		return w
	}
	return &statusWriter{ResponseWriter: w, onStatus: func(status int) {
		if status/100 == 2 {
			c.inc(key)
		}
	}}
}

// statusWriter reports the final status once, when the header is sent, so
// counters see a response the moment the client can.
type statusWriter struct {
	http.ResponseWriter
	sent     bool
	onStatus func(status int)
}

func (s *statusWriter) WriteHeader(code int) {
	if !s.sent && code >= 200 {
		s.sent = true
		s.onStatus(code)
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(p []byte) (int, error) {
	if !s.sent {
		s.WriteHeader(http.StatusOK)
	}
	return s.ResponseWriter.Write(p)
}

// FlushError lets http.ResponseController flush through the wrapper.
func (s *statusWriter) FlushError() error {
	return http.NewResponseController(s.ResponseWriter).Flush()
}

// Unwrap exposes the underlying writer to http.ResponseController.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
