package main

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The leak search is what stands between a secret echoed to a worker and a
// green test run, so it is tested like any other feature: it must find a
// secret in each encoding, also when the secret is split across writes.
func TestLeakScannerFindsEveryFormOfASecret(t *testing.T) {
	const secret = "mgw_ECHOEDworkerKEY0123456789abcdef"
	tests := []struct {
		name   string
		writes []string
	}{
		{"raw", []string{"HTTP/1.1 200 OK\r\nX-Echo: " + secret + "\r\n\r\n"}},
		{"url-encoded", []string{"Location: /x?token=" + url.QueryEscape("Bearer "+secret)}},
		{"base64", []string{"X-Debug: " + base64.StdEncoding.EncodeToString([]byte(secret))}},
		{"base64url", []string{base64.URLEncoding.EncodeToString([]byte(secret))}},
		{"basic-style base64 of the bearer header", []string{base64.StdEncoding.EncodeToString([]byte("Bearer " + secret))}},
		{"split across writes", []string{"body " + secret[:10], secret[10:25], secret[25:] + " end"}},
		{"split one byte at a time", strings.Split(secret, "")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newLeakScanner(operatorToken)
			s.AddSecrets(secret)
			st := s.stream()
			for _, w := range tt.writes {
				st.Write([]byte(w))
			}
			leaks, scanned := s.Leaks()
			assert.NotEmpty(t, leaks, "the scanner missed the secret")
			assert.Positive(t, scanned)
		})
	}

	// Clean traffic, and two streams that each carry half of the secret,
	// are not a leak: streams do not share their carry-over.
	s := newLeakScanner(secret)
	a, b := s.stream(), s.stream()
	a.Write([]byte("nothing to see " + secret[:15]))
	b.Write([]byte(secret[15:] + " here"))
	leaks, _ := s.Leaks()
	assert.Empty(t, leaks)
}

// A gateway that echoed the worker key back (here: in a mirror-mode
// response header) must fail the leak search that ends every end-to-end
// test. The echo is a reverse proxy in front of the real gateway, reached
// through the same scanning relay every test's workers use, by a client
// that records nothing itself.
func TestLeakSearchCatchesAGatewayThatEchoesTheWorkerKey(t *testing.T) {
	kf := newKeyFixture(t, "false")
	target, err := url.Parse("http://" + kf.g.Addr)
	require.NoError(t, err)
	tests := []struct {
		name string
		echo func(auth string) string
	}{
		{"raw", func(a string) string { return a }},
		{"url-encoded", url.QueryEscape},
		{"base64", func(a string) string {
			return base64.StdEncoding.EncodeToString([]byte(strings.TrimPrefix(a, "Bearer ")))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rp := httputil.NewSingleHostReverseProxy(target)
			rp.ModifyResponse = func(resp *http.Response) error {
				resp.Header.Set("X-Debug-Auth", tt.echo(resp.Request.Header.Get("Authorization")))
				return nil
			}
			echo := httptest.NewServer(rp)
			defer echo.Close()

			// The fixture's gateway, seen through the echoing wrapper.
			leaky := *kf.g
			leaky.Received = newLeakScanner(kf.g.Received.secrets()...)
			relay, stopRelay := startScanningRelay(t, strings.TrimPrefix(echo.URL, "http://"), leaky.Received)
			defer stopRelay()
			leaky.URL = "http://" + relay

			req, err := http.NewRequest(http.MethodGet, leaky.URL+"/org/model/resolve/main/config.json", nil)
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+kf.render)
			resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode)

			leaks, _ := leakFindings(t, &leaky, kf.hub, true)
			assert.NotEmpty(t, leaks, "an echoed worker key passed the leak search")

			// The same request straight to the gateway is clean.
			resp, _ = kf.g.mustDo(t, http.MethodGet, "/org/model/resolve/main/config.json",
				http.Header{"Authorization": {"Bearer " + kf.render}})
			require.Equal(t, http.StatusOK, resp.StatusCode)
			leaks, _ = leakFindings(t, kf.g, kf.hub, true)
			assert.Empty(t, leaks)
		})
	}
}

// The log redactor sits on the serve path, so a secret a worker put where
// the gateway logs it (a token pasted into a repo id, a worker key as a
// file name) never reaches the logs. The request log names the path. (The
// secrets here are the worker's own, which answers may echo back to it, so
// they are not among the ones the worker's traffic is searched for.)
func TestSecretsInLoggedRequestPartsAreRedacted(t *testing.T) {
	const pastedToken = "hf_PASTEDintoAPATHabcdef0123456789"
	const pastedKey = "mgw_PASTEDasAFILEname0123456789abcdef"
	tr := newTestHub(t, 1<<10)
	g := startGateway(t, tr.hub, nil)
	for _, path := range []string{
		"/api/models/org/" + pastedToken,                 // a token where the repo name goes
		"/org/model/resolve/main/" + pastedKey + ".json", // a worker key as a file name
	} {
		resp, _ := g.mustDo(t, http.MethodGet, path, nil)
		assert.NotEqual(t, http.StatusOK, resp.StatusCode, path)
	}
	logs := g.Logs.String()
	require.Contains(t, logs, "path=/api/models/org/", "the request was logged")
	assert.Empty(t, findLeaks("logs", []byte(logs), pastedToken, pastedKey))
}
