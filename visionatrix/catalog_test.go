package visionatrix

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/cache"
)

// catalogHost is a fake catalog site on loopback TLS; body and status can
// change between requests.
type catalogHost struct {
	srv    *httptest.Server
	body   atomic.Value // string
	status atomic.Int32
	hits   atomic.Int32
}

func newCatalogHost(t *testing.T) *catalogHost {
	c := &catalogHost{}
	c.body.Store(`{"m": {"url": "https://huggingface.co/org/m/resolve/main/m.bin", "hash": "x"}}`)
	c.status.Store(http.StatusOK)
	c.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.hits.Add(1)
		if r.URL.Path != "/VixFlowsDocs/models_catalog.json" {
			http.NotFound(w, r)
			return
		}
		assert.Empty(t, r.Header.Get("Authorization"))
		w.WriteHeader(int(c.status.Load()))
		io.WriteString(w, c.body.Load().(string))
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func newTestHandler(t *testing.T, host *catalogHost, ttl time.Duration) *Handler {
	idx, err := cache.OpenIndex(t.TempDir(), nil)
	require.NoError(t, err)
	t.Cleanup(func() { idx.Close() })
	base, _ := url.Parse(host.srv.URL + "/VixFlowsDocs") // no trailing slash: added
	return New(Options{
		CatalogURL:   base,
		TTL:          ttl,
		LastKnownTTL: time.Hour,
		Origins:      testOrigins,
		Upstream:     authinject.New(host.srv.Client().Transport),
		Index:        idx,
	})
}

func get(h http.Handler, path, host string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.Host = host
	h.ServeHTTP(rec, req)
	return rec
}

func TestCatalogIsCachedForItsTTLAndServedStaleWhenTheHostIsDown(t *testing.T) {
	host := newCatalogHost(t)
	// badger expires entries by the second.
	h := newTestHandler(t, host, 2*time.Second)

	rec := get(h, "/visionatrix/models_catalog.json", "gate:8080")
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	assert.Equal(t, `{"m": {"url": "http://gate:8080/org/m/resolve/main/m.bin", "hash": "x"}}`, rec.Body.String())
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))

	// Within the TTL: from the index, rewritten for whoever asks.
	rec = get(h, "/visionatrix/models_catalog.json", "10.0.0.5:8080")
	assert.Equal(t, `{"m": {"url": "http://10.0.0.5:8080/org/m/resolve/main/m.bin", "hash": "x"}}`, rec.Body.String())
	assert.Equal(t, int32(1), host.hits.Load())

	// After it: fetched again, and a new catalog is served.
	host.body.Store(`{"n": {"url": "https://civitai.com/api/download/models/7"}}`)
	require.Eventually(t, func() bool {
		return get(h, "/visionatrix/models_catalog.json", "gate").Body.String() == `{"n": {"url": "http://gate/api/download/models/7"}}`
	}, 5*time.Second, 20*time.Millisecond)

	// The host fails: the last good copy, marked stale.
	host.status.Store(http.StatusServiceUnavailable)
	require.Eventually(t, func() bool {
		rec := get(h, "/visionatrix/models_catalog.json", "gate")
		return rec.Header().Get("Warning") != "" && rec.Code == http.StatusOK &&
			rec.Body.String() == `{"n": {"url": "http://gate/api/download/models/7"}}`
	}, 5*time.Second, 20*time.Millisecond)

	// The host is gone altogether: still the last copy.
	host.srv.Close()
	rec = get(h, "/visionatrix/models_catalog.json", "gate")
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.NotEmpty(t, rec.Header().Get("Warning"))
}

func TestCatalogErrors(t *testing.T) {
	host := newCatalogHost(t)
	h := newTestHandler(t, host, time.Hour)

	// A name the host does not have is its 404, not a stale copy.
	rec := get(h, "/visionatrix/models_catalog-9.9.json", "gate")
	assert.Equal(t, http.StatusNotFound, rec.Code)

	for _, path := range []string{"/visionatrix/", "/visionatrix/../x.json", "/visionatrix/a/b.json", "/visionatrix/x.txt", "/visionatrix/.json"} {
		rec := get(h, path, "gate")
		assert.Equal(t, http.StatusBadRequest, rec.Code, path)
	}
	assert.Equal(t, http.StatusBadRequest, get(h, "/visionatrix/models_catalog.json", `gate/"x`).Code)
	assert.Equal(t, int32(1), host.hits.Load(), "refused names never reach the host")

	// Not JSON: a 502, and nothing is kept.
	host.body.Store(`<html>rate limited</html>`)
	rec = get(h, "/visionatrix/models_catalog.json", "gate")
	assert.Equal(t, http.StatusBadGateway, rec.Code)
	host.body.Store(`{"ok": {"url": "https://hf.co/a/b/resolve/main/c"}}`)
	rec = get(h, "/visionatrix/models_catalog.json", "gate")
	assert.Equal(t, `{"ok": {"url": "http://gate/a/b/resolve/main/c"}}`, rec.Body.String())
}
