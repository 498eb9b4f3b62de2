package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakecivitai"
	"github.com/modelgate/modelgate/internal/fakehub"
)

// vixFixture is a gateway in front of a fake Hub, a fake CivitAI and a
// fake catalog host (loopback TLS, like GitHub Pages) whose
// models_catalog.json names a gated Hub file and a CivitAI file that
// needs the operator's key.
type vixFixture struct {
	*civitaiFixture
	catalog     *httptest.Server
	catalogDoc  string // as the catalog host serves it
	gated       []byte // org/gated model.safetensors
	key, other  string // worker keys
	catalogHits int
	mu          sync.Mutex
}

func newVixFixture(t *testing.T, requireKey config.RequireKey) *vixFixture {
	t.Helper()
	f := &vixFixture{gated: fakehub.RandomData(21, 3<<20+17)}
	var keySHA, otherSHA string
	var err error
	f.key, keySHA, err = clientauth.Generate()
	require.NoError(t, err)
	f.other, otherSHA, err = clientauth.Generate()
	require.NoError(t, err)
	f.catalog = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.catalogHits++
		doc := f.catalogDoc
		f.mu.Unlock()
		if r.URL.Path != "/VixFlowsDocs/models_catalog.json" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, doc)
	}))
	t.Cleanup(f.catalog.Close)
	f.civitaiFixture = newCivitAIFixture(t, func(c *config.Config) {
		c.Visionatrix.CatalogURL = f.catalog.URL + "/VixFlowsDocs/"
		// The catalog host's certificate joins the upstream roots.
		roots, err := os.ReadFile(c.Upstream.CAFile)
		require.NoError(t, err)
		roots = append(roots, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.catalog.Certificate().Raw})...)
		caFile := filepath.Join(t.TempDir(), "roots.pem")
		require.NoError(t, os.WriteFile(caFile, roots, 0o600))
		c.Upstream.CAFile = caFile
		c.Clients.RequireKey = requireKey
		c.Clients.Keys = []config.ClientKey{{Name: "vix-worker", KeySHA256: keySHA}, {Name: "other", KeySHA256: otherSHA}}
	})
	commit := fakehub.Commit("vix")
	f.hub.AddRepo(fakehub.Repo{ID: "org/gated", Gated: true, Refs: map[string]string{"main": commit},
		Commits: map[string][]fakehub.File{commit: {{Path: "model.safetensors", Data: f.gated, LFS: true}}}})
	// As Visionatrix publishes it: CivitAI hashes upper-case, a homepage
	// on the Hub that is no download, two-space indents.
	f.catalogDoc = fmt.Sprintf(`{
  "Gated Hub model": {
    "url": "%[1]s/org/gated/resolve/main/model.safetensors",
    "homepage": "%[1]s/org/gated",
    "hash": "%[2]s",
    "file_size": %[3]d,
    "types": ["checkpoints"],
    "gated": true
  },
  "CivitAI checkpoint": {
    "url": "%[4]s/api/download/models/100?type=Model&format=SafeTensor",
    "hash": "%[5]s",
    "file_size": %[6]d,
    "types": ["checkpoints"],
    "filename": "dreamy-xl.safetensors"
  }
}
`, f.hub.URL(), fakehub.SHA256Hex(f.gated), len(f.gated), f.civ.URL(), fakecivitai.SHA256Upper(f.checkpt), len(f.checkpt))
	// The worker receives its own key in the catalog's URLs; any other
	// secret in what it receives is a leak.
	f.g.Received = newLeakScanner(operatorToken, civitaiKey, f.other)
	return f
}

// catalogEntry is the part of a catalog entry the downloader reads.
type catalogEntry struct {
	URL  string `json:"url"`
	Hash string `json:"hash"`
}

// vixDownloader downloads the way Visionatrix's models.py does with httpx:
// GET with redirects followed, never HEAD, Range: bytes=N- to resume an
// existing partial file (a 200 to it restarts from scratch, a 416
// restarts), the total from Content-Range or a non-zero Content-Length,
// the X-Linked-ETag (of the first redirect having one, else the final
// answer's) or ETag compared with the catalog hash unless the URL is on
// civitai.com, and the file's sha256 checked at the end.
type vixDownloader struct {
	client *http.Client // follows redirects
	// history records every answer of the request in flight, redirects
	// first (httpx's response.history).
	history []http.Header
}

func newVixDownloader(g *gatewayUnderTest) *vixDownloader {
	d := &vixDownloader{}
	d.client = &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := (&recordingTransport{rt: http.DefaultTransport, sink: g.Received}).RoundTrip(r)
		if err == nil {
			d.history = append(d.history, resp.Header)
		}
		return resp, err
	})}
	return d
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

var errCut = errors.New("connection cut")

// download fetches m into dest; with cutAt > 0 it drops the connection
// after that many bytes of this attempt, leaving a partial file.
func (d *vixDownloader) download(m catalogEntry, dest string, cutAt int64) error {
	hash := strings.ToLower(m.Hash)
	for restarts := 0; restarts < 3; restarts++ {
		var have int64
		if fi, err := os.Stat(dest); err == nil {
			have = fi.Size()
		}
		req, err := http.NewRequest(http.MethodGet, m.URL, nil)
		if err != nil {
			return err
		}
		if have > 0 {
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-", have))
		}
		d.history = nil
		resp, err := d.client.Do(req)
		if err != nil {
			return err
		}
		restart := resp.StatusCode == http.StatusRequestedRangeNotSatisfiable ||
			have > 0 && resp.StatusCode == http.StatusNotFound ||
			have > 0 && resp.StatusCode == http.StatusOK
		if restart {
			resp.Body.Close()
			os.Remove(dest)
			continue
		}
		if resp.StatusCode >= 400 {
			resp.Body.Close()
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		var total int64
		if resp.StatusCode == http.StatusPartialContent {
			cr := resp.Header.Get("Content-Range")
			if cr == "" {
				resp.Body.Close()
				return errors.New("206 without Content-Range")
			}
			total, _ = strconv.ParseInt(cr[strings.LastIndexByte(cr, '/')+1:], 10, 64)
		} else {
			total, _ = strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64)
		}
		if total == 0 {
			resp.Body.Close()
			return errors.New("received empty response")
		}
		etag := ""
		for _, h := range d.history[:len(d.history)-1] {
			if etag = h.Get("X-Linked-ETag"); etag != "" {
				break
			}
		}
		if etag == "" {
			etag = resp.Header.Get("X-Linked-ETag")
		}
		if etag == "" {
			etag = resp.Header.Get("ETag")
		}
		etag = strings.ToLower(strings.Trim(etag, `"`))
		if etag != hash && !strings.Contains(m.URL, "civitai.com/") {
			resp.Body.Close()
			return fmt.Errorf("hash mismatch: %s != %s", etag, hash)
		}
		out, err := os.OpenFile(dest, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			resp.Body.Close()
			return err
		}
		body := io.Reader(resp.Body)
		if cutAt > 0 {
			body = io.LimitReader(resp.Body, cutAt)
		}
		_, err = io.Copy(out, body)
		out.Close()
		resp.Body.Close()
		if err != nil {
			return err
		}
		if cutAt > 0 {
			return errCut
		}
		b, err := os.ReadFile(dest)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != hash {
			os.Remove(dest)
			return errors.New("downloaded file hash does not match the expected hash")
		}
		return nil
	}
	return errors.New("failed to download model after retries")
}

// readCatalog is what Visionatrix does with MODELS_CATALOG_URL ending in
// "/": it appends models_catalog.json and reads it.
func (f *vixFixture) readCatalog(t *testing.T, catalogURL string) (int, string) {
	t.Helper()
	require.True(t, strings.HasSuffix(catalogURL, "/"))
	resp, err := f.g.Client.Get(catalogURL + "models_catalog.json")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// installAll downloads every catalog model as Visionatrix would, each cut
// once half-way and resumed.
func (f *vixFixture) installAll(t *testing.T, doc string) map[string][]byte {
	t.Helper()
	var catalog map[string]catalogEntry
	require.NoError(t, json.Unmarshal([]byte(doc), &catalog))
	require.Len(t, catalog, 2)
	d := newVixDownloader(f.g)
	got := map[string][]byte{}
	for name, m := range catalog {
		dest := filepath.Join(t.TempDir(), "model")
		require.ErrorIs(t, d.download(m, dest, 1<<20), errCut, name)
		require.NoError(t, d.download(m, dest, 0), name)
		got[name], _ = os.ReadFile(dest)
	}
	return got
}

func TestVisionatrixInstallsCatalogModelsThroughTheGatewayWithoutTokenOrCA(t *testing.T) {
	f := newVixFixture(t, "false")
	status, doc := f.readCatalog(t, f.g.URL+"/visionatrix/")
	require.Equal(t, http.StatusOK, status, doc)

	// Only the two download URLs changed, byte for byte.
	want := strings.NewReplacer(
		f.hub.URL()+"/org/gated/resolve/", f.g.URL+"/org/gated/resolve/",
		f.civ.URL()+"/api/download/", f.g.URL+"/api/download/",
	).Replace(f.catalogDoc)
	assert.Equal(t, want, doc)
	assert.Contains(t, doc, `"homepage": "`+f.hub.URL()+`/org/gated"`, "not a download: left alone")

	got := f.installAll(t, doc)
	assert.Equal(t, f.gated, got["Gated Hub model"])
	assert.Equal(t, f.checkpt, got["CivitAI checkpoint"])
	// The gated file came with the operator's token, which the worker
	// never held.
	assert.Contains(t, hubAuthHeaders(f.hub), "Bearer "+operatorToken)

	// A second worker: the catalog and both files from the cache.
	hits := f.catalogHits
	_, doc2 := f.readCatalog(t, f.g.URL+"/visionatrix/")
	assert.Equal(t, doc, doc2)
	assert.Equal(t, hits, f.catalogHits, "the catalog is cached for visionatrix.catalog_ttl")
	before := f.g.metric(t, `modelgate_requests_total{result="hit",route="resolve"}`)
	f.installAll(t, doc)
	assert.Greater(t, f.g.metric(t, `modelgate_requests_total{result="hit",route="resolve"}`), before)
	f.assertNoKeyLeaked(t)
}

func TestVisionatrixWorkerKeyInTheCatalogPath(t *testing.T) {
	f := newVixFixture(t, "all")

	// No key: no catalog, no file.
	status, _ := f.readCatalog(t, f.g.URL+"/visionatrix/")
	assert.Equal(t, http.StatusUnauthorized, status)
	for _, bad := range []string{clientauth.Prefix + "0000000000000000", "hf_notAWorkerKey0000"} {
		status, _ = f.readCatalog(t, f.g.URL+"/visionatrix/key/"+bad+"/")
		assert.Equal(t, http.StatusUnauthorized, status, bad)
	}

	base := f.g.URL + "/visionatrix/key/" + f.key + "/"
	status, doc := f.readCatalog(t, base)
	require.Equal(t, http.StatusOK, status, doc)
	want := strings.NewReplacer(
		f.hub.URL()+"/org/gated/resolve/", f.g.URL+"/visionatrix/key/"+f.key+"/org/gated/resolve/",
		f.civ.URL()+"/api/download/", f.g.URL+"/visionatrix/key/"+f.key+"/api/download/",
	).Replace(f.catalogDoc)
	assert.Equal(t, want, doc)

	got := f.installAll(t, doc)
	assert.Equal(t, f.gated, got["Gated Hub model"])
	assert.Equal(t, f.checkpt, got["CivitAI checkpoint"])
	// Downloads under the prefix count as the key's: logged with its name,
	// never with the key.
	assert.Contains(t, f.g.Logs.String(), "worker=vix-worker")
	assertNoLeak(t, "logs", []byte(f.g.Logs.String()), f.key, f.other)
	assertNoLeak(t, "hub traffic", []byte(strings.Join(hubAuthHeaders(f.hub), "\n")), f.key)
	for _, r := range append(f.hub.Requests(), fakehubRequests(f.civ)...) {
		assert.NotContains(t, r.RequestURI, f.key, "a worker key never goes upstream")
	}

	// The same file without the prefix is refused: the prefix is the key.
	resp, _ := f.g.mustDo(t, http.MethodGet, "/org/gated/resolve/main/model.safetensors", nil)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	f.assertNoKeyLeaked(t)
}

// fakehubRequests lists a fake CivitAI's requests in the fake Hub's form.
func fakehubRequests(civ *fakecivitai.CivitAI) []fakehub.Request {
	var out []fakehub.Request
	for _, r := range civ.Requests() {
		out = append(out, fakehub.Request{Server: r.Server, Method: r.Method, Host: r.Host, RequestURI: r.RequestURI, Header: r.Header})
	}
	return out
}
