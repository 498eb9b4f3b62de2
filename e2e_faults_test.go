package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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

// Issue 10 item 6: an upstream that cuts every transfer and ignores Range
// used to make the fill restart from zero forever (each restart counted as
// progress), hanging the client and hitting the CDN several times a second.
func TestAnUpstreamThatCutsEveryTransferAndIgnoresRangesIsGivenUpOn(t *testing.T) {
	tr := newTestHub(t, 4<<20)
	g := startGateway(t, tr.hub, func(c *config.Config) { c.Upstream.Retries = 2 })
	sha := fakehub.SHA256Hex(tr.big)
	tr.hub.CutBlob(sha, 1<<20, 1000)
	tr.hub.IgnoreRangeBlob(sha, true)
	done := make(chan error, 1)
	go func() {
		resp, body, err := g.do(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
		if err == nil && resp.StatusCode == http.StatusOK && len(body) == len(tr.big) {
			err = errors.New("a complete body was served")
		}
		done <- err
	}()
	select {
	case err := <-done:
		require.Error(t, err, "the client's answer is aborted, not completed")
	case <-time.After(30 * time.Second):
		t.Fatal("the download never ended")
	}
	assert.False(t, g.hasBlob(t, sha))
	require.Eventually(t, func() bool {
		return g.metric(t, `modelgate_fill_failures_total{reason="upstream"}`) == 1
	}, 10*time.Second, 10*time.Millisecond)
	// The attempt that reached 1 MiB, then two retries that got no further.
	assert.Equal(t, 3, tr.hub.CDNBodyFetches(sha))
}

// Issue 10 item 8: a `Range: bytes=0-0` abandoned after 0.3 s used to make
// the gateway download the whole file. The fill nobody reads stops after
// cache.orphan_fill_timeout and keeps what it has; the next request resumes.
func TestAnAbandonedProbeDoesNotDownloadTheWholeBlob(t *testing.T) {
	tr := newTestHub(t, 8<<20)
	g := startGateway(t, tr.hub, func(c *config.Config) {
		c.Cache.OrphanFillTimeout = config.Duration{Duration: 300 * time.Millisecond}
	})
	sha := fakehub.SHA256Hex(tr.big)
	tr.hub.ThrottleBlob(sha, 2<<20) // the whole blob would take 4 s

	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.URL+"/org/model/resolve/main/model.safetensors", nil)
	require.NoError(t, err)
	req.Header.Set("Range", "bytes=0-0")
	resp, err := g.Client.Do(req)
	if err == nil {
		_, err = io.ReadAll(resp.Body) // its one byte waits for verification
		resp.Body.Close()
	}
	cancel()
	require.Error(t, err, "the probe was abandoned")

	require.Eventually(t, func() bool {
		return g.metric(t, `modelgate_fill_failures_total{reason="abandoned"}`) == 1
	}, 10*time.Second, 10*time.Millisecond, "the fill nobody reads stops")
	fetched := tr.hub.CDNBodyBytes(sha)
	assert.Less(t, fetched, int64(len(tr.big))/2, "only what arrived before it stopped")
	assert.False(t, g.hasBlob(t, sha))

	tr.hub.ThrottleBlob(sha, 0)
	resp2, body := g.mustDo(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
	require.Equal(t, http.StatusOK, resp2.StatusCode)
	assert.True(t, bytes.Equal(tr.big, body))
	assert.LessOrEqual(t, tr.hub.CDNBodyBytes(sha), int64(len(tr.big))+fetched/4+(256<<10),
		"the next request resumed from the kept bytes")
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
	// The fill counts its failure after its readers were told: wait for it.
	assert.Eventually(t, func() bool {
		return g.metric(t, `modelgate_fill_failures_total{reason="upstream"}`) == 1
	}, 10*time.Second, 10*time.Millisecond, "one upstream fill failure")
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
		c.Cache.Pinned = []config.Pin{{RepoType: "model", Repo: "org/gated", Revision: "main"}}
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

// Issue 9: a cold blob filled with parallel pieces, read by many ranged
// clients at once, including a 416 and a clamped end: every answer is
// right and every byte is fetched from the CDN once.
func TestManyRangedReadersOnOneColdParallelFill(t *testing.T) {
	tr := newTestHub(t, 40<<20)
	g := startGateway(t, tr.hub, func(c *config.Config) { c.Upstream.FillPieceSize = 4 << 20 })
	sha := fakehub.SHA256Hex(tr.big)
	tr.hub.ThrottleBlob(sha, 40<<20) // long enough for the readers to overlap
	size := int64(len(tr.big))
	const path = "/org/model/resolve/main/model.safetensors"
	var eg errgroup.Group
	for i := range 8 {
		eg.Go(func() error {
			start := int64(i) * 5 << 20
			end := start + 3<<20 // inclusive
			if i == 7 {
				end = size + 1000 // clamped to the blob's end
			}
			h := http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", start, end)}}
			resp, body, err := g.do(t, http.MethodGet, path, h)
			if err != nil {
				return err
			}
			assert.Equal(t, http.StatusPartialContent, resp.StatusCode)
			last := min(end, size-1)
			assert.Equal(t, fmt.Sprintf("bytes %d-%d/%d", start, last, size), resp.Header.Get("Content-Range"))
			assert.True(t, bytes.Equal(tr.big[start:last+1], body), "range %d", i)
			return nil
		})
	}
	eg.Go(func() error {
		resp, _, err := g.do(t, http.MethodGet, path, http.Header{"Range": {fmt.Sprintf("bytes=%d-", size)}})
		if err == nil {
			assert.Equal(t, http.StatusRequestedRangeNotSatisfiable, resp.StatusCode)
		}
		return err
	})
	require.NoError(t, eg.Wait())
	require.Eventually(t, func() bool { return g.hasBlob(t, sha) }, 10*time.Second, 10*time.Millisecond)
	assertFetchedOnce(t, tr.hub.CDNBodySpans(sha), size)
	assert.Equal(t, 10, tr.hub.CDNBodyFetches(sha), "ten 4 MiB pieces")
}
