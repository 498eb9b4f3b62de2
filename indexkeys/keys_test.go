package indexkeys_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/indexkeys"
)

// The byte layout of existing keys is the on-disk format: these are the
// keys release f6bd027 wrote (testdata/datadir-f6bd027), and today's
// constructors must still produce them.
func TestKeysKeepTheirByteLayout(t *testing.T) {
	c := "9b33046ed39d182e3adafa9045ad6787d4bbc321"
	for got, want := range map[string]string{
		indexkeys.HFFileKey("model", "org/legacy-gated", c, "weights.bin"):     "hf/file\x00model\x00org/legacy-gated\x00" + c + "\x00weights.bin",
		indexkeys.HFRevKey("model", "org/legacy-public", "main"):               "hf/rev\x00model\x00org/legacy-public\x00main",
		indexkeys.HFLastRevKey("model", "org/legacy-public", "main"):           "hf/rev-last\x00model\x00org/legacy-public\x00main",
		indexkeys.BlobKey("sha256:ab"):                                         "blob/sha256:ab",
		indexkeys.LastKnown(indexkeys.CivitAIDownloadKey("100", "type=Model")): "civitai/download\x00100\x00type=Model\x00last",
		indexkeys.CivitAIAPIKey("/api/v1/model-versions/100", "a=1"):           "civitai/api\x00/api/v1/model-versions/100?a=1",
		indexkeys.Scoped("s1", "hf/file\x00x"):                                 "scope\x00s1\x00hf/file\x00x",
		indexkeys.Scoped("", "hf/file\x00x"):                                   "hf/file\x00x",
	} {
		assert.Equal(t, want, got)
	}
}

func TestScopingRoundTrips(t *testing.T) {
	k := indexkeys.HFFileKey("dataset", "org/d", "c", "a/b")
	s, u := indexkeys.Split(indexkeys.Scoped("w", k))
	assert.Equal(t, "w", s)
	assert.Equal(t, k, u)
	typ, id, commit, path, ok := indexkeys.ParseHFFile(u)
	require.True(t, ok)
	assert.Equal(t, []string{"dataset", "org/d", "c", "a/b"}, []string{typ, id, commit, path})
	assert.Equal(t, k, indexkeys.Unscoped(k))
}

func TestClassify(t *testing.T) {
	for key, want := range map[string]indexkeys.Class{
		indexkeys.HFLastRevKey("model", "o/r", "main"):                        indexkeys.Counted,
		indexkeys.Scoped("w", indexkeys.HFLastRevKey("model", "o/r", "main")): indexkeys.Counted,
		indexkeys.HFRevKey("model", "o/r", "main"):                            indexkeys.Reclaimable,
		indexkeys.LastKnown(indexkeys.HFAPIKey("model", "o/r", "", "d")):      indexkeys.Reclaimable,
		indexkeys.Scoped("w", indexkeys.CivitAIAPIKey("/p", "")):              indexkeys.Reclaimable,
		indexkeys.CivitAIDownloadKey("1", ""):                                 indexkeys.Reclaimable,
		indexkeys.VixFresh + "x":                                              indexkeys.Reclaimable,
		indexkeys.VixLastKnown + "x":                                          indexkeys.Reclaimable,
		indexkeys.HFFileKey("model", "o/r", "c", "f"):                         indexkeys.Kept,
		indexkeys.HFSeenKey("sha256:ab", "o/r"):                               indexkeys.Kept,
		indexkeys.BlobKey("sha256:ab"):                                        indexkeys.Kept,
		indexkeys.AdminPin + "x":                                              indexkeys.Kept,
		indexkeys.AdminAudit + "00000000000000000001\x001":                    indexkeys.Reclaimable,
		indexkeys.LayoutVersionKey:                                            indexkeys.Kept,
		indexkeys.XetReconKey("ab"):                                           indexkeys.Reclaimable,
		indexkeys.XetVerifiedKey("ab"):                                        indexkeys.Kept,
		indexkeys.XetChunksKey("ab"):                                          indexkeys.Reclaimable,
	} {
		assert.Equal(t, want, indexkeys.Classify([]byte(key)), "%q", key)
	}
}

// scanCounter is an index in memory that counts scans (the pin queries
// must not scan once per pin).
type scanCounter struct {
	keys  map[string][]byte
	scans int
}

func (s *scanCounter) Scan(prefix string, fn func(string, []byte) error) error {
	s.scans++
	for k, v := range s.keys {
		if len(k) >= len(prefix) && k[:len(prefix)] == prefix {
			if err := fn(k, v); err != nil {
				return err
			}
		}
	}
	return nil
}

func TestScanEverywhereReadsEveryScopeOfANamespace(t *testing.T) {
	idx := &scanCounter{keys: map[string][]byte{
		indexkeys.HFFileKey("model", "o/a", "c", "f"):                        nil,
		indexkeys.Scoped("w", indexkeys.HFFileKey("model", "o/b", "c", "f")): nil,
		indexkeys.Scoped("w", indexkeys.HFRevKey("model", "o/b", "main")):    nil,
		indexkeys.HFRevKey("model", "o/a", "main"):                           nil,
	}}
	got := map[string]string{}
	require.NoError(t, indexkeys.ScanEverywhere(idx, indexkeys.HFFile, func(u, raw string, _ []byte) error {
		got[raw] = u
		return nil
	}))
	assert.Equal(t, map[string]string{
		indexkeys.HFFileKey("model", "o/a", "c", "f"):                        indexkeys.HFFileKey("model", "o/a", "c", "f"),
		indexkeys.Scoped("w", indexkeys.HFFileKey("model", "o/b", "c", "f")): indexkeys.HFFileKey("model", "o/b", "c", "f"),
	}, got)
}
