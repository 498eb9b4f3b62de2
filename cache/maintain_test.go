package cache

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// classifyTest is the classification main wires for the real keys, on
// test prefixes: "c/" copies of upstream answers, "r/" revision mappings.
func classifyTest(key []byte) KeyClass {
	switch {
	case strings.HasPrefix(string(key), "c/"):
		return Reclaimable
	case strings.HasPrefix(string(key), "r/"):
		return Counted
	}
	return Kept
}

func TestIndexMaintenanceBoundsCopiesAndRevisionMappings(t *testing.T) {
	idx, err := OpenIndex(t.TempDir(), nil)
	require.NoError(t, err)
	defer idx.Close()
	val := make([]byte, 10<<10)
	for i := range 100 {
		require.NoError(t, idx.Set(fmt.Sprintf("c/%03d", i), val, 0))
		require.NoError(t, idx.Set(fmt.Sprintf("r/%03d", i), []byte("commit"), 0))
		require.NoError(t, idx.Set(fmt.Sprintf("blob/%03d", i), val, 0))
	}
	idx.SetLimits(IndexLimits{Classify: classifyTest, MaxBytes: 200 << 10, MaxCounted: 30})
	st, err := idx.Maintain()
	require.NoError(t, err)
	count := func(prefix string) (keys []string) {
		require.NoError(t, idx.Scan(prefix, func(k string, _ []byte) error { keys = append(keys, k); return nil }))
		return keys
	}
	copies := count("c/")
	assert.LessOrEqual(t, len(copies)*(10<<10), 200<<10, "reclaimable entries fit MaxBytes")
	assert.GreaterOrEqual(t, len(copies), 15)
	assert.Equal(t, "c/099", copies[len(copies)-1], "the newest copies stay")
	assert.NotContains(t, copies, "c/000", "the oldest copies go")
	revs := count("r/")
	assert.Len(t, revs, 30, "revision mappings are bounded by count")
	assert.Equal(t, "r/070", revs[0])
	assert.Len(t, count("blob/"), 100, "kept entries are never trimmed")
	assert.Equal(t, 100-len(copies)+70, st.Dropped)

	// A copy rewritten now is young again and survives the next trim.
	require.NoError(t, idx.Set("c/000", val, 0))
	idx.SetLimits(IndexLimits{Classify: classifyTest, MaxBytes: 50 << 10, MaxCounted: 30})
	_, err = idx.Maintain()
	require.NoError(t, err)
	assert.Contains(t, count("c/"), "c/000")
}

// The review's numbers: 300 distinct API answers of ~350 KB added 105 MB
// that never went away. Once they are dropped (or expired), maintenance
// gives the space back.
func TestIndexMaintenanceGivesBackValueLogSpace(t *testing.T) {
	idx, err := OpenIndex(t.TempDir(), nil)
	require.NoError(t, err)
	defer idx.Close()
	val := randomBytes(7, 350<<10)
	for i := range 300 {
		ttl := time.Duration(0)
		if i%2 == 1 {
			ttl = time.Second // half of them expire instead
		}
		require.NoError(t, idx.Set(fmt.Sprintf("c/%03d", i), val, ttl))
	}
	grown := idx.DiskSize()
	require.Greater(t, grown, int64(100<<20))
	require.Eventually(t, func() bool { _, err := idx.Get("c/001"); return err != nil }, 5*time.Second, 50*time.Millisecond)
	idx.SetLimits(IndexLimits{Classify: classifyTest, MaxBytes: 1 << 20})
	st, err := idx.Maintain()
	require.NoError(t, err)
	assert.Positive(t, st.GCRewrites)
	assert.Less(t, idx.DiskSize(), int64(40<<20), "value-log space of dropped and expired answers is reclaimed (was %d)", grown)
	// What is left still reads back.
	got, err := idx.Get("c/298")
	require.NoError(t, err)
	assert.Equal(t, val, got)
}

func TestIndexWritesWaitForMaintenanceInsteadOfFailing(t *testing.T) {
	idx, err := OpenIndex(t.TempDir(), nil)
	require.NoError(t, err)
	defer idx.Close()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := idx.Set(fmt.Sprintf("blob/%d", i), []byte("x"), 0); err != nil {
				select {
				case errs <- err:
				default:
				}
				return
			}
		}
	}()
	for range 20 {
		_, err := idx.Maintain()
		require.NoError(t, err)
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("a write during maintenance failed: %v", err)
	default:
	}
}

func TestEvictionCountsTheIndexAgainstMaxSize(t *testing.T) {
	dir := t.TempDir()
	idx, err := OpenIndex(dir+"/index", nil)
	require.NoError(t, err)
	defer idx.Close()
	// 2 MiB of metadata in the index, 3 blobs of 1 MiB, max_size 5 MiB:
	// the blobs alone fit, blobs and index do not.
	for i := range 2 {
		require.NoError(t, idx.Set(fmt.Sprintf("c/%d", i), randomBytes(uint64(i), 1<<20), 0))
	}
	require.Greater(t, idx.DiskSize(), int64(2<<20))
	var mu sync.Mutex
	evicted := 0
	s, err := Open(Options{Dir: dir, Index: idx, MaxSize: 5 << 20, AccessFlush: time.Hour,
		IndexSize: idx.DiskSize,
		OnEvict:   func(Digest, int64) { mu.Lock(); evicted++; mu.Unlock() }})
	require.NoError(t, err)
	defer s.Close()
	for i := range 3 {
		fillBlob(t, s, randomBytes(uint64(40+i), 1<<20))
		time.Sleep(5 * time.Millisecond) // access times have a millisecond grain
	}
	require.Eventually(t, func() bool {
		return s.Stats().Bytes+idx.DiskSize() <= 5<<20
	}, 5*time.Second, 10*time.Millisecond, "eviction brings blobs + index under max_size")
	mu.Lock()
	assert.Positive(t, evicted)
	mu.Unlock()
}
