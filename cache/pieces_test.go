package cache

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"
)

const testPiece = 64 << 10

// rangeSource serves ranges of data like a CDN that honours Range, and
// records every request. Knobs: hold gates requests starting at an offset
// (their bodies) until its channel closes; cutOnce cuts the first answer starting at an
// offset after n bytes; corrupt flips the bytes of one offset's answers;
// ignoreRange answers everything with the whole blob.
type rangeSource struct {
	data        []byte
	ignoreRange bool

	mu       sync.Mutex
	requests [][2]int64 // [off, end) asked
	served   [][2]int64 // [start, end) of bytes handed out
	hold     map[int64]chan struct{}
	cutOnce  map[int64]int
	corrupt  map[int64]bool
}

func (r *rangeSource) source(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
	r.mu.Lock()
	r.requests = append(r.requests, [2]int64{off, end})
	hold := r.hold[off]
	cut, isCut := r.cutOnce[off]
	delete(r.cutOnce, off)
	bad := r.corrupt[off]
	r.mu.Unlock()
	if r.ignoreRange {
		off, end = 0, int64(len(r.data))
	}
	body := bytes.Clone(r.data[off:end])
	if isCut {
		body = body[:cut]
	}
	if bad {
		body[len(body)/2] ^= 0xff
	}
	r.mu.Lock()
	r.served = append(r.served, [2]int64{off, off + int64(len(body))})
	r.mu.Unlock()
	var rd io.Reader = bytes.NewReader(body)
	if hold != nil {
		rd = &heldReader{ctx: ctx, hold: hold, r: rd}
	}
	return io.NopCloser(rd), off, nil
}

// heldReader is an answer whose body waits for hold before its first byte.
type heldReader struct {
	ctx  context.Context
	hold chan struct{}
	r    io.Reader
}

func (h *heldReader) Read(p []byte) (int, error) {
	select {
	case <-h.hold:
	case <-h.ctx.Done():
		return 0, h.ctx.Err()
	}
	return h.r.Read(p)
}

func (r *rangeSource) requested() [][2]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.requests)
}

// assertEachByteOnce checks that the served ranges cover the blob with no
// byte served twice.
func (r *rangeSource) assertEachByteOnce(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	spans := slices.Clone(r.served)
	r.mu.Unlock()
	slices.SortFunc(spans, func(a, b [2]int64) int { return int(a[0] - b[0]) })
	var next int64
	for _, sp := range spans {
		assert.Equal(t, next, sp[0], "served ranges %v: gap or overlap", spans)
		next = sp[1]
	}
	assert.Equal(t, int64(len(r.data)), next)
}

func parallelStore(t *testing.T, dir string, conns int) *Store {
	t.Helper()
	idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	s, err := Open(Options{Dir: dir, Index: idx, Retries: 3, RetryBackoff: time.Millisecond,
		FillConnections: conns, PieceSize: testPiece})
	require.NoError(t, err)
	t.Cleanup(func() {
		s.Close()
		idx.Close()
	})
	return s
}

func getAll(t *testing.T, s *Store, d Digest, data []byte, src Source) ([]byte, error) {
	t.Helper()
	b, _, err := s.Get(t.Context(), d, int64(len(data)), src)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	return readAll(t, b, 0, b.Size)
}

func TestAParallelFillFetchesEachPieceOnceInRanges(t *testing.T) {
	s := parallelStore(t, t.TempDir(), 4)
	data := randomBytes(90, 10*testPiece+123)
	d := sha256Digest(t, data)
	src := &rangeSource{data: data}
	got, err := getAll(t, s, d, data, src.source)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(data, got))
	require.Eventually(t, func() bool { return s.Has(d) }, 5*time.Second, time.Millisecond)
	reqs := src.requested()
	assert.Len(t, reqs, 11, "one request per piece")
	for _, r := range reqs {
		assert.LessOrEqual(t, r[1]-r[0], int64(testPiece))
	}
	src.assertEachByteOnce(t)
}

func TestABlobUnderTwoPiecesIsOneRequest(t *testing.T) {
	s := parallelStore(t, t.TempDir(), 4)
	data := randomBytes(91, 2*testPiece-1)
	d := sha256Digest(t, data)
	src := &rangeSource{data: data}
	got, err := getAll(t, s, d, data, src.source)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(data, got))
	assert.Equal(t, [][2]int64{{0, int64(len(data))}}, src.requested())
}

func TestPiecesLandingOutOfOrderAreHashedAndPublished(t *testing.T) {
	s := parallelStore(t, t.TempDir(), 4)
	data := randomBytes(92, 8*testPiece)
	d := sha256Digest(t, data)
	first := make(chan struct{})
	src := &rangeSource{data: data, hold: map[int64]chan struct{}{0: first}}
	b, _, err := s.Get(t.Context(), d, int64(len(data)), src.source)
	require.NoError(t, err)
	defer b.Close()
	// Every piece but the first lands; the first is held.
	require.Eventually(t, func() bool {
		b.fill.mu.Lock()
		defer b.fill.mu.Unlock()
		return b.fill.have.availableFrom(testPiece) == int64(len(data))
	}, 5*time.Second, time.Millisecond)
	assert.False(t, s.Has(d), "nothing is published before the prefix is whole")
	close(first)
	got, err := readAll(t, b, 0, b.Size)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(data, got))
	require.Eventually(t, func() bool { return s.Has(d) }, 5*time.Second, time.Millisecond)
	src.assertEachByteOnce(t)
}

func TestACutPieceResumesOnItsOwn(t *testing.T) {
	s := parallelStore(t, t.TempDir(), 4)
	data := randomBytes(93, 6*testPiece)
	d := sha256Digest(t, data)
	src := &rangeSource{data: data, cutOnce: map[int64]int{2 * testPiece: 1000}}
	got, err := getAll(t, s, d, data, src.source)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(data, got))
	reqs := src.requested()
	assert.Len(t, reqs, 7, "six pieces and one resume")
	assert.Contains(t, reqs, [2]int64{2*testPiece + 1000, 3 * testPiece}, "the cut piece resumed from where it was cut")
	src.assertEachByteOnce(t)
}

func TestAnUpstreamThatIgnoresRangesIsFilledWithOneStream(t *testing.T) {
	s := parallelStore(t, t.TempDir(), 4)
	data := randomBytes(94, 6*testPiece)
	d := sha256Digest(t, data)
	src := &rangeSource{data: data, ignoreRange: true}
	got, err := getAll(t, s, d, data, src.source)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(data, got))
	require.Eventually(t, func() bool { return s.Has(d) }, 5*time.Second, time.Millisecond)
	// The ranged requests were answered with the whole blob: after them,
	// one stream to the end.
	reqs := src.requested()
	assert.Equal(t, int64(len(data)), reqs[len(reqs)-1][1])
}

func TestACorruptPieceAbortsEveryReaderAndPublishesNothing(t *testing.T) {
	dir := t.TempDir()
	s := parallelStore(t, dir, 4)
	data := randomBytes(95, 6*testPiece)
	d := sha256Digest(t, data)
	src := &rangeSource{data: data, corrupt: map[int64]bool{3 * testPiece: true}}
	var eg errgroup.Group
	for i := range 4 {
		eg.Go(func() error {
			b, _, err := s.Get(t.Context(), d, int64(len(data)), src.source)
			if err != nil {
				return nil
			}
			defer b.Close()
			start := int64(i) * testPiece
			got, err := readAll(t, b, start, b.Size)
			if err == nil {
				return fmt.Errorf("reader %d completed a corrupt blob", i)
			}
			assert.True(t, IsFillError(err), "%v", err)
			assert.Less(t, len(got), int(b.Size-start))
			return nil
		})
	}
	require.NoError(t, eg.Wait())
	require.Eventually(t, func() bool { return s.Stats().FillsInFlight == 0 }, 5*time.Second, time.Millisecond)
	assert.False(t, s.Has(d))
	left, _ := os.ReadDir(filepath.Join(dir, "tmp"))
	assert.Empty(t, left, "neither the temp file nor its extents record is kept")
}

func TestAKilledParallelFillResumesOnlyItsHoles(t *testing.T) {
	dir := t.TempDir()
	data := randomBytes(96, 6*testPiece)
	d := sha256Digest(t, data)
	never := make(chan struct{})
	defer close(never)
	// Pieces 1 and 4 never arrive in the first run.
	first := &rangeSource{data: data, hold: map[int64]chan struct{}{testPiece: never, 4 * testPiece: never}}
	idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	s, err := Open(Options{Dir: dir, Index: idx, FillConnections: 6, PieceSize: testPiece, RetryBackoff: time.Millisecond})
	require.NoError(t, err)
	b, _, err := s.Get(t.Context(), d, int64(len(data)), first.source)
	require.NoError(t, err)
	record := filepath.Join(dir, "tmp", tempName(d)+".extents")
	want := fmt.Sprintf("0 %d\n%d %d\n%d %d\n", testPiece, 2*testPiece, 4*testPiece, 5*testPiece, 6*testPiece)
	require.Eventually(t, func() bool {
		got, _ := os.ReadFile(record)
		return string(got) == want
	}, 5*time.Second, time.Millisecond, "the landed pieces are recorded")
	b.Close()
	s.Close() // the gateway stops mid-fill
	idx.Close()

	s = parallelStore(t, dir, 6)
	second := &rangeSource{data: data}
	got, err := getAll(t, s, d, data, second.source)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(data, got))
	assert.ElementsMatch(t, [][2]int64{{testPiece, 2 * testPiece}, {4 * testPiece, 5 * testPiece}}, second.requested(),
		"only the holes are fetched")
	require.Eventually(t, func() bool { return s.Has(d) }, 5*time.Second, time.Millisecond)
	_, err = os.Stat(record)
	assert.ErrorIs(t, err, os.ErrNotExist, "the record goes with the published blob")
}

func TestAReaderPositionIsFetchedFirst(t *testing.T) {
	s := parallelStore(t, t.TempDir(), 1) // one connection: order is visible
	s.fillConns = 2                       // ...but parallel mode (one worker per piece slot)
	data := randomBytes(97, 10*testPiece)
	d := sha256Digest(t, data)
	gate0, gate1 := make(chan struct{}), make(chan struct{})
	src := &rangeSource{data: data, hold: map[int64]chan struct{}{0: gate0, testPiece: gate1}}
	b, _, err := s.Get(t.Context(), d, int64(len(data)), src.source)
	require.NoError(t, err)
	defer b.Close()
	// Both connections are held (pieces 0 and 1) before the reader comes:
	// otherwise the second worker may take the reader's piece as its
	// first, and it lands before the reader is seen waiting.
	require.Eventually(t, func() bool { return len(src.requested()) == 2 }, 5*time.Second, time.Millisecond)
	// A reader waits at piece 7 while both connections are held.
	r, err := b.NewReader(t.Context(), 7*testPiece+5, b.Size)
	require.NoError(t, err)
	defer r.Close()
	got := make(chan []byte, 1)
	go func() {
		p := make([]byte, 100)
		n, err := io.ReadFull(r, p)
		if err != nil {
			t.Logf("reader: %v", err)
		}
		got <- p[:n]
	}()
	if !assert.Eventually(t, func() bool { return len(b.fill.waitingAt()) == 1 }, 5*time.Second, time.Millisecond) {
		t.Fatalf("waiting %v, requests %v, prefix %d", b.fill.waitingAt(), src.requested(), b.fill.prefix())
	}
	close(gate0)
	select {
	case p := <-got:
		assert.Equal(t, data[7*testPiece+5:7*testPiece+105], p)
	case <-time.After(10 * time.Second):
		t.Fatal("the reader's piece was not fetched")
	}
	// Pieces 0 and 1 may be taken before the reader waits; after that the
	// reader's piece comes before any other.
	reqs := src.requested()
	i := slices.IndexFunc(reqs, func(r [2]int64) bool { return r[0] == 7*testPiece })
	assert.True(t, i >= 0 && i <= 2, "the piece a reader waits in goes next: %v", reqs)
	close(gate1)
}
