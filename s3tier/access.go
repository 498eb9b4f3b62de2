package s3tier

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/modelgate/modelgate/cache"
)

// Access and readers, for the bucket's eviction (see evict.go).
//
//	access/<algo>/<hex>/<node>    when <node> last read the blob (its
//	                              LastModified), written at most once per
//	                              AccessEvery per blob per node
//	readers/<algo>/<hex>/<node>.<nonce>
//	                              a read of the blob from the bucket in
//	                              progress, rewritten every TTL/3 while it
//	                              lasts, deleted when it ends
//	evicting/<algo>/<hex>         an eviction of the blob in progress
//
// Every time the protocol compares is the bucket's own (an object's
// LastModified against another object's LastModified), so the nodes'
// clocks need not agree.

func (t *Tier) objKey(dir string, d cache.Digest) string {
	return t.prefix + dir + "/" + string(d.Algo) + "/" + d.Hex
}

// nodeKey makes the node name safe as one key segment.
func (t *Tier) nodeKey() string { return url.PathEscape(t.node) }

// Touch records that this node read blob d (from its hot tier or from the
// bucket), at most once per AccessEvery per blob: eviction ranks blobs by
// these records, and a coarse record costs one small PUT per blob per
// node per hour however hot the blob is. It never blocks the read.
func (t *Tier) Touch(d cache.Digest) {
	t.ev.accessMu.Lock()
	last, ok := t.ev.accessed[d]
	now := time.Now()
	if ok && now.Sub(last) < t.ev.accessEvery {
		t.ev.accessMu.Unlock()
		return
	}
	t.ev.accessed[d] = now
	if len(t.ev.accessed) > 100_000 {
		// Forget the old ones rather than grow without bound; the worst
		// case is one more PUT for a blob read again.
		for k, v := range t.ev.accessed {
			if now.Sub(v) >= t.ev.accessEvery {
				delete(t.ev.accessed, k)
			}
		}
	}
	t.ev.accessMu.Unlock()
	t.ev.bg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), t.ttl)
		defer cancel()
		if err := t.putEmpty(ctx, t.objKey("access", d)+"/"+t.nodeKey()); err != nil {
			t.log.Debug("recording a blob's access in the bucket failed", "blob", d.String(), "err", err)
			t.ev.accessMu.Lock()
			delete(t.ev.accessed, d) // try again at the next read
			t.ev.accessMu.Unlock()
		}
	})
}

func nonce() string {
	var n [8]byte
	_, _ = rand.Read(n[:])
	return hex.EncodeToString(n[:])
}

func (t *Tier) putEmpty(ctx context.Context, key string) error {
	_, err := t.c.PutObject(ctx, t.bucket, key, bytes.NewReader(nil), 0, minio.PutObjectOptions{DisableMultipart: true})
	return err
}

// bucketRead is one read of a blob from the bucket: its marker is kept
// fresh until end.
type bucketRead struct {
	t    *Tier
	key  string
	stop chan struct{}
	once sync.Once
	done chan struct{}
}

// openRead announces a read of d from the bucket, then reports whether d
// is there to read. It answers false (and withdraws the announcement)
// when the blob is missing or being evicted.
//
// Why no read is ever cut by an eviction: the reader writes its marker
// and then looks for the evicting/ mark; the evictor writes the mark and
// then lists the markers. S3 is strongly consistent (read-after-write and
// list-after-write), so of two such write-then-read pairs at least one
// read sees the other's write: either the reader sees the mark (and does
// not read from the bucket) or the evictor sees the marker (and keeps the
// blob). The marker is rewritten every TTL/3 while the read goes on, and
// the evictor counts it as live for 3 TTLs after its last write, so only
// a reader stalled for 3 TTLs can lose its blob (its fill then fails and
// is retried like any failed fill).
func (t *Tier) openRead(ctx context.Context, d cache.Digest, size int64) (bool, *bucketRead, error) {
	has, err := t.Has(ctx, d, size)
	if err != nil || !has {
		return false, nil, err
	}
	r := &bucketRead{t: t, key: t.objKey("readers", d) + "/" + t.nodeKey() + "." + nonce(), stop: make(chan struct{}), done: make(chan struct{})}
	if err := t.putEmpty(ctx, r.key); err != nil {
		return false, nil, fmt.Errorf("s3tier: announcing a read of %s: %w", d, err)
	}
	evicting, err := t.exists(ctx, t.objKey("evicting", d))
	if err == nil && !evicting {
		has, err = t.Has(ctx, d, size)
	}
	if err != nil || evicting || !has {
		t.removeKey(r.key)
		return false, nil, err
	}
	go r.keepFresh()
	t.Touch(d)
	return true, r, nil
}

func (r *bucketRead) keepFresh() {
	defer close(r.done)
	tick := time.NewTicker(r.t.ttl / 3)
	defer tick.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.t.ttl/3)
		if err := r.t.putEmpty(ctx, r.key); err != nil {
			r.t.log.Warn("refreshing a bucket read's marker failed", "err", err)
		}
		cancel()
	}
}

// end withdraws the read's marker.
func (r *bucketRead) end() {
	if r == nil {
		return
	}
	r.once.Do(func() {
		close(r.stop)
		<-r.done
		r.t.removeKey(r.key)
	})
}

func (t *Tier) exists(ctx context.Context, key string) (bool, error) {
	_, err := t.c.StatObject(ctx, t.bucket, key, minio.StatObjectOptions{})
	if isNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

func (t *Tier) removeKey(key string) {
	ctx, cancel := context.WithTimeout(context.Background(), t.ttl)
	defer cancel()
	if err := t.c.RemoveObject(ctx, t.bucket, key, minio.RemoveObjectOptions{}); err != nil && !isNotFound(err) {
		t.log.Debug("removing a bucket marker failed", "key", key, "err", err)
	}
}
