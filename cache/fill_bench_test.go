package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkFirstFillVsDirect measures the first fill of a blob from a TLS
// upstream on loopback, with one client reading it as it lands, against a
// direct download of the same bytes from the same server by the same HTTP
// client, in the same run. It reports the fill's throughput as a ratio of
// the direct one ("fill/direct"), so a noisy machine moves both sides.
//
// With -cpuprofile it shows where a fill's CPU goes beyond what a direct
// client spends (TLS and the copy): hashing, the temp file writes, the
// reader's copy. On a small machine the fake upstream, the gateway's fill
// and the client share the cores, so this ratio is bounded by CPU, not by
// the fill's design.
func BenchmarkFirstFillVsDirect(b *testing.B) {
	for _, conns := range []int{1, 8} {
		b.Run(fmt.Sprintf("connections=%d", conns), func(b *testing.B) { benchFirstFill(b, conns) })
	}
}

func benchFirstFill(b *testing.B, conns int) {
	const size = 256 << 20
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{9})
	_, _ = rng.Read(data)
	sum := sha256.Sum256(data)
	d, err := NewDigest(SHA256, hex.EncodeToString(sum[:]))
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	client := srv.Client()
	client.Transport.(*http.Transport).MaxConnsPerHost = 0
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 16

	src := func(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
		if err != nil {
			return nil, 0, err
		}
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, end-1))
		resp, err := client.Do(req)
		if err != nil {
			return nil, 0, err
		}
		if resp.StatusCode != http.StatusPartialContent {
			resp.Body.Close()
			return nil, 0, fmt.Errorf("status %d", resp.StatusCode)
		}
		return resp.Body, off, nil
	}

	direct := func() time.Duration {
		t0 := time.Now()
		resp, err := client.Get(srv.URL)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(io.Discard, resp.Body, make([]byte, 256<<10))
		resp.Body.Close()
		if err != nil || n != size {
			b.Fatalf("direct: %d bytes, %v", n, err)
		}
		return time.Since(t0)
	}
	fill := func() time.Duration {
		dir := b.TempDir()
		idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
		if err != nil {
			b.Fatal(err)
		}
		defer idx.Close()
		s, err := Open(Options{Dir: dir, Index: idx, FillConnections: conns})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		t0 := time.Now()
		blob, _, err := s.Get(context.Background(), d, size, src)
		if err != nil {
			b.Fatal(err)
		}
		r, err := blob.NewReader(context.Background(), 0, size)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(io.Discard, r, make([]byte, 256<<10))
		r.Close()
		blob.Close()
		if err != nil || n != size {
			b.Fatalf("fill: %d bytes, %v", n, err)
		}
		return time.Since(t0)
	}

	direct() // warm the connections and the server's code paths
	var tDirect, tFill time.Duration
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tDirect += direct()
		tFill += fill()
	}
	b.ReportMetric(float64(size)*float64(b.N)/tDirect.Seconds()/(1<<20), "direct-MiB/s")
	b.ReportMetric(float64(size)*float64(b.N)/tFill.Seconds()/(1<<20), "fill-MiB/s")
	b.ReportMetric(tDirect.Seconds()/tFill.Seconds(), "fill/direct")
}
