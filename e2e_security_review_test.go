package main

import (
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
)

// Found by the end-of-session review: the catalog host is a third party,
// and its redirect onto the Hub was followed with the operator's token,
// handing a denied private repo's file to every worker as "the catalog".
func TestACatalogRedirectOntoTheHubCarriesNoCredential(t *testing.T) {
	var hubURL string
	cat := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, hubURL+"/org/secret/resolve/main/config.json", http.StatusFound)
	}))
	defer cat.Close()
	f := newCivitAIFixture(t, func(c *config.Config) {
		c.Visionatrix.CatalogURL = cat.URL + "/VixFlowsDocs/"
		roots, err := os.ReadFile(c.Upstream.CAFile)
		require.NoError(t, err)
		roots = append(roots, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cat.Certificate().Raw})...)
		caFile := filepath.Join(t.TempDir(), "roots.pem")
		require.NoError(t, os.WriteFile(caFile, roots, 0o600))
		c.Upstream.CAFile = caFile
		c.HuggingFace.Repos.Deny = []string{"org/secret"}
	})
	hubURL = f.hub.URL()
	commit := fakehub.Commit("s")
	f.hub.AddRepo(fakehub.Repo{ID: "org/secret", Private: true, Refs: map[string]string{"main": commit},
		Commits: map[string][]fakehub.File{commit: {{Path: "config.json", Data: []byte(`{"private_secret":"TOPSECRET-123"}`)}}}})

	resp, _ := f.g.mustDo(t, http.MethodGet, "/org/secret/resolve/main/config.json", nil)
	require.Equal(t, http.StatusForbidden, resp.StatusCode, "the repo is denied")
	resp, body := f.g.mustDo(t, http.MethodGet, "/visionatrix/models_catalog.json", nil)
	assert.NotContains(t, string(body), "TOPSECRET", "status %d", resp.StatusCode)
	for _, r := range f.hub.Requests() {
		if strings.HasPrefix(r.RequestURI, "/org/secret/") {
			assert.Empty(t, r.Header.Get("Authorization"), "the catalog fetch sent a credential to the Hub")
		}
	}
}

// Found by the same review: a key carried in the path
// (/visionatrix/key/mgw_…/) reached the keyless status page and the audit
// records, which saw the request as the worker sent it.
func TestAKeyInThePathReachesNeitherTheStatusPageNorTheAudit(t *testing.T) {
	f := newVixFixture(t, "all")
	base := f.g.URL + "/visionatrix/key/" + f.key + "/"
	status, doc := f.readCatalog(t, base)
	require.Equal(t, http.StatusOK, status, doc)
	f.installAll(t, doc)
	var audit, page string
	require.Eventually(t, func() bool {
		_, a := f.g.adminDo(t, http.MethodGet, "/admin/v1/audit", "", nil)
		_, p := f.g.adminDo(t, http.MethodGet, "/admin/ui/status.json", "", nil)
		audit, page = string(a), string(p)
		return strings.Contains(audit, "resolve") && strings.Contains(page, "civitai")
	}, 10*time.Second, 20*time.Millisecond)
	assert.NotContains(t, audit, f.key, "the worker key in the audit")
	assert.NotContains(t, page, f.key, "the worker key on the status page")
	assert.NotContains(t, page, "/visionatrix/key/", "the status page names the download, not the key path")
	_ = io.Discard
}
