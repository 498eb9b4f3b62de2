package civitai

import (
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/indexkeys"
)

type scanCountingIndex struct {
	*cache.Index
	scans int
}

func (c *scanCountingIndex) Scan(prefix string, fn func(string, []byte) error) error {
	c.scans++
	return c.Index.Scan(prefix, fn)
}

// Issue 11 part 4: the pin query reads the download mappings once (under
// every principal), whatever the number of pinned versions.
func TestPinnedDigestsReadsTheIndexOncePerQuery(t *testing.T) {
	ix, err := cache.OpenIndex(t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	t.Cleanup(func() { ix.Close() })
	idx := &scanCountingIndex{Index: ix}
	put := func(key string, c byte) {
		b, err := json.Marshal(fileRef{SHA256: strings.Repeat(string(c), 64), Size: 1})
		require.NoError(t, err)
		require.NoError(t, ix.Set(key, b, 0))
	}
	put(indexkeys.CivitAIDownloadKey("100", "type=Model"), 'a')
	put(indexkeys.Scoped("w", indexkeys.LastKnown(indexkeys.CivitAIDownloadKey("200", ""))), 'b')
	put(indexkeys.CivitAIDownloadKey("1000", ""), 'c') // "100" is not a prefix of it
	ids := []string{"100", "200"}
	for i := range 20 {
		ids = append(ids, strings.Repeat("9", i+5))
	}
	got := PinnedDigests(idx, ids)
	want := map[cache.Digest]bool{}
	for _, c := range "ab" {
		d, err := cache.NewDigest(cache.SHA256, strings.Repeat(string(c), 64))
		require.NoError(t, err)
		want[d] = true
	}
	assert.Equal(t, want, got)
	assert.Equal(t, 2, idx.scans)
}
