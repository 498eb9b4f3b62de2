package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/hostmatch"
	"github.com/modelgate/modelgate/internal/fakehub"
	"github.com/modelgate/modelgate/internal/xetclient"
)

// The review of upstream.resolve and Xet in proxy mode (SECURITY.md,
// attacks 17 and on).

// With mitm.hosts narrowed to the Hub's own names, the Xet CAS and
// transfer hosts are tunnelled blindly, not answered by the gateway. The
// gateway must then not point a proxy-mode worker at them: a worker that
// followed the links would hand the gateway-issued Xet token (bound to its
// key's name) and the signed xorb URLs to the real CAS, a host other than
// their own, and its download would fail there anyway. Files stay plain
// HTTP from the gateway.
func TestXetIsNotAdvertisedInProxyModeWhenTheCASHostsAreNotIntercepted(t *testing.T) {
	f := newXetFixtureOn(t, "serve", fakehub.Options{Token: operatorToken, PublicNames: true}, func(c *config.Config) {
		c.MITM.Hosts = hostmatch.MustParse("huggingface.co", "hf.co")
		// The blind tunnel reaches the fake CAS's loopback listener.
		c.Proxy.AllowPrivateTargets = true
	})
	pc, rec := f.proxyHTTP(t, f.w1)
	// Inside a blind tunnel the worker meets the CAS's own certificate.
	tr := pc.Transport.(*fullRecorder).rt.(*recordingTransport).rt.(*http.Transport)
	pem, err := os.ReadFile(f.hub.CAFile())
	require.NoError(t, err)
	require.True(t, tr.TLSClientConfig.RootCAs.AppendCertsFromPEM(pem))

	resp, err := pc.Head("https://" + hubHost + "/org/base/resolve/main/model.bin")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	links := xetLinks(resp.Header)
	// What a Xet client does with whatever it was given.
	if auth := links["xet-auth"]; auth != "" {
		c := &xetclient.Client{HTTP: pc}
		if tok, err := c.GetToken(auth); err == nil {
			c.Reconstruct(tok.CasURL, tok.AccessToken, resp.Header.Get("X-Xet-Hash"))
		}
	}
	for _, r := range f.hub.Requests() {
		if r.Server == "cas" {
			assert.NotContains(t, r.Header.Get("Authorization"), "mgx1.", "a gateway Xet token reached the upstream CAS (%s%s)", r.Host, r.RequestURI)
		}
	}
	assert.Empty(t, resp.Header.Get("X-Xet-Hash"), "no Xet hint for a CAS the gateway does not answer")
	assert.Empty(t, links)

	resp, err = pc.Get("https://" + hubHost + "/api/models/org/base/xet-read-token/main")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusForbidden, resp.StatusCode, "no gateway Xet token whose casUrl would be tunnelled")

	// The file itself still downloads, over plain HTTP from the gateway.
	resp, err = pc.Get("https://" + hubHost + "/org/base/resolve/main/model.bin")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, f.base, body)
	assert.False(t, strings.Contains(string(rec.bytes()), "mgx1."), "no gateway Xet token handed out")
	assertNoSecretsLeaked(t, f.g, f.hub, true)
}

// A port spelled with leading zeros ("08080") is the same port to the
// dialler: with private targets allowed, a worker must not reach the
// gateway's own listener through a tunnel or a relayed request that way,
// where it would arrive from loopback: the admin API's network.
func TestAZeroPaddedPortDoesNotReachTheGatewayItself(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, func(c *config.Config) {
		c.Proxy.AllowPrivateTargets = true
		// The worker (127.0.0.2) stands for a LAN client: the admin API
		// answers the gateway's own host only.
		c.Admin.Allow = config.MustNetworks("127.0.0.1/32")
	})
	host, port, err := net.SplitHostPort(g.Addr)
	require.NoError(t, err)
	for _, p := range []string{port, "0" + port, "000" + port} {
		assert.Equal(t, "403", connectFrom(t, g, "127.0.0.2", net.JoinHostPort(host, p)), "CONNECT to port %s", p)
	}

	get := func(target string) string {
		t.Helper()
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
		conn, err := d.Dial("tcp", strings.TrimPrefix(g.URL, "http://"))
		require.NoError(t, err)
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(15 * time.Second))
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target, host)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		require.NoError(t, err)
		defer resp.Body.Close()
		return strconv.Itoa(resp.StatusCode)
	}
	assert.Equal(t, "403", get("/admin/v1/status"), "the admin API is not open to 127.0.0.2")
	for _, p := range []string{port, "0" + port} {
		assert.Equal(t, "403", get("http://"+net.JoinHostPort(host, p)+"/admin/v1/status"), "relayed to port %s", p)
	}
	assertNoSecretsLeaked(t, g, tr.hub, true)
}

// Who reaches the intercepted Xet CAS and transfer hosts in proxy mode,
// and what a gateway Xet token opens there: a worker without a key gets
// no further than the edge; a key without the huggingface scope is
// refused whatever token it carries; a key whose repo patterns exclude a
// repo gets no token for it; and a token (mirror- or proxy-issued) opens
// only its own repo's files in either mode, as a signed xorb URL opens
// only what was signed.
func TestXetHostsInProxyModeOnlyOpenWhatTheKeyAndTokenAllow(t *testing.T) {
	civOnly, civOnlySHA, err := clientauth.Generate()
	require.NoError(t, err)
	tunedOnly, tunedOnlySHA, err := clientauth.Generate()
	require.NoError(t, err)
	f := newXetFixtureOn(t, "serve", fakehub.Options{Token: operatorToken, PublicNames: true}, func(c *config.Config) {
		c.Clients.Keys = append(c.Clients.Keys,
			config.ClientKey{Name: "civ-only", KeySHA256: civOnlySHA, Scopes: []string{"civitai"}},
			config.ClientKey{Name: "tuned-only", KeySHA256: tunedOnlySHA, Repos: []string{"org/tuned"}})
	})
	f.g.addSecrets(civOnly, tunedOnly)
	w1, w1Rec := f.proxyHTTP(t, f.w1)
	discover := func(pc *http.Client, path string) (string, map[string]string) {
		t.Helper()
		resp, err := pc.Head("https://" + hubHost + path)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		return resp.Header.Get("X-Xet-Hash"), xetLinks(resp.Header)
	}
	baseHash, baseLinks := discover(w1, "/org/base/resolve/main/model.bin")
	tunedHash, tunedLinks := discover(w1, "/org/tuned/resolve/main/model.bin")
	require.Len(t, baseHash, 64)
	c := &xetclient.Client{HTTP: w1}
	baseTok, err := c.GetToken(baseLinks["xet-auth"])
	require.NoError(t, err)
	rec, err := c.Reconstruct(baseTok.CasURL, baseTok.AccessToken, baseHash)
	require.NoError(t, err, "the rightful use works")

	status := func(err error) int {
		t.Helper()
		var se *xetclient.StatusError
		if errors.As(err, &se) {
			return se.Status
		}
		require.Error(t, err)
		return 0 // refused before any HTTP answer (the CONNECT)
	}

	// No key: the CONNECT is refused (require_key: all), in either form.
	anon, _ := f.proxyHTTP(t, "")
	anon.Transport.(*fullRecorder).rt.(*recordingTransport).rt.(*http.Transport).Proxy = http.ProxyURL(mustURL(t, f.g.URL))
	_, err = (&xetclient.Client{HTTP: anon}).Reconstruct(baseTok.CasURL, baseTok.AccessToken, baseHash)
	assert.NotEqual(t, http.StatusOK, status(err), "no key, no CAS")
	req, _ := http.NewRequest(http.MethodGet, "http://"+fakehub.CASHost+"/v1/reconstructions/"+baseHash, nil)
	req.Header.Set("Authorization", "Bearer "+baseTok.AccessToken)
	resp, err := anon.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusProxyAuthRequired, resp.StatusCode, "no key, no plain-HTTP CAS either")

	// A key without the huggingface scope, with a valid token in hand.
	civ, _ := f.proxyHTTP(t, civOnly)
	_, err = (&xetclient.Client{HTTP: civ}).Reconstruct(baseTok.CasURL, baseTok.AccessToken, baseHash)
	assert.Equal(t, http.StatusForbidden, status(err), "a key without the huggingface scope")
	for _, fetches := range rec.Xorbs {
		resp, err := civ.Get(fetches[0].URL)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, "nor a signed xorb URL")
		break
	}

	// A key limited to org/tuned gets no token for org/base.
	tuned, _ := f.proxyHTTP(t, tunedOnly)
	_, err = (&xetclient.Client{HTTP: tuned}).GetToken(baseLinks["xet-auth"])
	assert.Equal(t, http.StatusForbidden, status(err), "no token for a repo the key may not read")

	// Tokens open their own repo only, whichever mode issued them and
	// whichever mode they are presented in.
	tunedTok, err := c.GetToken(tunedLinks["xet-auth"])
	require.NoError(t, err)
	_, err = c.Reconstruct(tunedTok.CasURL, tunedTok.AccessToken, baseHash)
	assert.Equal(t, http.StatusForbidden, status(err), "a proxy-mode token for org/tuned on org/base's file")
	mirrorTuned, err := f.xetClient(f.w1).GetToken(f.g.URL + "/api/models/org/tuned/xet-read-token/main")
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(mirrorTuned.CasURL, f.g.URL), mirrorTuned.CasURL)
	_, err = c.Reconstruct(baseTok.CasURL, mirrorTuned.AccessToken, baseHash)
	assert.Equal(t, http.StatusForbidden, status(err), "a mirror-mode token for org/tuned on org/base's file, in proxy mode")
	_, err = f.xetClient(f.w1).Reconstruct(mirrorTuned.CasURL, baseTok.AccessToken, tunedHash)
	assert.Equal(t, http.StatusForbidden, status(err), "a proxy-mode token for org/base on org/tuned's file, in mirror mode")

	// A signed xorb URL with its principal or file changed is refused.
	for _, fetches := range rec.Xorbs {
		for _, change := range []struct{ param, value string }{{"p", "w2"}, {"f", tunedHash}} {
			u := mustURL(t, fetches[0].URL)
			q := u.Query()
			q.Set(change.param, change.value)
			u.RawQuery = q.Encode()
			req, _ := http.NewRequest(http.MethodGet, u.String(), nil)
			req.Header.Set("Range", "bytes="+q.Get("r"))
			resp, err := w1.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusForbidden, resp.StatusCode, "xorb URL with %s changed", change.param)
		}
		break
	}
	assertNoLeak(t, "Xet worker traffic", w1Rec.bytes(), append(f.hub.XetTokens(), operatorToken)...)
	assertNoSecretsLeaked(t, f.g, f.hub, true)
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}

// Inside an interception the CONNECT target decides which handler
// answers, not the Host header the worker writes: a token route sent to
// the CAS host is no token route, a CAS route sent to the Hub host is no
// CAS route, and the gateway's Xet token a worker put on it goes nowhere.
// Links in answers never name a Host header either: in proxy mode they name
// the Hub's own hosts; in mirror mode the host a worker wrote reaches that
// worker only, never another's answer.
func TestXetRoutingAndLinksIgnoreTheHostHeader(t *testing.T) {
	f := newXetFixtureOn(t, "serve", fakehub.Options{Token: operatorToken, PublicNames: true})
	w1, _ := f.proxyHTTP(t, f.w1)
	resp, err := w1.Head("https://" + hubHost + "/org/base/resolve/main/model.bin")
	require.NoError(t, err)
	resp.Body.Close()
	hash := resp.Header.Get("X-Xet-Hash")
	require.Len(t, hash, 64)
	tok, err := (&xetclient.Client{HTTP: w1}).GetToken(xetLinks(resp.Header)["xet-auth"])
	require.NoError(t, err)

	do := func(target, host string, hdr http.Header) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, target, nil)
		req.Host = host // CONNECT goes to the URL's host; Host names another
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := w1.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(body)
	}
	code, body := do("https://"+fakehub.CASHost+"/api/models/org/base/xet-read-token/main", hubHost, nil)
	assert.Equal(t, http.StatusNotFound, code, body)
	assert.NotContains(t, body, "mgx1.", "no token from the CAS host")
	code, body = do("https://"+hubHost+"/v1/reconstructions/"+hash, fakehub.CASHost, http.Header{"Authorization": {"Bearer " + tok.AccessToken}})
	assert.NotEqual(t, http.StatusOK, code, body)
	assert.NotContains(t, body, "xorbs", "no reconstruction from the Hub host")
	for _, r := range f.hub.Requests() {
		assert.NotContains(t, r.Header.Get("Authorization"), "mgx1.", "a gateway Xet token went upstream (%s %s%s)", r.Server, r.Host, r.RequestURI)
	}

	// Mirror mode: a worker writing Host: evil.test gets links to
	// evil.test, its own doing; the next worker's answer is its own.
	mirror := func(key, host, path string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodHead, f.g.URL+path, nil)
		req.Host = host
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := f.client().Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp
	}
	gwHost := strings.TrimPrefix(f.g.URL, "http://")
	for i := 0; i < 2; i++ { // the second round is answered from the index
		resp := mirror(f.w1, "evil.test", "/org/base/resolve/main/model.bin")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.NotEmpty(t, xetLinks(resp.Header))
		resp = mirror(f.w2, gwHost, "/org/base/resolve/main/model.bin")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		for rel, u := range xetLinks(resp.Header) {
			assert.True(t, strings.HasPrefix(u, f.g.URL+"/"), "%s names the gateway the worker used: %s", rel, u)
		}
		resp, err := w1.Head("https://" + hubHost + "/org/base/resolve/main/model.bin")
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, "https://"+fakehub.CASHost+"/v1/reconstructions/"+hash, xetLinks(resp.Header)["xet-reconstruction-info"])
	}
	tok2, err := f.xetClient(f.w2).GetToken(f.g.URL + "/api/models/org/base/xet-read-token/main")
	require.NoError(t, err)
	assert.Equal(t, f.g.URL+"/xet/cas", tok2.CasURL)
	assertNoSecretsLeaked(t, f.g, f.hub, true)
}

// Under require_key: gated a worker without a key passes the edge in proxy
// mode but is served anonymously: no Xet hints, no gateway Xet token, and
// the intercepted CAS host answers it nothing without one.
func TestXetInProxyModeUnderGatedGivesAKeylessWorkerNothing(t *testing.T) {
	f := newXetFixtureOn(t, "serve", fakehub.Options{Token: operatorToken, PublicNames: true}, func(c *config.Config) {
		c.Clients.RequireKey = "gated"
	})
	anon, rec := f.proxyHTTP(t, "")
	anon.Transport.(*fullRecorder).rt.(*recordingTransport).rt.(*http.Transport).Proxy = http.ProxyURL(mustURL(t, f.g.URL))
	w1, _ := f.proxyHTTP(t, f.w1)
	resp, err := w1.Head("https://" + hubHost + "/org/base/resolve/main/model.bin")
	require.NoError(t, err)
	resp.Body.Close()
	hash := resp.Header.Get("X-Xet-Hash")
	require.Len(t, hash, 64, "a keyed worker is served Xet")

	resp, err = anon.Head("https://" + hubHost + "/org/base/resolve/main/model.bin")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Empty(t, resp.Header.Get("X-Xet-Hash"))
	assert.Empty(t, xetLinks(resp.Header))
	_, err = (&xetclient.Client{HTTP: anon}).GetToken("https://" + hubHost + "/api/models/org/base/xet-read-token/main")
	var se *xetclient.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusForbidden, se.Status, "no gateway token for a keyless worker")
	_, err = (&xetclient.Client{HTTP: anon}).Reconstruct("https://"+fakehub.CASHost, "", hash)
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusUnauthorized, se.Status)
	assert.NotContains(t, string(rec.bytes()), "mgx1.")
	assertNoSecretsLeaked(t, f.g, f.hub, true)
}

// upstream.resolve applies to a worker's tunnels too, and the CONNECT's
// pre-check and the tunnel's dial see the same override target under every
// spelling of the name and port: a private target is refused before the
// CONNECT is answered unless private targets are allowed, and then the
// override's target, never the name's DNS, is what the tunnel reaches.
func TestTunnelsToAnOverriddenNameMeetTheGuardAtItsTarget(t *testing.T) {
	tr := newTestHub(t, 1<<10)
	origin, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer origin.Close()
	accepted := make(chan struct{}, 16)
	go func() {
		for {
			c, err := origin.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			c.Close()
		}
	}()
	const name = "tunnel-target.test"
	override := func(c *config.Config) {
		c.Upstream.Resolve = config.Resolve{name + ":443": origin.Addr().String()}
	}
	spellings := []string{name + ":443", "TUNNEL-Target.test:443", name + ".:443", name + ":0443"}

	strict := startGateway(t, tr.hub, override)
	for _, target := range spellings {
		assert.Equal(t, "403", connectFrom(t, strict, "127.0.0.1", target), "%s: the private target is refused up front", target)
	}
	assert.Empty(t, accepted, "nothing reached the target")

	lax := startGateway(t, tr.hub, func(c *config.Config) { override(c); c.Proxy.AllowPrivateTargets = true })
	for _, target := range spellings {
		assert.Equal(t, "200", connectFrom(t, lax, "127.0.0.1", target), target)
		select {
		case <-accepted:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the tunnel did not reach the override's target", target)
		}
	}
	assertNoSecretsLeaked(t, strict, tr.hub, true)
	assertNoSecretsLeaked(t, lax, tr.hub, true)
}
