// Package xethash computes the hashes of the Xet protocol exactly as
// xet-core defines them (merklehash crate): chunk hashes, xorb hashes and
// file hashes, and their hex form. The gateway uses them to verify xorb
// bytes at the file level; the fake CAS uses them to name what it serves.
//
// Definitions (xet-core merklehash/src/data_hash.rs and aggregated_hashes.rs):
//   - chunk hash: blake3 keyed with DataKey over the chunk's bytes;
//   - internal node: blake3 keyed with InternalNodeKey over one line per
//     child, "<child hex> : <child size>\n";
//   - the tree: children are grouped left to right; a group ends after the
//     child at index i (2 <= i < 9 within the group) whose hash % 4 == 0,
//     or after 9 children, or at the end; groups become the next level
//     until one node is left. The root is the xorb hash;
//   - file hash: blake3 keyed with 32 zero bytes over the root's bytes (an
//     empty file hashes to all zeros).
//
// A hash is 32 bytes that xet-core reads as four little-endian u64 words;
// its hex form prints each word as 16 hex digits, so every 8-byte group
// appears byte-reversed compared with plain hex.
package xethash

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"

	"lukechampine.com/blake3"
)

// Hash is a 32-byte Xet hash in xet-core's byte order.
type Hash [32]byte

// DataKey keys chunk hashes.
var DataKey = [32]byte{
	102, 151, 245, 119, 91, 149, 80, 222, 49, 53, 203, 172, 165, 151, 24, 28,
	157, 228, 33, 16, 155, 235, 43, 88, 180, 208, 176, 75, 147, 173, 242, 41,
}

// InternalNodeKey keys the merkle tree's internal nodes.
var InternalNodeKey = [32]byte{
	1, 126, 197, 199, 165, 71, 41, 150, 253, 148, 102, 102, 180, 138, 2, 230,
	93, 221, 83, 111, 55, 199, 109, 210, 248, 99, 82, 230, 74, 83, 113, 63,
}

// meanBranching is xet-core's AGGREGATED_HASHES_MEAN_TREE_BRANCHING_FACTOR.
const meanBranching = 4

func keyed(key [32]byte, data []byte) Hash {
	h := blake3.New(32, key[:])
	h.Write(data)
	var out Hash
	copy(out[:], h.Sum(nil))
	return out
}

// Chunk is the hash of one chunk's (uncompressed) bytes.
func Chunk(data []byte) Hash { return keyed(DataKey, data) }

// String is xet-core's hex form (four little-endian u64 words).
func (h Hash) String() string {
	var b [64]byte
	for w := 0; w < 4; w++ {
		v := binary.LittleEndian.Uint64(h[w*8:])
		s := fmt.Sprintf("%016x", v)
		copy(b[w*16:], s)
	}
	return string(b[:])
}

// Parse reads xet-core's hex form.
func Parse(s string) (Hash, error) {
	var h Hash
	if len(s) != 64 {
		return h, fmt.Errorf("xet hash must be 64 hex digits, got %d", len(s))
	}
	if _, err := hex.DecodeString(s); err != nil {
		return h, fmt.Errorf("xet hash is not hex")
	}
	for w := 0; w < 4; w++ {
		v, err := strconv.ParseUint(s[w*16:(w+1)*16], 16, 64)
		if err != nil {
			return h, fmt.Errorf("xet hash is not hex")
		}
		binary.LittleEndian.PutUint64(h[w*8:], v)
	}
	return h, nil
}

// Node is a child of the merkle tree: a hash and the bytes it covers.
type Node struct {
	Hash Hash
	Size uint64
}

func (h Hash) mod(n uint64) uint64 { return binary.LittleEndian.Uint64(h[24:]) % n }

func nextCut(nodes []Node) int {
	if len(nodes) <= 2 {
		return len(nodes)
	}
	end := min(2*meanBranching+1, len(nodes))
	for i := 2; i < end; i++ {
		if nodes[i].Hash.mod(meanBranching) == 0 {
			return i + 1
		}
	}
	return end
}

func sequence(nodes []Node) Node {
	var buf []byte
	var total uint64
	for _, n := range nodes {
		buf = append(buf, n.Hash.String()...)
		buf = append(buf, " : "...)
		buf = strconv.AppendUint(buf, n.Size, 10)
		buf = append(buf, '\n')
		total += n.Size
	}
	return Node{Hash: keyed(InternalNodeKey, buf), Size: total}
}

// Root is the merkle root over nodes in order (all zeros for none): the
// xorb hash when nodes are a xorb's chunks.
func Root(nodes []Node) Hash {
	if len(nodes) == 0 {
		return Hash{}
	}
	level := append([]Node(nil), nodes...)
	for len(level) > 1 {
		var next []Node
		for i := 0; i < len(level); {
			cut := i + nextCut(level[i:])
			next = append(next, sequence(level[i:cut]))
			i = cut
		}
		level = next
	}
	return level[0].Hash
}

// File is the Xet file hash of a file made of the chunks nodes, in order.
func File(nodes []Node) Hash {
	if len(nodes) == 0 {
		return Hash{}
	}
	root := Root(nodes)
	return keyed([32]byte{}, root[:])
}
