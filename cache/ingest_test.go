package cache

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const xorbHex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func xetRange(t testing.TB, first, last int64) Digest {
	t.Helper()
	d, err := NewXetRangeDigest(xorbHex, first, last)
	require.NoError(t, err)
	return d
}

func readBlob(t testing.TB, s *Store, d Digest) []byte {
	t.Helper()
	b, err := s.Open(d)
	require.NoError(t, err)
	defer b.Close()
	got, err := io.ReadAll(io.NewSectionReader(b.File(), 0, b.Size))
	require.NoError(t, err)
	return got
}

// TestIngestPublishesSeveralBlobsFromOneBody: the parts of one upstream
// answer become blobs of the store (a Xet xorb's ranges), counted,
// listed by prefix, found again after a restart, and evicted and pinned
// like any blob.
func TestIngestPublishesSeveralBlobsFromOneBody(t *testing.T) {
	dir := t.TempDir()
	idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	defer idx.Close()
	var mu sync.Mutex
	pinned := map[Digest]bool{}
	opts := Options{Dir: dir, Index: idx, AccessFlush: time.Hour, Pinned: func() map[Digest]bool {
		mu.Lock()
		defer mu.Unlock()
		return pinned
	}}
	s, err := Open(opts)
	require.NoError(t, err)
	a, b := randomBytes(1, 1000), randomBytes(2, 700)
	da, db := xetRange(t, 0, 999), xetRange(t, 5000, 5699)
	body := bytes.NewReader(append(append([]byte(nil), a...), b...))
	require.NoError(t, s.Ingest(context.Background(), func(ctx context.Context, put PutFunc) error {
		if err := put(da, 1000, body); err != nil {
			return err
		}
		return put(db, 700, body)
	}))
	assert.Equal(t, a, readBlob(t, s, da))
	assert.Equal(t, b, readBlob(t, s, db))
	assert.Equal(t, Stats{Blobs: 2, Bytes: 1700}, Stats{Blobs: s.Stats().Blobs, Bytes: s.Stats().Bytes})
	var listed []Digest
	require.NoError(t, s.PublishedWithPrefix(XetRange, xorbHex, func(d Digest, size int64) error {
		listed = append(listed, d)
		return nil
	}))
	assert.ElementsMatch(t, []Digest{da, db}, listed)

	// A short body publishes nothing.
	dc := xetRange(t, 9000, 9099)
	err = s.Ingest(context.Background(), func(ctx context.Context, put PutFunc) error {
		return put(dc, 100, strings.NewReader("short"))
	})
	var sm *SizeMismatchError
	require.ErrorAs(t, err, &sm)
	assert.False(t, s.Has(dc))
	require.NoError(t, s.Close())

	// After a restart, under a budget that holds one of them: the pinned
	// one stays.
	mu.Lock()
	pinned[da] = true
	mu.Unlock()
	opts.MaxSize = 1200
	s, err = Open(opts)
	require.NoError(t, err)
	defer s.Close()
	require.Eventually(t, func() bool { return !s.Has(db) }, 5*time.Second, 5*time.Millisecond, "evicted like a blob")
	assert.True(t, s.Has(da), "pinned like a blob")
	assert.Equal(t, int64(1000), s.Stats().Bytes)
}

// TestIngestHasTheFillLimits: a slot per fill (MaxFills), the stall
// timeout on bodies, and the fill deadline.
func TestIngestHasTheFillLimits(t *testing.T) {
	s := newStoreWith(t, Options{MaxFills: 1, StallTimeout: 50 * time.Millisecond, MaxFillTime: time.Hour})
	started, release := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- s.Ingest(context.Background(), func(ctx context.Context, put PutFunc) error {
			close(started)
			<-release
			return put(xetRange(t, 0, 9), 10, bytes.NewReader(make([]byte, 10)))
		})
	}()
	<-started
	waitCtx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := s.Ingest(waitCtx, func(context.Context, PutFunc) error {
		t.Error("ran beyond max_fills")
		return nil
	})
	assert.ErrorIs(t, err, context.DeadlineExceeded, "the second ingest waits for a slot")
	close(release)
	require.NoError(t, <-first)

	// A body that stops sending is cut.
	err = s.Ingest(context.Background(), func(ctx context.Context, put PutFunc) error {
		return put(xetRange(t, 100, 199), 100, &stallingReader{ctx: ctx, data: make([]byte, 10)})
	})
	assert.ErrorIs(t, err, ErrStalled)
	assert.False(t, s.Has(xetRange(t, 100, 199)))

	// A body that keeps sending, slower than the fill deadline allows.
	s2 := newStoreWith(t, Options{StallTimeout: time.Hour, MaxFillTime: 100 * time.Millisecond})
	err = s2.Ingest(context.Background(), func(ctx context.Context, put PutFunc) error {
		return put(xetRange(t, 0, 1<<20-1), 1<<20, &tricklingReader{ctx: ctx, data: make([]byte, 1<<20)})
	})
	assert.ErrorIs(t, err, ErrFillTimeout)
}

// TestVerifyChecksOnlyTheSizeOfAXetRange: a Xet range's bytes cannot be
// checked against its id (the Xet service checks them per file), so the
// admin verify job must not take every range for a corrupt blob.
func TestVerifyChecksOnlyTheSizeOfAXetRange(t *testing.T) {
	s := newStoreWith(t, Options{})
	d := xetRange(t, 0, 99)
	require.NoError(t, s.Ingest(context.Background(), func(ctx context.Context, put PutFunc) error {
		return put(d, 100, bytes.NewReader(randomBytes(5, 100)))
	}))
	assert.NoError(t, s.Verify(context.Background(), d))
}
