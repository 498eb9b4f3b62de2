package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"
)

// errFillFailed is the cause readers see when the fill they were streaming
// from fails; the fill's own error is wrapped with it.
var errFillFailed = errors.New("blob fill failed")

// fill is one upstream download of one blob into a temp file, shared by every
// request for that blob while it runs.
//
// Readers open the file themselves (their own fd, so they never contend on a
// seek offset) and read the bytes that have landed. A reader never receives
// the last byte of its response before the whole blob has verified: on a
// size or hash mismatch every reader fails before its response is complete,
// so no client is ever handed a complete-looking wrong body.
type fill struct {
	key    string // in Store.fills
	digest Digest // zero until computed, for a fill of unpublished content
	size   int64
	// onPublish, when set, learns the digest the blob was published under.
	onPublish func(Digest)
	// src fetches the blob; readers fall back to it when the fill fails on
	// the local disk.
	src Source

	ready     chan struct{} // closed once the upstream has answered, or the fill failed
	readyOnce sync.Once
	done      chan struct{} // closed once the fill ended and left Store.fills

	// ctx ends the fill (shutdown, or cancel(ErrOrphaned)); client is the
	// host the first request came from, for the per-client cap.
	ctx    context.Context
	cancel context.CancelCauseFunc
	client string
	// onDone is the starter's WithFillDone hook, nil without one.
	onDone func(error)

	// Guarded by Store.mu: the callers between join and Blob.Close, and
	// the timer that stops the fill when there are none.
	interest    int
	orphanTimer *time.Timer
	orphaned    bool

	mu        sync.Mutex
	path      string // temp file while filling, final path once published
	have      extents
	published bool
	// trusted: the bytes come from a copy verified before it was stored
	// (a shared tier), so readers need not hold back the final byte.
	trusted bool
	// verified: every byte is on disk and the size and hash matched, so
	// readers may have their final byte while the publish (fsync, rename,
	// index) runs. A publish that fails after it leaves those answers
	// right: the bytes they read were the verified ones.
	verified bool
	err      error         // set when the fill failed
	wake     chan struct{} // closed and replaced on every change
	// waiting holds the position each blocked reader waits at: a
	// parallel fill fetches the pieces holding them first.
	waiting map[*fillReader]int64
}

// prefix is the length of the contiguous bytes on disk from byte 0.
func (f *fill) prefix() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.have.availableFrom(0)
}

// have0 returns where the bytes on disk from start on end, capped at end.
func (f *fill) have0(start, end int64) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return min(f.have.availableFrom(start), end)
}

// missing returns the parts of [a, b) not on disk.
func (f *fill) missing(a, b int64) [][2]int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.have.missing(a, b)
}

// waitingAt returns the positions blocked readers wait at, lowest first.
func (f *fill) waitingAt() []int64 {
	f.mu.Lock()
	out := make([]int64, 0, len(f.waiting))
	for _, pos := range f.waiting {
		out = append(out, pos)
	}
	f.mu.Unlock()
	slices.Sort(out)
	return out
}

func newFill(d Digest, size int64) *fill {
	return &fill{digest: d, size: size, ready: make(chan struct{}), done: make(chan struct{}), wake: make(chan struct{}), waiting: map[*fillReader]int64{}}
}

// changedLocked wakes every waiter. Caller holds f.mu.
func (f *fill) changedLocked() {
	close(f.wake)
	f.wake = make(chan struct{})
}

func (f *fill) landed(off, n int64) {
	f.mu.Lock()
	f.have.add(off, n)
	f.changedLocked()
	f.mu.Unlock()
}

// markVerified releases the final bytes readers hold back.
func (f *fill) markVerified() {
	f.mu.Lock()
	f.verified = true
	f.changedLocked()
	f.mu.Unlock()
}

func (f *fill) publish(path string) {
	f.mu.Lock()
	f.path = path
	f.published = true
	f.changedLocked()
	f.mu.Unlock()
}

func (f *fill) fail(err error) {
	f.mu.Lock()
	if f.err == nil && !f.published {
		f.err = err
	}
	f.changedLocked()
	f.mu.Unlock()
}

// failed reports whether the fill has failed.
func (f *fill) failed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err != nil
}

// markReady closes ready once; the pieces of a parallel fill call it
// concurrently.
func (f *fill) markReady() {
	f.readyOnce.Do(func() { close(f.ready) })
}

// waitReady blocks until the upstream answered or the fill failed.
func (f *fill) waitReady(ctx context.Context) error {
	select {
	case <-f.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	return nil
}

// open returns a reader for [start, end) of the blob.
func (f *fill) open(ctx context.Context, start, end int64) (io.ReadCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, fmt.Errorf("%w: %w", errFillFailed, f.err)
	}
	// Opening under the lock means the path cannot be renamed or removed
	// between choosing it and opening it.
	file, err := os.Open(f.path)
	if err != nil {
		return nil, fmt.Errorf("opening blob being filled: %w", err)
	}
	return &fillReader{ctx: ctx, f: f, file: file, pos: start, end: end}, nil
}

// fillReader reads [pos, end) from a growing file, blocking for bytes that
// have not landed and holding back the final byte until the blob verified.
type fillReader struct {
	ctx      context.Context
	f        *fill
	file     *os.File
	pos, end int64
	pass     io.ReadCloser // the upstream body, once the disk failed
}

func (r *fillReader) Read(p []byte) (int, error) {
	if r.pos >= r.end {
		return 0, io.EOF
	}
	if r.pass != nil {
		return r.readPassThrough(p)
	}
	limit, err := r.wait()
	if err != nil {
		if errors.Is(err, ErrStorage) && r.f.src != nil {
			// The disk failed (full), not the upstream: this reader goes
			// on straight from the upstream, from where it is. Those bytes
			// are not verified — there is no whole file to hash — but the
			// client is not cut off mid-download.
			if perr := r.startPassThrough(); perr != nil {
				return 0, fmt.Errorf("%w (and the upstream pass-through failed: %w)", err, perr)
			}
			return r.readPassThrough(p)
		}
		return 0, err
	}
	if int64(len(p)) > limit-r.pos {
		p = p[:limit-r.pos]
	}
	n, err := r.file.ReadAt(p, r.pos)
	r.pos += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// WriteTo sends the reader's bytes to w as they land, straight from the
// file: when w is an HTTP response on a TCP connection, net/http's
// ReadFrom hands an *os.File (in an io.LimitedReader) to sendfile, so the
// bytes already written go out without a copy through this process. The
// final byte is held back exactly as Read holds it back.
func (r *fillReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for r.pos < r.end && r.pass == nil {
		limit, err := r.wait()
		if err != nil {
			if errors.Is(err, ErrStorage) && r.f.src != nil {
				break // Read goes on from the upstream
			}
			return total, err
		}
		if _, err := r.file.Seek(r.pos, io.SeekStart); err != nil {
			return total, fmt.Errorf("seeking blob being filled: %w", err)
		}
		want := limit - r.pos
		n, err := io.Copy(w, &io.LimitedReader{R: r.file, N: want})
		r.pos += n
		total += n
		if err != nil {
			return total, err
		}
		if n < want {
			return total, fmt.Errorf("blob being filled: %w", io.ErrUnexpectedEOF)
		}
	}
	if r.pos >= r.end {
		return total, nil
	}
	n, err := io.Copy(w, readerOnly{r})
	return total + n, err
}

// readerOnly hides WriteTo, so that io.Copy reads.
type readerOnly struct{ io.Reader }

func (r *fillReader) startPassThrough() error {
	body, start, err := r.f.src(r.ctx, r.pos, r.f.size)
	if err != nil {
		return err
	}
	if start < r.pos {
		if _, err := io.CopyN(io.Discard, body, r.pos-start); err != nil {
			body.Close()
			return err
		}
	}
	r.pass = body
	return nil
}

func (r *fillReader) readPassThrough(p []byte) (int, error) {
	if int64(len(p)) > r.end-r.pos {
		p = p[:r.end-r.pos]
	}
	n, err := r.pass.Read(p)
	r.pos += int64(n)
	if err == io.EOF && r.pos < r.end {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// wait blocks until at least one byte at r.pos may be read and returns the
// end of what may be read.
func (r *fillReader) wait() (int64, error) {
	for {
		r.f.mu.Lock()
		if r.f.err != nil && !r.f.verified {
			err := r.f.err
			r.f.mu.Unlock()
			return 0, fmt.Errorf("%w: %w", errFillFailed, err)
		}
		limit := r.end
		if !r.f.published && !r.f.verified {
			// Everything that has landed, but never the final byte of this
			// response before the blob verified (unless the source is a
			// copy verified before it was stored).
			limit = min(r.f.have.availableFrom(r.pos), r.end-1)
			if r.f.trusted {
				limit = min(r.f.have.availableFrom(r.pos), r.end)
			}
		}
		wake := r.f.wake
		if limit > r.pos {
			delete(r.f.waiting, r)
			r.f.mu.Unlock()
			return limit, nil
		}
		if r.f.have.availableFrom(r.pos) <= r.pos {
			r.f.waiting[r] = r.pos // the bytes it needs, not the verification
		}
		r.f.mu.Unlock()
		select {
		case <-wake:
		case <-r.ctx.Done():
			r.f.mu.Lock()
			delete(r.f.waiting, r)
			r.f.mu.Unlock()
			return 0, r.ctx.Err()
		}
	}
}

func (r *fillReader) Close() error {
	r.f.mu.Lock()
	delete(r.f.waiting, r)
	r.f.mu.Unlock()
	if r.pass != nil {
		r.pass.Close()
	}
	return r.file.Close()
}
