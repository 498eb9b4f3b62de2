package fakehub

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
)

// maxRecordedBody caps how much of a request body is kept, so tests that
// upload large bodies do not balloon memory.
const maxRecordedBody = 1 << 20

// Request is one request as received by the Hub or the CDN.
type Request struct {
	Server     string // "hub" or "cdn"
	Method     string
	Host       string
	RequestURI string      // as sent on the wire (escaped)
	Header     http.Header // full headers, including Authorization
	Body       []byte      // first 1 MiB of the body
}

// recorder keeps the request log and the body-fetch counters tests use to
// prove caching (e.g. "the CDN served this blob once").
type recorder struct {
	mu           sync.Mutex
	reqs         []Request
	cdnFetches   map[string]int // sha256 -> 2xx GETs on the CDN
	smallFetches map[string]int // commit + "\x00" + path -> 2xx GETs on /api/resolve-cache
}

func (rc *recorder) add(req Request) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.reqs = append(rc.reqs, req)
}

func (rc *recorder) inc(counter *map[string]int, key string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if *counter == nil {
		*counter = map[string]int{}
	}
	(*counter)[key]++
}

func (rc *recorder) get(counter *map[string]int, key string) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return (*counter)[key]
}

// record logs every request before the handler runs, so even requests the
// handler answers by dropping the connection are visible to tests.
func (h *Hub) record(server string, next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A read error is not fatal here: the handler reads the same stream
		// and meets the same error, which is what the client caused.
		body, _ := io.ReadAll(io.LimitReader(r.Body, maxRecordedBody))
		// Hand the handler the full body again: recorded prefix, then the rest.
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(body), r.Body), r.Body}
		h.rec.add(Request{
			Server:     server,
			Method:     r.Method,
			Host:       r.Host,
			RequestURI: r.RequestURI,
			Header:     r.Header.Clone(),
			Body:       body,
		})
		next(w, r)
	})
}

// Requests returns every request both servers received, in arrival order.
func (h *Hub) Requests() []Request {
	h.rec.mu.Lock()
	defer h.rec.mu.Unlock()
	out := make([]Request, len(h.rec.reqs))
	for i, r := range h.rec.reqs {
		r.Header = r.Header.Clone()
		out[i] = r
	}
	return out
}

// CDNBodyFetches counts CDN GETs for the blob with this sha256 that were
// answered 2xx (full or ranged). It is incremented when the status is sent,
// so a response blocked by GateBlob is already counted.
func (h *Hub) CDNBodyFetches(sha256hex string) int {
	return h.rec.get(&h.rec.cdnFetches, sha256hex)
}

// SmallBodyFetches counts GETs (not HEADs) on /api/resolve-cache/... for the
// small file at commit/path that were answered 2xx.
func (h *Hub) SmallBodyFetches(commit, path string) int {
	return h.rec.get(&h.rec.smallFetches, commit+"\x00"+path)
}

// Count counts recorded requests of server ("hub" or "cdn") with this method
// whose unescaped URL path starts with pathPrefix. An empty server or method
// matches any.
func (h *Hub) Count(server, method, pathPrefix string) int {
	n := 0
	for _, r := range h.Requests() {
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
