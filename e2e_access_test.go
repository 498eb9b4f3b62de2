package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/hostmatch"
)

// clientFrom returns a client whose connections come from the given
// loopback address, standing in for another host on the LAN.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

// connectFrom sends a CONNECT from ip and returns the status code.
func connectFrom(t *testing.T, g *gatewayUnderTest, ip, target string) string {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", strings.TrimPrefix(g.URL, "http://"))
	require.NoError(t, err)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	line, err := bufio.NewReader(conn).ReadString('\n')
	require.NoError(t, err)
	fields := strings.Fields(line)
	require.GreaterOrEqual(t, len(fields), 2, line)
	return fields[1]
}

func TestClientAllowListGatesEveryRouteButHealth(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, func(c *config.Config) {
		c.Clients.Allow = config.MustNetworks("127.0.0.1")
		c.Clients.MetricsAllow = config.MustNetworks("127.0.0.1/32", "127.0.0.3/32")
	})
	tests := []struct {
		from, path string
		want       int
		upstream   bool // whether the request may reach the Hub
	}{
		{"127.0.0.1", "/org/model/resolve/main/config.json", 200, true},
		{"127.0.0.1", "/metrics", 200, false},
		{"127.0.0.2", "/org/model/resolve/main/config.json", 403, false},
		{"127.0.0.2", "/api/models/org/model", 403, false},
		{"127.0.0.2", "/api/download/models/1", 403, false},
		{"127.0.0.2", "/metrics", 403, false},
		{"127.0.0.2", "/ca.pem", 403, false},
		{"127.0.0.2", "/healthz", 200, false},
		{"127.0.0.3", "/metrics", 200, false},
		{"127.0.0.3", "/org/model/resolve/main/config.json", 403, false},
	}
	for _, tt := range tests {
		t.Run(tt.from+tt.path, func(t *testing.T) {
			before := len(tr.hub.Requests())
			resp, err := clientFrom(tt.from).Get(g.URL + tt.path)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, tt.want, resp.StatusCode)
			if !tt.upstream {
				assert.Equal(t, before, len(tr.hub.Requests()), "no upstream request")
			}
		})
	}
	assert.Equal(t, "403", connectFrom(t, g, "127.0.0.2", "huggingface.co:443"))
	assert.Equal(t, "200", connectFrom(t, g, "127.0.0.1", "huggingface.co:443"))
	// Six refused requests in the table and one refused CONNECT.
	assert.Equal(t, 7.0, g.metric(t, `modelgate_requests_total{result="refused",route="refused_client"}`), "refusals are counted")
	assert.Contains(t, g.Logs.String(), "remote=127.0.0.2")
}

func TestTunnelsCannotReachPrivateAddressesOrTheGatewayItself(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, nil)
	origin, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer origin.Close()
	for _, target := range []string{origin.Addr().String(), "localhost:22", "169.254.169.254:80", "10.1.2.3:443", "[::1]:443", g.Addr} {
		t.Run(target, func(t *testing.T) {
			assert.Equal(t, "403", connectFrom(t, g, "127.0.0.1", target))
		})
	}
	// A plain-HTTP proxy request (absolute form, sent to the gateway) to
	// the metadata service is refused too; nothing is dialled.
	conn, err := net.Dial("tcp", strings.TrimPrefix(g.URL, "http://"))
	require.NoError(t, err)
	defer conn.Close()
	fmt.Fprintf(conn, "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
	line, err := bufio.NewReader(conn).ReadString('\n')
	require.NoError(t, err)
	assert.Contains(t, line, " 403 ")

	// With private targets allowed, the gateway's own listener is still refused.
	g2 := startGateway(t, tr.hub, func(c *config.Config) { c.Proxy.AllowPrivateTargets = true })
	assert.Equal(t, "403", connectFrom(t, g2, "127.0.0.1", g2.Addr))
	assert.Equal(t, "200", connectFrom(t, g2, "127.0.0.1", origin.Addr().String()))
}

func TestTunnelAllowLimitsTunnelsToPatterns(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, func(c *config.Config) {
		c.Proxy.AllowPrivateTargets = true
		c.Proxy.TunnelAllow = hostmatch.MustParse("127.0.0.1")
	})
	origin, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer origin.Close()
	assert.Equal(t, "200", connectFrom(t, g, "127.0.0.1", origin.Addr().String()))
	assert.Equal(t, "403", connectFrom(t, g, "127.0.0.1", "example.org:443"))
	assert.Equal(t, "200", connectFrom(t, g, "127.0.0.1", "huggingface.co:443"), "model hosts are not tunnels")
}

func TestOtherAPICallsAreReadOnlyAndRepoFiltered(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, func(c *config.Config) { c.HuggingFace.Repos.Deny = []string{"org/gated", "datasets/org/*"} })
	before := len(tr.hub.Requests())
	for _, tt := range []struct {
		method, path string
		want         int
	}{
		{http.MethodPost, "/api/repos/create", http.StatusMethodNotAllowed},
		{http.MethodDelete, "/api/models/org/model/branch/main", http.StatusMethodNotAllowed},
		{http.MethodGet, "/api/models/org/gated/refs", http.StatusForbidden},
		{http.MethodGet, "/api/datasets/org/secret/parquet", http.StatusForbidden},
		{http.MethodGet, "/org/gated/resolve/main/weights.bin", http.StatusForbidden},
	} {
		resp, _ := g.mustDo(t, tt.method, tt.path, nil)
		assert.Equal(t, tt.want, resp.StatusCode, tt.method+" "+tt.path)
	}
	assert.Equal(t, before, len(tr.hub.Requests()), "refused before any upstream request")
}
