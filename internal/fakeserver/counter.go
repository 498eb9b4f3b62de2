package fakeserver

import (
	"fmt"
	"net/http"
	"slices"
	"sync"
)

// Counter counts, per key (a blob hash, a file id), the bodies a fake
// served: the figure tests use to prove caching, e.g. "storage served this
// file once". The zero value is ready to use; a Counter must not be copied
// after first use. All methods are safe for concurrent use.
type Counter[K comparable] struct {
	mu    sync.Mutex
	n     map[K]int
	spans map[K][][2]int64 // body bytes sent per 2xx GET: [start, end)
}

// Bytes is how many body bytes the counted answers for key carried (as far
// as the fake wrote them before the answer ended or was cut).
func (c *Counter[K]) Bytes(key K) int64 {
	var n int64
	for _, sp := range c.Spans(key) {
		n += sp[1] - sp[0]
	}
	return n
}

// Spans returns the byte ranges of the blob the counted answers for key
// carried, one per answer, [start, end), in the order the answers began.
// With them a test can assert that no byte was fetched twice.
func (c *Counter[K]) Spans(key K) [][2]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.spans[key])
}

// grow records n more body bytes for answer i of key.
func (c *Counter[K]) grow(key K, i int, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.spans[key][i][1] += n
}

// Get is how many times key was counted.
func (c *Counter[K]) Get(key K) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

// inc counts an answer for key whose body starts at byte start, and
// returns its index among key's spans.
func (c *Counter[K]) inc(key K, start int64) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[K]int{}
		c.spans = map[K][][2]int64{}
	}
	c.n[key]++
	c.spans[key] = append(c.spans[key], [2]int64{start, start})
	return len(c.spans[key]) - 1
}

// CountGET returns w wrapped so that key is counted if r is a GET answered
// 2xx (full or ranged); HEADs, errors and 304s do not count. The count is
// taken when the status is sent, not when the body ends, so an answer held
// by a gate already counts and a test can assert on it meanwhile.
func (c *Counter[K]) CountGET(w http.ResponseWriter, r *http.Request, key K) http.ResponseWriter {
	if r.Method != http.MethodGet {
		return w
	}
	sw := &statusWriter{ResponseWriter: w}
	span := -1
	sw.onStatus = func(status int) {
		if status/100 == 2 {
			var start, last, total int64
			if status == http.StatusPartialContent {
				fmt.Sscanf(w.Header().Get("Content-Range"), "bytes %d-%d/%d", &start, &last, &total)
			}
			span = c.inc(key, start)
		}
	}
	sw.onWrite = func(n int) {
		if span >= 0 && n > 0 {
			c.grow(key, span, int64(n))
		}
	}
	return sw
}

// statusWriter reports the final status once, when the header is sent, so
// counters see a response the moment the client can.
type statusWriter struct {
	http.ResponseWriter
	sent     bool
	onStatus func(status int)
	onWrite  func(n int) // body bytes written, if set
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
	n, err := s.ResponseWriter.Write(p)
	if s.onWrite != nil {
		s.onWrite(n)
	}
	return n, err
}

// FlushError lets http.ResponseController flush through the wrapper.
func (s *statusWriter) FlushError() error {
	return http.NewResponseController(s.ResponseWriter).Flush()
}

// Unwrap exposes the underlying writer to http.ResponseController.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
