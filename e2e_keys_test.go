package main

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
)

// keyFixture is a gateway with two worker keys, in front of a fake Hub
// and a fake CivitAI.
type keyFixture struct {
	*civitaiFixture
	render, hfOnly string // worker keys
}

func newKeyFixture(t *testing.T, requireKey config.RequireKey) *keyFixture {
	t.Helper()
	render, renderSHA, err := clientauth.Generate()
	require.NoError(t, err)
	hfOnly, hfOnlySHA, err := clientauth.Generate()
	require.NoError(t, err)
	kf := &keyFixture{render: render, hfOnly: hfOnly}
	kf.civitaiFixture = newCivitAIFixture(t, func(c *config.Config) {
		c.Clients.Keys = []config.ClientKey{
			{Name: "render", KeySHA256: renderSHA, Repos: []string{"org/*"}},
			{Name: "hf-only", KeySHA256: hfOnlySHA, Scopes: []string{"huggingface"}},
		}
		c.Clients.RequireKey = requireKey
	})
	commit := fakehub.Commit("keys")
	for _, id := range []string{"org/model", "other/model", "org/gated"} {
		kf.hub.AddRepo(fakehub.Repo{ID: id, Refs: map[string]string{"main": commit}, Gated: id == "org/gated",
			Commits: map[string][]fakehub.File{commit: {{Path: "config.json", Data: []byte(`{"id":"` + id + `"}`)}}}})
	}
	// The fixture's gateway searches for the keys too, in the same scanner
	// every client of it writes to.
	kf.g.addSecrets(render, hfOnly)
	return kf
}

// proxyClientWithKey is a proxy-mode client presenting key as
// HTTPS_PROXY=http://worker:KEY@gate does.
func (kf *keyFixture) proxyClientWithKey(t *testing.T, key string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(kf.g.caFile())
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	u, _ := url.Parse(kf.g.URL)
	if key != "" {
		u.User = url.UserPassword("worker", key)
	}
	return &http.Client{Transport: &recordingTransport{sink: kf.g.Received, rt: &http.Transport{
		Proxy: http.ProxyURL(u), TLSClientConfig: &tls.Config{RootCAs: pool}}}}
}

func TestWorkerKeysInBothModesForBothUpstreams(t *testing.T) {
	kf := newKeyFixture(t, "false")
	bearer := func(k string) http.Header { return http.Header{"Authorization": {"Bearer " + k}} }
	unknown := clientauth.Prefix + "0000000000000000000000000000000000000000"
	tests := []struct {
		name     string
		mode     string // mirror or proxy
		url      string // mirror: a path; proxy: an https URL
		header   http.Header
		key      string // proxy mode: the key in HTTPS_PROXY
		want     int
		upstream bool // whether an upstream request may happen
	}{
		{"mirror hf without key", "mirror", "/org/model/resolve/main/config.json", nil, "", 200, true},
		{"mirror hf with key", "mirror", "/org/model/resolve/main/config.json", bearer(kf.render), "", 200, true},
		{"mirror hf unknown key", "mirror", "/org/model/resolve/main/config.json", bearer(unknown), "", 401, false},
		{"mirror hf repo outside the key", "mirror", "/other/model/resolve/main/config.json", bearer(kf.render), "", 403, false},
		{"mirror hf api outside the key", "mirror", "/api/models/other/model", bearer(kf.render), "", 403, false},
		{"mirror civitai with ?token key", "mirror", "/api/download/models/200?token=" + kf.render, nil, "", 200, true},
		{"mirror civitai with bearer key", "mirror", "/api/v1/model-versions/200", bearer(kf.render), "", 200, true},
		{"mirror civitai key without scope", "mirror", "/api/download/models/200?token=" + kf.hfOnly, nil, "", 403, false},
		{"mirror civitai unknown key", "mirror", "/api/download/models/200?token=" + unknown, nil, "", 401, false},
		{"proxy hf with key", "proxy", "https://huggingface.co/org/model/resolve/main/config.json", nil, kf.hfOnly, 200, true},
		{"proxy hf repo outside the key", "proxy", "https://huggingface.co/other/model/resolve/main/config.json", nil, kf.render, 403, false},
		{"proxy civitai key without scope", "proxy", "https://civitai.com/api/download/models/200", nil, kf.hfOnly, 403, false},
		{"proxy civitai with key", "proxy", "https://civitai.com/api/download/models/200", nil, kf.render, 200, true},
		{"proxy unknown key", "proxy", "https://huggingface.co/org/model/resolve/main/config.json", nil, unknown, 407, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(kf.hub.Requests()) + len(kf.civ.Requests())
			var status int
			if tt.mode == "mirror" {
				resp, _ := kf.g.mustDo(t, http.MethodGet, tt.url, tt.header)
				status = resp.StatusCode
			} else {
				resp, err := kf.proxyClientWithKey(t, tt.key).Get(tt.url)
				if err != nil {
					// Go's client turns a 407 to its CONNECT into an error.
					require.Contains(t, err.Error(), "Proxy Authentication Required")
					status = http.StatusProxyAuthRequired
				} else {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
				}
			}
			assert.Equal(t, tt.want, status)
			if !tt.upstream {
				assert.Equal(t, before, len(kf.hub.Requests())+len(kf.civ.Requests()), "no upstream request")
			}
		})
	}
	// No worker key ever reached an upstream; the operator's credentials
	// went only to their own hosts.
	require.NotEmpty(t, kf.hub.Requests())
	require.NotEmpty(t, kf.civ.Requests())
	for _, r := range kf.hub.Requests() {
		assert.NotContains(t, r.Header.Get("Authorization")+r.RequestURI, clientauth.Prefix)
	}
	for _, r := range kf.civ.Requests() {
		assert.NotContains(t, r.Header.Get("Authorization")+r.RequestURI, clientauth.Prefix)
	}
	kf.assertNoKeyLeaked(t)
	assertNoLeak(t, "logs", []byte(kf.g.Logs.String()), kf.render, kf.hfOnly)
	assert.Contains(t, kf.g.Logs.String(), "worker=render")
}

func TestRequireKeyAllRefusesKeylessRequests(t *testing.T) {
	kf := newKeyFixture(t, "all")
	resp, body := kf.g.mustDo(t, http.MethodGet, "/org/model/resolve/main/config.json", nil)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.Contains(t, string(body), "worker key")
	resp, _ = kf.g.mustDo(t, http.MethodGet, "/healthz", nil)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = kf.g.mustDo(t, http.MethodGet, "/org/model/resolve/main/config.json", http.Header{"Authorization": {"Bearer " + kf.render}})
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	status := rawConnectWithHeader(t, kf.g, "huggingface.co:443", "")
	assert.Equal(t, "407", status)
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte("render:"+kf.render))
	assert.Equal(t, "200", rawConnectWithHeader(t, kf.g, "huggingface.co:443", auth))
}

// rawConnectWithHeader sends a CONNECT with an optional Proxy-Authorization.
func rawConnectWithHeader(t *testing.T, g *gatewayUnderTest, target, proxyAuth string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(g.URL, "http://"), 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	extra := ""
	if proxyAuth != "" {
		extra = "Proxy-Authorization: " + proxyAuth + "\r\n"
	}
	io.WriteString(conn, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n"+extra+"\r\n")
	buf := make([]byte, 64)
	n, _ := conn.Read(buf)
	fields := strings.Fields(string(buf[:n]))
	require.GreaterOrEqual(t, len(fields), 2)
	return fields[1]
}

// hubAuthSince returns the Authorization of each Hub request after before.
func hubAuthSince(kf *keyFixture, before int) []string {
	var out []string
	for _, r := range kf.hub.Requests()[before:] {
		if r.Server == "hub" {
			out = append(out, r.Header.Get("Authorization"))
		}
	}
	return out
}

func TestRequireKeyGatedServesKeylessWorkersAnonymously(t *testing.T) {
	kf := newKeyFixture(t, "gated")
	gated := "/org/gated/resolve/main/config.json"

	before := len(kf.hub.Requests())
	resp, _ := kf.g.mustDo(t, http.MethodGet, gated, nil)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.Equal(t, "GatedRepo", resp.Header.Get("X-Error-Code"))
	assert.Equal(t, []string{""}, hubAuthSince(kf, before), "asked anonymously")

	resp, _ = kf.g.mustDo(t, http.MethodGet, gated, http.Header{"Authorization": {"Bearer " + kf.render}})
	assert.Equal(t, http.StatusOK, resp.StatusCode, "a worker key gets the gateway's credential")

	// What the key's request cached does not open the door to keyless ones.
	resp, _ = kf.g.mustDo(t, http.MethodGet, gated, nil)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	before = len(kf.hub.Requests())
	resp, _ = kf.g.mustDo(t, http.MethodGet, "/org/model/resolve/main/config.json", nil)
	assert.Equal(t, http.StatusOK, resp.StatusCode, "public models need no key")
	auth := hubAuthSince(kf, before)
	require.NotEmpty(t, auth, "the public file was fetched upstream")
	for _, a := range auth {
		assert.Empty(t, a)
	}
}

func TestOwnCredentialsPassKeepsEachWorkersAccessCheck(t *testing.T) {
	kf := newKeyFixture(t, "false")
	g := startGateway(t, kf.hub, func(c *config.Config) { c.Clients.OwnCredentials = "pass" })
	g.addSecrets(kf.render, kf.hfOnly)
	gated := "/org/gated/resolve/main/config.json"
	approved := http.Header{"Authorization": {"Bearer " + operatorToken}} // a worker whose own token has access
	notApproved := http.Header{"Authorization": {"Bearer " + workerToken}}

	before := len(kf.hub.Requests())
	resp, _ := g.mustDo(t, http.MethodGet, gated, approved)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, []string{"Bearer " + operatorToken}, hubAuthSince(kf, before)[:1], "the worker's own token went upstream")

	// Another worker's token without access is checked on its own, not
	// answered from what the first one's check cached.
	before = len(kf.hub.Requests())
	resp, _ = g.mustDo(t, http.MethodGet, gated, notApproved)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.Equal(t, "GatedRepo", resp.Header.Get("X-Error-Code"))
	assert.Equal(t, []string{"Bearer " + workerToken}, hubAuthSince(kf, before))

	// A worker without a token of its own gets the gateway's credential.
	resp, _ = g.mustDo(t, http.MethodGet, gated, nil)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
}

func TestAWorkerKeyNeverGoesUpstreamEvenWhenOwnCredentialsPass(t *testing.T) {
	kf := newKeyFixture(t, "false")
	g := startGateway(t, kf.hub, func(c *config.Config) {
		c.Clients.OwnCredentials = "pass"
		c.Clients.Keys = []config.ClientKey{{Name: "render", KeySHA256: sha256Hex(kf.render)}}
	})
	g.addSecrets(kf.render, kf.hfOnly)
	before := len(kf.hub.Requests())
	resp, _ := g.mustDo(t, http.MethodGet, "/org/gated/resolve/main/config.json", http.Header{"Authorization": {"Bearer " + kf.render}})
	assert.Equal(t, http.StatusOK, resp.StatusCode, "the key gets the gateway's credential")
	// A plain proxy request (absolute URL) with the key as its HF_TOKEN,
	// for a file not fetched yet, so that it must go upstream.
	plain := func(path, key string) string {
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(g.URL, "http://"), 5*time.Second)
		require.NoError(t, err)
		defer conn.Close()
		io.WriteString(conn, "GET http://huggingface.co"+path+" HTTP/1.1\r\nHost: huggingface.co\r\nAuthorization: Bearer "+key+"\r\nConnection: close\r\n\r\n")
		reply, _ := io.ReadAll(conn)
		return string(reply)
	}
	before = len(kf.hub.Requests())
	assert.Contains(t, plain("/org/model/resolve/main/config.json", kf.render), " 200 ")
	auth := hubAuthSince(kf, before)
	require.NotEmpty(t, auth, "the request went upstream")
	for _, a := range auth {
		assert.Equal(t, "Bearer "+operatorToken, a)
	}
	// An unknown key on a plain proxy request is refused, not forwarded.
	before = len(kf.hub.Requests())
	assert.Contains(t, plain("/other/model/resolve/main/config.json", clientauth.Prefix+"feedfacefeedface"), " 401 ")
	assert.Equal(t, before, len(kf.hub.Requests()))
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
