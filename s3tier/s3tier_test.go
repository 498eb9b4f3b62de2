package s3tier

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/internal/versity"
)

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func digestOf(t testing.TB, b []byte) cache.Digest {
	sum := sha256.Sum256(b)
	d, err := cache.NewDigest(cache.SHA256, hex.EncodeToString(sum[:]))
	require.NoError(t, err)
	return d
}

// origin serves a blob from memory as an upstream would, counting the
// requests and bytes it sent; every write of chunk bytes waits delay.
type origin struct {
	data  []byte
	delay time.Duration
	chunk int
	calls atomic.Int32
	sent  atomic.Int64
	// gate, when set, holds every chunk that reaches past gateAt until it
	// is closed.
	gate   chan struct{}
	gateAt int64
}

func (o *origin) source(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
	o.calls.Add(1)
	pr, pw := io.Pipe()
	go func() {
		chunk := int64(max(o.chunk, 32<<10))
		for pos := off; pos < end; pos += chunk {
			if o.delay > 0 {
				select {
				case <-time.After(o.delay):
				case <-ctx.Done():
					pw.CloseWithError(ctx.Err())
					return
				}
			}
			if o.gate != nil && min(pos+chunk, end) > o.gateAt {
				select {
				case <-o.gate:
				case <-ctx.Done():
					pw.CloseWithError(ctx.Err())
					return
				}
			}
			n, err := pw.Write(o.data[pos:min(pos+chunk, end)])
			o.sent.Add(int64(n))
			if err != nil {
				return
			}
		}
		pw.Close()
	}()
	return pr, off, nil
}

type events struct {
	mu sync.Mutex
	n  map[string]int
}

func (e *events) add(ev string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n == nil {
		e.n = map[string]int{}
	}
	e.n[ev]++
}

func (e *events) get(ev string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n[ev]
}

func newTier(t testing.TB, srv *versity.Server, ttl time.Duration, ev *events) *Tier {
	return newTierPart(t, srv, ttl, ev, 0, t.Name())
}

func newTierPart(t testing.TB, srv *versity.Server, ttl time.Duration, ev *events, partSize uint64, node string) *Tier {
	tier, err := New(Options{
		Endpoint: srv.Endpoint, Bucket: srv.Bucket, Prefix: "mg/", PathStyle: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey,
		LeaseTTL: ttl, Node: node, OnEvent: ev.add, Transport: http.DefaultTransport,
		PartSize: partSize,
	})
	require.NoError(t, err)
	return tier
}

func newStore(t testing.TB, tier cache.Tier) *cache.Store {
	dir := t.TempDir()
	idx, err := cache.OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	s, err := cache.Open(cache.Options{Dir: dir, Index: idx, RetryBackoff: 10 * time.Millisecond, PieceSize: 256 << 10, Tier: tier})
	require.NoError(t, err)
	t.Cleanup(func() {
		s.Close()
		idx.Close()
	})
	return s
}

func get(t testing.TB, s *cache.Store, d cache.Digest, size int64, src cache.Source, start, end int64) []byte {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b, _, err := s.Get(ctx, d, size, src)
	require.NoError(t, err)
	defer b.Close()
	r, err := b.NewReader(ctx, start, end)
	require.NoError(t, err)
	defer r.Close()
	got, err := io.ReadAll(r)
	require.NoError(t, err)
	return got
}

// The lease protocol rests on these: versitygw (and AWS S3, MinIO, R2,
// Ceph) refuse a create over an existing object and a write over a
// version other than the one named.
func TestConditionalWritesOnRealS3(t *testing.T) {
	srv := versity.Start(t)
	tier := newTier(t, srv, time.Second, &events{})
	ctx := context.Background()
	d := digestOf(t, []byte("x"))

	etag, err := tier.putLease(ctx, d, "")
	require.NoError(t, err)
	_, err = tier.putLease(ctx, d, "")
	require.True(t, isPreconditionFailed(err), "second create: %v", err)

	etag2, err := tier.putLease(ctx, d, etag)
	require.NoError(t, err)
	require.NotEqual(t, etag, etag2, "every write must change the etag")
	_, err = tier.putLease(ctx, d, etag)
	require.True(t, isPreconditionFailed(err), "write over a stale etag: %v", err)
}

// Three stores (three gateways' disks) on one bucket, many concurrent
// readers on each: every reader gets the right bytes, and the upstream is
// asked for the blob's bytes exactly once in all.
func TestOneUpstreamFetchAcrossNodes(t *testing.T) {
	srv := versity.Start(t)
	data := randomBytes(1, 3<<20)
	d, size := digestOf(t, data), int64(len(data))
	up := &origin{data: data, delay: 2 * time.Millisecond}
	var ev events
	var stores []*cache.Store
	for range 3 {
		stores = append(stores, newStore(t, newTier(t, srv, 2*time.Second, &ev)))
	}
	var g errgroup.Group
	for i := range 15 {
		g.Go(func() error {
			got := get(t, stores[i%3], d, size, up.source, 0, size)
			if !bytes.Equal(got, data) {
				t.Errorf("reader %d got wrong bytes", i)
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
	assert.Equal(t, size, up.sent.Load(), "upstream bytes for the cluster")
	assert.Equal(t, 1, ev.get("lease_taken"))
	assert.Zero(t, ev.get("lease_takeover"))
	require.Eventually(t, func() bool {
		return ev.get("upload") == 1 && slices.Equal([]string{"mg/blobs/sha256/" + d.Hex}, fillKeys(t, srv))
	}, 10*time.Second, 10*time.Millisecond, "the blob, and no lease left")
}

// A node that never saw the blob fills from the bucket, not the upstream;
// a Range is answered from it too.
func TestBucketCopyServesWithoutUpstream(t *testing.T) {
	srv := versity.Start(t)
	data := randomBytes(2, 2<<20+123)
	d, size := digestOf(t, data), int64(len(data))
	var ev events
	a := newStore(t, newTier(t, srv, time.Second, &ev))
	up := &origin{data: data}
	require.True(t, bytes.Equal(data, get(t, a, d, size, up.source, 0, size)))
	require.EqualValues(t, size, up.sent.Load())

	never := &origin{data: data}
	b := newStore(t, newTier(t, srv, time.Second, &ev))
	got := get(t, b, d, size, never.source, 1<<20, 1<<20+4096)
	require.True(t, bytes.Equal(data[1<<20:1<<20+4096], got), "range from the bucket")
	require.True(t, bytes.Equal(data, get(t, b, d, size, never.source, 0, size)))
	require.Zero(t, never.calls.Load(), "the upstream was asked for a blob the bucket holds")
	require.GreaterOrEqual(t, ev.get("bucket_hit"), 1)
	require.Eventually(t, func() bool { return b.Has(d) }, 10*time.Second, 20*time.Millisecond, "the hot tier filled from the bucket")
}

// The bucket unreachable: a cold fill goes on locally from the upstream,
// and what the disk holds is served as before.
func TestBucketUnreachableFallsBackToLocalFill(t *testing.T) {
	srv := versity.Start(t)
	data := randomBytes(3, 512<<10)
	d, size := digestOf(t, data), int64(len(data))
	var ev events
	s := newStore(t, newTier(t, srv, time.Second, &ev))
	srv.Stop()
	up := &origin{data: data}
	require.True(t, bytes.Equal(data, get(t, s, d, size, up.source, 0, size)))
	require.EqualValues(t, size, up.sent.Load())
	require.Equal(t, 1, ev.get("unreachable"))
	// A hit needs no bucket.
	require.True(t, bytes.Equal(data, get(t, s, d, size, up.source, 0, size)))
	require.EqualValues(t, size, up.sent.Load())
}

// A lease nobody renews (its holder died) is taken over once it has not
// changed for a TTL; until then the waiter waits.
func TestDeadHoldersLeaseIsTakenOver(t *testing.T) {
	srv := versity.Start(t)
	data := randomBytes(4, 256<<10)
	d, size := digestOf(t, data), int64(len(data))
	var ev events
	dead := newTier(t, srv, 400*time.Millisecond, &ev)
	_, err := dead.putLease(context.Background(), d, "") // and then it dies
	require.NoError(t, err)

	s := newStore(t, newTier(t, srv, 400*time.Millisecond, &ev))
	up := &origin{data: data}
	began := time.Now()
	require.True(t, bytes.Equal(data, get(t, s, d, size, up.source, 0, size)))
	require.GreaterOrEqual(t, time.Since(began), 400*time.Millisecond, "taken over before the TTL ran out")
	require.Equal(t, 1, ev.get("lease_takeover"))
	// The upload follows the publish; the reader may be done before it.
	require.Eventually(t, func() bool { return ev.get("upload") == 1 }, 10*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool {
		return slices.Equal([]string{"mg/blobs/sha256/" + d.Hex}, fillKeys(t, srv))
	}, 10*time.Second, 10*time.Millisecond, "the blob, and no lease left")
}

// A slow holder keeps its lease for a fill many times longer than the
// TTL: the other node waits for its upload instead of fetching again.
func TestSlowHolderKeepsLease(t *testing.T) {
	if testing.Short() {
		t.Skip("slow fill")
	}
	srv := versity.Start(t)
	data := randomBytes(5, 1<<20)
	d, size := digestOf(t, data), int64(len(data))
	const ttl = 300 * time.Millisecond
	var ev events
	// 32 chunks of 32 KiB, 400ms each, over 4 pieces at once: about
	// 3.2s, over 10 TTLs.
	up := &origin{data: data, delay: 400 * time.Millisecond, chunk: 32 << 10}
	a := newStore(t, newTier(t, srv, ttl, &ev))
	b := newStore(t, newTier(t, srv, ttl, &ev))
	var g errgroup.Group
	began := time.Now()
	g.Go(func() error {
		require.True(t, bytes.Equal(data, get(t, a, d, size, up.source, 0, size)))
		return nil
	})
	require.Eventually(t, func() bool { return ev.get("lease_taken") == 1 }, 10*time.Second, 5*time.Millisecond)
	g.Go(func() error {
		require.True(t, bytes.Equal(data, get(t, b, d, size, up.source, 0, size)))
		return nil
	})
	require.NoError(t, g.Wait())
	require.Greater(t, time.Since(began), 10*ttl)
	require.EqualValues(t, size, up.sent.Load(), "a second node fetched the blob")
	require.Zero(t, ev.get("lease_takeover"))
	require.Equal(t, 1, ev.get("bucket_hit"))
}

// The bucket holds only verified blobs under their content id: a fill that
// fails verification uploads nothing and leaves no lease.
func TestFailedFillUploadsNothing(t *testing.T) {
	srv := versity.Start(t)
	data := randomBytes(6, 300<<10)
	d, size := digestOf(t, data), int64(len(data))
	bad := append([]byte(nil), data...)
	bad[len(bad)-1] ^= 1
	var ev events
	s := newStore(t, newTier(t, srv, time.Second, &ev))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, _, err := s.Get(ctx, d, size, (&origin{data: bad}).source)
	if err == nil {
		r, rerr := b.NewReader(ctx, 0, size)
		require.NoError(t, rerr)
		_, err = io.ReadAll(r)
		r.Close()
		b.Close()
	}
	require.Error(t, err)
	require.Eventually(t, func() bool { return len(fillKeys(t, srv)) == 0 }, 10*time.Second, 20*time.Millisecond,
		"bucket holds %v", fillKeys(t, srv))
	require.Zero(t, ev.get("upload"))
}
