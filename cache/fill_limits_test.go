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
	src := func(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
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
	src := func(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
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
	src := func(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
		return io.NopCloser(&tricklingReader{ctx: ctx, data: data[off:]}), off, nil
	}
	err := readFillResult(t, s, d, int64(len(data)), src, 20*time.Second)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrFillTimeout)
	assert.True(t, IsFillError(err))
	assert.False(t, s.Has(d))
}

// gatedSource serves data, holding each body after gateAt bytes until the
// gate channel is closed or the attempt's context ends.
type gatedSource struct {
	data    []byte
	gateAt  int
	gate    chan struct{}
	calls   atomic.Int32
	offsets chan int64 // every call's offset, if set
}

func (g *gatedSource) source(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
	g.calls.Add(1)
	if g.offsets != nil {
		g.offsets <- off
	}
	pr, pw := io.Pipe()
	go func() {
		if int(off) < g.gateAt {
			if _, err := pw.Write(g.data[off:g.gateAt]); err != nil {
				return
			}
			off = int64(g.gateAt)
		}
		select {
		case <-g.gate:
		case <-ctx.Done():
			pw.CloseWithError(ctx.Err())
			return
		}
		pw.Write(g.data[off:])
		pw.Close()
	}()
	context.AfterFunc(ctx, func() { pr.CloseWithError(ctx.Err()) })
	return pr, off, nil
}

// Issue 10 item 8: a `Range: bytes=0-0` abandoned after 0.3 s made the
// gateway download the whole blob. A fill nobody reads stops after the
// orphan timeout and keeps its bytes for a later resume.
func TestAFillNobodyReadsStopsAndKeepsItsBytesForLater(t *testing.T) {
	s := newStoreWith(t, Options{OrphanFillTimeout: 200 * time.Millisecond})
	data := randomBytes(73, 2<<20)
	d := sha256Digest(t, data)
	src := &gatedSource{data: data, gateAt: 512 << 10, gate: make(chan struct{})}

	b, _, err := s.Get(t.Context(), d, int64(len(data)), src.source)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	r, err := b.NewReader(ctx, 0, 1)
	require.NoError(t, err)
	_, err = io.ReadAll(r) // its only byte is its last: held until verified
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded)
	r.Close()
	b.Close() // the client went away

	require.Eventually(t, func() bool { return s.Stats().FillsInFlight == 0 }, 10*time.Second, 5*time.Millisecond,
		"the orphaned fill stops")
	assert.False(t, s.Has(d))
	close(src.gate)

	// A later request resumes from the bytes the orphaned fill kept.
	src.offsets = make(chan int64, 10)
	b, _, err = s.Get(t.Context(), d, int64(len(data)), src.source)
	require.NoError(t, err)
	got, err := readAll(t, b, 0, b.Size)
	b.Close()
	require.NoError(t, err)
	assert.True(t, bytes.Equal(data, got))
	assert.Equal(t, int64(512<<10), <-src.offsets, "resumed where the orphaned fill stopped")
}

func TestAFillWithAReaderIsNotOrphaned(t *testing.T) {
	s := newStoreWith(t, Options{OrphanFillTimeout: 50 * time.Millisecond})
	data := randomBytes(74, 1<<20)
	d := sha256Digest(t, data)
	src := &gatedSource{data: data, gateAt: 256 << 10, gate: make(chan struct{})}
	b, _, err := s.Get(t.Context(), d, int64(len(data)), src.source)
	require.NoError(t, err)
	defer b.Close()
	r, err := b.NewReader(t.Context(), 0, b.Size)
	require.NoError(t, err)
	defer r.Close()
	head := make([]byte, 256<<10)
	_, err = io.ReadFull(r, head)
	require.NoError(t, err)
	// Well past the orphan timeout with a reader still there.
	time.Sleep(250 * time.Millisecond) // the absence of an event: nothing to wait on
	close(src.gate)
	rest, err := io.ReadAll(r)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(data, append(head, rest...)))
	assert.Equal(t, int32(1), src.calls.Load())
}

func TestAPinnedFillIsNotOrphaned(t *testing.T) {
	data := randomBytes(75, 1<<20)
	d := sha256Digest(t, data)
	s := newStoreWith(t, Options{OrphanFillTimeout: 20 * time.Millisecond,
		Pinned: func() map[Digest]bool { return map[Digest]bool{d: true} }})
	src := &gatedSource{data: data, gateAt: 256 << 10, gate: make(chan struct{})}
	b, _, err := s.Get(t.Context(), d, int64(len(data)), src.source)
	require.NoError(t, err)
	b.Close()
	time.Sleep(150 * time.Millisecond) // the absence of an event: nothing to wait on
	close(src.gate)
	require.Eventually(t, func() bool { return s.Has(d) }, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, int32(1), src.calls.Load())
}

func TestConcurrentFillsAreCappedAndTheExtraOnesWait(t *testing.T) {
	s := newStoreWith(t, Options{MaxFills: 2, MaxFillsPerClient: 1})
	type started struct {
		src *gatedSource
		d   Digest
		got chan error
	}
	start := func(seed uint64, client string) *started {
		data := randomBytes(seed, 64<<10)
		st := &started{src: &gatedSource{data: data, gateAt: 1, gate: make(chan struct{})}, d: sha256Digest(t, data), got: make(chan error, 1)}
		go func() {
			b, _, err := s.Get(WithClient(t.Context(), client), st.d, int64(len(data)), st.src.source)
			if err == nil {
				_, err = readAll(t, b, 0, b.Size)
				b.Close()
			}
			st.got <- err
		}()
		return st
	}
	a1 := start(80, "10.0.0.1:1234")
	require.Eventually(t, func() bool { return a1.src.calls.Load() == 1 }, 5*time.Second, time.Millisecond)
	a2 := start(81, "10.0.0.1:5678") // same client: beyond its cap, waits
	b1 := start(82, "10.0.0.2:1")    // another client: the global cap has room
	require.Eventually(t, func() bool { return b1.src.calls.Load() == 1 }, 5*time.Second, time.Millisecond)
	c1 := start(83, "10.0.0.3:1")      // the global cap is full: waits
	time.Sleep(100 * time.Millisecond) // the absence of an event: nothing to wait on
	assert.Zero(t, a2.src.calls.Load(), "a client's second fill waits for its first")
	assert.Zero(t, c1.src.calls.Load(), "a third fill waits for a global slot")

	close(a1.src.gate)
	require.NoError(t, <-a1.got)
	// One slot came free: a2 (per-client slot free again) and c1 compete for it.
	require.Eventually(t, func() bool { return a2.src.calls.Load()+c1.src.calls.Load() == 1 }, 5*time.Second, time.Millisecond)
	close(b1.src.gate)
	require.NoError(t, <-b1.got)
	require.Eventually(t, func() bool { return a2.src.calls.Load()+c1.src.calls.Load() == 2 }, 5*time.Second, time.Millisecond)
	close(a2.src.gate)
	close(c1.src.gate)
	require.NoError(t, <-a2.got, "a waiting request gets a slow start, not an error")
	require.NoError(t, <-c1.got)
}
