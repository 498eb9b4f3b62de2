package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/clientauth"
)

// POST /admin/v1/reload does what SIGHUP does, on the real binary with a
// config file: a changed worker key takes effect, and a broken file keeps
// the current configuration and answers an error.
func TestAdminReloadSwapsWorkerKeysAndKeepsThemOnABrokenConfig(t *testing.T) {
	skipIfShort(t, "builds and runs the gateway binary")
	bin := buildGateway(t)
	tr := newTestHub(t, 1<<10)
	dir := t.TempDir()
	oldKey, oldSHA, err := clientauth.Generate()
	require.NoError(t, err)
	newKey, newSHA, err := clientauth.Generate()
	require.NoError(t, err)
	adminSecret, adminSHA, err := clientauth.GenerateAdmin()
	require.NoError(t, err)
	config := func(workerSHA string) string {
		return fmt.Sprintf(`listen: 127.0.0.1:0
data_dir: %s
cache: {min_free: 0}
huggingface: {endpoint: %q, token: %q}
upstream: {ca_file: %q, timeout: 5s, private_hosts: [%q]}
clients:
  require_key: all
  keys:
    - {name: render-01, key_sha256: %q}
admin:
  keys:
    - {name: ops, key_sha256: %q}
`, dir+"/data", tr.hub.URL(), operatorToken, tr.hub.CAFile(), hostPort(tr.hub.CDNURL()), workerSHA, adminSHA)
	}
	p := startConfiguredProcess(t, bin, config(oldSHA))
	cfgPath := p.cmd.Args[2]

	do := func(method, path, key string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, p.url+path, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}
	const file = "/org/model/resolve/main/config.json"
	download := func(key string) int {
		t.Helper()
		code, _ := do(http.MethodGet, file, key)
		return code
	}
	require.Equal(t, http.StatusOK, download(oldKey))
	require.Equal(t, http.StatusUnauthorized, download(newKey))

	// Replace the worker key in the file; a worker key cannot reload.
	require.NoError(t, os.WriteFile(cfgPath, []byte(config(newSHA)), 0o600))
	code, body := do(http.MethodPost, "/admin/v1/reload", oldKey)
	require.Equal(t, http.StatusForbidden, code, body)
	assert.Equal(t, http.StatusOK, download(oldKey), "a refused reload changes nothing")

	code, body = do(http.MethodPost, "/admin/v1/reload", adminSecret)
	require.Equal(t, http.StatusOK, code, body)
	var ok map[string]string
	require.NoError(t, json.Unmarshal([]byte(body), &ok))
	assert.Equal(t, "reloaded", ok["status"])
	assert.Equal(t, http.StatusUnauthorized, download(oldKey), "the replaced key must be refused after the reload")
	assert.Equal(t, http.StatusOK, download(newKey), "the new key must be accepted after the reload")

	// A broken file (a key_sha256 that is not a digest, then YAML that
	// does not parse): an error, and the current keys stay.
	for _, broken := range []string{
		config("not-a-sha256"),
		strings.Replace(config(oldSHA), "clients:\n", "clients: [\n", 1),
		// A secret pasted where a number belongs must not come back.
		strings.Replace(config(oldSHA), "min_free: 0", "min_free: "+operatorToken, 1),
	} {
		require.NoError(t, os.WriteFile(cfgPath, []byte(broken), 0o600))
		code, body = do(http.MethodPost, "/admin/v1/reload", adminSecret)
		assert.Equal(t, http.StatusInternalServerError, code, body)
		var e map[string]string
		require.NoError(t, json.Unmarshal([]byte(body), &e))
		assert.Contains(t, e["error"], "the current configuration stays")
		assert.NotContains(t, body, operatorToken[3:], "the error names no secret")
		assert.Equal(t, http.StatusOK, download(newKey), "a failed reload keeps the current keys")
		assert.Equal(t, http.StatusUnauthorized, download(oldKey))
	}

	logs := p.logs.String()
	assert.Contains(t, logs, "reloading credentials failed")
	for _, s := range []string{oldKey, newKey, adminSecret, operatorToken} {
		assert.NotContains(t, logs, s)
		assert.NotContains(t, logs, s[4:])
	}
}
