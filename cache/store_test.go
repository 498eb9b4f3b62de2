package cache

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"
)

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func sha256Digest(t testing.TB, b []byte) Digest {
	sum := sha256.Sum256(b)
	d, err := NewDigest(SHA256, hex.EncodeToString(sum[:]))
	require.NoError(t, err)
	return d
}

// countingSource serves data and counts how often it was asked; gate, when
// non-nil, holds the body after gateAt bytes until it is closed. Fault
// knobs: cuts ends a body early at each listed offset (each offset once),
// ignoreRange answers every request with the whole blob, failFirst fails
// that many calls, err fails every call.
type countingSource struct {
	data        []byte
	calls       atomic.Int32
	gate        chan struct{}
	gateAt      int
	err         error
	cuts        []int
	ignoreRange bool
	toEnd       bool // sends all its data from off, whatever end was asked
	failFirst   int32
	mu          sync.Mutex
	offsets     []int64
}

func (c *countingSource) source(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
	n := c.calls.Add(1)
	c.mu.Lock()
	c.offsets = append(c.offsets, off)
	c.mu.Unlock()
	if c.err != nil {
		return nil, 0, c.err
	}
	if n <= c.failFirst {
		return nil, 0, errors.New("upstream hiccup")
	}
	stop := min(int(end), len(c.data))
	if c.toEnd {
		stop = len(c.data)
	}
	if c.ignoreRange {
		off, stop = 0, len(c.data)
	}
	c.mu.Lock()
	for i, cut := range c.cuts {
		if cut > int(off) && cut < stop {
			stop = cut
			c.cuts = append(c.cuts[:i:i], c.cuts[i+1:]...)
			break
		}
	}
	c.mu.Unlock()
	if c.gate == nil {
		return io.NopCloser(bytes.NewReader(c.data[off:stop])), off, nil
	}
	pr, pw := io.Pipe()
	go func() {
		if int(off) < c.gateAt {
			pw.Write(c.data[off:min(c.gateAt, stop)])
		}
		select {
		case <-c.gate:
		case <-ctx.Done():
			pw.CloseWithError(ctx.Err())
			return
		}
		if stop > c.gateAt {
			pw.Write(c.data[max(int(off), c.gateAt):stop])
		}
		pw.Close()
	}()
	return pr, off, nil
}

func newStore(t testing.TB, dir string) (*Store, *Index) {
	t.Helper()
	idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	s, err := Open(Options{Dir: dir, Index: idx, Retries: 3, RetryBackoff: time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() {
		s.Close()
		idx.Close()
	})
	return s, idx
}

func readAll(t testing.TB, b *Blob, start, end int64) ([]byte, error) {
	t.Helper()
	r, err := b.NewReader(context.Background(), start, end)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func TestDigestParsing(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr bool
	}{
		{"sha256", "sha256:" + fmt.Sprintf("%064x", 7), false},
		{"upper case is normalised", "sha256:" + fmt.Sprintf("%064X", 0xABC), false},
		{"git sha1", "git-sha1:" + fmt.Sprintf("%040x", 9), false},
		{"short", "sha256:abc", true},
		{"not hex", "sha256:" + fmt.Sprintf("%064s", "zz"), true},
		{"unknown algo", "md5:" + fmt.Sprintf("%032x", 1), true},
		{"no prefix", fmt.Sprintf("%064x", 7), true},
		{"traversal", "sha256:../../../../etc/passwd", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := ParseDigest(tt.in)
			if tt.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, d, must(ParseDigest(d.String())))
			assert.Equal(t, d.Hex, string(bytes.ToLower([]byte(d.Hex))))
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestExtentsMergeAndAvailability(t *testing.T) {
	var e extents
	e.add(10, 10) // [10,20)
	e.add(30, 5)  // [30,35)
	assert.Equal(t, int64(0), e.availableFrom(0))
	assert.Equal(t, int64(20), e.availableFrom(10))
	assert.Equal(t, int64(20), e.availableFrom(15))
	assert.Equal(t, int64(20), e.availableFrom(20), "byte 20 has not landed")
	e.add(0, 10)
	assert.Equal(t, int64(20), e.availableFrom(0))
	e.add(20, 10) // bridges to [30,35)
	assert.Equal(t, int64(35), e.availableFrom(0))
	assert.Len(t, e.spans, 1)
	e.add(5, 3) // inside
	assert.Equal(t, [][2]int64{{0, 35}}, e.spans)
}

func TestColdThenWarmFetchesUpstreamOnce(t *testing.T) {
	dir := t.TempDir()
	s, _ := newStore(t, dir)
	data := randomBytes(1, 3<<20+17)
	d := sha256Digest(t, data)
	src := &countingSource{data: data}

	b, res, err := s.Get(t.Context(), d, int64(len(data)), src.source)
	require.NoError(t, err)
	assert.Equal(t, Miss, res)
	got, err := readAll(t, b, 0, b.Size)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(data, got))
	b.Close()

	require.Eventually(t, func() bool { return s.Has(d) }, 5*time.Second, 5*time.Millisecond)
	b, res, err = s.Get(t.Context(), d, int64(len(data)), src.source)
	require.NoError(t, err)
	assert.Equal(t, Hit, res)
	require.NotNil(t, b.File(), "a published blob is served from its file")
	got, err = readAll(t, b, 100, 200)
	require.NoError(t, err)
	assert.Equal(t, data[100:200], got)
	b.Close()

	assert.Equal(t, int32(1), src.calls.Load())
	st := s.Stats()
	assert.Equal(t, int64(1), st.Blobs)
	assert.Equal(t, int64(len(data)), st.Bytes)
	assert.Zero(t, st.FillsInFlight)

	fi, err := os.Stat(s.blobPath(d))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o400), fi.Mode().Perm(), "published blobs are read-only, and the owner's alone")
}

func TestConcurrentColdRequestsShareOneFill(t *testing.T) {
	s, _ := newStore(t, t.TempDir())
	data := randomBytes(2, 8<<20)
	d := sha256Digest(t, data)
	src := &countingSource{data: data, gate: make(chan struct{}), gateAt: 1 << 20}

	var results sync.Map
	var g errgroup.Group
	for i := range 16 {
		g.Go(func() error {
			b, res, err := s.Get(context.Background(), d, int64(len(data)), src.source)
			if err != nil {
				return err
			}
			defer b.Close()
			results.Store(i, res)
			got, err := readAll(t, b, 0, b.Size)
			if err != nil {
				return err
			}
			if !bytes.Equal(got, data) {
				return fmt.Errorf("client %d got wrong bytes", i)
			}
			return nil
		})
	}
	// Let every client join while the fill is held, then release it.
	require.Eventually(t, func() bool {
		n := 0
		results.Range(func(any, any) bool { n++; return true })
		return n == 16
	}, 5*time.Second, time.Millisecond)
	close(src.gate)
	require.NoError(t, g.Wait())

	assert.Equal(t, int32(1), src.calls.Load())
	misses := 0
	results.Range(func(_, v any) bool {
		if v.(Result) == Miss {
			misses++
		}
		return true
	})
	assert.Equal(t, 1, misses, "exactly one request starts the fill")
}

func TestReaderStreamsWhileFillingButHoldsBackFinalByte(t *testing.T) {
	s, _ := newStore(t, t.TempDir())
	data := randomBytes(3, 1<<20)
	d := sha256Digest(t, data)
	src := &countingSource{data: data, gate: make(chan struct{}), gateAt: 600 << 10}

	b, _, err := s.Get(t.Context(), d, int64(len(data)), src.source)
	require.NoError(t, err)
	defer b.Close()

	// A range wholly inside the landed bytes streams all but its last byte.
	r, err := b.NewReader(t.Context(), 1000, 2000)
	require.NoError(t, err)
	defer r.Close()
	assertFinalByteHeldBack(t, r, data, src.gate)
}

func TestCorruptUpstreamIsNeverPublishedAndReadersFail(t *testing.T) {
	isDigest := func(err error) bool { var e *DigestMismatchError; return errors.As(err, &e) }
	isSize := func(err error) bool { var e *SizeMismatchError; return errors.As(err, &e) }
	tests := []struct {
		name string
		body func(data []byte) []byte
		want func(error) bool
	}{
		{"wrong bytes", func(data []byte) []byte {
			bad := bytes.Clone(data)
			bad[len(bad)-1] ^= 0xff
			return bad
		}, isDigest},
		{"short body", func(data []byte) []byte { return data[:len(data)-10] }, isSize},
		{"long body", func(data []byte) []byte { return append(bytes.Clone(data), 1, 2, 3) }, isSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s, _ := newStore(t, dir)
			data := randomBytes(4, 700<<10)
			d := sha256Digest(t, data)
			bad := &countingSource{data: tt.body(data), toEnd: true}

			// The fill may fail before Get returns (then Get reports it) or
			// while the reader streams; either way no reader completes.
			b, _, err := s.Get(t.Context(), d, int64(len(data)), bad.source)
			if err == nil {
				var got []byte
				got, err = readAll(t, b, 0, b.Size)
				b.Close()
				require.Error(t, err, "a reader never completes on a bad fill")
				assert.True(t, IsFillError(err))
				assert.Less(t, len(got), len(data))
			}
			assert.True(t, tt.want(err), "wrong failure: %v", err)

			require.Eventually(t, func() bool { return s.Stats().FillsInFlight == 0 }, 5*time.Second, time.Millisecond)
			assert.False(t, s.Has(d))
			tmp, _ := os.ReadDir(filepath.Join(dir, "tmp"))
			assert.Empty(t, tmp, "the temp file is removed")

			// The next request starts afresh and, with good bytes, succeeds.
			good := &countingSource{data: data}
			b, res, err := s.Get(t.Context(), d, int64(len(data)), good.source)
			require.NoError(t, err)
			assert.Equal(t, Miss, res)
			got, err := readAll(t, b, 0, b.Size)
			b.Close()
			require.NoError(t, err)
			assert.True(t, bytes.Equal(data, got))
		})
	}
}

func TestUpstreamRefusalIsReturnedToEveryWaiter(t *testing.T) {
	s, _ := newStore(t, t.TempDir())
	data := []byte("hello")
	d := sha256Digest(t, data)
	refusal := errors.New("upstream said 403")
	src := &countingSource{err: refusal}
	_, _, err := s.Get(t.Context(), d, 5, src.source)
	require.ErrorIs(t, err, refusal)
	assert.False(t, s.Has(d))
}

func TestFillOutlivesTheClientThatStartedIt(t *testing.T) {
	s, _ := newStore(t, t.TempDir())
	data := randomBytes(5, 2<<20)
	d := sha256Digest(t, data)
	src := &countingSource{data: data, gate: make(chan struct{}), gateAt: 1 << 20}

	ctx, cancel := context.WithCancel(t.Context())
	b, _, err := s.Get(ctx, d, int64(len(data)), src.source)
	require.NoError(t, err)
	r, err := b.NewReader(ctx, 0, b.Size)
	require.NoError(t, err)
	_, err = io.ReadFull(r, make([]byte, 1000))
	require.NoError(t, err)
	cancel() // the first client goes away mid-download
	_, err = io.ReadAll(r)
	assert.ErrorIs(t, err, context.Canceled)
	r.Close()
	b.Close()

	close(src.gate)
	require.Eventually(t, func() bool { return s.Has(d) }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, int32(1), src.calls.Load())
}

func TestGitBlobDigestVerifies(t *testing.T) {
	s, _ := newStore(t, t.TempDir())
	data := []byte(`{"model_type": "bert"}`)
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", len(data))
	h.Write(data)
	d, err := NewDigest(GitSHA1, hex.EncodeToString(h.Sum(nil)))
	require.NoError(t, err)
	b, _, err := s.Get(t.Context(), d, int64(len(data)), (&countingSource{data: data}).source)
	require.NoError(t, err)
	got, err := readAll(t, b, 0, b.Size)
	b.Close()
	require.NoError(t, err)
	assert.Equal(t, data, got)
	require.Eventually(t, func() bool { return s.Has(d) }, 5*time.Second, 5*time.Millisecond)
}

func TestReopenCountsPublishedBlobsAndDropsTempFiles(t *testing.T) {
	dir := t.TempDir()
	idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	s, err := Open(Options{Dir: dir, Index: idx})
	require.NoError(t, err)
	data := randomBytes(6, 12345)
	d := sha256Digest(t, data)
	b, _, err := s.Get(t.Context(), d, int64(len(data)), (&countingSource{data: data}).source)
	require.NoError(t, err)
	_, err = readAll(t, b, 0, b.Size)
	require.NoError(t, err)
	b.Close()
	require.Eventually(t, func() bool { return s.Has(d) }, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, s.Close())
	require.NoError(t, idx.Close())
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tmp", "leftover.partial"), []byte("x"), 0o644))

	s2, _ := newStore(t, dir)
	st := s2.Stats()
	assert.Equal(t, int64(1), st.Blobs)
	assert.Equal(t, int64(len(data)), st.Bytes)
	tmp, _ := os.ReadDir(filepath.Join(dir, "tmp"))
	assert.Empty(t, tmp)
}

func TestIndexTTLAndScan(t *testing.T) {
	idx, err := OpenIndex(t.TempDir(), nil)
	require.NoError(t, err)
	defer idx.Close()
	require.NoError(t, idx.Set("a/1", []byte("one"), 0))
	require.NoError(t, idx.Set("a/2", []byte("two"), time.Second))
	require.NoError(t, idx.Set("b/1", []byte("other"), 0))
	v, err := idx.Get("a/2")
	require.NoError(t, err)
	assert.Equal(t, "two", string(v))
	var keys []string
	require.NoError(t, idx.Scan("a/", func(k string, _ []byte) error { keys = append(keys, k); return nil }))
	assert.Equal(t, []string{"a/1", "a/2"}, keys)
	_, err = idx.Get("missing")
	assert.ErrorIs(t, err, ErrNotFound)
	// badger's TTL has a one-second resolution.
	require.Eventually(t, func() bool {
		_, err := idx.Get("a/2")
		return errors.Is(err, ErrNotFound)
	}, 4*time.Second, 50*time.Millisecond)
}

func TestOpenReturnsOnlyPublishedBlobs(t *testing.T) {
	s, _ := newStore(t, t.TempDir())
	data := randomBytes(7, 4096)
	d := sha256Digest(t, data)
	_, err := s.Open(d)
	require.ErrorIs(t, err, ErrNotFound)

	b, _, err := s.Get(t.Context(), d, int64(len(data)), (&countingSource{data: data}).source)
	require.NoError(t, err)
	_, err = readAll(t, b, 0, b.Size)
	require.NoError(t, err)
	b.Close()
	require.Eventually(t, func() bool { return s.Has(d) }, 5*time.Second, 5*time.Millisecond)

	b, err = s.Open(d)
	require.NoError(t, err)
	defer b.Close()
	assert.Equal(t, int64(len(data)), b.Size)
	assert.NotNil(t, b.File())
}

func TestUnverifiedContentIsPublishedUnderItsComputedHash(t *testing.T) {
	s, _ := newStore(t, t.TempDir())
	data := randomBytes(8, 300<<10)
	src := &countingSource{data: data, gate: make(chan struct{}), gateAt: 100 << 10}
	published := make(chan Digest, 4)

	var eg errgroup.Group
	joined := make(chan struct{}, 3)
	for range 3 {
		eg.Go(func() error {
			b, _, err := s.GetUnverified(context.Background(), "civitai:1", int64(len(data)), src.source, func(d Digest) { published <- d })
			joined <- struct{}{}
			if err != nil {
				return err
			}
			defer b.Close()
			got, err := readAll(t, b, 0, b.Size)
			if err == nil && !bytes.Equal(got, data) {
				err = errors.New("wrong bytes")
			}
			return err
		})
	}
	// All three joined the fill while it was held: they must share it.
	for range 3 {
		<-joined
	}
	close(src.gate)
	require.NoError(t, eg.Wait())
	assert.Equal(t, int32(1), src.calls.Load(), "one fill for one key")
	d := <-published
	assert.Equal(t, sha256Digest(t, data), d)
	assert.True(t, s.Has(d))

	// A short body is still refused: the size is checked. Whether the
	// refusal comes from GetUnverified or from reading the blob, no reader
	// gets a whole body and nothing is published.
	short := &countingSource{data: data[:len(data)-1]}
	shortPublished := make(chan Digest, 1)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second) // a mutant must fail, not hang
	defer cancel()
	b, _, err := s.GetUnverified(ctx, "civitai:2", int64(len(data)), short.source, func(d Digest) { shortPublished <- d })
	if err == nil {
		var r io.ReadCloser
		if r, err = b.NewReader(ctx, 0, b.Size); err == nil {
			_, err = io.ReadAll(r)
			r.Close()
		}
		b.Close()
	}
	require.Error(t, err, "a short body was served as complete")
	require.NotErrorIs(t, err, context.DeadlineExceeded, "a short body left its reader waiting")
	require.Eventually(t, func() bool { return s.Stats().FillsInFlight == 0 }, 10*time.Second, time.Millisecond)
	select {
	case d := <-shortPublished:
		t.Fatalf("published a short body as %s", d)
	default:
	}
	assert.False(t, s.Has(sha256Digest(t, short.data)), "the short body is not on disk")
}

// permanentError is an upstream refusal: not worth retrying.
type permanentError struct{}

func (permanentError) Error() string   { return "upstream refused" }
func (permanentError) Permanent() bool { return true }

func TestCutUpstreamTransfersResumeFromTheBytesLanded(t *testing.T) {
	tests := []struct {
		name        string
		src         *countingSource
		wantOffsets []int64
	}{
		{"cut twice", &countingSource{cuts: []int{300 << 10, 700 << 10}}, []int64{0, 300 << 10, 700 << 10}},
		{"first attempts fail", &countingSource{failFirst: 2}, []int64{0, 0, 0}},
		{"range ignored: restart from zero", &countingSource{cuts: []int{500 << 10}, ignoreRange: true}, []int64{0, 500 << 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newStore(t, t.TempDir())
			data := randomBytes(9, 1<<20)
			tt.src.data = data
			d := sha256Digest(t, data)
			b, _, err := s.Get(t.Context(), d, int64(len(data)), tt.src.source)
			require.NoError(t, err)
			got, err := readAll(t, b, 0, b.Size)
			b.Close()
			require.NoError(t, err)
			assert.True(t, bytes.Equal(data, got), "the reader sees one uninterrupted, correct body")
			tt.src.mu.Lock()
			assert.Equal(t, tt.wantOffsets, tt.src.offsets)
			tt.src.mu.Unlock()
			require.Eventually(t, func() bool { return s.Has(d) }, 5*time.Second, time.Millisecond)
		})
	}
}

func TestFillGivesUpAfterRetriesAndOnPermanentRefusals(t *testing.T) {
	s, _ := newStore(t, t.TempDir())
	data := randomBytes(10, 4096)
	d := sha256Digest(t, data)

	always := &countingSource{failFirst: 1000, data: data}
	_, _, err := s.Get(t.Context(), d, int64(len(data)), always.source)
	require.ErrorIs(t, err, ErrRetriesExhausted)
	assert.Equal(t, int32(4), always.calls.Load(), "one attempt and three retries")

	refused := &countingSource{err: permanentError{}}
	_, _, err = s.Get(t.Context(), d, int64(len(data)), refused.source)
	require.ErrorAs(t, err, &permanentError{})
	assert.Equal(t, int32(1), refused.calls.Load(), "a refusal is not retried")
}

func TestAFillInterruptedByARestartResumesFromItsTempFile(t *testing.T) {
	dir := t.TempDir()
	data := randomBytes(11, 1<<20)
	d := sha256Digest(t, data)
	// What a killed gateway leaves: the first bytes in the fill's temp file.
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "tmp"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tmp", tempName(d)), data[:300<<10], 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tmp", "fill-123.tmp"), []byte("junk"), 0o644))

	s, _ := newStore(t, dir)
	tmp, _ := os.ReadDir(filepath.Join(dir, "tmp"))
	require.Len(t, tmp, 1, "the partial of a known digest is kept, other leftovers go")

	src := &countingSource{data: data}
	b, _, err := s.Get(t.Context(), d, int64(len(data)), src.source)
	require.NoError(t, err)
	got, err := readAll(t, b, 0, b.Size)
	b.Close()
	require.NoError(t, err)
	assert.True(t, bytes.Equal(data, got))
	assert.Equal(t, []int64{300 << 10}, src.offsets, "only the missing bytes were fetched")
	require.Eventually(t, func() bool { return s.Has(d) }, 5*time.Second, time.Millisecond)

	// A partial holding wrong bytes is caught by the hash, not published.
	d2data := randomBytes(12, 64<<10)
	d2 := sha256Digest(t, d2data)
	bad := bytes.Clone(d2data[:1000])
	bad[0] ^= 1
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tmp", tempName(d2)), bad, 0o644))
	b, _, err = s.Get(t.Context(), d2, int64(len(d2data)), (&countingSource{data: d2data}).source)
	if err == nil {
		_, err = readAll(t, b, 0, b.Size)
		b.Close()
	}
	require.Error(t, err)
	require.Eventually(t, func() bool { return s.Stats().FillsInFlight == 0 }, 5*time.Second, time.Millisecond)
	assert.False(t, s.Has(d2))
	b, _, err = s.Get(t.Context(), d2, int64(len(d2data)), (&countingSource{data: d2data}).source)
	require.NoError(t, err, "the next fill starts from scratch")
	_, err = readAll(t, b, 0, b.Size)
	b.Close()
	require.NoError(t, err)
}

func TestShutdownKeepsTheBytesOfAFillInFlight(t *testing.T) {
	dir := t.TempDir()
	idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	defer idx.Close()
	s, err := Open(Options{Dir: dir, Index: idx})
	require.NoError(t, err)
	data := randomBytes(13, 1<<20)
	d := sha256Digest(t, data)
	src := &countingSource{data: data, gate: make(chan struct{}), gateAt: 512 << 10}
	b, _, err := s.Get(t.Context(), d, int64(len(data)), src.source)
	require.NoError(t, err)
	r, err := b.NewReader(t.Context(), 0, 1000)
	require.NoError(t, err)
	_, err = io.ReadFull(r, make([]byte, 999))
	require.NoError(t, err)
	r.Close()
	b.Close()
	require.NoError(t, s.Close())
	fi, err := os.Stat(filepath.Join(dir, "tmp", tempName(d)))
	require.NoError(t, err, "the partial survives shutdown")
	assert.Positive(t, fi.Size())
}

func TestReconcileMakesIndexAndFilesAgree(t *testing.T) {
	dir := t.TempDir()
	idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	s, err := Open(Options{Dir: dir, Index: idx})
	require.NoError(t, err)
	var ds []Digest
	for i := range 3 {
		data := randomBytes(uint64(20+i), 1000+i)
		d := sha256Digest(t, data)
		ds = append(ds, d)
		b, _, err := s.Get(t.Context(), d, int64(len(data)), (&countingSource{data: data}).source)
		require.NoError(t, err)
		_, err = readAll(t, b, 0, b.Size)
		require.NoError(t, err)
		b.Close()
		require.Eventually(t, func() bool { return s.Has(d) }, 5*time.Second, time.Millisecond)
	}
	require.NoError(t, s.Close())
	// A file lost behind the index's back, and a record lost behind the
	// files'.
	require.NoError(t, os.Remove(s.blobPath(ds[0])))
	require.NoError(t, idx.Delete(blobKey(ds[1])))
	require.NoError(t, idx.Close())

	s2, idx2 := newStore(t, dir)
	assert.Equal(t, int64(2), s2.Stats().Blobs)
	assert.Equal(t, int64(1001+1002), s2.Stats().Bytes)
	_, err = idx2.Get(blobKey(ds[0]))
	assert.ErrorIs(t, err, ErrNotFound, "the record without a file is dropped")
	_, err = idx2.Get(blobKey(ds[1]))
	assert.NoError(t, err, "the file without a record gets one")
}

func TestLockDirKeepsASecondProcessOut(t *testing.T) {
	dir := t.TempDir()
	l, err := LockDir(dir)
	require.NoError(t, err)
	_, err = LockDir(dir) // flock is per open file, so this stands in for another process
	require.Error(t, err)
	assert.Contains(t, err.Error(), "in use by another process")
	require.NoError(t, l.Close())
	l2, err := LockDir(dir)
	require.NoError(t, err)
	l2.Close()
}

// fillBlob publishes data through s and returns its digest.
func fillBlob(t *testing.T, s *Store, data []byte) Digest {
	t.Helper()
	d := sha256Digest(t, data)
	b, _, err := s.Get(t.Context(), d, int64(len(data)), (&countingSource{data: data}).source)
	require.NoError(t, err)
	_, err = readAll(t, b, 0, b.Size)
	require.NoError(t, err)
	b.Close()
	require.Eventually(t, func() bool { return s.Has(d) }, 5*time.Second, time.Millisecond)
	return d
}

func TestEvictionRemovesLeastRecentlyUsedBlobsFirst(t *testing.T) {
	dir := t.TempDir()
	idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	defer idx.Close()
	pinned := map[Digest]bool{}
	var evicted []Digest
	var mu sync.Mutex
	s, err := Open(Options{Dir: dir, Index: idx, MaxSize: 3000, AccessFlush: time.Hour,
		Pinned: func() map[Digest]bool { return pinned },
		OnEvict: func(d Digest, _ int64) {
			mu.Lock()
			evicted = append(evicted, d)
			mu.Unlock()
		}})
	require.NoError(t, err)
	defer s.Close()
	evictedNow := func() []Digest {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(evicted)
	}

	a := fillBlob(t, s, randomBytes(30, 1000))
	time.Sleep(5 * time.Millisecond) // access times have a millisecond grain
	b := fillBlob(t, s, randomBytes(31, 1000))
	time.Sleep(5 * time.Millisecond)
	c := fillBlob(t, s, randomBytes(32, 1000))
	time.Sleep(5 * time.Millisecond)
	// a is used again: b is now the least recently used.
	ba, err := s.Open(a)
	require.NoError(t, err)
	ba.Close()
	time.Sleep(5 * time.Millisecond)

	d := fillBlob(t, s, randomBytes(33, 1000))
	require.Eventually(t, func() bool { return len(evictedNow()) == 1 }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, []Digest{b}, evictedNow())
	assert.False(t, s.Has(b))
	assert.Equal(t, int64(3000), s.Stats().Bytes)

	// An open blob and a pinned one are skipped: c is next by age but
	// held open; a is pinned; so d goes.
	held, err := s.Open(c)
	require.NoError(t, err)
	pinned[a] = true
	time.Sleep(5 * time.Millisecond)
	fillBlob(t, s, randomBytes(34, 1000))
	require.Eventually(t, func() bool { return len(evictedNow()) == 2 }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, d, evictedNow()[1])
	assert.True(t, s.Has(c) && s.Has(a))
	held.Close()
}

func TestEvictionKeepsAFreeSpaceFloor(t *testing.T) {
	dir := t.TempDir()
	idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	defer idx.Close()
	// A fake file system: free space is a base plus what eviction frees.
	var base, freed atomic.Int64
	base.Store(1 << 30)
	s, err := Open(Options{Dir: dir, Index: idx, MinFree: 1 << 30, AccessFlush: time.Hour,
		DiskFree: func() (int64, error) { return base.Load() + freed.Load(), nil },
		OnEvict:  func(_ Digest, size int64) { freed.Add(size) }})
	require.NoError(t, err)
	defer s.Close()
	x := fillBlob(t, s, randomBytes(40, 2000))
	y := fillBlob(t, s, randomBytes(41, 2000))
	assert.True(t, s.Has(x) && s.Has(y))

	base.Store(1<<30 - 1500) // 1500 bytes short of the floor: one blob goes
	s.requestEviction()
	require.Eventually(t, func() bool { return s.Stats().Blobs == 1 }, 5*time.Second, 5*time.Millisecond)
	s.requestEviction()
	time.Sleep(50 * time.Millisecond)
	assert.Equal(t, int64(1), s.Stats().Blobs, "once above the floor, nothing more goes")
}

func TestAFullDiskFailsTheFillButStreamingReadersGoOnFromUpstream(t *testing.T) {
	dir := t.TempDir()
	s, _ := newStore(t, dir)
	var written atomic.Int64
	s.writeAt = func(f *os.File, p []byte, off int64) (int, error) {
		if written.Add(int64(len(p))) > 300<<10 {
			return 0, syscall.ENOSPC
		}
		return f.WriteAt(p, off)
	}
	data := randomBytes(50, 1<<20)
	d := sha256Digest(t, data)
	src := &countingSource{data: data, gate: make(chan struct{}), gateAt: 256 << 10}
	b, _, err := s.Get(t.Context(), d, int64(len(data)), src.source)
	require.NoError(t, err)
	r, err := b.NewReader(t.Context(), 0, b.Size)
	require.NoError(t, err)
	first := make([]byte, 100<<10)
	_, err = io.ReadFull(r, first) // a client already streaming
	require.NoError(t, err)
	close(src.gate) // now the disk fills up
	rest, err := io.ReadAll(r)
	require.NoError(t, err)
	r.Close()
	b.Close()
	assert.True(t, bytes.Equal(data, append(first, rest...)), "the client got every byte")

	require.Eventually(t, func() bool { return s.Stats().FillsInFlight == 0 }, 5*time.Second, time.Millisecond)
	assert.False(t, s.Has(d), "nothing is published")
	tmp, _ := os.ReadDir(filepath.Join(dir, "tmp"))
	assert.Empty(t, tmp, "the temp file is removed")
	assert.GreaterOrEqual(t, src.calls.Load(), int32(2), "the reader went to the upstream itself")
}

// stallingReader yields data, then blocks until ctx ends.
type stallingReader struct {
	ctx  context.Context
	data []byte
}

func (r *stallingReader) Read(p []byte) (int, error) {
	if len(r.data) > 0 {
		n := copy(p, r.data)
		r.data = r.data[n:]
		return n, nil
	}
	<-r.ctx.Done()
	return 0, r.ctx.Err()
}

func TestAStalledUpstreamBodyIsCutAndResumed(t *testing.T) {
	dir := t.TempDir()
	idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	defer idx.Close()
	s, err := Open(Options{Dir: dir, Index: idx, StallTimeout: 100 * time.Millisecond, RetryBackoff: time.Millisecond})
	require.NoError(t, err)
	defer s.Close()
	data := randomBytes(60, 500<<10)
	d := sha256Digest(t, data)
	var calls atomic.Int32
	src := func(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
		if calls.Add(1) == 1 {
			return io.NopCloser(&stallingReader{ctx: ctx, data: data[:100<<10]}), 0, nil
		}
		return io.NopCloser(bytes.NewReader(data[off:])), off, nil
	}
	b, _, err := s.Get(t.Context(), d, int64(len(data)), src)
	require.NoError(t, err)
	got, err := readAll(t, b, 0, b.Size)
	b.Close()
	require.NoError(t, err)
	assert.True(t, bytes.Equal(data, got))
	assert.Equal(t, int32(2), calls.Load(), "the stalled body was cut and resumed once")
}

// Issue 9: once the hash matched, readers get their final byte at once;
// the publish (fsync, rename, directory fsync, index) follows, and a slow
// disk sync does not hold the answers back.
func TestReadersGetTheFinalByteOnceVerifiedBeforeTheSync(t *testing.T) {
	s, _ := newStore(t, t.TempDir())
	syncing := make(chan struct{})
	release := make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce) // before the store's own cleanup, which waits for the fill
	s.syncPublish = func(f *os.File) error {
		close(syncing)
		<-release
		return f.Sync()
	}
	data := randomBytes(9, 1<<20)
	d := sha256Digest(t, data)
	src := &countingSource{data: data}

	b, _, err := s.Get(t.Context(), d, int64(len(data)), src.source)
	require.NoError(t, err)
	defer b.Close()
	got := make(chan []byte, 1)
	go func() {
		body, err := readAll(t, b, 0, b.Size)
		assert.NoError(t, err)
		got <- body
	}()
	<-syncing
	select {
	case body := <-got:
		assert.True(t, bytes.Equal(data, body))
	case <-time.After(10 * time.Second):
		t.Fatal("the reader waits for the blob's sync")
	}
	assert.False(t, s.Has(d), "published only after the sync")
	releaseOnce()
	require.Eventually(t, func() bool { return s.Has(d) && s.Stats().FillsInFlight == 0 }, 10*time.Second, time.Millisecond)
}

// WriteTo (the path that reaches sendfile) holds back the final byte until
// the blob verified, as Read does.
func TestWriteToHoldsBackTheFinalByteUntilVerified(t *testing.T) {
	s, _ := newStore(t, t.TempDir())
	data := randomBytes(4, 1<<20)
	d := sha256Digest(t, data)
	src := &countingSource{data: data, gate: make(chan struct{}), gateAt: 600 << 10}

	b, _, err := s.Get(t.Context(), d, int64(len(data)), src.source)
	require.NoError(t, err)
	defer b.Close()
	r, err := b.NewReader(t.Context(), 1000, 2000)
	require.NoError(t, err)
	defer r.Close()
	wt, ok := r.(io.WriterTo)
	require.True(t, ok)
	pr, pw := io.Pipe()
	go func() {
		_, err := wt.WriteTo(pw)
		pw.CloseWithError(err)
	}()
	assertFinalByteHeldBack(t, pr, data, src.gate)
}

// TestStatsSnapshot checks that one Stats call carries the free space and
// the index size alongside the counts, and that a failing free-space probe
// reads as 0 with its error rather than a stale or invented number.
func TestStatsSnapshot(t *testing.T) {
	tests := []struct {
		name     string
		diskFree func() (int64, error)
		wantFree int64
		wantErr  bool
	}{
		{"probe answers", func() (int64, error) { return 12345, nil }, 12345, false},
		{"probe fails", func() (int64, error) { return 99, errors.New("statfs: no such device") }, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
			require.NoError(t, err)
			defer idx.Close()
			s, err := Open(Options{Dir: dir, Index: idx, DiskFree: tt.diskFree, IndexSize: func() int64 { return 777 }})
			require.NoError(t, err)
			defer s.Close()
			st := s.Stats()
			assert.Equal(t, tt.wantFree, st.DiskFree)
			assert.Equal(t, tt.wantErr, st.DiskFreeErr != nil)
			assert.Equal(t, int64(777), st.IndexBytes)
		})
	}
}

// assertFinalByteHeldBack reads bytes 1000–1998 of data from r (a reader
// of [1000, 2000)) at once, checks the final byte does not come while the
// source is held at gate, then releases it and gets that byte.
func assertFinalByteHeldBack(t *testing.T, r io.Reader, data []byte, gate chan struct{}) {
	t.Helper()
	got := make([]byte, 999)
	_, err := io.ReadFull(r, got)
	require.NoError(t, err)
	assert.Equal(t, data[1000:1999], got)

	last := make(chan []byte)
	go func() {
		rest, _ := io.ReadAll(r)
		last <- rest
	}()
	select {
	case <-last:
		t.Fatal("the final byte arrived before the blob verified")
	case <-time.After(100 * time.Millisecond):
	}
	close(gate)
	assert.Equal(t, data[1999:2000], <-last)
}

// TestFillDoneHookHearsHowTheFillItStartedEnded: a Get whose ctx carries
// WithFillDone learns the outcome of the fill it started (the digest
// mismatch of bad bytes, nil once published), before a later request can
// start the next fill; a Get that joins another's fill registers nothing.
func TestFillDoneHookHearsHowTheFillItStartedEnded(t *testing.T) {
	s, _ := newStore(t, t.TempDir())
	data := randomBytes(6, 300<<10)
	d := sha256Digest(t, data)
	bad := bytes.Clone(data)
	bad[len(bad)/2] ^= 1

	outcome := make(chan error, 1)
	next := func() error {
		select {
		case err := <-outcome:
			return err
		case <-time.After(5 * time.Second):
			t.Fatal("the fill's hook was not called")
			return nil
		}
	}
	ctx := WithFillDone(t.Context(), func(err error) { outcome <- err })
	b, _, err := s.Get(ctx, d, int64(len(data)), (&countingSource{data: bad}).source)
	if err == nil {
		_, err = readAll(t, b, 0, b.Size)
		b.Close()
	}
	require.Error(t, err)
	var dm *DigestMismatchError
	require.ErrorAs(t, next(), &dm, "the hook hears the digest mismatch")

	// Good bytes: nil. A second Get joins that fill while it is held back;
	// its own hook is never called.
	gated := &countingSource{data: data, gate: make(chan struct{}), gateAt: 1 << 10}
	b, res, err := s.Get(ctx, d, int64(len(data)), gated.source)
	require.NoError(t, err)
	require.Equal(t, Miss, res)
	joined := WithFillDone(t.Context(), func(error) { t.Error("the hook of a Get that joined was called") })
	b2, res, err := s.Get(joined, d, int64(len(data)), (&countingSource{data: bad}).source)
	require.NoError(t, err)
	require.Equal(t, Coalesced, res)
	close(gated.gate)
	got, err := readAll(t, b2, 0, b2.Size)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(data, got))
	b.Close()
	b2.Close()
	assert.NoError(t, next())
	assert.True(t, s.Has(d))
}
