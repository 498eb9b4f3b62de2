package s3tier

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/modelgate/modelgate/cache"
)

// The bucket's size bound (Options.MaxSize): least-recently-used eviction
// of blobs, by one node at a time.
//
//	evict-lease          the eviction lease (same protocol as a fill
//	                     lease: create with If-None-Match: *, renew and
//	                     take over with If-Match)
//	pinned/<node>        the blobs <node>'s pins resolve to (JSON), which
//	                     no node evicts from the bucket
//
// A blob's last access is the latest of its upload and its access/
// records; a blob with a live reader (readers/) or in any node's pinned/
// list is never evicted. See access.go for why a read never loses its
// blob to an eviction.

// evictState is the Tier's eviction side.
type evictState struct {
	accessMu    sync.Mutex
	accessed    map[cache.Digest]time.Time // last access record written, per blob
	accessEvery time.Duration
	bg          sync.WaitGroup // access records in flight

	maxSize  int64
	every    time.Duration
	freshFor time.Duration // blobs used more recently are not evicted
	pinned   func() map[cache.Digest]bool
	onEvict  func(d cache.Digest, size int64)

	mu         sync.Mutex
	seenETag   string // the eviction lease as last seen, and when
	seenAt     time.Time
	lastPinned []byte   // the pinned/<node> document last written
	pins       []string // the bucket's pins/ as last read
	onPurged   func(d cache.Digest)
	purgesSeen map[string]time.Time // purged/ marks applied, by key
	stats      BucketStats

	stop     chan struct{}
	stopOnce sync.Once
	loop     sync.WaitGroup
}

func (e *evictState) init(opts Options) {
	e.accessed = map[cache.Digest]time.Time{}
	e.purgesSeen = map[string]time.Time{}
	e.accessEvery = opts.AccessEvery
	if e.accessEvery <= 0 {
		e.accessEvery = time.Hour
	}
	e.maxSize = opts.MaxSize
	e.every = opts.EvictEvery
	if e.every <= 0 {
		e.every = time.Minute
	}
	e.freshFor = 2 * e.every
	e.pinned = opts.Pinned
	e.onEvict = opts.OnEvict
	e.stop = make(chan struct{})
}

// readerGrace is how long after its last write a reader's marker counts
// as a read in progress: nine of its refresh periods (it is rewritten
// every TTL/3), so a few failed refreshes and the bucket's one-second
// LastModified do not make a live read look ended.
func (t *Tier) readerGrace() time.Duration { return 3 * t.ttl }

// BucketBlob is one blob in the bucket as the eviction sees it.
type BucketBlob struct {
	Digest     cache.Digest
	Size       int64
	Uploaded   time.Time
	LastAccess time.Time // the latest access record (or the upload)
	Readers    int       // reads from the bucket in progress
	Pinned     bool      // in some node's pinned/ list
}

// BucketStats is what the last scan of the bucket by this node found.
type BucketStats struct {
	Blobs, Bytes int64
	Scanned      time.Time // zero before the first scan
}

// Stats returns the figures of this node's last scan of the bucket.
func (t *Tier) Stats() BucketStats {
	t.ev.mu.Lock()
	defer t.ev.mu.Unlock()
	return t.ev.stats
}

// parseDigestKey parses "<algo>/<hex>[/rest]" after dir/ under the prefix.
func (t *Tier) parseDigestKey(key, dir string) (cache.Digest, string, bool) {
	rest, ok := strings.CutPrefix(key, t.prefix+dir+"/")
	if !ok {
		return cache.Digest{}, "", false
	}
	algo, rest, ok := strings.Cut(rest, "/")
	if !ok {
		return cache.Digest{}, "", false
	}
	h, tail, _ := strings.Cut(rest, "/")
	d, err := cache.NewDigest(cache.Algo(algo), h)
	return d, tail, err == nil
}

// list calls fn for every object under dir/.
func (t *Tier) list(ctx context.Context, dir string, fn func(minio.ObjectInfo)) error {
	for obj := range t.c.ListObjects(ctx, t.bucket, minio.ListObjectsOptions{Prefix: t.prefix + dir + "/", Recursive: true}) {
		if obj.Err != nil {
			return fmt.Errorf("s3tier: listing %s/: %w", dir, obj.Err)
		}
		fn(obj)
	}
	return nil
}

// Blobs lists the bucket's blobs with their last access, live readers
// and pins, least recently used first.
func (t *Tier) Blobs(ctx context.Context) ([]BucketBlob, error) {
	byDigest := map[cache.Digest]*BucketBlob{}
	err := t.list(ctx, "blobs", func(o minio.ObjectInfo) {
		if d, tail, ok := t.parseDigestKey(o.Key, "blobs"); ok && tail == "" {
			byDigest[d] = &BucketBlob{Digest: d, Size: o.Size, Uploaded: o.LastModified, LastAccess: o.LastModified}
		}
	})
	if err != nil {
		return nil, err
	}
	err = t.list(ctx, "access", func(o minio.ObjectInfo) {
		if d, _, ok := t.parseDigestKey(o.Key, "access"); ok {
			if b := byDigest[d]; b != nil && o.LastModified.After(b.LastAccess) {
				b.LastAccess = o.LastModified
			}
		}
	})
	if err != nil {
		return nil, err
	}
	// "Now" on the bucket's clock: the latest write it shows us is a
	// lower bound, good enough for a count shown to operators (the
	// eviction decides on a fresh mark of its own).
	var readers []minio.ObjectInfo
	if err := t.list(ctx, "readers", func(o minio.ObjectInfo) { readers = append(readers, o) }); err != nil {
		return nil, err
	}
	var now time.Time
	for _, o := range readers {
		if o.LastModified.After(now) {
			now = o.LastModified
		}
	}
	for _, o := range readers {
		if d, _, ok := t.parseDigestKey(o.Key, "readers"); ok && now.Sub(o.LastModified) < t.readerGrace() {
			if b := byDigest[d]; b != nil {
				b.Readers++
			}
		}
	}
	pinned, err := t.PinnedAnywhere(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]BucketBlob, 0, len(byDigest))
	var total int64
	for _, b := range byDigest {
		b.Pinned = pinned[b.Digest]
		total += b.Size
		out = append(out, *b)
	}
	slices.SortFunc(out, func(a, b BucketBlob) int {
		if c := a.LastAccess.Compare(b.LastAccess); c != 0 {
			return c
		}
		return strings.Compare(a.Digest.String(), b.Digest.String())
	})
	t.ev.mu.Lock()
	t.ev.stats = BucketStats{Blobs: int64(len(out)), Bytes: total, Scanned: time.Now()}
	t.ev.mu.Unlock()
	return out, nil
}

// pinnedDoc is pinned/<node>.
type pinnedDoc struct {
	Node    string   `json:"node"`
	Digests []string `json:"digests"`
}

// PublishPinned writes the blobs this node's pins resolve to
// (Options.Pinned) to pinned/<node>, when they changed since the last
// write. A pin made on any node thus protects its blobs in the bucket as
// soon as some node that knows the pin's files published them.
func (t *Tier) PublishPinned(ctx context.Context) error {
	if t.ev.pinned == nil {
		return nil
	}
	var ds []string
	for d := range t.ev.pinned() {
		ds = append(ds, d.String())
	}
	slices.Sort(ds)
	body, _ := json.Marshal(pinnedDoc{Node: t.node, Digests: ds})
	t.ev.mu.Lock()
	same := bytes.Equal(body, t.ev.lastPinned)
	t.ev.mu.Unlock()
	if same {
		return nil
	}
	_, err := t.c.PutObject(ctx, t.bucket, t.prefix+"pinned/"+t.nodeKey(), bytes.NewReader(body), int64(len(body)),
		minio.PutObjectOptions{ContentType: "application/json", DisableMultipart: true})
	if err != nil {
		return fmt.Errorf("s3tier: publishing pinned blobs: %w", err)
	}
	t.ev.mu.Lock()
	t.ev.lastPinned = body
	t.ev.mu.Unlock()
	return nil
}

// PinnedAnywhere returns the union of every node's pinned/ list.
func (t *Tier) PinnedAnywhere(ctx context.Context) (map[cache.Digest]bool, error) {
	var keys []string
	if err := t.list(ctx, "pinned", func(o minio.ObjectInfo) { keys = append(keys, o.Key) }); err != nil {
		return nil, err
	}
	out := map[cache.Digest]bool{}
	for _, k := range keys {
		b, err := t.getSmall(ctx, k)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var doc pinnedDoc
		if err := json.Unmarshal(b, &doc); err != nil {
			// An unreadable list could be hiding pins: refuse to guess.
			return nil, fmt.Errorf("s3tier: %s is not a pinned list: %w", k, err)
		}
		for _, s := range doc.Digests {
			if d, err := cache.ParseDigest(s); err == nil {
				out[d] = true
			}
		}
	}
	return out, nil
}

// getSmall reads a small object (a JSON document) whole.
func (t *Tier) getSmall(ctx context.Context, key string) ([]byte, error) {
	obj, err := t.c.GetObject(ctx, t.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	return io.ReadAll(io.LimitReader(obj, 16<<20))
}

// EvictResult says what one eviction run did.
type EvictResult struct {
	Ran          bool // this node held the eviction lease
	Blobs        int  // blobs in the bucket before
	Bytes        int64
	Evicted      []cache.Digest
	Freed        int64
	SkippedInUse int // LRU candidates kept because a node was reading them
}

// Evict runs one eviction: unless another node is evicting, it removes
// the least recently used blobs (never a pinned one, never one being read)
// until the bucket's blobs fit MaxSize.
func (t *Tier) Evict(ctx context.Context) (EvictResult, error) {
	var res EvictResult
	// The pins set on other gateways first: Options.Pinned may resolve
	// them (through KnownPins) into this node's list.
	if _, err := t.Pins(ctx); err != nil {
		return res, err
	}
	if err := t.PublishPinned(ctx); err != nil {
		// Without our list another node could evict what we pin; so
		// could we.
		return res, err
	}
	l, err := t.takeEvictLease(ctx)
	if err != nil || l == nil {
		return res, err
	}
	defer l.release()
	res.Ran = true
	// Marks left by an evictor that died mid-run (we hold the lease, so
	// no other run is in progress) would keep readers off their blobs.
	if err := t.list(ctx, "evicting", func(o minio.ObjectInfo) { t.removeKey(o.Key) }); err != nil {
		return res, err
	}
	blobs, err := t.Blobs(ctx)
	if err != nil {
		return res, err
	}
	if err := t.tidy(ctx, l, blobs); err != nil {
		return res, err
	}
	res.Blobs = len(blobs)
	for _, b := range blobs {
		res.Bytes += b.Size
	}
	if t.ev.maxSize <= 0 || res.Bytes <= t.ev.maxSize {
		return res, nil
	}
	now, err := l.bucketNow(ctx)
	if err != nil {
		return res, err
	}
	over := res.Bytes - t.ev.maxSize
	for _, b := range blobs {
		if over <= 0 {
			break
		}
		if b.Pinned || now.Sub(b.LastAccess) < t.ev.freshFor {
			// A blob used a moment ago may be pinned on a gateway that
			// has not published its list since: each publishes every
			// EvictEvery, and fresh blobs wait out two of those.
			continue
		}
		if l.isLost() {
			return res, fmt.Errorf("s3tier: lost the eviction lease mid-run")
		}
		removed, err := t.removeBlob(ctx, b.Digest)
		if err != nil {
			return res, err
		}
		if !removed {
			res.SkippedInUse++
			continue
		}
		over -= b.Size
		res.Evicted = append(res.Evicted, b.Digest)
		res.Freed += b.Size
		t.onEvent("evicted")
		if t.ev.onEvict != nil {
			t.ev.onEvict(b.Digest, b.Size)
		}
		t.log.Info("evicted a blob from the shared bucket", "blob", b.Digest.String(), "size", b.Size, "last_access", b.LastAccess)
	}
	t.ev.mu.Lock()
	t.ev.stats.Blobs -= int64(len(res.Evicted))
	t.ev.stats.Bytes -= res.Freed
	t.ev.mu.Unlock()
	if over > 0 {
		t.log.Warn("the shared bucket stays over storage.s3.max_size: what is left is pinned or being read", "over_bytes", over)
	}
	return res, nil
}

// jobRetention is how long a job record nobody rewrote stays in the
// bucket (a running job rewrites it at every file, and the gateways keep
// finished jobs this long too), and a purge's mark (a gateway down for
// longer keeps its hot copy).
const jobRetention = 7 * 24 * time.Hour

// tidy removes what nothing needs any more: access records of blobs the
// bucket does not hold (hot-tier hits of blobs that were never uploaded,
// or that went another way than eviction), and job records and purge
// marks past jobRetention.
func (t *Tier) tidy(ctx context.Context, l *evictLease, blobs []BucketBlob) error {
	held := make(map[cache.Digest]bool, len(blobs))
	for _, b := range blobs {
		held[b.Digest] = true
	}
	now, err := l.bucketNow(ctx)
	if err != nil {
		return err
	}
	var stale []string
	err = t.list(ctx, "access", func(o minio.ObjectInfo) {
		// Older than a record period only: an upload that finished
		// after the listing of blobs has a fresh record.
		if d, _, ok := t.parseDigestKey(o.Key, "access"); ok && !held[d] && now.Sub(o.LastModified) > t.ev.accessEvery {
			stale = append(stale, o.Key)
		}
	})
	if err != nil {
		return err
	}
	err = t.list(ctx, "purged", func(o minio.ObjectInfo) {
		if now.Sub(o.LastModified) > jobRetention {
			stale = append(stale, o.Key)
		}
	})
	if err != nil {
		return err
	}
	err = t.list(ctx, "jobs", func(o minio.ObjectInfo) {
		if now.Sub(o.LastModified) > jobRetention {
			stale = append(stale, o.Key)
		}
	})
	if err != nil {
		return err
	}
	for _, k := range stale {
		t.removeKey(k)
	}
	return nil
}

// removeBlob deletes blob d from the bucket unless a node is reading it:
// mark it as being evicted, then look for live readers (see openRead for
// why this order makes the two sides agree). It reports whether it
// removed the blob.
func (t *Tier) removeBlob(ctx context.Context, d cache.Digest) (bool, error) {
	mark := t.objKey("evicting", d)
	if err := t.putEmpty(ctx, mark); err != nil {
		return false, fmt.Errorf("s3tier: marking %s for eviction: %w", d, err)
	}
	defer t.removeKey(mark)
	// The mark's LastModified is "now" on the bucket's clock, the clock
	// the readers' markers were written with.
	info, err := t.c.StatObject(ctx, t.bucket, mark, minio.StatObjectOptions{})
	if err != nil {
		return false, fmt.Errorf("s3tier: marking %s for eviction: %w", d, err)
	}
	now := info.LastModified
	live := false
	err = t.list(ctx, "readers/"+string(d.Algo)+"/"+d.Hex, func(o minio.ObjectInfo) {
		if now.Sub(o.LastModified) < t.readerGrace() {
			live = true
		}
	})
	if err != nil || live {
		return false, err
	}
	if err := t.c.RemoveObject(ctx, t.bucket, t.blobKey(d), minio.RemoveObjectOptions{}); err != nil && !isNotFound(err) {
		return false, fmt.Errorf("s3tier: removing %s: %w", d, err)
	}
	// Its access records go with it (best effort: a leftover is a few
	// bytes, and harmless).
	var stale []string
	_ = t.list(ctx, "access/"+string(d.Algo)+"/"+d.Hex, func(o minio.ObjectInfo) { stale = append(stale, o.Key) })
	for _, k := range stale {
		t.removeKey(k)
	}
	return true, nil
}

// evictLease is this node's hold on the eviction lease.
type evictLease struct {
	t       *Tier
	mu      sync.Mutex
	etag    string
	lost    bool
	stop    chan struct{}
	stopped chan struct{}
}

func (t *Tier) evictLeaseKey() string { return t.prefix + "evict-lease" }

func (t *Tier) putEvictLease(ctx context.Context, match string) (string, error) {
	body := t.leaseBody()
	opts := minio.PutObjectOptions{ContentType: "application/json", DisableMultipart: true}
	if match == "" {
		opts.SetMatchETagExcept("*")
	} else {
		opts.SetMatchETag(match)
	}
	info, err := t.c.PutObject(ctx, t.bucket, t.evictLeaseKey(), bytes.NewReader(body), int64(len(body)), opts)
	if err != nil {
		return "", err
	}
	return trimETag(info.ETag), nil
}

// takeEvictLease takes the eviction lease if it is free, or expired (its
// etag unchanged for a TTL of this node's clock, across runs); nil when
// another node holds it.
func (t *Tier) takeEvictLease(ctx context.Context) (*evictLease, error) {
	info, err := t.c.StatObject(ctx, t.bucket, t.evictLeaseKey(), minio.StatObjectOptions{})
	var etag string
	switch {
	case isNotFound(err):
		etag, err = t.putEvictLease(ctx, "")
	case err != nil:
		return nil, fmt.Errorf("s3tier: stat eviction lease: %w", err)
	default:
		seen := trimETag(info.ETag)
		t.ev.mu.Lock()
		if seen != t.ev.seenETag {
			t.ev.seenETag, t.ev.seenAt = seen, time.Now()
		}
		fresh := time.Since(t.ev.seenAt) < t.ttl
		t.ev.mu.Unlock()
		if fresh {
			return nil, nil
		}
		etag, err = t.putEvictLease(ctx, seen)
		if err == nil {
			t.log.Warn("took over the eviction lease of a gateway that stopped renewing it")
		}
	}
	if isPreconditionFailed(err) || isNotFound(err) {
		return nil, nil // another node was first
	}
	if err != nil {
		return nil, fmt.Errorf("s3tier: taking the eviction lease: %w", err)
	}
	l := &evictLease{t: t, etag: etag, stop: make(chan struct{}), stopped: make(chan struct{})}
	go l.renew()
	return l, nil
}

// bucketNow is the time on the bucket's clock: when it wrote the lease
// (renewed at most TTL/3 ago).
func (l *evictLease) bucketNow(ctx context.Context) (time.Time, error) {
	info, err := l.t.c.StatObject(ctx, l.t.bucket, l.t.evictLeaseKey(), minio.StatObjectOptions{})
	if err != nil {
		return time.Time{}, fmt.Errorf("s3tier: stat eviction lease: %w", err)
	}
	return info.LastModified, nil
}

func (l *evictLease) isLost() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

func (l *evictLease) renew() {
	defer close(l.stopped)
	every := l.t.ttl / 3
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
		}
		l.mu.Lock()
		etag := l.etag
		l.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), every)
		n, err := l.t.putEvictLease(ctx, etag)
		cancel()
		l.mu.Lock()
		switch {
		case isPreconditionFailed(err) || isNotFound(err):
			l.lost = true
			l.mu.Unlock()
			return
		case err == nil:
			l.etag = n
		}
		l.mu.Unlock()
	}
}

func (l *evictLease) release() {
	close(l.stop)
	<-l.stopped
	l.mu.Lock()
	lost, etag := l.lost, l.etag
	l.mu.Unlock()
	if lost {
		return
	}
	_ = l.t.deleteIfOurs(l.t.evictLeaseKey(), etag) // it expires by itself
}

// StartMaintenance runs Evict every Options.EvictEvery (a minute by
// default) until Close; with MaxSize 0 a run only publishes the pins and
// counts the bucket.
func (t *Tier) StartMaintenance() {
	t.ev.loop.Add(1)
	go func() {
		defer t.ev.loop.Done()
		tick := time.NewTicker(t.ev.every)
		defer tick.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), max(t.ev.every, 10*t.ttl))
			go func() {
				select {
				case <-t.ev.stop:
					cancel()
				case <-ctx.Done():
				}
			}()
			if err := t.applyPurges(ctx); err != nil {
				t.log.Warn("reading the purges of the shared bucket failed", "err", err)
			}
			res, err := t.Evict(ctx)
			cancel()
			if err != nil {
				t.log.Warn("shared bucket eviction failed", "err", err)
			} else if !res.Ran {
				// Another node evicts; count the bucket for this node's
				// metrics all the same.
				ctx, cancel := context.WithTimeout(context.Background(), t.ev.every)
				if _, err := t.Blobs(ctx); err != nil {
					t.log.Debug("counting the shared bucket failed", "err", err)
				}
				cancel()
			}
			select {
			case <-t.ev.stop:
				return
			case <-tick.C:
			}
		}
	}()
}

// Close stops the maintenance and waits for the access records in flight.
func (t *Tier) Close() error {
	t.ev.stopOnce.Do(func() { close(t.ev.stop) })
	t.ev.loop.Wait()
	t.ev.bg.Wait()
	return nil
}

// SetOnEvict sets Options.OnEvict (for a counter registered once the Tier
// exists); call it before StartMaintenance.
func (t *Tier) SetOnEvict(f func(d cache.Digest, size int64)) { t.ev.onEvict = f }

// Node is the name this gateway writes into the bucket.
func (t *Tier) Node() string { return t.node }
