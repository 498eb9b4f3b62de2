package hfmirror

import (
	"sync"

	"github.com/modelgate/modelgate/hfhub"
)

// metaCacheMax bounds the decoded file metadata kept in memory. An entry is
// a few hundred bytes; 4096 of them cover every file of many repos.
const metaCacheMax = 4096

// metaCache keeps file metadata as decoded from the index, by its
// (principal-scoped) index key. A file at a commit never changes, so once
// read its metadata can be answered from memory: a ranged download
// (hf_transfer fetches a 10 GiB file as a thousand 10 MiB requests) then
// costs one index read and one JSON decode instead of one per request.
// Only commit-pinned keys go in (a branch's commit is looked up in the index
// every time, so its TTL still holds), and only what the index holds, so an
// answer from here is exactly what the index would have given. When full,
// the map is emptied and refills from the index as requests come.
type metaCache struct {
	mu sync.Mutex
	m  map[string]hfhub.FileMeta
}

func (c *metaCache) get(key string) (hfhub.FileMeta, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	meta, ok := c.m[key]
	return meta, ok
}

func (c *metaCache) put(key string, meta hfhub.FileMeta) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= metaCacheMax {
		c.m = make(map[string]hfhub.FileMeta)
	}
	c.m[key] = meta
}
