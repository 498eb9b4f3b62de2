package admin

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/clientauth"
)

// newServer builds an admin server on a real index and store.
func newServer(t *testing.T, keys []clientauth.Spec) *Server {
	t.Helper()
	dir := t.TempDir()
	idx, err := cache.OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	t.Cleanup(func() { idx.Close() })
	store, err := cache.Open(cache.Options{Dir: dir, Index: idx})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	ks, err := clientauth.LoadAdmin(keys, nil)
	require.NoError(t, err)
	s, err := New(Options{Index: idx, Store: store, Keys: func() *clientauth.Keys { return ks }})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func TestAdminAccessByAddressAndKey(t *testing.T) {
	const key = "mga_0123456789abcdef0123456789abcdef0123456789abcdef"
	sum := sha256.Sum256([]byte(key))
	withKeys := newServer(t, []clientauth.Spec{{Name: "ops", KeySHA256: hex.EncodeToString(sum[:])}})
	noKeys := newServer(t, nil)
	tests := []struct {
		name   string
		s      *Server
		remote string
		auth   string
		path   string
		want   int
	}{
		{"no keys: loopback is served", noKeys, "127.0.0.1:5000", "", "/admin/v1/status", http.StatusOK},
		{"no keys: v6 loopback is served", noKeys, "[::1]:5000", "", "/admin/v1/status", http.StatusOK},
		{"no keys: another address is refused", noKeys, "10.0.0.5:5000", "", "/admin/v1/status", http.StatusForbidden},
		{"no keys: a key is refused", noKeys, "127.0.0.1:5000", "Bearer " + key, "/admin/v1/status", http.StatusUnauthorized},
		{"no keys: the page is open to the admin networks", noKeys, "10.0.0.5:5000", "", "/", http.StatusOK},
		{"keys: another address with the key", withKeys, "10.0.0.5:5000", "Bearer " + key, "/admin/v1/status", http.StatusOK},
		{"keys: loopback without the key", withKeys, "127.0.0.1:5000", "", "/admin/v1/status", http.StatusUnauthorized},
		{"keys: a worker key", withKeys, "127.0.0.1:5000", "Bearer mgw_0123456789abcdef", "/admin/v1/status", http.StatusForbidden},
		{"bad job spec is a 400", noKeys, "127.0.0.1:5000", "", "/admin/v1/jobs", http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := http.MethodGet
			var body *httptest.ResponseRecorder = httptest.NewRecorder()
			r := httptest.NewRequest(method, tt.path, nil)
			if tt.path == "/admin/v1/jobs" {
				r = httptest.NewRequest(http.MethodPost, tt.path, jsonBody(`{"spec":"hf:org/../x"}`))
			}
			r.RemoteAddr = tt.remote
			if tt.auth != "" {
				r.Header.Set("Authorization", tt.auth)
			}
			tt.s.ServeHTTP(body, r)
			assert.Equal(t, tt.want, body.Code, body.Body.String())
		})
	}
}
