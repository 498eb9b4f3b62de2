package xetchunk

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// xet-core's bg4 on 10 bytes: groups of 3, 3, 2, 2.
func TestSplit4IsXetCoresByteGrouping(t *testing.T) {
	in := []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
	assert.Equal(t, []byte{0, 4, 8, 1, 5, 9, 2, 6, 3, 7}, split4(in))
	for n := 0; n < 13; n++ {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i * 7)
		}
		assert.Equal(t, b, regroup4(split4(b)), "n=%d", n)
	}
}

// floats: the compressible data byte grouping is for.
func floats(n int) []byte {
	b := make([]byte, 4*n)
	for i := 0; i < n; i++ {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(0x3f800000+i%97))
	}
	return b
}

func TestEncodeDecodeEverySchemeAndRejectDamage(t *testing.T) {
	data := floats(4096)
	for _, sc := range []Scheme{None, LZ4, ByteGrouping4LZ4} {
		h, stored, err := Encode(data, sc)
		require.NoError(t, err)
		if sc != None {
			assert.Less(t, len(stored), len(data), "scheme %d compresses", sc)
		}
		raw := AppendHeader(nil, h)
		raw = append(raw, stored...)
		raw = append(raw, raw...) // two chunks
		chunks, err := DecodeAll(raw)
		require.NoError(t, err)
		require.Len(t, chunks, 2)
		assert.Equal(t, data, chunks[0])
		assert.Equal(t, data, chunks[1])

		if sc == None {
			continue
		}
		// A damaged frame, and a header promising the wrong length.
		bad := bytes.Clone(raw[:HeaderSize+h.Stored])
		bad[HeaderSize+h.Stored/2] ^= 0xff
		if got, err := DecodeAll(bad); err == nil {
			assert.NotEqual(t, data, got[0], "scheme %d: damage changes the bytes or fails", sc)
		}
		short := AppendHeader(nil, Header{Stored: h.Stored, Uncompressed: h.Uncompressed - 1, Scheme: sc})
		_, err = DecodeAll(append(short, stored...))
		assert.Error(t, err, "scheme %d: more bytes than the header says", sc)
		long := AppendHeader(nil, Header{Stored: h.Stored, Uncompressed: h.Uncompressed + 1, Scheme: sc})
		_, err = DecodeAll(append(long, stored...))
		assert.Error(t, err, "scheme %d: fewer bytes than the header says", sc)
	}
	_, err := DecodeAll([]byte{0, 1, 0, 0, 3, 1, 0, 0, 'x'})
	assert.Error(t, err, "unknown scheme")
	_, err = DecodeAll([]byte{0, 1, 0, 0})
	assert.Error(t, err, "cut header")
}
