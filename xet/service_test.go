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
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
}

// newGW starts the fake Hub with a base model and a fine-tune sharing
// xorbs, and a gateway serving the Service's routes the way the mirror
// mounts them (the worker's key name comes in X-Test-Key here).
func newGW(t *testing.T) *gw { return newGWWith(t, nil) }

// newGWWith is newGW with prepare run on the fake Hub before the files are
// added (compression, say).
func newGWWith(t *testing.T, prepare func(*fakehub.Hub)) *gw {
	g := &gw{hub: fakehub.New(t, fakehub.Options{Token: opToken}), revoked: map[string]bool{}}
	if prepare != nil {
		prepare(g.hub)
	}
	g.base = fakehub.RandomData(20, 19*fakehub.XetChunkSize+77)
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
	svc, err := New(Options{
		Hub: hubURL, Client: client, HubToken: func() string { return opToken }, Dir: t.TempDir(),
		KeyAllows: func(name, _, _ string) bool { g.mu.Lock(); defer g.mu.Unlock(); return !g.revoked[name] },
		HasFile: func(_ context.Context, typ, repo, rev, fh string) bool {
			return typ == "model" && rev == c && files[fh] == repo
		},
	})
	require.NoError(t, err)
	g.svc = svc
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
			g := newGWWith(t, func(h *fakehub.Hub) { h.SetXetCompression(sc) })
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
