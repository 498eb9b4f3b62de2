package hfmirror

import (
	"strings"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/hfhub"
)

// PinIndex reads the index; cache.Index implements it.
type PinIndex interface {
	Get(key string) ([]byte, error)
	Scan(prefix string, fn func(key string, val []byte) error) error
}

// PinnedDigests returns the blobs of the pinned repos (at the pinned
// revision's last known commit, or at every commit the index knows), for
// eviction to keep. A pinned revision the gateway has never resolved pins
// nothing yet.
func PinnedDigests(idx PinIndex, pins []hfhub.Pin) map[cache.Digest]bool {
	out := map[cache.Digest]bool{}
	for _, p := range pins {
		commit := ""
		if p.Revision != "" {
			commit = p.Revision
			if !hfhub.IsCommit(commit) {
				b, err := idx.Get(hfhub.LastRevisionKey(p.Repo, p.Revision))
				if err != nil {
					continue
				}
				commit = string(b)
			}
		}
		prefix := hfhub.FileKeyPrefix(p.Repo, commit)
		keep := func(_ string, val []byte) error {
			if meta, err := hfhub.UnmarshalMeta(val); err == nil {
				out[meta.Digest] = true
			}
			return nil
		}
		idx.Scan(prefix, keep)
		// The same records made under other principals' scopes.
		idx.Scan(authinject.ScopePrefix, func(key string, val []byte) error {
			if strings.HasPrefix(authinject.Unscoped(key), prefix) {
				return keep(key, val)
			}
			return nil
		})
	}
	return out
}
