package clientauth

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestGeneratedKeysAreFoundByTheirHashOnly(t *testing.T) {
	key, sha, err := Generate()
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(key, Prefix))
	sum := sha256.Sum256([]byte(key))
	assert.Equal(t, hex.EncodeToString(sum[:]), sha)
	other, _, _ := Generate()
	assert.NotEqual(t, key, other)

	files := map[string]string{"/run/k2": "  " + other + "\n"}
	ks, err := Load([]Spec{
		{Name: "one", KeySHA256: sha, Scopes: []string{ScopeHuggingFace}, Repos: []string{"org/*"}},
		{Name: "two", KeyFile: "/run/k2"},
	}, func(p string) ([]byte, error) {
		if v, ok := files[p]; ok {
			return []byte(v), nil
		}
		return nil, errors.New("no such file")
	})
	require.NoError(t, err)
	k, ok := ks.Lookup(key)
	require.True(t, ok)
	assert.Equal(t, "one", k.Name)
	assert.True(t, k.Allows(ScopeHuggingFace))
	assert.False(t, k.Allows(ScopeCivitAI))
	assert.True(t, k.AllowsRepo("org/model"))
	assert.False(t, k.AllowsRepo("other/model"))
	assert.False(t, k.AllowsRepo("org/model/x"), "* does not cross a slash")
	k, ok = ks.Lookup(other)
	require.True(t, ok)
	assert.Equal(t, "two", k.Name)
	assert.True(t, k.Allows(ScopeCivitAI), "no scopes: every scope")
	_, ok = ks.Lookup(Prefix + "unknown")
	assert.False(t, ok)
	assert.True(t, ks.Known("two"))
	assert.False(t, ks.Known("three"), "by name: what a Xet token issued for a key is checked against")
	assert.True(t, ks.AllowsHubRepo("one", "org/model"))
	assert.False(t, ks.AllowsHubRepo("one", "other/model"), "the key's repos, as configured now")
	assert.True(t, ks.AllowsHubRepo("two", "datasets/x/y"))
	assert.False(t, ks.AllowsHubRepo("three", "org/model"), "an unknown key")
	civ, err := Load([]Spec{{Name: "c", KeySHA256: sha, Scopes: []string{ScopeCivitAI}}}, nil)
	require.NoError(t, err)
	assert.False(t, civ.AllowsHubRepo("c", "org/model"), "a key without the huggingface scope")

	_, err = Load([]Spec{{Name: "bad", KeyFile: "/missing"}}, func(string) ([]byte, error) { return nil, errors.New("nope") })
	assert.Error(t, err)
}

func TestWorkersPresentKeysTheWayTheirToolsSendTokens(t *testing.T) {
	r, _ := http.NewRequest(http.MethodGet, "http://gate/org/m/resolve/main/x", nil)
	r.Header.Set("Authorization", "Bearer mgw_abc")
	k, ok := Take(r)
	assert.True(t, ok)
	assert.Equal(t, "mgw_abc", k)
	assert.Empty(t, r.Header.Get("Authorization"), "the key is removed from the request")

	r, _ = http.NewRequest(http.MethodGet, "http://gate/api/download/models/1?type=Model&token=mgw_def", nil)
	k, ok = Take(r)
	assert.True(t, ok)
	assert.Equal(t, "mgw_def", k)
	assert.Equal(t, "type=Model", r.URL.RawQuery)

	r, _ = http.NewRequest(http.MethodGet, "http://gate/x", nil)
	r.Header.Set("Authorization", "Bearer hf_worker_own_token")
	_, ok = Take(r)
	assert.False(t, ok, "a Hub token is not a worker key")
	assert.NotEmpty(t, r.Header.Get("Authorization"), "and is left alone")

	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("render-01:mgw_xyz"))
	k, ok = FromProxyAuthorization(basic)
	assert.True(t, ok)
	assert.Equal(t, "mgw_xyz", k)
	_, ok = FromProxyAuthorization("Basic " + base64.StdEncoding.EncodeToString([]byte("user:password")))
	assert.False(t, ok)
}

func TestTakePath(t *testing.T) {
	tests := []struct {
		path, key, rest, rawRest string
		ok                       bool
	}{
		{"/visionatrix/key/mgw_abc/models_catalog.json", "mgw_abc", "/visionatrix/models_catalog.json", "", true},
		{"/visionatrix/key/mgw_abc/org/m/resolve/refs%2Fpr%2F1/a%20b.bin", "mgw_abc", "/org/m/resolve/refs/pr/1/a b.bin", "/org/m/resolve/refs%2Fpr%2F1/a%20b.bin", true},
		{"/visionatrix/key/mgw_abc/api/download/models/1", "mgw_abc", "/api/download/models/1", "", true},
		{"/visionatrix/key/hf_x/org/m/resolve/main/f", "hf_x", "/org/m/resolve/main/f", "", true},
		{"/visionatrix/models_catalog.json", "", "/visionatrix/models_catalog.json", "", false},
		{"/org/visionatrix/key/mgw_abc/x", "", "/org/visionatrix/key/mgw_abc/x", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, tt.path+"?x=1", nil)
			key, prefix, ok := TakePath(r)
			assert.Equal(t, tt.ok, ok)
			assert.Equal(t, tt.key, key)
			assert.Equal(t, tt.rest, r.URL.Path)
			assert.Equal(t, tt.rawRest, r.URL.RawPath)
			assert.Equal(t, "x=1", r.URL.RawQuery)
			if ok {
				assert.Equal(t, PathKeyPrefix+tt.key, prefix)
			}
		})
	}
}

func TestPresents(t *testing.T) {
	basic := func(user, pass string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	}
	tests := []struct {
		name   string
		url    string
		header http.Header
		want   bool
	}{
		{"bearer worker key", "/a", http.Header{"Authorization": {"Bearer mgw_x"}}, true},
		{"bearer admin key", "/a", http.Header{"Authorization": {"Bearer mga_x"}}, true},
		{"proxy basic", "/a", http.Header{"Proxy-Authorization": {basic("w", "mgw_x")}}, true},
		{"token parameter", "/a?TOKEN=mgw_x", nil, true},
		{"key path", "/visionatrix/key/whatever/models_catalog.json", nil, true},
		{"own hub token", "/a", http.Header{"Authorization": {"Bearer hf_abc"}}, false},
		{"proxy basic without key", "/a", http.Header{"Proxy-Authorization": {basic("w", "pw")}}, false},
		{"nothing", "/visionatrix/models_catalog.json?token=abc", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, tt.url, nil)
			for k, v := range tt.header {
				r.Header[k] = v
			}
			assert.Equal(t, tt.want, Presents(r))
		})
	}
}
