package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/config"
)

// hitCounter is a plain-HTTP origin on loopback that counts what reaches
// it: a stand-in for anything on the LAN a worker must not reach through
// the gateway.
func hitCounter(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.WriteString(w, "internal secret\n")
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

// interceptedConn opens a CONNECT to target through the gateway and
// completes TLS with the gateway's leaf for it; proxyAuth, when not empty,
// is the Proxy-Authorization header value.
func interceptedConn(t *testing.T, g *gatewayUnderTest, target, proxyAuth string) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(g.URL, "http://"), 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	hdr := ""
	if proxyAuth != "" {
		hdr = "Proxy-Authorization: " + proxyAuth + "\r\n"
	}
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", target, target, hdr)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "CONNECT %s", target)
	pem, err := os.ReadFile(g.caFile())
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pem))
	host, _, _ := net.SplitHostPort(target)
	tc := tls.Client(conn, &tls.Config{RootCAs: pool, ServerName: host, NextProtos: []string{"http/1.1"}})
	require.NoError(t, tc.Handshake())
	return tc, bufio.NewReader(tc)
}

// Item 4 of the security review: inside an intercepted CONNECT, an
// absolute-form request line naming another host was relayed there, which
// made the gateway an open HTTP proxy despite proxy.tunnel: deny.
func TestInterceptionOnlyReachesItsConnectTarget(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	origin, hits := hitCounter(t)
	g := startGateway(t, tr.hub, func(c *config.Config) {
		c.Proxy.Tunnel = "deny"
		// So that the private-address guard cannot be what stops it.
		c.Proxy.AllowPrivateTargets = true
	})
	// The origin itself is refused as a tunnel and as a plain proxy request.
	assert.Equal(t, "403", connectFrom(t, g, "127.0.0.1", strings.TrimPrefix(origin.URL, "http://")))

	for _, target := range []string{"cdn-lfs.hf.co:443", "huggingface.co:443", "cdn.civitai.com:443", "router.huggingface.co:443"} {
		t.Run(target, func(t *testing.T) {
			tc, br := interceptedConn(t, g, target, "")
			fmt.Fprintf(tc, "GET %s/latest/meta-data HTTP/1.1\r\nHost: %s\r\n\r\n", origin.URL, strings.TrimPrefix(origin.URL, "http://"))
			resp, err := http.ReadResponse(br, nil)
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			assert.Equal(t, http.StatusForbidden, resp.StatusCode, "%s", body)
			assert.NotContains(t, string(body), "internal secret")
			assert.Zero(t, hits.Load(), "the other host was reached from inside the interception")
		})
	}

	// An absolute-form request naming the CONNECT target itself is served.
	tc, br := interceptedConn(t, g, "huggingface.co:443", "")
	fmt.Fprintf(tc, "GET https://huggingface.co/org/model/resolve/main/config.json HTTP/1.1\r\nHost: huggingface.co\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, tr.config, body)
}
