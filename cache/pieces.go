package cache

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// fillBufSize is the unit of progress readers see, and the one buffer each
// upstream connection of a fill reads into.
const fillBufSize = 256 << 10

// errNoRanges: the upstream answered a ranged request with the whole blob;
// the fill goes on with one stream.
var errNoRanges = errors.New("upstream ignores ranges")

// prefixHasher hashes the blob's contiguous prefix, once, as it grows: the
// bytes of a write at the end of the prefix straight from the buffer, and
// pieces that landed earlier further on by reading them back from the
// temp file when the prefix reaches them.
type prefixHasher struct {
	mu   sync.Mutex
	h    hash.Hash
	to   int64 // bytes [0, to) are hashed
	f    *fill
	file *os.File
	buf  []byte
}

// landed announces [off, off+len(p)) — already written — to readers and
// hashes whatever the prefix gained.
//
// Only one writer hashes at a time, and the others do not wait for it:
// a writer that finds the hasher busy goes back to its connection, and
// the busy one, which re-reads the prefix until it has caught up, hashes
// its bytes (read back from the file). So parallel pieces are never
// serialised behind the hash. The one window the busy writer can miss —
// bytes announced just as it stops — is closed by the fill's final
// advance, and by the next write.
func (ph *prefixHasher) landed(off int64, p []byte) error {
	ph.f.landed(off, int64(len(p)))
	if !ph.mu.TryLock() {
		return nil
	}
	defer ph.mu.Unlock()
	if off == ph.to {
		ph.h.Write(p)
		ph.to += int64(len(p))
	}
	return ph.advanceLocked()
}

func (ph *prefixHasher) advance() error {
	ph.mu.Lock()
	defer ph.mu.Unlock()
	return ph.advanceLocked()
}

func (ph *prefixHasher) advanceLocked() error {
	for {
		end := ph.f.prefix()
		if ph.to >= end {
			return nil
		}
		if ph.buf == nil {
			ph.buf = make([]byte, fillBufSize)
		}
		n := int(min(int64(len(ph.buf)), end-ph.to))
		if _, err := ph.file.ReadAt(ph.buf[:n], ph.to); err != nil {
			return fmt.Errorf("%w: reading temp file back to hash it: %w", ErrStorage, err)
		}
		ph.h.Write(ph.buf[:n])
		ph.to += int64(n)
	}
}

// fillCopy moves the upstream's bytes of one fill into its temp file.
type fillCopy struct {
	s       *Store
	f       *fill
	tmp     *os.File
	ph      *prefixHasher
	src     Source
	fetched atomic.Int64 // bytes received from upstream
	retries atomic.Int32 // attempts beyond the first of each piece
	saveMu  sync.Mutex
}

// write puts p, the blob's bytes at off, into the temp file: only the
// parts not already there (a restart from zero after a 200, or a stream
// that overlaps pieces an earlier run kept), so that every byte is written
// and hashed once.
func (fc *fillCopy) write(off int64, p []byte) error {
	for _, m := range fc.f.missing(off, off+int64(len(p))) {
		q := p[m[0]-off : m[1]-off]
		if _, err := fc.s.writeAt(fc.tmp, q, m[0]); err != nil {
			return fmt.Errorf("%w: writing temp file: %w", ErrStorage, err)
		}
		if err := fc.ph.landed(m[0], q); err != nil {
			return err
		}
	}
	return nil
}

// copyRange reads body, whose first byte is the blob's byte pos, into the
// temp file up to end, and returns how far it got. It stops at the end of
// body, at end, or at the first error; a write failure is an ErrStorage.
func (fc *fillCopy) copyRange(body io.Reader, pos, end int64, buf []byte) (int64, error) {
	for pos < end {
		n, rerr := io.ReadFull(body, buf[:min(int64(len(buf)), end-pos)])
		if n > 0 {
			fc.fetched.Add(int64(n))
			if err := fc.write(pos, buf[:n]); err != nil {
				return pos, err
			}
			pos += int64(n)
		}
		switch rerr {
		case nil:
		case io.EOF, io.ErrUnexpectedEOF:
			return pos, nil
		default:
			return pos, fmt.Errorf("reading upstream at byte %d: %w", pos, rerr)
		}
	}
	return pos, nil
}

// attempt makes one request for [pos, end) and copies its body. It
// returns the offset the body started at (0 when the range was ignored)
// and how far the copy got.
func (fc *fillCopy) attempt(ctx context.Context, pos, end int64, buf []byte, ranged bool) (start, reached int64, err error) {
	// Each attempt has its own context: a body that stalls (a live peer
	// that stops sending) is cut by the watchdog and resumed.
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	body, start, err := fc.src(actx, pos, end)
	if err != nil {
		return pos, pos, err
	}
	defer body.Close()
	if ranged && start != pos {
		return start, pos, errNoRanges
	}
	fc.f.markReady()
	guarded := newStallGuard(body, fc.s.stallTimeout, cancel)
	defer guarded.stop()
	reached, err = fc.copyRange(guarded, start, end, buf)
	if err == nil && reached == end && end == fc.f.size {
		// The blob is complete: a body that goes on is not this blob.
		var one [1]byte
		if n, _ := io.ReadFull(guarded, one[:]); n > 0 {
			return start, reached, &SizeMismatchError{Want: fc.f.size, Got: fc.f.size + int64(n)}
		}
	}
	return start, reached, err
}

func isPermanent(err error) bool {
	var p interface{ Permanent() bool }
	return errors.As(err, &p) && p.Permanent()
}

// fillWindow fetches the bytes of [lo, hi) that are not on disk: in
// parallel pieces when the window is large enough and the upstream serves
// ranges, else (or after the upstream ignored a range) with one stream.
func (fc *fillCopy) fillWindow(ctx context.Context, lo, hi int64) error {
	s, f := fc.s, fc.f
	if s.fillConns > 1 && hi-lo >= 2*s.pieceSize && f.have0(lo, hi) < hi {
		err := fc.pieces(ctx, lo, hi)
		if errors.Is(err, errNoRanges) {
			s.log.Debug("upstream does not serve ranges; one stream", "fill", f.key)
			err = nil
		}
		if err != nil {
			return err
		}
	}
	if len(f.missing(lo, hi)) > 0 {
		return fc.sequential(ctx, lo, hi)
	}
	return nil
}

// sequential fills [lo, hi) with one stream from the end of its prefix,
// resuming after cuts. Progress is measured against the furthest byte any
// attempt reached, not against this attempt's start: an upstream that
// ignores Range restarts from zero, and re-reading bytes the fill already
// had is no progress. Without this, a cut at the same place every time
// would count as progress forever.
func (fc *fillCopy) sequential(ctx context.Context, lo, hi int64) (err error) {
	s, f := fc.s, fc.f
	buf := make([]byte, fillBufSize)
	off := f.have0(lo, hi)
	highWater := off
	failures := 0 // consecutive attempts that got no further than highWater
	attempts := 0
	for len(f.missing(lo, hi)) > 0 {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if failures > 0 {
			if failures > s.retries {
				return fmt.Errorf("%w (%d attempts without progress, at byte %d): %w", ErrRetriesExhausted, failures, highWater, err)
			}
			if werr := s.backoff(ctx, failures); werr != nil {
				return werr
			}
			if s.onResume != nil {
				s.onResume()
			}
		}
		if attempts >= s.maxAttempts {
			return fmt.Errorf("%w (%d attempts in total, at byte %d): %w", ErrRetriesExhausted, attempts, highWater, err)
		}
		attempts++
		off = f.have0(lo, hi)
		var reached int64
		_, reached, err = fc.attempt(ctx, off, hi, buf, false)
		if err != nil && isPermanent(err) {
			return fmt.Errorf("fetching upstream: %w", err)
		}
		var sizeErr *SizeMismatchError
		if err != nil && (errors.Is(err, ErrStorage) || errors.As(err, &sizeErr)) {
			return err
		}
		if reached > highWater {
			highWater = reached
			failures = 0
		}
		if len(f.missing(lo, hi)) > 0 {
			failures++
			if err == nil {
				err = &SizeMismatchError{Want: f.size, Got: reached}
			}
			s.log.Debug("upstream body cut; resuming", "fill", f.key, "at", reached, "size", f.size, "err", err)
		}
	}
	return nil
}

// pieces fills the blob with up to fillConns ranged requests at once, one
// piece of pieceSize each. The piece holding a waiting reader's position
// goes first, then the lowest missing one. Each piece resumes on its own
// after a cut. An upstream that answers a ranged request with the whole
// blob ends this with errNoRanges (the caller goes on with one stream).
func (fc *fillCopy) pieces(ctx context.Context, lo, hi int64) error {
	s, f := fc.s, fc.f
	if err := fc.save(); err != nil { // before preallocating: see resumeTemp
		return err
	}
	if err := preallocate(fc.tmp, f.size); err != nil {
		return fmt.Errorf("%w: preallocating temp file: %w", ErrStorage, err)
	}
	sched := newPieceSched(f, lo, hi, s.pieceSize)
	gctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for range min(s.fillConns, sched.n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, fillBufSize)
			for {
				i, ok := sched.next()
				if !ok {
					return
				}
				if err := fc.piece(gctx, i, sched, buf); err != nil {
					cancel(err)
					return
				}
				sched.done(i)
				if s.onPiece != nil {
					s.onPiece(false)
				}
				if err := fc.save(); err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := context.Cause(gctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}

// piece fetches piece i from its first missing byte, resuming after cuts.
func (fc *fillCopy) piece(ctx context.Context, i int, sched *pieceSched, buf []byte) (err error) {
	s, f := fc.s, fc.f
	start, end := sched.bounds(i)
	pos := f.have0(start, end)
	failures := 0
	for pos < end {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if failures > 0 {
			if failures > s.retries {
				return fmt.Errorf("%w (%d attempts without progress, piece at byte %d): %w", ErrRetriesExhausted, failures, pos, err)
			}
			if n := fc.retries.Add(1); int(n) >= s.maxAttempts {
				return fmt.Errorf("%w (%d retries in total): %w", ErrRetriesExhausted, n, err)
			}
			if werr := s.backoff(ctx, failures); werr != nil {
				return werr
			}
			if s.onResume != nil {
				s.onResume()
			}
			if s.onPiece != nil {
				s.onPiece(true)
			}
		}
		var reached int64
		_, reached, err = fc.attempt(ctx, pos, end, buf, true)
		switch {
		case errors.Is(err, errNoRanges), errors.Is(err, ErrStorage), errors.As(err, new(*SizeMismatchError)):
			return err
		case err != nil && isPermanent(err):
			return fmt.Errorf("fetching upstream: %w", err)
		}
		if reached > pos {
			failures = 0
			pos = reached
		}
		if pos < end {
			failures++
			if err == nil {
				err = fmt.Errorf("upstream body for bytes %d-%d ended at %d", start, end-1, pos)
			}
			s.log.Debug("upstream piece cut; resuming", "fill", f.key, "at", pos, "piece_end", end, "err", err)
		}
	}
	return nil
}

// save records which ranges of the temp file are there, beside it, so that
// a fill interrupted by a crash resumes with only the missing ones. The
// file is synced first: the record never claims bytes that a crash could
// lose.
func (fc *fillCopy) save() error {
	if fc.f.digest.IsZero() {
		return nil // an unverified fill's temp file is not resumed
	}
	fc.saveMu.Lock()
	defer fc.saveMu.Unlock()
	return fc.s.saveExtents(fc.f, fc.tmp)
}

// extentsPath is the file beside a temp file that lists its ranges.
func extentsPath(tmpPath string) string { return tmpPath + ".extents" }

// syncTemp makes a temp file's written bytes durable (a variable so that a
// test can land bytes while it runs).
var syncTemp = (*os.File).Sync

// saveExtents records the ranges of the temp file that are on disk. The
// ranges are read before the sync: each was written before it was
// announced, so the sync makes all of them durable, while a range that
// lands during the sync may not be, and must wait for the next save.
func (s *Store) saveExtents(f *fill, tmp *os.File) error {
	f.mu.Lock()
	var b strings.Builder
	for _, sp := range f.have.spans {
		fmt.Fprintf(&b, "%d %d\n", sp[0], sp[1])
	}
	f.mu.Unlock()
	if err := syncTemp(tmp); err != nil {
		return fmt.Errorf("%w: syncing temp file: %w", ErrStorage, err)
	}
	path := extentsPath(tmp.Name())
	if err := os.WriteFile(path+".new", []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("%w: writing %s: %w", ErrStorage, path, err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		return fmt.Errorf("%w: %w", ErrStorage, err)
	}
	return nil
}

// loadExtents reads what saveExtents wrote; ok is false when there is no
// usable record.
func loadExtents(path string, size int64) (e extents, ok bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return extents{}, false
	}
	for line := range strings.Lines(string(data)) {
		a, b, found := strings.Cut(strings.TrimSpace(line), " ")
		start, err1 := strconv.ParseInt(a, 10, 64)
		end, err2 := strconv.ParseInt(b, 10, 64)
		if !found || err1 != nil || err2 != nil || start < 0 || end <= start || end > size {
			return extents{}, false
		}
		e.add(start, end-start)
	}
	return e, true
}

// pieceSched hands out the pieces of [lo, hi) of a parallel fill.
type pieceSched struct {
	f         *fill
	lo, hi    int64
	pieceSize int64
	n         int

	mu    sync.Mutex
	state []uint8 // pieceMissing, pieceTaken, pieceDone
}

const (
	pieceMissing uint8 = iota
	pieceTaken
	pieceDone
)

func newPieceSched(f *fill, lo, hi, pieceSize int64) *pieceSched {
	n := int((hi - lo + pieceSize - 1) / pieceSize)
	ps := &pieceSched{f: f, lo: lo, hi: hi, pieceSize: pieceSize, n: n, state: make([]uint8, n)}
	for i := range n {
		start, end := ps.bounds(i)
		if f.have0(start, end) >= end {
			ps.state[i] = pieceDone
		}
	}
	return ps
}

func (ps *pieceSched) bounds(i int) (int64, int64) {
	start := ps.lo + int64(i)*ps.pieceSize
	return start, min(start+ps.pieceSize, ps.hi)
}

// next takes the piece to fetch now: the one holding the lowest position a
// reader waits at, else the lowest missing one.
func (ps *pieceSched) next() (int, bool) {
	wants := ps.f.waitingAt()
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, pos := range wants {
		if pos < ps.lo || pos >= ps.hi {
			continue // waits for bytes another window fetches
		}
		if i := int((pos - ps.lo) / ps.pieceSize); ps.state[i] == pieceMissing {
			ps.state[i] = pieceTaken
			return i, true
		}
	}
	for i, st := range ps.state {
		if st == pieceMissing {
			ps.state[i] = pieceTaken
			return i, true
		}
	}
	return 0, false
}

func (ps *pieceSched) done(i int) {
	ps.mu.Lock()
	ps.state[i] = pieceDone
	ps.mu.Unlock()
}
