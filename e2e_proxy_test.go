package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
)

// The Hub's public host name, as workers that cannot change HF_ENDPOINT
// use it; the gateway intercepts it and sends the requests to the fake.
const hubHost = "huggingface.co"

func requireCurl(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is required (.ci/run installs it)")
	}
}

func TestCurlThroughTheProxyIsServedByTheGateway(t *testing.T) {
	requireCurl(t)
	tr := newTestHub(t, 8<<20)
	g := startGateway(t, tr.hub, nil)
	sha := fakehub.SHA256Hex(tr.big)
	fileURL := "https://" + hubHost + "/org/model/resolve/main/model.safetensors"

	code, headers, body := g.curl(t, fileURL)
	require.Equal(t, 200, code, headers)
	assert.True(t, bytes.Equal(tr.big, body), "cold body differs")
	assert.Contains(t, strings.ToLower(headers), "x-repo-commit: "+tr.main)
	assert.Equal(t, 1, tr.hub.CDNBodyFetches(sha))

	code, _, body = g.curl(t, fileURL)
	require.Equal(t, 200, code)
	assert.True(t, bytes.Equal(tr.big, body), "warm body differs")
	assert.Equal(t, 1, tr.hub.CDNBodyFetches(sha), "warm download fetched again")

	code, headers, body = g.curl(t, fileURL, "-r", "100-199")
	require.Equal(t, 206, code)
	assert.Equal(t, tr.big[100:200], body)
	assert.Contains(t, headers, fmt.Sprintf("bytes 100-199/%d", len(tr.big)))

	// A gated repo, with no token on the worker.
	code, _, body = g.curl(t, "https://"+hubHost+"/org/gated/resolve/main/weights.bin")
	require.Equal(t, 200, code)
	assert.True(t, bytes.Equal(tr.gatedBin, body))

	// Plain HTTP_PROXY use (an absolute http:// URL) is answered the same.
	code, _, body = g.curl(t, "http://"+hubHost+"/org/model/resolve/main/config.json")
	require.Equal(t, 200, code)
	assert.Equal(t, tr.config, body)

	assertNoSecretsLeaked(t, g, tr.hub, true)
	assert.Contains(t, g.Logs.String(), "mode=mitm")
}

func TestInterceptedHostGetsALeafIssuedByTheGatewayCA(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, nil)
	resp, err := g.proxyClient(t).Get("https://" + hubHost + "/org/model/resolve/main/config.json")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	leaf := resp.TLS.PeerCertificates[0]
	assert.Contains(t, leaf.DNSNames, hubHost)
	assert.Contains(t, leaf.Issuer.CommonName, "modelgate CA")

	// /ca.pem hands out that CA, public part only.
	r, pem := g.mustDo(t, http.MethodGet, "/ca.pem", nil)
	require.Equal(t, http.StatusOK, r.StatusCode)
	assert.Contains(t, string(pem), "BEGIN CERTIFICATE")
	assert.NotContains(t, string(pem), "PRIVATE")
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pem))
	_, err = leaf.Verify(x509.VerifyOptions{DNSName: hubHost, Roots: pool})
	assert.NoError(t, err)
}

func TestOtherHostsAreTunnelledUntouched(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, func(c *config.Config) { c.Proxy.AllowPrivateTargets = true }) // the origin is on loopback
	origin := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "origin says hi to "+r.Header.Get("Authorization"))
	}))
	defer origin.Close()

	// The client trusts only the origin's own certificate: the TLS session
	// must be end to end.
	proxyURL, _ := url.Parse(g.URL)
	client := &http.Client{Transport: &http.Transport{
		Proxy:           http.ProxyURL(proxyURL),
		TLSClientConfig: origin.Client().Transport.(*http.Transport).TLSClientConfig,
	}}
	req, _ := http.NewRequest(http.MethodGet, origin.URL+"/x", nil)
	req.Header.Set("Authorization", "Bearer worker-own")
	resp, err := client.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, "origin says hi to Bearer worker-own", string(body))
	assert.True(t, resp.TLS.PeerCertificates[0].Equal(origin.Certificate()), "the client sees the origin's certificate")
	// The CONNECT is logged when the tunnel closes.
	client.CloseIdleConnections()
	require.Eventually(t, func() bool { return strings.Contains(g.Logs.String(), "result=tunnel") }, 5*time.Second, 10*time.Millisecond)
	assert.NotContains(t, g.Logs.String(), "path=/x", "the gateway never decoded the tunnelled request")
}

func TestTunnelsCanBeDenied(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, func(c *config.Config) { c.Proxy.Tunnel = "deny" })
	status := rawConnect(t, g, "example.org:443")
	assert.Equal(t, "403", status)
	// Model hosts are still intercepted.
	resp, err := g.proxyClient(t).Get("https://" + hubHost + "/org/model/resolve/main/config.json")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
}

// rawConnect sends a CONNECT with target verbatim and returns the status code.
func rawConnect(t *testing.T, g *gatewayUnderTest, target string) string {
	t.Helper()
	return connectFrom(t, g, "127.0.0.1", target)
}

func TestBogusConnectTargetsGet400AndTheGatewayKeepsServing(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, nil)
	for _, target := range []string{"huggingface.co", "garbage", "huggingface.co:https", "host:99999", "bad_host name:443", ":443", "huggingface.co:-1"} {
		t.Run(target, func(t *testing.T) {
			assert.Equal(t, "400", rawConnect(t, g, target))
		})
	}
	resp, _ := g.mustDo(t, http.MethodGet, "/healthz", nil)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Empty(t, g.blobFiles(t))
}

func TestABlobCachedInOneModeIsAHitInTheOther(t *testing.T) {
	tr := newTestHub(t, 2<<20)
	tr.hub.AddRepo(fakehub.Repo{ID: "org/second", Refs: map[string]string{"main": tr.main},
		Commits: map[string][]fakehub.File{tr.main: {{Path: "w.bin", Data: tr.xet, LFS: true}}}})
	g := startGateway(t, tr.hub, nil)
	proxy := g.proxyClient(t)
	get := func(c *http.Client, u string) []byte {
		resp, err := c.Get(u)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return b
	}

	// Filled through the proxy, read through the mirror.
	assert.True(t, bytes.Equal(tr.big, get(proxy, "https://"+hubHost+"/org/model/resolve/main/model.safetensors")))
	assert.True(t, bytes.Equal(tr.big, get(g.Client, g.URL+"/org/model/resolve/main/model.safetensors")))
	assert.Equal(t, 1, tr.hub.CDNBodyFetches(fakehub.SHA256Hex(tr.big)))

	// Filled through the mirror, read through the proxy.
	assert.True(t, bytes.Equal(tr.xet, get(g.Client, g.URL+"/org/second/resolve/main/w.bin")))
	assert.True(t, bytes.Equal(tr.xet, get(proxy, "https://"+hubHost+"/org/second/resolve/main/w.bin")))
	assert.Equal(t, 1, tr.hub.CDNBodyFetches(fakehub.SHA256Hex(tr.xet)))

	// A worker that reaches the CDN directly with some signed URL gets the
	// cached blob by its content id, whatever the signature.
	cdnURL := "https://cdn-lfs-us-1.hf.co/repos/aa/bb/" + strings.Repeat("0", 64) + "/" + fakehub.SHA256Hex(tr.big) + "?Expires=1&Signature=whatever"
	assert.True(t, bytes.Equal(tr.big, get(proxy, cdnURL)))
	assert.Equal(t, 1, tr.hub.CDNBodyFetches(fakehub.SHA256Hex(tr.big)))
}

func TestConcurrentProxyClientsShareOneUpstreamFetch(t *testing.T) {
	tr := newTestHub(t, 8<<20)
	g := startGateway(t, tr.hub, nil)
	sha := fakehub.SHA256Hex(tr.big)
	release := tr.hub.GateBlob(sha, 1<<20)
	var eg errgroup.Group
	answered := make(chan struct{}, 16)
	for i := range 16 {
		eg.Go(func() error {
			status, body, err := getAnswered(g.proxyClient(t), "https://"+hubHost+"/org/model/resolve/main/model.safetensors", answered)
			if err != nil || status != http.StatusOK || !bytes.Equal(body, tr.big) {
				return fmt.Errorf("client %d: status %d, %d bytes, err %v", i, status, len(body), err)
			}
			return nil
		})
	}
	waitAnswered(t, answered, 16) // all joined the held fill
	release()
	require.NoError(t, eg.Wait())
	assert.Equal(t, 1, tr.hub.CDNBodyFetches(sha))
	assertNoSecretsLeaked(t, g, tr.hub, true)
}

func TestKeepAliveWorksInsideTheInterception(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, nil)
	client := g.proxyClient(t)
	for range 3 {
		resp, err := client.Get("https://" + hubHost + "/org/model/resolve/main/config.json")
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	assert.Equal(t, 1, strings.Count(g.Logs.String(), "result=intercept"), "three requests, one CONNECT")
}

func TestIdleTunnelsAreClosedButOneWayStreamsSurvive(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, func(c *config.Config) {
		c.Proxy.IdleTimeout = config.Duration{Duration: 500 * time.Millisecond}
		c.Proxy.AllowPrivateTargets = true // the test origin is on loopback
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				cmd := make([]byte, 1)
				if _, err := c.Read(cmd); err != nil {
					return
				}
				if cmd[0] != 's' {
					io.Copy(io.Discard, c) // stay silent until the tunnel closes
					return
				}
				for range 10 {
					time.Sleep(200 * time.Millisecond)
					if _, err := c.Write([]byte("x")); err != nil {
						return
					}
				}
			}()
		}
	}()
	open := func() (net.Conn, *bufio.Reader) {
		conn, err := net.Dial("tcp", strings.TrimPrefix(g.URL, "http://"))
		require.NoError(t, err)
		fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: x\r\n\r\n", ln.Addr())
		br := bufio.NewReader(conn)
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		require.Contains(t, line, " 200 ")
		br.ReadString('\n') // the empty line
		return conn, br
	}

	// A silent tunnel is closed after the idle timeout.
	conn, br := open()
	conn.Write([]byte("q"))
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = br.ReadByte()
	assert.Error(t, err, "the gateway closes the idle tunnel")
	assert.Less(t, time.Since(start), 3*time.Second)
	conn.Close()

	// A download that only flows one way for 4× the idle timeout survives.
	conn, br = open()
	defer conn.Close()
	conn.Write([]byte("s"))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(br)
	require.NoError(t, err)
	assert.Equal(t, strings.Repeat("x", 10), string(got))
}

// A worker's request to a CDN or storage host that the gateway cannot
// answer from its cache is relayed without any credential: neither the
// worker's Authorization nor its cookies may reach the CDN. The gateway's
// parent proxy (upstream.proxy) stands in for the CDN and records what
// arrived; plain-HTTP proxy requests reach it as they left the gateway.
func TestCDNAndStorageRelaysCarryNoCredentials(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	var mu sync.Mutex
	var got []*http.Request
	parent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Clone(context.Background()))
		mu.Unlock()
		io.WriteString(w, "object bytes")
	}))
	defer parent.Close()
	g := startGateway(t, tr.hub, func(c *config.Config) { c.Upstream.Proxy = parent.URL })

	for _, target := range []string{
		"http://cdn.fake.hf.co/repos/aa/bb/" + strings.Repeat("ab", 32) + "/" + strings.Repeat("cd", 32) + "?Signature=x",
		"http://images.fake.civitai.com/a/some.jpeg",
	} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(g.URL, "http://"))
		require.NoError(t, err)
		u, _ := url.Parse(target)
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nCookie: session=%s\r\nConnection: close\r\n\r\n",
			target, u.Host, workerToken, civitaiWorkerKey)
		reply, err := io.ReadAll(conn)
		conn.Close()
		require.NoError(t, err)
		require.Contains(t, string(reply), " 200 ", target)
		require.Contains(t, string(reply), "object bytes", target)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, got, 2, "both requests were relayed")
	for _, r := range got {
		assert.Empty(t, r.Header.Values("Authorization"), r.URL.String())
		assert.Empty(t, r.Header.Values("Cookie"), r.URL.String())
		var b bytes.Buffer
		r.Header.Write(&b)
		assert.Empty(t, findLeaks("relayed request to "+r.Host, append([]byte(r.URL.String()), b.Bytes()...),
			operatorToken, workerToken, civitaiKey, civitaiWorkerKey))
	}
}
