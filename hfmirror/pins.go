package hfmirror

import (
	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/indexkeys"
)

// PinIndex reads the index; cache.Index implements it.
type PinIndex interface {
	Get(key string) ([]byte, error)
	Scan(prefix string, fn func(key string, val []byte) error) error
}

// PinnedDigests returns the blobs of the pinned repos (at the pinned
// revision's last known commit, or at every commit the index knows), for
// eviction to keep. A pinned revision the gateway has never resolved pins
// nothing yet. The file records are read in one pass (under every
// principal), whatever the number of pins.
func PinnedDigests(idx PinIndex, pins []hfhub.Pin) map[cache.Digest]bool {
	d, _ := PinnedContent(idx, pins)
	return d
}

// PinnedContent is PinnedDigests with, besides, the Xet file hashes of
// the pinned files (whose xorb ranges the Xet service then pins).
func PinnedContent(idx PinIndex, pins []hfhub.Pin) (map[cache.Digest]bool, map[string]bool) {
	out := map[cache.Digest]bool{}
	xet := map[string]bool{}
	// repo ("type\x00id") -> pinned commits; "" pins every commit.
	want := map[string]map[string]bool{}
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
		r := string(p.Repo.Type) + "\x00" + p.Repo.ID
		if want[r] == nil {
			want[r] = map[string]bool{}
		}
		want[r][commit] = true
	}
	if len(want) == 0 {
		return out, xet
	}
	indexkeys.ScanEverywhere(idx, indexkeys.HFFile, func(key, _ string, val []byte) error {
		typ, id, commit, _, ok := indexkeys.ParseHFFile(key)
		if !ok {
			return nil
		}
		commits := want[typ+"\x00"+id]
		if !commits[""] && !commits[commit] {
			return nil
		}
		if meta, err := hfhub.UnmarshalMeta(val); err == nil {
			out[meta.Digest] = true
			if meta.XetHash != "" {
				xet[meta.XetHash] = true
			}
		}
		return nil
	})
	return out, xet
}
