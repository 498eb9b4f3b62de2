package xet

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/indexkeys"
)

// fetchXorbFor has a Xet client of repo's file fetch only the first
// range set of xorb x, as a download cut short after that xorb does.
func (g *gw) fetchXorbFor(t *testing.T, repo, fileHash, x string) {
	t.Helper()
	c := g.client("w1")
	tok, err := c.GetToken(g.srv.URL + "/api/models/" + repo + "/xet-read-token/main")
	require.NoError(t, err)
	rec, err := c.Reconstruct(tok.CasURL, tok.AccessToken, fileHash)
	require.NoError(t, err)
	require.NotEmpty(t, rec.Xorbs[x])
	f := rec.Xorbs[x][0]
	req, err := http.NewRequest(http.MethodGet, f.URL, nil)
	require.NoError(t, err)
	rg := "bytes="
	for i, r := range f.Ranges {
		if i > 0 {
			rg += ","
		}
		rg += strconv.FormatInt(r.Bytes.Start, 10) + "-" + strconv.FormatInt(r.Bytes.End, 10)
	}
	req.Header.Set("Range", rg)
	resp, err := g.srv.Client().Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
}

// TestXetReaderNeverSendsARangeReplacedWhileItRuns: a range of the
// file evicted while an assembling reader runs, and fetched again
// (corrupt) by a Xet client of that very file, is provisional: the file
// is not complete, so nothing checked the new bytes. The reader, which
// looked at the file's mark when it opened, must not send them.
func TestXetReaderNeverSendsARangeReplacedWhileItRuns(t *testing.T) {
	g := newGW(t)
	size := int64(len(g.base))
	_, err := g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	require.True(t, g.svc.Verified(g.bHash))
	xs := g.hub.XorbHashes(g.bHash)
	require.GreaterOrEqual(t, len(xs), 3)

	r, err := g.svc.OpenFile(g.bHash, size, 0)
	require.NoError(t, err)
	defer r.Close()
	head := make([]byte, 1000)
	_, err = io.ReadFull(r, head) // the first term: the base's mark is looked at, and kept
	require.NoError(t, err)

	// The second and third xorbs' ranges are evicted; a Xet client of the
	// base fetches the second again and the upstream answers it corrupt.
	for _, d := range g.rangesOf(t, xs[1:3]) {
		_, err := g.store.Remove(context.Background(), d)
		require.NoError(t, err)
	}
	g.hub.CorruptXorb(xs[1], true)
	g.fetchXorbFor(t, "org/base", g.bHash, xs[1])
	require.NotEmpty(t, g.rangesOf(t, xs[1:2]), "stored, provisional")
	require.False(t, g.svc.Verified(g.bHash), "the base is not complete: the new range was never checked")

	rest, err := io.ReadAll(r)
	require.Error(t, err, "the third xorb is gone")
	got := append(head, rest...)
	assert.True(t, bytes.Equal(g.base[:len(got)], got),
		"the reader sent %d bytes, not all the base's: bytes nobody checked were assembled", len(got))
}

// TestXetFileAssemblesFromRangesAnotherFileFetched: a range fetched
// for the fine-tune (whose download stopped there) serves the base's Xet
// download, and the base's check verified its bytes against the base's
// hash. The base is verified, every range present: it must assemble. It
// does not, because the range's origin is the unfinished fine-tune.
func TestXetFileAssemblesFromRangesAnotherFileFetched(t *testing.T) {
	g := newGW(t)
	size := int64(len(g.base))
	x := g.hub.XorbHashes(g.bHash)[0]
	require.Contains(t, g.hub.XorbHashes(g.tHash), x)
	g.fetchXorbFor(t, "org/tuned", g.tHash, x)
	before := g.hub.XorbFetches(x)

	got, err := g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	require.True(t, bytes.Equal(g.base, got))
	require.Equal(t, before, g.hub.XorbFetches(x), "the base's download used the fine-tune's range")
	require.True(t, g.svc.Verified(g.bHash), "the base's check covered every range, that one too")

	got, err = g.readFile(g.bHash, size, 0)
	require.NoError(t, err, "a verified file with every range present")
	assert.True(t, bytes.Equal(g.base, got))
}

// TestXetAssemblesAgainAfterMaintenanceReclaimedItsRecords: index
// maintenance under its budget drops the reclaimable Xet entries (the
// reconstruction, the chunk records). The file downloaded again (all
// hits: nothing fetched) is verified with every range present; its first
// assembly stops for want of chunk records, and after the check that
// broken read brings, it assembles again.
func TestXetAssemblesAgainAfterMaintenanceReclaimedItsRecords(t *testing.T) {
	g := newGW(t)
	size := int64(len(g.base))
	_, err := g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	got, err := g.readFile(g.bHash, size, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(g.base, got))

	g.idx.SetLimits(cache.IndexLimits{Classify: indexkeys.Classify, MaxBytes: 1})
	st, err := g.idx.Maintain()
	require.NoError(t, err)
	require.Positive(t, st.Dropped)
	g.restart(t)

	got, err = g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	require.True(t, bytes.Equal(g.base, got))
	require.True(t, g.svc.Verified(g.bHash), "verified, every range present")
	// The chunk records went with the reclaimed entries: the first read
	// stops at its first chunk, without a byte; the caller distrusts the
	// file after that broken read, which checks it again and records its
	// chunks again, and it assembles as before.
	got, err = g.readFile(g.bHash, size, 0)
	require.ErrorIs(t, err, ErrNotVerified)
	assert.Empty(t, got)
	g.svc.Distrust(g.bHash, false)
	got, err = g.readFile(g.bHash, size, 0)
	require.NoError(t, err, "the same file assembled before the maintenance")
	assert.True(t, bytes.Equal(g.base, got))
}

// TestXetFineTuneAssemblesWithoutTheBasesReconstruction: the base
// and the fine-tune both downloaded and verified. The base's
// reconstruction (Reclaimable, the oldest) is trimmed by maintenance and
// the gateway restarts. The fine-tune downloads again, is verified with
// every range present, and must assemble: its check covered the shared
// ranges. It does not, because trust asks for the base's mark, which
// needs the base's reconstruction.
func TestXetFineTuneAssemblesWithoutTheBasesReconstruction(t *testing.T) {
	g := newGW(t)
	size := int64(len(g.tuned))
	_, err := g.download(t, g.client("w1"), "org/base", g.bHash)
	require.NoError(t, err)
	_, err = g.download(t, g.client("w1"), "org/tuned", g.tHash)
	require.NoError(t, err)
	got, err := g.readFile(g.tHash, size, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(g.tuned, got))

	require.NoError(t, g.idx.Delete(indexkeys.XetReconKey(g.bHash))) // what trimming the oldest does
	g.restart(t)
	got, err = g.download(t, g.client("w1"), "org/tuned", g.tHash)
	require.NoError(t, err)
	require.True(t, bytes.Equal(g.tuned, got))
	require.True(t, g.svc.Verified(g.tHash), "verified, every range present")
	got, err = g.readFile(g.tHash, size, 0)
	require.NoError(t, err, "the fine-tune's own check covered every byte")
	assert.True(t, bytes.Equal(g.tuned, got))
}
