package main

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakecivitai"
	"github.com/modelgate/modelgate/internal/fakehub"
)

// An offline gateway whose index still knows a file but whose blob is gone
// (evicted, or removed by hand) has nothing to fill from: it must say so at
// once, not after the fill's retries.
func TestOfflineWithIndexedMetadataAndAMissingBlobAnswers504WithoutRetrying(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	online := startGateway(t, tr.hub, nil)
	resp, _ := online.mustDo(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	online.Stop()
	sha := fakehub.SHA256Hex(tr.big)
	blob := filepath.Join(online.DataDir, "blobs", "sha256", sha[:2], sha)
	require.NoError(t, os.Chmod(filepath.Dir(blob), 0o700))
	require.NoError(t, os.Remove(blob))

	before := len(tr.hub.Requests())
	offline := startGateway(t, tr.hub, func(c *config.Config) {
		c.DataDir = online.DataDir
		c.Offline = true
	})
	resp, body := offline.mustDo(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
	assert.Equal(t, http.StatusGatewayTimeout, resp.StatusCode, string(body))
	assert.Contains(t, string(body), "offline")
	assert.Equal(t, 0.0, offline.metric(t, "modelgate_fill_resumes_total"), "an offline refusal is permanent")
	assert.Equal(t, before, len(tr.hub.Requests()))
}

// huggingface_hub retries a 5xx, @huggingface/hub does not: the gateway
// retries a transient failure of a metadata call itself.
func TestAHubAnswering503TwiceStillGivesTheFileToAWorkerThatDoesNotRetry(t *testing.T) {
	tr := newTestHub(t, 1<<20)
	g := startGateway(t, tr.hub, nil)
	for _, path := range []string{"/org/model/resolve/main/model.safetensors", "/api/models/org/model/tree/main"} {
		tr.hub.FailHub(http.StatusServiceUnavailable, 2)
		resp, body := g.mustDo(t, http.MethodGet, path, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", path, body)
	}
	resp, body := g.mustDo(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, bytes.Equal(tr.big, body))

	// A Hub that stays down is still a 504, after a bounded number of tries.
	tr.hub.FailHub(http.StatusServiceUnavailable, 100)
	before := tr.hub.Count("hub", "", "/")
	resp, _ = g.mustDo(t, http.MethodGet, "/org/model/resolve/main/config.json", nil)
	assert.Equal(t, http.StatusGatewayTimeout, resp.StatusCode)
	assert.Equal(t, before+3, tr.hub.Count("hub", "", "/"), "three attempts, no more")
}

func TestCivitAIMetadataIsRetriedAndFallsBackToTheLastKnownAnswer(t *testing.T) {
	f := newCivitAIFixture(t, func(c *config.Config) {
		c.CivitAI.MetadataTTL = config.Duration{} // every request asks CivitAI
	})
	const path = "/api/v1/model-versions/200"
	resp, fresh := f.g.mustDo(t, http.MethodGet, path, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(fresh))

	f.civ.FailAPI(http.StatusServiceUnavailable, 2)
	resp, body := f.g.mustDo(t, http.MethodGet, path, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "a failure twice is retried: %s", body)
	assert.Empty(t, resp.Header.Get("Warning"))

	f.civ.FailAPI(http.StatusServiceUnavailable, 100)
	resp, body = f.g.mustDo(t, http.MethodGet, path, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "CivitAI down: the last known answer: %s", body)
	assert.Equal(t, fresh, body)
	assert.Contains(t, resp.Header.Get("Warning"), "Stale")
	assert.Equal(t, 1.0, f.g.metric(t, `modelgate_stale_answers_total{kind="api"}`))

	// A download whose metadata CivitAI no longer answers still resolves
	// from the last mapping (the operator's pinned models keep working).
	f.civ.FailAPI(0, 0)
	resp, body = f.g.mustDo(t, http.MethodGet, "/api/download/models/200", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.True(t, bytes.Equal(f.lora, body))
	f.assertNoKeyLeaked(t)
}

// A site gateway whose upstream endpoints are a regional modelgate: the
// parent holds the credentials and fetches each file once; the child holds
// none and serves its workers from its own cache.
func TestChainedGatewaysServeGatedFilesForBothHubs(t *testing.T) {
	parent := newCivitAIFixture(t, nil)
	tr := newTestHub(t, 1<<20)
	// The parent serves the fixture's CivitAI and this test's Hub.
	parent.g.Stop()
	parent.g = startGateway(t, tr.hub, func(c *config.Config) {
		c.CivitAI.Endpoint = config.MustEndpoint(parent.civ.URL())
		c.CivitAI.APIKey = civitaiKey
		c.Upstream.CAFile = mergedCA(t, tr.hub.CAFile(), parent.civ.CAFile())
		c.Upstream.PrivateHosts = append(c.Upstream.PrivateHosts, hostPort(parent.civ.R2URL()), hostPort(parent.civ.B2URL()))
	})
	child := startGateway(t, tr.hub, func(c *config.Config) {
		// The parent is on loopback: reachable because it is the
		// configured endpoint, with no private_hosts entry of its own.
		c.HuggingFace.Endpoint = config.MustEndpoint(parent.g.URL)
		c.HuggingFace.Token = ""
		c.CivitAI.Endpoint = config.MustEndpoint(parent.g.URL)
		c.CivitAI.APIKey = ""
		c.Upstream.PrivateHosts = nil
	})

	for range 2 {
		resp, body := child.mustDo(t, http.MethodGet, "/org/gated/resolve/main/weights.bin", nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		require.True(t, bytes.Equal(tr.gatedBin, body))
		assert.Equal(t, `"`+fakehub.SHA256Hex(tr.gatedBin)+`"`, resp.Header.Get("ETag"))

		resp, body = child.mustDo(t, http.MethodGet, "/api/download/models/100?type=Model&format=SafeTensor", nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		require.True(t, bytes.Equal(parent.checkpt, body))
		assert.Equal(t, `"`+strings.ToLower(fakecivitai.SHA256Upper(parent.checkpt))+`"`, resp.Header.Get("ETag"))
		assert.Contains(t, resp.Header.Get("Content-Disposition"), "dreamy-xl.safetensors")
	}
	assert.Equal(t, 1, tr.hub.CDNBodyFetches(fakehub.SHA256Hex(tr.gatedBin)), "one fetch from the Hub's CDN")
	assert.Equal(t, 1, parent.civ.StorageFetches(1001), "one fetch from CivitAI's storage")
	assert.True(t, child.hasBlob(t, fakehub.SHA256Hex(tr.gatedBin)))
	assert.True(t, parent.g.hasBlob(t, fakehub.SHA256Hex(tr.gatedBin)))
	for _, auth := range hubAuthHeaders(tr.hub) {
		assert.Equal(t, "Bearer "+operatorToken, auth, "only the parent asks the Hub")
	}
	// Both gateways' logs, metrics and what their clients received are
	// searched when they stop; the storage hosts saw no credential.
	assertNoLeak(t, "storage traffic", parent.storageTraffic(), civitaiKey, civitaiWorkerKey, operatorToken)
	leaks, scanned := child.Received.Leaks()
	assert.Empty(t, leaks)
	assert.Positive(t, scanned)
}

// mergedCA writes the PEM files into one and returns its path.
func mergedCA(t *testing.T, files ...string) string {
	t.Helper()
	var all []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		all = append(all, b...)
	}
	p := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(p, all, 0o600))
	return p
}
