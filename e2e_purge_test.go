package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/admin"
	"github.com/modelgate/modelgate/internal/fakecivitai"
	"github.com/modelgate/modelgate/internal/fakehub"
)

// slowReaderClient reaches the gateway's own listener (no relay whose
// buffers would soak up the answer) with a tiny receive buffer, so that a
// client that stops reading keeps the gateway's handler, and its open
// blob, waiting.
func slowReaderClient() *http.Client {
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableCompression: true}}
}

func TestPurgeOfABlobBeingServedWaitsForItsReader(t *testing.T) {
	tr := newTestHub(t, 24<<20)
	g := startGateway(t, tr.hub, nil)
	out, err := g.cli(t, "", "prefetch", "hf:org/model")
	require.NoError(t, err, out)
	sha := fakehub.SHA256Hex(tr.big)

	// A slow client starts reading the cached blob, then stops.
	resp, err := slowReaderClient().Get("http://" + g.Addr + "/org/model/resolve/" + tr.main + "/model.safetensors")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	got := make([]byte, 1<<20)
	_, err = io.ReadFull(resp.Body, got)
	require.NoError(t, err)

	purged := make(chan admin.PurgeResult, 1)
	go func() {
		code, b := g.adminDo(t, http.MethodPost, "/admin/v1/purge", "", map[string]any{"spec": "hf:org/model"})
		var res admin.PurgeResult
		if code == http.StatusOK {
			json.Unmarshal(b, &res)
		}
		purged <- res
	}()
	// The purge has dropped the repo's records (it is out of the
	// inventory) and is now at the blob, whose reader is not done.
	require.Eventually(t, func() bool {
		_, b := g.adminDo(t, http.MethodGet, "/admin/v1/inventory", "", nil)
		return !strings.Contains(string(b), `"org/model"`)
	}, 10*time.Second, 10*time.Millisecond)
	assert.Never(t, func() bool { return len(purged) > 0 }, 500*time.Millisecond, 10*time.Millisecond,
		"the purge must wait for the blob's reader")
	assert.True(t, g.hasBlob(t, sha), "the blob must stay while it is being read")

	// The reader finishes, with the right bytes; then the purge does.
	rest, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(tr.big, append(got, rest...)), "the reader must receive the blob intact")
	var res admin.PurgeResult
	select {
	case res = <-purged:
	case <-time.After(20 * time.Second):
		t.Fatal("the purge did not finish after the reader did")
	}
	assert.Equal(t, 4, res.BlobsRemoved)
	assert.False(t, g.hasBlob(t, sha))
}

// hubAsked counts the requests the fake Hub's API server received for
// uri (escaped, as sent), or for any URI starting with it when it ends
// in "*".
func hubAsked(hub *fakehub.Hub, uri string) int {
	n := 0
	prefix, isPrefix := strings.CutSuffix(uri, "*")
	for _, r := range hub.Requests() {
		if r.Server == "hub" && (r.RequestURI == uri || isPrefix && strings.HasPrefix(r.RequestURI, prefix)) {
			n++
		}
	}
	return n
}

func TestPurgeDropsTheRepoCachedAPIAnswers(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	tr.hub.AddRepo(fakehub.Repo{
		ID:      "org/copy",
		Refs:    map[string]string{"main": tr.main},
		Commits: map[string][]fakehub.File{tr.main: {{Path: "same.safetensors", Data: tr.big, LFS: true}}},
	})
	g := startGateway(t, tr.hub, nil)
	answers := map[string]string{ // request → the Hub URI it costs upstream
		"/api/models/org/model/tree/" + tr.main:                     "/api/models/org/model/tree/" + tr.main,
		"/api/models/org/model/tree/" + tr.pr:                       "/api/models/org/model/tree/" + tr.pr,
		"/api/models/org/model/revision/main":                       "/api/models/org/model/revision/main",
		"/api/models/org/model":                                     "/api/models/org/model",
		"/api/models/org/copy/tree/" + tr.main:                      "/api/models/org/copy/tree/" + tr.main,
		"/api/models/org/model/tree/main/sub%20dir":                 "/api/models/org/model/tree/main/sub%20dir",
		"/api/models/org/model/tree/" + tr.main + "?recursive=true": "/api/models/org/model/tree/" + tr.main + "?recursive*",
	}
	ask := func() map[string]int {
		t.Helper()
		asked := map[string]int{}
		for path, upstream := range answers {
			before := hubAsked(tr.hub, upstream)
			resp, body := g.mustDo(t, http.MethodGet, path, nil)
			require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", path, body)
			asked[path] = hubAsked(tr.hub, upstream) - before
		}
		return asked
	}
	// A download at main: the gateway learns main's commit (as a
	// prefetch would), so that purging @main reaches the answers at it.
	resp, _ := g.mustDo(t, http.MethodGet, "/org/model/resolve/main/config.json", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	for path, n := range ask() {
		require.Positive(t, n, "%s: the first answer comes from the Hub", path)
	}
	for path, n := range ask() {
		require.Zero(t, n, "%s: the second answer comes from the index", path)
	}

	// Purging one revision drops the answers at it (by name and at its
	// commit), not those at another commit or of another repo.
	code, b := g.adminDo(t, http.MethodPost, "/admin/v1/purge", "", map[string]any{"spec": "hf:org/model@main"})
	require.Equal(t, http.StatusOK, code, string(b))
	asked := ask()
	for _, p := range []string{
		"/api/models/org/model/tree/" + tr.main, "/api/models/org/model/revision/main",
		"/api/models/org/model/tree/main/sub%20dir", "/api/models/org/model/tree/" + tr.main + "?recursive=true",
	} {
		assert.Equal(t, 1, asked[p], "%s must be asked again after purging @main", p)
	}
	assert.Zero(t, asked["/api/models/org/model/tree/"+tr.pr], "an answer at another commit stays")
	assert.Zero(t, asked["/api/models/org/copy/tree/"+tr.main], "another repo's answer stays")

	// Purging the repo drops every answer about it.
	code, b = g.adminDo(t, http.MethodPost, "/admin/v1/purge", "", map[string]any{"spec": "hf:org/model"})
	require.Equal(t, http.StatusOK, code, string(b))
	asked = ask()
	for path, n := range asked {
		if strings.Contains(path, "org/copy") {
			assert.Zero(t, n, "%s: another repo's answer stays", path)
		} else {
			assert.Equal(t, 1, n, "%s must be asked again after purging the repo", path)
		}
	}
}

func TestPurgeDropsTheCivitAIVersionCachedMetadata(t *testing.T) {
	f := newCivitAIFixture(t, nil)
	const meta = "/api/v1/model-versions/200"
	out, err := f.g.cli(t, "", "prefetch", "civitai:200")
	require.NoError(t, err, out)
	get := func() int {
		t.Helper()
		before := f.civ.Count(fakecivitai.ServerAPI, http.MethodGet, meta)
		resp, body := f.g.mustDo(t, http.MethodGet, meta, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		return f.civ.Count(fakecivitai.ServerAPI, http.MethodGet, meta) - before
	}
	require.Zero(t, get(), "the prefetch left the version's metadata cached")
	other := f.civ.Count(fakecivitai.ServerAPI, http.MethodGet, "/api/v1/model-versions/100")
	resp, _ := f.g.mustDo(t, http.MethodGet, "/api/v1/model-versions/100", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)

	code, b := f.g.adminDo(t, http.MethodPost, "/admin/v1/purge", "", map[string]any{"spec": "civitai:200"})
	require.Equal(t, http.StatusOK, code, string(b))
	assert.Equal(t, 1, get(), "after the purge the version's metadata is asked again")
	resp, _ = f.g.mustDo(t, http.MethodGet, "/api/v1/model-versions/100", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, other+1, f.civ.Count(fakecivitai.ServerAPI, http.MethodGet, "/api/v1/model-versions/100"),
		"another version's metadata stays cached")
}
