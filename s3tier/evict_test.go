package s3tier

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/internal/versity"
)

func newEvictTier(t testing.TB, srv *versity.Server, node string, maxSize int64, pinned func() map[cache.Digest]bool) *Tier {
	tier, err := New(Options{
		Endpoint: srv.Endpoint, Bucket: srv.Bucket, Prefix: "mg/", PathStyle: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey,
		LeaseTTL: time.Second, Node: node, Transport: http.DefaultTransport,
		MaxSize: maxSize, AccessEvery: time.Hour, Pinned: pinned,
		EvictEvery: time.Millisecond, // and so no grace for fresh blobs
	})
	require.NoError(t, err)
	t.Cleanup(func() { tier.Close() })
	return tier
}

// putBlob stores data in the bucket under its content id, as an upload
// would, and returns its digest.
func putBlob(t testing.TB, tier *Tier, data []byte) cache.Digest {
	d := digestOf(t, data)
	_, err := tier.c.PutObject(context.Background(), tier.bucket, tier.blobKey(d), bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{})
	require.NoError(t, err)
	return d
}

// nextBucketSecond waits until the bucket's clock (an object's
// LastModified) is past every write so far, so that the next write is
// strictly later in the bucket's order (S3 times are whole seconds).
func nextBucketSecond(t testing.TB, tier *Tier) {
	ctx := context.Background()
	probe := tier.prefix + "probe"
	require.NoError(t, tier.putEmpty(ctx, probe))
	first, err := tier.c.StatObject(ctx, tier.bucket, probe, minio.StatObjectOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		require.NoError(t, tier.putEmpty(ctx, probe))
		info, err := tier.c.StatObject(ctx, tier.bucket, probe, minio.StatObjectOptions{})
		require.NoError(t, err)
		return info.LastModified.Truncate(time.Second).After(first.LastModified)
	}, 5*time.Second, 50*time.Millisecond)
	tier.removeKey(probe)
}

func blobKeys(t testing.TB, srv *versity.Server) []string {
	var out []string
	for _, k := range srv.Keys(t, "mg/blobs/") {
		out = append(out, strings.TrimPrefix(k, "mg/blobs/sha256/"))
	}
	return out
}

// threeBlobs puts a, b, c (100 KiB each, in that order), then reads a on
// another node: b is the least recently used, then c, then a.
func threeBlobs(t *testing.T, srv *versity.Server, tier *Tier) (a, b, c cache.Digest) {
	a = putBlob(t, tier, randomBytes(10, 100<<10))
	nextBucketSecond(t, tier)
	b = putBlob(t, tier, randomBytes(11, 100<<10))
	nextBucketSecond(t, tier)
	c = putBlob(t, tier, randomBytes(12, 100<<10))
	nextBucketSecond(t, tier)
	other := newEvictTier(t, srv, "reader-node", 0, nil)
	other.Touch(a)
	require.Eventually(t, func() bool { return len(srv.Keys(t, "mg/access/sha256/"+a.Hex+"/")) == 1 }, 5*time.Second, 10*time.Millisecond)
	nextBucketSecond(t, tier) // none of them is "used just now"
	return a, b, c
}

func TestEvictLeastRecentlyUsed(t *testing.T) {
	srv := versity.Start(t)
	var evicted []cache.Digest
	tier := newEvictTier(t, srv, "evictor", 250<<10, nil)
	tier.ev.onEvict = func(d cache.Digest, _ int64) { evicted = append(evicted, d) }
	a, b, c := threeBlobs(t, srv, tier)

	res, err := tier.Evict(context.Background())
	require.NoError(t, err)
	require.True(t, res.Ran)
	assert.Equal(t, []cache.Digest{b}, res.Evicted, "b was used least recently (a was read after c was uploaded)")
	assert.Equal(t, []cache.Digest{b}, evicted)
	assert.EqualValues(t, 100<<10, res.Freed)
	assert.ElementsMatch(t, []string{a.Hex, c.Hex}, blobKeys(t, srv))
	assert.Equal(t, BucketStats{Blobs: 2, Bytes: 200 << 10}, withoutTime(tier.Stats()))

	// Within the bound now: the next run removes nothing.
	res, err = tier.Evict(context.Background())
	require.NoError(t, err)
	assert.Empty(t, res.Evicted)
	assert.Empty(t, srv.Keys(t, "mg/evict-lease"), "the lease is released after a run")
}

func withoutTime(s BucketStats) BucketStats {
	s.Scanned = time.Time{}
	return s
}

// The least recently used blob is being read from the bucket by another
// node: it stays, and the next one in LRU order goes instead.
func TestEvictKeepsBlobWithLiveReader(t *testing.T) {
	srv := versity.Start(t)
	tier := newEvictTier(t, srv, "evictor", 250<<10, nil)
	a, b, c := threeBlobs(t, srv, tier)

	reader := newEvictTier(t, srv, "reader", 0, nil)
	// The reader recorded its access to b less than AccessEvery ago (in
	// this test: never, but it does not write another record), so b
	// stays the least recently used blob while it is read.
	reader.ev.accessed[b] = time.Now()
	ok, rd, err := reader.openRead(context.Background(), b, 100<<10)
	require.NoError(t, err)
	require.True(t, ok)

	res, err := tier.Evict(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, res.SkippedInUse)
	assert.Equal(t, []cache.Digest{c}, res.Evicted)
	assert.ElementsMatch(t, []string{a.Hex, b.Hex}, blobKeys(t, srv))

	rd.end()
	assert.Empty(t, srv.Keys(t, "mg/readers/"), "an ended read withdraws its marker")
}

// The other side of the same agreement: a node that finds a blob being
// evicted does not read it from the bucket, and leaves no marker.
func TestReadRefusedWhileEvicting(t *testing.T) {
	srv := versity.Start(t)
	tier := newEvictTier(t, srv, "reader", 0, nil)
	d := putBlob(t, tier, randomBytes(13, 1000))
	require.NoError(t, tier.putEmpty(context.Background(), tier.objKey("evicting", d)))
	ok, rd, err := tier.openRead(context.Background(), d, 1000)
	require.NoError(t, err)
	assert.False(t, ok)
	assert.Nil(t, rd)
	assert.Empty(t, srv.Keys(t, "mg/readers/"))
}

// Pins: this node's, and another node's published list.
func TestEvictNeverRemovesPinned(t *testing.T) {
	srv := versity.Start(t)
	for _, where := range []string{"local", "other node"} {
		t.Run(where, func(t *testing.T) {
			var pinned func() map[cache.Digest]bool
			var b cache.Digest
			pinB := func() map[cache.Digest]bool { return map[cache.Digest]bool{b: true} }
			if where == "local" {
				pinned = pinB
			}
			tier := newEvictTier(t, srv, "evictor", 150<<10, pinned)
			var a, c cache.Digest
			a, b, c = threeBlobs(t, srv, tier)
			if where == "other node" {
				require.NoError(t, newEvictTier(t, srv, "pinner", 0, pinB).PublishPinned(context.Background()))
			}
			res, err := tier.Evict(context.Background())
			require.NoError(t, err)
			assert.Equal(t, []cache.Digest{c, a}, res.Evicted, "LRU order, b skipped")
			assert.Equal(t, []string{b.Hex}, blobKeys(t, srv), "over the bound, but pinned")
			for _, k := range srv.Keys(t, "mg/") {
				if strings.HasPrefix(k, "mg/blobs/") || strings.HasPrefix(k, "mg/access/") {
					srv.Client(t).RemoveObject(context.Background(), srv.Bucket, k, minio.RemoveObjectOptions{})
				}
			}
		})
	}
}

// Two nodes evicting at once: one takes the lease, the other does
// nothing; a lease nobody renews is taken over after a TTL.
func TestOneEvictorAtATime(t *testing.T) {
	srv := versity.Start(t)
	a := newEvictTier(t, srv, "a", 1, nil)
	b := newEvictTier(t, srv, "b", 1, nil)
	putBlob(t, a, randomBytes(14, 1000))
	ctx := context.Background()

	leases := make(chan *evictLease, 2)
	for _, tier := range []*Tier{a, b} {
		go func() {
			l, err := tier.takeEvictLease(ctx)
			assert.NoError(t, err)
			leases <- l
		}()
	}
	l1, l2 := <-leases, <-leases
	require.True(t, (l1 == nil) != (l2 == nil), "exactly one of two concurrent evictors holds the lease")
	held := l1
	if held == nil {
		held = l2
	}
	loser := b
	if held.t == b {
		loser = a
	}
	res, err := loser.Evict(ctx)
	require.NoError(t, err)
	assert.False(t, res.Ran, "no eviction while another node holds the lease")
	assert.Len(t, blobKeys(t, srv), 1)

	// The holder dies: it stops renewing without releasing.
	close(held.stop)
	<-held.stopped
	require.Eventually(t, func() bool {
		res, err := loser.Evict(ctx)
		require.NoError(t, err)
		return res.Ran
	}, 10*time.Second, 100*time.Millisecond, "a dead evictor's lease is taken over")
	assert.Empty(t, blobKeys(t, srv))
}

// fillKeys lists the bucket's blobs, fill leases and upload records: what
// the fill protocol writes, without the access records and pin lists of
// eviction.
func fillKeys(t testing.TB, srv *versity.Server) []string {
	var out []string
	for _, k := range srv.Keys(t, "mg/") {
		if strings.HasPrefix(k, "mg/blobs/") || strings.HasPrefix(k, "mg/leases/") || strings.HasPrefix(k, "mg/uploads/") {
			out = append(out, k)
		}
	}
	return out
}

// A blob served from the hot tier is recorded as used in the bucket, at
// most once per AccessEvery however often it is read.
func TestHotTierHitsRecordAccessCoarsely(t *testing.T) {
	srv := versity.Start(t)
	data := randomBytes(15, 300<<10)
	d, size := digestOf(t, data), int64(len(data))
	var ev events
	tier := newTier(t, srv, time.Second, &ev)
	s := newStore(t, tier)
	require.True(t, bytes.Equal(data, get(t, s, d, size, (&origin{data: data}).source, 0, size)))
	require.Eventually(t, func() bool { return ev.get("upload") == 1 }, 10*time.Second, 10*time.Millisecond)
	access := "mg/access/sha256/" + d.Hex + "/"
	require.Eventually(t, func() bool { return len(srv.Keys(t, access)) == 1 }, 5*time.Second, 10*time.Millisecond,
		"the upload counts as a use")
	require.NoError(t, srv.Client(t).RemoveObject(context.Background(), srv.Bucket, srv.Keys(t, access)[0], minio.RemoveObjectOptions{}))

	for range 5 {
		get(t, s, d, size, nil, 0, 10)
	}
	tier.Close() // waits for records in flight
	assert.Empty(t, srv.Keys(t, access), "within the hour, hits write nothing")

	tier.ev.accessMu.Lock()
	clear(tier.ev.accessed) // an hour later
	tier.ev.accessMu.Unlock()
	get(t, s, d, size, nil, 0, 10)
	require.Eventually(t, func() bool { return len(srv.Keys(t, access)) == 1 }, 5*time.Second, 10*time.Millisecond,
		"a hit an hour later is recorded")
}

// The evictor drops access records of blobs the bucket does not hold once
// they are older than a record period, and job records past retention.
func TestEvictTidiesOrphans(t *testing.T) {
	srv := versity.Start(t)
	tier := newEvictTier(t, srv, "evictor", 0, nil)
	tier.ev.accessEvery = time.Second
	ctx := context.Background()
	held := putBlob(t, tier, randomBytes(16, 1000))
	gone := digestOf(t, []byte("never uploaded"))
	for _, d := range []cache.Digest{held, gone} {
		require.NoError(t, tier.putEmpty(ctx, tier.objKey("access", d)+"/n"))
	}
	require.NoError(t, tier.PutJob(ctx, "abc1", []byte(`{"id":"abc1"}`)))
	nextBucketSecond(t, tier)
	nextBucketSecond(t, tier) // the records are now over a second old
	_, err := tier.Evict(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"mg/access/sha256/" + held.Hex + "/n"}, srv.Keys(t, "mg/access/"))
	assert.Len(t, srv.Keys(t, "mg/jobs/"), 1, "a recent job record stays")
}

// A blob used within two evict intervals is kept over the bound: a gateway
// that pinned it may not have published its list yet.
func TestEvictSparesFreshBlobs(t *testing.T) {
	srv := versity.Start(t)
	tier := newEvictTier(t, srv, "evictor", 1, nil)
	tier.ev.freshFor = time.Hour // as with evict_interval 30m
	d := putBlob(t, tier, randomBytes(17, 1000))
	nextBucketSecond(t, tier)
	res, err := tier.Evict(context.Background())
	require.NoError(t, err)
	assert.True(t, res.Ran)
	assert.Empty(t, res.Evicted)
	assert.Equal(t, []string{d.Hex}, blobKeys(t, srv))
}
