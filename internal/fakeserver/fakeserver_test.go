package fakeserver

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// rig is a minimal fake: server "blob" serves body at any path through the
// faults and fetch counter keyed by that path, server "echo" answers the
// length of the request body it read, and "/drop" on it drops the
// connection.
type rig struct {
	srv     Servers
	faults  Faults[string]
	fetches Counter[string]
	body    []byte
	c       *http.Client
	served  atomic.Int32 // blob answers that have ended
}

func newRig(t *testing.T, maxBody int, body []byte) *rig {
	t.Helper()
	rg := &rig{body: body}
	rg.srv.Start(t, Config{Name: "rig", MaxBody: maxBody},
		Server{Name: "blob", Handler: func(w http.ResponseWriter, r *http.Request) {
			defer rg.served.Add(1)
			rg.faults.ServeContent(rg.fetches.CountGET(w, r, r.URL.Path), r, r.URL.Path, rg.body, time.Time{})
		}},
		Server{Name: "echo", Handler: func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/drop" {
				panic(http.ErrAbortHandler)
			}
			b, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			_, _ = fmt.Fprint(w, len(b))
		}},
	)
	rg.c = rg.srv.Client(t)
	return rg
}

// get fetches url, with a Range header when rng is set.
func (rg *rig) get(t *testing.T, method, url, rng string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	require.NoError(t, err)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	return Fetch(t, rg.c, req)
}

func randomBody(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(b)
	return b
}

func TestServersTrustAndURLs(t *testing.T) {
	rg := newRig(t, 0, []byte("x"))
	blob, echo := rg.srv.URL("blob"), rg.srv.URL("echo")
	assert.True(t, strings.HasPrefix(blob, "https://127.0.0.1:"), blob)
	assert.True(t, strings.HasPrefix(echo, "https://127.0.0.1:"), echo)
	assert.NotEqual(t, blob, echo)
	assert.Panics(t, func() { rg.srv.URL("nope") })

	// A client trusting only the CA file reaches every server.
	pemData, err := os.ReadFile(rg.srv.CAFile())
	require.NoError(t, err)
	assert.Contains(t, string(pemData), "BEGIN CERTIFICATE")
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pemData))
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer c.CloseIdleConnections()
	for _, u := range []string{blob, echo} {
		resp, err := c.Get(u + "/")
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		assert.Equal(t, http.StatusOK, resp.StatusCode)
	}
	assert.NotSame(t, rg.srv.CertPool(), rg.srv.CertPool(), "each caller gets its own pool")
}

func TestRecording(t *testing.T) {
	rg := newRig(t, 10, []byte("x"))
	req, err := http.NewRequest(http.MethodPost, rg.srv.URL("echo")+"/up%20load?q=1", strings.NewReader("0123456789abcdef"))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer secret")
	_, body := Fetch(t, rg.c, req)
	assert.Equal(t, "16", string(body), "the handler still reads the whole body")
	_, _ = rg.get(t, http.MethodHead, rg.srv.URL("blob")+"/a", "")
	// A POST, so the client does not retry when the connection drops.
	_, err = rg.c.Post(rg.srv.URL("echo")+"/drop", "", nil)
	require.Error(t, err)

	reqs := rg.srv.Requests()
	require.Len(t, reqs, 3)
	assert.Equal(t, Request{
		Server:     "echo",
		Method:     http.MethodPost,
		Host:       strings.TrimPrefix(rg.srv.URL("echo"), "https://"),
		RequestURI: "/up%20load?q=1",
		Header:     reqs[0].Header,
		Body:       []byte("0123456789"),
	}, reqs[0], "the body is kept up to MaxBody")
	assert.Equal(t, "Bearer secret", reqs[0].Header.Get("Authorization"))
	assert.Equal(t, "blob", reqs[1].Server)
	assert.Empty(t, reqs[1].Body)
	assert.Equal(t, "/drop", reqs[2].RequestURI, "requests the handler drops are recorded")

	assert.Equal(t, 1, rg.srv.Count("echo", http.MethodPost, "/up load"), "Count matches unescaped paths")
	assert.Equal(t, 2, rg.srv.Count("echo", http.MethodPost, "/"))
	assert.Equal(t, 1, rg.srv.Count("", http.MethodHead, "/"))
	assert.Equal(t, 3, rg.srv.Count("", "", ""))
	assert.Zero(t, rg.srv.Count("blob", http.MethodGet, "/"))

	reqs[0].Header.Set("Authorization", "changed")
	assert.Equal(t, "Bearer secret", rg.srv.Requests()[0].Header.Get("Authorization"), "Requests returns copies")
}

func TestRecordingWithoutBodies(t *testing.T) {
	rg := newRig(t, 0, []byte("x"))
	req, err := http.NewRequest(http.MethodPut, rg.srv.URL("echo")+"/", strings.NewReader("abc"))
	require.NoError(t, err)
	_, body := Fetch(t, rg.c, req)
	assert.Equal(t, "3", string(body))
	assert.Nil(t, rg.srv.Requests()[0].Body)
}

func TestCounter(t *testing.T) {
	body := randomBody(1000)
	rg := newRig(t, 0, body)
	u := rg.srv.URL("blob") + "/a"
	resp, got := rg.get(t, http.MethodGet, u, "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, body, got)
	resp, _ = rg.get(t, http.MethodGet, u, "bytes=0-9")
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	resp, _ = rg.get(t, http.MethodHead, u, "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = rg.get(t, http.MethodGet, u, "bytes=5000-")
	require.Equal(t, http.StatusRequestedRangeNotSatisfiable, resp.StatusCode)
	assert.Equal(t, 2, rg.fetches.Get("/a"), "a 200 and a 206 GET; HEAD and errors do not count")
	assert.Zero(t, rg.fetches.Get("/b"))
}

func TestCorrupt(t *testing.T) {
	for _, size := range []int{10 << 10, 1000} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			body := randomBody(size)
			rg := newRig(t, 0, body)
			u := rg.srv.URL("blob") + "/a"
			rg.faults.Corrupt("/a", true)
			_, got := rg.get(t, http.MethodGet, u, "")
			require.Len(t, got, size)
			n := max(size-4096, 0)
			assert.Equal(t, body[:n], got[:n], "only the last 4 KiB are changed")
			for i := n; i < size; i++ {
				require.Equal(t, body[i]^0xff, got[i], "byte %d", i)
			}
			_, got = rg.get(t, http.MethodGet, u, fmt.Sprintf("bytes=%d-", size-10))
			for i, b := range got {
				require.Equal(t, body[size-10+i]^0xff, b, "ranges are corrupted too")
			}
			_, got = rg.get(t, http.MethodGet, rg.srv.URL("blob")+"/b", "")
			assert.Equal(t, body, got, "other keys are healthy")

			rg.faults.Corrupt("/a", false)
			_, got = rg.get(t, http.MethodGet, u, "")
			assert.Equal(t, body, got)
			assert.Empty(t, rg.faults.m, "healthy keys are dropped")
		})
	}
}

func TestGate(t *testing.T) {
	body := randomBody(64 << 10)
	rg := newRig(t, 0, body)
	u := rg.srv.URL("blob") + "/a"
	const after = 1000
	release := rg.faults.Gate("/a", after)
	resp, err := rg.c.Get(u)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, 1, rg.fetches.Get("/a"), "a gated fetch counts once its status is sent")

	// ReadGated checks the hold; meanwhile ranged GETs pass.
	got := ReadGated(t, resp.Body, after, func() {
		resp, got := rg.get(t, http.MethodGet, u, "bytes=0-1999")
		assert.Equal(t, http.StatusPartialContent, resp.StatusCode)
		assert.Equal(t, body[:2000], got, "ranged GETs are not gated")
		release()
	})
	assert.Equal(t, body, got)
	release() // idempotent

	_, got = rg.get(t, http.MethodGet, u, "")
	assert.Equal(t, body, got, "released gates no longer apply")
	assert.Empty(t, rg.faults.m)
}

func TestGateEndsWithTheClient(t *testing.T) {
	rg := newRig(t, 0, randomBody(1000))
	rg.faults.Gate("/a", 0) // never released
	resp, err := rg.c.Get(rg.srv.URL("blob") + "/a")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, resp.Body.Close())
	assert.Eventually(t, func() bool { return rg.served.Load() == 1 }, 5*time.Second, 10*time.Millisecond,
		"the held answer ends when the client goes away, before any cleanup")
}

func TestThrottle(t *testing.T) {
	body := randomBody(10 << 10)
	rg := newRig(t, 0, body)
	u := rg.srv.URL("blob") + "/a"
	rg.faults.Throttle("/a", 20<<10) // 20 KiB/s -> ~0.5 s
	start := time.Now()
	_, got := rg.get(t, http.MethodGet, u, "")
	assert.Equal(t, body, got)
	assert.GreaterOrEqual(t, time.Since(start), 400*time.Millisecond)

	// The rate is re-read per chunk: switching the throttle off lets an
	// answer in flight finish. At 100 B/s the body would take 100 s; the
	// bound below is a tenth of that, which no scheduler hiccup reaches.
	rg.faults.Throttle("/a", 100)
	done := make(chan []byte, 1)
	go func() {
		resp, err := rg.c.Get(u)
		if !assert.NoError(t, err) {
			done <- nil
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		done <- b
	}()
	n := len(rg.srv.Requests())
	require.Eventually(t, func() bool { return len(rg.srv.Requests()) == n+1 }, 5*time.Second, time.Millisecond)
	rg.faults.Throttle("/a", 0)
	select {
	case got = <-done:
		assert.Equal(t, body, got)
	case <-time.After(10 * time.Second):
		t.Fatal("switching the throttle off did not release the answer in flight")
	}
}

// TestCleanupEndsHeldBodies: a gate nobody releases and a crawling throttle
// must not keep the servers' cleanup waiting.
func TestCleanupEndsHeldBodies(t *testing.T) {
	var gated, throttled io.ReadCloser
	start := time.Now()
	t.Run("rig", func(t *testing.T) {
		rg := newRig(t, 0, randomBody(64<<10))
		rg.faults.Gate("/gated", 100)
		rg.faults.Throttle("/slow", 1)
		for _, b := range []struct {
			path string
			to   *io.ReadCloser
		}{{"/gated", &gated}, {"/slow", &throttled}} {
			resp, err := rg.c.Get(rg.srv.URL("blob") + b.path)
			require.NoError(t, err)
			*b.to = resp.Body
		}
	})
	assert.Less(t, time.Since(start), 4*time.Second, "cleanup must not wait for held bodies")
	defer gated.Close()
	defer throttled.Close()
	b, err := io.ReadAll(gated)
	assert.Error(t, err, "the gated body ends early")
	assert.Len(t, b, 100)
	_, err = io.ReadAll(throttled)
	assert.Error(t, err, "the throttled body ends early")
}

func TestStartRejectsBadNames(t *testing.T) {
	for _, names := range [][]string{{""}, {"a", "a"}} {
		ft := &fatalRecorder{TB: t}
		var s Servers
		done := make(chan struct{})
		go func() {
			defer close(done)
			var servers []Server
			for _, n := range names {
				servers = append(servers, Server{Name: n, Handler: http.NotFound})
			}
			s.Start(ft, Config{Name: "bad"}, servers...)
		}()
		<-done
		assert.True(t, ft.failed, "%q", names)
	}
}

// fatalRecorder turns Fatalf into a recorded failure that ends only the
// calling goroutine, so a test can check that Start refuses its input.
type fatalRecorder struct {
	testing.TB
	failed bool
}

func (f *fatalRecorder) Fatalf(string, ...any) {
	f.failed = true
	runtime.Goexit()
}

func TestCutIgnoreRangeAndFail(t *testing.T) {
	body := randomBody(200 << 10)
	rg := newRig(t, 0, body)
	u := rg.srv.URL("blob") + "/a"

	rg.faults.Cut("/a", 1000, 1)
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	resp, err := rg.c.Do(req)
	require.NoError(t, err)
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Error(t, err, "the body is cut")
	assert.Equal(t, body[:len(got)], got)
	assert.Less(t, len(got), len(body))
	_, got = rg.get(t, http.MethodGet, u, "")
	assert.Equal(t, body, got, "only the armed number of GETs are cut")

	rg.faults.IgnoreRange("/a", true)
	resp, got = rg.get(t, http.MethodGet, u, "bytes=100-")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, body, got)
	rg.faults.IgnoreRange("/a", false)
	resp, _ = rg.get(t, http.MethodGet, u, "bytes=100-")
	assert.Equal(t, http.StatusPartialContent, resp.StatusCode)

	rg.faults.Fail("/a", http.StatusServiceUnavailable, 2)
	for range 2 {
		resp, _ = rg.get(t, http.MethodGet, u, "")
		assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	}
	resp, _ = rg.get(t, http.MethodGet, u, "")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Empty(t, rg.faults.m, "spent knobs are dropped")
}
