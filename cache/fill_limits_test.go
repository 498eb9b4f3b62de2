package cache

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func newStoreWith(t testing.TB, opts Options) *Store {
	t.Helper()
	dir := t.TempDir()
	idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	opts.Dir, opts.Index = dir, idx
	if opts.RetryBackoff == 0 {
		opts.RetryBackoff = time.Millisecond
	}
	s, err := Open(opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		s.Close()
		idx.Close()
	})
	return s
}

// readFillResult reads the whole blob from a fill and returns the error the
// read ended with, failing the test if that takes longer than limit (a
// fill that retries forever never ends).
func readFillResult(t *testing.T, s *Store, d Digest, size int64, src Source, limit time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		b, _, err := s.Get(context.Background(), d, size, src)
		if err != nil {
			done <- err
			return
		}
		defer b.Close()
		r, err := b.NewReader(context.Background(), 0, size)
		if err != nil {
			done <- err
			return
		}
		defer r.Close()
		_, err = io.Copy(io.Discard, r)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
		t.Fatalf("the fill did not end within %s", limit)
		return nil
	}
}

func TestACutUpstreamThatIgnoresRangesDoesNotRetryForever(t *testing.T) {
	s := newStoreWith(t, Options{Retries: 3})
	data := randomBytes(70, 1<<20)
	d := sha256Digest(t, data)
	var calls atomic.Int32
	// Every answer is the whole blob from byte 0, cut at 300 KiB: each
	// restart "lands bytes", but never gets further than the last one.
	src := func(ctx context.Context, off int64) (io.ReadCloser, int64, error) {
		calls.Add(1)
		return io.NopCloser(bytes.NewReader(data[:300<<10])), 0, nil
	}
	err := readFillResult(t, s, d, int64(len(data)), src, 20*time.Second)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrRetriesExhausted)
	assert.True(t, IsFillError(err), "the reader learns the fill failed: %v", err)
	// The first attempt reached 300 KiB; every later one reached no further.
	assert.Equal(t, int32(1+3), calls.Load(), "the attempt that progressed, then three retries that did not")
	assert.False(t, s.Has(d))
}

func TestFillAttemptsAreCappedInTotal(t *testing.T) {
	s := newStoreWith(t, Options{Retries: 3, MaxFillAttempts: 4})
	data := randomBytes(71, 1<<20)
	d := sha256Digest(t, data)
	var calls atomic.Int32
	// Every attempt honours the range and brings 64 KiB more, then is cut:
	// always progress, never the end.
	src := func(ctx context.Context, off int64) (io.ReadCloser, int64, error) {
		calls.Add(1)
		return io.NopCloser(bytes.NewReader(data[off : off+64<<10])), off, nil
	}
	err := readFillResult(t, s, d, int64(len(data)), src, 20*time.Second)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrRetriesExhausted)
	assert.Equal(t, int32(4), calls.Load())
	assert.False(t, s.Has(d))
}

// tricklingReader yields one small chunk per tick, forever (until ctx).
type tricklingReader struct {
	ctx  context.Context
	data []byte
}

func (r *tricklingReader) Read(p []byte) (int, error) {
	select {
	case <-time.After(5 * time.Millisecond):
	case <-r.ctx.Done():
		return 0, r.ctx.Err()
	}
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 512)], r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestFillTimeIsCapped(t *testing.T) {
	s := newStoreWith(t, Options{MaxFillTime: 300 * time.Millisecond})
	data := randomBytes(72, 4<<20)
	d := sha256Digest(t, data)
	// A live but hopelessly slow upstream: it never stalls, so only the
	// total fill time can end it.
	src := func(ctx context.Context, off int64) (io.ReadCloser, int64, error) {
		return io.NopCloser(&tricklingReader{ctx: ctx, data: data[off:]}), off, nil
	}
	err := readFillResult(t, s, d, int64(len(data)), src, 20*time.Second)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrFillTimeout)
	assert.True(t, IsFillError(err))
	assert.False(t, s.Has(d))
}
