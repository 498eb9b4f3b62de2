package fakeserver

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Request is one request as received by one of the servers.
type Request struct {
	Server     string // the Server.Name that received it
	Method     string
	Host       string
	RequestURI string      // as sent on the wire (escaped), including the query
	Header     http.Header // full headers, including Authorization
	Body       []byte      // the first Config.MaxBody bytes of the body
}

// record logs every request before the handler runs, so even requests the
// handler answers by dropping the connection are visible to tests.
func (s *Servers) record(server string, next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body []byte
		if s.maxBody > 0 {
			// A read error is not fatal here: the handler reads the same
			// stream and meets the same error, which is what the client
			// caused.
			body, _ = io.ReadAll(io.LimitReader(r.Body, int64(s.maxBody)))
			// Hand the handler the full body again: recorded prefix, then
			// the rest.
			r.Body = struct {
				io.Reader
				io.Closer
			}{io.MultiReader(bytes.NewReader(body), r.Body), r.Body}
		}
		req := Request{
			Server:     server,
			Method:     r.Method,
			Host:       r.Host,
			RequestURI: r.RequestURI,
			Header:     r.Header.Clone(),
			Body:       body,
		}
		s.mu.Lock()
		s.reqs = append(s.reqs, req)
		s.mu.Unlock()
		next(w, r)
	})
}

// Requests returns every request the servers received, in arrival order.
// The headers are copies, so callers may edit them.
func (s *Servers) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.reqs))
	for i, r := range s.reqs {
		r.Header = r.Header.Clone()
		out[i] = r
	}
	return out
}

// Count counts recorded requests of server with this method whose unescaped
// URL path starts with pathPrefix. An empty server or method matches any.
func (s *Servers) Count(server, method, pathPrefix string) int {
	n := 0
	for _, r := range s.Requests() {
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
