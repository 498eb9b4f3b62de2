package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
)

// runHFJSSnapshot runs snapshot.mjs (the real @huggingface/hub
// snapshotDownload) against the gateway in mode "mirror" (hubUrl is the
// gateway) or "proxy" (the Hub's own address through HTTPS_PROXY, undici's
// EnvHttpProxyAgent, the gateway's CA in NODE_EXTRA_CA_CERTS). It returns
// the snapshot directory and everything the client received (status line
// and URL, headers, bodies), which also goes through the leak scanner.
func runHFJSSnapshot(t *testing.T, node string, g *gatewayUnderTest, mode, repo string) (string, []byte) {
	t.Helper()
	work := t.TempDir()
	record := filepath.Join(work, "received")
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + work, "MODE=" + mode,
		"REPO=" + repo, "CACHE_DIR=" + filepath.Join(work, "cache"), "RECORD=" + record,
	}
	if mode == "mirror" {
		env = append(env, "HUB_URL="+g.URL)
	} else {
		env = append(env, "HUB_URL=https://"+hubHost, "HTTPS_PROXY="+g.URL, "HTTP_PROXY="+g.URL,
			"NO_PROXY=", "NODE_EXTRA_CA_CERTS="+g.caFile())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "snapshot.mjs")
	cmd.Dir = hfjsDir
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	received, _ := os.ReadFile(record)
	g.Received.stream().Write(received) // decrypted, in proxy mode
	require.NoError(t, err, "snapshot.mjs: %s", stderr.String())
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], received
}

// TestHuggingFaceJSDownloadsOverXetInBothModes: with huggingface.xet:
// serve, the real @huggingface/hub takes its Xet path (XetBlob: the
// file-info answer, the token route, a reconstruction, xorb ranges) through
// the gateway, in mirror mode and in proxy mode, for a gated repo without
// a token on the worker. The large file spans several of the fake's xorbs.
// Every file arrives byte for byte; the Xet files never travel as a plain
// download (not from the Xet bridge, not as a blob the gateway fills);
// the fake CAS, under its real names, was asked by the gateway only; and
// no upstream token, the Hub's or a Xet one, reaches the worker.
func TestHuggingFaceJSDownloadsOverXetInBothModes(t *testing.T) {
	skipIfShort(t, "runs Node")
	node := requireHFJS(t)
	hub := fakehub.New(t, fakehub.Options{Token: operatorToken, PublicNames: true})
	commit := fakehub.Commit("hfjs-xet")
	big := fakehub.RandomData(60, 5*fakehub.XetXorbChunks*fakehub.XetChunkSize+3*fakehub.XetChunkSize+11)
	files := []fakehub.File{
		{Path: "config.json", Data: []byte(`{"model_type":"llama"}`)},
		{Path: "model.safetensors", Data: big, Xet: true},
		{Path: "small/part.bin", Data: fakehub.RandomData(61, 3*fakehub.XetChunkSize+1), Xet: true},
	}
	hub.AddRepo(fakehub.Repo{ID: "org/gated-xet", Gated: true, Refs: map[string]string{"main": commit},
		Commits: map[string][]fakehub.File{commit: files}})
	g := startGateway(t, hub, func(c *config.Config) { c.HuggingFace.Xet = config.XetServe })

	for _, mode := range []string{"mirror", "proxy"} {
		t.Run(mode, func(t *testing.T) {
			dir, received := runHFJSSnapshot(t, node, g, mode, "org/gated-xet")
			require.True(t, strings.Contains(dir, commit), "the snapshot is at the commit: %s", dir)
			for _, f := range files {
				b, err := os.ReadFile(filepath.Join(dir, f.Path))
				require.NoError(t, err)
				assert.True(t, bytes.Equal(f.Data, b), "%s differs (%d bytes, want %d)", f.Path, len(b), len(f.Data))
			}
			// The client's own record of what it fetched: the Xet file
			// info, the gateway's token, reconstructions and xorbs, all
			// from the gateway (in proxy mode, under the Hub's names).
			rec := string(received)
			// (Checked with strings.Contains: the record holds the files'
			// bytes, too long for a failure message.)
			assert.True(t, strings.Contains(rec, "application/vnd.xet-fileinfo+json"), "the Xet file-info answer")
			assert.True(t, strings.Contains(rec, `"accessToken":"mgx1.`), "a gateway-issued Xet token")
			cas, xorbs := g.URL+"/xet/cas/v2/reconstructions/", g.URL+"/xet/cas/xorbs/"
			if mode == "proxy" {
				cas, xorbs = "https://"+fakehub.CASHost+"/v2/reconstructions/", "https://"+fakehub.TransferHost+"/xorbs/default/"
				assert.Contains(t, g.Logs.String(), "mode=mitm", "the client went through the proxy")
			}
			assert.True(t, strings.Contains(rec, cas), "a reconstruction from the gateway (%s)", cas)
			assert.GreaterOrEqual(t, strings.Count(rec, xorbs), 2, "xorb ranges from the gateway")
			assert.False(t, strings.Contains(rec, "xet-jwt-"), "no upstream Xet token")
		})
	}

	for _, f := range files[1:] {
		sha := fakehub.SHA256Hex(f.Data)
		assert.Zero(t, hub.CDNBodyFetches(sha), "%s never came through the Xet bridge", f.Path)
		assert.False(t, g.hasBlob(t, sha), "%s was never a plain download through the gateway", f.Path)
	}
	bigHash := fakehub.XetHashOf(big)
	require.Greater(t, len(hub.XorbHashes(bigHash)), 2, "the large file spans several xorbs")
	for _, x := range hub.XorbHashes(bigHash) {
		assert.Equal(t, 1, hub.XorbFetches(x), "each xorb crossed the upstream once for both modes")
	}
	for _, r := range hub.Requests() {
		if r.Server == "cas" {
			assert.Contains(t, []string{fakehub.CASHost, fakehub.TransferHost}, r.Host, "the CAS was reached under its names")
		}
	}
	for _, a := range hubAuthHeaders(hub) {
		assert.Equal(t, "Bearer "+operatorToken, a, "the Hub saw only the operator's token")
	}
	require.NotEmpty(t, hub.XetTokens(), "the gateway used upstream Xet tokens")
	assertNoSecretsLeaked(t, g, hub, true)
}
