package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
)

// TestLoadMixedHitsMissesAndRanges runs 200 concurrent clients for a
// bounded time (MODELGATE_LOAD_SECONDS, default 10) against the gateway:
// warm hits, cold misses on 10 blobs that all clients want at once, and
// random ranges. Every byte is checked, each blob must cross the upstream
// once, no request may fail, every client must have done full and ranged
// requests, the gateway's own accounting must agree with what the clients
// received, and no goroutine may outlive the gateway. The throughput and
// time to first byte are logged, not asserted (speed is for benchmarks).
func TestLoadMixedHitsMissesAndRanges(t *testing.T) {
	skipIfShort(t, "200 clients for 10 s")
	seconds := 10
	if v, err := strconv.Atoi(os.Getenv("MODELGATE_LOAD_SECONDS")); err == nil && v > 0 {
		seconds = min(v, 60)
	}
	const clients, coldBlobs, warmBlobs = 200, 10, 5
	hub := fakehub.New(t, fakehub.Options{Token: operatorToken})
	commit := fakehub.Commit("load")
	var files []fakehub.File
	for i := range coldBlobs + warmBlobs {
		files = append(files, fakehub.File{Path: fmt.Sprintf("f%02d.bin", i), Data: fakehub.RandomData(int64(500+i), 1<<20+i*4096), LFS: true})
	}
	hub.AddRepo(fakehub.Repo{ID: "org/load", Refs: map[string]string{"main": commit}, Commits: map[string][]fakehub.File{commit: files}})
	sums := make([][32]byte, len(files))
	for i, f := range files {
		sums[i] = sha256.Sum256(f.Data)
	}

	baseline := goleak.IgnoreCurrent()
	g := startGateway(t, hub, func(c *config.Config) { c.Log.Level = "warn" })
	// Warm blobs are cached before the clients start.
	for _, f := range files[coldBlobs:] {
		resp, _ := g.mustDo(t, http.MethodGet, "/org/load/resolve/main/"+f.Path, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}

	var (
		requests, failures, bodyBytes atomic.Int64
		full, ranges                  atomic.Int64
		ttfbMu                        sync.Mutex
		ttfb                          []time.Duration
	)
	transport := &http.Transport{MaxIdleConnsPerHost: clients, DisableCompression: true}
	client := &http.Client{Transport: transport}
	deadline := time.Now().Add(time.Duration(seconds) * time.Second)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			<-start
			first := true
			for time.Now().Before(deadline) {
				i := rng.IntN(len(files))
				if first {
					i = c % coldBlobs // every cold blob is wanted by 20 clients at once
					first = false
				}
				f := files[i]
				req, _ := http.NewRequest(http.MethodGet, g.URL+"/org/load/resolve/main/"+f.Path, nil)
				lo, hi := 0, len(f.Data)-1
				ranged := rng.IntN(3) == 0
				if ranged {
					lo = rng.IntN(len(f.Data))
					hi = min(lo+rng.IntN(256<<10), len(f.Data)-1)
					req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", lo, hi))
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					failures.Add(1)
					t.Errorf("request: %v", err)
					continue
				}
				ttfbMu.Lock()
				ttfb = append(ttfb, time.Since(t0))
				ttfbMu.Unlock()
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				requests.Add(1)
				bodyBytes.Add(int64(len(body)))
				if ranged {
					ranges.Add(1)
				} else {
					full.Add(1)
				}
				switch {
				case err != nil:
					failures.Add(1)
					t.Errorf("%s: reading: %v", f.Path, err)
				case ranged && (resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, f.Data[lo:hi+1])):
					failures.Add(1)
					t.Errorf("%s %d-%d: status %d, wrong bytes", f.Path, lo, hi, resp.StatusCode)
				case !ranged && (resp.StatusCode != http.StatusOK || sha256.Sum256(body) != sums[i]):
					failures.Add(1)
					t.Errorf("%s: status %d, wrong bytes", f.Path, resp.StatusCode)
				}
			}
		}()
	}
	began := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(began)

	assert.Zero(t, failures.Load())
	// Every client got at least its first (cold) request through, and the
	// mix really had both kinds.
	assert.GreaterOrEqual(t, requests.Load(), int64(clients))
	assert.Positive(t, full.Load())
	assert.Positive(t, ranges.Load())
	// The gateway served exactly what the clients received (plus the warm
	// up), from the cache or from fills, and nothing is left running.
	var warmBytes int64
	for _, f := range files[coldBlobs:] {
		warmBytes += int64(len(f.Data))
	}
	served := g.metric(t, `modelgate_served_bytes_total{source="cache"}`) + g.metric(t, `modelgate_served_bytes_total{source="fill"}`)
	assert.Equal(t, float64(bodyBytes.Load()+warmBytes), served, "served bytes")
	assert.Zero(t, g.metric(t, "modelgate_fills_in_flight"))
	assert.Zero(t, g.metric(t, `modelgate_fill_failures_total{reason="verify"}`))
	assert.Equal(t, float64(coldBlobs+warmBlobs), g.metric(t, "modelgate_cache_blobs"))
	for _, f := range files {
		assert.Equal(t, 1, hub.CDNBodyFetches(fakehub.SHA256Hex(f.Data)), "%s crossed the upstream more than once", f.Path)
	}
	slices.Sort(ttfb)
	p := func(q float64) time.Duration { return ttfb[min(len(ttfb)-1, int(q*float64(len(ttfb))))] }
	t.Logf("load: %d clients, %s: %d requests (%.0f/s), %.1f MiB/s served, TTFB p50 %s p99 %s max %s",
		clients, elapsed.Round(time.Millisecond), requests.Load(), float64(requests.Load())/elapsed.Seconds(),
		float64(bodyBytes.Load())/(1<<20)/elapsed.Seconds(), p(0.50), p(0.99), ttfb[len(ttfb)-1])

	transport.CloseIdleConnections()
	g.Stop()
	goleak.VerifyNone(t, baseline)
}
