package authinject

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	hubToken     = "hub-secret-token"
	workerAuth   = "Bearer worker-own-token"
	workerProxy  = "Basic d29ya2VyOnB3"
	workerCookie = "session=worker-cookie"
)

// hit is what a test server saw of one request.
type hit struct {
	Method      string
	Path        string
	RawQuery    string
	Auth        string
	ProxyAuth   string
	Cookie      string
	ContentType string
	Body        string
}

// server is an httptest server that records every request before handing
// it to its handler.
type server struct {
	*httptest.Server
	mu   sync.Mutex
	hits []hit
}

func newServer(t *testing.T, h http.HandlerFunc) *server {
	t.Helper()
	s := &server{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.hits = append(s.hits, hit{
			Method:      r.Method,
			Path:        r.URL.Path,
			RawQuery:    r.URL.RawQuery,
			Auth:        r.Header.Get("Authorization"),
			ProxyAuth:   r.Header.Get("Proxy-Authorization"),
			Cookie:      r.Header.Get("Cookie"),
			ContentType: r.Header.Get("Content-Type"),
			Body:        string(body),
		})
		s.mu.Unlock()
		if h != nil {
			h(w, r)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) Hits() []hit {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]hit(nil), s.hits...)
}

// redirectTo answers every request with status and Location loc.
func redirectTo(status int, loc string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", loc)
		w.WriteHeader(status)
		io.WriteString(w, "redirecting")
	}
}

// routes dispatches on the exact path; unknown paths are a 404.
func routes(m map[string]http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if h, ok := m[r.URL.Path]; ok {
			h(w, r)
			return
		}
		http.NotFound(w, r)
	}
}

func ok(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }
}

func newTransport(t *testing.T) *http.Transport {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func bearer(t *testing.T, endpoint, token string) Credential {
	t.Helper()
	c, err := Bearer(endpoint, token)
	require.NoError(t, err)
	return c
}

// workerRequest is a request as a worker sends it: with its own
// credential (taken off by the edge into the principal, and also left on
// the request, where Do must ignore it), a Proxy-Authorization and a
// Cookie.
func workerRequest(t *testing.T, method, target string, body io.Reader, auth string) *http.Request {
	t.Helper()
	ctx := t.Context()
	if auth != "" {
		ctx = WithPrincipal(ctx, Principal{Own: OwnCredential(auth)})
	}
	req, err := http.NewRequestWithContext(ctx, method, target, body)
	require.NoError(t, err)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.Header.Set("Proxy-Authorization", workerProxy)
	req.Header.Set("Cookie", workerCookie)
	return req
}

func do(t *testing.T, inj *Injector, req *http.Request, follow Follow) *http.Response {
	t.Helper()
	resp, err := inj.Do(req, follow)
	require.NoError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

func assertNoWorkerSecrets(t *testing.T, hits []hit) {
	t.Helper()
	for _, h := range hits {
		assert.Empty(t, h.ProxyAuth, "Proxy-Authorization forwarded to %s", h.Path)
		assert.Empty(t, h.Cookie, "Cookie forwarded to %s", h.Path)
	}
}

func TestDo_AttachesTheConfiguredTokenOnlyToItsHost(t *testing.T) {
	tests := []struct {
		name       string
		token      string // configured for the hub; "" for none
		clientAuth string
		toCDN      bool
		wantAuth   string
	}{
		{"configured token reaches the hub", hubToken, "", false, "Bearer " + hubToken},
		{"worker Authorization is replaced by the configured token", hubToken, workerAuth, false, "Bearer " + hubToken},
		{"worker Authorization is forwarded to the hub when no token is configured", "", workerAuth, false, workerAuth},
		{"nothing is invented without any token", "", "", false, ""},
		{"configured token never reaches the CDN", hubToken, "", true, ""},
		{"worker Authorization never reaches the CDN", hubToken, workerAuth, true, ""},
		{"worker Authorization never reaches the CDN without a configured token", "", workerAuth, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := newServer(t, ok("hub"))
			cdn := newServer(t, ok("cdn"))
			inj := New(newTransport(t), bearer(t, hub.URL, tc.token))

			target := hub
			if tc.toCDN {
				target = cdn
			}
			req := workerRequest(t, http.MethodGet, target.URL+"/file", nil, tc.clientAuth)
			resp := do(t, inj, req, FollowNone)
			assert.Equal(t, http.StatusOK, resp.StatusCode)

			hits := target.Hits()
			require.Len(t, hits, 1)
			assert.Equal(t, tc.wantAuth, hits[0].Auth)
			assertNoWorkerSecrets(t, hits)

			// The caller's request is not modified.
			assert.Equal(t, tc.clientAuth, req.Header.Get("Authorization"))
			assert.Equal(t, workerProxy, req.Header.Get("Proxy-Authorization"))
			assert.Equal(t, workerCookie, req.Header.Get("Cookie"))
		})
	}
}

func TestDo_SendsThePrincipalsCredentialNeverAnAuthorizationOnTheRequest(t *testing.T) {
	hub := newServer(t, ok("hub"))
	inj := New(newTransport(t), bearer(t, hub.URL, ""))
	for _, p := range []Principal{{}, {Mode: ModeClient}, {Mode: ModeAnonymous, Own: OwnCredential(workerAuth)}} {
		req, err := http.NewRequestWithContext(WithPrincipal(t.Context(), p), http.MethodGet, hub.URL+"/file", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", workerAuth)
		do(t, inj, req, FollowNone)
	}
	do(t, inj, workerRequest(t, http.MethodGet, hub.URL+"/file", nil, workerAuth), FollowNone)
	req, err := http.NewRequestWithContext(WithPrincipal(t.Context(), ClientPrincipal(workerAuth, "w")), http.MethodGet, hub.URL+"/file", nil)
	require.NoError(t, err)
	do(t, inj, req, FollowNone)
	var got []string
	for _, h := range hub.Hits() {
		got = append(got, h.Auth)
	}
	assert.Equal(t, []string{"", "", "", workerAuth, workerAuth}, got)
	assert.NotContains(t, fmt.Sprintf("%v %+v %#v %s", ClientPrincipal(workerAuth, "w"), ClientPrincipal(workerAuth, "w"),
		ClientPrincipal(workerAuth, "w"), OwnCredential(workerAuth)), workerAuth[len(workerAuth)-6:], "fmt never prints it")
}

func TestDo_WorkerAuthorizationIsNeverForwardedToAnotherCredentialedHost(t *testing.T) {
	// Two upstreams without configured tokens: the worker's own
	// Authorization was meant for the host it asked, not for wherever that
	// host redirects.
	other := newServer(t, ok("other"))
	hub := newServer(t, redirectTo(http.StatusFound, other.URL+"/elsewhere"))
	inj := New(newTransport(t), bearer(t, hub.URL, ""), bearer(t, other.URL, ""))

	resp := do(t, inj, workerRequest(t, http.MethodGet, hub.URL+"/file", nil, workerAuth), FollowAll)
	assert.Equal(t, "other", readBody(t, resp))

	require.Len(t, hub.Hits(), 1)
	assert.Equal(t, workerAuth, hub.Hits()[0].Auth)
	require.Len(t, other.Hits(), 1)
	assert.Empty(t, other.Hits()[0].Auth)
}

func TestDo_EachHostGetsItsOwnConfiguredToken(t *testing.T) {
	other := newServer(t, ok("other"))
	hub := newServer(t, redirectTo(http.StatusFound, other.URL+"/elsewhere"))
	inj := New(newTransport(t), bearer(t, hub.URL, hubToken), bearer(t, other.URL, "other-token"))

	do(t, inj, workerRequest(t, http.MethodGet, hub.URL+"/file", nil, workerAuth), FollowAll)
	assert.Equal(t, "Bearer "+hubToken, hub.Hits()[0].Auth)
	assert.Equal(t, "Bearer other-token", other.Hits()[0].Auth)
}

func TestDo_FollowSameHostFollowsRelativeRedirectsAndReturnsTheFirstThatLeaves(t *testing.T) {
	const (
		resolvePath = "/org/model/resolve/main/config.json"
		cachePath   = "/api/resolve-cache/models/org/model/0123456789abcdef0123456789abcdef01234567/config.json"
	)
	tests := []struct {
		name       string
		token      string
		clientAuth string
		wantAuth   string
	}{
		{"configured token on every hub hop", hubToken, workerAuth, "Bearer " + hubToken},
		{"worker token on every hub hop when none is configured", "", workerAuth, workerAuth},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cdn := newServer(t, ok("blob"))
			hub := newServer(t, routes(map[string]http.HandlerFunc{
				resolvePath: redirectTo(http.StatusTemporaryRedirect, cachePath+"?etag=%22x%22"),
				cachePath:   redirectTo(http.StatusFound, cdn.URL+"/repos/ab/cd/blob?Signature=s"),
			}))
			inj := New(newTransport(t), bearer(t, hub.URL, tc.token))

			resp := do(t, inj, workerRequest(t, http.MethodHead, hub.URL+resolvePath, nil, tc.clientAuth), FollowSameHost)

			assert.Equal(t, http.StatusFound, resp.StatusCode)
			assert.Equal(t, cdn.URL+"/repos/ab/cd/blob?Signature=s", resp.Header.Get("Location"))
			assert.Equal(t, cachePath, resp.Request.URL.Path, "Request is the last hop sent")
			assert.Equal(t, http.MethodHead, resp.Request.Method)

			hits := hub.Hits()
			require.Len(t, hits, 2)
			assert.Equal(t, resolvePath, hits[0].Path)
			assert.Equal(t, cachePath, hits[1].Path)
			assert.Equal(t, "etag=%22x%22", hits[1].RawQuery)
			for _, h := range hits {
				assert.Equal(t, http.MethodHead, h.Method)
				assert.Equal(t, tc.wantAuth, h.Auth)
			}
			assertNoWorkerSecrets(t, hits)
			assert.Empty(t, cdn.Hits(), "the CDN is never contacted")
		})
	}
}

func TestDo_FollowNoneReturnsTheFirstRedirect(t *testing.T) {
	hub := newServer(t, routes(map[string]http.HandlerFunc{
		"/a": redirectTo(http.StatusTemporaryRedirect, "/b"),
		"/b": ok("b"),
	}))
	inj := New(newTransport(t), bearer(t, hub.URL, hubToken))
	resp := do(t, inj, workerRequest(t, http.MethodGet, hub.URL+"/a", nil, ""), FollowNone)
	assert.Equal(t, http.StatusTemporaryRedirect, resp.StatusCode)
	assert.Equal(t, "/b", resp.Header.Get("Location"))
	assert.Len(t, hub.Hits(), 1)
}

func TestDo_FollowAllDropsCredentialsWhenAHopLeavesTheirHost(t *testing.T) {
	tests := []struct {
		name       string
		token      string
		clientAuth string
		wantHub    string
	}{
		{"configured token", hubToken, workerAuth, "Bearer " + hubToken},
		{"worker token without a configured one", "", workerAuth, workerAuth},
		{"configured token, worker sent none", hubToken, "", "Bearer " + hubToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cdn := newServer(t, ok("payload"))
			hub := newServer(t, redirectTo(http.StatusFound, cdn.URL+"/blob?sig=1"))
			inj := New(newTransport(t), bearer(t, hub.URL, tc.token))

			resp := do(t, inj, workerRequest(t, http.MethodGet, hub.URL+"/org/model/resolve/main/a.bin", nil, tc.clientAuth), FollowAll)
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, "payload", readBody(t, resp))
			assert.Equal(t, cdn.URL+"/blob?sig=1", resp.Request.URL.String())

			require.Len(t, hub.Hits(), 1)
			assert.Equal(t, tc.wantHub, hub.Hits()[0].Auth)
			require.Len(t, cdn.Hits(), 1)
			assert.Empty(t, cdn.Hits()[0].Auth, "the CDN sees no Authorization")
			assertNoWorkerSecrets(t, append(hub.Hits(), cdn.Hits()...))
		})
	}
}

func TestDo_ARedirectBackToTheHubGetsTheTokenAgain(t *testing.T) {
	var hubURL string
	cdn := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		redirectTo(http.StatusFound, hubURL+"/c")(w, r)
	})
	hub := newServer(t, routes(map[string]http.HandlerFunc{
		"/a": redirectTo(http.StatusFound, cdn.URL+"/b"),
		"/c": ok("back on the hub"),
	}))
	hubURL = hub.URL
	inj := New(newTransport(t), bearer(t, hub.URL, hubToken))

	resp := do(t, inj, workerRequest(t, http.MethodGet, hub.URL+"/a", nil, workerAuth), FollowAll)
	assert.Equal(t, "back on the hub", readBody(t, resp))

	hubHits := hub.Hits()
	require.Len(t, hubHits, 2)
	assert.Equal(t, "Bearer "+hubToken, hubHits[0].Auth)
	assert.Equal(t, "/c", hubHits[1].Path)
	assert.Equal(t, "Bearer "+hubToken, hubHits[1].Auth)
	require.Len(t, cdn.Hits(), 1)
	assert.Empty(t, cdn.Hits()[0].Auth)
	assertNoWorkerSecrets(t, append(hubHits, cdn.Hits()...))
}

func TestDo_SameHostnameOnAnotherPortIsAnotherHost(t *testing.T) {
	// Both servers listen on 127.0.0.1; only the port differs.
	other := newServer(t, ok("other port"))
	hub := newServer(t, redirectTo(http.StatusTemporaryRedirect, other.URL+"/x"))
	hu, err := url.Parse(hub.URL)
	require.NoError(t, err)
	ou, err := url.Parse(other.URL)
	require.NoError(t, err)
	require.Equal(t, hu.Hostname(), ou.Hostname())
	require.NotEqual(t, hu.Port(), ou.Port())

	t.Run("FollowSameHost stops at it", func(t *testing.T) {
		inj := New(newTransport(t), bearer(t, hub.URL, hubToken))
		resp := do(t, inj, workerRequest(t, http.MethodGet, hub.URL+"/a", nil, workerAuth), FollowSameHost)
		assert.Equal(t, http.StatusTemporaryRedirect, resp.StatusCode)
		assert.Equal(t, other.URL+"/x", resp.Header.Get("Location"))
		assert.Empty(t, other.Hits())
	})
	t.Run("FollowAll sends it no credential", func(t *testing.T) {
		inj := New(newTransport(t), bearer(t, hub.URL, hubToken))
		resp := do(t, inj, workerRequest(t, http.MethodGet, hub.URL+"/a", nil, workerAuth), FollowAll)
		assert.Equal(t, "other port", readBody(t, resp))
		hits := other.Hits()
		require.NotEmpty(t, hits)
		assert.Empty(t, hits[len(hits)-1].Auth)
	})
}

func TestDo_PlainHTTPToTheCredentialPortIsAnotherHost(t *testing.T) {
	// A credential bound to https://host:P must not be sent in clear text
	// to http://host:P, even though host and port are the same.
	srv := newServer(t, ok("plain"))
	u, err := url.Parse(srv.URL)
	require.NoError(t, err)
	inj := New(newTransport(t), bearer(t, "https://"+u.Host, hubToken))

	assert.False(t, inj.Owns(u))
	do(t, inj, workerRequest(t, http.MethodGet, srv.URL+"/x", nil, workerAuth), FollowNone)
	require.Len(t, srv.Hits(), 1)
	assert.Empty(t, srv.Hits()[0].Auth)
}

func TestDo_RedirectLoopIsBounded(t *testing.T) {
	for _, follow := range []Follow{FollowSameHost, FollowAll} {
		t.Run(fmt.Sprintf("follow=%d", follow), func(t *testing.T) {
			hub := newServer(t, redirectTo(http.StatusFound, "/loop"))
			inj := New(newTransport(t), bearer(t, hub.URL, hubToken))
			resp, err := inj.Do(workerRequest(t, http.MethodGet, hub.URL+"/loop", nil, ""), follow)
			require.Error(t, err)
			assert.Nil(t, resp)
			assert.Contains(t, err.Error(), "redirect")
			n := len(hub.Hits())
			assert.GreaterOrEqual(t, n, 2)
			assert.LessOrEqual(t, n, maxRedirects)
		})
	}
}

func TestDo_RedirectMethodAndBodyFollowHTTPRules(t *testing.T) {
	const body = `{"paths":["config.json"]}`
	tests := []struct {
		name            string
		method          string
		status          int
		wantMethod      string
		wantBody        string
		wantContentType string
	}{
		{"307 replays a POST with its body", http.MethodPost, http.StatusTemporaryRedirect, http.MethodPost, body, "application/json"},
		{"308 replays a POST with its body", http.MethodPost, http.StatusPermanentRedirect, http.MethodPost, body, "application/json"},
		{"301 turns a POST into a GET", http.MethodPost, http.StatusMovedPermanently, http.MethodGet, "", ""},
		{"302 turns a POST into a GET", http.MethodPost, http.StatusFound, http.MethodGet, "", ""},
		{"303 turns a POST into a GET", http.MethodPost, http.StatusSeeOther, http.MethodGet, "", ""},
		{"302 keeps a HEAD a HEAD", http.MethodHead, http.StatusFound, http.MethodHead, "", ""},
		{"307 keeps a GET a GET", http.MethodGet, http.StatusTemporaryRedirect, http.MethodGet, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := newServer(t, routes(map[string]http.HandlerFunc{
				"/old": redirectTo(tc.status, "/new"),
				"/new": ok("new"),
			}))
			inj := New(newTransport(t), bearer(t, hub.URL, hubToken))
			var rb io.Reader
			if tc.method == http.MethodPost {
				rb = strings.NewReader(body)
			}
			req := workerRequest(t, tc.method, hub.URL+"/old", rb, "")
			if rb != nil {
				req.Header.Set("Content-Type", "application/json")
			}
			resp := do(t, inj, req, FollowSameHost)
			assert.Equal(t, http.StatusOK, resp.StatusCode)

			hits := hub.Hits()
			require.Len(t, hits, 2)
			if tc.method == http.MethodPost {
				assert.Equal(t, body, hits[0].Body)
			}
			assert.Equal(t, "/new", hits[1].Path)
			assert.Equal(t, tc.wantMethod, hits[1].Method)
			assert.Equal(t, tc.wantBody, hits[1].Body)
			assert.Equal(t, tc.wantContentType, hits[1].ContentType)
			assert.Equal(t, "Bearer "+hubToken, hits[1].Auth)
		})
	}
}

// onceReader is a body that cannot be rewound (no GetBody), like a
// worker's request body relayed as it streams in.
type onceReader struct{ io.Reader }

func TestDo_A307WithABodyThatCannotBeReplayedIsReturnedToTheCaller(t *testing.T) {
	const body = `{"paths":["config.json"]}`
	tests := []struct {
		name          string
		status        int
		contentLength int64
	}{
		{"307 with a known length", http.StatusTemporaryRedirect, int64(len(body))},
		{"307 with an unknown length", http.StatusTemporaryRedirect, 0},
		{"308 with a known length", http.StatusPermanentRedirect, int64(len(body))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := newServer(t, routes(map[string]http.HandlerFunc{
				"/old": redirectTo(tc.status, "/new"),
				"/new": ok("new"),
			}))
			inj := New(newTransport(t), bearer(t, hub.URL, hubToken))
			req := workerRequest(t, http.MethodPost, hub.URL+"/old", onceReader{strings.NewReader(body)}, "")
			req.ContentLength = tc.contentLength
			require.Nil(t, req.GetBody)

			resp := do(t, inj, req, FollowAll)
			assert.Equal(t, tc.status, resp.StatusCode, "never replays an empty body")
			assert.Equal(t, "/new", resp.Header.Get("Location"))
			hits := hub.Hits()
			require.Len(t, hits, 1)
			assert.Equal(t, body, hits[0].Body)
		})
	}
}

func TestDo_A302WithABodyThatCannotBeReplayedStillBecomesAGet(t *testing.T) {
	hub := newServer(t, routes(map[string]http.HandlerFunc{
		"/old": redirectTo(http.StatusFound, "/new"),
		"/new": ok("new"),
	}))
	inj := New(newTransport(t), bearer(t, hub.URL, hubToken))
	req := workerRequest(t, http.MethodPost, hub.URL+"/old", onceReader{strings.NewReader("x")}, "")
	resp := do(t, inj, req, FollowAll)
	assert.Equal(t, "new", readBody(t, resp))
	hits := hub.Hits()
	require.Len(t, hits, 2)
	assert.Equal(t, http.MethodGet, hits[1].Method)
}

func TestDo_OddRedirectsAreReturnedAsIs(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		location string // "" sends no Location
	}{
		{"ftp scheme", http.StatusFound, "ftp://cdn.hub.example/blob"},
		{"file scheme", http.StatusTemporaryRedirect, "file:///etc/passwd"},
		{"javascript scheme", http.StatusFound, "javascript:alert(1)"},
		{"mailto scheme", http.StatusFound, "mailto:someone@hub.example"},
		{"unparseable Location", http.StatusFound, "http://[::1"},
		{"no Location", http.StatusFound, ""},
		{"not modified is no redirect", http.StatusNotModified, "/elsewhere"},
		{"300 is not followed", http.StatusMultipleChoices, "/elsewhere"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				if tc.location != "" {
					w.Header()["Location"] = []string{tc.location}
				}
				w.WriteHeader(tc.status)
			})
			inj := New(newTransport(t), bearer(t, hub.URL, hubToken))
			for _, follow := range []Follow{FollowSameHost, FollowAll} {
				resp := do(t, inj, workerRequest(t, http.MethodGet, hub.URL+"/a", nil, ""), follow)
				assert.Equal(t, tc.status, resp.StatusCode)
				assert.Equal(t, tc.location, resp.Header.Get("Location"))
			}
			assert.Len(t, hub.Hits(), 2, "one request per Do, nothing followed")
		})
	}
}

func TestCredential_StringNeverShowsTheToken(t *testing.T) {
	c := bearer(t, "https://hub.example", hubToken)
	assert.Equal(t, "credential for https://hub.example:443", c.String())
	for _, verb := range []string{"%v", "%+v", "%s", "%q"} {
		t.Run(verb, func(t *testing.T) {
			s := fmt.Sprintf(verb, c)
			assert.NotContains(t, s, hubToken)
			assert.Contains(t, s, "hub.example:443")
		})
	}
	t.Run("pointer", func(t *testing.T) {
		assert.NotContains(t, fmt.Sprintf("%v", &c), hubToken)
	})
}

func TestBearer_RejectsEndpointsWithoutHost(t *testing.T) {
	tests := []struct{ name, endpoint string }{
		{"empty", ""},
		{"bare host name", "hub.example"},
		{"path only", "/api"},
		{"bad URL", "https://[::1"},
		{"scheme only", "https://"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Bearer(tc.endpoint, hubToken)
			require.Error(t, err)
			assert.NotContains(t, err.Error(), hubToken)
		})
	}
}

func TestCanonicalHost_MakesTheDefaultPortExplicit(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://hub.example", "hub.example:443"},
		{"https://hub.example/path?q=1", "hub.example:443"},
		{"https://HUB.Example:443", "hub.example:443"},
		{"http://hub.example", "hub.example:80"},
		{"http://hub.example:8080", "hub.example:8080"},
		{"https://hub.example:8443", "hub.example:8443"},
		{"https://user:pw@hub.example", "hub.example:443"},
		{"https://[::1]", "[::1]:443"},
		{"http://[::1]:8080", "[::1]:8080"},
		{"https://127.0.0.1", "127.0.0.1:443"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			u, err := url.Parse(tc.in)
			require.NoError(t, err)
			assert.Equal(t, tc.want, CanonicalHost(u))
		})
	}
}

func TestOwns_MatchesOnlyTheCredentialHost(t *testing.T) {
	inj := New(http.DefaultTransport, bearer(t, "https://hub.example", hubToken))
	tests := []struct {
		url  string
		want bool
	}{
		{"https://hub.example/x", true},
		{"https://hub.example:443/x", true},
		{"https://HUB.EXAMPLE/x", true},
		{"http://hub.example/x", false},
		{"http://hub.example:443/x", false},
		{"https://hub.example:8443/x", false},
		{"https://cdn.hub.example/x", false},
		{"https://hub.example.evil.example/x", false},
		{"https://evilhub.example/x", false},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			u, err := url.Parse(tc.url)
			require.NoError(t, err)
			assert.Equal(t, tc.want, inj.Owns(u))
		})
	}

	t.Run("credential without a token still owns its host", func(t *testing.T) {
		inj := New(http.DefaultTransport, bearer(t, "http://hub.example:8080", ""))
		u, _ := url.Parse("http://hub.example:8080/x")
		assert.True(t, inj.Owns(u))
	})
	t.Run("no credentials own nothing", func(t *testing.T) {
		u, _ := url.Parse("https://hub.example/x")
		assert.False(t, New(http.DefaultTransport).Owns(u))
	})
}

func TestFormattingNeverPrintsTheSecret(t *testing.T) {
	const secret = "hf_FORMATsecret0123"
	c, err := Bearer("https://hub.example", secret)
	require.NoError(t, err)
	inj := New(http.DefaultTransport, c)
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
		assert.NotContains(t, fmt.Sprintf(verb, c), secret, verb)
		assert.NotContains(t, fmt.Sprintf(verb, inj), secret, verb)
		assert.NotContains(t, fmt.Sprintf(verb, []Credential{c}), secret, verb)
	}
}

func TestDo_AnHTTPSUpstreamCannotRedirectToPlainHTTP(t *testing.T) {
	plain := newServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "in clear") })
	tlsUp := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+"/file", http.StatusFound)
	}))
	defer tlsUp.Close()
	req, _ := http.NewRequest(http.MethodGet, tlsUp.URL+"/x", nil)
	resp, err := New(tlsUp.Client().Transport).Do(req, FollowAll)
	if resp != nil {
		resp.Body.Close()
	}
	require.ErrorIs(t, err, ErrDowngrade)
	plain.mu.Lock()
	defer plain.mu.Unlock()
	assert.Empty(t, plain.hits, "the http hop was sent")
}

func TestDo_ARedirectCheckStopsTheChainBeforeTheRefusedHop(t *testing.T) {
	hub := newServer(t, routes(map[string]http.HandlerFunc{
		"/old/resolve": redirectTo(http.StatusTemporaryRedirect, "/new/resolve"),
		"/new/resolve": ok("the renamed repo's file"),
		"/a":           redirectTo(http.StatusTemporaryRedirect, "/b"),
		"/b":           ok("b"),
	}))
	inj := New(newTransport(t), bearer(t, hub.URL, hubToken))
	refused := fmt.Errorf("refused")
	var checked []string
	ctx := WithRedirectCheck(t.Context(), func(next *http.Request) error {
		checked = append(checked, next.Method+" "+next.URL.Path)
		if strings.HasPrefix(next.URL.Path, "/new/") {
			return refused
		}
		return nil
	})
	for _, follow := range []Follow{FollowSameHost, FollowAll} {
		req := workerRequest(t, http.MethodGet, hub.URL+"/old/resolve", nil, "").WithContext(ctx)
		_, err := inj.Do(req, follow)
		require.ErrorIs(t, err, refused)
	}
	for _, h := range hub.Hits() {
		assert.NotEqual(t, "/new/resolve", h.Path, "the refused hop was never sent")
	}
	// A target the check allows is followed.
	resp := do(t, inj, workerRequest(t, http.MethodGet, hub.URL+"/a", nil, "").WithContext(ctx), FollowSameHost)
	assert.Equal(t, "b", readBody(t, resp))
	assert.Equal(t, []string{"GET /new/resolve", "GET /new/resolve", "GET /b"}, checked)
}
