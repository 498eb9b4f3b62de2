package hfmirror

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/indexkeys"
)

// scanCountingIndex is a real index that counts prefix scans.
type scanCountingIndex struct {
	*cache.Index
	scans int
}

func (c *scanCountingIndex) Scan(prefix string, fn func(string, []byte) error) error {
	c.scans++
	return c.Index.Scan(prefix, fn)
}

func digestOf(t *testing.T, c byte) cache.Digest {
	d, err := cache.NewDigest(cache.SHA256, strings.Repeat(string(c), 64))
	require.NoError(t, err)
	return d
}

// Issue 11 part 4: the pin query reads the file records once (under
// every principal), whatever the number of pins.
func TestPinnedDigestsReadsTheIndexOncePerQuery(t *testing.T) {
	ix, err := cache.OpenIndex(t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	t.Cleanup(func() { ix.Close() })
	idx := &scanCountingIndex{Index: ix}

	c1, c2 := strings.Repeat("1", 40), strings.Repeat("2", 40)
	a := hfhub.Repo{Type: hfhub.Model, ID: "org/a"}
	b := hfhub.Repo{Type: hfhub.Dataset, ID: "org/b"}
	other := hfhub.Repo{Type: hfhub.Model, ID: "org/other"}
	put := func(key string, d cache.Digest, commit string) {
		require.NoError(t, ix.Set(key, hfhub.MarshalMeta(hfhub.FileMeta{Commit: commit, Digest: d, Size: 1}), 0))
	}
	put(hfhub.FileKey(a, c1, "x"), digestOf(t, 'a'), c1)
	put(indexkeys.Scoped("w", hfhub.FileKey(a, c2, "y")), digestOf(t, 'b'), c2)
	put(hfhub.FileKey(b, c1, "x"), digestOf(t, 'c'), c1)                        // b@main is c2: not pinned
	put(indexkeys.Scoped("w", hfhub.FileKey(b, c2, "x")), digestOf(t, 'd'), c2) // b@main
	put(hfhub.FileKey(other, c1, "x"), digestOf(t, 'e'), c1)
	require.NoError(t, ix.Set(hfhub.LastRevisionKey(b, "main"), []byte(c2), 0))

	pins := []hfhub.Pin{{Repo: a}, {Repo: b, Revision: "main"}, {Repo: b, Revision: "never-seen"}}
	for i := range 20 { // many pins of repos the index does not hold
		pins = append(pins, hfhub.Pin{Repo: hfhub.Repo{Type: hfhub.Model, ID: "org/none" + strings.Repeat("x", i)}})
	}
	got := PinnedDigests(idx, pins)
	assert.Equal(t, map[cache.Digest]bool{digestOf(t, 'a'): true, digestOf(t, 'b'): true, digestOf(t, 'd'): true}, got)
	assert.Equal(t, 2, idx.scans, "scans: the namespace once and the scoped keys once")
}
