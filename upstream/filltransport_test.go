package upstream

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A CDN speaking HTTP/2 would carry every ranged request of a parallel
// fill on one TCP connection (one congestion window, one flow-control
// budget): fill requests go over HTTP/1.1, one connection each, while
// metadata keeps HTTP/2.
func TestSplitFillsSendsFillsOverHTTP1(t *testing.T) {
	const pieces = 8
	var (
		mu      sync.Mutex
		protos  = map[string][]string{} // "fill" / "meta" -> protocols seen
		remotes = map[string]bool{}     // connections the fill requests came on
		arrived = make(chan struct{}, pieces)
		release = make(chan struct{})
	)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := r.URL.Path[1:]
		mu.Lock()
		protos[kind] = append(protos[kind], r.Proto)
		if kind == "fill" {
			remotes[r.RemoteAddr] = true
		}
		mu.Unlock()
		if kind == "fill" {
			arrived <- struct{}{}
			select { // every piece in flight at once
			case <-release:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, kind)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)

	tr := newTransport(t, Options{CAFile: writeCA(t, srv)})
	rt := SplitFills(tr)
	t.Cleanup(rt.CloseIdleConnections)

	resp, err := get(t, rt, srv.URL+"/meta")
	require.NoError(t, err)
	assert.Equal(t, "meta", body(t, resp))

	var wg sync.WaitGroup
	for range pieces {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, err := http.NewRequestWithContext(ForFill(t.Context()), http.MethodGet, srv.URL+"/fill", nil)
			if !assert.NoError(t, err) {
				return
			}
			resp, err := rt.RoundTrip(req)
			if !assert.NoError(t, err) {
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			assert.Equal(t, "fill", string(b))
		}()
	}
	for range pieces {
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("the fill requests did not all arrive")
		}
	}
	close(release)
	wg.Wait()

	resp, err = get(t, rt, srv.URL+"/meta")
	require.NoError(t, err)
	assert.Equal(t, "meta", body(t, resp))

	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"HTTP/2.0", "HTTP/2.0"}, protos["meta"], "metadata keeps HTTP/2")
	require.Len(t, protos["fill"], pieces)
	for _, p := range protos["fill"] {
		assert.Equal(t, "HTTP/1.1", p)
	}
	assert.Len(t, remotes, pieces, "one connection per piece")
}

// The clone must not share the metadata transport's idle pool or TLS
// config object: changing one leaves the other alone.
func TestSplitFillsKeepsTheTransportsApart(t *testing.T) {
	tr := newTransport(t, Options{})
	s := SplitFills(tr)
	assert.Same(t, tr, s.Meta)
	assert.NotSame(t, tr, s.Fill)
	assert.NotSame(t, tr.TLSClientConfig, s.Fill.TLSClientConfig)
	assert.False(t, s.Fill.ForceAttemptHTTP2)
	assert.NotContains(t, s.Fill.TLSClientConfig.NextProtos, "h2")
	assert.Equal(t, tr.ResponseHeaderTimeout, s.Fill.ResponseHeaderTimeout)
}
