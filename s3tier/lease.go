package s3tier

import (
	"context"
	"fmt"
	"io"
	"os"
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

	mu   sync.Mutex
	etag string // of our last write
	lost bool   // a renewal found another node's write

	stop    chan struct{}
	stopped chan struct{}
}

func (t *Tier) newLease(d cache.Digest, etag string) *lease {
	l := &lease{t: t, d: d, etag: etag, stop: make(chan struct{}), stopped: make(chan struct{})}
	go l.renewLoop()
	return l
}

// fill fetches from the upstream (counting progress), then uploads the
// verified blob and releases the lease.
func (l *lease) fill(upstream cache.Source) cache.TierFill {
	src := func(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
		body, start, err := upstream(ctx, off, end)
		if err != nil {
			return nil, start, err
		}
		return &countingBody{ReadCloser: body, n: &l.moved}, start, nil
	}
	return cache.TierFill{Source: src, Done: l.done}
}

func (l *lease) done(path string, err error) {
	defer l.release()
	if err != nil {
		return
	}
	if uerr := l.t.upload(l.d, path, &l.moved); uerr != nil {
		// The blob is served from this node's disk all the same; the
		// other nodes find no blob when the lease is gone and fetch it
		// themselves.
		l.t.log.Warn("uploading a verified blob to the shared bucket failed", "blob", l.d.String(), "err", uerr)
		l.t.onEvent("upload_failed")
		return
	}
	l.t.onEvent("upload")
	l.t.Touch(l.d)                           // used now: its upload's date may be its start's
	l.t.removeKey(l.t.objKey("purged", l.d)) // fetched again since a purge
}

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
		l.mu.Lock()
		etag := l.etag
		l.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), every)
		newETag, err := l.t.putLease(ctx, l.d, etag)
		cancel()
		switch {
		case isPreconditionFailed(err) || isNotFound(err):
			l.mu.Lock()
			l.lost = true
			l.mu.Unlock()
			l.t.log.Warn("lost the fill lease to another gateway; finishing this fill without it", "blob", l.d.String())
			l.t.onEvent("lease_lost")
			return
		case err != nil:
			// Try again at the next tick; two misses still leave a third
			// of the TTL.
			l.t.log.Warn("renewing a fill lease failed", "blob", l.d.String(), "err", err)
		default:
			l.mu.Lock()
			l.etag = newETag
			l.mu.Unlock()
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
	ctx, cancel := context.WithTimeout(context.Background(), l.t.ttl)
	defer cancel()
	// S3 has no conditional DELETE everywhere: look first, so that a
	// lease another node took over (after ours lapsed) is left alone.
	info, err := l.t.c.StatObject(ctx, l.t.bucket, l.t.leaseKey(l.d), minio.StatObjectOptions{})
	if err != nil || trimETag(info.ETag) != etag {
		return
	}
	if err := l.t.c.RemoveObject(ctx, l.t.bucket, l.t.leaseKey(l.d), minio.RemoveObjectOptions{}); err != nil {
		l.t.log.Warn("releasing a fill lease failed; it expires by itself", "blob", l.d.String(), "err", err)
	}
}

// upload puts the verified blob at path into the bucket under its content
// id, unless it is there already. An S3 upload (multipart included)
// becomes visible only whole, so no reader ever sees a part of it.
func (t *Tier) upload(d cache.Digest, path string, moved *atomic.Int64) error {
	ctx := context.Background()
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if has, err := t.Has(ctx, d, fi.Size()); err == nil && has {
		return nil
	}
	_, err = t.c.PutObject(ctx, t.bucket, t.blobKey(d), &countingFile{File: f, n: moved}, fi.Size(), minio.PutObjectOptions{
		ContentType: "application/octet-stream",
		PartSize:    t.partSize,
		NumThreads:  2,
	})
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
