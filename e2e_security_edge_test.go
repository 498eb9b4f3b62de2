package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/clientauth"
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

// startConfiguredProcess runs the gateway binary with a config file (keys
// cannot come from the environment), for tests that send it signals.
func startConfiguredProcess(t *testing.T, bin, configYAML string) *gatewayProcess {
	t.Helper()
	dir := t.TempDir()
	cfgPath := dir + "/config.yaml"
	require.NoError(t, os.WriteFile(cfgPath, []byte(configYAML), 0o600))
	cmd := exec.Command(bin, "-config", cfgPath)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	return runProcess(t, cmd)
}

// echoServer echoes every line back, until the peer closes.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// openTunnel sends a CONNECT to target through gw with proxyAuth and
// checks that bytes flow both ways.
func openTunnel(t *testing.T, gw, target, proxyAuth string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(gw, "http://"), 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n\r\n", target, target, proxyAuth)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	line := make([]byte, len("HTTP/1.1 200 Connection established\r\n\r\n"))
	_, err = io.ReadFull(conn, line)
	require.NoError(t, err)
	require.Contains(t, string(line), " 200 ")
	assertEchoes(t, conn)
	return conn
}

func assertEchoes(t *testing.T, conn net.Conn) {
	t.Helper()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	_, err := io.WriteString(conn, "ping\n")
	require.NoError(t, err)
	buf := make([]byte, 5)
	_, err = io.ReadFull(conn, buf)
	require.NoError(t, err)
	require.Equal(t, "ping\n", string(buf))
}

// closedSoon reports whether the peer closes conn within 10s.
func closedSoon(conn net.Conn) bool {
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := conn.Read(make([]byte, 1))
	return err == io.EOF || (err != nil && !os.IsTimeout(err))
}

func basicAuth(name, key string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(name+":"+key))
}

// Item 9 of the security review: revoking a worker key by SIGHUP left the
// blind tunnels (and intercepted connections) it had opened running.
func TestRevokingAKeyBySIGHUPClosesItsTunnels(t *testing.T) {
	bin := buildGateway(t)
	tr := newTestHub(t, 1<<10)
	echo := echoServer(t)
	dir := t.TempDir()
	revoked, kept := dir+"/revoked.key", dir+"/kept.key"
	revokedKey, _, err := clientauth.Generate()
	require.NoError(t, err)
	keptKey, _, err := clientauth.Generate()
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(revoked, []byte(revokedKey), 0o600))
	require.NoError(t, os.WriteFile(kept, []byte(keptKey), 0o600))
	base := fmt.Sprintf(`listen: 127.0.0.1:0
data_dir: %s
cache: {min_free: 0}
huggingface: {endpoint: %q, token: %q}
upstream: {ca_file: %q, timeout: 5s, private_hosts: [%q]}
proxy: {allow_private_targets: true}
`, dir+"/data", tr.hub.URL(), operatorToken, tr.hub.CAFile(), hostPort(tr.hub.CDNURL()))
	both := base + fmt.Sprintf("clients:\n  keys:\n    - {name: gone, key_file: %q}\n    - {name: kept, key_file: %q}\n", revoked, kept)
	p := startConfiguredProcess(t, bin, both)
	g := &gatewayUnderTest{URL: p.url, DataDir: dir + "/data"}

	gone := openTunnel(t, p.url, echo, basicAuth("gone", revokedKey))
	stays := openTunnel(t, p.url, echo, basicAuth("kept", keptKey))
	mitm, br := interceptedConn(t, g, "huggingface.co:443", basicAuth("gone", revokedKey))
	fmt.Fprintf(mitm, "GET /org/model/resolve/main/config.json HTTP/1.1\r\nHost: huggingface.co\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	// Revoke "gone": rewrite the config without it and send SIGHUP.
	cfgPath := p.cmd.Args[2]
	require.NoError(t, os.WriteFile(cfgPath, []byte(base+fmt.Sprintf("clients:\n  keys:\n    - {name: kept, key_file: %q}\n", kept)), 0o600))
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { return strings.Contains(p.logs.String(), "credentials reloaded") }, 10*time.Second, 10*time.Millisecond)

	assert.True(t, closedSoon(gone), "the revoked key's tunnel is still open")
	assert.True(t, closedSoon(mitm), "the revoked key's intercepted connection is still open")
	assertEchoes(t, stays)
	assert.NotContains(t, p.logs.String(), revokedKey)
	assert.NotContains(t, p.logs.String(), keptKey)
}

// rawRequestFrom sends one request line from ip on a fresh connection and
// returns the status code, or "closed" when the gateway closes the
// connection without an answer.
func rawRequestFrom(t *testing.T, g *gatewayUnderTest, ip, request string) string {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", strings.TrimPrefix(g.URL, "http://"))
	require.NoError(t, err)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	io.WriteString(conn, request)
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		require.False(t, os.IsTimeout(err), "no answer and not closed")
		return "closed"
	}
	return strings.Fields(line)[1]
}

// tunnelFrom opens a tunnel to target from ip and leaves it open.
func tunnelFrom(t *testing.T, g *gatewayUnderTest, ip, target string) net.Conn {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", strings.TrimPrefix(g.URL, "http://"))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	line := make([]byte, len("HTTP/1.1 200 Connection established\r\n\r\n"))
	_, err = io.ReadFull(conn, line)
	require.NoError(t, err)
	require.Contains(t, string(line), " 200 ")
	assertEchoes(t, conn)
	return conn
}

// metricWhenServed reads one series of /metrics once a connection from
// the test's address is served again: the connections the test just
// closed give their slots back only once the gateway has seen them close.
func metricWhenServed(t *testing.T, g *gatewayUnderTest, series string) float64 {
	t.Helper()
	var value float64
	require.Eventually(t, func() bool {
		resp, body, err := g.do(t, http.MethodGet, "/metrics", nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			return false
		}
		for _, line := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, series+" "); ok {
				value, err = strconv.ParseFloat(v, 64)
				require.NoError(t, err, line)
			}
		}
		return true
	}, 10*time.Second, 20*time.Millisecond)
	return value
}

// Item 10 of the security review: nothing bounded the connections one
// client (or all of them) could hold open; 1,500 idle tunnels cost 3,000
// file descriptors.
func TestConnectionCapsRefuseNewConnectionsBeyondTheLimits(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	echo := echoServer(t)
	const health = "GET /healthz HTTP/1.1\r\nHost: gate\r\n\r\n"
	connect := "CONNECT " + echo + " HTTP/1.1\r\nHost: " + echo + "\r\n\r\n"
	// A refused connection holds its slot until the gateway has closed its
	// side, so each phase checks the cap it is about with the other one
	// far away, and waits (rather than races) where a slot must come back.
	served := func(g *gatewayUnderTest, ip string) func() bool {
		return func() bool { return rawRequestFrom(t, g, ip, health) == "200" }
	}

	t.Run("per client", func(t *testing.T) {
		g := startGateway(t, tr.hub, func(c *config.Config) {
			c.Proxy.AllowPrivateTargets = true
			c.Proxy.MaxConnections = 100
			c.Proxy.MaxConnectionsPerClient = 3
		})
		// One client holds its three connections: its fourth is refused,
		// a request with 503 and a CONNECT by closing it; others are served.
		var held []net.Conn
		for range 3 {
			held = append(held, tunnelFrom(t, g, "127.0.0.1", echo))
		}
		assert.Equal(t, "503", rawRequestFrom(t, g, "127.0.0.1", health))
		assert.Equal(t, "closed", rawRequestFrom(t, g, "127.0.0.1", connect))
		assert.Equal(t, "200", rawRequestFrom(t, g, "127.0.0.2", health))
		for _, c := range held {
			assertEchoes(t, c) // the connections held are untouched
		}
		// A closed connection frees its slot.
		held[0].Close()
		require.Eventually(t, served(g, "127.0.0.1"), 10*time.Second, 20*time.Millisecond)
		held[1].Close()
		// The 503 and the closed CONNECT at least (the wait may add some).
		assert.GreaterOrEqual(t, metricWhenServed(t, g, `modelgate_connections_refused_total{limit="per_client"}`), 2.0)
		assert.Contains(t, g.Logs.String(), "route=connection_limit")
	})

	t.Run("total", func(t *testing.T) {
		g := startGateway(t, tr.hub, func(c *config.Config) {
			c.Proxy.AllowPrivateTargets = true
			c.Proxy.MaxConnections = 5
			c.Proxy.MaxConnectionsPerClient = 5
		})
		// Five in all, from three clients: everyone's next one is refused.
		var held []net.Conn
		for _, ip := range []string{"127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2", "127.0.0.3"} {
			held = append(held, tunnelFrom(t, g, ip, echo))
		}
		assert.Equal(t, "503", rawRequestFrom(t, g, "127.0.0.4", health))
		assert.Equal(t, "closed", rawRequestFrom(t, g, "127.0.0.3", connect))
		for _, c := range held {
			assertEchoes(t, c)
		}
		held[0].Close()
		require.Eventually(t, served(g, "127.0.0.4"), 10*time.Second, 20*time.Millisecond)
		for _, c := range held[1:] {
			c.Close()
		}
		require.Eventually(t, served(g, "127.0.0.1"), 10*time.Second, 20*time.Millisecond)
		assert.GreaterOrEqual(t, metricWhenServed(t, g, `modelgate_connections_refused_total{limit="total"}`), 2.0)
		assert.Contains(t, g.Logs.String(), "route=connection_limit")
	})
}

// Item 10 of the security review: a request body could be trickled
// forever, holding a connection and a handler.
func TestATrickledRequestBodyIsCutAfterBodyReadTimeout(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, func(c *config.Config) { c.Proxy.BodyReadTimeout = config.Duration{Duration: time.Second} })
	conn, err := net.Dial("tcp", strings.TrimPrefix(g.URL, "http://"))
	require.NoError(t, err)
	defer conn.Close()
	fmt.Fprintf(conn, "POST /api/models/org/model/paths-info/main HTTP/1.1\r\nHost: gate\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\npaths=")
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		// One byte every 100ms: always some progress, never the end.
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				if _, err := conn.Write([]byte("a")); err != nil {
					return
				}
			}
		}
	}()
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err, "no answer while the body trickles")
	resp.Body.Close()
	assert.GreaterOrEqual(t, resp.StatusCode, 400)
	assert.Less(t, time.Since(start), 10*time.Second)
	assert.Zero(t, tr.hub.Count("hub", http.MethodPost, "/api/"), "nothing was sent upstream")
}

// hostileHub is an upstream that answers every request with a redirect to
// wherever *to points (set once the target is known).
func hostileHub(t *testing.T, tlsOn bool, to *atomic.Value) *httptest.Server {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Repo-Commit", strings.Repeat("a", 40))
		w.Header().Set("X-Linked-Etag", `"`+strings.Repeat("b", 64)+`"`)
		w.Header().Set("X-Linked-Size", "16")
		http.Redirect(w, r, to.Load().(string), http.StatusFound)
	})
	var srv *httptest.Server
	if tlsOn {
		srv = httptest.NewTLSServer(h)
	} else {
		srv = httptest.NewServer(h)
	}
	t.Cleanup(srv.Close)
	return srv
}

// httptestCAFile writes the certificate every httptest TLS server presents.
func httptestCAFile(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	f := t.TempDir() + "/httptest-ca.pem"
	block := &pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}
	require.NoError(t, os.WriteFile(f, pem.EncodeToMemory(block), 0o600))
	return f
}

// Item 7 of the security review: redirects from an upstream were followed
// without the private-address guard that only wrapped relays, so a hostile
// or compromised upstream could make the gateway fetch (and return) what
// sits on its loopback, its LAN, or its own /metrics; and an https
// upstream could send it on over plain http.
func TestUpstreamRedirectsPassTheTargetGuard(t *testing.T) {
	requests := []string{"/api/models/org/model/refs", "/api/models/org/model", "/org/model/resolve/main/config.json"}
	internalTLS := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "internal secret\n") }))
	t.Cleanup(internalTLS.Close)
	var tlsHits atomic.Int64
	internalTLS.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			tlsHits.Add(1)
		}
	}
	internalPlain, plainHits := hitCounter(t)
	tr := newTestHub(t, 1<<10)

	for _, tc := range []struct {
		name         string
		tlsUpstream  bool
		allowPrivate bool
		target       func(g *gatewayUnderTest) string
		hits         func() int64
	}{
		{"a loopback address", true, false, func(*gatewayUnderTest) string { return internalTLS.URL + "/secret" }, tlsHits.Load},
		{"the gateway's own metrics", false, true, func(g *gatewayUnderTest) string { return "http://" + g.Addr + "/metrics" }, func() int64 { return 0 }},
		{"plain http from an https upstream", true, true, func(*gatewayUnderTest) string { return internalPlain.URL + "/secret" }, plainHits.Load},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var to atomic.Value
			hostile := hostileHub(t, tc.tlsUpstream, &to)
			g := startGateway(t, tr.hub, func(c *config.Config) {
				c.HuggingFace.Endpoint = config.MustEndpoint(hostile.URL)
				c.Upstream.CAFile = httptestCAFile(t, internalTLS)
				c.Proxy.AllowPrivateTargets = tc.allowPrivate
			})
			to.Store(tc.target(g))
			before := tc.hits()
			for _, path := range requests {
				resp, body := g.mustDo(t, http.MethodGet, path, nil)
				assert.NotEqual(t, http.StatusOK, resp.StatusCode, "%s: %.200s", path, body)
				assert.NotContains(t, string(body), "internal secret", path)
				assert.NotContains(t, string(body), "# HELP modelgate", path)
			}
			assert.Equal(t, before, tc.hits(), "the redirect target was reached")
		})
	}
}
