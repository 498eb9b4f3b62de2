package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
)

// The tests here run the fake CDN and CAS under the Hub's real host names
// (fakehub.Options.PublicNames, certificates for those names), reached
// through the gateway's upstream.resolve: the *.hf.co routing, the
// interception of CDN hosts and the CDN-miss relay are exercised on hosts
// of their own, as in production.

type namedHub struct {
	hub                *fakehub.Hub
	commit             string
	held, miss         []byte // LFS files: one the test caches first, one it never does
	xet                []byte
	heldSHA, missSHA   string
	heldPath, missPath string
}

func newNamedHub(t *testing.T) *namedHub {
	t.Helper()
	n := &namedHub{
		hub:    fakehub.New(t, fakehub.Options{Token: operatorToken, OtherTokens: []string{workerToken}, PublicNames: true}),
		commit: fakehub.Commit("named"),
		held:   fakehub.RandomData(90, 1<<20+7),
		miss:   fakehub.RandomData(91, 512<<10+3),
		xet:    fakehub.RandomData(92, 5*fakehub.XetChunkSize+9),
	}
	n.heldSHA, n.missSHA = fakehub.SHA256Hex(n.held), fakehub.SHA256Hex(n.miss)
	n.heldPath, n.missPath = "held.bin", "not-held.bin"
	n.hub.AddRepo(fakehub.Repo{ID: "org/named", Refs: map[string]string{"main": n.commit}, Commits: map[string][]fakehub.File{n.commit: {
		{Path: "config.json", Data: []byte(`{"model_type":"named"}`)},
		{Path: n.heldPath, Data: n.held, LFS: true},
		{Path: n.missPath, Data: n.miss, LFS: true},
		{Path: "x.bin", Data: n.xet, Xet: true},
	}}})
	return n
}

// signedURL asks the fake Hub (with the operator's token, as a worker that
// got a CDN link elsewhere would have it) where a file redirects to.
func (n *namedHub) signedURL(t *testing.T, path string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodHead, n.hub.URL()+"/org/named/resolve/main/"+path, nil)
	req.Header.Set("Authorization", "Bearer "+operatorToken)
	c := &http.Client{
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: n.hub.CertPool()}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusFound, resp.StatusCode)
	return resp.Header.Get("Location")
}

// cdnRequests are the requests the fake CDN received for host.
func cdnRequests(hub *fakehub.Hub, host string) []fakehub.Request {
	var out []fakehub.Request
	for _, r := range hub.Requests() {
		if r.Server == "cdn" && strings.EqualFold(r.Host, host) {
			out = append(out, r)
		}
	}
	return out
}

// Mirror mode: the Hub redirects to its CDN and Xet bridge on hosts of
// their own; the gateway follows both through its name overrides, with TLS
// verified under those names, and never sends a credential there.
func TestMirrorFollowsTheCDNRedirectToItsOwnHost(t *testing.T) {
	n := newNamedHub(t)
	g := startGateway(t, n.hub, nil)

	for _, f := range []struct {
		path, host, prefix string
		data               []byte
	}{
		{n.heldPath, fakehub.CDNHost, "/repos/", n.held},
		{"x.bin", fakehub.XetBridgeHost, "/xet-bridge-us/", n.xet},
	} {
		resp, body := g.mustDo(t, http.MethodGet, "/org/named/resolve/main/"+f.path, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		assert.True(t, bytes.Equal(f.data, body), "%s differs", f.path)
		reqs := cdnRequests(n.hub, f.host)
		require.NotEmpty(t, reqs, "%s came from %s", f.path, f.host)
		for _, r := range reqs {
			assert.True(t, strings.HasPrefix(r.RequestURI, f.prefix), "%s: %s", f.host, r.RequestURI)
			assert.Empty(t, r.Header.Values("Authorization"), "no credential on the CDN")
		}
	}
	assert.Equal(t, 1, n.hub.CDNBodyFetches(fakehub.SHA256Hex(n.xet)), "the Xet file came through the bridge")
	assertNoSecretsLeaked(t, g, n.hub, true)
}

// Proxy mode: a worker behind HTTPS_PROXY fetching a signed CDN URL
// directly is served from the cache for a blob the gateway holds (and saw
// in a repo the worker may read), and otherwise relayed to the CDN's own
// host without any credential: not the worker's token, not its cookie, not
// the operator's token.
func TestProxyModeCDNHostHitAndRelayWithoutCredentials(t *testing.T) {
	requireCurl(t)
	n := newNamedHub(t)
	// Relays on a worker's behalf reach the CDN's loopback listener.
	g := startGateway(t, n.hub, func(c *config.Config) { c.Proxy.AllowPrivateTargets = true })
	const cookie = "session=COOKIEsecretVALUE4242"
	g.addSecrets(cookie)

	// The worker downloads one file the usual way: now the gateway holds
	// it and has seen it in org/named.
	code, hdr, body := g.curl(t, "https://"+hubHost+"/org/named/resolve/main/"+n.heldPath)
	require.Equal(t, http.StatusOK, code, hdr)
	require.True(t, bytes.Equal(n.held, body))
	require.Equal(t, 1, n.hub.CDNBodyFetches(n.heldSHA))

	heldURL, missURL := n.signedURL(t, n.heldPath), n.signedURL(t, n.missPath)
	require.True(t, strings.HasPrefix(heldURL, "https://"+fakehub.CDNHost+"/"), heldURL)

	code, hdr, body = g.curl(t, heldURL)
	require.Equal(t, http.StatusOK, code, hdr)
	assert.True(t, bytes.Equal(n.held, body), "the held blob, from the cache")
	assert.Equal(t, 1, n.hub.CDNBodyFetches(n.heldSHA), "served from the cache, not fetched again")

	before := len(cdnRequests(n.hub, fakehub.CDNHost))
	code, hdr, body = g.curl(t, missURL, "-H", "Authorization: Bearer "+workerToken, "-H", "Cookie: "+cookie)
	require.Equal(t, http.StatusOK, code, hdr)
	assert.True(t, bytes.Equal(n.miss, body), "the blob it does not hold, relayed")
	assert.Equal(t, 1, n.hub.CDNBodyFetches(n.missSHA), "relayed to the CDN once")
	assert.False(t, g.hasBlob(t, n.missSHA), "a relay is not a fill")
	relayed := cdnRequests(n.hub, fakehub.CDNHost)[before:]
	require.Len(t, relayed, 1, "the relay reached the CDN under its own name")
	assert.Empty(t, relayed[0].Header.Values("Authorization"))
	assert.Empty(t, relayed[0].Header.Values("Cookie"))
	assert.Contains(t, g.Logs.String(), "route=cdn")

	// Every byte the CDN received, searched for every secret: the worker's
	// token and cookie and the operator's token.
	assertNoLeak(t, "CDN traffic", cdnTraffic(n.hub), operatorToken, workerToken, cookie)
	assertNoSecretsLeaked(t, g, n.hub, true)
}

// The override is the gateway's, not the machine's: without it the CDN's
// real name does not resolve here, and the download fails rather than
// reaching anything else.
func TestWithoutTheOverrideTheCDNNameIsNotReached(t *testing.T) {
	n := newNamedHub(t)
	if _, err := net.DefaultResolver.LookupHost(context.Background(), fakehub.CDNHost); err == nil {
		t.Skip(fakehub.CDNHost + " resolves on this machine")
	}
	g := startGateway(t, n.hub, func(c *config.Config) { c.Upstream.Resolve = config.Resolve{} })
	resp, _ := g.mustDo(t, http.MethodGet, "/org/named/resolve/main/"+n.heldPath, nil)
	assert.GreaterOrEqual(t, resp.StatusCode, 500)
	assert.Zero(t, n.hub.CDNBodyFetches(n.heldSHA))
}
