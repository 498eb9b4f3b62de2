package xet

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/indexkeys"
	"github.com/modelgate/modelgate/internal/fakehub"
	"github.com/modelgate/modelgate/xet/xetchunk"
)

// readFile reads the file assembled from off on.
func (g *gw) readFile(hash string, size, off int64) ([]byte, error) {
	r, err := g.svc.OpenFile(hash, size, off)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// repeatingData is compressible text, 21 chunks and a bit, whose chunks
// 12-14 repeat chunks 2-4: the CAS stores them once, and the file's terms
// name chunks inside ranges of the reconstruction that start earlier (a
// term starting at chunk 2 of a range of chunks 0-8, a term following
// another in one merged range).
func repeatingData() []byte {
	const cs = fakehub.XetChunkSize
	var b bytes.Buffer
	for i := 0; b.Len() < 21*cs+300; i++ {
		fmt.Fprintf(&b, "row %07d: weight %d.%06d, bias %d\n", i, i%7, (i*7919)%1000000, i%13)
	}
	data := b.Bytes()[:21*cs+300]
	copy(data[12*cs:15*cs], bytes.Clone(data[2*cs:5*cs]))
	return data
}

// TestXetVerifiedFileAssemblesFromAnyOffset: once a file's ranges are
// stored and verified, its bytes are assembled from them from any offset
// (chunk and term boundaries, inside a chunk, the last byte, the end),
// whatever the chunks' compression; for a fine-tune whose terms name
// ranges stored for its base (wider ranges, read from inside); and for
// terms that start inside a range of the reconstruction.
func TestXetVerifiedFileAssemblesFromAnyOffset(t *testing.T) {
	for _, sc := range []xetchunk.Scheme{xetchunk.None, xetchunk.LZ4, xetchunk.ByteGrouping4LZ4} {
		t.Run(fmt.Sprint("scheme", sc), func(t *testing.T) {
			g := newGWWith(t, gwOptions{prepare: func(h *fakehub.Hub) { h.SetXetCompression(sc) }, base: repeatingData()})
			for _, f := range []struct {
				repo, hash string
				data       []byte
			}{{"org/base", g.bHash, g.base}, {"org/tuned", g.tHash, g.tuned}} {
				size := int64(len(f.data))
				_, err := g.readFile(f.hash, size, 0)
				require.ErrorIs(t, err, ErrNotVerified, "nothing stored yet")
				got, err := g.download(t, g.client("w1"), f.repo, f.hash)
				require.NoError(t, err)
				require.True(t, bytes.Equal(f.data, got))
				require.True(t, g.svc.Verified(f.hash))

				const cs = fakehub.XetChunkSize
				xorb := int64(fakehub.XetXorbChunks * cs)
				for _, off := range []int64{0, 1, cs - 1, cs, cs + 5, xorb - 1, xorb, xorb + cs + 3, 10*cs + 1,
					12 * cs, 12*cs + 7, 14*cs - 1, 15 * cs, 15*cs + 9, size - 1, size} {
					got, err := g.readFile(f.hash, size, off)
					require.NoError(t, err, "offset %d", off)
					require.True(t, bytes.Equal(f.data[off:], got), "%s from offset %d", f.repo, off)
				}
				_, err = g.svc.OpenFile(f.hash, size+1, 0)
				assert.Error(t, err, "a size the reconstruction does not add up to")
			}
		})
	}
}

// TestXetProvisionalRangesAreNeverAssembled: ranges that failed the file's
// verification, and a file one of whose ranges is gone, are not assembled;
// a range removed while a reader runs ends it with an error, never with a
// short file; Distrust after that does not keep the file out once its
// ranges are back and verified.
func TestXetProvisionalRangesAreNeverAssembled(t *testing.T) {
	g := newGW(t)
	size := int64(len(g.base))
	x := g.hub.XorbHashes(g.bHash)[1]
	g.hub.CorruptXorb(x, true)
	_, _ = g.download(t, g.client("w1"), "org/base", g.bHash)
	_, err := g.readFile(g.bHash, size, 0)
	require.ErrorIs(t, err, ErrNotVerified, "ranges that failed verification")

	g.hub.CorruptXorb(x, false)
	_, err = g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	got, err := g.readFile(g.bHash, size, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(g.base, got))

	// A reader open while a later range goes away stops with an error.
	r, err := g.svc.OpenFile(g.bHash, size, 0)
	require.NoError(t, err)
	_, err = io.ReadFull(r, make([]byte, 1000))
	require.NoError(t, err)
	last := g.hub.XorbHashes(g.bHash)
	ranges := g.rangesOf(t, last[len(last)-1:])
	require.NotEmpty(t, ranges)
	for _, d := range ranges {
		_, err := g.store.Remove(context.Background(), d)
		require.NoError(t, err)
	}
	rest, err := io.ReadAll(r)
	r.Close()
	require.Error(t, err, "a range gone mid-read")
	assert.Less(t, int64(len(rest))+1000, size)
	assert.False(t, g.svc.Verified(g.bHash))
	_, err = g.readFile(g.bHash, size, 0)
	require.ErrorIs(t, err, ErrNotVerified, "a range missing")

	// The caller distrusts the file after that broken read; the range was
	// merely gone, so once it is back and checked the file assembles again.
	g.svc.Distrust(g.bHash, false)
	_, err = g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	require.True(t, g.svc.Verified(g.bHash))
	got, err = g.readFile(g.bHash, size, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(g.base, got))
}

// corruptRange flips a byte of a stored range's chunk data on disk (the
// first chunk's, past its header), behind the store's back.
func (g *gw) corruptRange(t *testing.T, d cache.Digest) {
	t.Helper()
	b, err := g.store.Open(d)
	require.NoError(t, err)
	path := b.File().Name()
	b.Close()
	require.NoError(t, os.Chmod(path, 0o600))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	var one [1]byte
	_, err = f.ReadAt(one[:], xetchunk.HeaderSize+100)
	require.NoError(t, err)
	one[0] ^= 0xff
	_, err = f.WriteAt(one[:], xetchunk.HeaderSize+100)
	require.NoError(t, err)
}

// TestXetDistrustDropsRangesDamagedAfterVerification: a range damaged on
// disk after the file verified is caught at its first damaged chunk, whose
// bytes the reader never gives (each chunk is held against the hash the
// check recorded); Distrust after that broken read checks the file again,
// drops the damaged range, and once a Xet client fetched it again the
// file assembles right. After a digest mismatch (the Xet hash and the
// sha256 disagree), a file that passes the check again is never
// assembled.
func TestXetDistrustDropsRangesDamagedAfterVerification(t *testing.T) {
	g := newGW(t)
	size := int64(len(g.base))
	_, err := g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	ranges := g.rangesOf(t, g.hub.XorbHashes(g.bHash)[:1])
	require.Len(t, ranges, 1)
	g.corruptRange(t, ranges[0])
	r, err := g.svc.OpenFile(g.bHash, size, 0)
	require.NoError(t, err, "the verified mark stands until someone distrusts it")
	got, err := io.ReadAll(r)
	r.Close()
	require.Error(t, err, "the damaged chunk is refused")
	assert.Less(t, len(got), 101, "not a byte of the damaged chunk (its byte 100) is given")
	assert.Equal(t, g.base[:len(got)], got)

	g.svc.Distrust(g.bHash, false)
	assert.False(t, g.svc.Verified(g.bHash))
	assert.False(t, g.store.Has(ranges[0]), "the damaged range was dropped")
	_, err = g.readFile(g.bHash, size, 0)
	require.ErrorIs(t, err, ErrNotVerified)

	fetches := g.hub.XorbFetches(g.hub.XorbHashes(g.bHash)[0])
	got, err = g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	require.True(t, bytes.Equal(g.base, got))
	assert.Greater(t, g.hub.XorbFetches(g.hub.XorbHashes(g.bHash)[0]), fetches, "fetched again")
	got, err = g.readFile(g.bHash, size, 0)
	require.NoError(t, err, "verified again: assembled again")
	require.True(t, bytes.Equal(g.base, got))

	// A broken read whose ranges all pass again: assembled again.
	g.svc.Distrust(g.bHash, false)
	assert.True(t, g.svc.Verified(g.bHash))
	got, err = g.readFile(g.bHash, size, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(g.base, got))

	// A digest mismatch whose ranges all pass again: kept out.
	g.svc.Distrust(g.bHash, true)
	assert.True(t, g.svc.Verified(g.bHash))
	_, err = g.readFile(g.bHash, size, 0)
	require.ErrorIs(t, err, ErrNotVerified)
}

// heldMarkIndex holds the first read of one verified mark, once armed,
// until released: a check of that file in flight, past its look at the
// mark.
type heldMarkIndex struct {
	Index
	key      string
	armed    atomic.Bool
	in, free chan struct{}
	deleted  chan struct{}
}

func (h *heldMarkIndex) Get(key string) ([]byte, error) {
	v, err := h.Index.Get(key)
	if key == h.key && h.armed.CompareAndSwap(true, false) {
		close(h.in)
		<-h.free
	}
	return v, err
}

func (h *heldMarkIndex) Delete(key string) error {
	err := h.Index.Delete(key)
	if key == h.key {
		select {
		case <-h.deleted:
		default:
			close(h.deleted)
		}
	}
	return err
}

// TestXetDistrustChecksAgainThoughACheckIsInFlight: Distrust deletes the
// mark and checks the file; a check of the same file already in flight,
// which saw the mark before the deletion and so passes without looking at
// the ranges, must not stand for Distrust's own. The damaged range is
// dropped.
func TestXetDistrustChecksAgainThoughACheckIsInFlight(t *testing.T) {
	g := newGW(t)
	_, err := g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	ranges := g.rangesOf(t, g.hub.XorbHashes(g.bHash)[:1])
	require.Len(t, ranges, 1)
	g.corruptRange(t, ranges[0])

	held := &heldMarkIndex{Index: g.opts.Index, key: indexkeys.XetVerifiedKey(g.bHash),
		in: make(chan struct{}), free: make(chan struct{}), deleted: make(chan struct{})}
	g.opts.Index = held
	g.restart(t)
	held.armed.Store(true)
	inFlight := make(chan bool, 1)
	go func() { inFlight <- g.svc.verify(g.bHash) }()
	<-held.in // the first check holds the mark it read
	distrusted := make(chan struct{})
	go func() {
		g.svc.Distrust(g.bHash, false)
		close(distrusted)
	}()
	<-held.deleted
	time.Sleep(100 * time.Millisecond) // Distrust on to its check
	close(held.free)
	assert.False(t, <-inFlight, "the check in flight saw the mark: it passes")
	select {
	case <-distrusted:
	case <-time.After(30 * time.Second):
		t.Fatal("Distrust did not return")
	}
	assert.False(t, g.store.Has(ranges[0]), "Distrust's own check dropped the damaged range")
	assert.False(t, g.svc.Verified(g.bHash))
}
