package xet

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/indexkeys"
)

// TestOpenFileRefusesARangeRefetchedUnverifiedForAnotherFile: the
// base's verified mark survives the eviction of one of its ranges; the
// same range of the shared xorb, fetched again (corrupt) for the
// fine-tune, is provisional (the fine-tune is not complete, so it was never
// checked). The base must not be assembled from it.
func TestOpenFileRefusesARangeRefetchedUnverifiedForAnotherFile(t *testing.T) {
	g := newGW(t)
	size := int64(len(g.base))
	_, err := g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	require.True(t, g.svc.Verified(g.bHash))

	// The first xorb is shared whole by both files.
	x := g.hub.XorbHashes(g.bHash)[0]
	require.Contains(t, g.hub.XorbHashes(g.tHash), x)
	for _, d := range g.rangesOf(t, []string{x}) {
		_, err := g.store.Remove(context.Background(), d) // evicted
		require.NoError(t, err)
	}
	require.False(t, g.svc.Verified(g.bHash), "a range gone: not verified")

	// A Xet client of the fine-tune fetches only that xorb's range; the
	// upstream answers it corrupt.
	g.hub.CorruptXorb(x, true)
	g.fetchXorbFor(t, "org/tuned", g.tHash, x)
	require.NotEmpty(t, g.rangesOf(t, []string{x}), "stored, provisional")
	require.False(t, g.svc.Verified(g.tHash), "the fine-tune is not complete: never checked")

	// The base's mark still stands and every range is present, but the
	// refetched range's chunks differ from the ones the base's check
	// recorded: the reader stops at the first of them, having given only
	// the base's own bytes.
	got, err := g.readFile(g.bHash, size, 0)
	require.Error(t, err, "the base assembled from a range nobody verified")
	assert.Contains(t, err.Error(), "differs from the chunk that was verified")
	assert.Equal(t, g.base[:len(got)], got, "no byte of the unverified range is given")
}

// TestOpenFileNeverAssemblesFromWrongTermLengths: the terms'
// unpacked lengths are the upstream's word (the Xet hash covers the
// chunks, not them), and they place every assembled byte. A
// reconstruction whose first term claims 1000 bytes more than its chunks
// hold and whose last 1000 less (the same total) is not the one the
// verified mark covers, and verifying it again fails on the lengths: the
// file is not assembled from it.
func TestOpenFileNeverAssemblesFromWrongTermLengths(t *testing.T) {
	g := newGW(t)
	size := int64(len(g.base))
	_, err := g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	require.True(t, g.svc.Verified(g.bHash))
	key := indexkeys.XetReconKey(g.bHash)
	b, err := g.idx.Get(key)
	require.NoError(t, err)
	var sr storedRecon
	require.NoError(t, json.Unmarshal(b, &sr))
	require.GreaterOrEqual(t, len(sr.Terms), 2)
	sr.Terms[0].UnpackedLength += 1000
	sr.Terms[len(sr.Terms)-1].UnpackedLength -= 1000
	b, err = json.Marshal(sr)
	require.NoError(t, err)
	require.NoError(t, g.idx.Set(key, b, 0))
	g.restart(t) // the reconstruction as the upstream gave it

	assert.False(t, g.svc.Verified(g.bHash), "the mark covers the terms that were checked, not these")
	_, err = g.svc.OpenFile(g.bHash, size, size-10)
	require.ErrorIs(t, err, ErrNotVerified)

	// Checked afresh, the chunks still hash to the file, but the lengths
	// do not match them: not verified, and nothing dropped.
	require.False(t, g.svc.verify(g.bHash), "the ranges are sound: nothing to drop")
	assert.False(t, g.svc.Verified(g.bHash), "wrong term lengths never verify")
	_, err = g.svc.OpenFile(g.bHash, size, 0)
	require.ErrorIs(t, err, ErrNotVerified)
}
