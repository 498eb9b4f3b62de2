package fakeserver

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Client returns an HTTP client for tests that talk to the servers
// directly: it trusts them, does not follow redirects (tests assert each
// hop), does not ask for gzip (bodies and lengths stay as served) and gives
// up after 30 s rather than hang a broken test. Its idle connections are
// closed when t ends.
func (s *Servers) Client(t testing.TB) *http.Client {
	c := &http.Client{
		Transport: &http.Transport{
			TLSClientConfig:    &tls.Config{RootCAs: s.CertPool()},
			DisableCompression: true,
			// Public names reach their servers, like curl --resolve.
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if to, ok := s.resolve[strings.ToLower(addr)]; ok {
					addr = to
				}
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// Fetch sends req with c and reads the whole answer, failing t on any
// transport error. The body is closed; status and headers stay usable.
func Fetch(t testing.TB, c *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", req.Method, req.URL, err)
	}
	return resp, b
}

// ReadGated reads a body that a gate holds after `after` bytes (see
// Faults.Gate): it reads those bytes, checks that nothing more arrives for
// a while, calls release and reads the rest. It returns the whole body and
// fails t if the gate let bytes through early or never opened.
func ReadGated(t testing.TB, body io.Reader, after int, release func()) []byte {
	t.Helper()
	head := make([]byte, after)
	if _, err := io.ReadFull(body, head); err != nil {
		t.Fatalf("reading the %d bytes before the gate: %v", after, err)
	}
	type result struct {
		b   []byte
		err error
	}
	rest := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(body)
		rest <- result{b, err}
	}()
	select {
	case <-rest:
		t.Fatal("the body continued before release")
	case <-time.After(200 * time.Millisecond):
	}
	release()
	select {
	case r := <-rest:
		if r.err != nil {
			t.Fatalf("reading the body after release: %v", r.err)
		}
		return append(head, r.b...)
	case <-time.After(10 * time.Second):
		t.Fatal("the body is still held after release")
		return nil
	}
}
