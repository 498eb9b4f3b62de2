package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/admin"
	"github.com/modelgate/modelgate/admincli"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
)

// cli runs an admin command against the gateway as the modelgate binary
// would, with output that is not a terminal.
func (g *gatewayUnderTest) cli(t *testing.T, key string, cmd string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	env := admincli.Env{
		Getenv: func(k string) string {
			if k == "MODELGATE_ADMIN_KEY" {
				return key
			}
			return ""
		},
		Stdout: &out, Stderr: &errOut, Stdin: strings.NewReader(""),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := admincli.Run(ctx, cmd, append([]string{"--gateway", g.URL}, args...), env)
	g.Logs.Write([]byte("cli stderr: " + errOut.String()))
	return out.String() + errOut.String(), err
}

// adminDo sends an admin API request with key (none when "").
func (g *gatewayUnderTest) adminDo(t *testing.T, method, path, key string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, g.URL+path, rd)
	require.NoError(t, err)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := g.Client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

func (g *gatewayUnderTest) job(t *testing.T, id, key string) admin.Job {
	t.Helper()
	code, b := g.adminDo(t, http.MethodGet, "/admin/v1/jobs/"+id, key, nil)
	require.Equal(t, http.StatusOK, code, string(b))
	var j admin.Job
	require.NoError(t, json.Unmarshal(b, &j))
	return j
}

func TestPrefetchLeavesEveryFileServedFromTheCacheWithoutAnUpstreamRequest(t *testing.T) {
	tr := newTestHub(t, 6<<20)
	g := startGateway(t, tr.hub, nil)

	out, err := g.cli(t, "", "prefetch", "hf:org/model")
	require.NoError(t, err, out)
	assert.Contains(t, out, "done")

	before := len(tr.hub.Requests())
	for path, want := range map[string][]byte{
		"config.json":         tr.config,
		"model.safetensors":   tr.big,
		"xet.bin":             tr.xet,
		"sub%20dir/a%20b.txt": tr.nested,
	} {
		for _, rev := range []string{tr.main, "main"} {
			resp, body := g.mustDo(t, http.MethodGet, "/org/model/resolve/"+rev+"/"+path, nil)
			require.Equal(t, http.StatusOK, resp.StatusCode, path)
			assert.True(t, bytes.Equal(want, body), "%s at %s differs", path, rev)
		}
	}
	assert.Empty(t, tr.hub.Requests()[before:], "every file must be served from the cache, with no upstream request")
	assert.Equal(t, 1, tr.hub.CDNBodyFetches(fakehub.SHA256Hex(tr.big)))

	// ls shows it, aligned, and as JSON.
	out, err = g.cli(t, "", "ls")
	require.NoError(t, err)
	assert.Regexp(t, `org/model\s+main \(`+tr.main[:12]+`\)\s+4/4`, out)
	out, err = g.cli(t, "", "ls", "--json", "hf:org/model")
	require.NoError(t, err)
	var inv admin.Inventory
	require.NoError(t, json.Unmarshal([]byte(out), &inv))
	require.Len(t, inv.Repos, 1)
	assert.Equal(t, int64(len(tr.config)+len(tr.big)+len(tr.xet)+len(tr.nested)), inv.Repos[0].Bytes)
}

func TestPrefetchFiltersAndReportsFailedFiles(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	g := startGateway(t, tr.hub, nil)
	out, err := g.cli(t, "", "prefetch", "--include", "*.json", "--include", "sub dir/*", "hf:org/model")
	require.NoError(t, err, out)
	assert.False(t, g.hasBlob(t, fakehub.SHA256Hex(tr.big)), "an excluded file must not be fetched")
	assert.Equal(t, 0, tr.hub.CDNBodyFetches(fakehub.SHA256Hex(tr.big)))

	tr.hub.FailBlob(fakehub.SHA256Hex(tr.big), http.StatusForbidden, 100)
	out, err = g.cli(t, "", "prefetch", "hf:org/model")
	require.Error(t, err, "prefetch exits non-zero when a file is not cached")
	assert.Contains(t, out, "model.safetensors")
}

func TestPrefetchJobResumesAfterARestart(t *testing.T) {
	tr := newTestHub(t, 4<<20)
	sha := fakehub.SHA256Hex(tr.big)
	tr.hub.ThrottleBlob(sha, 256<<10)
	dir := t.TempDir()
	g := startGateway(t, tr.hub, func(c *config.Config) { c.DataDir = dir })

	code, b := g.adminDo(t, http.MethodPost, "/admin/v1/jobs", "", map[string]any{"spec": "hf:org/model"})
	require.Equal(t, http.StatusAccepted, code, string(b))
	var j admin.Job
	require.NoError(t, json.Unmarshal(b, &j))
	require.Eventually(t, func() bool {
		got := g.job(t, j.ID, "")
		return got.State == admin.StateRunning && got.BytesDone > 0 && got.FilesTotal == 4
	}, 20*time.Second, 20*time.Millisecond)
	g.Stop()

	tr.hub.ThrottleBlob(sha, 0)
	g2 := startGateway(t, tr.hub, func(c *config.Config) { c.DataDir = dir })
	require.Eventually(t, func() bool { return g2.job(t, j.ID, "").State == admin.StateDone }, 30*time.Second, 50*time.Millisecond)
	got := g2.job(t, j.ID, "")
	assert.Equal(t, 4, got.FilesDone)
	assert.True(t, g2.hasBlob(t, sha))
	resp, body := g2.mustDo(t, http.MethodGet, "/org/model/resolve/"+tr.main+"/model.safetensors", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, bytes.Equal(tr.big, body))
}

func TestPurgeKeepsBlobsOtherReposStillReference(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	tr.hub.AddRepo(fakehub.Repo{
		ID:      "org/copy",
		Refs:    map[string]string{"main": tr.main},
		Commits: map[string][]fakehub.File{tr.main: {{Path: "same.safetensors", Data: tr.big, LFS: true}}},
	})
	g := startGateway(t, tr.hub, nil)
	for _, spec := range []string{"hf:org/model", "hf:org/copy"} {
		out, err := g.cli(t, "", "prefetch", spec)
		require.NoError(t, err, out)
	}
	bigSHA, xetSHA := fakehub.SHA256Hex(tr.big), fakehub.SHA256Hex(tr.xet)

	out, err := g.cli(t, "", "purge", "hf:org/model")
	require.NoError(t, err, out)
	var res admin.PurgeResult
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	assert.Equal(t, 3, res.BlobsRemoved, out) // config, xet, nested
	assert.Equal(t, 1, res.BlobsShared, out)  // the big file, also in org/copy
	assert.True(t, g.hasBlob(t, bigSHA), "a blob org/copy still references must stay")
	assert.False(t, g.hasBlob(t, xetSHA), "a blob only the purged repo referenced must go")

	out, err = g.cli(t, "", "ls", "--json")
	require.NoError(t, err)
	assert.NotContains(t, out, `"org/model"`)

	out, err = g.cli(t, "", "purge", "hf:org/copy")
	require.NoError(t, err, out)
	assert.False(t, g.hasBlob(t, bigSHA))
	assert.Equal(t, float64(0), g.metric(t, "modelgate_cache_blobs"))
}

func TestVerifyQuarantinesACorruptedBlob(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	g := startGateway(t, tr.hub, nil)
	out, err := g.cli(t, "", "prefetch", "hf:org/model")
	require.NoError(t, err, out)
	sha := fakehub.SHA256Hex(tr.big)
	out, err = g.cli(t, "", "verify")
	require.NoError(t, err, "a clean cache verifies: %s", out)

	path := filepath.Join(g.DataDir, "blobs", "sha256", sha[:2], sha)
	require.NoError(t, os.Chmod(path, 0o600))
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("rot"), 1000)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	out, err = g.cli(t, "", "verify", "hf:org/model")
	require.Error(t, err, out)
	assert.Contains(t, out, "hashes to")
	assert.False(t, g.hasBlob(t, sha), "the corrupt blob must leave blobs/")
	_, err = os.Stat(filepath.Join(g.DataDir, "quarantine", "sha256-"+sha))
	assert.NoError(t, err, "the corrupt blob is kept in quarantine/")

	resp, body := g.mustDo(t, http.MethodGet, "/org/model/resolve/"+tr.main+"/model.safetensors", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, bytes.Equal(tr.big, body), "the next request fills the blob again, right")
	assert.Equal(t, 2, tr.hub.CDNBodyFetches(sha))
}

const (
	adminKey     = "mga_ADMINsecretKEY0123456789abcdef0123456789ab"
	otherAdmin   = "mga_UNKNOWNadminKEY000000000000000000000000000"
	workerKeyE2E = "mgw_WORKERkeyFORadminTESTS0123456789abcdef0123"
)

func TestAdminAccessRules(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	g := startGateway(t, tr.hub, func(c *config.Config) {
		c.Admin.Keys = []config.AdminKey{{Name: "ops", KeySHA256: sha256Hex(adminKey)}}
		c.Clients.Keys = []config.ClientKey{{Name: "render-01", KeySHA256: sha256Hex(workerKeyE2E)}}
	})
	tests := []struct {
		name, method, path, auth string
		want                     int
	}{
		{"no key", http.MethodGet, "/admin/v1/status", "", http.StatusUnauthorized},
		{"unknown admin key", http.MethodGet, "/admin/v1/status", otherAdmin, http.StatusUnauthorized},
		{"worker key on the admin API", http.MethodGet, "/admin/v1/status", workerKeyE2E, http.StatusForbidden},
		{"admin key", http.MethodGet, "/admin/v1/status", adminKey, http.StatusOK},
		{"admin key cannot download", http.MethodGet, "/org/model/resolve/main/config.json", adminKey, http.StatusForbidden},
		{"admin key as token= cannot download", http.MethodGet, "/api/download/models/1?token=" + adminKey, "", http.StatusForbidden},
		{"worker key downloads", http.MethodGet, "/org/model/resolve/main/config.json", workerKeyE2E, http.StatusOK},
		{"status page needs no key", http.MethodGet, "/", "", http.StatusOK},
		{"status page refuses a worker key", http.MethodGet, "/", workerKeyE2E, http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := g.adminDo(t, tt.method, tt.path, tt.auth, nil)
			assert.Equal(t, tt.want, code, string(body))
		})
	}
	// No admin key, worker key or operator token in any log line.
	logs := g.Logs.String()
	for _, s := range []string{adminKey, otherAdmin, workerKeyE2E} {
		assert.NotContains(t, logs, s)
		assert.NotContains(t, logs, s[4:])
	}
}

func TestAdminAPIIsRefusedOutsideAdminAllow(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	g := startGateway(t, tr.hub, func(c *config.Config) { c.Admin.Allow = config.MustNetworks("10.99.0.0/16") })
	code, _ := g.adminDo(t, http.MethodGet, "/admin/v1/status", "", nil)
	assert.Equal(t, http.StatusForbidden, code)
	code, body := g.adminDo(t, http.MethodGet, "/", "", nil)
	assert.NotEqual(t, http.StatusOK, code, "other networks get what they got before: no status page")
	assert.NotContains(t, string(body), "<html")
}

func TestExportImportServesOfflineOnAnotherGateway(t *testing.T) {
	tr := newTestHub(t, 2<<20)
	a := startGateway(t, tr.hub, nil)
	out, err := a.cli(t, "", "prefetch", "hf:org/model")
	require.NoError(t, err, out)
	tarball, err := a.cli(t, "", "export", "hf:org/model")
	require.NoError(t, err)
	f := filepath.Join(t.TempDir(), "export.tar")
	require.NoError(t, os.WriteFile(f, []byte(tarball), 0o600))

	b := startGateway(t, tr.hub, func(c *config.Config) { c.Offline = true })
	// A tampered copy is refused and publishes nothing.
	bad := []byte(tarball)
	i := bytes.Index(bad, tr.big[:64])
	require.Greater(t, i, 0)
	bad[i+10] ^= 0xff
	fbad := filepath.Join(t.TempDir(), "bad.tar")
	require.NoError(t, os.WriteFile(fbad, bad, 0o600))
	out, err = b.cli(t, "", "import", fbad)
	require.Error(t, err, out)
	assert.False(t, b.hasBlob(t, fakehub.SHA256Hex(tr.big)))

	out, err = b.cli(t, "", "import", f)
	require.NoError(t, err, out)
	before := len(tr.hub.Requests())
	for _, rev := range []string{tr.main, "main"} {
		resp, body := b.mustDo(t, http.MethodGet, "/org/model/resolve/"+rev+"/model.safetensors", nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, rev)
		assert.True(t, bytes.Equal(tr.big, body))
	}
	assert.Empty(t, tr.hub.Requests()[before:], "an offline gateway serves the import without the network")
}

func TestPinsAndAuditThroughTheAPI(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	g := startGateway(t, tr.hub, func(c *config.Config) {
		c.Clients.Keys = []config.ClientKey{{Name: "render-01", KeySHA256: sha256Hex(workerKeyE2E)}}
	})
	out, err := g.cli(t, "", "pin", "hf:org/model@main")
	require.NoError(t, err, out)
	code, b := g.adminDo(t, http.MethodGet, "/admin/v1/pins", "", nil)
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, string(b), "hf:org/model@main")
	_, err = g.cli(t, "", "pin", "hf:org/../x")
	require.Error(t, err)

	g.mustDo(t, http.MethodGet, "/org/gated/resolve/main/weights.bin", http.Header{"Authorization": {"Bearer " + workerKeyE2E}})
	g.mustDo(t, http.MethodGet, "/org/model/resolve/main/config.json", nil)
	require.Eventually(t, func() bool {
		_, b := g.adminDo(t, http.MethodGet, "/admin/v1/audit?key=render-01&since=1h", "", nil)
		return strings.Contains(string(b), "/org/gated/resolve/main/weights.bin")
	}, 5*time.Second, 20*time.Millisecond)
	_, b = g.adminDo(t, http.MethodGet, "/admin/v1/audit?key=render-01", "", nil)
	assert.NotContains(t, string(b), "config.json", "filtered by key")
	_, b = g.adminDo(t, http.MethodGet, "/admin/v1/audit?client=127.0.0.1", "", nil)
	assert.Contains(t, string(b), "config.json")

	out, err = g.cli(t, "", "ls", "hf:org/model")
	require.NoError(t, err)
	assert.Regexp(t, `org/model.*yes`, out)
	out, err = g.cli(t, "", "unpin", "hf:org/model@main")
	require.NoError(t, err, out)
	_, err = g.cli(t, "", "unpin", "hf:org/model@main")
	require.Error(t, err)
}
