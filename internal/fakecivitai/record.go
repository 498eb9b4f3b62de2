package fakecivitai

import "net/http"

// Request is one request as received by one of the three servers.
type Request struct {
	Server     string // "api", "r2" or "b2"
	Method     string
	Host       string
	RequestURI string      // as sent on the wire (escaped), including the query
	Header     http.Header // full headers, including Authorization
}

// Requests returns every request the three servers received, in arrival
// order. The headers are copies.
func (c *CivitAI) Requests() []Request {
	recorded := c.srv.Requests()
	out := make([]Request, len(recorded))
	for i, r := range recorded {
		out[i] = Request{Server: r.Server, Method: r.Method, Host: r.Host, RequestURI: r.RequestURI, Header: r.Header}
	}
	return out
}

// StorageFetches counts GETs (not HEADs) on either storage server for the
// file with this id that were answered 2xx (200 or 206). It is incremented
// when the status is sent, so a response blocked by GateFile is already
// counted.
func (c *CivitAI) StorageFetches(fileID int) int { return c.fetches.Get(fileID) }

// Count counts recorded requests of server ("api", "r2" or "b2") with this
// method whose unescaped URL path starts with pathPrefix. An empty server or
// method matches any.
func (c *CivitAI) Count(server, method, pathPrefix string) int {
	return c.srv.Count(server, method, pathPrefix)
}
