// Package xetchunk reads and writes the chunks of a xorb as xet-core lays
// them out (cas_object, chunk headers and compression schemes): each chunk
// is an 8-byte header (version 0, u24 little-endian stored length, the
// compression scheme, u24 little-endian uncompressed length) followed by
// its stored bytes.
//
// Schemes (xet-core CompressionScheme):
//   - 0 None: the bytes as they are;
//   - 1 LZ4: an LZ4 frame (lz4_flex::frame) of the bytes;
//   - 2 ByteGrouping4LZ4: the bytes split into four groups (every byte at
//     index 4i+g goes to group g; group g holds n/4 bytes plus one when
//     g < n%4), the groups concatenated in order, then an LZ4 frame of that.
//
// Chunk hashes are over the uncompressed bytes, so a gateway can only check
// a compressed chunk after decoding it.
package xetchunk

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/pierrec/lz4/v4"
)

// HeaderSize is the size of a chunk header.
const HeaderSize = 8

// MaxChunk bounds a chunk's stored and uncompressed length: the header
// holds 24 bits, and xet-core's chunks are at most 128 KiB anyway.
const MaxChunk = 1<<24 - 1

// Scheme is a chunk's compression scheme.
type Scheme byte

const (
	None             Scheme = 0
	LZ4              Scheme = 1
	ByteGrouping4LZ4 Scheme = 2
)

// Header is a decoded chunk header.
type Header struct {
	Stored, Uncompressed int
	Scheme               Scheme
}

// ParseHeader reads an 8-byte chunk header.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, errors.New("xet chunk: short header")
	}
	if b[0] != 0 {
		return Header{}, fmt.Errorf("xet chunk: header version %d", b[0])
	}
	h := Header{
		Stored:       int(b[1]) | int(b[2])<<8 | int(b[3])<<16,
		Scheme:       Scheme(b[4]),
		Uncompressed: int(b[5]) | int(b[6])<<8 | int(b[7])<<16,
	}
	if h.Scheme > ByteGrouping4LZ4 {
		return Header{}, fmt.Errorf("xet chunk: unknown compression scheme %d", h.Scheme)
	}
	if h.Scheme == None && h.Stored != h.Uncompressed {
		return Header{}, errors.New("xet chunk: uncompressed chunk with two lengths")
	}
	return h, nil
}

// AppendHeader appends h's 8 bytes to b.
func AppendHeader(b []byte, h Header) []byte {
	return append(b, 0, byte(h.Stored), byte(h.Stored>>8), byte(h.Stored>>16),
		byte(h.Scheme), byte(h.Uncompressed), byte(h.Uncompressed>>8), byte(h.Uncompressed>>16))
}

// Decode returns a chunk's uncompressed bytes from its stored bytes.
func Decode(h Header, stored []byte) ([]byte, error) {
	if len(stored) != h.Stored {
		return nil, errors.New("xet chunk: stored length differs from its header")
	}
	if h.Scheme == None {
		return stored, nil
	}
	out := make([]byte, h.Uncompressed)
	zr := lz4.NewReader(bytes.NewReader(stored))
	n, err := io.ReadFull(zr, out)
	if err != nil {
		return nil, fmt.Errorf("xet chunk: LZ4: %w (%d of %d bytes)", err, n, h.Uncompressed)
	}
	// Nothing may follow the promised length.
	var extra [1]byte
	if m, err := zr.Read(extra[:]); m > 0 || (err != nil && err != io.EOF) {
		return nil, errors.New("xet chunk: LZ4 frame longer than its header says, or damaged")
	}
	if h.Scheme == ByteGrouping4LZ4 {
		out = regroup4(out)
	}
	return out, nil
}

// Encode returns the header and stored bytes of data under scheme.
func Encode(data []byte, scheme Scheme) (Header, []byte, error) {
	if len(data) > MaxChunk {
		return Header{}, nil, errors.New("xet chunk: too long")
	}
	h := Header{Uncompressed: len(data), Scheme: scheme}
	var stored []byte
	switch scheme {
	case None:
		stored = data
	case LZ4, ByteGrouping4LZ4:
		src := data
		if scheme == ByteGrouping4LZ4 {
			src = split4(data)
		}
		var buf bytes.Buffer
		w := lz4.NewWriter(&buf)
		if _, err := w.Write(src); err != nil {
			return Header{}, nil, fmt.Errorf("xet chunk: LZ4: %w", err)
		}
		if err := w.Close(); err != nil {
			return Header{}, nil, fmt.Errorf("xet chunk: LZ4: %w", err)
		}
		stored = buf.Bytes()
	default:
		return Header{}, nil, fmt.Errorf("xet chunk: unknown compression scheme %d", scheme)
	}
	if len(stored) > MaxChunk {
		return Header{}, nil, errors.New("xet chunk: too long once compressed")
	}
	h.Stored = len(stored)
	return h, stored, nil
}

// groupLen is the length of byte group g (0..3) of n bytes.
func groupLen(n, g int) int {
	l := n / 4
	if g < n%4 {
		l++
	}
	return l
}

// split4 is xet-core's bg4_split: the bytes at index 4i+g, for g = 0..3,
// one group after the other.
func split4(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for g := 0; g < 4; g++ {
		for i := g; i < len(b); i += 4 {
			out = append(out, b[i])
		}
	}
	return out
}

// regroup4 is xet-core's bg4_regroup, the inverse of split4.
func regroup4(b []byte) []byte {
	out := make([]byte, len(b))
	pos := 0
	for g := 0; g < 4; g++ {
		l := groupLen(len(b), g)
		for i := 0; i < l; i++ {
			out[4*i+g] = b[pos+i]
		}
		pos += l
	}
	return out
}

// Reader reads the chunks of xorb bytes one at a time, so that a range of
// many MB is checked in the memory of one chunk.
type Reader struct {
	r   io.Reader
	hdr [HeaderSize]byte
	buf []byte
}

// NewReader reads chunks from r (xorb bytes that start at a chunk header).
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// Next returns the next chunk's uncompressed bytes (valid until the next
// call), or io.EOF after the last whole chunk.
func (cr *Reader) Next() ([]byte, error) {
	if _, err := io.ReadFull(cr.r, cr.hdr[:]); err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("xet chunk: header: %w", err)
	}
	h, err := ParseHeader(cr.hdr[:])
	if err != nil {
		return nil, err
	}
	if cap(cr.buf) < h.Stored {
		cr.buf = make([]byte, h.Stored)
	}
	stored := cr.buf[:h.Stored]
	if _, err := io.ReadFull(cr.r, stored); err != nil {
		return nil, fmt.Errorf("xet chunk: body: %w", err)
	}
	return Decode(h, stored)
}

// DecodeAll splits xorb bytes into their chunks' uncompressed bytes.
func DecodeAll(b []byte) ([][]byte, error) {
	cr := NewReader(bytes.NewReader(b))
	var out [][]byte
	for {
		c, err := cr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, bytes.Clone(c))
	}
}
