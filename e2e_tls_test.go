package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/config"
)

// runCurl runs the real curl with args (no proxy variables of the test
// runner's) and returns the status code, headers and body.
func runCurl(t *testing.T, g *gatewayUnderTest, args ...string) (int, string, []byte) {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed (.ci/run installs it)")
	}
	dir := t.TempDir()
	out, hdr := filepath.Join(dir, "body"), filepath.Join(dir, "headers")
	args = append([]string{"-sS", "--max-time", "60", "-o", out, "-D", hdr, "-w", "%{http_code} %{http_connect}", "--noproxy", ""}, args...)
	cmd := exec.Command("curl", args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	// Exit 56: the proxy refused the CONNECT, whose status is reported.
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 56 {
		require.NoError(t, err, "curl %s: %s", strings.Join(args, " "), stderr.String())
	}
	final, connect, _ := strings.Cut(string(stdout), " ")
	if final == "000" {
		final = connect
	}
	code, err := strconv.Atoi(final)
	require.NoError(t, err, string(stdout))
	headers, _ := os.ReadFile(hdr)
	body, _ := os.ReadFile(out)
	g.Received.Write(headers)
	g.Received.Write(body)
	return code, string(headers), body
}

// tlsFixture is a gateway with listen_tls on (its certificate issued from
// its own CA) and one worker key.
func tlsFixture(t *testing.T, requireTLS bool) (*testRepos, *gatewayUnderTest, string) {
	t.Helper()
	tr := newTestHub(t, 2<<20+7)
	key, sha, err := clientauth.Generate()
	require.NoError(t, err)
	g := startGateway(t, tr.hub, func(c *config.Config) {
		c.ListenTLS = "127.0.0.1:0"
		c.Clients.Keys = []config.ClientKey{{Name: "render", KeySHA256: sha}}
		c.Clients.RequireTLSForKeys = requireTLS
	})
	require.NotEmpty(t, g.TLSURL)
	g.Received = newLeakScanner(operatorToken, workerToken, civitaiKey, civitaiWorkerKey, key)
	return tr, g, key
}

func TestTLSListenerServesMirrorAndHTTPSProxyModeToCurl(t *testing.T) {
	tr, g, key := tlsFixture(t, false)
	ca := g.caFile()
	path := "/org/model/resolve/main/model.safetensors"

	// Mirror mode, HF_ENDPOINT=https://gate:8443: the gateway's own CA
	// (the one proxy-mode workers trust already) vouches for it.
	code, hdr, body := runCurl(t, g, "--cacert", ca, "-H", "Authorization: Bearer "+key, g.TLSURL+path)
	require.Equal(t, 200, code, hdr)
	assert.Equal(t, tr.big, body)
	assert.Contains(t, g.Logs.String(), "worker=render")

	// A certificate nobody vouched for is refused by curl: it is the CA
	// that makes it work, not a lax client.
	cmd := exec.Command("curl", "-sS", "--noproxy", "", "-o", "/dev/null", g.TLSURL+path)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	assert.Error(t, cmd.Run(), "curl without --cacert must not trust the gateway")

	// HTTPS-proxy mode, HTTPS_PROXY=https://worker:KEY@gate:8443: TLS to
	// the proxy, CONNECT inside it, then TLS to the intercepted Hub.
	code, hdr, body = runCurl(t, g, "--proxy", g.TLSURL, "--proxy-cacert", ca, "--proxy-user", "render:"+key,
		"--cacert", ca, "https://huggingface.co"+path)
	require.Equal(t, 200, code, hdr)
	assert.Equal(t, tr.big, body)
	assert.Contains(t, g.Logs.String(), `mode=mitm`)

	// The admin-style endpoints and the plain listener serve the same.
	code, _, body = runCurl(t, g, "--cacert", ca, g.TLSURL+"/ca.pem")
	assert.Equal(t, 200, code)
	pem, err := os.ReadFile(ca)
	require.NoError(t, err)
	assert.Equal(t, pem, body)
	code, _, _ = runCurl(t, g, g.URL+path, "-H", "Authorization: Bearer "+key)
	assert.Equal(t, 200, code)
}

// clients.require_tls_for_keys: a key over plain HTTP is refused unless
// the client is on loopback. "Loopback" is a client connecting from the
// loopback address it connects to; curl bound to 127.0.0.2 stands in for
// a remote worker.
func TestRequireTLSForKeysRefusesKeysInTheClear(t *testing.T) {
	_, g, key := tlsFixture(t, true)
	ca := g.caFile()
	path := "/org/model/resolve/main/config.json"
	remote := []string{"--interface", "127.0.0.2"}
	bearer := []string{"-H", "Authorization: Bearer " + key}
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"remote, plain, key as bearer", append(append(remote, bearer...), g.URL+path), 403},
		{"remote, plain, key as token=", append(remote, g.URL+path+"?token="+key), 403},
		{"remote, plain, key in the path", append(remote, g.URL+"/visionatrix/key/"+key+path), 403},
		{"remote, plain, admin key", append(remote, "-H", "Authorization: Bearer mga_0123456789abcdef", g.URL+"/"), 403},
		{"remote, plain proxy, key", append(remote, "--proxy", g.URL, "--proxy-user", "render:"+key, "--cacert", ca, "https://huggingface.co"+path), 403},
		{"remote, plain, no key", append(remote, g.URL+path), 200},
		{"remote, TLS, key", append(append(remote, bearer...), "--cacert", ca, g.TLSURL+path), 200},
		{"remote, TLS proxy, key", append(remote, "--proxy", g.TLSURL, "--proxy-cacert", ca, "--proxy-user", "render:"+key, "--cacert", ca, "https://huggingface.co"+path), 200},
		{"loopback, plain, key", append(bearer, g.URL+path), 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, hdr, _ := runCurl(t, g, tt.args...)
			assert.Equal(t, tt.want, code, hdr)
		})
	}
	assert.Contains(t, g.Logs.String(), "remote=127.0.0.2:")
}
