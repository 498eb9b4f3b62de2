// Package versity runs a real S3 server, versitygw over a temp directory,
// on loopback for tests. Tests that need it skip, saying so, when the
// versitygw binary is not installed (.ci/run installs it:
// go install github.com/versity/versitygw/cmd/versitygw@v1.8.0).
package versity

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/stretchr/testify/require"
)

// Server is a running versitygw with one bucket.
type Server struct {
	Endpoint  string // http://127.0.0.1:PORT
	Addr      string // 127.0.0.1:PORT
	Bucket    string
	AccessKey string
	SecretKey string
	Dir       string // the posix backend's root: Dir/<bucket>/<key>
	cmd       *exec.Cmd
}

// Binary returns the versitygw binary's path, or "" when it is missing.
func Binary() string {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	for _, dir := range []string{os.Getenv("GOBIN"), filepath.Join(os.Getenv("HOME"), "go", "bin"), "/usr/local/bin"} {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, "versitygw")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	return ""
}

// Start runs versitygw on a free loopback port and creates the bucket
// "models"; it is stopped when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := Binary()
	if bin == "" {
		t.Skip("versitygw not installed (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0); skipping the S3 tests")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	s := &Server{
		Endpoint: "http://" + addr, Addr: addr, Bucket: "models",
		AccessKey: "testaccess", SecretKey: "testsecret-not-a-real-one",
		Dir: t.TempDir(),
	}
	s.start(t)
	t.Cleanup(func() { s.Stop() })
	c := s.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, c.MakeBucket(ctx, s.Bucket, minio.MakeBucketOptions{}))
	return s
}

func (s *Server) start(t testing.TB) {
	cmd := exec.Command(Binary(), "--port", s.Addr, "posix", s.Dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	// Its request log is long; it is shown only for a failed test.
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("versitygw output:\n%s", out.String())
		}
	})
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	s.cmd = cmd
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", s.Addr, 200*time.Millisecond)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}, 20*time.Second, 50*time.Millisecond, "versitygw did not start listening")
}

// Stop kills the server (the bucket's files stay in Dir).
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Restart starts a stopped server again on the same port and directory.
func (s *Server) Restart(t testing.TB) { s.start(t) }

// Client returns a minio client of the server, for tests to look into the
// bucket.
func (s *Server) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := minio.New(s.Addr, &minio.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), BucketLookup: minio.BucketLookupPath})
	require.NoError(t, err)
	return c
}

// Keys lists every key in the bucket under prefix.
func (s *Server) Keys(t testing.TB, prefix string) []string {
	t.Helper()
	var out []string
	for o := range s.Client(t).ListObjects(context.Background(), s.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		require.NoError(t, o.Err)
		out = append(out, o.Key)
	}
	return out
}

func (s *Server) String() string { return fmt.Sprintf("versitygw at %s", s.Endpoint) }
