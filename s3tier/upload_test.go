package s3tier

import (
	"bytes"
	"context"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/internal/versity"
)

// The multipart tests use S3's smallest part, and blobs of 3 parts: two
// whole ones and a short last one.
const testPart = minPartSize

func threePartBlob(seed uint64) []byte { return randomBytes(seed, 2*testPart+2<<20+4321) }

// getAsync reads the whole blob from s in the background.
func getAsync(s *cache.Store, d cache.Digest, size int64, src cache.Source) <-chan []byte {
	out := make(chan []byte, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		b, _, err := s.Get(ctx, d, size, src)
		if err != nil {
			out <- nil
			return
		}
		defer b.Close()
		r, err := b.NewReader(ctx, 0, size)
		if err != nil {
			out <- nil
			return
		}
		defer r.Close()
		got, _ := io.ReadAll(r)
		out <- got
	}()
	return out
}

func recv(t *testing.T, c <-chan []byte) []byte {
	t.Helper()
	select {
	case b := <-c:
		return b
	case <-time.After(60 * time.Second):
		t.Fatal("no answer")
		return nil
	}
}

func record(t *testing.T, tier *Tier, d cache.Digest) *uploadState {
	t.Helper()
	st, _, err := tier.getState(context.Background(), d)
	require.NoError(t, err)
	return st
}

func bucketBlob(t *testing.T, srv *versity.Server, d cache.Digest) []byte {
	t.Helper()
	obj, err := srv.Client(t).GetObject(context.Background(), srv.Bucket, "mg/blobs/sha256/"+d.Hex, minio.GetObjectOptions{})
	require.NoError(t, err)
	defer obj.Close()
	b, err := io.ReadAll(obj)
	require.NoError(t, err)
	return b
}

func incompleteUploads(t *testing.T, tier *Tier) int {
	t.Helper()
	res, err := tier.core.ListMultipartUploads(context.Background(), tier.bucket, "mg/", "", "", "", 1000)
	require.NoError(t, err)
	return len(res.Uploads)
}

// gatedTier holds a fill's Done (the holder stalls after its fill, before
// completing) or Rest (the successor stalls before completing) until the
// gate opens.
type gatedTier struct {
	*Tier
	doneGate, restGate chan struct{}
}

func (g *gatedTier) Fill(ctx context.Context, d cache.Digest, size int64, up cache.Source) (cache.TierFill, error) {
	tf, err := g.Tier.Fill(ctx, d, size, up)
	if done := tf.Done; done != nil && g.doneGate != nil {
		tf.Done = func(path string, err error) {
			<-g.doneGate
			done(path, err)
		}
	}
	if rest := tf.Rest; rest != nil && g.restGate != nil {
		tf.Rest = func(ctx context.Context) (cache.Source, error) {
			<-g.restGate
			return rest(ctx)
		}
	}
	return tf, err
}

// gate is a channel closed once by open. Tests defer open after making
// their stores: it must run before the stores close (t.Cleanup), which
// wait for the fills held at the gate.
func gate() (chan struct{}, func()) {
	c := make(chan struct{})
	var once sync.Once
	return c, func() { once.Do(func() { close(c) }) }
}

// The holder uploads each part as soon as its fill has it: the parts and
// their record are in the bucket while the fill still waits for the
// upstream; the blob appears only when it is whole and verified.
func TestHolderUploadsPartsWhileFilling(t *testing.T) {
	srv := versity.Start(t)
	data := threePartBlob(11)
	d, size := digestOf(t, data), int64(len(data))
	var ev events
	tier := newTierPart(t, srv, 2*time.Second, &ev, testPart, "a")
	s := newStore(t, tier)
	g, open := gate()
	defer open()
	up := &origin{data: data, gate: g, gateAt: 2*testPart + 64<<10}
	got := getAsync(s, d, size, up.source)

	require.Eventually(t, func() bool {
		st := record(t, tier, d)
		return st != nil && len(st.Parts) == 2
	}, 30*time.Second, 20*time.Millisecond, "two parts recorded while the fill waits")
	st := record(t, tier, d)
	parts, err := tier.listParts(context.Background(), d, st.UploadID)
	require.NoError(t, err)
	require.Len(t, parts, 2, "the recorded parts are in the upload")
	has, err := tier.Has(context.Background(), d, size)
	require.NoError(t, err)
	require.False(t, has, "a blob in the bucket before its fill ended")
	require.False(t, s.Has(d), "the fill ended")

	open()
	require.True(t, bytes.Equal(data, recv(t, got)))
	require.Eventually(t, func() bool { return ev.get("upload") == 1 }, 30*time.Second, 10*time.Millisecond)
	assert.Equal(t, 3, ev.get("upload_part"))
	assert.True(t, bytes.Equal(data, bucketBlob(t, srv, d)), "the bucket's blob")
	require.Eventually(t, func() bool {
		return slices.Equal([]string{"mg/blobs/sha256/" + d.Hex}, fillKeys(t, srv))
	}, 10*time.Second, 10*time.Millisecond, "the blob, and no record or lease left")
	assert.EqualValues(t, size, up.sent.Load())
	assert.Zero(t, incompleteUploads(t, tier))
}

// A holder that stops mid-fill (its upstream stalls; it stops renewing)
// is taken over; the successor continues the recorded upload from the
// hash state and asks the upstream only for the bytes after the recorded
// parts.
func TestTakeoverResumesTheRecordedUpload(t *testing.T) {
	srv := versity.Start(t)
	data := threePartBlob(12)
	d, size := digestOf(t, data), int64(len(data))
	const ttl = time.Second // margin for renewals on a loaded machine (-race, the whole suite)
	var evA, evB events
	a := newStore(t, newTierPart(t, srv, ttl, &evA, testPart, "a"))
	tierB := newTierPart(t, srv, ttl, &evB, testPart, "b")
	b := newStore(t, tierB)
	g, open := gate()
	defer open()
	upA := &origin{data: data, gate: g, gateAt: 2*testPart + 64<<10}
	gotA := getAsync(a, d, size, upA.source)
	require.Eventually(t, func() bool {
		st := record(t, tierB, d)
		return st != nil && len(st.Parts) == 2
	}, 30*time.Second, 20*time.Millisecond)

	upB := &origin{data: data}
	require.True(t, bytes.Equal(data, get(t, b, d, size, upB.source, 0, size)))
	assert.Equal(t, 1, evB.get("lease_takeover"))
	assert.Equal(t, 1, evB.get("upload_resumed"))
	assert.EqualValues(t, size-2*testPart, upB.sent.Load(), "the successor's upstream bytes: only those after the recorded parts")
	require.Eventually(t, func() bool { return evB.get("upload") == 1 }, 30*time.Second, 10*time.Millisecond)
	assert.Equal(t, 1, evB.get("upload_part"), "the successor uploads only the last part")
	assert.True(t, bytes.Equal(data, bucketBlob(t, srv, d)), "the bucket's blob")

	// The old holder wakes up: its clients get their bytes, it publishes
	// nothing.
	open()
	require.True(t, bytes.Equal(data, recv(t, gotA)))
	require.Eventually(t, func() bool { return evA.get("lease_lost") == 1 }, 30*time.Second, 10*time.Millisecond)
	assert.Zero(t, evA.get("upload"))
	require.Eventually(t, func() bool {
		return slices.Equal([]string{"mg/blobs/sha256/" + d.Hex}, fillKeys(t, srv))
	}, 10*time.Second, 10*time.Millisecond)
	assert.True(t, bytes.Equal(data, bucketBlob(t, srv, d)), "the bucket's blob")
	assert.Zero(t, incompleteUploads(t, tierB))
}

// A holder that had every part uploaded but stalled before completing
// (its lease taken over meanwhile) must not complete: the renewal right
// before the completion finds the successor's lease. The successor's
// upload stands, and it completes it.
func TestStaleHolderCannotComplete(t *testing.T) {
	srv := versity.Start(t)
	data := threePartBlob(13)
	d, size := digestOf(t, data), int64(len(data))
	const ttl = time.Second // margin for renewals on a loaded machine (-race, the whole suite)
	var evA, evB events
	doneA, openA := gate()
	restB, openB := gate()
	a := newStore(t, &gatedTier{Tier: newTierPart(t, srv, ttl, &evA, testPart, "a"), doneGate: doneA})
	tierB := newTierPart(t, srv, ttl, &evB, testPart, "b")
	b := newStore(t, &gatedTier{Tier: tierB, restGate: restB})
	defer openA()
	defer openB()

	upA := &origin{data: data}
	require.True(t, bytes.Equal(data, get(t, a, d, size, upA.source, 0, size)), "the holder's own clients")
	require.Eventually(t, func() bool {
		st := record(t, tierB, d)
		return st != nil && len(st.Parts) == 3
	}, 30*time.Second, 20*time.Millisecond, "every part recorded")

	// A stalls before completing; B takes over, resumes, and holds
	// before completing.
	upB := &origin{data: data}
	gotB := getAsync(b, d, size, upB.source)
	require.Eventually(t, func() bool { return evB.get("upload_resumed") == 1 }, 30*time.Second, 10*time.Millisecond)
	require.Equal(t, "b", record(t, tierB, d).Node, "the successor claimed the record")

	openA()
	require.Eventually(t, func() bool { return evA.get("upload_refused") == 1 }, 30*time.Second, 10*time.Millisecond)
	has, err := tierB.Has(context.Background(), d, size)
	require.NoError(t, err)
	require.False(t, has, "the stale holder completed the upload")
	st := record(t, tierB, d)
	require.NotNil(t, st, "the stale holder removed the successor's record")
	require.Equal(t, "b", st.Node)
	require.Equal(t, 1, incompleteUploads(t, tierB), "the stale holder aborted the successor's upload")

	openB()
	require.True(t, bytes.Equal(data, recv(t, gotB)))
	assert.Zero(t, upB.sent.Load(), "every part was in the bucket: the successor needs no upstream byte")
	require.Eventually(t, func() bool { return evB.get("upload") == 1 }, 30*time.Second, 10*time.Millisecond)
	assert.True(t, bytes.Equal(data, bucketBlob(t, srv, d)), "the successor's blob")
	require.Eventually(t, func() bool {
		return slices.Equal([]string{"mg/blobs/sha256/" + d.Hex}, fillKeys(t, srv))
	}, 10*time.Second, 10*time.Millisecond)
}

// A completion never replaces a blob already under the content id: the
// holder's upload is dropped and the published blob stays as it was.
func TestCompletionDoesNotReplaceAPublishedBlob(t *testing.T) {
	srv := versity.Start(t)
	data := threePartBlob(14)
	d, size := digestOf(t, data), int64(len(data))
	var ev events
	doneA, openA := gate()
	tier := newTierPart(t, srv, 2*time.Second, &ev, testPart, "a")
	a := newStore(t, &gatedTier{Tier: tier, doneGate: doneA})
	defer openA()
	require.True(t, bytes.Equal(data, get(t, a, d, size, (&origin{data: data}).source, 0, size)))
	require.Eventually(t, func() bool {
		st := record(t, tier, d)
		return st != nil && len(st.Parts) == 3
	}, 30*time.Second, 20*time.Millisecond)

	// Another node published the blob meanwhile (in one PUT).
	info, err := srv.Client(t).PutObject(context.Background(), srv.Bucket, "mg/blobs/sha256/"+d.Hex, bytes.NewReader(data), size, minio.PutObjectOptions{DisableMultipart: true})
	require.NoError(t, err)

	openA()
	require.Eventually(t, func() bool {
		return slices.Equal([]string{"mg/blobs/sha256/" + d.Hex}, fillKeys(t, srv))
	}, 30*time.Second, 10*time.Millisecond, "the record and the lease left")
	now, err := tier.c.StatObject(context.Background(), srv.Bucket, "mg/blobs/sha256/"+d.Hex, minio.StatObjectOptions{})
	require.NoError(t, err)
	assert.Equal(t, info.ETag, now.ETag, "the published blob was replaced")
	assert.Zero(t, incompleteUploads(t, tier), "the dropped upload was not aborted")
}

// A wrong upstream byte: the fill fails verification, the upload is
// aborted, nothing is published under the content id, no record is left.
func TestCorruptUpstreamAbortsTheUpload(t *testing.T) {
	srv := versity.Start(t)
	data := threePartBlob(15)
	d, size := digestOf(t, data), int64(len(data))
	bad := append([]byte(nil), data...)
	bad[testPart+1000] ^= 1 // in the second part
	var ev events
	tier := newTierPart(t, srv, 2*time.Second, &ev, testPart, "a")
	s := newStore(t, tier)
	got := recv(t, getAsync(s, d, size, (&origin{data: bad}).source))
	require.False(t, bytes.Equal(data, got), "a reader got a whole blob")
	require.Eventually(t, func() bool { return ev.get("upload_aborted") == 1 }, 30*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool { return len(srv.Keys(t, "mg/")) == 0 }, 10*time.Second, 20*time.Millisecond,
		"bucket holds %v", srv.Keys(t, "mg/"))
	assert.Zero(t, incompleteUploads(t, tier))
	assert.Zero(t, ev.get("upload"))
}
