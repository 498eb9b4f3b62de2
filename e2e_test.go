package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
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

// testRepos is the fake Hub's content for the end-to-end tests.
type testRepos struct {
	hub                *fakehub.Hub
	main, pr           string // commits
	big, xet, gatedBin []byte // LFS contents
	config, prConfig   []byte // small-file contents
	nested             []byte
}

func newTestHub(t *testing.T, bigSize int) *testRepos {
	t.Helper()
	hub := fakehub.New(t, fakehub.Options{Token: operatorToken, OtherTokens: []string{workerToken}, PageSize: 2})
	tr := &testRepos{
		hub:      hub,
		main:     fakehub.Commit("main"),
		pr:       fakehub.Commit("pr1"),
		big:      fakehub.RandomData(1, bigSize),
		xet:      fakehub.RandomData(2, 1<<20+3),
		gatedBin: fakehub.RandomData(3, 2<<20),
		config:   []byte(`{"model_type":"bert","hidden_size":768}`),
		prConfig: []byte(`{"model_type":"bert","hidden_size":1024}`),
		nested:   []byte("hello from a nested file with spaces\n"),
	}
	hub.AddRepo(fakehub.Repo{
		ID:   "org/model",
		Refs: map[string]string{"main": tr.main, "refs/pr/1": tr.pr},
		Commits: map[string][]fakehub.File{
			tr.main: {
				{Path: "config.json", Data: tr.config},
				{Path: "model.safetensors", Data: tr.big, LFS: true},
				{Path: "xet.bin", Data: tr.xet, Xet: true},
				{Path: "sub dir/a b.txt", Data: tr.nested},
			},
			tr.pr: {
				{Path: "config.json", Data: tr.prConfig},
				{Path: "model.safetensors", Data: tr.big, LFS: true},
			},
		},
	})
	hub.AddRepo(fakehub.Repo{
		ID:      "org/gated",
		Gated:   true,
		Refs:    map[string]string{"main": tr.main},
		Commits: map[string][]fakehub.File{tr.main: {{Path: "weights.bin", Data: tr.gatedBin, LFS: true}}},
	})
	return tr
}

func TestColdThenWarmDownloadFetchesUpstreamOnce(t *testing.T) {
	skipIfShort(t, "a 64 MiB blob")
	tr := newTestHub(t, 64<<20)
	g := startGateway(t, tr.hub, nil)
	sha := fakehub.SHA256Hex(tr.big)

	resp, body := g.mustDo(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.True(t, bytes.Equal(tr.big, body), "cold body differs")
	// A parallel fill: four 16 MiB pieces, each byte fetched once.
	assertFetchedOnce(t, tr.hub.CDNBodySpans(sha), int64(len(tr.big)))
	require.Equal(t, 4, tr.hub.CDNBodyFetches(sha))

	resp, body = g.mustDo(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.True(t, bytes.Equal(tr.big, body), "warm body differs")
	assert.Equal(t, 4, tr.hub.CDNBodyFetches(sha), "the warm download must not fetch the body again")

	size := float64(len(tr.big))
	for series, want := range map[string]float64{
		`modelgate_requests_total{result="hit",route="resolve"}`:     1,
		`modelgate_requests_total{result="miss",route="resolve"}`:    1,
		`modelgate_served_bytes_total{source="cache"}`:               size,
		`modelgate_served_bytes_total{source="fill"}`:                size,
		`modelgate_cache_blobs`:                                      1,
		`modelgate_cache_blob_bytes`:                                 size,
		`modelgate_upstream_requests_total{code="2xx",host="other"}`: 4,
		`modelgate_fill_pieces_total{result="fetched"}`:              4,
		`modelgate_fill_connections`:                                 0,
		`modelgate_fill_throughput_mib_per_second_count`:             1,
	} {
		assert.Equal(t, want, g.metric(t, series), series)
	}
	assert.Contains(t, g.Logs.String(), "route=resolve result=hit mode=mirror status=200 bytes=67108864")
}

func TestResolveAnswersLikeTheHubWithoutRedirect(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	g := startGateway(t, tr.hub, nil)
	sha := fakehub.SHA256Hex(tr.big)
	sha1 := fakehub.GitBlobSHA1(tr.config)

	tests := []struct {
		name, path string
		etag       string
		size       int
		filename   string
	}{
		{"LFS file", "/org/model/resolve/main/model.safetensors", sha, len(tr.big), "model.safetensors"},
		{"small git file", "/org/model/resolve/main/config.json", sha1, len(tr.config), "config.json"},
		{"Xet file", "/org/model/resolve/main/xet.bin", fakehub.SHA256Hex(tr.xet), len(tr.xet), "xet.bin"},
		{"encoded path", "/org/model/resolve/main/sub%20dir/a%20b.txt", fakehub.GitBlobSHA1(tr.nested), len(tr.nested), "a b.txt"},
		{"resolve-cache route", "/api/resolve-cache/models/org/model/" + tr.main + "/config.json", sha1, len(tr.config), "config.json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, method := range []string{http.MethodHead, http.MethodGet} {
				resp, body := g.mustDo(t, method, tt.path, nil)
				require.Equal(t, http.StatusOK, resp.StatusCode, method)
				h := resp.Header
				assert.Equal(t, tr.main, h.Get("X-Repo-Commit"))
				assert.Equal(t, `"`+tt.etag+`"`, h.Get("ETag"))
				assert.Equal(t, `"`+tt.etag+`"`, h.Get("X-Linked-Etag"))
				assert.Equal(t, strconv.Itoa(tt.size), h.Get("X-Linked-Size"))
				assert.Equal(t, strconv.Itoa(tt.size), h.Get("Content-Length"))
				assert.Equal(t, "bytes", h.Get("Accept-Ranges"))
				assert.Contains(t, h.Get("Content-Disposition"), tt.filename)
				assert.Empty(t, h.Get("Location"))
				for k := range h {
					assert.False(t, strings.HasPrefix(k, "X-Xet-"), "header %s leaks Xet", k)
				}
				assert.NotContains(t, h.Get("Link"), "xet")
				if method == http.MethodGet {
					assert.Len(t, body, tt.size)
				}
			}
		})
	}
}

func TestConcurrentColdClientsShareOneUpstreamFetch(t *testing.T) {
	tr := newTestHub(t, 16<<20)
	g := startGateway(t, tr.hub, nil)
	sha := fakehub.SHA256Hex(tr.big)
	release := tr.hub.GateBlob(sha, 4<<20)

	var eg errgroup.Group
	answered := make(chan struct{}, 16)
	for i := range 16 {
		eg.Go(func() error {
			status, body, err := getAnswered(g.Client, g.URL+"/org/model/resolve/main/model.safetensors", answered)
			if err != nil {
				return err
			}
			if status != http.StatusOK || !bytes.Equal(body, tr.big) {
				return fmt.Errorf("client %d: status %d, %d bytes, correct=%v", i, status, len(body), bytes.Equal(body, tr.big))
			}
			return nil
		})
	}
	// Hold the upstream until all 16 are answered (the fill cannot finish
	// before, so each joined it), then let it finish.
	waitAnswered(t, answered, 16)
	release()
	require.NoError(t, eg.Wait())
	assert.Equal(t, 1, tr.hub.CDNBodyFetches(sha))
	assert.Equal(t, 1.0, g.metric(t, `modelgate_requests_total{result="miss",route="resolve"}`))
	assert.Equal(t, 15.0, g.metric(t, `modelgate_requests_total{result="coalesced",route="resolve"}`))
	assert.Equal(t, 1, tr.hub.Count("hub", http.MethodHead, "/org/model/resolve/main/model.safetensors"),
		"the 16 metadata lookups shared one HEAD")
}

func TestRangeIsServedWhileTheFillRuns(t *testing.T) {
	tr := newTestHub(t, 8<<20)
	g := startGateway(t, tr.hub, nil)
	sha := fakehub.SHA256Hex(tr.big)
	release := tr.hub.GateBlob(sha, 2<<20)
	path := "/org/model/resolve/main/model.safetensors"

	// A full download starts the fill, which stalls at 2 MiB upstream.
	full := make(chan []byte, 1)
	go func() {
		_, body, _ := g.do(t, http.MethodGet, path, nil)
		full <- body
	}()
	require.Eventually(t, func() bool { return g.metric(t, "modelgate_fills_in_flight") == 1 },
		5*time.Second, 5*time.Millisecond)

	// A range inside what has landed streams now, from the growing file,
	// all but its final byte, which waits for the blob to verify.
	req, _ := http.NewRequest(http.MethodGet, g.URL+path, nil)
	req.Header.Set("Range", "bytes=1000-1999")
	resp, err := g.Client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	assert.Equal(t, fmt.Sprintf("bytes 1000-1999/%d", len(tr.big)), resp.Header.Get("Content-Range"))
	first := make([]byte, 999)
	_, err = io.ReadFull(resp.Body, first)
	require.NoError(t, err)
	assert.Equal(t, tr.big[1000:1999], first)
	assert.Equal(t, 1, tr.hub.CDNBodyFetches(sha), "the range did not go upstream")
	assert.Equal(t, 1.0, g.metric(t, "modelgate_fills_in_flight"), "the fill is still running")

	// The final byte is held back while the fill cannot finish: a reader
	// waiting for it gets nothing (a window is the only way to see an
	// absence; a gateway that sent the byte early fails well inside it).
	rest := make(chan []byte, 1)
	go func() {
		b, err := io.ReadAll(resp.Body)
		assert.NoError(t, err)
		rest <- b
	}()
	select {
	case b := <-rest:
		t.Fatalf("the range's final byte (%d bytes) arrived before the blob was verified", len(b))
	case <-time.After(300 * time.Millisecond):
	}
	assert.Equal(t, 1.0, g.metric(t, "modelgate_fills_in_flight"), "the fill is still held")

	release()
	assert.Equal(t, tr.big[1999:2000], <-rest)
	assert.True(t, bytes.Equal(tr.big, <-full))
	assert.Equal(t, 1, tr.hub.CDNBodyFetches(sha))
}

func TestRangesAndConditionalRequests(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	g := startGateway(t, tr.hub, nil)
	size := len(tr.big)
	path := "/org/model/resolve/main/model.safetensors"
	etag := `"` + fakehub.SHA256Hex(tr.big) + `"`

	tests := []struct {
		name         string
		header       http.Header
		status       int
		contentRange string
		body         []byte
	}{
		{"open range", http.Header{"Range": {"bytes=100-"}}, 206, fmt.Sprintf("bytes 100-%d/%d", size-1, size), tr.big[100:]},
		{"closed range", http.Header{"Range": {"bytes=0-0"}}, 206, fmt.Sprintf("bytes 0-0/%d", size), tr.big[:1]},
		{"end past EOF is clamped", http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", size-10, size+100)}}, 206, fmt.Sprintf("bytes %d-%d/%d", size-10, size-1, size), tr.big[size-10:]},
		{"suffix", http.Header{"Range": {"bytes=-5"}}, 206, fmt.Sprintf("bytes %d-%d/%d", size-5, size-1, size), tr.big[size-5:]},
		{"start at size", http.Header{"Range": {fmt.Sprintf("bytes=%d-", size)}}, 416, fmt.Sprintf("bytes */%d", size), nil},
		{"matching If-None-Match", http.Header{"If-None-Match": {etag}}, 304, "", nil},
		{"stale If-Range serves all", http.Header{"Range": {"bytes=0-9"}, "If-Range": {`"other"`}}, 200, "", tr.big},
	}
	// Run each case cold (first request fills) and warm.
	for _, pass := range []string{"cold", "warm"} {
		for _, tt := range tests {
			t.Run(pass+"/"+tt.name, func(t *testing.T) {
				resp, body := g.mustDo(t, http.MethodGet, path, tt.header)
				require.Equal(t, tt.status, resp.StatusCode)
				assert.Equal(t, tt.contentRange, resp.Header.Get("Content-Range"))
				if tt.body != nil {
					assert.True(t, bytes.Equal(tt.body, body), "body differs")
				}
				// HEAD answers what GET would, Range and all (clients
				// probe a range's length with it).
				head, _ := g.mustDo(t, http.MethodHead, path, tt.header)
				assert.Equal(t, tt.status, head.StatusCode, "HEAD")
				assert.Equal(t, tt.contentRange, head.Header.Get("Content-Range"), "HEAD")
				if tt.body != nil {
					assert.Equal(t, strconv.Itoa(len(tt.body)), head.Header.Get("Content-Length"), "HEAD")
				}
			})
		}
	}
}

func TestGatedRepoWorksForAWorkerWithoutTokenAndTheTokenNeverLeaks(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	g := startGateway(t, tr.hub, nil)
	sha := fakehub.SHA256Hex(tr.gatedBin)

	for _, header := range []http.Header{
		nil, // a worker with no token at all
		{"Authorization": {"Bearer " + workerToken}}, // a worker's own token is replaced, not forwarded
	} {
		resp, body := g.mustDo(t, http.MethodGet, "/org/gated/resolve/main/weights.bin", header)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.True(t, bytes.Equal(tr.gatedBin, body))
		resp, _ = g.mustDo(t, http.MethodHead, "/org/gated/resolve/main/weights.bin", header)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		resp, _ = g.mustDo(t, http.MethodGet, "/api/models/org/gated/tree/main", header)
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	assert.Equal(t, 1, tr.hub.CDNBodyFetches(sha))

	// The Hub received only the operator's token.
	for _, a := range hubAuthHeaders(tr.hub) {
		assert.Equal(t, "Bearer "+operatorToken, a)
	}
	// Nothing the worker or the CDN received, nor the logs or metrics,
	// carries either secret.
	leaks, scanned := g.Received.Leaks()
	assert.Empty(t, leaks, "worker traffic carries a secret")
	assert.Greater(t, scanned, int64(len(tr.gatedBin)), "the scan saw the bodies")
	assertNoLeak(t, "CDN traffic", cdnTraffic(tr.hub), operatorToken, workerToken)
	assertNoLeak(t, "metrics", []byte(g.metrics(t)), operatorToken, workerToken)
	assertNoLeak(t, "logs", []byte(g.Logs.String()), operatorToken, workerToken)
	for _, r := range tr.hub.Requests() {
		if r.Server == "cdn" {
			assert.Empty(t, r.Header.Values("Authorization"), "the CDN must never see Authorization")
		}
	}
}

func TestCorruptUpstreamBytesAreNeverPublished(t *testing.T) {
	tr := newTestHub(t, 4<<20)
	g := startGateway(t, tr.hub, nil)
	sha := fakehub.SHA256Hex(tr.big)
	tr.hub.CorruptBlob(sha, true)
	path := "/org/model/resolve/main/model.safetensors"

	// Several clients stream the corrupt fill; none may end with a
	// complete body.
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, body, err := g.do(t, http.MethodGet, path, nil)
			if err == nil {
				assert.NotEqual(t, http.StatusOK, resp.StatusCode, "a corrupt fill must not complete a 200")
			}
			assert.Less(t, len(body), len(tr.big))
		}()
	}
	wg.Wait()
	require.Eventually(t, func() bool { return g.metric(t, "modelgate_fills_in_flight") == 0 }, 5*time.Second, 10*time.Millisecond)
	assert.Empty(t, g.blobFiles(t), "nothing is published, no temp file is left")
	assert.GreaterOrEqual(t, g.metric(t, `modelgate_fill_failures_total{reason="verify"}`), 1.0)

	// The next request starts over and succeeds once the upstream is good.
	tr.hub.CorruptBlob(sha, false)
	resp, body := g.mustDo(t, http.MethodGet, path, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, bytes.Equal(tr.big, body))
}

// The Hub gzips small text files for clients that accept it; the gateway
// fetches and verifies the plain bytes whatever the worker accepts.
func TestSmallTextFilesArriveIntactForWorkersThatAcceptGzip(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, nil)
	for range 2 { // cold, then from the cache
		resp, body := g.mustDo(t, http.MethodGet, "/org/model/resolve/main/config.json", http.Header{"Accept-Encoding": {"gzip"}})
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Empty(t, resp.Header.Get("Content-Encoding"))
		assert.Equal(t, tr.config, body)
	}
	assert.Equal(t, 1, tr.hub.SmallBodyFetches(tr.main, "config.json"))
}

// Small files are identified by their git blob id and verified against it
// like LFS blobs against their sha256.
func TestCorruptSmallFilesAreNeverPublished(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, nil)
	tr.hub.CorruptSmallFile(fakehub.GitBlobSHA1(tr.config), true)
	path := "/org/model/resolve/main/config.json"

	resp, body, err := g.do(t, http.MethodGet, path, nil)
	if err == nil {
		assert.NotEqual(t, http.StatusOK, resp.StatusCode, "a corrupt small file must not complete a 200")
	}
	assert.Less(t, len(body), len(tr.config))
	require.Eventually(t, func() bool { return g.metric(t, "modelgate_fills_in_flight") == 0 }, 5*time.Second, 10*time.Millisecond)
	assert.Empty(t, g.blobFiles(t), "nothing is published, no temp file is left")
	assert.Equal(t, 1.0, g.metric(t, `modelgate_fill_failures_total{reason="verify"}`))

	tr.hub.CorruptSmallFile(fakehub.GitBlobSHA1(tr.config), false)
	resp, body = g.mustDo(t, http.MethodGet, path, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, tr.config, body)
}

func TestPullRequestRevisionResolves(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, nil)
	resp, body := g.mustDo(t, http.MethodGet, "/org/model/resolve/refs%2Fpr%2F1/config.json", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, tr.prConfig, body)
	assert.Equal(t, tr.pr, resp.Header.Get("X-Repo-Commit"))

	resp, body = g.mustDo(t, http.MethodGet, "/api/models/org/model/revision/refs%2Fpr%2F1", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var info struct{ SHA string }
	require.NoError(t, json.Unmarshal(body, &info))
	assert.Equal(t, tr.pr, info.SHA)
}

func TestBadInputIsRefusedAndTouchesNothing(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, nil)
	before := len(tr.hub.Requests())

	tests := []struct{ name, rawPath string }{
		{"dot-dot segments", "/org/model/resolve/main/../../../etc/passwd"},
		{"encoded dot-dot", "/org/model/resolve/main/%2e%2e/%2e%2e/etc/passwd"},
		{"encoded slash in file segment", "/org/model/resolve/main/..%2F..%2Fetc%2Fpasswd"},
		{"NUL byte", "/org/model/resolve/main/config.json%00.txt"},
		{"backslash", "/org/model/resolve/main/..%5C..%5Cwin.ini"},
		{"encoded slash in repo id", "/org%2Fmodel/x/resolve/main/config.json"},
		{"dot-dot repo id", "/../model/resolve/main/config.json"},
		{"invalid revision", "/org/model/resolve/main~1/config.json"},
		{"revision climbing", "/org/model/resolve/..%2F..%2Fmain/config.json"},
		{"empty path segment", "/org/model/resolve/main/sub//config.json"},
		{"over-long path", "/org/model/resolve/main/" + strings.Repeat("a/", 600) + "x"},
		{"api tree traversal", "/api/models/org/model/tree/main/..%2F.."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := g.mustDo(t, http.MethodGet, tt.rawPath, nil)
			assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "body: %s", body)
			assert.NotEmpty(t, resp.Header.Get("X-Error-Message"))
		})
	}
	assert.Equal(t, before, len(tr.hub.Requests()), "no bad request reached the upstream")
	assert.Empty(t, g.blobFiles(t))

	// Oversized headers are refused by the listener itself.
	resp, _ := g.mustDo(t, http.MethodGet, "/org/model/resolve/main/config.json", http.Header{"X-Big": {strings.Repeat("x", 128<<10)}})
	assert.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
}

func TestUpstreamErrorsKeepTheirStatusAndCodes(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	tests := []struct {
		name      string
		token     string
		path      string
		status    int
		errorCode string
		commit    string
	}{
		{"missing file", operatorToken, "/org/model/resolve/main/nope.bin", 404, "EntryNotFound", tr.main},
		{"missing revision", operatorToken, "/org/model/resolve/nobranch/config.json", 404, "RevisionNotFound", ""},
		{"missing repo", operatorToken, "/org/none/resolve/main/config.json", 404, "RepoNotFound", ""},
		{"gated without operator token", "", "/org/gated/resolve/main/weights.bin", 401, "GatedRepo", ""},
		{"gated tree without operator token", "", "/api/models/org/gated/tree/main", 401, "GatedRepo", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := startGateway(t, tr.hub, func(c *config.Config) { c.HuggingFace.Token = config.Secret(tt.token) })
			for _, method := range []string{http.MethodHead, http.MethodGet} {
				resp, _ := g.mustDo(t, method, tt.path, nil)
				assert.Equal(t, tt.status, resp.StatusCode, method)
				assert.Equal(t, tt.errorCode, resp.Header.Get("X-Error-Code"), method)
				assert.NotEmpty(t, resp.Header.Get("X-Error-Message"), method)
				assert.Equal(t, tt.commit, resp.Header.Get("X-Repo-Commit"), method)
			}
		})
	}
}

func TestUnreachableUpstreamIsA504NotA404(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, nil)
	tr.hub.SetDown(true)
	for _, path := range []string{"/org/model/resolve/main/config.json", "/api/models/org/model", "/api/models/org/model/refs"} {
		resp, body := g.mustDo(t, http.MethodGet, path, nil)
		assert.Equal(t, http.StatusGatewayTimeout, resp.StatusCode, path)
		assert.Contains(t, string(body), "unreachable")
	}
	// Once up again, the same requests work.
	tr.hub.SetDown(false)
	resp, body := g.mustDo(t, http.MethodGet, "/org/model/resolve/main/config.json", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, tr.config, body)
}

func TestWhileTheUpstreamIsDownCachedFilesAndLastKnownAnswersAreServed(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	g := startGateway(t, tr.hub, func(c *config.Config) { c.Cache.RevisionTTL = config.Duration{Duration: time.Second} })
	warm := []string{
		"/org/model/resolve/main/config.json",
		"/org/model/resolve/main/model.safetensors",
		"/api/models/org/model/revision/main",
		"/api/models/org/model/tree/main?recursive=true",
	}
	for _, p := range warm {
		resp, _ := g.mustDo(t, http.MethodGet, p, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, p)
	}
	tr.hub.SetDown(true)
	// Wait for the branch's answers to expire: then the gateway must fall
	// back to what it last knew, saying so.
	require.Eventually(t, func() bool {
		resp, _ := g.mustDo(t, http.MethodGet, "/api/models/org/model/revision/main", nil)
		return resp.StatusCode == http.StatusOK && strings.Contains(resp.Header.Get("Warning"), "Stale")
	}, 10*time.Second, 50*time.Millisecond)

	for _, p := range warm {
		resp, _ := g.mustDo(t, http.MethodGet, p, nil)
		assert.Equal(t, http.StatusOK, resp.StatusCode, p)
		if strings.Contains(p, "/resolve/") {
			assert.Equal(t, tr.main, resp.Header.Get("X-Repo-Commit"), p)
		}
	}
	resp, _ := g.mustDo(t, http.MethodGet, "/api/models/org/model/revision/main", nil)
	assert.Contains(t, resp.Header.Get("Warning"), "Stale")
	assert.GreaterOrEqual(t, g.metric(t, `modelgate_stale_answers_total{kind="revision"}`), 2.0)
	assert.GreaterOrEqual(t, g.metric(t, `modelgate_stale_answers_total{kind="api"}`), 2.0)

	// What was never cached is a 504 that says why — not a 401 or 404
	// that would make a client think the repo is gone.
	resp, body := g.mustDo(t, http.MethodGet, "/org/model/resolve/main/xet.bin", nil)
	assert.Equal(t, http.StatusGatewayTimeout, resp.StatusCode)
	assert.Contains(t, string(body), "unreachable")
}

func TestOfflineGatewayAnswersFromItsCacheOnly(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	online := startGateway(t, tr.hub, nil)
	for _, p := range []string{"/org/model/resolve/main/model.safetensors", "/api/models/org/model/tree/" + tr.main} {
		resp, _ := online.mustDo(t, http.MethodGet, p, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, p)
	}
	online.Stop()

	before := len(tr.hub.Requests())
	offline := startGateway(t, tr.hub, func(c *config.Config) {
		c.DataDir = online.DataDir
		c.Offline = true
	})
	resp, body := offline.mustDo(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, bytes.Equal(tr.big, body))
	resp, _ = offline.mustDo(t, http.MethodGet, "/api/models/org/model/tree/"+tr.main, nil)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	for _, p := range []string{"/org/model/resolve/main/config.json", "/api/models/org/other", "/api/models/org/model/refs"} {
		resp, body = offline.mustDo(t, http.MethodGet, p, nil)
		assert.Equal(t, http.StatusGatewayTimeout, resp.StatusCode, p)
		assert.Contains(t, string(body), "offline", p)
	}
	assert.Equal(t, before, len(tr.hub.Requests()), "an offline gateway never touches the network")
	assert.Equal(t, 3.0, offline.metric(t, "modelgate_offline_refusals_total"))
	assert.Equal(t, "403", rawConnect(t, offline, "example.org:443"), "nor tunnels")
}

func TestTreeIsPaginatedThroughTheGatewayWithoutXetAndCachedForCommits(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, nil)

	collect := func(first string) []map[string]any {
		var all []map[string]any
		next := first
		for next != "" {
			resp, body := g.mustDo(t, http.MethodGet, next, nil)
			require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
			var page []map[string]any
			require.NoError(t, json.Unmarshal(body, &page))
			all = append(all, page...)
			next = ""
			if link := resp.Header.Get("Link"); link != "" {
				require.Contains(t, link, `rel="next"`)
				u := link[strings.Index(link, "<")+1 : strings.Index(link, ">")]
				require.True(t, strings.HasPrefix(u, g.URL), "next link %q must point at the gateway", u)
				next = strings.TrimPrefix(u, g.URL)
			}
		}
		return all
	}
	first := "/api/models/org/model/tree/" + tr.main + "?recursive=true&expand=false"
	entries := collect(first)
	var paths []string
	for _, e := range entries {
		paths = append(paths, e["path"].(string))
		assert.NotContains(t, e, "xetHash")
	}
	assert.ElementsMatch(t, []string{"config.json", "model.safetensors", "sub dir", "sub dir/a b.txt", "xet.bin"}, paths)

	// The same pages again come from the index: no upstream tree request.
	before := tr.hub.Count("hub", http.MethodGet, "/api/models/org/model/tree/")
	assert.Len(t, collect(first), len(entries))
	assert.Equal(t, before, tr.hub.Count("hub", http.MethodGet, "/api/models/org/model/tree/"))

	// paths-info answers without xetHash too, and is cached per body.
	req, _ := http.NewRequest(http.MethodPost, g.URL+"/api/models/org/model/paths-info/"+tr.main, strings.NewReader("paths=xet.bin&paths=config.json&expand=false"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for range 2 {
		req.Body = io.NopCloser(strings.NewReader("paths=xet.bin&paths=config.json&expand=false"))
		resp, err := g.Client.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		assert.NotContains(t, string(body), "xetHash")
		assert.Contains(t, string(body), "xet.bin")
	}
	assert.Equal(t, 1, tr.hub.Count("hub", http.MethodPost, "/api/models/org/model/paths-info/"))
}

func TestBranchAnswersExpireAfterRevisionTTL(t *testing.T) {
	// The index keeps expiry times in whole seconds (badger truncates
	// now+ttl to a second), so an entry lives between ttl-1s and ttl. With
	// a 2 s TTL, two requests less than a second apart are always within
	// it, whichever second boundary they straddle.
	const ttl = 2 * time.Second
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, func(c *config.Config) { c.Cache.RevisionTTL = config.Duration{Duration: ttl} })
	path := "/org/model/resolve/main/config.json"
	heads := func() int { return tr.hub.Count("hub", http.MethodHead, "/org/model/resolve/main/") }

	start := time.Now()
	g.mustDo(t, http.MethodHead, path, nil)
	g.mustDo(t, http.MethodHead, path, nil)
	if time.Since(start) < ttl-time.Second {
		assert.Equal(t, 1, heads(), "within the TTL the branch's commit is trusted")
	} else {
		t.Logf("two requests took %s; the within-TTL check cannot be made", time.Since(start))
	}
	require.Eventually(t, func() bool {
		g.mustDo(t, http.MethodHead, path, nil)
		return heads() == 2
	}, 10*time.Second, 100*time.Millisecond, "after the TTL the branch is asked again")
	assert.GreaterOrEqual(t, time.Since(start), ttl-time.Second, "the answer lived at least ttl-1s")

	// A commit id never expires.
	commitPath := "/org/model/resolve/" + tr.main + "/config.json"
	g.mustDo(t, http.MethodHead, commitPath, nil)
	n := tr.hub.Count("hub", http.MethodHead, "/org/model/resolve/"+tr.main)
	g.mustDo(t, http.MethodHead, commitPath, nil)
	assert.Equal(t, n, tr.hub.Count("hub", http.MethodHead, "/org/model/resolve/"+tr.main))
}

func TestXetFileInfoAcceptIsNotForwarded(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, nil)
	resp, _ := g.mustDo(t, http.MethodGet, "/api/models/org/model", http.Header{"Accept": {"application/vnd.xet-fileinfo+json, */*"}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	for _, r := range tr.hub.Requests() {
		assert.NotContains(t, r.Header.Get("Accept"), "xet")
	}
	// huggingface.js's probe (GET with Range 0-0) gets a plain 206.
	resp, body := g.mustDo(t, http.MethodGet, "/org/model/resolve/main/xet.bin", http.Header{
		"Accept": {"application/vnd.xet-fileinfo+json, */*"}, "Range": {"bytes=0-0"}})
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	assert.Equal(t, tr.xet[:1], body)
	assert.Equal(t, fmt.Sprintf("bytes 0-0/%d", len(tr.xet)), resp.Header.Get("Content-Range"))
	assert.NotContains(t, resp.Header.Get("Content-Type"), "xet")
}

// Datasets, spaces and private repos go the same way as models, in both
// modes; a private repo stays invisible to a gateway without the token.
func TestDatasetSpaceAndPrivateReposAreServed(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	commit := fakehub.Commit("types")
	parquet := fakehub.RandomData(60, 1<<20+1)
	app := []byte("import gradio as gr\n")
	private := fakehub.RandomData(61, 300<<10)
	tr.hub.AddRepo(fakehub.Repo{Type: fakehub.TypeDataset, ID: "org/data", Refs: map[string]string{"main": commit},
		Commits: map[string][]fakehub.File{commit: {{Path: "data/train.parquet", Data: parquet, LFS: true}}}})
	tr.hub.AddRepo(fakehub.Repo{Type: fakehub.TypeSpace, ID: "org/app", Refs: map[string]string{"main": commit},
		Commits: map[string][]fakehub.File{commit: {{Path: "app.py", Data: app}}}})
	tr.hub.AddRepo(fakehub.Repo{ID: "org/private", Private: true, Refs: map[string]string{"main": commit},
		Commits: map[string][]fakehub.File{commit: {{Path: "w.bin", Data: private, LFS: true}}}})
	tr.hub.AddRename("org/old-app", "org/app")
	g := startGateway(t, tr.hub, nil)
	proxy := g.proxyClient(t)

	files := []struct {
		path string
		want []byte
	}{
		{"/datasets/org/data/resolve/main/data/train.parquet", parquet},
		{"/spaces/org/app/resolve/main/app.py", app},
		{"/org/private/resolve/main/w.bin", private},
	}
	for _, f := range files {
		resp, body := g.mustDo(t, http.MethodGet, f.path, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, f.path)
		assert.True(t, bytes.Equal(f.want, body), f.path)
		assert.Equal(t, commit, resp.Header.Get("X-Repo-Commit"), f.path)

		presp, err := proxy.Get("https://" + hubHost + f.path)
		require.NoError(t, err)
		pbody, err := io.ReadAll(presp.Body)
		presp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, presp.StatusCode, "proxy "+f.path)
		assert.True(t, bytes.Equal(f.want, pbody), "proxy "+f.path)
	}
	for _, p := range []string{"/api/datasets/org/data/tree/main/data", "/api/spaces/org/app", "/api/models/org/private"} {
		resp, body := g.mustDo(t, http.MethodGet, p, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, p)
		assert.Contains(t, string(body), `"`, p)
	}
	assert.Equal(t, 1, tr.hub.CDNBodyFetches(fakehub.SHA256Hex(parquet)), "both modes share the cache")
	assert.Equal(t, 1, tr.hub.CDNBodyFetches(fakehub.SHA256Hex(private)))

	// A renamed repo: the Hub answers a relative 307 to the new name, and
	// the worker still gets the file (from the gateway, not a redirect).
	resp, body := g.mustDo(t, http.MethodGet, "/spaces/org/old-app/resolve/main/app.py", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, app, body)
	assert.Positive(t, tr.hub.Count("hub", "", "/spaces/org/old-app/"), "the old name was asked")

	// Without the operator's token the private repo does not exist.
	anon := startGateway(t, tr.hub, func(c *config.Config) { c.HuggingFace.Token = "" })
	resp, _ = anon.mustDo(t, http.MethodGet, "/org/private/resolve/main/w.bin", nil)
	assert.Contains(t, []int{http.StatusUnauthorized, http.StatusNotFound}, resp.StatusCode)
	assert.Equal(t, "RepoNotFound", resp.Header.Get("X-Error-Code"))
}
