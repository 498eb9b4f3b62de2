package fakecivitai

import (
	"net/http"
	"net/url"
	"strings"
	"sync"
)

// Request is one request as received by one of the three servers.
type Request struct {
	Server     string // "api", "r2" or "b2"
	Method     string
	Host       string
	RequestURI string      // as sent on the wire (escaped), including the query
	Header     http.Header // full headers, including Authorization
}

// recorder keeps the request log and the storage fetch counters tests use to
// prove caching (e.g. "storage served this file once").
type recorder struct {
	mu      sync.Mutex
	reqs    []Request
	fetches map[int]int // file id -> 2xx GETs on either storage
}

func (rc *recorder) add(req Request) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.reqs = append(rc.reqs, req)
}

func (rc *recorder) incFetch(fileID int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.fetches == nil {
		rc.fetches = map[int]int{}
	}
	rc.fetches[fileID]++
}

// record logs every request before the handler runs, so even requests the
// handler never answers are visible to tests.
func (c *CivitAI) record(server string, next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.rec.add(Request{
			Server:     server,
			Method:     r.Method,
			Host:       r.Host,
			RequestURI: r.RequestURI,
			Header:     r.Header.Clone(),
		})
		next(w, r)
	})
}

// Requests returns every request the three servers received, in arrival
// order. The headers are copies.
func (c *CivitAI) Requests() []Request {
	c.rec.mu.Lock()
	defer c.rec.mu.Unlock()
	out := make([]Request, len(c.rec.reqs))
	for i, r := range c.rec.reqs {
		r.Header = r.Header.Clone()
		out[i] = r
	}
	return out
}

// StorageFetches counts GETs (not HEADs) on either storage server for the
// file with this id that were answered 2xx (200 or 206). It is incremented
// when the status is sent, so a response blocked by GateFile is already
// counted.
func (c *CivitAI) StorageFetches(fileID int) int {
	c.rec.mu.Lock()
	defer c.rec.mu.Unlock()
	return c.rec.fetches[fileID]
}

// Count counts recorded requests of server ("api", "r2" or "b2") with this
// method whose unescaped URL path starts with pathPrefix. An empty server or
// method matches any.
func (c *CivitAI) Count(server, method, pathPrefix string) int {
	n := 0
	for _, r := range c.Requests() {
		if server != "" && r.Server != server || method != "" && r.Method != method {
			continue
		}
		u, err := url.ParseRequestURI(r.RequestURI)
		if err != nil {
			continue
		}
		if strings.HasPrefix(u.Path, pathPrefix) {
			n++
		}
	}
	return n
}

// statusWriter remembers the status and reports it once, when the header is
// sent, so counters see a response the moment the client can.
type statusWriter struct {
	http.ResponseWriter
	status   int
	onStatus func(status int)
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 && code >= 200 {
		s.status = code
		if s.onStatus != nil {
			s.onStatus(code)
		}
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(p []byte) (int, error) {
	if s.status == 0 {
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
