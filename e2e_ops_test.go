package main

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/app"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
)

func TestProbesAnswerPlainByDefaultAndJSONWithTheBuildOnAsk(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, nil)

	resp, body := g.mustDo(t, http.MethodGet, "/healthz", nil)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "ok\n", string(body), "the plain body scripts grep for stays")

	resp, body = g.mustDo(t, http.MethodGet, "/healthz", http.Header{"Accept": {"application/json"}})
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var health map[string]string
	require.NoError(t, json.Unmarshal(body, &health), string(body))
	assert.Equal(t, "ok", health["status"])
	for _, k := range []string{"version", "commit", "build_time", "go_version"} {
		assert.NotEmpty(t, health[k], k)
	}

	resp, body = g.mustDo(t, http.MethodGet, "/readyz", nil)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "ready\n", string(body))

	metrics := g.metrics(t)
	assert.Regexp(t, `(?m)^modelgate_build_info\{commit="[^"]+",goversion="go[^"]+",version="[^"]+"\} 1$`, metrics)
	assert.Contains(t, metrics, "modelgate_cache_min_free_bytes 0\n")
	assert.Contains(t, metrics, "modelgate_cache_max_size_bytes 0\n")
}

func TestReadyzIsOpenToEveryNetworkLikeHealthz(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, func(c *config.Config) {
		c.Clients.Allow = config.MustNetworks("10.9.9.9/32")
		c.Clients.MetricsAllow = config.MustNetworks("127.0.0.0/8") // for the leak search at the end
	})
	resp, _ := g.mustDo(t, http.MethodGet, "/readyz", nil)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = g.mustDo(t, http.MethodGet, "/api/models/org/model", nil)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode, "the allow-list still applies elsewhere")
}

// buildForTest wires a gateway without a listener, for tests of its
// handler and lifecycle hooks.
func buildForTest(t *testing.T, hub *fakehub.Hub) *app.App {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.HuggingFace.Endpoint = config.MustEndpoint(hub.URL())
	cfg.Upstream.CAFile = hub.CAFile()
	cfg.Cache.MinFree = 0
	require.NoError(t, cfg.Validate())
	gw, err := app.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	t.Cleanup(gw.Close)
	return gw
}

func TestReadyzAnswers503OnceTheGatewayDrains(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	gw := buildForTest(t, tr.hub)
	probe := func(accept string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, "/readyz", nil)
		req.RemoteAddr = "192.0.2.7:40000"
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		rec := httptest.NewRecorder()
		gw.Handler().ServeHTTP(rec, req)
		return rec
	}
	assert.Equal(t, http.StatusOK, probe("").Code)
	gw.Drain()
	rec := probe("")
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
	assert.Equal(t, "draining\n", rec.Body.String())
	rec = probe("application/json")
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
	assert.JSONEq(t, `{"status":"draining"}`, rec.Body.String())
}

func TestHealthcheckCommandAsksReadyz(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, nil)
	var out bytes.Buffer
	require.NoError(t, run([]string{"healthcheck", "-url", g.URL}, &out, io.Discard))
	assert.Equal(t, "ready\n", out.String())

	gw := buildForTest(t, tr.hub)
	gw.Drain()
	draining := httptest.NewServer(gw.Handler())
	defer draining.Close()
	err := run([]string{"healthcheck", "-url", draining.URL}, io.Discard, io.Discard)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "503")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := "http://" + ln.Addr().String()
	ln.Close()
	assert.Error(t, run([]string{"healthcheck", "-url", closed}, io.Discard, io.Discard))
}

func TestLocalURLOfAListenAddress(t *testing.T) {
	for listen, want := range map[string]string{
		":8080":          "http://127.0.0.1:8080",
		"0.0.0.0:9":      "http://127.0.0.1:9",
		"[::]:9":         "http://[::1]:9",
		"10.1.2.3:8080":  "http://10.1.2.3:8080",
		"gate.lan:8080":  "http://gate.lan:8080",
		"127.0.0.1:8080": "http://127.0.0.1:8080",
	} {
		got, err := localURL(listen)
		require.NoError(t, err, listen)
		assert.Equal(t, want, got, listen)
	}
	_, err := localURL("no-port")
	assert.Error(t, err)
}

func TestTheRealBinaryReportsItsBuild(t *testing.T) {
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skip("not in a git checkout: the toolchain stamps no commit")
	}
	// Stamped the way .ci/run and the Dockerfile build it: the go command
	// cannot read the VCS state of a git worktree itself.
	commit := strings.TrimSpace(string(head))
	bin := filepath.Join(t.TempDir(), "modelgate")
	pkg := "github.com/modelgate/modelgate/buildinfo"
	out, err := exec.Command("go", "build", "-o", bin, "-ldflags",
		"-X "+pkg+".commit="+commit+" -X "+pkg+".date=2026-11-28T12:00:00Z -X "+pkg+".version=v9.8.7", ".").CombinedOutput()
	require.NoError(t, err, string(out))
	out, err = exec.Command(bin, "version").CombinedOutput()
	require.NoError(t, err, string(out))
	assert.Equal(t, "modelgate v9.8.7 commit "+commit+" built 2026-11-28T12:00:00Z with "+runtime.Version()+"\n", string(out))
}

// slowRepo is a repo with one blob the fake CDN sends at rate bytes/s.
func slowRepo(t *testing.T, size, rate int) (*fakehub.Hub, []byte) {
	t.Helper()
	hub := fakehub.New(t, fakehub.Options{Token: operatorToken})
	data := fakehub.RandomData(77, size)
	commit := fakehub.Commit("slow")
	hub.AddRepo(fakehub.Repo{ID: "org/slow", Refs: map[string]string{"main": commit},
		Commits: map[string][]fakehub.File{commit: {{Path: "w.bin", Data: data, LFS: true}}}})
	hub.ThrottleBlob(fakehub.SHA256Hex(data), rate)
	return hub, data
}

// startDownload starts GET w.bin and returns the body's bytes (or the error)
// once the answer ends.
type download struct {
	body []byte
	err  error
}

func startDownload(p *gatewayProcess) <-chan download {
	done := make(chan download, 1)
	go func() {
		resp, err := http.Get(p.url + "/org/slow/resolve/main/w.bin")
		if err != nil {
			done <- download{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- download{body: b, err: err}
	}()
	return done
}

func TestSIGTERMStopsAcceptingAndLetsTheDownloadInFlightFinish(t *testing.T) {
	bin := buildGateway(t)
	hub, data := slowRepo(t, 3<<20, 1<<20) // about three seconds
	p := startProcess(t, bin, t.TempDir(), hub)
	addr := strings.TrimPrefix(p.url, "http://")
	out, err := exec.Command(bin, "healthcheck", "-url", p.url).CombinedOutput()
	require.NoError(t, err, "healthcheck of a ready gateway: %s", out)

	done := startDownload(p)
	require.Eventually(t, func() bool {
		return p.metric(t, `modelgate_upstream_received_bytes_total{host="other"}`) > 0
	}, 10*time.Second, 20*time.Millisecond, "the fill did not start")
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))

	// New connections are refused while the download goes on.
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	}, 5*time.Second, 10*time.Millisecond, "the gateway still accepts connections after SIGTERM")
	out, err = exec.Command(bin, "healthcheck", "-url", p.url).CombinedOutput()
	assert.Error(t, err, "healthcheck of a draining gateway: %s", out)
	select {
	case d := <-done:
		t.Fatalf("the download ended before the drain could be observed: %v", d.err)
	default:
	}

	d := <-done
	require.NoError(t, d.err)
	assert.True(t, bytes.Equal(data, d.body), "the download in flight was cut (%d of %d bytes)", len(d.body), len(data))
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	select {
	case err := <-exited:
		assert.NoError(t, err, "exit status")
	case <-time.After(20 * time.Second):
		t.Fatal("the gateway did not exit after draining")
	}
	assert.Contains(t, p.logs.String(), "drained; exiting")
}

func TestShutdownTimeoutCutsADownloadThatWouldNotFinish(t *testing.T) {
	bin := buildGateway(t)
	hub, data := slowRepo(t, 4<<20, 64<<10) // about a minute
	p := startProcess(t, bin, t.TempDir(), hub, "MODELGATE_SHUTDOWN_TIMEOUT=1s")
	done := startDownload(p)
	require.Eventually(t, func() bool {
		return p.metric(t, `modelgate_upstream_received_bytes_total{host="other"}`) > 0
	}, 10*time.Second, 20*time.Millisecond, "the fill did not start")
	start := time.Now()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	select {
	case err := <-exited:
		assert.NoError(t, err, "exit status")
	case <-time.After(20 * time.Second):
		t.Fatal("the gateway did not exit when shutdown_timeout passed")
	}
	t.Logf("exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	d := <-done
	assert.Less(t, len(d.body), len(data), "the download cannot have completed")
	assert.Contains(t, p.logs.String(), "shutdown_timeout passed")
}

func TestUpstreamAuthFailuresBackoffAndFillsAreCounted(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	// A token the Hub does not know: every credentialed request gets 401.
	g := startGateway(t, tr.hub, func(c *config.Config) { c.HuggingFace.Token = "hf_revokedRevokedRevoked" })
	resp, _ := g.mustDo(t, http.MethodGet, "/api/models/org/model", nil)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.GreaterOrEqual(t, g.metric(t, `modelgate_upstream_auth_failures_total{code="401",credential="true",host="huggingface"}`), 1.0)
	assert.Zero(t, g.metric(t, `modelgate_upstream_auth_failures_total{code="401",credential="false",host="huggingface"}`))

	// Anonymous (no token at all): a gated repo's 401 is not the
	// operator's token being refused.
	anon := startGateway(t, tr.hub, func(c *config.Config) { c.HuggingFace.Token = "" })
	resp, _ = anon.mustDo(t, http.MethodGet, "/org/gated/resolve/main/weights.bin", nil)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.GreaterOrEqual(t, anon.metric(t, `modelgate_upstream_auth_failures_total{code="401",credential="false",host="huggingface"}`), 1.0)
	assert.Zero(t, anon.metric(t, `modelgate_upstream_auth_failures_total{code="401",credential="true",host="huggingface"}`))

	// A fill: its bytes arrive from the CDN ("other") and it publishes.
	ok := startGateway(t, tr.hub, nil)
	resp, body := ok.mustDo(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Len(t, body, 1<<20)
	assert.GreaterOrEqual(t, ok.metric(t, `modelgate_upstream_received_bytes_total{host="other"}`), float64(1<<20))
	require.Eventually(t, func() bool { return ok.metric(t, `modelgate_fills_total{result="ok"}`) == 1 }, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, float64(1<<20), ok.metric(t, "modelgate_fill_bytes_total"))
	assert.Zero(t, ok.metric(t, `modelgate_fills_total{result="failed"}`))

	// A 429: the backoff gauge shows the time left for the Hub.
	assert.Zero(t, ok.metric(t, `modelgate_upstream_backoff_seconds{host="huggingface"}`))
	tr.hub.RateLimitHub(1, 120*time.Second)
	resp, _ = ok.mustDo(t, http.MethodGet, "/api/models/org/model?x=1", nil)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	left := ok.metric(t, `modelgate_upstream_backoff_seconds{host="huggingface"}`)
	assert.Greater(t, left, 60.0)
	assert.LessOrEqual(t, left, 120.0)
	assert.Zero(t, ok.metric(t, `modelgate_upstream_backoff_seconds{host="civitai"}`))
}
