package metrics

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/cache"
)

// gauges gathers reg and returns the value of every unlabelled gauge by name.
func gauges(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if g := m.GetGauge(); g != nil && len(m.GetLabel()) == 0 {
				out[mf.GetName()] = g.GetValue()
			}
		}
	}
	return out
}

// TestCacheCollectorReadsStoreAtScrape checks that the cache gauges keep
// their names and follow a real store between scrapes: nothing is pushed,
// the second scrape sees the blob published after the first.
func TestCacheCollectorReadsStoreAtScrape(t *testing.T) {
	dir := t.TempDir()
	idx, err := cache.OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	defer idx.Close()
	store, err := cache.Open(cache.Options{Dir: dir, Index: idx, DiskFree: func() (int64, error) { return 5 << 30, nil }})
	require.NoError(t, err)
	defer store.Close()

	reg := prometheus.NewRegistry()
	RegisterCache(reg, store)

	before := gauges(t, reg)
	assert.Equal(t, map[string]float64{
		"modelgate_disk_free_bytes":  5 << 30,
		"modelgate_cache_blobs":      0,
		"modelgate_cache_blob_bytes": 0,
		"modelgate_fills_in_flight":  0,
	}, before)

	data := bytes.Repeat([]byte("modelgate"), 1000)
	sum := sha256.Sum256(data)
	d, err := cache.NewDigest(cache.SHA256, hex.EncodeToString(sum[:]))
	require.NoError(t, err)
	b, _, err := store.Get(t.Context(), d, int64(len(data)), func(_ context.Context, off, end int64) (io.ReadCloser, int64, error) {
		return io.NopCloser(bytes.NewReader(data[off:])), off, nil
	})
	require.NoError(t, err)
	r, err := b.NewReader(t.Context(), 0, b.Size)
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, r)
	require.NoError(t, err)
	r.Close()
	b.Close()
	// The fill leaves the in-flight count just after it publishes the blob:
	// wait for both, as a scrape a moment later sees them.
	require.Eventually(t, func() bool { return store.Has(d) && gauges(t, reg)["modelgate_fills_in_flight"] == 0 },
		5*time.Second, 5*time.Millisecond)

	after := gauges(t, reg)
	assert.Equal(t, float64(1), after["modelgate_cache_blobs"])
	assert.Equal(t, float64(len(data)), after["modelgate_cache_blob_bytes"])
	assert.Equal(t, float64(0), after["modelgate_fills_in_flight"])
}
