package s3tier

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/modelgate/modelgate/cache"
)

// lease is this node's hold on the fill of one blob.
type lease struct {
	t *Tier
	d cache.Digest

	// moved counts the bytes the fill moved (downloaded, then uploaded):
	// the lease is renewed only while it grows.
	moved atomic.Int64

	// renewMu makes renewals one at a time: two writes over the same
	// etag would fail one another and look like a takeover.
	renewMu sync.Mutex
	mu      sync.Mutex
	etag    string // of our last write
	lost    bool   // a write found another node's
	// unheard are the nonces of our writes since the last one we heard
	// back from: the bucket may have applied them (a deadline cut the
	// answer), so the lease may hold one under an etag we never saw.
	unheard []string

	stop    chan struct{}
	stopped chan struct{}
}

func (t *Tier) newLease(d cache.Digest, etag string) *lease {
	l := &lease{t: t, d: d, etag: etag, stop: make(chan struct{}), stopped: make(chan struct{})}
	go l.renewLoop()
	return l
}

// fill fetches from the upstream (counting progress). A blob larger than
// one part is uploaded part by part while it fills (upload.go), resuming
// the upload a previous holder recorded; a smaller one is uploaded whole
// once verified.
func (l *lease) fill(ctx context.Context, upstream cache.Source, size int64) cache.TierFill {
	src := func(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
		body, start, err := upstream(ctx, off, end)
		if err != nil {
			return nil, start, err
		}
		return &countingBody{ReadCloser: body, n: &l.moved}, start, nil
	}
	if size <= int64(l.t.partSize) {
		return cache.TierFill{Source: src, Done: l.done}
	}
	u, err := l.t.startUpload(ctx, l, l.d, size)
	if err != nil {
		// The fill goes on; the blob just does not reach the bucket this
		// time (the lease is released after it, and the next fill of it
		// on any node tries again).
		l.t.log.Warn("cannot upload to the shared bucket while filling", "blob", l.d.String(), "err", err)
		l.t.onEvent("upload_failed")
		return cache.TierFill{Source: src, Done: func(string, error) { l.release() }}
	}
	tf := cache.TierFill{Source: src, Watch: u.watch, Done: u.done}
	if skip := u.skip; skip > 0 {
		tf.Skip, tf.Rest = skip, u.rest
	}
	return tf
}

// done uploads a verified blob of one part, fenced like a multipart
// completion, and releases the lease.
func (l *lease) done(path string, err error) {
	defer l.release()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*l.t.ttl)
	defer cancel()
	uerr := l.renew(ctx)
	if uerr == nil {
		uerr = l.t.upload(ctx, l.d, path, &l.moved)
	}
	switch {
	case errors.Is(uerr, errLeaseLost):
		l.t.log.Warn("not uploading: another gateway took the fill lease over", "blob", l.d.String())
		l.t.onEvent("upload_refused")
	case uerr != nil:
		// The blob is served from this node's disk all the same; the
		// other nodes find no blob when the lease is gone and fetch it
		// themselves.
		l.t.log.Warn("uploading a verified blob to the shared bucket failed", "blob", l.d.String(), "err", uerr)
		l.t.onEvent("upload_failed")
	default:
		l.t.published(l.d)
	}
}

// published records that blob d reached the bucket under its content id.
func (t *Tier) published(d cache.Digest) {
	t.onEvent("upload")
	t.Touch(d)                         // used now: its upload's date may be its start's
	t.removeKey(t.objKey("purged", d)) // fetched again since a purge
}

func (l *lease) isLost() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

// markLost records that another node's write replaced ours.
func (l *lease) markLost() {
	l.mu.Lock()
	was := l.lost
	l.lost = true
	l.mu.Unlock()
	if !was {
		l.t.log.Warn("lost the fill lease to another gateway; this fill goes on for this node's clients only", "blob", l.d.String())
		l.t.onEvent("lease_lost")
	}
}

// renew rewrites the lease over our last write. errLeaseLost: another
// node's write is there (or the lease is gone).
func (l *lease) renew(ctx context.Context) error {
	l.renewMu.Lock()
	defer l.renewMu.Unlock()
	l.mu.Lock()
	etag, lost, mine := l.etag, l.lost, slices.Clone(l.unheard)
	l.mu.Unlock()
	if lost {
		return errLeaseLost
	}
	var newETag, nonce string
	var err error
	// A 412 is not necessarily another node: the write that moved the
	// etag may be ours, applied though we never heard (a deadline, or
	// this very write applied and then retried by the client). The nonce
	// tells; over one of our earlier writes we write again, which can go
	// unheard the same way.
	for range maxRewrites {
		newETag, nonce, err = l.t.putLeaseNonce(ctx, l.d, etag)
		if !isPreconditionFailed(err) {
			break
		}
		mine = append(mine, nonce)
		doc, cur, rerr := l.t.readLease(ctx, l.d)
		if rerr != nil {
			if !isNotFound(rerr) {
				err = rerr // cannot tell now: the next tick asks again
			}
			break
		}
		if doc.Nonce == nonce {
			newETag, err = cur, nil
			break
		}
		if !slices.Contains(mine, doc.Nonce) {
			break // another node's write
		}
		etag = cur
	}
	switch {
	case isPreconditionFailed(err) || isNotFound(err):
		l.markLost()
		return errLeaseLost
	case err != nil:
		l.mu.Lock()
		if len(l.unheard) < maxUnheard {
			l.unheard = append(l.unheard, nonce)
		}
		l.mu.Unlock()
		return err
	}
	l.mu.Lock()
	l.etag, l.unheard = newETag, nil
	l.mu.Unlock()
	return nil
}

// maxUnheard bounds the unanswered writes a lease remembers: at one
// renewal per TTL/3, more than a few means the TTL has long passed anyway.
const maxUnheard = 16

// maxRewrites bounds the writes of one renewal over our own unheard ones.
const maxRewrites = 3

// renewLoop rewrites the lease every TTL/3 while the fill moves bytes. A
// fill that moved nothing for a whole TTL stops renewing, so that another
// node may take over one TTL later.
func (l *lease) renewLoop() {
	defer close(l.stopped)
	every := l.t.ttl / 3
	tick := time.NewTicker(every)
	defer tick.Stop()
	lastMoved, lastProgress := l.moved.Load(), time.Now()
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
		}
		if n := l.moved.Load(); n != lastMoved {
			lastMoved, lastProgress = n, time.Now()
		}
		if time.Since(lastProgress) >= l.t.ttl {
			continue // stalled: let it lapse (but renew again if it recovers)
		}
		ctx, cancel := context.WithTimeout(context.Background(), every)
		err := l.renew(ctx)
		cancel()
		switch {
		case errors.Is(err, errLeaseLost):
			return
		case err != nil:
			// Try again at the next tick; two misses still leave a third
			// of the TTL.
			l.t.log.Warn("renewing a fill lease failed", "blob", l.d.String(), "err", err)
		}
	}
}

// release stops renewing and deletes the lease if it is still ours.
func (l *lease) release() {
	close(l.stop)
	<-l.stopped
	l.mu.Lock()
	lost, etag := l.lost, l.etag
	l.mu.Unlock()
	if lost {
		return
	}
	if err := l.t.deleteIfOurs(l.t.leaseKey(l.d), etag); err != nil {
		l.t.log.Warn("releasing a fill lease failed; it expires by itself", "blob", l.d.String(), "err", err)
	}
}

// deleteIfOurs deletes a lease at key if its etag is still that of our
// last write. S3 has no conditional DELETE everywhere: look first, so that
// a lease another node took over (after ours lapsed) is left alone.
func (t *Tier) deleteIfOurs(key, etag string) error {
	ctx, cancel := context.WithTimeout(context.Background(), t.ttl)
	defer cancel()
	info, err := t.c.StatObject(ctx, t.bucket, key, minio.StatObjectOptions{})
	if err != nil || trimETag(info.ETag) != etag {
		return nil
	}
	return t.c.RemoveObject(ctx, t.bucket, key, minio.RemoveObjectOptions{})
}

// upload puts the verified blob at path into the bucket under its content
// id, unless it is there already (If-None-Match: a copy another node
// published first stays).
func (t *Tier) upload(ctx context.Context, d cache.Digest, path string, moved *atomic.Int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	opts := minio.PutObjectOptions{ContentType: "application/octet-stream", DisableMultipart: true}
	opts.SetMatchETagExcept("*")
	_, err = t.c.PutObject(ctx, t.bucket, t.blobKey(d), &countingFile{File: f, n: moved}, fi.Size(), opts)
	if isPreconditionFailed(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("s3tier: put %s: %w", d, err)
	}
	return nil
}

func trimETag(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// countingFile counts the bytes an upload reads; it keeps ReadAt so that
// the client uploads parts from the file without buffering them.
type countingFile struct {
	*os.File
	n *atomic.Int64
}

func (f *countingFile) Read(p []byte) (int, error) {
	n, err := f.File.Read(p)
	f.n.Add(int64(n))
	return n, err
}

func (f *countingFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.File.ReadAt(p, off)
	f.n.Add(int64(n))
	return n, err
}
