package upstream

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// originHost is a name the httptest certificate is valid for
// (*.example.com); tests map it onto a loopback server with mapDial.
const originHost = "origin.example.com"

// writeCA writes the PEM of srv's certificate to a temporary file.
func writeCA(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	require.NoError(t, os.WriteFile(p, b, 0o600))
	return p
}

func newTransport(t *testing.T, opts Options) *http.Transport {
	t.Helper()
	tr, err := NewTransport(opts)
	require.NoError(t, err)
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func get(t *testing.T, tr http.RoundTripper, target string, hdr ...string) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, target, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := tr.RoundTrip(req)
	if err == nil {
		t.Cleanup(func() { resp.Body.Close() })
	}
	return resp, err
}

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

// mapDial makes tr connect to addr whenever it dials originHost, and
// records every address it is asked to dial.
func mapDial(tr *http.Transport, addr string) func() []string {
	var (
		mu     sync.Mutex
		dialed []string
	)
	base := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, a string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, a)
		mu.Unlock()
		if h, _, _ := net.SplitHostPort(a); h == originHost {
			a = addr
		}
		return base(ctx, network, a)
	}
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), dialed...)
	}
}

func TestNewTransport_CAFileMakesATLSServerTrusted(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "trusted")
	}))
	t.Cleanup(srv.Close)

	t.Run("with the server's certificate in ca_file", func(t *testing.T) {
		tr := newTransport(t, Options{CAFile: writeCA(t, srv)})
		resp, err := get(t, tr, srv.URL+"/x")
		require.NoError(t, err)
		assert.Equal(t, "trusted", body(t, resp))
	})
	t.Run("with extra non-certificate text around the PEM", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "bundle.pem")
		pemBytes, err := os.ReadFile(writeCA(t, srv))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(p, append([]byte("# corporate roots\n"), pemBytes...), 0o600))
		tr := newTransport(t, Options{CAFile: p})
		_, err = get(t, tr, srv.URL+"/x")
		require.NoError(t, err)
	})
	t.Run("without ca_file the server is unknown", func(t *testing.T) {
		tr := newTransport(t, Options{})
		_, err := get(t, tr, srv.URL+"/x")
		require.Error(t, err)
		var unknown x509.UnknownAuthorityError
		assert.ErrorAs(t, err, &unknown)
		assert.False(t, IsTimeout(err), "a TLS failure is not a timeout")
	})
}

func TestNewTransport_RejectsBadCAFileAndProxy(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	tests := []struct {
		name string
		opts Options
		msg  string
	}{
		{"missing ca_file", Options{CAFile: filepath.Join(dir, "absent.pem")}, "upstream.ca_file"},
		{"ca_file without PEM", Options{CAFile: write("text.pem", "this is not a certificate\n")}, "no PEM certificate"},
		{"empty ca_file", Options{CAFile: write("empty.pem", "")}, "no PEM certificate"},
		{"ca_file with a non-certificate PEM block", Options{CAFile: write("key.pem",
			string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("not a key")})))}, "no PEM certificate"},
		{"ca_file with a broken certificate", Options{CAFile: write("broken.pem",
			string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("garbage")})))}, "no PEM certificate"},
		{"ca_file is a directory", Options{CAFile: dir}, "upstream.ca_file"},
		{"unparseable proxy", Options{Proxy: "http://[::1"}, "upstream.proxy"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := NewTransport(tc.opts)
			require.Error(t, err)
			assert.Nil(t, tr)
			assert.Contains(t, err.Error(), tc.msg)
		})
	}
}

func TestNewTransport_AppliesTimeoutsAndSafeDefaults(t *testing.T) {
	tests := []struct {
		name    string
		timeout time.Duration
		want    time.Duration
	}{
		{"zero timeout defaults to 30s", 0, 30 * time.Second},
		{"negative timeout defaults to 30s", -time.Second, 30 * time.Second},
		{"explicit timeout", 5 * time.Second, 5 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTransport(t, Options{Timeout: tc.timeout})
			assert.Equal(t, tc.want, tr.ResponseHeaderTimeout)
			assert.Equal(t, tc.want, tr.TLSHandshakeTimeout)
			assert.True(t, tr.DisableCompression)
			assert.Nil(t, tr.Proxy, "no proxy unless upstream.proxy is set")
			require.NotNil(t, tr.TLSClientConfig)
			assert.GreaterOrEqual(t, tr.TLSClientConfig.MinVersion, uint16(tls.VersionTLS12))
			assert.False(t, tr.TLSClientConfig.InsecureSkipVerify)
		})
	}
}

func TestNewTransport_NeverDecompressesBehindTheCallersBack(t *testing.T) {
	payload := strings.Repeat("modelgate caches the upstream's exact bytes. ", 200)
	var (
		mu      sync.Mutex
		seenAEs []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ae := r.Header.Get("Accept-Encoding")
		mu.Lock()
		seenAEs = append(seenAEs, ae)
		mu.Unlock()
		if !strings.Contains(ae, "gzip") {
			io.WriteString(w, payload)
			return
		}
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		io.WriteString(zw, payload)
		zw.Close()
	}))
	t.Cleanup(srv.Close)
	tr := newTransport(t, Options{})

	t.Run("the transport does not ask for gzip", func(t *testing.T) {
		resp, err := get(t, tr, srv.URL+"/file")
		require.NoError(t, err)
		assert.Equal(t, payload, body(t, resp), "body is byte-exact")
		assert.Empty(t, resp.Header.Get("Content-Encoding"))
		mu.Lock()
		ae := seenAEs[len(seenAEs)-1]
		mu.Unlock()
		assert.NotContains(t, ae, "gzip")
	})
	t.Run("a gzip answer the caller asked for stays compressed", func(t *testing.T) {
		resp, err := get(t, tr, srv.URL+"/file", "Accept-Encoding", "gzip")
		require.NoError(t, err)
		raw := body(t, resp)
		assert.Equal(t, "gzip", resp.Header.Get("Content-Encoding"))
		assert.False(t, resp.Uncompressed)
		assert.NotEqual(t, payload, raw)
		zr, err := gzip.NewReader(strings.NewReader(raw))
		require.NoError(t, err)
		plain, err := io.ReadAll(zr)
		require.NoError(t, err)
		assert.Equal(t, payload, string(plain))
	})
}

func TestNewTransport_IgnoresTheProcessProxyEnvironment(t *testing.T) {
	// A bogus proxy that refuses connections: if it were used, every
	// request below would fail.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	bogus := "http://" + dead.Addr().String()
	require.NoError(t, dead.Close())
	for _, k := range []string{"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"} {
		t.Setenv(k, bogus)
	}
	t.Setenv("NO_PROXY", "")
	t.Setenv("no_proxy", "")

	// The environment is really in effect for a non-loopback name (loopback
	// is never proxied, which is why the servers are reached as originHost).
	probe, err := http.NewRequest(http.MethodGet, "https://"+originHost+"/", nil)
	require.NoError(t, err)
	envProxy, err := http.ProxyFromEnvironment(probe)
	require.NoError(t, err)
	require.NotNil(t, envProxy, "test setup: HTTPS_PROXY must be in effect")

	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "direct "+r.Host)
	}))
	t.Cleanup(plain.Close)
	secure := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "direct "+r.Host)
	}))
	t.Cleanup(secure.Close)

	tests := []struct {
		name   string
		srv    *httptest.Server
		scheme string
		port   string
	}{
		{"https", secure, "https", "443"},
		{"http", plain, "http", "80"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTransport(t, Options{CAFile: writeCA(t, secure)})
			dialed := mapDial(tr, tc.srv.Listener.Addr().String())
			resp, err := get(t, tr, tc.scheme+"://"+originHost+"/x")
			require.NoError(t, err)
			assert.Equal(t, "direct "+originHost, body(t, resp))
			assert.Equal(t, []string{net.JoinHostPort(originHost, tc.port)}, dialed(), "only the origin is dialed, never the env proxy")
		})
	}
}

// forwardProxy is a tiny HTTP forward proxy: it answers absolute-form
// requests itself and tunnels CONNECT to backend, recording what it saw.
type forwardProxy struct {
	*httptest.Server
	backend string // host:port CONNECT tunnels go to

	mu   sync.Mutex
	seen []proxied
}

type proxied struct {
	Method, RequestURI, Host, ProxyAuth string
}

func newForwardProxy(t *testing.T, backend string) *forwardProxy {
	t.Helper()
	p := &forwardProxy{backend: backend}
	p.Server = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.Close)
	return p
}

func (p *forwardProxy) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.seen = append(p.seen, proxied{r.Method, r.RequestURI, r.Host, r.Header.Get("Proxy-Authorization")})
	p.mu.Unlock()
	if r.Method != http.MethodConnect {
		io.WriteString(w, "via proxy "+r.RequestURI)
		return
	}
	up, err := net.Dial("tcp", p.backend)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer up.Close()
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n")
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, buf); done <- struct{}{} }()
	go func() { io.Copy(conn, up); done <- struct{}{} }()
	<-done
}

func (p *forwardProxy) Seen() []proxied {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]proxied(nil), p.seen...)
}

func TestNewTransport_UsesTheConfiguredProxy(t *testing.T) {
	backend := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "tunnelled to "+r.Host)
	}))
	t.Cleanup(backend.Close)

	t.Run("plain http goes through the proxy in absolute form", func(t *testing.T) {
		p := newForwardProxy(t, backend.Listener.Addr().String())
		tr := newTransport(t, Options{Proxy: p.URL})
		resp, err := get(t, tr, "http://"+originHost+"/api/models?x=1")
		require.NoError(t, err)
		assert.Equal(t, "via proxy http://"+originHost+"/api/models?x=1", body(t, resp))
		require.Len(t, p.Seen(), 1)
		assert.Equal(t, proxied{Method: http.MethodGet, RequestURI: "http://" + originHost + "/api/models?x=1", Host: originHost}, p.Seen()[0])
	})
	t.Run("https is tunnelled with CONNECT and still verified with ca_file", func(t *testing.T) {
		p := newForwardProxy(t, backend.Listener.Addr().String())
		tr := newTransport(t, Options{Proxy: p.URL, CAFile: writeCA(t, backend)})
		resp, err := get(t, tr, "https://"+originHost+"/file")
		require.NoError(t, err)
		assert.Equal(t, "tunnelled to "+originHost, body(t, resp))
		require.Len(t, p.Seen(), 1)
		assert.Equal(t, http.MethodConnect, p.Seen()[0].Method)
		assert.Equal(t, originHost+":443", p.Seen()[0].Host)
	})
	t.Run("https through the proxy without ca_file is not trusted", func(t *testing.T) {
		p := newForwardProxy(t, backend.Listener.Addr().String())
		tr := newTransport(t, Options{Proxy: p.URL})
		_, err := get(t, tr, "https://"+originHost+"/file")
		var unknown x509.UnknownAuthorityError
		require.ErrorAs(t, err, &unknown)
	})
	t.Run("proxy credentials from the URL are sent to the proxy", func(t *testing.T) {
		p := newForwardProxy(t, backend.Listener.Addr().String())
		u, err := url.Parse(p.URL)
		require.NoError(t, err)
		u.User = url.UserPassword("user", "pw")
		tr := newTransport(t, Options{Proxy: u.String()})
		_, err = get(t, tr, "http://"+originHost+"/x")
		require.NoError(t, err)
		require.Len(t, p.Seen(), 1)
		assert.Equal(t, "Basic dXNlcjpwdw==", p.Seen()[0].ProxyAuth)
	})
}

func TestNewTransport_TimeoutNeverBoundsABody(t *testing.T) {
	// A timeout long enough that the headers always arrive within it, and
	// a pause in the body that starts only once the client has the first
	// bytes and lasts twice the timeout: the pause is what is tested.
	const timeout = time.Second
	gotFirst := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first ")
		http.NewResponseController(w).Flush()
		select {
		case <-gotFirst:
		case <-r.Context().Done():
			return
		}
		time.Sleep(2 * timeout)
		io.WriteString(w, "second")
	}))
	t.Cleanup(srv.Close)
	tr := newTransport(t, Options{Timeout: timeout})
	resp, err := get(t, tr, srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	first := make([]byte, len("first "))
	_, err = io.ReadFull(resp.Body, first)
	require.NoError(t, err)
	close(gotFirst)
	rest, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, "first second", string(first)+string(rest))
}

func TestIsTimeout_DistinguishesSlowFromUnreachableUpstreams(t *testing.T) {
	const timeout = 150 * time.Millisecond

	t.Run("no response headers within Timeout is a timeout", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		}))
		t.Cleanup(srv.Close)
		tr := newTransport(t, Options{Timeout: timeout})

		start := time.Now()
		_, err := get(t, tr, srv.URL)
		require.Error(t, err)
		assert.True(t, IsTimeout(err), "transport error %v", err)
		assert.Less(t, time.Since(start), 5*time.Second)

		// Also when wrapped by an http.Client.
		_, err = (&http.Client{Transport: tr}).Get(srv.URL)
		require.Error(t, err)
		assert.True(t, IsTimeout(err), "client error %v", err)
	})

	t.Run("a refused connection is no timeout", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := l.Addr().String()
		require.NoError(t, l.Close())
		tr := newTransport(t, Options{Timeout: timeout})

		_, err = get(t, tr, "http://"+addr+"/")
		require.Error(t, err)
		assert.False(t, IsTimeout(err), "transport error %v", err)
		_, err = (&http.Client{Transport: tr}).Get("http://" + addr + "/")
		require.Error(t, err)
		assert.False(t, IsTimeout(err), "client error %v", err)
	})

	t.Run("a connection closed without an answer is no timeout", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		tr := newTransport(t, Options{Timeout: timeout})
		_, err = get(t, tr, "http://"+l.Addr().String()+"/")
		require.Error(t, err)
		assert.False(t, IsTimeout(err), "transport error %v", err)
	})
}

// netTimeout is a net.Error that reports a timeout.
type netTimeout struct{ timeout bool }

func (e netTimeout) Error() string   { return fmt.Sprintf("net error (timeout=%v)", e.timeout) }
func (e netTimeout) Timeout() bool   { return e.timeout }
func (e netTimeout) Temporary() bool { return false }

func TestIsTimeout_ClassifiesWrappedErrors(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain error", errors.New("boom"), false},
		{"context deadline", context.DeadlineExceeded, true},
		{"wrapped context deadline", fmt.Errorf("head: %w", context.DeadlineExceeded), true},
		{"context canceled", context.Canceled, false},
		{"net error with timeout", netTimeout{true}, true},
		{"net error without timeout", netTimeout{false}, false},
		{"op error wrapping a timeout", &net.OpError{Op: "dial", Net: "tcp", Err: netTimeout{true}}, true},
		{"url error wrapping a timeout", &url.Error{Op: "Get", URL: "https://hub.example", Err: netTimeout{true}}, true},
		{"url error wrapping a refusal", &url.Error{Op: "Get", URL: "https://hub.example", Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}}, false},
		{"EOF", io.ErrUnexpectedEOF, false},
		{"joined errors with a deadline", errors.Join(errors.New("a"), context.DeadlineExceeded), true},
		{"bytes error", bytes.ErrTooLarge, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, IsTimeout(tc.err))
		})
	}
}

func TestHostLimiterCapsFillRequestsPerHostOnly(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fill" {
			w.WriteHeader(http.StatusOK)
			http.NewResponseController(w).Flush()
			<-release
		}
		io.WriteString(w, "ok")
	}))
	defer srv.Close()
	defer close(release)
	var inUse atomic.Int32
	l := &HostLimiter{Next: srv.Client().Transport, Max: 2, OnChange: func(d int) { inUse.Add(int32(d)) }}
	client := &http.Client{Transport: l}
	get := func(ctx context.Context, path string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
		return client.Do(req)
	}
	var bodies []io.Closer
	for range 2 {
		resp, err := get(ForFill(context.Background()), "/fill")
		require.NoError(t, err)
		bodies = append(bodies, resp.Body)
	}
	assert.Equal(t, int32(2), inUse.Load())
	// A third fill request waits for a slot...
	ctx, cancel := context.WithTimeout(ForFill(context.Background()), 100*time.Millisecond)
	defer cancel()
	_, err := get(ctx, "/fill")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	// ...metadata does not.
	resp, err := get(context.Background(), "/meta")
	require.NoError(t, err)
	resp.Body.Close()
	bodies[0].Close()
	assert.Equal(t, int32(1), inUse.Load(), "a closed body frees its slot")
	resp, err = get(ForFill(context.Background()), "/meta")
	require.NoError(t, err)
	resp.Body.Close()
	bodies[1].Close()
	assert.Equal(t, int32(0), inUse.Load())
}
