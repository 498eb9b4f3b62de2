package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
	"github.com/modelgate/modelgate/internal/xetclient"
)

// newXetScopeFixture is the Xet fixture (base model and fine-tune sharing
// xorbs, huggingface.xet: serve, require_key: all) whose reload narrows
// w1's repos to org/tuned instead of removing it.
func newXetScopeFixture(t *testing.T) *xetFixture { return newXetStoreFixture(t, nil) }

// newXetStoreFixture is newXetScopeFixture with more applied to the
// configuration and extra repos on the fake Hub.
func newXetStoreFixture(t *testing.T, more func(*config.Config), extra ...fakehub.Repo) *xetFixture {
	t.Helper()
	f := &xetFixture{hub: fakehub.New(t, fakehub.Options{Token: operatorToken}), rec: &fullRecorder{rt: &http.Transport{DisableCompression: true}}}
	f.base = fakehub.RandomData(71, 19*fakehub.XetChunkSize+77)
	f.tuned = bytes.Clone(f.base)
	f.tuned[10*fakehub.XetChunkSize] ^= 1
	commit := fakehub.Commit("xet-scope")
	for _, r := range []struct {
		id   string
		data []byte
	}{{"org/base", f.base}, {"org/tuned", f.tuned}} {
		f.hub.AddRepo(fakehub.Repo{ID: r.id, Refs: map[string]string{"main": commit}, Commits: map[string][]fakehub.File{commit: {
			{Path: "model.bin", Data: r.data, Xet: true},
		}}})
	}
	for _, r := range extra {
		f.hub.AddRepo(r)
	}
	var w1SHA, w2SHA string
	var err error
	f.w1, w1SHA, err = clientauth.Generate()
	require.NoError(t, err)
	f.w2, w2SHA, err = clientauth.Generate()
	require.NoError(t, err)
	var cfg config.Config
	edit := func(c *config.Config) {
		c.HuggingFace.Xet = "serve"
		c.Upstream.PrivateHosts = append(c.Upstream.PrivateHosts, hostPort(f.hub.CASURL()))
		c.Clients.RequireKey = "all"
		c.Clients.Keys = []config.ClientKey{{Name: "w1", KeySHA256: w1SHA, Repos: []string{"org/*"}}, {Name: "w2", KeySHA256: w2SHA}}
		if more != nil {
			more(c)
		}
		cfg = *c
	}
	reload := func() (config.Config, error) {
		next := cfg
		next.Clients.Keys = []config.ClientKey{{Name: "w1", KeySHA256: w1SHA, Repos: []string{"org/tuned"}}, {Name: "w2", KeySHA256: w2SHA}}
		return next, nil
	}
	f.g = startReloadableGateway(t, f.hub, edit, reload)
	f.g.addSecrets(f.w1, f.w2)
	f.rec.rt = &recordingTransport{rt: f.rec.rt, sink: f.g.Received}
	return f
}

// TestXetTokenFollowsTheKeysNarrowedScope: a reload that narrows a worker
// key's repos (the key stays) stops its Xet tokens and xorb URLs for the
// repos it lost, mid-download, and leaves the repos it kept working.
func TestXetTokenFollowsTheKeysNarrowedScope(t *testing.T) {
	f := newXetScopeFixture(t)
	hash, links := f.discover(t, f.w1, "/org/base/resolve/main/model.bin")
	tHash, tLinks := f.discover(t, f.w1, "/org/tuned/resolve/main/model.bin")

	c := f.xetClient(f.w1)
	tok, err := c.GetToken(links["xet-auth"])
	require.NoError(t, err)
	c.BeforeFetch = func(done int) {
		if done == 1 {
			status, out := f.g.adminDo(t, http.MethodPost, "/admin/v1/reload", "", nil)
			require.Equal(t, http.StatusOK, status, string(out))
		}
	}
	_, err = c.Download(tok.CasURL, tok.AccessToken, hash)
	var se *xetclient.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusUnauthorized, se.Status, "xorb URLs of a repo the key lost stop working")
	_, err = c.Reconstruct(tok.CasURL, tok.AccessToken, hash)
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusUnauthorized, se.Status, "so does the token for that repo")

	// The repo it kept still downloads.
	c2 := f.xetClient(f.w1)
	tTok, err := c2.GetToken(tLinks["xet-auth"])
	require.NoError(t, err)
	got, err := c2.Download(tTok.CasURL, tTok.AccessToken, tHash)
	require.NoError(t, err)
	require.Equal(t, f.tuned, got)
}

// xetHashIn returns the xetHash of path in a tree or paths-info answer.
func xetHashIn(t *testing.T, body []byte, path string) string {
	t.Helper()
	var entries []struct {
		Path    string `json:"path"`
		XetHash string `json:"xetHash"`
	}
	require.NoError(t, json.Unmarshal(body, &entries), string(body))
	for _, e := range entries {
		if e.Path == path {
			return e.XetHash
		}
	}
	t.Fatalf("%s not listed: %s", path, body)
	return ""
}

// TestXetTokenForAFileOnlyListed: a client that goes from a tree or
// paths-info answer's xetHash straight to the token route (huggingface_hub
// >= 1.22, without a HEAD) is served, because the gateway recorded which
// repo holds that file when it listed it; a token for another repo still
// does not open it.
func TestXetTokenForAFileOnlyListed(t *testing.T) {
	f := newXetScopeFixture(t)
	key := http.Header{"Authorization": {"Bearer " + f.w2}}
	resp, body := f.g.mustDo(t, http.MethodGet, "/api/models/org/base/tree/main", key)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	bHash := xetHashIn(t, body, "model.bin")
	require.Len(t, bHash, 64)

	req, err := http.NewRequest(http.MethodPost, f.g.URL+"/api/models/org/tuned/paths-info/main", strings.NewReader("paths=model.bin&expand=false"))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+f.w2)
	presp, err := f.client().Do(req)
	require.NoError(t, err)
	pbody, err := io.ReadAll(presp.Body)
	presp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, presp.StatusCode, string(pbody))
	tHash := xetHashIn(t, pbody, "model.bin")

	c := f.xetClient(f.w2)
	for _, file := range []struct {
		repo, hash string
		want       []byte
	}{{"org/base", bHash, f.base}, {"org/tuned", tHash, f.tuned}} {
		tok, err := c.GetToken(f.g.URL + "/api/models/" + file.repo + "/xet-read-token/main")
		require.NoError(t, err)
		got, err := c.Download(tok.CasURL, tok.AccessToken, file.hash)
		require.NoError(t, err, file.repo)
		require.True(t, bytes.Equal(file.want, got), file.repo)
	}
	tok, err := c.GetToken(f.g.URL + "/api/models/org/tuned/xet-read-token/main")
	require.NoError(t, err)
	_, err = c.Reconstruct(tok.CasURL, tok.AccessToken, bHash)
	var se *xetclient.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusForbidden, se.Status, "a token for one repo never opens another repo's file")
	assert.Zero(t, f.hub.Count("hub", http.MethodHead, "/org/"), "no resolve was needed")
}

// xetRangeFiles lists the xorb ranges the gateway's blob store holds for
// the xorbs, as files under data_dir/blobs.
func xetRangeFiles(t *testing.T, g *gatewayUnderTest, xorbs []string) []string {
	t.Helper()
	var out []string
	for _, x := range xorbs {
		m, err := filepath.Glob(filepath.Join(g.DataDir, "blobs", "xet-range", x[:2], x+"*"))
		require.NoError(t, err)
		out = append(out, m...)
	}
	return out
}

// TestXetRangesCountPinAndMeasure: Xet ranges are blobs of the cache —
// counted against cache.max_size and kept by a pin on their repo while
// an unpinned blob is evicted — and the xet metrics count hits, misses,
// shared bytes and reconstructions.
func TestXetRangesCountPinAndMeasure(t *testing.T) {
	big := fakehub.RandomData(72, 1400<<10)
	other := fakehub.Commit("other")
	f := newXetStoreFixture(t, func(c *config.Config) {
		c.Cache.MaxSize = config.ByteSize(1536 << 10)
		c.Cache.Pinned = []config.Pin{{RepoType: "model", Repo: "org/base", Revision: "main"}}
	}, fakehub.Repo{ID: "org/other", Refs: map[string]string{"main": other}, Commits: map[string][]fakehub.File{other: {{Path: "big.bin", Data: big, LFS: true}}}})

	hash, links := f.discover(t, f.w2, "/org/base/resolve/main/model.bin")
	c := f.xetClient(f.w2)
	tok, err := c.GetToken(links["xet-auth"])
	require.NoError(t, err)
	got, err := c.Download(tok.CasURL, tok.AccessToken, hash)
	require.NoError(t, err)
	require.True(t, bytes.Equal(f.base, got))
	baseXorbs := f.hub.XorbHashes(hash)
	baseRanges := xetRangeFiles(t, f.g, baseXorbs)
	require.NotEmpty(t, baseRanges, "the ranges are blobs under data_dir/blobs")
	assert.Positive(t, f.g.metric(t, "modelgate_cache_blob_bytes"), "counted with the blobs")
	assert.Positive(t, f.g.metric(t, `modelgate_xet_xorb_bytes_total{result="miss"}`))
	assert.Equal(t, 1.0, f.g.metric(t, `modelgate_xet_reconstructions_total{result="miss"}`))

	tHash, tLinks := f.discover(t, f.w2, "/org/tuned/resolve/main/model.bin")
	tTok, err := c.GetToken(tLinks["xet-auth"])
	require.NoError(t, err)
	got, err = c.Download(tTok.CasURL, tTok.AccessToken, tHash)
	require.NoError(t, err)
	require.True(t, bytes.Equal(f.tuned, got))
	assert.Positive(t, f.g.metric(t, "modelgate_xet_shared_bytes_total"), "the fine-tune was served its base's ranges")
	assert.Positive(t, f.g.metric(t, `modelgate_xet_xorb_bytes_total{result="hit"}`))
	_, err = c.Reconstruct(tok.CasURL, tok.AccessToken, hash)
	require.NoError(t, err)
	assert.Equal(t, 1.0, f.g.metric(t, `modelgate_xet_reconstructions_total{result="hit"}`))

	// Over max_size: the unpinned blob goes, the pinned repo's ranges stay.
	resp, body := f.g.mustDo(t, http.MethodGet, "/org/other/resolve/main/big.bin", http.Header{"Authorization": {"Bearer " + f.w2}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.True(t, bytes.Equal(big, body))
	require.Eventually(t, func() bool { return f.g.metric(t, "modelgate_evicted_bytes_total") >= float64(len(big)) }, 10*time.Second, 20*time.Millisecond,
		"the unpinned blob is evicted")
	assert.False(t, f.g.hasBlob(t, fakehub.SHA256Hex(big)))
	assert.Equal(t, baseRanges, xetRangeFiles(t, f.g, baseXorbs), "the pinned repo's Xet ranges stay")
}
