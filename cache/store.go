// Package cache stores blobs on local disk by content id and fills missing
// ones from an upstream exactly once, however many requests ask at the same
// time.
//
// A request for a missing blob starts one fill: a goroutine, detached from
// that request, that downloads into a temp file while hashing. Every request
// for the same blob — the first included — reads the growing file as bytes
// land, so nobody waits for the whole download. The blob is published (fsync,
// rename, directory fsync, index record) only when its size and hash match
// the digest; otherwise every reader fails and the next request starts over.
//
// The package knows nothing about any model hub: callers name blobs by
// Digest and hand in a Source that fetches the bytes.
package cache

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelgate/modelgate/indexkeys"
)

// ErrStorage marks a fill that failed on the local disk rather than
// upstream (no space, I/O error).
var ErrStorage = errors.New("local storage")

// Source fetches bytes [off, end) of a blob (end is the blob's size for
// "to the end"). It returns the body and the offset the body really starts
// at: off, or 0 when the upstream ignored the range and sends the whole
// blob. The body must yield the blob's bytes from there (at least to end;
// it may end early: the fill resumes). A fill asks for several ranges at
// once; the Source must be safe for concurrent use.
//
// An error that has a Permanent() method returning true (the upstream
// refused, as opposed to failed) ends the fill at once; any other error,
// and a body that ends early, is retried with backoff.
type Source func(ctx context.Context, off, end int64) (body io.ReadCloser, start int64, err error)

// ErrRetriesExhausted ends a fill whose upstream kept failing: too many
// attempts in a row that got no further than the fill had already been, or
// too many attempts in total.
var ErrRetriesExhausted = errors.New("upstream retries exhausted")

// ErrFillTimeout ends a fill that took longer than its time cap.
var ErrFillTimeout = errors.New("fill took too long")

// Result says how a Get was satisfied.
type Result int

const (
	// Hit: the blob was on disk.
	Hit Result = iota
	// Miss: this request started the fill.
	Miss
	// Coalesced: this request joined a fill another request started.
	Coalesced
)

func (r Result) String() string {
	switch r {
	case Hit:
		return "hit"
	case Miss:
		return "miss"
	default:
		return "coalesced"
	}
}

// Options configures a Store.
type Options struct {
	// Dir holds the blobs (Dir/blobs/<algo>/<xx>/<hex>) and the temp files
	// of fills in progress (Dir/tmp). Both must be on one file system so
	// that publishing is an atomic rename.
	Dir string
	// Index records every published blob; it must outlive the Store.
	Index *Index
	// Logger receives fill failures; nil discards them.
	Logger *slog.Logger
	// OnFillDone, when set, is called once for every fill that ends, with
	// nil err for a published blob.
	OnFillDone func(d Digest, size int64, err error)
	// Retries is how many consecutive failed attempts (no byte received) a
	// fill makes before it gives up. Default 5; negative means none.
	Retries int
	// RetryBackoff is the wait before the first retry; it doubles for each
	// further one. Default 200ms.
	RetryBackoff time.Duration
	// MaxFillAttempts caps the upstream requests of one fill in total,
	// progress or not, so an upstream that always cuts a transfer cannot
	// keep a fill alive forever. Default 20.
	MaxFillAttempts int
	// MaxFillTime caps how long one fill may take from start to end.
	// Default 6h.
	MaxFillTime time.Duration
	// MaxFills caps the fills running at once; a fill beyond it waits for
	// a slot. Default 32.
	MaxFills int
	// MaxFillsPerClient caps the fills running at once for one client
	// (see WithClient). Default 8.
	MaxFillsPerClient int
	// OrphanFillTimeout stops a fill that nobody has read for this long
	// and that is not pinned; its bytes are kept for a later resume.
	// Default 10s.
	OrphanFillTimeout time.Duration
	// FillConnections is how many ranged requests one fill makes at once;
	// 1 fetches every blob with one stream. Default 8.
	FillConnections int
	// PieceSize is the size of each ranged request of a parallel fill; a
	// blob under two pieces is fetched with one request. Default 16 MiB.
	PieceSize int64
	// OnPiece, when set, is called for every piece fetched (retry false)
	// and every retry of a piece (retry true).
	OnPiece func(retry bool)
	// OnFillThroughput, when set, is called for every published fill with
	// the MiB/s it was fetched at.
	OnFillThroughput func(mibPerSec float64)
	// OnResume, when set, is called before every retry of a fill (a resume
	// from the bytes it has, or a new first attempt).
	OnResume func()

	// MaxSize bounds the total size of published blobs; 0 means no bound.
	MaxSize int64
	// MinFree is the free space to keep on the data directory's file
	// system; 0 means no floor.
	MinFree int64
	// Pinned, when set, returns the blobs eviction must keep; it is called
	// at each eviction run, so it may read the index.
	Pinned func() map[Digest]bool
	// OnEvict, when set, is called for every evicted blob.
	OnEvict func(d Digest, size int64)
	// AccessFlush is how often access times are written to the index and
	// the limits checked. Default 30s.
	AccessFlush time.Duration
	// StallTimeout cuts (and resumes) an upstream body that delivers no
	// byte for this long. Default 60s.
	StallTimeout time.Duration
	// IndexSize, when set, returns the index's size on disk, which counts
	// against MaxSize with the blobs: the metadata lives on the same disk
	// and must not be a way around the budget.
	IndexSize func() int64
	// DiskFree overrides the free-space probe (tests).
	DiskFree func() (int64, error)
	// Tier, when set, is a shared blob store consulted before every fill
	// of a known content id (see Tier); nil means this disk alone.
	Tier Tier
}

// Store is the content-addressed blob store with single-flight fills.
type Store struct {
	blobDir, tmpDir string
	idx             *Index
	log             *slog.Logger
	onFillDone      func(Digest, int64, error)
	onResume        func()
	retries         int
	retryBackoff    time.Duration
	maxAttempts     int
	maxFillTime     time.Duration
	slots           *fillSlots
	fillConns       int
	pieceSize       int64
	onPiece         func(bool)
	onThroughput    func(float64)
	orphanTimeout   time.Duration
	maxSize         int64
	minFree         int64
	pinned          func() map[Digest]bool
	onEvict         func(Digest, int64)
	accessFlush     time.Duration
	diskFree        func() (int64, error)
	indexSize       func() int64
	stallTimeout    time.Duration
	tier            Tier
	usage           usage
	evictNow        chan struct{}
	evictBlocked    atomic.Bool // the last eviction run could not get within the limits
	lastEvictAsk    atomic.Int64
	// writeAt writes fill bytes to the temp file; a test swaps it to
	// simulate a full disk.
	writeAt func(f *os.File, p []byte, off int64) (int, error)
	// syncPublish makes a verified temp file durable before it is
	// renamed into place; a test swaps it for a slow disk.
	syncPublish func(f *os.File) error

	ctx    context.Context // cancelled by Close: ends fills in flight
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	fills map[string]*fill // by fill key: the digest, or "unknown:" + a caller's key

	blobs, bytes, filling atomic.Int64
}

const blobKeyPrefix = indexkeys.Blob

// Open prepares the directories under opts.Dir, removes temp files left by a
// previous run, and counts the blobs the index knows.
func Open(opts Options) (*Store, error) {
	if opts.Index == nil {
		return nil, errors.New("cache: Options.Index is required")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		blobDir:       filepath.Join(opts.Dir, "blobs"),
		tmpDir:        filepath.Join(opts.Dir, "tmp"),
		idx:           opts.Index,
		log:           log,
		onFillDone:    opts.OnFillDone,
		onResume:      opts.OnResume,
		retries:       opts.Retries,
		retryBackoff:  opts.RetryBackoff,
		maxAttempts:   opts.MaxFillAttempts,
		maxFillTime:   opts.MaxFillTime,
		orphanTimeout: opts.OrphanFillTimeout,
		fillConns:     opts.FillConnections,
		pieceSize:     opts.PieceSize,
		onPiece:       opts.OnPiece,
		onThroughput:  opts.OnFillThroughput,
		maxSize:       opts.MaxSize,
		minFree:       opts.MinFree,
		pinned:        opts.Pinned,
		onEvict:       opts.OnEvict,
		accessFlush:   opts.AccessFlush,
		diskFree:      opts.DiskFree,
		indexSize:     opts.IndexSize,
		stallTimeout:  opts.StallTimeout,
		tier:          opts.Tier,
		usage:         usage{open: map[Digest]int{}, touched: map[Digest]int64{}},
		evictNow:      make(chan struct{}, 1),
		writeAt:       (*os.File).WriteAt,
		syncPublish:   (*os.File).Sync,
		fills:         make(map[string]*fill),
	}
	if s.accessFlush <= 0 {
		s.accessFlush = 30 * time.Second
	}
	if s.stallTimeout <= 0 {
		s.stallTimeout = 60 * time.Second
	}
	switch {
	case s.retries == 0:
		s.retries = 5
	case s.retries < 0:
		s.retries = 0
	}
	if s.maxAttempts <= 0 {
		s.maxAttempts = 20
	}
	if s.maxFillTime <= 0 {
		s.maxFillTime = 6 * time.Hour
	}
	if s.fillConns <= 0 {
		s.fillConns = 8
	}
	if s.pieceSize <= 0 {
		s.pieceSize = 16 << 20
	}
	if s.orphanTimeout <= 0 {
		s.orphanTimeout = 10 * time.Second
	}
	if opts.MaxFills <= 0 {
		opts.MaxFills = 32
	}
	if opts.MaxFillsPerClient <= 0 {
		opts.MaxFillsPerClient = 8
	}
	s.slots = newFillSlots(opts.MaxFills, opts.MaxFillsPerClient)
	if s.retryBackoff <= 0 {
		s.retryBackoff = 200 * time.Millisecond
	}
	for _, d := range []string{s.blobDir, s.tmpDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("cache: creating %s: %w", d, err)
		}
	}
	if err := s.reconcile(); err != nil {
		return nil, err
	}
	if err := s.recoverTemps(); err != nil {
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.evictLoop()
	s.requestEviction() // the limits may have changed since the last run
	return s, nil
}

// Close cancels the fills in flight and waits for them to clean up.
func (s *Store) Close() error {
	s.cancel()
	s.wg.Wait()
	return nil
}

// Stats is a snapshot of what the store holds, taken in one call so that a
// metrics scrape or a status page reads the store once rather than through
// one callback per number.
type Stats struct {
	Blobs, Bytes  int64 // published blobs and their total size
	FillsInFlight int64
	// DiskFree is the space available on the data directory's file system;
	// 0 when the probe failed (DiskFreeErr says why).
	DiskFree    int64
	DiskFreeErr error
	// IndexBytes is the index's size on disk as Options.IndexSize reports
	// it; 0 without one.
	IndexBytes int64
}

// Stats returns a snapshot of the current counts, the free space and the
// index size. The free-space probe is a statfs call, cheap enough for every
// scrape.
func (s *Store) Stats() Stats {
	st := Stats{Blobs: s.blobs.Load(), Bytes: s.bytes.Load(), FillsInFlight: s.filling.Load()}
	st.DiskFree, st.DiskFreeErr = s.DiskFree()
	if st.DiskFreeErr != nil {
		st.DiskFree = 0
	}
	if s.indexSize != nil {
		st.IndexBytes = s.indexSize()
	}
	return st
}

func (s *Store) blobPath(d Digest) string {
	return filepath.Join(s.blobDir, string(d.Algo), d.Hex[:2], d.Hex)
}

// Has reports whether the blob is published on disk.
func (s *Store) Has(d Digest) bool {
	_, err := os.Stat(s.blobPath(d))
	return err == nil
}

// Open returns the published blob d, or ErrNotFound. It never starts a
// fill; it is for callers that know a content id but not where to fetch it.
func (s *Store) Open(d Digest) (*Blob, error) {
	file, err := os.Open(s.blobPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("cache: opening %s: %w", d, err)
	}
	fi, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("cache: stat %s: %w", d, err)
	}
	s.touchTier(d)
	return s.track(&Blob{Digest: d, Size: fi.Size(), file: file}), nil
}

// track marks a published blob as open (eviction skips it) and used now,
// until the Blob is closed.
func (s *Store) track(b *Blob) *Blob {
	s.usage.acquire(b.Digest)
	b.release = func() {
		s.usage.release(b.Digest)
		// An eviction that had to skip this blob while it was served
		// can take it now. Only then: this runs on every served blob.
		if s.evictBlocked.Load() {
			s.requestEvictionSoon()
		}
	}
	return b
}

// Get returns the blob d of the given size: from disk, by joining the fill
// in flight, or by starting a fill from src. It returns once the bytes can
// start flowing (for a fill: once the upstream answered), or with the
// fill's error if the upstream refused. The Blob must be closed.
func (s *Store) Get(ctx context.Context, d Digest, size int64, src Source) (*Blob, Result, error) {
	if b, err := s.openPublished(d, size); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return b, Hit, err
	}

	return s.join(ctx, d, d.String(), size, src, func() (*Blob, error) { return s.openPublished(d, size) }, func() *fill { return newFill(d, size) })
}

// GetUnverified is Get for content whose digest nobody published: the
// fill hashes it with SHA256 and publishes it under the digest it
// computed, then calls onPublish with it (so that the caller can map its
// key to the blob for next time). Only the size is checked. Concurrent
// calls with the same key share one fill.
func (s *Store) GetUnverified(ctx context.Context, key string, size int64, src Source, onPublish func(Digest)) (*Blob, Result, error) {
	return s.join(ctx, Digest{}, "unknown:"+key, size, src, nil, func() *fill {
		f := newFill(Digest{}, size)
		f.onPublish = onPublish
		return f
	})
}

// join joins the fill registered under key, or — unless published finds
// the blob on disk (checked again under the lock: a fill may have
// published and left the map since the caller looked) — starts a new one.
//
// Every caller between join and the Blob's Close counts as interest in the
// fill; a fill without interest for the orphan timeout stops.
func (s *Store) join(ctx context.Context, d Digest, key string, size int64, src Source, published func() (*Blob, error), start func() *fill) (*Blob, Result, error) {
	var (
		f      *fill
		joined bool
	)
	for {
		s.mu.Lock()
		f, joined = s.fills[key]
		if joined && (f.orphaned || f.failed()) {
			// Stopping (nobody reads it), or failed and about to leave:
			// wait until it has let go of its temp file, then start
			// afresh (from what it kept, if anything). A request that
			// arrives after a fill failed does not inherit its error.
			s.mu.Unlock()
			select {
			case <-f.done:
				continue
			case <-ctx.Done():
				return nil, Miss, ctx.Err()
			}
		}
		break
	}
	if !joined {
		if published != nil {
			if b, err := published(); err == nil || !errors.Is(err, fs.ErrNotExist) {
				s.mu.Unlock()
				return b, Hit, err
			}
		}
		f = start()
		f.key = key
		f.src = src
		f.client = clientFrom(ctx)
		f.onDone = fillDoneFrom(ctx)
		f.ctx, f.cancel = context.WithCancelCause(s.ctx)
		s.fills[key] = f
		s.filling.Add(1)
		s.wg.Add(1)
		go s.run(f, src)
	}
	s.addInterestLocked(f)
	s.mu.Unlock()

	res := Miss
	if joined {
		res = Coalesced
	}
	if err := f.waitReady(ctx); err != nil {
		s.dropInterest(f)
		return nil, res, err
	}
	b := &Blob{Digest: d, Size: size, fill: f}
	if !d.IsZero() {
		s.track(b) // served from the fill, and from the file once published
	}
	tracked := b.release
	b.release = func() {
		if tracked != nil {
			tracked()
		}
		s.dropInterest(f)
	}
	return b, res, nil
}

// addInterestLocked counts one more caller of f and stops its orphan
// timer. Caller holds s.mu.
func (s *Store) addInterestLocked(f *fill) {
	f.interest++
	if f.orphanTimer != nil {
		f.orphanTimer.Stop()
		f.orphanTimer = nil
	}
}

// dropInterest counts one caller of f less; the last one starts the
// orphan timer.
func (s *Store) dropInterest(f *fill) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f.interest--
	if f.interest == 0 && s.fills[f.key] == f && !f.orphaned {
		f.orphanTimer = time.AfterFunc(s.orphanTimeout, func() { s.orphanCheck(f) })
	}
}

// orphanCheck stops f if still nobody is interested and it is not pinned.
func (s *Store) orphanCheck(f *fill) {
	if s.pinned != nil && !f.digest.IsZero() && s.pinned()[f.digest] {
		return // eviction keeps it, so the fill finishes it
	}
	s.mu.Lock()
	if f.interest > 0 || f.orphaned || s.fills[f.key] != f {
		s.mu.Unlock()
		return
	}
	f.orphaned = true
	s.mu.Unlock()
	s.log.Info("stopping a fill nobody reads", "fill", f.key, "size", f.size)
	f.cancel(ErrOrphaned)
}

func (s *Store) openPublished(d Digest, size int64) (*Blob, error) {
	file, err := os.Open(s.blobPath(d))
	if err != nil {
		return nil, err
	}
	fi, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("cache: stat %s: %w", d, err)
	}
	if fi.Size() != size {
		file.Close()
		return nil, fmt.Errorf("cache: blob %s: %w", d, &SizeMismatchError{Want: size, Got: fi.Size()})
	}
	s.touchTier(d)
	return s.track(&Blob{Digest: d, Size: size, file: file}), nil
}

// run performs one fill and removes it from the registry when it ends.
func (s *Store) run(f *fill, src Source) {
	defer s.wg.Done()
	defer close(f.done)
	defer f.cancel(nil)
	// A fill beyond the caps waits here; its callers wait for ready.
	release, err := s.slots.acquire(f.ctx, f.client)
	if err == nil {
		var tf TierFill
		if tf, err = s.tierFill(f, src); err == nil {
			f.src = tf.Source // readers' pass-through after a disk failure
			err = s.download(f, tf)
		}
		if tf.Done != nil {
			// Before the fill leaves the registry: a shared tier
			// uploads the verified blob and releases its lease here.
			tf.Done(s.blobPath(f.digest), err)
		}
		release()
	} else {
		err = fmt.Errorf("waiting for a fill slot: %w", err)
	}
	if errors.Is(err, ErrStorage) {
		s.requestEviction() // a full disk is the likely cause
	}
	if err != nil {
		f.fail(err)
		s.log.Warn("blob fill failed", "fill", f.key, "size", f.size, "err", err)
	}
	// Ready may still be open if the source never answered.
	f.markReady()
	if f.onDone != nil {
		f.onDone(err)
	}
	s.mu.Lock()
	delete(s.fills, f.key)
	s.mu.Unlock()
	s.filling.Add(-1)
	if s.onFillDone != nil {
		s.onFillDone(f.digest, f.size, err)
	}
}

// stallGuard cancels an attempt whose body delivers no byte for a while.
type stallGuard struct {
	io.Reader
	timer *time.Timer
	d     time.Duration
}

func newStallGuard(r io.Reader, d time.Duration, cancel func()) *stallGuard {
	return &stallGuard{Reader: r, timer: time.AfterFunc(d, cancel), d: d}
}

func (g *stallGuard) Read(p []byte) (int, error) {
	n, err := g.Reader.Read(p)
	if n > 0 {
		g.timer.Reset(g.d)
	}
	return n, err
}

func (g *stallGuard) stop() { g.timer.Stop() }

// backoff waits before retry number n (1-based): exponential from
// retryBackoff, capped at 32 times it, or until ctx ends.
func (s *Store) backoff(ctx context.Context, n int) error {
	d := s.retryBackoff << min(n-1, 5)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

func (s *Store) download(f *fill, tf TierFill) (err error) {
	verify := !f.digest.IsZero()
	var tmp *os.File
	if verify {
		tmp, err = s.resumeTemp(f)
	} else {
		tmp, err = os.CreateTemp(s.tmpDir, "fill-*.tmp")
		if err != nil {
			err = fmt.Errorf("%w: creating temp file: %w", ErrStorage, err)
		}
	}
	if err != nil {
		return err
	}
	tmpPath := tmp.Name()
	defer func() {
		if err != nil {
			// Fail first: a reader opening the temp file from now on
			// learns why, instead of finding it gone.
			f.fail(err)
			// A fill stopped by shutdown, or because nobody reads it,
			// keeps its bytes (and which ranges they are) for the next
			// fill to resume; any other failure leaves nothing worth
			// keeping.
			if verify && (s.ctx.Err() != nil || errors.Is(context.Cause(f.ctx), ErrOrphaned)) {
				if perr := s.saveExtents(f, tmp); perr != nil {
					s.log.Warn("saving the extents of a partial fill", "fill", f.key, "err", perr)
				}
				tmp.Close()
				return
			}
			tmp.Close()
			os.Remove(tmpPath)
			os.Remove(extentsPath(tmpPath))
		}
	}()
	f.mu.Lock()
	f.path = tmpPath
	f.mu.Unlock()

	// The hash runs over the contiguous prefix as bytes land, once: what
	// an earlier run left is hashed now, pieces that land out of order
	// when the prefix reaches them.
	ph := &prefixHasher{h: f.digest.NewHash(f.size), f: f, file: tmp}
	if err := ph.advance(); err != nil {
		return err
	}

	// The whole fill has a deadline: a live upstream that never finishes
	// (too slow, or cutting every transfer) must not hold a fill forever.
	fillCtx, cancelFill := context.WithTimeoutCause(f.ctx, s.maxFillTime, ErrFillTimeout)
	defer cancelFill()
	defer func() {
		if err != nil && s.ctx.Err() == nil && errors.Is(context.Cause(fillCtx), ErrFillTimeout) {
			err = fmt.Errorf("%w (%s, %d of %d bytes): %w", ErrFillTimeout, s.maxFillTime, f.prefix(), f.size, err)
		}
	}()

	if tf.Watch != nil {
		tf.Watch(Partial{f: f})
	}
	began := time.Now()
	fc := &fillCopy{s: s, f: f, tmp: tmp, ph: ph, src: tf.Source}
	skip := min(max(tf.Skip, 0), f.size)
	if tf.Rest == nil {
		skip = 0
	}
	if err = fc.fillWindow(fillCtx, skip, f.size); err != nil {
		return err
	}
	if skip > 0 {
		// The tier held the start of the blob: it finishes its copy now
		// that the rest is here, and serves that start.
		rest, rerr := tf.Rest(fillCtx)
		if rerr != nil {
			return fmt.Errorf("finishing the shared tier's copy: %w", rerr)
		}
		fc.src = rest
		if err = fc.fillWindow(fillCtx, 0, skip); err != nil {
			return err
		}
	}
	// Whatever landed while another writer was hashing.
	if err := ph.advance(); err != nil {
		return err
	}
	if got := f.prefix(); got != f.size || ph.to != f.size {
		return &SizeMismatchError{Want: f.size, Got: got}
	}
	if s.onThroughput != nil {
		if secs := time.Since(began).Seconds(); secs > 0 && fc.fetched.Load() > 0 {
			s.onThroughput(float64(fc.fetched.Load()) / (1 << 20) / secs)
		}
	}
	h := ph.h
	os.Remove(extentsPath(tmpPath)) // whole: nothing left to resume
	got := hex.EncodeToString(h.Sum(nil))
	switch {
	case !verify:
		f.digest = Digest{Algo: SHA256, Hex: got}
		if s.Has(f.digest) {
			// Already here under its hash (from another source): keep
			// the published copy, drop this one.
			tmp.Close()
			os.Remove(tmp.Name())
			f.publish(s.blobPath(f.digest))
			f.onPublish(f.digest)
			return nil
		}
	case got != f.digest.Hex:
		return &DigestMismatchError{Want: f.digest, Got: got}
	}
	// Verified: readers need not wait for the disk sync of the publish.
	f.markVerified()
	if err := s.publish(f, tmp); err != nil {
		return fmt.Errorf("%w: %w", ErrStorage, err)
	}
	return nil
}

// publish makes a verified temp file the blob: fsync, read-only, rename,
// directory fsync, then the index record — in that order, so that a crash at
// any point leaves either no blob or a complete one.
func (s *Store) publish(f *fill, tmp *os.File) error {
	final, err := s.commit(tmp, f.digest, f.size, func(from, to string) error {
		f.mu.Lock()
		defer f.mu.Unlock()
		err := os.Rename(from, to)
		if err == nil {
			f.path = to
		}
		return err
	})
	if err != nil {
		return err
	}
	f.publish(final)
	if f.onPublish != nil {
		f.onPublish(f.digest)
	}
	return nil
}

func blobKey(d Digest) string { return indexkeys.BlobKey(d.String()) }

// blobRecord is the index value of a blob published now (see makeRecord).
func blobRecord(size int64) []byte {
	now := time.Now().UnixMilli()
	return makeRecord(size, now, now)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening %s for sync: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !strings.Contains(err.Error(), "invalid argument") {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// Blob is an open view of one blob, published or being filled.
type Blob struct {
	Digest  Digest
	Size    int64
	file    *os.File // published
	fill    *fill    // being filled
	release func()   // ends the blob's "in use" mark
}

// File returns the open file of a published blob, or nil while it is being
// filled. Serving from the *os.File lets the kernel send it (sendfile).
func (b *Blob) File() *os.File { return b.file }

// NewReader returns a reader of bytes [start, end) of the blob. For a blob
// being filled, it blocks for bytes that have not landed, never returns the
// final byte before the blob verified, and fails if the fill fails.
func (b *Blob) NewReader(ctx context.Context, start, end int64) (io.ReadCloser, error) {
	if start < 0 || end > b.Size || start > end {
		return nil, fmt.Errorf("cache: range [%d,%d) outside blob of %d bytes", start, end, b.Size)
	}
	if b.file != nil {
		return io.NopCloser(io.NewSectionReader(b.file, start, end-start)), nil
	}
	return b.fill.open(ctx, start, end)
}

// Close releases the blob.
func (b *Blob) Close() error {
	if b.release != nil {
		b.release()
		b.release = nil
	}
	if b.file != nil {
		return b.file.Close()
	}
	return nil
}

// IsFillError reports whether err came from a fill that failed (as opposed
// to, say, the reader's own context ending).
func IsFillError(err error) bool { return errors.Is(err, errFillFailed) }
