package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
)

// Secrets used by the end-to-end tests. They are distinctive so that a
// search for them cannot match by accident.
const (
	operatorToken = "hf_OPERATORsecretTOKEN0123456789abcdef"
	workerToken   = "hf_WORKERownTOKEN9876543210fedcba"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// gatewayUnderTest is a real gateway (real listener, badger, files) wired
// exactly as main wires it, pointed at a fake Hub.
type gatewayUnderTest struct {
	// URL is where workers reach the gateway: a relay in front of its
	// listener that scans every byte the gateway sends (see scanningRelay),
	// so no client of any kind (Go, curl, aria2c, Node, a raw connection)
	// can receive a secret unseen.
	URL string
	// Addr is the gateway's own listener, for tests about the listener
	// itself (a CONNECT to the gateway's own address).
	Addr string
	// TLSURL is https:// and the TLS listener's address, when listen_tls
	// is set.
	TLSURL  string
	DataDir string
	Logs    *syncBuffer
	Client  *http.Client
	// Received scans every byte the worker received (status lines,
	// headers, bodies) for the test secrets as it streams by: the relay's
	// plaintext, and what clients decrypted from intercepted TLS.
	Received *leakScanner
	// Stop shuts the gateway down and waits for it (also run at cleanup).
	Stop func()
}

// startGateway starts a gateway against hub; edit may change the config.
func startGateway(t *testing.T, hub *fakehub.Hub, edit func(*config.Config)) *gatewayUnderTest {
	t.Helper()
	return startReloadableGateway(t, hub, edit, nil)
}

// startReloadableGateway is startGateway with a reload function, which
// POST /admin/v1/reload (from loopback) calls to get the next config.
func startReloadableGateway(t *testing.T, hub *fakehub.Hub, edit func(*config.Config), reload func() (config.Config, error)) *gatewayUnderTest {
	t.Helper()
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.HuggingFace.Endpoint = config.MustEndpoint(hub.URL())
	cfg.HuggingFace.Token = operatorToken
	cfg.Upstream.CAFile = hub.CAFile()
	cfg.Upstream.Timeout = config.Duration{Duration: 5 * time.Second}
	cfg.Log.Level = "debug"
	cfg.Cache.MinFree = 0 // the test machine's free space is not the test's business
	// The fake CDN and CAS listen on loopback like everything here; the
	// operator of such a site would name them the same way. A hub with
	// PublicNames stands for the real CDN and CAS hosts: the gateway
	// reaches those names through the operator's overrides, whose targets
	// are these listeners.
	cfg.Upstream.PrivateHosts = hub.Listeners()
	cfg.Upstream.Resolve = hub.Resolve()
	if edit != nil {
		edit(&cfg)
	}
	require.NoError(t, cfg.Validate())

	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 2)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, log, ready, reload) }()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("gateway did not start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("gateway did not start in time")
	}
	scanner := newLeakScanner(operatorToken, workerToken, civitaiKey, civitaiWorkerKey)
	relay, stopRelay := startScanningRelay(t, addr, scanner)
	g := &gatewayUnderTest{URL: "http://" + relay, Addr: addr, DataDir: cfg.DataDir, Logs: logs, Received: scanner}
	if cfg.ListenTLS != "" {
		select {
		case addr := <-ready:
			g.TLSURL = "https://" + addr
		case err := <-done:
			t.Fatalf("gateway did not start: %v", err)
		}
	}
	g.Client = &http.Client{
		Transport: &recordingTransport{rt: &http.Transport{DisableCompression: true}, sink: g.Received},
		// Workers in these tests follow nothing: the gateway itself must
		// answer 200, never a redirect.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	var once sync.Once
	g.Stop = func() {
		once.Do(func() {
			// Every end-to-end test ends with the leak search: nothing the
			// worker received, the CDN fake received, the logs or the
			// metrics hold may carry a secret in any encoding.
			assertNoSecretsLeaked(t, g, hub, true)
			cancel()
			select {
			case err := <-done:
				assert.NoError(t, err)
			case <-time.After(40 * time.Second):
				t.Error("gateway did not shut down")
			}
			stopRelay()
		})
	}
	t.Cleanup(g.Stop)
	return g
}

// addSecrets makes the leak search look for more secrets (worker keys made
// by the test): in the logs, metrics and CDN traffic at the end, and in what
// the worker receives from now on, so call it before the first request.
func (g *gatewayUnderTest) addSecrets(secrets ...string) {
	g.Received.AddSecrets(secrets...)
}

// startScanningRelay listens on loopback and relays each connection to
// target, dialled from the client's own address (so the gateway's client
// allow-list sees the real client), writing every byte target sends back
// through scanner. A client's half-close is passed on; when target closes,
// the client's connection is closed, as target's own close would. stop
// closes the listener and every connection still open (run it after the
// gateway shut down: what is left then are tunnels nobody closed) and waits
// for the relay's goroutines; it also runs at cleanup.
func startScanningRelay(t *testing.T, target string, scanner *leakScanner) (addr string, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
		once  sync.Once
	)
	track := func(c net.Conn, open bool) {
		mu.Lock()
		defer mu.Unlock()
		if open {
			conns[c] = true
		} else {
			delete(conns, c)
		}
	}
	stop = func() {
		once.Do(func() {
			ln.Close()
			mu.Lock()
			for c := range conns {
				c.Close()
			}
			mu.Unlock()
			wg.Wait()
		})
	}
	t.Cleanup(stop)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				relayConn(c.(*net.TCPConn), target, scanner, track)
			}()
		}
	}()
	return ln.Addr().String(), stop
}

func relayConn(client *net.TCPConn, target string, scanner *leakScanner, track func(net.Conn, bool)) {
	track(client, true)
	defer track(client, false)
	defer client.Close()
	from := client.RemoteAddr().(*net.TCPAddr)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.IP}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", target)
	if err != nil {
		return
	}
	up := c.(*net.TCPConn)
	track(up, true)
	defer track(up, false)
	defer up.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(up, client)
		up.CloseWrite()
	}()
	io.Copy(io.MultiWriter(client, scanner.stream()), up)
	client.Close()
	<-done
}

// recordingTransport passes everything the worker receives through a
// leakScanner.
type recordingTransport struct {
	rt   http.RoundTripper
	sink *leakScanner
}

func (r *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	var head bytes.Buffer
	head.WriteString(resp.Status + "\n")
	resp.Header.Write(&head)
	stream := r.sink.stream()
	stream.Write(head.Bytes())
	resp.Body = &teeBody{rc: resp.Body, sink: stream}
	return resp, nil
}

type teeBody struct {
	rc   io.ReadCloser
	sink io.Writer
}

func (t *teeBody) Read(p []byte) (int, error) {
	n, err := t.rc.Read(p)
	t.sink.Write(p[:n])
	return n, err
}
func (t *teeBody) Close() error { return t.rc.Close() }

// leakScanner searches byte streams for every encoded form of a set of
// secrets without keeping them. Each stream (a connection, a response)
// carries over just enough of its previous write to find a secret split
// across two writes; writing to the scanner itself is one more stream.
type leakScanner struct {
	mu     sync.Mutex
	forms  []string
	keep   int
	found  map[string]bool
	nbytes int64
	own    *scanStream
}

// scanStream is one ordered byte stream of a leakScanner.
type scanStream struct {
	s     *leakScanner
	carry []byte
}

func newLeakScanner(secrets ...string) *leakScanner {
	s := &leakScanner{found: map[string]bool{}}
	s.own = &scanStream{s: s}
	s.AddSecrets(secrets...)
	return s
}

// AddSecrets makes the scanner look for more secrets in what it is given
// from now on.
func (s *leakScanner) AddSecrets(secrets ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sec := range secrets {
		for _, f := range secretForms(sec) {
			s.forms = append(s.forms, f)
			s.keep = max(s.keep, len(f)-1)
		}
	}
}

// stream returns a writer for one more ordered stream.
func (s *leakScanner) stream() io.Writer { return &scanStream{s: s} }

func (s *leakScanner) Write(p []byte) (int, error) { return s.own.Write(p) }

func (st *scanStream) Write(p []byte) (int, error) {
	s := st.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nbytes += int64(len(p))
	buf := append(st.carry, p...)
	for _, f := range s.forms {
		if bytes.Contains(buf, []byte(f)) {
			s.found[f] = true
		}
	}
	if len(buf) > s.keep {
		buf = buf[len(buf)-s.keep:]
	}
	st.carry = bytes.Clone(buf)
	return len(p), nil
}

// Leaks returns the secret forms seen (shortened), and how many bytes were
// scanned.
func (s *leakScanner) Leaks() ([]string, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for f := range s.found {
		out = append(out, f[:min(8, len(f))]+"…")
	}
	return out, s.nbytes
}

// secrets returns every secret the scanner looks for, in their raw form.
func (s *leakScanner) secrets() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for i := 0; i < len(s.forms); i += len(secretForms("")) {
		out = append(out, s.forms[i])
	}
	return out
}

// get sends a request and returns the answer with its body read.
func (g *gatewayUnderTest) do(t *testing.T, method, path string, header http.Header) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequest(method, g.URL+path, nil)
	require.NoError(t, err)
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := g.Client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func (g *gatewayUnderTest) mustDo(t *testing.T, method, path string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	resp, body, err := g.do(t, method, path, header)
	require.NoError(t, err)
	return resp, body
}

// metrics returns the /metrics text.
func (g *gatewayUnderTest) metrics(t *testing.T) string {
	t.Helper()
	resp, body := g.mustDo(t, http.MethodGet, "/metrics", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	return string(body)
}

// metric returns the value of one series of /metrics, e.g.
// `modelgate_requests_total{result="hit",route="resolve"}`, or 0 when the
// series does not exist (yet).
func (g *gatewayUnderTest) metric(t *testing.T, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(g.metrics(t), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err, line)
			return f
		}
	}
	return 0
}

// blobFiles lists every file under the data directory's blobs and tmp
// folders, to check what a request left on disk.
func (g *gatewayUnderTest) blobFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	for _, dir := range []string{"blobs", "tmp"} {
		filepath.WalkDir(filepath.Join(g.DataDir, dir), func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				files = append(files, p)
			}
			return nil
		})
	}
	return files
}

// secretForms are the encodings in which a leaked secret would be found.
func secretForms(secret string) []string {
	return []string{
		secret,
		url.QueryEscape(secret),
		base64.StdEncoding.EncodeToString([]byte(secret)),
		base64.URLEncoding.EncodeToString([]byte(secret)),
		base64.StdEncoding.EncodeToString([]byte("Bearer " + secret)),
	}
}

// assertNoSecretsLeaked searches everything the worker, the CDN, the logs
// and (while the gateway runs) the metrics saw for every test secret, raw,
// URL-encoded and base64.
func assertNoSecretsLeaked(t *testing.T, g *gatewayUnderTest, hub *fakehub.Hub, running bool) {
	t.Helper()
	leaks, _ := leakFindings(t, g, hub, running)
	assert.Empty(t, leaks, "secrets leaked")
}

// leakFindings is the leak search of assertNoSecretsLeaked: where each
// secret form was found, and how many bytes of worker traffic were scanned.
func leakFindings(t *testing.T, g *gatewayUnderTest, hub *fakehub.Hub, running bool) ([]string, int64) {
	t.Helper()
	secrets := g.Received.secrets()
	if hub != nil {
		// The upstream Xet tokens the fake CAS issued (to the gateway).
		secrets = append(secrets, hub.XetTokens()...)
	}
	leaks, scanned := g.Received.Leaks()
	var out []string
	for _, l := range leaks {
		out = append(out, "worker traffic: "+l)
	}
	out = append(out, findLeaks("CDN traffic", cdnTraffic(hub), secrets...)...)
	out = append(out, findLeaks("logs", []byte(g.Logs.String()), secrets...)...)
	if running {
		out = append(out, findLeaks("metrics", []byte(g.metrics(t)), secrets...)...)
	}
	return out, scanned
}

// assertNoLeak searches haystack for every form of every secret.
func assertNoLeak(t *testing.T, where string, haystack []byte, secrets ...string) {
	t.Helper()
	for _, l := range findLeaks(where, haystack, secrets...) {
		t.Error(l)
	}
}

// findLeaks lists the forms of secrets found in haystack, shortened.
func findLeaks(where string, haystack []byte, secrets ...string) []string {
	var out []string
	for _, s := range secrets {
		for _, form := range secretForms(s) {
			if bytes.Contains(haystack, []byte(form)) {
				out = append(out, fmt.Sprintf("%s contains a secret (form %q…)", where, form[:min(8, len(form))]))
			}
		}
	}
	return out
}

// cdnTraffic renders every request the fake CDN received, headers and all.
func cdnTraffic(hub *fakehub.Hub) []byte {
	var b bytes.Buffer
	for _, r := range hub.Requests() {
		if r.Server != "cdn" {
			continue
		}
		b.WriteString(r.Method + " " + r.Host + r.RequestURI + "\n")
		r.Header.Write(&b)
		b.Write(r.Body)
	}
	return b.Bytes()
}

// hubAuthHeaders returns the Authorization values the fake Hub received.
func hubAuthHeaders(hub *fakehub.Hub) []string {
	var out []string
	for _, r := range hub.Requests() {
		if r.Server == "hub" {
			out = append(out, strings.Join(r.Header.Values("Authorization"), ","))
		}
	}
	return out
}

// caFile is the path of the gateway's CA certificate (created at start).
func (g *gatewayUnderTest) caFile() string {
	return filepath.Join(g.DataDir, "ca", "modelgate-ca.pem")
}

// proxyClient returns a client that uses the gateway as its HTTPS_PROXY and
// trusts the gateway's CA (and nothing else), recording what it receives.
func (g *gatewayUnderTest) proxyClient(t *testing.T) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(g.caFile())
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pem))
	proxyURL, _ := url.Parse(g.URL)
	return &http.Client{
		Transport: &recordingTransport{sink: g.Received, rt: &http.Transport{
			Proxy:              http.ProxyURL(proxyURL),
			TLSClientConfig:    &tls.Config{RootCAs: pool},
			DisableCompression: true,
		}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// curl runs the real curl through the gateway as proxy and returns the
// HTTP status, the headers and the body it saved.
func (g *gatewayUnderTest) curl(t *testing.T, url string, extra ...string) (int, string, []byte) {
	t.Helper()
	dir := t.TempDir()
	out, hdr := filepath.Join(dir, "body"), filepath.Join(dir, "headers")
	args := append([]string{"-sS", "--max-time", "60", "-x", g.URL, "--cacert", g.caFile(),
		"-o", out, "-D", hdr, "-w", "%{http_code}", "--noproxy", ""}, extra...)
	args = append(args, url)
	cmd := exec.Command("curl", args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // no proxy variables of the test runner's
	stdout, err := cmd.Output()
	var stderr []byte
	if ee, ok := err.(*exec.ExitError); ok {
		stderr = ee.Stderr
	}
	require.NoError(t, err, "curl: %s", stderr)
	code, err := strconv.Atoi(string(stdout))
	require.NoError(t, err)
	headers, _ := os.ReadFile(hdr)
	body, _ := os.ReadFile(out)
	g.Received.Write(headers)
	g.Received.Write(body)
	return code, string(headers), body
}

// hasBlob reports whether the blob with this sha256 is published on disk.
func (g *gatewayUnderTest) hasBlob(t *testing.T, sha string) bool {
	t.Helper()
	_, err := os.Stat(filepath.Join(g.DataDir, "blobs", "sha256", sha[:2], sha))
	return err == nil
}

// hostPort is the host:port of an http(s) URL.
func hostPort(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		panic(err)
	}
	return u.Host
}

// getAnswered GETs url with client, signals on answered as soon as the
// response headers arrived (the client has joined whatever serves it), and
// returns the status and the whole body.
func getAnswered(client *http.Client, url string, answered chan<- struct{}) (int, []byte, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	answered <- struct{}{}
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// waitAnswered waits until n clients signalled on answered.
func waitAnswered(t *testing.T, answered <-chan struct{}, n int) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for i := range n {
		select {
		case <-answered:
		case <-timeout:
			t.Fatalf("only %d of %d clients were answered", i, n)
		}
	}
}

// skipIfShort skips a slow test under `go test -short` (for quick local
// runs); CI runs without -short, so every test runs there.
func skipIfShort(t *testing.T, why string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("slow (%s): skipped with -short; CI runs it", why)
	}
}

// assertFetchedOnce checks what an upstream sent for a blob of size bytes
// (the byte range of each answer): at most 1.02 times the blob, and no byte
// range fetched twice.
func assertFetchedOnce(t *testing.T, spans [][2]int64, size int64) {
	t.Helper()
	var total int64
	sorted := slices.Clone(spans)
	slices.SortFunc(sorted, func(a, b [2]int64) int { return cmp.Compare(a[0], b[0]) })
	for i, sp := range sorted {
		total += sp[1] - sp[0]
		if i > 0 {
			assert.LessOrEqual(t, sorted[i-1][1], sp[0], "bytes %d-%d were fetched twice", sp[0], sorted[i-1][1]-1)
		}
	}
	assert.LessOrEqual(t, float64(total), 1.02*float64(size), "upstream bytes vs the blob")
	assert.GreaterOrEqual(t, total, size)
}
