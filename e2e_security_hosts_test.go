package main

import (
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
}
