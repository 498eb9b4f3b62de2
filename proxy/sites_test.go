package proxy

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/hostmatch"
	"github.com/modelgate/modelgate/mitmca"
	"github.com/modelgate/modelgate/site"
)

// fileHost is a third hub, for tests only: a generic HTTPS file host with
// its routes under /files/ on files.test and its content on
// *.cdn.files.test. It answers with what the edge handed it, so the test
// can see the routing, the key and the principal.
type fileHost struct{ endpoint *url.URL }

func (f fileHost) Site() site.Site {
	answer := func(kind string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			who := "-"
			if k := clientauth.FromContext(r.Context()); k != nil {
				who = k.Name
			}
			mode := map[authinject.Mode]string{authinject.ModeGateway: "gateway", authinject.ModeAnonymous: "anonymous", authinject.ModeClient: "client"}
			w.Header().Set("X-Site", kind)
			w.Header().Set("X-Worker", who)
			w.Header().Set("X-Principal", mode[authinject.PrincipalFrom(r.Context()).Mode])
			// A worker key must never reach a site, in any form.
			w.Header().Set("X-Saw-Key", boolString(strings.Contains(r.Header.Get("Authorization")+r.URL.RawQuery, clientauth.Prefix)))
			io.WriteString(w, kind+" "+r.URL.Path)
		}
	}
	return site.Site{
		Name:     "files",
		Title:    "Files",
		Paths:    func(p string) bool { return strings.HasPrefix(p, "/files/") },
		Hosts:    site.Hosts(f.endpoint),
		Handler:  answer("files"),
		CDNHosts: hostmatch.MustParse("*.cdn.files.test"),
		ServeCDN: func(w http.ResponseWriter, r *http.Request, _ http.Handler) { answer("files-cdn")(w, r) },
		Endpoint: f.endpoint,
		// Under the content hosts' pattern, answered first.
		SelfAuthHosts: hostmatch.MustParse("tok.cdn.files.test"),
		ServeSelfAuth: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Auth", r.Header.Get("Authorization"))
			answer("files-self")(w, r)
		}),
	}
}

func boolString(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// A new hub is a site package and one line of wiring: registered with the
// edge, a test-only file host is served in mirror mode, through an
// intercepted CONNECT and as a plain proxy request, with the worker key
// taken off and the principal decided by the edge, without anything in
// the edge naming it.
func TestAnExtraSiteIsServedInBothModes(t *testing.T) {
	const workerKey = "mgw_filesTESTkey0123456789"
	const otherScopeKey = "mgw_otherSCOPEkey987654321"
	sum := sha256.Sum256([]byte(workerKey))
	other := sha256.Sum256([]byte(otherScopeKey))
	keys, err := clientauth.Load([]clientauth.Spec{
		{Name: "w1", KeySHA256: hex.EncodeToString(sum[:])},
		{Name: "w2", KeySHA256: hex.EncodeToString(other[:]), Scopes: []string{"civitai"}},
	}, nil)
	require.NoError(t, err)
	ca, err := mitmca.Load("", "", t.TempDir(), mitmca.Options{Hosts: []string{"files.test", "*.cdn.files.test"}})
	require.NoError(t, err)
	endpoint, _ := url.Parse("https://files.test")

	gw, err := New(Options{
		Sites:         []site.Site{fileHost{endpoint}.Site()},
		Gatherer:      prometheus.NewRegistry(),
		CA:            ca,
		Intercept:     hostmatch.MustParse("files.test", "*.cdn.files.test"),
		DenyTunnels:   true,
		Transport:     &http.Transport{},
		ClientAllow:   []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Keys:          func() *clientauth.Keys { return keys },
		HasCredential: func(u *url.URL) bool { return u.Host == "files.test" },
	})
	require.NoError(t, err)
	t.Cleanup(func() { gw.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := NewServer("", gw, slog.New(slog.DiscardHandler))
	go srv.Serve(gw.Listener(ln))
	t.Cleanup(func() { srv.Close() })
	base := "http://" + ln.Addr().String()

	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(ca.Bundle(time.Now())))
	proxied := &http.Client{Transport: &http.Transport{
		Proxy:           http.ProxyURL(&url.URL{Scheme: "http", User: url.UserPassword("w1", workerKey), Host: ln.Addr().String()}),
		TLSClientConfig: &tls.Config{RootCAs: roots},
	}}
	direct := &http.Client{}

	get := func(c *http.Client, u, bearer string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, u, nil)
		require.NoError(t, err)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := c.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, string(body)
	}

	tests := []struct {
		name              string
		client            *http.Client
		url, bearer       string
		status            int
		site, body        string
		worker, principal string
	}{
		{"mirror mode", direct, base + "/files/a/b.bin", workerKey, 200, "files", "files /files/a/b.bin", "w1", "gateway"},
		{"mirror mode, key as ?token=", direct, base + "/files/c.bin?token=" + workerKey, "", 200, "files", "files /files/c.bin", "w1", "gateway"},
		{"mirror mode, the worker's own token", direct, base + "/files/d.bin", "own-files-token", 200, "files", "files /files/d.bin", "-", "gateway"},
		{"mirror mode, no site's path", direct, base + "/elsewhere", workerKey, 404, "", "", "", ""},
		{"intercepted", proxied, "https://files.test/files/a/b.bin", "", 200, "files", "files /files/a/b.bin", "w1", "gateway"},
		{"intercepted content host", proxied, "https://x.cdn.files.test/blob/1", "", 200, "files-cdn", "files-cdn /blob/1", "w1", "gateway"},
		{"plain proxy request", proxied, "http://files.test/files/e.bin", "", 200, "files", "files /files/e.bin", "w1", "gateway"},
		{"not intercepted, tunnels denied", proxied, "https://other.test/files/a", "", 0, "", "", "", ""},
	}
	// A self-authenticating host gets the credential the site issued, as
	// the worker sent it (the worker key itself still taken off).
	resp, body := get(proxied, "https://tok.cdn.files.test/recon/1", "site-issued-token")
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.Equal(t, "files-self /recon/1", body)
	assert.Equal(t, "Bearer site-issued-token", resp.Header.Get("X-Auth"))
	assert.Equal(t, "w1", resp.Header.Get("X-Worker"))
	assert.Equal(t, "no", resp.Header.Get("X-Saw-Key"))
	// Only for keys that may use the site.
	otherProxied := &http.Client{Transport: &http.Transport{
		Proxy:           http.ProxyURL(&url.URL{Scheme: "http", User: url.UserPassword("w2", otherScopeKey), Host: ln.Addr().String()}),
		TLSClientConfig: &tls.Config{RootCAs: roots},
	}}
	resp, body = get(otherProxied, "https://tok.cdn.files.test/recon/1", "site-issued-token")
	assert.Equal(t, http.StatusForbidden, resp.StatusCode, body)
	assert.Empty(t, resp.Header.Get("X-Site"))

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.status == 0 {
				_, err := tt.client.Get(tt.url)
				require.Error(t, err, "a CONNECT to a host no site has and no tunnel allowed")
				return
			}
			resp, body := get(tt.client, tt.url, tt.bearer)
			require.Equal(t, tt.status, resp.StatusCode, body)
			if tt.status != 200 {
				return
			}
			assert.Equal(t, tt.site, resp.Header.Get("X-Site"))
			assert.Equal(t, tt.body, body)
			assert.Equal(t, tt.worker, resp.Header.Get("X-Worker"))
			assert.Equal(t, tt.principal, resp.Header.Get("X-Principal"))
			assert.Equal(t, "no", resp.Header.Get("X-Saw-Key"))
		})
	}
}
