package main

import (
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/app"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakecivitai"
	"github.com/modelgate/modelgate/internal/fakehub"
	"github.com/modelgate/modelgate/mitmca"
)

// Issue 10, item 5: every distinct API query used to become its own index
// entry, kept forever. Junk parameters, reordered or duplicated paths-info
// paths and the two body encodings must all land on one entry — seen here
// as one upstream request each.
func TestJunkAPIParametersShareOneIndexEntry(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, nil)

	tree := "/api/models/org/model/tree/" + tr.main
	for i := range 30 {
		q := []string{
			fmt.Sprintf("?recursive=true&expand=false&x=%d", i),
			fmt.Sprintf("?expand=False&recursive=True&junk%d=1", i),
			fmt.Sprintf("?recursive=1&expand=0&recursive=true&pad=%s", strings.Repeat("a", i)),
		}[i%3]
		resp, body := g.mustDo(t, http.MethodGet, tree+q, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	}
	assert.Equal(t, 1, tr.hub.Count("hub", http.MethodGet, "/api/models/org/model/tree/"),
		"parameters the gateway does not understand neither reach the Hub nor split the cache")
	// A parameter it does understand still makes a different request.
	resp, _ := g.mustDo(t, http.MethodGet, tree+"?recursive=false&expand=false", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, 2, tr.hub.Count("hub", http.MethodGet, "/api/models/org/model/tree/"))

	info := "/api/models/org/model/revision/" + tr.main
	for i := range 10 {
		resp, _ := g.mustDo(t, http.MethodGet, fmt.Sprintf("%s?x=%d&expand=sha&expand=sha", info, i), nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	assert.Equal(t, 1, tr.hub.Count("hub", http.MethodGet, "/api/models/org/model/revision/"))

	pathsInfo := g.URL + "/api/models/org/model/paths-info/" + tr.main
	bodies := []struct{ ctype, body string }{
		{"application/x-www-form-urlencoded", "paths=xet.bin&paths=config.json&expand=false"},
		{"application/x-www-form-urlencoded", "paths=config.json&paths=xet.bin&paths=config.json&expand=False&junk=1"},
		{"application/x-www-form-urlencoded", "expand=false&paths=xet.bin&paths=config.json&x=" + strings.Repeat("y", 100)},
		{"application/json", `{"paths":["config.json","xet.bin"],"expand":false,"other":"x"}`},
		{"application/json; charset=utf-8", `{"paths":["xet.bin","config.json","xet.bin"]}`},
	}
	for _, b := range bodies {
		req, _ := http.NewRequest(http.MethodPost, pathsInfo+"?junk=1", strings.NewReader(b.body))
		req.Header.Set("Content-Type", b.ctype)
		resp, err := g.Client.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		assert.Contains(t, string(body), "xet.bin")
		assert.Contains(t, string(body), "config.json")
	}
	assert.Equal(t, 1, tr.hub.Count("hub", http.MethodPost, "/api/models/org/model/paths-info/"))

	// A body the gateway cannot read is a 400, and nothing goes upstream.
	req, _ := http.NewRequest(http.MethodPost, pathsInfo, strings.NewReader(`{"paths":`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.Client.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Equal(t, 1, tr.hub.Count("hub", http.MethodPost, "/api/models/org/model/paths-info/"))
}

func TestJunkCivitAIMetadataParametersShareOneIndexEntry(t *testing.T) {
	f := newCivitAIFixture(t, nil)
	for i := range 20 {
		resp, body := f.g.mustDo(t, http.MethodGet, fmt.Sprintf("/api/v1/model-versions/200?x=%d&nsfw=%d", i, i), nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		assert.Contains(t, string(body), "style-lora.safetensors")
	}
	assert.Equal(t, 1, f.civ.Count(fakecivitai.ServerAPI, http.MethodGet, "/api/v1/model-versions/200"))
}

// Last-known copies used to be kept forever; now for cache.last_known_ttl.
func TestLastKnownAPIAnswersExpire(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, func(c *config.Config) {
		c.Cache.RevisionTTL = config.Duration{} // every branch answer asks the Hub
		c.Cache.LastKnownTTL = config.Duration{Duration: 2 * time.Second}
	})
	path := "/api/models/org/model/tree/main?recursive=true"
	resp, _ := g.mustDo(t, http.MethodGet, path, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)

	tr.hub.SetDown(true)
	resp, _ = g.mustDo(t, http.MethodGet, path, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "the last known answer stands in while the Hub is down")
	assert.NotEmpty(t, resp.Header.Get("Warning"))
	require.Eventually(t, func() bool {
		resp, _ := g.mustDo(t, http.MethodGet, path, nil)
		return resp.StatusCode == http.StatusGatewayTimeout
	}, 10*time.Second, 100*time.Millisecond, "after last_known_ttl the copy is gone")
}

// Issue 10, item 11: cached model bytes were readable by every local user
// (0444 files in 0755 directories). Everything under data_dir is the
// gateway user's alone, including what an older version left there.
func TestDataDirIsPrivateToTheGatewayUser(t *testing.T) {
	tr := newTestHub(t, 64<<10)
	dataDir := t.TempDir()
	// A data_dir as the previous version left it.
	old := filepath.Join(dataDir, "blobs", "sha256", "ab")
	require.NoError(t, os.MkdirAll(old, 0o755))
	oldBlob := filepath.Join(old, "ab"+strings.Repeat("0", 62))
	require.NoError(t, os.WriteFile(oldBlob, []byte("old"), 0o444))
	require.NoError(t, os.Chmod(oldBlob, 0o444))
	require.NoError(t, os.Chmod(dataDir, 0o755))

	g := startGateway(t, tr.hub, func(c *config.Config) { c.DataDir = dataDir })
	resp, body := g.mustDo(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, tr.big, body)
	// The interception CA is created in data_dir/ca too.
	resp, _ = g.mustDo(t, http.MethodGet, "/ca.pem", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	// The blob is published a moment after its last byte reached the
	// client; wait for it rather than race it.
	require.Eventually(t, func() bool { return g.hasBlob(t, fakehub.SHA256Hex(tr.big)) }, 5*time.Second, 5*time.Millisecond)

	var files int
	require.NoError(t, filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		require.NoError(t, err)
		fi, err := os.Lstat(p)
		require.NoError(t, err)
		if d.IsDir() {
			assert.Equal(t, fs.FileMode(0o700), fi.Mode().Perm(), "directory %s", p)
			return nil
		}
		files++
		assert.Zero(t, fi.Mode().Perm()&0o077, "%s is mode %v: readable by others", p, fi.Mode().Perm())
		return nil
	}))
	assert.Greater(t, files, 5, "blobs, index and CA files were checked")
}

// A configured CA key that others may read is refused at start.
func TestALooseCAKeyIsRefusedAtStart(t *testing.T) {
	dir := t.TempDir()
	_, err := mitmca.Load("", "", dir, mitmca.Options{})
	require.NoError(t, err)
	cert, key := filepath.Join(dir, "modelgate-ca.pem"), filepath.Join(dir, "modelgate-ca-key.pem")
	require.NoError(t, os.Chmod(key, 0o640))
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.MITM.CACert, cfg.MITM.CAKey = cert, key
	_, err = app.New(cfg, slog.New(slog.DiscardHandler))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "mitm.ca_key")
	assert.Contains(t, err.Error(), "0640")

	require.NoError(t, os.Chmod(key, 0o600))
	gw, err := app.New(cfg, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	gw.Close()
}

// `modelgate ca --new` makes /ca.pem serve both certificates for the
// overlap, so workers can trust the new CA before it signs anything.
func TestCANewIsAnnouncedBesideTheCurrentCA(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	dataDir := t.TempDir()
	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(cfgFile, []byte("data_dir: "+dataDir+"\n"), 0o600))
	var cur, both, stderr strings.Builder
	require.NoError(t, run([]string{"ca", "-config", cfgFile}, &cur, &stderr))
	require.NoError(t, run([]string{"ca", "--new", "-config", cfgFile}, &both, &stderr))
	assert.Equal(t, 1, strings.Count(cur.String(), "BEGIN CERTIFICATE"))
	assert.Equal(t, 2, strings.Count(both.String(), "BEGIN CERTIFICATE"))
	assert.True(t, strings.HasPrefix(both.String(), cur.String()), "the current CA is still the first")
	assert.Error(t, run([]string{"ca", "--new", "-config", cfgFile}, &strings.Builder{}, &stderr), "one rotation at a time")

	g := startGateway(t, tr.hub, func(c *config.Config) { c.DataDir = dataDir })
	resp, body := g.mustDo(t, http.MethodGet, "/ca.pem", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, both.String(), string(body))
}
