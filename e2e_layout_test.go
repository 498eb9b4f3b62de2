package main

import (
	"bytes"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/indexkeys"
	"github.com/modelgate/modelgate/internal/fakehub"
)

// copyTree copies the directory src into dst (created).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	require.NoError(t, filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o600)
	}))
}

// Issue 11 part 6: a data_dir written by release f6bd027 (index layout 1,
// testdata/datadir-f6bd027) opens under today's code: the index is
// migrated once at start, its blobs are served without fetching them
// again, and the CDN path hands them out by content id to callers that
// may read their repo (the seen records derived from the file records)
// and to nobody else.
func TestDataDirFromF6bd027OpensAndMigrates(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	copyTree(t, filepath.Join("testdata", "datadir-f6bd027"), dataDir)

	gated := fakehub.RandomData(60, 48<<10)
	public := fakehub.RandomData(61, 32<<10)
	small := []byte(`{"legacy":true}`)
	gatedSHA, publicSHA := fakehub.SHA256Hex(gated), fakehub.SHA256Hex(public)

	f := newSecurityFixture(t, func(c *config.Config) {
		c.DataDir = dataDir
		c.Clients.RequireKey = "gated"
	})
	commit := fakehub.Commit("legacy")
	f.hub.AddRepo(fakehub.Repo{ID: "org/legacy-gated", Gated: true, Refs: map[string]string{"main": commit},
		Commits: map[string][]fakehub.File{commit: {{Path: "weights.bin", Data: gated, LFS: true}}}})
	f.hub.AddRepo(fakehub.Repo{ID: "org/legacy-public", Refs: map[string]string{"main": commit},
		Commits: map[string][]fakehub.File{commit: {{Path: "weights.bin", Data: public, LFS: true}, {Path: "config.json", Data: small}}}})
	assert.Contains(t, f.g.Logs.String(), "index layout migrated")

	// The CDN path first, before any resolve could write a seen record:
	// what lets a caller have a blob by digest here is the migration's.
	code, body := f.cdnGet(t, f.render, gatedSHA, nil) // may read org/*
	assert.Equal(t, http.StatusOK, code)
	assert.True(t, bytes.Equal(gated, body), "the old gated blob by digest, to a key that may read its repo")
	code, body = f.cdnGet(t, f.oldOnly, gatedSHA, nil) // old-org/* only
	assert.NotEqual(t, http.StatusOK, code)
	assert.False(t, bytes.Equal(gated, body), "a key that may not read org/legacy-gated got its blob by digest")
	code, body = f.cdnGet(t, "", gatedSHA, nil) // keyless: anonymous
	assert.NotEqual(t, http.StatusOK, code)
	assert.False(t, bytes.Equal(gated, body), "a keyless worker got gated weights by digest")
	code, body = f.cdnGet(t, f.hfOnly, publicSHA, nil) // any Hub repo
	assert.Equal(t, http.StatusOK, code)
	assert.True(t, bytes.Equal(public, body))

	// The mirror serves the old files from the cache.
	for _, c := range []struct {
		path string
		want []byte
	}{
		{"/org/legacy-gated/resolve/main/weights.bin", gated},
		{"/org/legacy-public/resolve/main/weights.bin", public},
		{"/org/legacy-public/resolve/main/config.json", small},
	} {
		resp, body := f.g.mustDo(t, http.MethodGet, c.path, bearer(f.render))
		require.Equal(t, http.StatusOK, resp.StatusCode, c.path)
		assert.True(t, bytes.Equal(c.want, body), c.path)
	}
	assert.Zero(t, f.hub.CDNBodyFetches(gatedSHA), "the gated blob was fetched again")
	assert.Zero(t, f.hub.CDNBodyFetches(publicSHA), "the public blob was fetched again")
	assert.Zero(t, f.hub.Count("hub", http.MethodGet, "/api/resolve-cache/"), "the small file was fetched again")
	f.g.Stop()

	// The version is written and the layout-1 API answers are gone.
	idx, err := cache.OpenIndex(filepath.Join(dataDir, "index"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	v, err := idx.Get(indexkeys.LayoutVersionKey)
	require.NoError(t, err)
	assert.Equal(t, strconv.Itoa(indexkeys.LayoutVersion), string(v))
	var stale []string
	require.NoError(t, idx.Scan(indexkeys.HFAPI, func(k string, _ []byte) error {
		if !strings.HasPrefix(k, indexkeys.HFAPIPrefix("model", "org/legacy-public")) {
			stale = append(stale, k)
		}
		return nil
	}))
	assert.Empty(t, stale, "layout-1 API answers left in the index")
	require.NoError(t, idx.Close())

	// A second start finds the version and does not migrate again.
	g2 := startGateway(t, f.hub, func(c *config.Config) { c.DataDir = dataDir })
	resp, body := g2.mustDo(t, http.MethodGet, "/org/legacy-public/resolve/main/weights.bin", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, bytes.Equal(public, body))
	assert.NotContains(t, g2.Logs.String(), "index layout migrated")
	assert.Zero(t, f.hub.CDNBodyFetches(publicSHA))
}
