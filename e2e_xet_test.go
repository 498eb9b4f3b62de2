package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
	"github.com/modelgate/modelgate/internal/xetclient"
)

// fullRecorder keeps everything a worker received (status, headers, body)
// in full, for secrets only known after the fact (the upstream Xet tokens
// the fake CAS issues to the gateway while the test runs).
type fullRecorder struct {
	rt  http.RoundTripper
	mu  sync.Mutex
	buf bytes.Buffer
}

func (f *fullRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := f.rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.buf.WriteString(resp.Status + "\n")
	resp.Header.Write(&f.buf)
	f.buf.Write(body)
	f.mu.Unlock()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, nil
}

func (f *fullRecorder) bytes() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return bytes.Clone(f.buf.Bytes())
}

var linkURL = regexp.MustCompile(`<([^>]+)>;\s*rel="([^"]+)"`)

// xetLinks returns the rel -> URL entries of Link headers.
func xetLinks(h http.Header) map[string]string {
	out := map[string]string{}
	for _, v := range h.Values("Link") {
		for _, m := range linkURL.FindAllStringSubmatch(v, -1) {
			out[m[2]] = m[1]
		}
	}
	return out
}

type xetFixture struct {
	hub          *fakehub.Hub
	g            *gatewayUnderTest
	base, tuned  []byte
	w1, w2       string
	rec          *fullRecorder
	revokeW1Done bool
}

// newXetFixture starts the fake Hub with a base model and a fine-tune whose
// Xet files share most xorbs, and the gateway in mirror mode with
// huggingface.xet as given and require_key: all (two worker keys; a reload
// drops w1).
func newXetFixture(t *testing.T, mode config.XetMode) *xetFixture {
	t.Helper()
	return newXetFixtureOn(t, mode, fakehub.Options{Token: operatorToken})
}

// newXetFixtureOn is newXetFixture with the fake Hub's options (say, its
// CDN and CAS under their public names).
func newXetFixtureOn(t *testing.T, mode config.XetMode, opts fakehub.Options, more ...func(*config.Config)) *xetFixture {
	t.Helper()
	f := &xetFixture{hub: fakehub.New(t, opts), rec: &fullRecorder{rt: &http.Transport{DisableCompression: true}}}
	f.base = fakehub.RandomData(70, 19*fakehub.XetChunkSize+77)
	f.tuned = bytes.Clone(f.base)
	f.tuned[10*fakehub.XetChunkSize] ^= 1
	commit := fakehub.Commit("xet-e2e")
	// The base first, as on the Hub: the fine-tune's new chunks go into
	// xorbs of their own and it names ranges inside the base's xorbs.
	for _, r := range []struct {
		id   string
		data []byte
	}{{"org/base", f.base}, {"org/tuned", f.tuned}} {
		id, data := r.id, r.data
		f.hub.AddRepo(fakehub.Repo{ID: id, Refs: map[string]string{"main": commit}, Commits: map[string][]fakehub.File{commit: {
			{Path: "config.json", Data: []byte(`{"model_type":"llama"}`)},
			{Path: "model.bin", Data: data, Xet: true},
		}}})
	}
	var w1SHA, w2SHA string
	var err error
	f.w1, w1SHA, err = clientauth.Generate()
	require.NoError(t, err)
	f.w2, w2SHA, err = clientauth.Generate()
	require.NoError(t, err)
	var cfg config.Config
	edit := func(c *config.Config) {
		c.HuggingFace.Xet = mode
		c.Clients.RequireKey = "all"
		c.Clients.Keys = []config.ClientKey{{Name: "w1", KeySHA256: w1SHA}, {Name: "w2", KeySHA256: w2SHA}}
		for _, m := range more {
			m(c)
		}
		cfg = *c
	}
	reload := func() (config.Config, error) {
		next := cfg
		next.Clients.Keys = []config.ClientKey{{Name: "w2", KeySHA256: w2SHA}}
		return next, nil
	}
	f.g = startReloadableGateway(t, f.hub, edit, reload)
	f.g.addSecrets(f.w1, f.w2)
	f.rec.rt = &recordingTransport{rt: f.rec.rt, sink: f.g.Received}
	return f
}

func (f *xetFixture) client() *http.Client { return &http.Client{Transport: f.rec} }

// discover HEADs a file as hf_hub does and returns its Xet hash and links.
func (f *xetFixture) discover(t *testing.T, key, path string) (string, map[string]string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodHead, f.g.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := f.client().Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	return resp.Header.Get("X-Xet-Hash"), xetLinks(resp.Header)
}

// upstreamXetHash asks the fake Hub itself (not the gateway) for a file's
// Xet hash.
func (f *xetFixture) upstreamXetHash(t *testing.T, path string) string {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.hub.CertPool()}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Head(f.hub.URL() + path)
	require.NoError(t, err)
	resp.Body.Close()
	require.Len(t, resp.Header.Get("X-Xet-Hash"), 64)
	return resp.Header.Get("X-Xet-Hash")
}

func (f *xetFixture) xetClient(key string) *xetclient.Client {
	return &xetclient.Client{HTTP: f.client(), Header: http.Header{"Authorization": {"Bearer " + key}}}
}

// TestXetServedThroughTheGatewayInMirrorMode: with huggingface.xet: serve
// a worker discovers Xet from the resolve answer, gets a gateway token and
// downloads over Xet through the gateway byte for byte; the fine-tune's
// xorbs shared with the base cross the upstream once; a key revoked
// mid-download stops it; no upstream token (HF or Xet) reaches the worker.
func TestXetServedThroughTheGatewayInMirrorMode(t *testing.T) {
	f := newXetFixture(t, "serve")

	hash, links := f.discover(t, f.w1, "/org/base/resolve/main/model.bin")
	require.Len(t, hash, 64, "X-Xet-Hash kept")
	auth, recon := links["xet-auth"], links["xet-reconstruction-info"]
	require.True(t, strings.HasPrefix(auth, f.g.URL+"/api/models/org/base/xet-read-token/"), "xet-auth names the gateway: %s", auth)
	require.Equal(t, f.g.URL+"/xet/cas/v1/reconstructions/"+hash, recon)

	c := f.xetClient(f.w1)
	tok, err := c.GetToken(auth)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(tok.AccessToken, "mgx1."), "a gateway-issued token")
	assert.Equal(t, f.g.URL+"/xet/cas", tok.CasURL, "casUrl is the gateway")
	got, err := c.Download(tok.CasURL, tok.AccessToken, hash)
	require.NoError(t, err)
	require.Equal(t, f.base, got, "the Xet download is byte-exact")

	// The fine-tune: its xorbs shared with the base are not fetched again.
	tHash, tLinks := f.discover(t, f.w1, "/org/tuned/resolve/main/model.bin")
	tTok, err := c.GetToken(tLinks["xet-auth"])
	require.NoError(t, err)
	got, err = c.Download(tTok.CasURL, tTok.AccessToken, tHash)
	require.NoError(t, err)
	require.Equal(t, f.tuned, got)
	bx, tx := f.hub.XorbHashes(hash), f.hub.XorbHashes(tHash)
	shared := 0
	for _, x := range tx {
		for _, y := range bx {
			if x == y {
				shared++
				assert.Equal(t, 1, f.hub.XorbFetches(x), "a shared xorb crosses the upstream once")
			}
		}
	}
	assert.Positive(t, shared, "the fine-tune shares xorbs with its base")
	assert.Less(t, shared, len(tx), "and has one of its own")

	// A token for one repo does not open another's file.
	_, err = c.Reconstruct(tok.CasURL, tok.AccessToken, tHash)
	var se *xetclient.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusForbidden, se.Status)

	// Plain HTTP keeps working, and the tree keeps xetHash for Xet files.
	resp, body := f.g.mustDo(t, http.MethodGet, "/org/base/resolve/main/model.bin", http.Header{"Authorization": {"Bearer " + f.w2}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, f.base, body)
	resp, body = f.g.mustDo(t, http.MethodGet, "/api/models/org/base/tree/main", http.Header{"Authorization": {"Bearer " + f.w2}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, string(body), `"xetHash":"`+hash+`"`)

	// The write token stays refused.
	resp, _ = f.g.mustDo(t, http.MethodGet, "/api/models/org/base/xet-write-token/main", http.Header{"Authorization": {"Bearer " + f.w2}})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)

	// w1 is revoked (reload without it) after its first xorb fetch: the
	// rest of its download is refused, its tokens with it.
	rc := f.xetClient(f.w1)
	rTok, err := rc.GetToken(auth)
	require.NoError(t, err)
	rc.BeforeFetch = func(done int) {
		if done == 1 {
			status, out := f.g.adminDo(t, http.MethodPost, "/admin/v1/reload", "", nil)
			require.Equal(t, http.StatusOK, status, string(out))
		}
	}
	_, err = rc.Download(rTok.CasURL, rTok.AccessToken, hash)
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusUnauthorized, se.Status, "the revoked key's download stops")
	assert.Equal(t, 2, rc.Requests)
	_, err = rc.Reconstruct(rTok.CasURL, rTok.AccessToken, hash)
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusUnauthorized, se.Status, "its Xet token is revoked with it")
	_, err = rc.GetToken(auth)
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusUnauthorized, se.Status)

	// w2 still downloads, from the cache.
	c2 := f.xetClient(f.w2)
	tok2, err := c2.GetToken(auth)
	require.NoError(t, err)
	got, err = c2.Download(tok2.CasURL, tok2.AccessToken, hash)
	require.NoError(t, err)
	require.Equal(t, f.base, got)

	// Leak scan: besides the end-of-test search (worker traffic, logs,
	// metrics, the fake's Xet tokens included), everything the Xet client
	// received, in full, for the upstream Xet tokens and CAS address.
	upstreamXet := f.hub.XetTokens()
	require.NotEmpty(t, upstreamXet, "the gateway did use upstream Xet tokens")
	seen := f.rec.bytes()
	assertNoLeak(t, "Xet worker traffic", seen, append(upstreamXet, operatorToken)...)
	assert.NotContains(t, string(seen), hostPort(f.hub.CASURL()), "the worker is never pointed at the upstream CAS")
	_, err = os.Stat(filepath.Join(f.g.DataDir, "xet", "xet-secret"))
	assert.NoError(t, err, "the token secret lives in data_dir")
}

// TestXetHiddenBelowTheAutoSizeAndWhenHidden: with auto (files far below
// 50GB) and hide, the resolve answer, the tree and the token route are as
// they were before Xet was served.
func TestXetHiddenBelowTheAutoSizeAndWhenHidden(t *testing.T) {
	for _, mode := range []config.XetMode{"auto", "hide"} {
		t.Run(string(mode), func(t *testing.T) {
			f := newXetFixture(t, mode)
			hash, links := f.discover(t, f.w1, "/org/base/resolve/main/model.bin")
			assert.Empty(t, hash, "no X-Xet-Hash")
			assert.Empty(t, links)
			h := http.Header{"Authorization": {"Bearer " + f.w1}}
			resp, body := f.g.mustDo(t, http.MethodGet, "/api/models/org/base/tree/main", h)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			assert.NotContains(t, string(body), "xetHash")
			var entries []map[string]any
			require.NoError(t, json.Unmarshal(body, &entries))
			require.NotEmpty(t, entries)
			resp, body = f.g.mustDo(t, http.MethodGet, "/api/models/org/base/xet-read-token/main", h)
			if mode == "hide" {
				assert.Equal(t, http.StatusForbidden, resp.StatusCode)
				assert.Contains(t, string(body), "does not hand out Xet tokens")
			} else {
				// The token route is per repo (a repo may hold files above
				// the size); a file below it is still not reconstructed.
				require.Equal(t, http.StatusOK, resp.StatusCode)
				var tok xetclient.Token
				require.NoError(t, json.Unmarshal(body, &tok))
				_, err := f.xetClient(f.w1).Reconstruct(tok.CasURL, tok.AccessToken, f.upstreamXetHash(t, "/org/base/resolve/main/model.bin"))
				var se *xetclient.StatusError
				require.ErrorAs(t, err, &se)
				assert.Equal(t, http.StatusForbidden, se.Status)
			}
			resp, body = f.g.mustDo(t, http.MethodGet, "/org/base/resolve/main/model.bin", h)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, f.base, body)
		})
	}
}

// proxyHTTP is a worker behind HTTPS_PROXY with key in the proxy URL,
// trusting the gateway's CA, keeping everything it received.
func (f *xetFixture) proxyHTTP(t *testing.T, key string) (*http.Client, *fullRecorder) {
	t.Helper()
	pc := f.g.proxyClient(t)
	pu, _ := url.Parse(f.g.URL)
	pu.User = url.UserPassword("worker", key)
	pc.Transport.(*recordingTransport).rt.(*http.Transport).Proxy = http.ProxyURL(pu)
	rec := &fullRecorder{rt: pc.Transport}
	return &http.Client{Transport: rec, CheckRedirect: pc.CheckRedirect}, rec
}

// casRequests are the requests the fake CAS received under host whose
// path starts with prefix.
func casRequests(hub *fakehub.Hub, host, prefix string) []fakehub.Request {
	var out []fakehub.Request
	for _, r := range hub.Requests() {
		if r.Server == "cas" && strings.EqualFold(r.Host, host) && strings.HasPrefix(r.RequestURI, prefix) {
			out = append(out, r)
		}
	}
	return out
}

// TestXetServedThroughTheGatewayInProxyMode: an unmodified worker behind
// HTTPS_PROXY (the Hub's own names, the gateway's CA) discovers Xet from
// the resolve answer, whose links name the Hub and its CAS host; the
// gateway answers the token route with its own token (casUrl the CAS
// host), and the intercepted CAS and transfer hosts with its own Xet
// service: the download is byte-exact, the fine-tune's shared xorbs cross
// the upstream once, and no upstream token reaches the worker. The fake
// CAS, under its real names, is reached by the gateway through
// upstream.resolve.
func TestXetServedThroughTheGatewayInProxyMode(t *testing.T) {
	f := newXetFixtureOn(t, "serve", fakehub.Options{Token: operatorToken, PublicNames: true})
	pc, rec := f.proxyHTTP(t, f.w1)

	discover := func(path string) (string, map[string]string) {
		t.Helper()
		resp, err := pc.Head("https://" + hubHost + path)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		return resp.Header.Get("X-Xet-Hash"), xetLinks(resp.Header)
	}
	hash, links := discover("/org/base/resolve/main/model.bin")
	require.Len(t, hash, 64, "X-Xet-Hash kept in proxy mode")
	auth, recon := links["xet-auth"], links["xet-reconstruction-info"]
	require.True(t, strings.HasPrefix(auth, "https://"+hubHost+"/api/models/org/base/xet-read-token/"), "xet-auth names the Hub the worker used: %s", auth)
	require.Equal(t, "https://"+fakehub.CASHost+"/v1/reconstructions/"+hash, recon, "the reconstruction link names the CAS host")

	c := &xetclient.Client{HTTP: pc}
	tok, err := c.GetToken(auth)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(tok.AccessToken, "mgx1."), "a gateway-issued token")
	assert.Equal(t, "https://"+fakehub.CASHost, tok.CasURL)
	r, err := c.Reconstruct(tok.CasURL, tok.AccessToken, hash)
	require.NoError(t, err)
	require.NotEmpty(t, r.Xorbs)
	for _, fetches := range r.Xorbs {
		for _, fe := range fetches {
			u, err := url.Parse(fe.URL)
			require.NoError(t, err)
			assert.Equal(t, fakehub.TransferHost, u.Host, "xorb URLs name the transfer host")
			assert.NotEmpty(t, u.Query().Get("sig"), "signed by the gateway")
		}
	}
	got, err := c.Download(tok.CasURL, tok.AccessToken, hash)
	require.NoError(t, err)
	require.Equal(t, f.base, got, "the Xet download is byte-exact")

	tHash, tLinks := discover("/org/tuned/resolve/main/model.bin")
	tTok, err := c.GetToken(tLinks["xet-auth"])
	require.NoError(t, err)
	got, err = c.Download(tTok.CasURL, tTok.AccessToken, tHash)
	require.NoError(t, err)
	require.Equal(t, f.tuned, got)
	for _, x := range f.hub.XorbHashes(hash) {
		assert.LessOrEqual(t, f.hub.XorbFetches(x), 1, "a base xorb crosses the upstream at most once")
	}

	// The gateway, not the worker, spoke to the upstream CAS, under its
	// real names.
	assert.NotEmpty(t, casRequests(f.hub, fakehub.CASHost, "/v2/reconstructions/"), "the gateway asked the CAS host")
	assert.NotEmpty(t, casRequests(f.hub, fakehub.TransferHost, "/xorbs/default/"), "and fetched xorbs from the transfer host")
	assert.Contains(t, f.g.Logs.String(), "mode=mitm")

	// An upstream Xet token is worth nothing at the intercepted CAS.
	upstreamXet := f.hub.XetTokens()
	require.NotEmpty(t, upstreamXet, "the gateway did use upstream Xet tokens")
	_, err = c.Reconstruct(tok.CasURL, upstreamXet[0], hash)
	var se *xetclient.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusUnauthorized, se.Status)

	seen := rec.bytes()
	assertNoLeak(t, "Xet worker traffic", seen, append(upstreamXet, operatorToken)...)
	assert.NotContains(t, string(seen), "xet-jwt-", "no upstream Xet token of any kind")
	for _, l := range f.hub.Listeners() {
		assert.NotContains(t, string(seen), l, "the worker is never pointed at the upstream's listeners")
	}
}
