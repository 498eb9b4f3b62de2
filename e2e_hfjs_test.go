package main

import (
	"bytes"
	"context"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/internal/fakehub"
)

// hfjsDir holds the pinned @huggingface/hub client and its driver script.
const hfjsDir = "clients/hfjs"

// requireHFJS returns the node binary, or skips the test with what is
// missing: Node (Debian's nodejs, >= 18.17 for the pinned undici 6) and the
// installed client (`npm ci` in clients/hfjs). .ci/run provides both.
func requireHFJS(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: the @huggingface/hub tests need Node >= 18.17 (.ci/run installs Debian's nodejs and npm)")
	}
	if _, err := os.Stat(filepath.Join(hfjsDir, "node_modules", "@huggingface", "hub", "package.json")); err != nil {
		t.Skipf("@huggingface/hub is not installed: run `npm ci` in %s (.ci/run does)", hfjsDir)
	}
	out, err := exec.Command(node, "-e", `const [a,b]=process.versions.node.split(".").map(Number);process.exit(a>18||(a==18&&b>=17)?0:1)`).CombinedOutput()
	if err != nil {
		t.Skipf("node is too old for the pinned undici (need >= 18.17): %s %v", out, err)
	}
	return node
}

// TestHuggingFaceJSSnapshotDownloadInBothModes runs the real
// @huggingface/hub snapshotDownload, as a Node worker without a token
// would, for a gated repository: in mirror mode (hubUrl is the gateway) and
// in proxy mode (the Hub's own address, HTTPS_PROXY, the gateway's CA in
// NODE_EXTRA_CA_CERTS). Every file must arrive byte for byte, each blob
// must cross the upstream once, and everything the client received is
// searched for the secrets.
func TestHuggingFaceJSSnapshotDownloadInBothModes(t *testing.T) {
	skipIfShort(t, "runs Node")
	node := requireHFJS(t)
	tr := newTestHub(t, 1<<10)
	commit := fakehub.Commit("hfjs")
	files := []fakehub.File{
		{Path: "config.json", Data: []byte(`{"model_type":"llama","hidden_size":4096}`)},
		{Path: "model.safetensors", Data: fakehub.RandomData(40, 3<<20+17), LFS: true},
		{Path: "xet/part.bin", Data: fakehub.RandomData(41, 1<<20), Xet: true},
		{Path: "tokenizer/vocab 1.txt", Data: []byte("hello\nworld\n")},
	}
	tr.hub.AddRepo(fakehub.Repo{ID: "org/gated-js", Gated: true, Refs: map[string]string{"main": commit},
		Commits: map[string][]fakehub.File{commit: files}})
	g := startGateway(t, tr.hub, nil)

	for _, mode := range []string{"mirror", "proxy"} {
		t.Run(mode, func(t *testing.T) {
			work := t.TempDir()
			record := filepath.Join(work, "received")
			env := []string{
				"PATH=" + os.Getenv("PATH"), "HOME=" + work, "MODE=" + mode,
				"REPO=org/gated-js", "CACHE_DIR=" + filepath.Join(work, "cache"), "RECORD=" + record,
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
			assert.Contains(t, string(received), commit, "the record holds the decrypted answers")
			if mode == "proxy" {
				assert.Contains(t, g.Logs.String(), "mode=mitm", "the client went through the proxy")
			}

			// The library logs its progress on stdout; the script prints the
			// snapshot directory last.
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			dir := lines[len(lines)-1]
			require.True(t, strings.Contains(dir, commit), "the snapshot is at the commit: %s", dir)
			var got []string
			require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					rel, _ := filepath.Rel(dir, p)
					got = append(got, filepath.ToSlash(rel))
				}
				return err
			}))
			var want []string
			for _, f := range files {
				want = append(want, f.Path)
				b, err := os.ReadFile(filepath.Join(dir, f.Path))
				require.NoError(t, err)
				assert.True(t, bytes.Equal(f.Data, b), "%s differs (%d bytes, want %d)", f.Path, len(b), len(f.Data))
			}
			assert.ElementsMatch(t, want, got)
		})
	}
	for _, f := range files {
		if f.LFS || f.Xet {
			assert.Equal(t, 1, tr.hub.CDNBodyFetches(fakehub.SHA256Hex(f.Data)), "%s crossed the upstream once", f.Path)
		}
	}
	assert.Positive(t, tr.hub.Count("cdn", http.MethodGet, "/xet-bridge-us/"), "the Xet file came through the Xet bridge")
	for _, a := range hubAuthHeaders(tr.hub) {
		assert.Equal(t, "Bearer "+operatorToken, a, "the Hub saw only the operator's token")
	}
	assertNoSecretsLeaked(t, g, tr.hub, true)
}
