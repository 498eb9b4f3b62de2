package upstream

import (
	"crypto/tls"
	"net/http"
	"slices"
)

// FillSplit sends blob fill requests (see ForFill) over an HTTP/1.1-only
// transport and every other request over the one it was made from.
//
// A parallel fill opens several ranged requests to one CDN host so that
// each gets its own TCP connection (a CDN caps each connection, and one
// connection has one congestion window). Over HTTP/2 they would all be
// streams of a single connection — the client's flow-control window caps
// each stream as well — defeating the parallelism and making the per-host
// connection cap count streams. Metadata requests are small and many:
// they keep HTTP/2's multiplexing.
type FillSplit struct {
	Meta, Fill *http.Transport
}

// SplitFills returns a FillSplit over t and an HTTP/1.1-only clone of it
// (same dialer, proxy, roots and timeouts; its own connection pool).
func SplitFills(t *http.Transport) *FillSplit {
	fill := t.Clone()
	fill.ForceAttemptHTTP2 = false
	// A non-nil empty map turns HTTP/2 off; ALPN must not offer it either,
	// or a server could pick h2 for a connection the transport then
	// speaks HTTP/1.1 on.
	fill.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	fill.Protocols = new(http.Protocols)
	fill.Protocols.SetHTTP1(true)
	if fill.TLSClientConfig != nil {
		fill.TLSClientConfig.NextProtos = slices.DeleteFunc(slices.Clone(fill.TLSClientConfig.NextProtos), func(p string) bool { return p == "h2" })
	}
	return &FillSplit{Meta: t, Fill: fill}
}

// RoundTrip implements http.RoundTripper.
func (s *FillSplit) RoundTrip(req *http.Request) (*http.Response, error) {
	if isFill(req.Context()) {
		return s.Fill.RoundTrip(req)
	}
	return s.Meta.RoundTrip(req)
}

// CloseIdleConnections closes the idle connections of both transports.
func (s *FillSplit) CloseIdleConnections() {
	s.Meta.CloseIdleConnections()
	s.Fill.CloseIdleConnections()
}
