package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/internal/fakehub"
)

// buildGateway compiles this package into a binary for tests that need a
// real process (to kill it).
func buildGateway(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "modelgate")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, string(out))
	return bin
}

// gatewayProcess is the real binary running against a fake Hub.
type gatewayProcess struct {
	cmd  *exec.Cmd
	url  string
	logs *syncBuffer
}

var listeningRe = regexp.MustCompile(`msg="modelgate listening" addr=(\S+)`)

func startProcess(t *testing.T, bin, dataDir string, hub *fakehub.Hub, extraEnv ...string) *gatewayProcess {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Dir = t.TempDir() // no config.yaml here: the embedded default applies
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"MODELGATE_LISTEN=127.0.0.1:0",
		"MODELGATE_DATA_DIR=" + dataDir,
		"MODELGATE_HUGGINGFACE_ENDPOINT=" + hub.URL(),
		"MODELGATE_UPSTREAM_CA_FILE=" + hub.CAFile(),
		"MODELGATE_UPSTREAM_TIMEOUT=5s",
		"MODELGATE_CACHE_MIN_FREE=0",
		"MODELGATE_UPSTREAM_PRIVATE_HOSTS=" + hostPort(hub.CDNURL()),
	}, extraEnv...)
	if !slices.ContainsFunc(extraEnv, func(e string) bool { return strings.HasPrefix(e, "MODELGATE_HUGGINGFACE_TOKEN") }) {
		cmd.Env = append(cmd.Env, "MODELGATE_HUGGINGFACE_TOKEN="+operatorToken)
	}
	return runProcess(t, cmd)
}

// runProcess starts cmd, a gateway binary, collects its log and waits for
// it to listen; cleanup kills it if the test has not stopped it.
func runProcess(t *testing.T, cmd *exec.Cmd) *gatewayProcess {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &gatewayProcess{cmd: cmd, logs: &syncBuffer{}}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.logs.Write([]byte(line + "\n"))
			if m := listeningRe.FindStringSubmatch(line); m != nil {
				addr <- m[1]
			}
		}
	}()
	select {
	case a := <-addr:
		p.url = "http://" + a
	case <-time.After(20 * time.Second):
		t.Fatalf("gateway did not start: %s", p.logs.String())
	}
	return p
}

func (p *gatewayProcess) metric(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get(p.url + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

func TestKill9DuringFillsThenRestartServesOnlyVerifiedBlobs(t *testing.T) {
	skipIfShort(t, "builds and runs the gateway binary")
	bin := buildGateway(t)
	hub := fakehub.New(t, fakehub.Options{Token: operatorToken})
	commit := fakehub.Commit("crash")
	var files []fakehub.File
	for i := range 3 {
		files = append(files, fakehub.File{Path: fmt.Sprintf("shard-%d.bin", i), Data: fakehub.RandomData(int64(100+i), 8<<20), LFS: true})
	}
	hub.AddRepo(fakehub.Repo{ID: "org/crash", Refs: map[string]string{"main": commit}, Commits: map[string][]fakehub.File{commit: files}})
	var releases []func()
	for _, f := range files {
		releases = append(releases, hub.GateBlob(fakehub.SHA256Hex(f.Data), 3<<20))
	}
	dataDir := t.TempDir()

	// Several fills in flight, each stalled 3 MiB in, then SIGKILL.
	p := startProcess(t, bin, dataDir, hub)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"/org/crash/resolve/main/"+f.Path, nil)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	require.Eventually(t, func() bool { return p.metric(t, "modelgate_fills_in_flight") == 3 }, 10*time.Second, 20*time.Millisecond)
	// Each fill's first bytes are on disk (the gate holds them at 3 MiB).
	require.Eventually(t, func() bool {
		partials, _ := os.ReadDir(filepath.Join(dataDir, "tmp"))
		landed := 0
		for _, p := range partials {
			if fi, err := p.Info(); err == nil && fi.Size() > 0 {
				landed++
			}
		}
		return landed == 3
	}, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	p.cmd.Wait()
	cancel()
	wg.Wait()
	for _, release := range releases {
		release()
	}
	partials, _ := os.ReadDir(filepath.Join(dataDir, "tmp"))
	require.Len(t, partials, 3, "the killed fills left their partial files")

	// Restart on the same data_dir: every blob served is verified, and the
	// fills resume from the bytes the killed run left.
	before := len(hub.Requests())
	p2 := startProcess(t, bin, dataDir, hub)
	for _, f := range files {
		resp, err := http.Get(p2.url + "/org/crash/resolve/main/" + f.Path)
		require.NoError(t, err)
		h := sha256.New()
		io.Copy(h, resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, fakehub.SHA256Hex(f.Data), hex.EncodeToString(h.Sum(nil)), f.Path)
	}
	resumed := 0
	for _, r := range hub.Requests()[before:] {
		if r.Server == "cdn" && strings.HasPrefix(r.Header.Get("Range"), "bytes=") && r.Header.Get("Range") != "bytes=0-" {
			resumed++
		}
	}
	assert.Equal(t, 3, resumed, "each fill resumed with a Range from its partial file")
	// A client has its last byte once the blob verified; the publish
	// (fsync, rename, index) finishes just after.
	require.Eventually(t, func() bool { return p2.metric(t, "modelgate_cache_blobs") == 3 }, 10*time.Second, 10*time.Millisecond)
	assert.Contains(t, p2.logs.String(), "resuming a fill from the bytes an earlier run left")
	require.Eventually(t, func() bool {
		tmp, _ := os.ReadDir(filepath.Join(dataDir, "tmp"))
		return len(tmp) == 0
	}, 10*time.Second, 10*time.Millisecond, "no temp file left")

	// A second gateway on the same data_dir is refused, clearly.
	cmd := exec.Command(bin)
	cmd.Dir = t.TempDir()
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "MODELGATE_LISTEN=127.0.0.1:0", "MODELGATE_DATA_DIR=" + dataDir}
	out, err := cmd.CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), "in use by another process")
	assert.True(t, bytes.Contains(out, []byte("data_dir")))
}

func TestSIGHUPRotatesTheTokenWhileDownloadsContinue(t *testing.T) {
	skipIfShort(t, "builds and runs the gateway binary")
	bin := buildGateway(t)
	const rotated = "hf_ROTATEDtoken0123456789abcdefghij"
	hub := fakehub.New(t, fakehub.Options{Token: operatorToken, OtherTokens: []string{rotated}})
	commit := fakehub.Commit("rotate")
	gated := fakehub.RandomData(300, 4<<20)
	hub.AddRepo(fakehub.Repo{ID: "org/gated", Gated: true, Refs: map[string]string{"main": commit},
		Commits: map[string][]fakehub.File{commit: {{Path: "w.bin", Data: gated, LFS: true}}}})
	hub.AddRepo(fakehub.Repo{ID: "org/public", Refs: map[string]string{"main": commit},
		Commits: map[string][]fakehub.File{commit: {{Path: "c.json", Data: []byte("{}")}}}})
	tokenFile := filepath.Join(t.TempDir(), "hf_token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(operatorToken+"\n"), 0o600))
	release := hub.GateBlob(fakehub.SHA256Hex(gated), 1<<20)

	p := startProcess(t, bin, t.TempDir(), hub, "MODELGATE_HUGGINGFACE_TOKEN_FILE="+tokenFile)
	body := make(chan []byte, 1)
	go func() {
		resp, err := http.Get(p.url + "/org/gated/resolve/main/w.bin")
		if err != nil {
			body <- nil
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body <- b
	}()
	require.Eventually(t, func() bool { return p.metric(t, "modelgate_fills_in_flight") == 1 }, 10*time.Second, 20*time.Millisecond)

	require.NoError(t, os.WriteFile(tokenFile, []byte(rotated+"\n"), 0o600))
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { return strings.Contains(p.logs.String(), "credentials reloaded") }, 5*time.Second, 10*time.Millisecond)
	release()
	assert.True(t, bytes.Equal(gated, <-body), "the download in flight completed")

	before := len(hub.Requests())
	resp, err := http.Get(p.url + "/org/public/resolve/main/c.json")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var auth []string
	for _, r := range hub.Requests()[before:] {
		if r.Server == "hub" {
			auth = append(auth, r.Header.Get("Authorization"))
		}
	}
	require.NotEmpty(t, auth)
	for _, a := range auth {
		assert.Equal(t, "Bearer "+rotated, a, "the next request uses the new token")
	}
	assert.NotContains(t, p.logs.String(), rotated)
	assert.NotContains(t, p.logs.String(), operatorToken)
}
