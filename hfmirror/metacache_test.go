package hfmirror

import (
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/hfhub"
)

// countingIndex is a real index that counts the reads of file metadata.
type countingIndex struct {
	*cache.Index
	fileGets atomic.Int64
}

func (c *countingIndex) Get(key string) ([]byte, error) {
	if strings.Contains(key, hfhub.FileKey(hfhub.Repo{Type: hfhub.Model, ID: "org/model"}, "", "")) {
		c.fileGets.Add(1)
	}
	return c.Index.Get(key)
}

func openIndex(t *testing.T) *countingIndex {
	t.Helper()
	idx, err := cache.OpenIndex(t.TempDir(), slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(func() { idx.Close() })
	return &countingIndex{Index: idx}
}

func testMeta(t *testing.T, commit string, size int64) hfhub.FileMeta {
	t.Helper()
	d, err := cache.NewDigest(cache.SHA256, strings.Repeat("ab", 32))
	require.NoError(t, err)
	return hfhub.FileMeta{Commit: commit, Digest: d, Size: size}
}

// TestIndexedMetaDecodesOnce: the metadata of a file at a commit is read
// from the index once, then answered from memory, unchanged, and only to
// the principal it was read for.
func TestIndexedMetaDecodesOnce(t *testing.T) {
	idx := openIndex(t)
	m := New(Options{Index: idx})
	commit := strings.Repeat("c", 40)
	route := hfhub.Route{Kind: hfhub.Resolve, Repo: hfhub.Repo{Type: hfhub.Model, ID: "org/model"}, Revision: commit, Path: "w.bin"}
	gw := authinject.Principal{}
	other := authinject.Principal{Mode: authinject.ModeClient, Scope: "worker-a"}
	want := testMeta(t, commit, 1234)
	require.NoError(t, idx.Set(gw.Key(hfhub.FileKey(route.Repo, commit, route.Path)), hfhub.MarshalMeta(want), 0))

	for range 5 {
		got, ok := m.indexedMeta(gw, route, commit)
		require.True(t, ok)
		assert.Equal(t, want, got)
	}
	assert.Equal(t, int64(1), idx.fileGets.Load(), "one index read for five lookups")

	_, ok := m.indexedMeta(other, route, commit)
	assert.False(t, ok, "another principal's key is not in the index, and not answered from memory either")

	_, ok = m.indexedMeta(gw, route, strings.Repeat("d", 40))
	assert.False(t, ok, "another commit is another key")
	_, ok = m.indexedMeta(gw, route, "main")
	assert.False(t, ok, "a branch is never looked up as a commit")
}

// TestIndexedMetaMissIsNotCached: a file not yet in the index is found once
// it is written there.
func TestIndexedMetaMissIsNotCached(t *testing.T) {
	idx := openIndex(t)
	m := New(Options{Index: idx})
	commit := strings.Repeat("e", 40)
	route := hfhub.Route{Kind: hfhub.Resolve, Repo: hfhub.Repo{Type: hfhub.Model, ID: "org/model"}, Revision: commit, Path: "x.bin"}
	_, ok := m.indexedMeta(authinject.Principal{}, route, commit)
	require.False(t, ok)
	want := testMeta(t, commit, 99)
	require.NoError(t, idx.Set(hfhub.FileKey(route.Repo, commit, route.Path), hfhub.MarshalMeta(want), time.Duration(0)))
	got, ok := m.indexedMeta(authinject.Principal{}, route, commit)
	require.True(t, ok)
	assert.Equal(t, want, got)
}

func TestMetaCacheIsBounded(t *testing.T) {
	var c metaCache
	meta := testMeta(t, strings.Repeat("f", 40), 1)
	for i := range metaCacheMax + 10 {
		c.put(fmt.Sprint("k", i), meta)
		require.LessOrEqual(t, len(c.m), metaCacheMax)
	}
	got, ok := c.get(fmt.Sprint("k", metaCacheMax+9))
	assert.True(t, ok, "the latest entry is kept")
	assert.Equal(t, meta, got)
}
