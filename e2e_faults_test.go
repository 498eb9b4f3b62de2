package main

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
)

func TestACutTransferResumesAndClientsSeeOneCorrectBody(t *testing.T) {
	tr := newTestHub(t, 8<<20)
	g := startGateway(t, tr.hub, nil)
	sha := fakehub.SHA256Hex(tr.big)
	tr.hub.CutBlob(sha, 3<<20, 2) // the first two CDN GETs drop at 3 MiB
	var eg errgroup.Group
	for range 4 {
		eg.Go(func() error {
			resp, body, err := g.do(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
			if err != nil {
				return err
			}
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.True(t, bytes.Equal(tr.big, body), "one uninterrupted, correct body")
			return nil
		})
	}
	require.NoError(t, eg.Wait())
	assert.Equal(t, 2.0, g.metric(t, "modelgate_fill_resumes_total"))
	// The resumed requests asked for the bytes the gateway lacked.
	var ranges []string
	for _, r := range tr.hub.Requests() {
		if r.Server == "cdn" && r.Method == http.MethodGet {
			ranges = append(ranges, r.Header.Get("Range"))
		}
	}
	// Each cut drops the connection 3 MiB into that answer.
	assert.Equal(t, []string{"", "bytes=3145728-", "bytes=6291456-"}, ranges)
	assert.True(t, g.hasBlob(t, sha))
}

func TestAnUpstreamThatIgnoresRangesRestartsTheFillCleanly(t *testing.T) {
	tr := newTestHub(t, 4<<20)
	g := startGateway(t, tr.hub, nil)
	sha := fakehub.SHA256Hex(tr.big)
	tr.hub.CutBlob(sha, 1<<20, 1)
	tr.hub.IgnoreRangeBlob(sha, true)
	resp, body := g.mustDo(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, bytes.Equal(tr.big, body))
	assert.True(t, g.hasBlob(t, sha))
	assert.Equal(t, 1.0, g.metric(t, "modelgate_fill_resumes_total"), "the resume was answered with the whole body")
	assert.Equal(t, 2, tr.hub.CDNBodyFetches(sha))
}

func TestTransientUpstreamErrorsAreRetriedAndPersistentOnesGiveUp(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	g := startGateway(t, tr.hub, func(c *config.Config) { c.Upstream.Retries = 2 })
	sha := fakehub.SHA256Hex(tr.big)

	tr.hub.FailBlob(sha, http.StatusServiceUnavailable, 2)
	resp, body := g.mustDo(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, bytes.Equal(tr.big, body))

	xsha := fakehub.SHA256Hex(tr.xet)
	tr.hub.FailBlob(xsha, http.StatusServiceUnavailable, 100)
	resp, body = g.mustDo(t, http.MethodGet, "/org/model/resolve/main/xet.bin", nil)
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode, string(body))
	assert.False(t, g.hasBlob(t, xsha))
	assert.Equal(t, 1.0, g.metric(t, `modelgate_fill_failures_total{reason="upstream"}`))
}

func TestA429MakesTheGatewayBackOffForEveryone(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, nil)
	tr.hub.RateLimitHub(1, 30*time.Second)
	before := tr.hub.Count("hub", "", "/")
	for _, path := range []string{"/org/model/resolve/main/config.json", "/api/models/org/model", "/org/model/resolve/main/xet.bin"} {
		resp, body := g.mustDo(t, http.MethodGet, path, nil)
		assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode, path)
		assert.NotEmpty(t, resp.Header.Get("Retry-After"), path)
		assert.Contains(t, strings.ToLower(string(body)), "rate", path)
	}
	assert.Equal(t, before+1, tr.hub.Count("hub", "", "/"), "only the first request reached the Hub")
	assert.Equal(t, 1.0, g.metric(t, `modelgate_upstream_rate_limited_total{host="huggingface"}`))
}

func TestEvictionKeepsPinnedReposAndRefetchesEvictedBlobsOnDemand(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	g := startGateway(t, tr.hub, func(c *config.Config) {
		c.Cache.MaxSize = config.ByteSize(2<<20 + 512<<10)
		c.Cache.Pinned = []string{"hf:org/gated@main"}
	})
	get := func(path string, want []byte) {
		t.Helper()
		resp, body := g.mustDo(t, http.MethodGet, path, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		require.True(t, bytes.Equal(want, body), path)
	}
	get("/org/gated/resolve/main/weights.bin", tr.gatedBin)  // 2 MiB, pinned
	get("/org/model/resolve/main/model.safetensors", tr.big) // 1 MiB: over the limit
	require.Eventually(t, func() bool { return g.metric(t, "modelgate_evictions_total") == 1 }, 5*time.Second, 10*time.Millisecond)
	assert.True(t, g.hasBlob(t, fakehub.SHA256Hex(tr.gatedBin)), "the pinned blob stays")
	assert.False(t, g.hasBlob(t, fakehub.SHA256Hex(tr.big)))
	assert.Equal(t, float64(len(tr.big)), g.metric(t, "modelgate_evicted_bytes_total"))

	// The evicted file's metadata still resolves; its bytes are fetched again.
	get("/org/model/resolve/main/model.safetensors", tr.big)
	assert.Equal(t, 2, tr.hub.CDNBodyFetches(fakehub.SHA256Hex(tr.big)))
	assert.Positive(t, g.metric(t, "modelgate_disk_free_bytes"))
}

// The README promises "the Hub is unreachable or answers 5xx → cached blobs
// are served, a branch falls back to its last commit, API answers to their
// last good copy; anything uncached is a 504, never a 401/404". The Hub
// here answers every metadata request with a 5xx (the CDN is fine).
func TestHub5xxServesTheCacheStaleAndA504ForTheRest(t *testing.T) {
	for _, status := range []int{http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			tr := newTestHub(t, 1<<20)
			// revision_ttl 0: every request asks the Hub for the branch.
			g := startGateway(t, tr.hub, func(c *config.Config) { c.Cache.RevisionTTL = config.Duration{} })
			warm := map[string][]byte{
				"/org/model/resolve/main/config.json":       tr.config,
				"/org/model/resolve/main/model.safetensors": tr.big,
				"/api/models/org/model/revision/main":       nil,
			}
			for p := range warm {
				resp, _ := g.mustDo(t, http.MethodGet, p, nil)
				require.Equal(t, http.StatusOK, resp.StatusCode, p)
			}
			tr.hub.FailHub(status, 1<<20)
			before := tr.hub.Count("hub", "", "/")

			for p, want := range warm {
				resp, body := g.mustDo(t, http.MethodGet, p, nil)
				require.Equal(t, http.StatusOK, resp.StatusCode, p)
				if want != nil {
					assert.True(t, bytes.Equal(want, body), p)
					assert.Equal(t, tr.main, resp.Header.Get("X-Repo-Commit"), p)
				} else {
					assert.Contains(t, resp.Header.Get("Warning"), "110", "an API answer says it is stale")
				}
			}
			assert.Greater(t, tr.hub.Count("hub", "", "/"), before, "the gateway did ask the failing Hub")
			assert.Positive(t, g.metric(t, `modelgate_stale_answers_total{kind="revision"}`))

			for _, p := range []string{"/org/model/resolve/main/xet.bin", "/api/models/org/gated", "/org/gated/resolve/main/weights.bin"} {
				resp, body := g.mustDo(t, http.MethodGet, p, nil)
				assert.Equal(t, http.StatusGatewayTimeout, resp.StatusCode, "%s: %s", p, body)
			}
			assert.Empty(t, filesExcept(g.blobFiles(t), fakehub.SHA256Hex(tr.big), fakehub.GitBlobSHA1(tr.config)), "nothing new on disk")

			// Once the Hub is healthy again, the same requests work.
			tr.hub.FailHub(0, 0)
			resp, body := g.mustDo(t, http.MethodGet, "/org/model/resolve/main/xet.bin", nil)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			assert.True(t, bytes.Equal(tr.xet, body))
		})
	}
}

// filesExcept drops the files whose names end in one of names.
func filesExcept(files []string, names ...string) []string {
	var out []string
	for _, f := range files {
		keep := true
		for _, n := range names {
			if strings.HasSuffix(f, n) {
				keep = false
			}
		}
		if keep {
			out = append(out, f)
		}
	}
	return out
}
