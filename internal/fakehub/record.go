package fakehub

import "net/http"

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

// smallKey names a small file for SmallBodyFetches.
type smallKey struct{ commit, path string }

// Requests returns every request both servers received, in arrival order.
// Every request is recorded before it is answered, so even those the Hub
// answers by dropping the connection (SetDown) are here.
func (h *Hub) Requests() []Request {
	recorded := h.srv.Requests()
	out := make([]Request, len(recorded))
	for i, r := range recorded {
		out[i] = Request(r)
	}
	return out
}

// CDNBodyFetches counts CDN GETs for the blob with this sha256 that were
// answered 2xx (full or ranged). It is incremented when the status is sent,
// so a response blocked by GateBlob is already counted.
func (h *Hub) CDNBodyFetches(sha256hex string) int { return h.cdnFetches.Get(sha256hex) }

// CDNBodyBytes is how many body bytes the CDN sent for the blob, over all
// its 2xx GETs (full and ranged).
func (h *Hub) CDNBodyBytes(sha256hex string) int64 { return h.cdnFetches.Bytes(sha256hex) }

// CDNBodySpans is the byte range [start, end) each 2xx GET of the blob on
// the CDN carried, in the order they began.
func (h *Hub) CDNBodySpans(sha256hex string) [][2]int64 { return h.cdnFetches.Spans(sha256hex) }

// SmallBodyFetches counts GETs (not HEADs) on /api/resolve-cache/... for the
// small file at commit/path that were answered 2xx.
func (h *Hub) SmallBodyFetches(commit, path string) int {
	return h.smallFetches.Get(smallKey{commit, path})
}

// Count counts recorded requests of server ("hub" or "cdn") with this method
// whose unescaped URL path starts with pathPrefix. An empty server or method
// matches any.
func (h *Hub) Count(server, method, pathPrefix string) int {
	return h.srv.Count(server, method, pathPrefix)
}
