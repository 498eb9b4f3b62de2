package xet

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/internal/fakehub"
	"github.com/modelgate/modelgate/internal/xetclient"
	"github.com/modelgate/modelgate/xet/xetchunk"
)

const opToken = "hf_operator_xet_test"

type gw struct {
	hub          *fakehub.Hub
	svc          *Service
	srv          *httptest.Server
	base, tuned  []byte
	bHash, tHash string
	mu           sync.Mutex
	revoked      map[string]bool
	store        *cache.Store
	idx          *cache.Index
	opts         Options
	counts       counts
}

// counts is what the service reported to its metrics hooks.
type counts struct {
	mu                     sync.Mutex
	hitBytes, missBytes    int64
	sharedBytes            int64
	reconHits, reconMisses int
}

func (g *gw) metrics() Metrics {
	c := &g.counts
	return Metrics{
		XorbBytes: func(hit bool, n int64) {
			c.mu.Lock()
			defer c.mu.Unlock()
			if hit {
				c.hitBytes += n
			} else {
				c.missBytes += n
			}
		},
		SharedBytes: func(n int64) { c.mu.Lock(); c.sharedBytes += n; c.mu.Unlock() },
		Reconstruction: func(hit bool) {
			c.mu.Lock()
			defer c.mu.Unlock()
			if hit {
				c.reconHits++
			} else {
				c.reconMisses++
			}
		},
	}
}

func (g *gw) snapshot() counts {
	g.counts.mu.Lock()
	defer g.counts.mu.Unlock()
	return counts{hitBytes: g.counts.hitBytes, missBytes: g.counts.missBytes, sharedBytes: g.counts.sharedBytes,
		reconHits: g.counts.reconHits, reconMisses: g.counts.reconMisses}
}

// newGW starts the fake Hub with a base model and a fine-tune sharing
// xorbs, and a gateway serving the Service's routes the way the mirror
// mounts them (the worker's key name comes in X-Test-Key here).
func newGW(t *testing.T) *gw { return newGWWith(t, gwOptions{}) }

// gwOptions: prepare runs on the fake Hub before the files are added
// (compression, say); store are the blob store's options (limits); base,
// when set, is the base model's bytes (the fine-tune flips one byte of
// its chunk 10).
type gwOptions struct {
	prepare func(*fakehub.Hub)
	store   cache.Options
	base    []byte
}

func newGWWith(t *testing.T, o gwOptions) *gw {
	g := &gw{hub: fakehub.New(t, fakehub.Options{Token: opToken}), revoked: map[string]bool{}}
	if o.prepare != nil {
		o.prepare(g.hub)
	}
	g.base = fakehub.RandomData(20, 19*fakehub.XetChunkSize+77)
	if o.base != nil {
		g.base = o.base
	}
	g.tuned = append([]byte(nil), g.base...)
	g.tuned[10*fakehub.XetChunkSize] ^= 1
	c := fakehub.Commit("x")
	g.hub.AddRepo(fakehub.Repo{ID: "org/base", Refs: map[string]string{"main": c}, Commits: map[string][]fakehub.File{c: {{Path: "w.bin", Data: g.base, Xet: true}}}})
	g.hub.AddRepo(fakehub.Repo{ID: "org/tuned", Refs: map[string]string{"main": c}, Commits: map[string][]fakehub.File{c: {{Path: "w.bin", Data: g.tuned, Xet: true}}}})
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig(g.hub)}}
	hubURL, _ := url.Parse(g.hub.URL())
	files := map[string]string{} // file hash -> repo, as the gateway's metadata would say
	noRedirect := &http.Client{Transport: client.Transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, repo := range []string{"org/base", "org/tuned"} {
		resp, err := noRedirect.Head(g.hub.URL() + "/" + repo + "/resolve/main/w.bin")
		require.NoError(t, err)
		resp.Body.Close()
		files[resp.Header.Get("X-Xet-Hash")] = repo
		if repo == "org/base" {
			g.bHash = resp.Header.Get("X-Xet-Hash")
		} else {
			g.tHash = resp.Header.Get("X-Xet-Hash")
		}
	}
	dir := t.TempDir()
	idx, err := cache.OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	so := o.store
	so.Dir, so.Index, so.AccessFlush = dir, idx, time.Hour
	store, err := cache.Open(so)
	require.NoError(t, err)
	t.Cleanup(func() {
		store.Close()
		idx.Close()
	})
	g.store, g.idx = store, idx
	g.opts = Options{
		Hub: hubURL, Client: client, HubToken: func() string { return opToken }, Dir: filepath.Join(dir, "xet"),
		Store: store, Index: idx, Metrics: g.metrics(),
		KeyAllows: func(name, _, _ string) bool { g.mu.Lock(); defer g.mu.Unlock(); return !g.revoked[name] },
		HasFile: func(_ context.Context, typ, repo, rev, fh string) bool {
			return typ == "model" && rev == c && files[fh] == repo
		},
	}
	g.restart(t)
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		svc := g.svc
		g.mu.Unlock()
		base := "http://" + r.Host
		if rest, ok := strings.CutPrefix(r.URL.Path, CASPrefix); ok {
			svc.ServeCAS(w, r, rest, base)
			return
		}
		// /api/models/org/name/xet-read-token/main
		segs := strings.Split(r.URL.Path, "/")
		if len(segs) == 7 && segs[5] == "xet-read-token" {
			svc.ServeToken(w, "model", segs[3]+"/"+segs[4], c, r.Header.Get("X-Test-Key"), base)
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(g.srv.Close)
	return g
}

// restart makes a new Service over the same store, index and secret, as
// a restarted gateway has: nothing of the old one's memory.
func (g *gw) restart(t *testing.T) {
	svc, err := New(g.opts)
	require.NoError(t, err)
	g.mu.Lock()
	g.svc = svc
	g.mu.Unlock()
}

func (g *gw) client(key string) *xetclient.Client {
	return &xetclient.Client{HTTP: g.srv.Client(), Header: http.Header{"X-Test-Key": {key}}}
}

func (g *gw) download(t *testing.T, c *xetclient.Client, repo, hash string) ([]byte, error) {
	t.Helper()
	tok, err := c.GetToken(g.srv.URL + "/api/models/" + repo + "/xet-read-token/main")
	require.NoError(t, err)
	require.Equal(t, g.srv.URL+CASPrefix, tok.CasURL, "casUrl names the gateway")
	return c.Download(tok.CasURL, tok.AccessToken, hash)
}

func TestXetThroughGatewaySharesXorbsAndVerifies(t *testing.T) {
	g := newGW(t)
	for _, v1 := range []bool{false, true} {
		c := g.client("w1")
		c.V1 = v1
		got, err := g.download(t, c, "org/base", g.bHash)
		require.NoError(t, err)
		require.Equal(t, g.base, got)
	}
	assert.True(t, g.svc.Verified(g.bHash), "all ranges cached: the file hash was checked")
	got, err := g.download(t, g.client("w1"), "org/tuned", g.tHash)
	require.NoError(t, err)
	require.Equal(t, g.tuned, got)
	assert.True(t, g.svc.Verified(g.tHash))

	// Xorbs whose ranges the two files share were fetched upstream once.
	bx := g.hub.XorbHashes(g.bHash)
	assert.Equal(t, 1, g.hub.XorbFetches(bx[0]), "first xorb: one upstream fetch for two files and two protocol versions")
	assert.Equal(t, 1, g.hub.XorbFetches(bx[2]))
}

func TestXetTokenScopedToRepoAndKey(t *testing.T) {
	g := newGW(t)
	c := g.client("w1")
	tok, err := c.GetToken(g.srv.URL + "/api/models/org/base/xet-read-token/main")
	require.NoError(t, err)
	_, err = c.Reconstruct(tok.CasURL, tok.AccessToken, g.tHash)
	var se *xetclient.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusForbidden, se.Status, "a token for one repo never opens another repo's file")

	_, err = c.Reconstruct(tok.CasURL, tok.AccessToken+"x", g.bHash)
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusUnauthorized, se.Status, "a tampered token is refused")

	g.mu.Lock()
	g.revoked["w1"] = true
	g.mu.Unlock()
	_, err = c.Reconstruct(tok.CasURL, tok.AccessToken, g.bHash)
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusUnauthorized, se.Status, "revoking the key revokes its Xet tokens")
}

func TestXetUpstreamURLExpiredMidDownload(t *testing.T) {
	g := newGW(t)
	c := g.client("w1")
	c.BeforeFetch = func(done int) {
		if done == 1 {
			g.hub.ExpireXorbURLs() // the gateway's cached upstream URLs are now refused
		}
	}
	got, err := g.download(t, c, "org/base", g.bHash)
	require.NoError(t, err)
	require.Equal(t, g.base, got)
	assert.Zero(t, c.Retries, "the gateway re-queried upstream itself; its own URLs stayed valid")
}

func TestXetCorruptXorbDroppedThenRefetched(t *testing.T) {
	g := newGW(t)
	x := g.hub.XorbHashes(g.bHash)[0]
	g.hub.CorruptXorb(x, true)
	got, _ := g.download(t, g.client("w1"), "org/base", g.bHash)
	assert.NotEqual(t, g.base, got)
	assert.False(t, g.svc.Verified(g.bHash), "a corrupt xorb fails file verification")
	g.hub.CorruptXorb(x, false)
	got, err := g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	require.Equal(t, g.base, got, "the dropped ranges were fetched again")
	assert.True(t, g.svc.Verified(g.bHash))
}

func TestXetNoUpstreamTokenReachesWorker(t *testing.T) {
	g := newGW(t)
	c := g.client("w1")
	_, err := g.download(t, c, "org/base", g.bHash)
	require.NoError(t, err)
	tok, err := c.GetToken(g.srv.URL + "/api/models/org/base/xet-read-token/main")
	require.NoError(t, err)
	req, _ := http.NewRequest(http.MethodGet, tok.CasURL+"/v2/reconstructions/"+g.bHash, nil)
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	resp, err := g.srv.Client().Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	seen, _ := json.Marshal(tok)
	seen = append(seen, body...)
	upstreamTokens := g.hub.XetTokens()
	require.NotEmpty(t, upstreamTokens, "the gateway did use upstream Xet tokens")
	for _, secret := range append(upstreamTokens, opToken, strings.TrimPrefix(g.hub.CASURL(), "https://")) {
		assert.NotContains(t, string(seen), secret)
	}
}

func tlsConfig(h *fakehub.Hub) *tls.Config { return &tls.Config{RootCAs: h.CertPool()} }

func TestXetRevokedKeyStopsXorbFetchesMidDownload(t *testing.T) {
	g := newGW(t)
	c := g.client("w1")
	c.BeforeFetch = func(done int) {
		if done == 1 {
			g.mu.Lock()
			g.revoked["w1"] = true // after the reconstruction and one xorb fetch
			g.mu.Unlock()
		}
	}
	_, err := g.download(t, c, "org/base", g.bHash)
	var se *xetclient.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusUnauthorized, se.Status, "the xorb URLs handed to a revoked key stop working")
	assert.Equal(t, 2, c.Requests, "stopped at the first xorb fetch after the revocation")
}

// TestXetCompressedChunksVerified: files whose chunks the CAS stores LZ4-
// or byte-grouped-LZ4-compressed are decoded, hashed and verified like
// uncompressed ones; a corrupt compressed xorb fails verification and its
// ranges are dropped and fetched again.
func TestXetCompressedChunksVerified(t *testing.T) {
	for _, sc := range []xetchunk.Scheme{xetchunk.LZ4, xetchunk.ByteGrouping4LZ4} {
		t.Run(fmt.Sprint("scheme", sc), func(t *testing.T) {
			g := newGWWith(t, gwOptions{prepare: func(h *fakehub.Hub) { h.SetXetCompression(sc) }})
			got, err := g.download(t, g.client("w1"), "org/base", g.bHash)
			require.NoError(t, err)
			require.True(t, bytes.Equal(g.base, got))
			assert.True(t, g.svc.Verified(g.bHash), "compressed chunks are decoded and the file verified")

			x := ownXorb(g.hub.XorbHashes(g.tHash), g.hub.XorbHashes(g.bHash))
			g.hub.CorruptXorb(x, true)
			got, _ = g.download(t, g.client("w1"), "org/tuned", g.tHash)
			assert.False(t, bytes.Equal(g.tuned, got), "the corrupt bytes are what the client got")
			assert.False(t, g.svc.Verified(g.tHash), "a corrupt compressed xorb fails verification")
			fetches := g.hub.XorbFetches(x)
			g.hub.CorruptXorb(x, false)
			got, err = g.download(t, g.client("w1"), "org/tuned", g.tHash)
			require.NoError(t, err)
			require.True(t, bytes.Equal(g.tuned, got), "the dropped ranges were fetched again")
			assert.Greater(t, g.hub.XorbFetches(x), fetches)
			assert.True(t, g.svc.Verified(g.tHash))
		})
	}
}

// ownXorb is the first of xs that others does not hold.
func ownXorb(xs, others []string) string {
	for _, x := range xs {
		if !slices.Contains(others, x) {
			return x
		}
	}
	panic("no xorb of its own")
}

// rangesOf lists the xorb ranges the blob store holds for xorbs.
func (g *gw) rangesOf(t *testing.T, xorbs []string) []cache.Digest {
	t.Helper()
	var out []cache.Digest
	for _, x := range xorbs {
		require.NoError(t, g.store.PublishedWithPrefix(cache.XetRange, x, func(d cache.Digest, _ int64) error {
			out = append(out, d)
			return nil
		}))
	}
	return out
}

// TestXetRangesAreBlobsOfTheStore: xorb ranges are blobs of the blob
// store (counted in its totals); a file one of whose ranges is gone
// (evicted) is no longer verified, and the range, fetched again when
// asked, is checked again.
func TestXetRangesAreBlobsOfTheStore(t *testing.T) {
	g := newGW(t)
	got, err := g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	require.True(t, bytes.Equal(g.base, got))
	bx := g.hub.XorbHashes(g.bHash)
	ranges := g.rangesOf(t, bx)
	require.NotEmpty(t, ranges)
	var sum int64
	for _, d := range ranges {
		_, first, last, ok := d.XetRangeParts()
		require.True(t, ok)
		sum += last - first + 1
	}
	st := g.store.Stats()
	assert.Equal(t, int64(len(ranges)), st.Blobs, "every range is a blob")
	assert.Equal(t, sum, st.Bytes, "counted against the cache's size")
	require.True(t, g.svc.Verified(g.bHash))

	x, _, _, _ := ranges[0].XetRangeParts()
	before := g.hub.XorbFetches(x)
	removed, err := g.store.Remove(context.Background(), ranges[0])
	require.NoError(t, err)
	require.True(t, removed)
	assert.False(t, g.svc.Verified(g.bHash), "a file missing a range is not verified any more")

	got, err = g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	require.True(t, bytes.Equal(g.base, got))
	assert.Equal(t, before+1, g.hub.XorbFetches(x), "the evicted range was fetched again, the others not")
	assert.True(t, g.svc.Verified(g.bHash), "and the file checked again")

	// Checked again for real: a range evicted and then fetched corrupt
	// does not inherit the file's earlier verified state.
	_, err = g.store.Remove(context.Background(), ranges[0])
	require.NoError(t, err)
	g.hub.CorruptXorb(x, true)
	got, _ = g.download(t, g.client("w1"), "org/base", g.bHash)
	assert.False(t, bytes.Equal(g.base, got))
	assert.False(t, g.svc.Verified(g.bHash))
	assert.Empty(t, g.rangesOf(t, []string{x}), "the corrupt range was dropped")
}

// TestXetRangesEvictedUnderMaxSize: with a cache.max_size smaller than a
// file (room for one xorb's range), its ranges are evicted like blobs,
// and the file still downloads byte-exact (what is missing is fetched
// again).
func TestXetRangesEvictedUnderMaxSize(t *testing.T) {
	const maxSize = 200 << 10
	g := newGWWith(t, gwOptions{store: cache.Options{MaxSize: maxSize}})
	for range 2 {
		got, err := g.download(t, g.client("w1"), "org/base", g.bHash)
		require.NoError(t, err)
		require.True(t, bytes.Equal(g.base, got))
		require.Eventually(t, func() bool { return g.store.Stats().Bytes <= maxSize }, 5*time.Second, 10*time.Millisecond)
	}
	assert.False(t, g.svc.Verified(g.bHash), "not all its ranges fit")
}

// TestXetReconstructionKeptAcrossRestart: reconstructions are kept in the
// index, so a restarted gateway answers them without the upstream, and a
// xorb URL it handed out before the restart still fetches a missing range
// (with fresh upstream URLs). The metrics count reconstruction hits and
// misses, xorb hits and misses, and the bytes a file shares with another.
func TestXetReconstructionKeptAcrossRestart(t *testing.T) {
	g := newGW(t)
	upstreamRecons := func() int { return g.hub.Count("cas", http.MethodGet, "/v2/reconstructions/") }
	got, err := g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	require.True(t, bytes.Equal(g.base, got))
	asked := upstreamRecons()
	require.Positive(t, asked)
	c := g.snapshot()
	assert.Equal(t, 1, c.reconMisses)
	assert.Zero(t, c.hitBytes)
	assert.Equal(t, g.store.Stats().Bytes, c.missBytes, "every byte came from upstream once")

	g.restart(t)
	got, err = g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	require.True(t, bytes.Equal(g.base, got))
	assert.Equal(t, asked, upstreamRecons(), "the restarted gateway had the reconstruction")
	c = g.snapshot()
	assert.Equal(t, 1, c.reconHits)
	assert.Equal(t, c.missBytes, c.hitBytes, "the second download was all hits")
	assert.Zero(t, c.sharedBytes, "the file's own ranges are not shared bytes")

	// A restart in the middle of a download, with ranges to fetch after it.
	ranges := g.rangesOf(t, g.hub.XorbHashes(g.bHash))
	for _, d := range ranges[1:] {
		_, err := g.store.Remove(context.Background(), d)
		require.NoError(t, err)
	}
	cl := g.client("w1")
	cl.BeforeFetch = func(done int) {
		if done == 1 {
			g.restart(t)
		}
	}
	got, err = g.download(t, cl, "org/base", g.bHash)
	require.NoError(t, err)
	require.True(t, bytes.Equal(g.base, got), "URLs from before the restart work after it")
	assert.Greater(t, upstreamRecons(), asked, "fresh upstream URLs: the index keeps none")

	// The fine-tune shares ranges with the base.
	got, err = g.download(t, g.client("w1"), "org/tuned", g.tHash)
	require.NoError(t, err)
	require.True(t, bytes.Equal(g.tuned, got))
	assert.Positive(t, g.snapshot().sharedBytes, "bytes first fetched for the base served to the fine-tune")
}

// TestXetRangeFetchHasTheFillDeadline: a xorb fetch too slow for the
// store's max fill time fails (502) and stores nothing; it works once the
// upstream is fast again.
func TestXetRangeFetchHasTheFillDeadline(t *testing.T) {
	g := newGWWith(t, gwOptions{store: cache.Options{MaxFillTime: 300 * time.Millisecond}})
	x := g.hub.XorbHashes(g.bHash)[0]
	g.hub.ThrottleXorb(x, 2000)
	start := time.Now()
	_, err := g.download(t, g.client("w1"), "org/base", g.bHash)
	var se *xetclient.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusBadGateway, se.Status)
	assert.Less(t, time.Since(start), 30*time.Second)
	assert.Empty(t, g.rangesOf(t, []string{x}), "a cut-off range is not stored")
	g.hub.ThrottleXorb(x, 0)
	got, err := g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	require.True(t, bytes.Equal(g.base, got))
}
