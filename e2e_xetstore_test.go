package main

import (
	"bytes"
	"net/http"
	"testing"

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
func newXetScopeFixture(t *testing.T) *xetFixture {
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
