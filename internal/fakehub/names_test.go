package fakehub

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// With PublicNames the CDN and the CAS stand for the Hub's real hosts: the
// redirects, Xet links, tokens and xorb URLs name them on port 443, their
// certificates verify under those names, and Resolve says where they are.
func TestPublicNames(t *testing.T) {
	h := New(t, Options{Token: opToken, PublicNames: true})
	c := Commit("names")
	lfs, xet := RandomData(80, 40<<10), RandomData(81, 3*XetChunkSize+5)
	h.AddRepo(Repo{ID: "org/named", Refs: map[string]string{"main": c}, Commits: map[string][]File{c: {
		{Path: "w.bin", Data: lfs, LFS: true},
		{Path: "x.bin", Data: xet, Xet: true},
	}}})
	cl := h.srv.Client(t)
	get := func(method, target string, hdr ...string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, target, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+opToken)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		if strings.Contains(target, ".hf.co/") {
			req.Header.Del("Authorization")
		}
		resp, err := cl.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, b
	}

	assert.Equal(t, map[string]string{
		CDNHost + ":443": h.Listeners()[0], XetBridgeHost + ":443": h.Listeners()[0],
		CASHost + ":443": h.Listeners()[1], TransferHost + ":443": h.Listeners()[1],
	}, h.Resolve())

	resp, _ := get(http.MethodHead, h.URL()+"/org/named/resolve/main/w.bin")
	require.Equal(t, http.StatusFound, resp.StatusCode)
	loc := resp.Header.Get("Location")
	assert.True(t, strings.HasPrefix(loc, "https://"+CDNHost+"/repos/"), loc)
	resp, body := get(http.MethodGet, loc)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, lfs, body)

	resp, _ = get(http.MethodHead, h.URL()+"/org/named/resolve/main/x.bin")
	require.Equal(t, http.StatusFound, resp.StatusCode)
	loc = resp.Header.Get("Location")
	assert.True(t, strings.HasPrefix(loc, "https://"+XetBridgeHost+"/xet-bridge-us/"), loc)
	assert.Contains(t, resp.Header.Get("Link"), "<https://"+CASHost+"/v1/reconstructions/")
	resp, body = get(http.MethodGet, loc)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, xet, body)

	resp, body = get(http.MethodGet, h.URL()+"/api/models/org/named/xet-read-token/main")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var tok struct {
		AccessToken string `json:"accessToken"`
		CasURL      string `json:"casUrl"`
	}
	require.NoError(t, json.Unmarshal(body, &tok))
	assert.Equal(t, "https://"+CASHost, tok.CasURL)
	resp, _ = get(http.MethodHead, h.URL()+"/org/named/resolve/main/x.bin")
	recon := tok.CasURL + "/v2/reconstructions/" + resp.Header.Get("X-Xet-Hash")
	req, _ := http.NewRequest(http.MethodGet, recon, nil)
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	r2, err := cl.Do(req)
	require.NoError(t, err)
	defer r2.Body.Close()
	require.Equal(t, http.StatusOK, r2.StatusCode)
	var rec struct {
		Xorbs map[string][]struct {
			URL string `json:"url"`
		} `json:"xorbs"`
	}
	require.NoError(t, json.NewDecoder(r2.Body).Decode(&rec))
	require.NotEmpty(t, rec.Xorbs)
	for _, fetches := range rec.Xorbs {
		for _, f := range fetches {
			u, err := url.Parse(f.URL)
			require.NoError(t, err)
			assert.Equal(t, TransferHost, u.Host, "xorbs come from the transfer host")
		}
	}
	assert.Positive(t, h.Count("cdn", http.MethodGet, "/repos/"))
}
