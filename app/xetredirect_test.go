package app

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The CAS calls carry the operator's Xet token; a redirect from https to
// plain http must not take it along in the clear.
func TestXetClientRefusesARedirectToPlainHTTP(t *testing.T) {
	var plainAuth []string
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		plainAuth = append(plainAuth, r.Header.Get("Authorization"))
		io.WriteString(w, "{}")
	}))
	defer plain.Close()
	cas := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+"/v1/reconstructions/x", http.StatusFound)
	}))
	defer cas.Close()
	client := &http.Client{Transport: cas.Client().Transport, CheckRedirect: xetRedirect}
	req, err := http.NewRequest(http.MethodGet, cas.URL+"/v1/reconstructions/x", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer xet-upstream-token")
	resp, err := client.Do(req)
	if resp != nil {
		resp.Body.Close()
	}
	assert.Error(t, err)
	assert.Empty(t, plainAuth, "the plain-http hop was sent")
}
