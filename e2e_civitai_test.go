package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/modelgate/modelgate/admin"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakecivitai"
	"github.com/modelgate/modelgate/internal/fakehub"
)

const (
	civitaiKey       = "civOPERATORkey0123456789abcdef0123"
	civitaiWorkerKey = "civWORKERkey9876543210"
	civitaiHost      = "civitai.com"
)

// civitaiFixture is a fake CivitAI with a few versions, and a gateway
// whose CivitAI endpoint points at it.
type civitaiFixture struct {
	civ      *fakecivitai.CivitAI
	hub      *fakehub.Hub
	g        *gatewayUnderTest
	checkpt  []byte // version 100, requires login, R2-style storage
	lora     []byte // version 200, public, B2-style storage
	vae      []byte // version 100's second file
	unhashed []byte // version 300, no published hash
}

func newCivitAIFixture(t *testing.T, edit func(*config.Config)) *civitaiFixture {
	t.Helper()
	f := &civitaiFixture{
		civ:      fakecivitai.New(t, fakecivitai.Options{Keys: []string{civitaiKey, civitaiWorkerKey}}),
		hub:      fakehub.New(t, fakehub.Options{Token: operatorToken, OtherTokens: []string{workerToken}}),
		checkpt:  fakehub.RandomData(10, 6<<20),
		lora:     fakehub.RandomData(11, 1<<20+5),
		vae:      fakehub.RandomData(12, 300<<10),
		unhashed: fakehub.RandomData(13, 200<<10),
	}
	f.civ.AddVersion(fakecivitai.Version{ID: 100, ModelID: 10, RequireAuth: true, Files: []fakecivitai.File{
		{ID: 1001, Name: "dreamy-xl.safetensors", Data: f.checkpt, Primary: true},
		{ID: 1002, Name: "dreamy-xl.vae.safetensors", Data: f.vae, Type: "VAE"},
	}})
	f.civ.AddVersion(fakecivitai.Version{ID: 200, ModelID: 20, Files: []fakecivitai.File{
		{ID: 2001, Name: "style-lora.safetensors", Data: f.lora, Primary: true, Storage: "b2"},
	}})
	f.civ.AddVersion(fakecivitai.Version{ID: 300, ModelID: 30, Files: []fakecivitai.File{
		{ID: 3001, Name: "fresh.safetensors", Data: f.unhashed, Primary: true, NoHash: true},
	}})
	f.civ.AddVersion(fakecivitai.Version{ID: 400, ModelID: 40, EarlyAccess: true, Files: []fakecivitai.File{
		{ID: 4001, Name: "early.safetensors", Data: []byte("early"), Primary: true},
	}})
	f.civ.AddVersion(fakecivitai.Version{ID: 500, ModelID: 50, Archived: true, Files: []fakecivitai.File{
		{ID: 5001, Name: "old.safetensors", Data: []byte("old"), Primary: true},
	}})
	caFile := filepath.Join(t.TempDir(), "upstream-ca.pem")
	hubCA, err := os.ReadFile(f.hub.CAFile())
	require.NoError(t, err)
	civCA, err := os.ReadFile(f.civ.CAFile())
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(caFile, append(hubCA, civCA...), 0o600))
	f.g = startGateway(t, f.hub, func(c *config.Config) {
		c.CivitAI.Endpoint = config.MustEndpoint(f.civ.URL())
		c.CivitAI.APIKey = civitaiKey
		c.Upstream.CAFile = caFile
		c.Upstream.PrivateHosts = append(c.Upstream.PrivateHosts, hostPort(f.civ.R2URL()), hostPort(f.civ.B2URL()))
		if edit != nil {
			edit(c)
		}
	})
	return f
}

// storageTraffic renders every request the storage fakes received.
func (f *civitaiFixture) storageTraffic() []byte {
	var b bytes.Buffer
	for _, r := range f.civ.Requests() {
		if r.Server == fakecivitai.ServerAPI {
			continue
		}
		b.WriteString(r.Method + " " + r.Host + r.RequestURI + "\n")
		r.Header.Write(&b)
	}
	return b.Bytes()
}

func (f *civitaiFixture) assertNoKeyLeaked(t *testing.T) {
	t.Helper()
	leaks, scanned := f.g.Received.Leaks()
	assert.Empty(t, leaks, "worker traffic carries a secret")
	assert.Positive(t, scanned)
	secrets := f.g.Received.secrets()
	assertNoLeak(t, "storage traffic", f.storageTraffic(), secrets...)
	assertNoLeak(t, "logs", []byte(f.g.Logs.String()), secrets...)
	assertNoLeak(t, "metrics", []byte(f.g.metrics(t)), secrets...)
	for _, r := range f.civ.Requests() {
		if r.Server != fakecivitai.ServerAPI {
			assert.Empty(t, r.Header.Values("Authorization"), "storage must never see Authorization")
		}
	}
}

func TestCivitAIGatedDownloadWithNoKeyOnTheWorker(t *testing.T) {
	f := newCivitAIFixture(t, nil)
	sha := strings.ToLower(fakecivitai.SHA256Upper(f.checkpt))

	for i, path := range []string{
		"/api/download/models/100",
		"/api/download/models/100?token=" + civitaiWorkerKey, // a worker's own key is dropped
	} {
		resp, body := f.g.mustDo(t, http.MethodGet, path, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		require.True(t, bytes.Equal(f.checkpt, body), "body %d differs", i)
		assert.Equal(t, `"`+sha+`"`, resp.Header.Get("ETag"), "the ETag is the published SHA256")
		assert.Contains(t, resp.Header.Get("Content-Disposition"), "dreamy-xl.safetensors")
		assert.Equal(t, "bytes", resp.Header.Get("Accept-Ranges"))
	}
	assert.Equal(t, 1, f.civ.StorageFetches(1001), "the second download came from the cache")

	resp, body := f.g.mustDo(t, http.MethodGet, "/api/download/models/100", http.Header{"Range": {"bytes=10-19"}})
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	assert.Equal(t, f.checkpt[10:20], body)

	// What reached CivitAI: the operator's key as Bearer, never a token.
	for _, r := range f.civ.Requests() {
		if r.Server == fakecivitai.ServerAPI {
			assert.NotContains(t, r.RequestURI, "token=")
			assert.Equal(t, "Bearer "+civitaiKey, r.Header.Get("Authorization"))
			assert.NotContains(t, strings.ToLower(r.Header.Get("User-Agent")), "mozilla")
		}
	}
	f.assertNoKeyLeaked(t)
}

func TestCivitAIDownloadThroughTheProxy(t *testing.T) {
	requireCurl(t)
	f := newCivitAIFixture(t, nil)
	code, headers, body := f.g.curl(t, "https://"+civitaiHost+"/api/download/models/100?type=VAE&format=SafeTensor")
	require.Equal(t, 200, code, headers)
	assert.True(t, bytes.Equal(f.vae, body))
	assert.Contains(t, headers, "dreamy-xl.vae.safetensors")
	assert.Contains(t, strings.ToLower(headers), `etag: "`+strings.ToLower(fakecivitai.SHA256Upper(f.vae))+`"`)

	// The same download through the mirror is a cache hit.
	resp, mbody := f.g.mustDo(t, http.MethodGet, "/api/download/models/100?type=VAE&format=SafeTensor", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, bytes.Equal(f.vae, mbody))
	assert.Equal(t, 1, f.civ.StorageFetches(1002))
	f.assertNoKeyLeaked(t)
}

func TestCivitAIConcurrentColdWorkersShareOneStorageFetch(t *testing.T) {
	f := newCivitAIFixture(t, nil)
	release := f.civ.GateFile(2001, 256<<10)
	var eg errgroup.Group
	answered := make(chan struct{}, 8)
	for i := range 8 {
		eg.Go(func() error {
			status, body, err := getAnswered(f.g.Client, f.g.URL+"/api/download/models/200", answered)
			if err != nil {
				return err
			}
			if status != http.StatusOK || !bytes.Equal(body, f.lora) {
				return fmt.Errorf("worker %d: status %d, %d bytes", i, status, len(body))
			}
			return nil
		})
	}
	waitAnswered(t, answered, 8) // all joined the held fill
	release()
	require.NoError(t, eg.Wait())
	assert.Equal(t, 1, f.civ.StorageFetches(2001))
	assert.Equal(t, 1, f.civ.Count(fakecivitai.ServerAPI, http.MethodGet, "/api/download/models/200"), "one resolution for all")
	f.assertNoKeyLeaked(t)
}

func TestCivitAIStorageBytesThatMissThePublishedHashAreNeverPublished(t *testing.T) {
	f := newCivitAIFixture(t, nil)
	f.civ.CorruptFile(2001, true)
	resp, body, err := f.g.do(t, http.MethodGet, "/api/download/models/200", nil)
	if err == nil {
		assert.NotEqual(t, http.StatusOK, resp.StatusCode, "a corrupt file must not complete a 200")
	}
	assert.Less(t, len(body), len(f.lora))
	require.Eventually(t, func() bool { return f.g.metric(t, "modelgate_fills_in_flight") == 0 }, 5*time.Second, 10*time.Millisecond)
	assert.Empty(t, f.g.blobFiles(t))

	f.civ.CorruptFile(2001, false)
	resp, body = f.g.mustDo(t, http.MethodGet, "/api/download/models/200", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, bytes.Equal(f.lora, body))
}

func TestCivitAILoginPageIsA502AndNothingIsCached(t *testing.T) {
	f := newCivitAIFixture(t, nil)
	f.civ.LoginRedirect(100, true)
	resp, body := f.g.mustDo(t, http.MethodGet, "/api/download/models/100", nil)
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
	assert.Contains(t, string(body), "login")
	assert.Empty(t, f.g.blobFiles(t))
	assert.Zero(t, f.civ.StorageFetches(1001))

	// Nothing was remembered: once CivitAI answers properly, it works.
	f.civ.LoginRedirect(100, false)
	resp, body = f.g.mustDo(t, http.MethodGet, "/api/download/models/100", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, bytes.Equal(f.checkpt, body))
}

func TestCivitAIErrorsKeepTheirStatusAndSayWhatToDo(t *testing.T) {
	f := newCivitAIFixture(t, nil)
	noKey := newCivitAIFixture(t, func(c *config.Config) { c.CivitAI.APIKey = "" })
	tests := []struct {
		name    string
		g       *gatewayUnderTest
		path    string
		status  int
		message string
	}{
		{"early access", f.g, "/api/download/models/400", 403, "lacks access"},
		{"archived", f.g, "/api/download/models/500", 410, "archived"},
		{"unknown version", f.g, "/api/download/models/999", 404, "no such model version"},
		{"no file for these parameters", f.g, "/api/download/models/200?format=GGUF", 404, "no file matching"},
		{"login required and no key configured", noKey.g, "/api/download/models/100", 401, "configure civitai.api_key"},
		{"bad parameter", f.g, "/api/download/models/100?fileId=x", 400, "fileId"},
		{"bad version id", f.g, "/api/download/models/12ab", 404, "not served by the gateway"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := tt.g.mustDo(t, http.MethodGet, tt.path, nil)
			assert.Equal(t, tt.status, resp.StatusCode, string(body))
			assert.Contains(t, resp.Header.Get("Content-Type"), "application/json")
			var e struct{ Error, Message string }
			require.NoError(t, json.Unmarshal(body, &e), string(body))
			require.NotEmpty(t, tt.message, "every case names the message it expects")
			assert.Contains(t, e.Message, tt.message)
		})
	}
	// Without a key, public files still work.
	resp, body := noKey.g.mustDo(t, http.MethodGet, "/api/download/models/200", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, bytes.Equal(f.lora, body))
	assert.Empty(t, f.g.blobFiles(t), "errors cached nothing")
}

func TestCivitAIMetadataPointsDownloadsAtTheGatewayAndIsCached(t *testing.T) {
	f := newCivitAIFixture(t, nil)
	for range 2 {
		resp, body := f.g.mustDo(t, http.MethodGet, "/api/v1/model-versions/100", nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		var v struct {
			DownloadURL string `json:"downloadUrl"`
			Files       []struct {
				DownloadURL string `json:"downloadUrl"`
				Hashes      struct{ SHA256 string }
			}
		}
		require.NoError(t, json.Unmarshal(body, &v))
		assert.Equal(t, f.g.URL+"/api/download/models/100", v.DownloadURL)
		require.Len(t, v.Files, 2)
		for _, file := range v.Files {
			assert.True(t, strings.HasPrefix(file.DownloadURL, f.g.URL+"/api/download/models/100"), file.DownloadURL)
		}
		assert.Equal(t, fakecivitai.SHA256Upper(f.checkpt), v.Files[0].Hashes.SHA256)
	}
	assert.Equal(t, 1, f.civ.Count(fakecivitai.ServerAPI, http.MethodGet, "/api/v1/model-versions/100"))

	resp, body := f.g.mustDo(t, http.MethodGet, "/api/v1/model-versions/by-hash/"+fakecivitai.AutoV2(f.lora), nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, string(body), `"id":200`)
	resp, _ = f.g.mustDo(t, http.MethodGet, "/api/v1/models/10", nil)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	f.assertNoKeyLeaked(t)
}

func TestCivitAIFileWithoutPublishedHashIsKeyedByTheComputedOne(t *testing.T) {
	f := newCivitAIFixture(t, nil)
	resp, body := f.g.mustDo(t, http.MethodGet, "/api/download/models/300", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.True(t, bytes.Equal(f.unhashed, body))
	assert.Empty(t, resp.Header.Get("ETag"), "no ETag before the hash is known")
	assert.Equal(t, 1.0, f.g.metric(t, "modelgate_civitai_unverified_downloads_total"))

	// The client has its last byte once the blob verified, a moment before
	// the publish maps the download to it; a HEAD in between would resolve
	// the download again. Wait for the fill to end first.
	require.Eventually(t, func() bool {
		return f.g.metric(t, `modelgate_fills_total{result="ok"}`) >= 1
	}, 5*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool {
		resp, _ := f.g.mustDo(t, http.MethodHead, "/api/download/models/300", nil)
		return resp.Header.Get("ETag") == `"`+fakehub.SHA256Hex(f.unhashed)+`"`
	}, 5*time.Second, 20*time.Millisecond, "afterwards the download maps to the computed sha256")
	resp, body = f.g.mustDo(t, http.MethodGet, "/api/download/models/300", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, bytes.Equal(f.unhashed, body))
	assert.Equal(t, 1, f.civ.StorageFetches(3001))
}

func TestAria2cParallelRangesDownloadThroughTheMirror(t *testing.T) {
	if _, err := exec.LookPath("aria2c"); err != nil {
		t.Fatal("aria2c is required (.ci/run installs Debian's aria2)")
	}
	f := newCivitAIFixture(t, nil)
	dir := t.TempDir()
	var mu sync.Mutex
	run := func() {
		mu.Lock()
		defer mu.Unlock()
		os.Remove(filepath.Join(dir, "out.bin"))
		cmd := exec.Command("aria2c", "-x8", "-s8", "-k1M", "--min-split-size=1M", "--allow-overwrite=true",
			"--auto-file-renaming=false", "--console-log-level=warn", "--summary-interval=0",
			"-d", dir, "-o", "out.bin", f.g.URL+"/api/download/models/100")
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, string(out))
		got, err := os.ReadFile(filepath.Join(dir, "out.bin"))
		require.NoError(t, err)
		assert.True(t, bytes.Equal(f.checkpt, got), "aria2c's file differs")
	}
	run() // cold: eight ranges stream from one fill
	run() // warm
	assert.Equal(t, 1, f.civ.StorageFetches(1001))
	assert.Greater(t, f.g.metric(t, `modelgate_requests_total{result="hit",route="civitai_download"}`), 1.0)
}

func TestCivitAIPrefetchPrimaryThenAllServesDownloadsWithNoStorageFetch(t *testing.T) {
	f := newCivitAIFixture(t, nil)

	// civitai:<id> fills the primary file only.
	out, err := f.g.cli(t, "", "prefetch", "civitai:100")
	require.NoError(t, err, out)
	assert.Equal(t, 1, f.civ.StorageFetches(1001))
	assert.Equal(t, 0, f.civ.StorageFetches(1002), "civitai:<id> must not fetch the other files")

	// civitai:<id>/all fills the rest; the primary is not fetched again.
	out, err = f.g.cli(t, "", "prefetch", "civitai:100/all")
	require.NoError(t, err, out)
	assert.Equal(t, 1, f.civ.StorageFetches(1001))
	assert.Equal(t, 1, f.civ.StorageFetches(1002))

	// A worker downloads each file from the downloadUrl the version's
	// metadata gives (what tools and catalogs use), and from the bare
	// version URL (the primary): all from the cache.
	resp, body := f.g.mustDo(t, http.MethodGet, "/api/v1/model-versions/100", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	var v struct {
		Files []struct {
			Name        string `json:"name"`
			DownloadURL string `json:"downloadUrl"`
		} `json:"files"`
	}
	require.NoError(t, json.Unmarshal(body, &v))
	want := map[string][]byte{"dreamy-xl.safetensors": f.checkpt, "dreamy-xl.vae.safetensors": f.vae}
	require.Len(t, v.Files, len(want))
	paths := map[string][]byte{"/api/download/models/100": f.checkpt}
	for _, file := range v.Files {
		require.True(t, strings.HasPrefix(file.DownloadURL, f.g.URL+"/api/download/models/100"), file.DownloadURL)
		paths[strings.TrimPrefix(file.DownloadURL, f.g.URL)] = want[file.Name]
	}
	for path, data := range paths {
		resp, body := f.g.mustDo(t, http.MethodGet, path, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		assert.True(t, bytes.Equal(data, body), "%s differs", path)
	}
	assert.Equal(t, 1, f.civ.StorageFetches(1001), "the primary must be served from the cache")
	assert.Equal(t, 1, f.civ.StorageFetches(1002), "the VAE must be served from the cache")

	out, err = f.g.cli(t, "", "ls", "--json", "civitai:100")
	require.NoError(t, err, out)
	var inv admin.Inventory
	require.NoError(t, json.Unmarshal([]byte(out), &inv))
	require.Len(t, inv.Repos, 1)
	assert.Equal(t, 2, inv.Repos[0].Cached)
	assert.Equal(t, int64(len(f.checkpt)+len(f.vae)), inv.Repos[0].Bytes)
	f.assertNoKeyLeaked(t)
}
