package clientauth

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
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
