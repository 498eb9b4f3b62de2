package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
)

// parentProxy stands in for upstream.proxy so that nothing the gateway
// relays to a public host name leaves the machine: CONNECTs to loopback
// (the fakes) are tunnelled, every other CONNECT is refused, and
// absolute-form requests are answered here and recorded.
type parentProxy struct {
	URL  string
	mu   sync.Mutex
	seen []string // "METHOD URL Authorization=<value>"
}

func newParentProxy(t *testing.T) *parentProxy {
	t.Helper()
	p := &parentProxy{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			p.record(r.Method + " " + r.URL.String() + " Authorization=" + r.Header.Get("Authorization"))
			io.WriteString(w, "answered by the parent proxy\n")
			return
		}
		host, _, _ := net.SplitHostPort(r.Host)
		if host != "127.0.0.1" {
			p.record("CONNECT " + r.Host)
			http.Error(w, "no internet in tests", http.StatusForbidden)
			return
		}
		up, err := net.DialTimeout("tcp", r.Host, 5*time.Second)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			up.Close()
			return
		}
		io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n")
		go func() { io.Copy(up, buf); up.Close() }()
		go func() { io.Copy(conn, up); conn.Close() }()
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

func (p *parentProxy) record(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen = append(p.seen, s)
}

func (p *parentProxy) Seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.seen...)
}

// securityFixture is a gateway (require_key as given) in front of a fake
// Hub and CivitAI, with a parent proxy that keeps relays off the network,
// and three worker keys: render (org/*), hfOnly (Hugging Face only) and
// oldOnly (old-org/*).
type securityFixture struct {
	*civitaiFixture
	parent                  *parentProxy
	render, hfOnly, oldOnly string
	gated, public           []byte
}

func newSecurityFixture(t *testing.T, edit func(*config.Config)) *securityFixture {
	t.Helper()
	f := &securityFixture{parent: newParentProxy(t), gated: fakehub.RandomData(40, 300<<10), public: fakehub.RandomData(41, 200<<10)}
	var renderSHA, hfOnlySHA, oldOnlySHA string
	var err error
	f.render, renderSHA, err = clientauth.Generate()
	require.NoError(t, err)
	f.hfOnly, hfOnlySHA, err = clientauth.Generate()
	require.NoError(t, err)
	f.oldOnly, oldOnlySHA, err = clientauth.Generate()
	require.NoError(t, err)
	f.civitaiFixture = newCivitAIFixture(t, func(c *config.Config) {
		c.Upstream.Proxy = f.parent.URL
		c.Clients.Keys = []config.ClientKey{
			{Name: "render", KeySHA256: renderSHA, Repos: []string{"org/*"}},
			{Name: "hf-only", KeySHA256: hfOnlySHA, Scopes: []string{"huggingface"}},
			{Name: "old-only", KeySHA256: oldOnlySHA, Repos: []string{"old-org/*"}},
		}
		if edit != nil {
			edit(c)
		}
	})
	commit := fakehub.Commit("security")
	f.hub.AddRepo(fakehub.Repo{ID: "org/gated", Gated: true, Refs: map[string]string{"main": commit},
		Commits: map[string][]fakehub.File{commit: {{Path: "weights.bin", Data: f.gated, LFS: true}}}})
	f.hub.AddRepo(fakehub.Repo{ID: "org/public", Refs: map[string]string{"main": commit},
		Commits: map[string][]fakehub.File{commit: {{Path: "weights.bin", Data: f.public, LFS: true}, {Path: "config.json", Data: []byte(`{"a":1}`)}}}})
	f.g.Received = newLeakScanner(operatorToken, workerToken, civitaiKey, f.render, f.hfOnly, f.oldOnly)
	return f
}

func bearer(k string) http.Header { return http.Header{"Authorization": {"Bearer " + k}} }

// cdnGet asks for a blob by its sha256 on a Hub CDN host through the
// gateway as proxy, with a made-up signature, as a hostile worker would
// (the sha256 of a gated file is public metadata).
func (f *securityFixture) cdnGet(t *testing.T, key, sha string, header http.Header) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "https://cdn-lfs.hf.co/repos/00/00/x/"+sha+"?Expires=1&Signature=x", nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	kf := &keyFixture{civitaiFixture: f.civitaiFixture}
	resp, err := kf.proxyClientWithKey(t, key).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// Issue 10 item 1: a blob is handed out by its sha256 on the CDN path only
// to a caller that may read a repo the gateway saw holding it, under that
// caller's own principal.
func TestCDNPathServesABlobOnlyToCallersThatMayReadARepoHoldingIt(t *testing.T) {
	f := newSecurityFixture(t, func(c *config.Config) { c.Clients.RequireKey = "gated" })
	gatedSHA, publicSHA := fakehub.SHA256Hex(f.gated), fakehub.SHA256Hex(f.public)

	// A key holder caches the gated file, another the CivitAI checkpoint.
	resp, _ := f.g.mustDo(t, http.MethodGet, "/org/gated/resolve/main/weights.bin", bearer(f.render))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = f.g.mustDo(t, http.MethodGet, "/api/download/models/100?token="+f.render, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.True(t, f.g.hasBlob(t, gatedSHA))
	require.True(t, f.g.hasBlob(t, fakehub.SHA256Hex(f.checkpt)))

	// A keyless worker (served anonymously in gated mode) asks for the
	// gated blob by digest: refused, whatever it knows.
	code, body := f.cdnGet(t, "", gatedSHA, nil)
	assert.NotEqual(t, http.StatusOK, code)
	assert.False(t, bytes.Equal(f.gated, body), "a keyless worker got gated weights by digest")

	// A key scoped to Hugging Face asks for the CivitAI file by digest.
	code, body = f.cdnGet(t, f.hfOnly, fakehub.SHA256Hex(f.checkpt), nil)
	assert.NotEqual(t, http.StatusOK, code)
	assert.False(t, bytes.Equal(f.checkpt, body), "a huggingface-only key got a CivitAI file by digest")

	// A key limited to old-org/* asks for org/gated's blob.
	code, body = f.cdnGet(t, f.oldOnly, gatedSHA, nil)
	assert.NotEqual(t, http.StatusOK, code)
	assert.False(t, bytes.Equal(f.gated, body))

	// Nothing refused here reached anything but the parent proxy's refusal.
	for _, s := range f.parent.Seen() {
		assert.Equal(t, "CONNECT cdn-lfs.hf.co:443", s)
	}

	// Callers who may read a repo that holds the blob still get it from
	// the cache by digest: a key that may read org/gated ...
	fetches := f.hub.CDNBodyFetches(gatedSHA)
	code, body = f.cdnGet(t, f.hfOnly, gatedSHA, nil)
	assert.Equal(t, http.StatusOK, code)
	assert.True(t, bytes.Equal(f.gated, body))
	// ... and a keyless worker, for a public file it fetched anonymously.
	resp, _ = f.g.mustDo(t, http.MethodGet, "/org/public/resolve/main/weights.bin", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	code, body = f.cdnGet(t, "", publicSHA, nil)
	assert.Equal(t, http.StatusOK, code)
	assert.True(t, bytes.Equal(f.public, body))
	assert.Equal(t, fetches, f.hub.CDNBodyFetches(gatedSHA), "served from the cache")
}

// Issue 10 item 1, own_credentials: pass: a worker whose own token the Hub
// refuses does not get the file by digest either.
func TestCDNPathChecksAWorkersOwnCredentialInPassMode(t *testing.T) {
	f := newSecurityFixture(t, func(c *config.Config) { c.Clients.OwnCredentials = "pass" })
	gatedSHA := fakehub.SHA256Hex(f.gated)
	// Cached with the gateway's token by a worker without one of its own.
	resp, _ := f.g.mustDo(t, http.MethodGet, "/org/gated/resolve/main/weights.bin", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	// The Hub refuses this worker's own token for the gated repo ...
	resp, _ = f.g.mustDo(t, http.MethodGet, "/org/gated/resolve/main/weights.bin", bearer(workerToken))
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	// ... so the CDN path does not hand it the blob.
	code, body := f.cdnGet(t, "", gatedSHA, bearer(workerToken))
	assert.NotEqual(t, http.StatusOK, code)
	assert.False(t, bytes.Equal(f.gated, body), "a refused token got gated weights by digest")
	for _, s := range f.parent.Seen() {
		assert.NotContains(t, s, operatorToken)
	}
}

// Issue 10 item 2: a renamed repo's old name does not get around
// huggingface.repos.deny or a key's repo patterns, and what the gateway
// learns through the old name is kept under the new one.
func TestRenamedRepoOldNameDoesNotBypassRepoPolicy(t *testing.T) {
	f := newSecurityFixture(t, func(c *config.Config) { c.HuggingFace.Repos.Deny = []string{"org/gated"} })
	f.hub.AddRename("old-org/gated", "org/gated")
	f.hub.AddRename("old-org/public", "org/public")

	for _, path := range []string{
		"/old-org/gated/resolve/main/weights.bin",
		"/api/models/old-org/gated",
		"/api/models/old-org/gated/revision/main",
		"/api/models/old-org/gated/tree/main",
	} {
		resp, body := f.g.mustDo(t, http.MethodGet, path, nil)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, path)
		assert.NotContains(t, string(body), "weights.bin", path)
	}
	assert.False(t, f.g.hasBlob(t, fakehub.SHA256Hex(f.gated)))

	// A key limited to old-org/* cannot reach org/public through its old
	// name, neither upstream nor from what another key's request cached.
	resp, _ := f.g.mustDo(t, http.MethodGet, "/old-org/public/resolve/main/config.json", bearer(f.oldOnly))
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	resp, _ = f.g.mustDo(t, http.MethodGet, "/old-org/public/resolve/main/config.json", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "a worker without limits follows the rename")
	resp, _ = f.g.mustDo(t, http.MethodGet, "/old-org/public/resolve/main/config.json", bearer(f.oldOnly))
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	resp, _ = f.g.mustDo(t, http.MethodGet, "/api/models/old-org/public/tree/main", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = f.g.mustDo(t, http.MethodGet, "/api/models/old-org/public/tree/main", bearer(f.oldOnly))
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)

	// What was learned through the alias is kept under the canonical id:
	// the canonical name is answered from the index.
	before := len(f.hub.Requests())
	resp, _ = f.g.mustDo(t, http.MethodGet, "/org/public/resolve/"+fakehub.Commit("security")+"/config.json", bearer(f.render))
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = f.g.mustDo(t, http.MethodGet, "/api/models/org/public/tree/main", bearer(f.render))
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, before, len(f.hub.Requests()), "answered from what the alias taught")
}

// Issue 10 item 3: the operator's token is lent only to the repository
// reads clients make; account-level routes and Xet write tokens are
// refused before any upstream request. A Xet read token is the gateway's
// own (issue 14), never an upstream one.
func TestOnlyAllowListedAPIRoutesAreForwarded(t *testing.T) {
	f := newSecurityFixture(t, nil)
	for _, tt := range []struct {
		path    string
		want    int
		message string
	}{
		{"/api/whoami-v2", http.StatusForbidden, "account"},
		{"/api/models?author=org", http.StatusForbidden, "account"},
		{"/api/settings/webhooks", http.StatusForbidden, "account"},
		{"/api/organizations/org/members", http.StatusForbidden, "account"},
		{"/api/models/org/public/xet-write-token/main", http.StatusForbidden, "Xet"},
		{"/api/models/org/public/discussions", http.StatusForbidden, "account"},
	} {
		before := len(f.hub.Requests())
		resp, body := f.g.mustDo(t, http.MethodGet, tt.path, nil)
		assert.Equal(t, tt.want, resp.StatusCode, tt.path)
		assert.Contains(t, string(body), tt.message, tt.path)
		assert.Equal(t, before, len(f.hub.Requests()), "refused before any upstream request: %s", tt.path)
	}
	// xet-read-token: the gateway's own token, with the gateway as casUrl,
	// issued without any upstream request; never an upstream Xet token.
	before := len(f.hub.Requests())
	resp, body := f.g.mustDo(t, http.MethodGet, "/api/models/org/public/xet-read-token/main", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	var tok struct {
		AccessToken string `json:"accessToken"`
		CasURL      string `json:"casUrl"`
		Exp         int64  `json:"exp"`
	}
	require.NoError(t, json.Unmarshal(body, &tok))
	assert.True(t, strings.HasPrefix(tok.AccessToken, "mgx1."), "a gateway-issued token")
	assert.Equal(t, f.g.URL+"/xet/cas", tok.CasURL)
	assert.Equal(t, tok.AccessToken, resp.Header.Get("X-Xet-Access-Token"))
	assert.Equal(t, tok.CasURL, resp.Header.Get("X-Xet-Cas-Url"))
	assert.Equal(t, before, len(f.hub.Requests()), "issued by the gateway alone")
	assert.Empty(t, f.hub.XetTokens(), "no upstream Xet token was even asked for")
	for _, secret := range append(f.hub.XetTokens(), operatorToken) {
		assert.NotContains(t, string(body), secret)
	}

	// Through the proxy too.
	kf := &keyFixture{civitaiFixture: f.civitaiFixture}
	resp, err := kf.proxyClientWithKey(t, "").Get("https://" + hubHost + "/api/whoami-v2")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)

	// The repository reads clients make still go upstream.
	for _, path := range []string{
		"/api/models/org/public",
		"/api/models/org/public/revision/main",
		"/api/models/org/public/tree/main",
		"/api/models/org/public/refs",
		"/api/models/org/public/commits/main",
		"/org/public/resolve/main/config.json",
	} {
		before := len(f.hub.Requests())
		resp, _ := f.g.mustDo(t, http.MethodGet, path, nil)
		assert.NotEqual(t, http.StatusForbidden, resp.StatusCode, path)
		assert.Greater(t, len(f.hub.Requests()), before, "forwarded: %s", path)
	}
}

// Issue 10 item 13: other hosts under the model domains (inference
// router, Inference API) keep the worker's own Authorization and never get
// the operator's; the CDN hosts still get none.
func TestOtherModelDomainHostsKeepTheWorkersOwnAuthorization(t *testing.T) {
	f := newSecurityFixture(t, nil)
	plain := func(rawURL string) string {
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(f.g.URL, "http://"), 5*time.Second)
		require.NoError(t, err)
		defer conn.Close()
		host := strings.SplitN(strings.TrimPrefix(rawURL, "http://"), "/", 2)[0]
		io.WriteString(conn, "GET "+rawURL+" HTTP/1.1\r\nHost: "+host+"\r\nAuthorization: Bearer "+workerToken+"\r\nConnection: close\r\n\r\n")
		line, err := bufio.NewReader(conn).ReadString('\n')
		require.NoError(t, err)
		return line
	}
	for _, u := range []string{"http://router.huggingface.co/v1/chat/completions", "http://api-inference.huggingface.co/models/org/public"} {
		assert.Contains(t, plain(u), " 200 ", u)
	}
	sha := strings.Repeat("ab", 32)
	assert.Contains(t, plain("http://cdn-lfs.hf.co/repos/00/00/x/"+sha), " 200 ")
	seen := f.parent.Seen()
	assert.Equal(t, []string{
		"GET http://router.huggingface.co/v1/chat/completions Authorization=Bearer " + workerToken,
		"GET http://api-inference.huggingface.co/models/org/public Authorization=Bearer " + workerToken,
		"GET http://cdn-lfs.hf.co/repos/00/00/x/" + sha + " Authorization=",
	}, seen)
}

// Issue 10 item 13: ".." segments on API routes are refused, not
// forwarded with the token.
func TestDotDotSegmentsOnAPIRoutesAreRefused(t *testing.T) {
	f := newSecurityFixture(t, nil)
	for _, path := range []string{
		"/api/models/org/public/refs/../../../whoami-v2",
		"/api/models/org/public/commits/%2e%2e/%2E%2E/x",
		"/api/models/org/public/../../settings/tokens",
		"/api/./whoami-v2",
	} {
		before := len(f.hub.Requests())
		req, err := http.NewRequest(http.MethodGet, f.g.URL+path, nil)
		require.NoError(t, err)
		resp, err := f.g.Client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode, path)
		assert.Equal(t, before, len(f.hub.Requests()), "nothing forwarded: %s", path)
	}
}
