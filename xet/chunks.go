package xet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"github.com/modelgate/modelgate/indexkeys"
	"github.com/modelgate/modelgate/xet/xethash"
)

// Verified chunk hashes. A file that passed its check (its chunks hash to
// its Xet hash, its terms' lengths match them) vouches for the hash and
// size of every chunk it used, at its place in its xorb. Xorbs are
// content-addressed, so those hashes hold for any file sharing the xorb;
// an assembly (OpenFile) checks each chunk against them before it sends
// a byte of it. So a range damaged or replaced after the check, or fetched
// for a file never checked, is caught at the chunk, whatever the marks
// say.

// chunkEntrySize is one chunk's entry in a xorb's record: its index (u32),
// its size (u32; chunks are under 16 MiB) and its hash.
const chunkEntrySize = 4 + 4 + 32

// chunkRecord is a xorb's verified chunks by index.
type chunkRecord map[int64]xethash.Node

func encodeChunkRecord(r chunkRecord) []byte {
	idx := make([]int64, 0, len(r))
	for i := range r {
		idx = append(idx, i)
	}
	sort.Slice(idx, func(a, b int) bool { return idx[a] < idx[b] })
	out := make([]byte, 0, len(idx)*chunkEntrySize)
	for _, i := range idx {
		n := r[i]
		out = binary.LittleEndian.AppendUint32(out, uint32(i))
		out = binary.LittleEndian.AppendUint32(out, uint32(n.Size))
		out = append(out, n.Hash[:]...)
	}
	return out
}

func decodeChunkRecord(b []byte) (chunkRecord, error) {
	if len(b)%chunkEntrySize != 0 {
		return nil, errors.New("xet: a chunk record of a length no whole number of entries")
	}
	r := make(chunkRecord, len(b)/chunkEntrySize)
	for ; len(b) > 0; b = b[chunkEntrySize:] {
		var n xethash.Node
		n.Size = uint64(binary.LittleEndian.Uint32(b[4:]))
		copy(n.Hash[:], b[8:chunkEntrySize])
		r[int64(binary.LittleEndian.Uint32(b))] = n
	}
	return r, nil
}

// verifiedChunks is xorb's record (nil when it has none or it is
// unreadable: nothing of it is assembled then).
func (s *Service) verifiedChunks(xorb string) chunkRecord {
	b, err := s.opts.Index.Get(indexkeys.XetChunksKey(xorb))
	if err != nil {
		return nil
	}
	r, err := decodeChunkRecord(b)
	if err != nil {
		s.opts.Logger.Warn("xet: unreadable chunk record", "xorb", xorb, "err", err)
		return nil
	}
	return r
}

// recordChunks adds chunks first, first+1, ... of xorb to its record.
func (s *Service) recordChunks(xorb string, first int64, nodes []xethash.Node) error {
	s.chunksMu.Lock()
	defer s.chunksMu.Unlock()
	r := s.verifiedChunks(xorb)
	if r == nil {
		r = chunkRecord{}
	}
	for i, n := range nodes {
		r[first+int64(i)] = n
	}
	if err := s.opts.Index.Set(indexkeys.XetChunksKey(xorb), encodeChunkRecord(r), 0); err != nil {
		return fmt.Errorf("xet: recording the verified chunks of %s: %w", xorb, err)
	}
	return nil
}
