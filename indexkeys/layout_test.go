package indexkeys_test

import (
	"io"
	"log/slog"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/indexkeys"
)

const (
	commit = "9b33046ed39d182e3adafa9045ad6787d4bbc321"
	digest = "sha256:3fd5fbed78b696d81c7e0c5045ce9d8a9d9ebfdc75d6c8579c0f33687cded36b"
	v1API  = "hf/api\x0069d3a5bc0120fb39039ebc6a40bb08b43620f41afb5db9e9676d94c70491cf16"
)

func openIndex(t *testing.T, dir string) *cache.Index {
	t.Helper()
	idx, err := cache.OpenIndex(dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	t.Cleanup(func() { idx.Close() })
	return idx
}

func fileMeta(d string) []byte {
	return []byte(`{"commit":"` + commit + `","digest":"` + d + `","size":3}`)
}

// writeV1 fills idx as layout 1 (release f6bd027) left it.
func writeV1(t *testing.T, idx *cache.Index) {
	t.Helper()
	for k, v := range map[string][]byte{
		indexkeys.HFFileKey("model", "org/gated", commit, "w.bin"):                               fileMeta(digest),
		indexkeys.Scoped("worker1", indexkeys.HFFileKey("dataset", "org/data", commit, "d.bin")): fileMeta(digest),
		v1API:                              []byte("{}"),
		indexkeys.LastKnown(v1API):         []byte("{}"),
		indexkeys.Scoped("worker1", v1API): []byte("{}"),
		indexkeys.HFRevKey("model", "org/gated", "main"): []byte(commit),
		indexkeys.BlobKey(digest):                        []byte{1},
	} {
		require.NoError(t, idx.Set(k, v, 0))
	}
}

func keys(t *testing.T, idx *cache.Index) map[string]string {
	t.Helper()
	out := map[string]string{}
	require.NoError(t, idx.Scan("", func(k string, v []byte) error { out[k] = string(v); return nil }))
	return out
}

func TestUpgradeMigratesLayout1Once(t *testing.T) {
	idx := openIndex(t, t.TempDir())
	writeV1(t, idx)

	from, err := indexkeys.Upgrade(idx, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	assert.Equal(t, 1, from)
	got := keys(t, idx)
	assert.Equal(t, strconv.Itoa(indexkeys.LayoutVersion), got[indexkeys.LayoutVersionKey])
	// Seen records in the file record's own scope, repo as in URLs.
	assert.Contains(t, got, indexkeys.HFSeenKey(digest, "org/gated"))
	assert.Contains(t, got, indexkeys.Scoped("worker1", indexkeys.HFSeenKey(digest, "datasets/org/data")))
	assert.NotContains(t, got, indexkeys.HFSeenKey(digest, "datasets/org/data"), "a seen record leaked out of its principal's scope")
	// Layout-1 API answers dropped, everything else kept.
	for _, k := range []string{v1API, indexkeys.LastKnown(v1API), indexkeys.Scoped("worker1", v1API)} {
		assert.NotContains(t, got, k)
	}
	assert.Contains(t, got, indexkeys.HFRevKey("model", "org/gated", "main"))
	assert.Contains(t, got, indexkeys.BlobKey(digest))

	// Once: a layout-2 index is left alone (a layout-1-looking key
	// written now is not dropped).
	require.NoError(t, idx.Set(v1API, []byte("{}"), 0))
	from, err = indexkeys.Upgrade(idx, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	assert.Equal(t, indexkeys.LayoutVersion, from)
	assert.Contains(t, keys(t, idx), v1API)
}

// A crash before the version is written (the migration's writes partly or
// wholly done) is mended at the next start: the migration runs again and
// ends with the same index.
func TestUpgradeAfterACrashMidMigrationEndsTheSame(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	clean := openIndex(t, t.TempDir())
	writeV1(t, clean)
	_, err := indexkeys.Upgrade(clean, log)
	require.NoError(t, err)
	want := keys(t, clean)

	crashed := openIndex(t, t.TempDir())
	writeV1(t, crashed)
	// Half the work: one seen record written, one old answer dropped.
	require.NoError(t, crashed.Set(indexkeys.HFSeenKey(digest, "org/gated"), []byte{1}, 0))
	require.NoError(t, crashed.Delete(v1API))
	_, err = indexkeys.Upgrade(crashed, log)
	require.NoError(t, err)
	assert.Equal(t, want, keys(t, crashed))
}

func TestUpgradeStampsAFreshIndexAndRefusesANewerLayout(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	idx := openIndex(t, t.TempDir())
	from, err := indexkeys.Upgrade(idx, log)
	require.NoError(t, err)
	assert.Equal(t, 0, from)
	assert.Equal(t, map[string]string{indexkeys.LayoutVersionKey: strconv.Itoa(indexkeys.LayoutVersion)}, keys(t, idx))

	require.NoError(t, idx.Set(indexkeys.LayoutVersionKey, []byte(strconv.Itoa(indexkeys.LayoutVersion+1)), 0))
	_, err = indexkeys.Upgrade(idx, log)
	require.ErrorContains(t, err, "newer than this release")
}

// A layout-2 index (Xet ranges kept outside the index) is brought to
// layout 3 without changing an entry.
func TestUpgradeFromLayout2KeepsEveryEntry(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	idx := openIndex(t, t.TempDir())
	require.NoError(t, idx.Set(indexkeys.LayoutVersionKey, []byte("2"), 0))
	require.NoError(t, idx.Set(indexkeys.HFRevKey("model", "org/gated", "main"), []byte(commit), 0))
	require.NoError(t, idx.Set(indexkeys.HFXetKey("ab", "model", "org/gated", commit), []byte("3"), 0))
	before := keys(t, idx)
	from, err := indexkeys.Upgrade(idx, log)
	require.NoError(t, err)
	assert.Equal(t, 2, from)
	after := keys(t, idx)
	assert.Equal(t, "3", after[indexkeys.LayoutVersionKey])
	delete(before, indexkeys.LayoutVersionKey)
	delete(after, indexkeys.LayoutVersionKey)
	assert.Equal(t, before, after)
}
