// Package digest is the content id of a blob (an algorithm and its hex
// sum), a leaf shared by the cache, which stores and verifies blobs by it,
// and the hub protocol packages, which read it from upstream answers
// without needing the cache.
package digest

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"strconv"
	"strings"
)

// Algo names the hash function a Digest was computed with.
type Algo string

const (
	// SHA256 is the plain SHA-256 of the content.
	SHA256 Algo = "sha256"
	// GitSHA1 is Git's blob id: SHA-1 over "blob <size>\x00" followed by the
	// content. Small files in Git-backed repositories are identified this way,
	// so the cache can verify them without trusting the upstream.
	GitSHA1 Algo = "git-sha1"
	// XetRange names a byte range of a Xet xorb: the xorb's hash (64 hex
	// digits, xet-core's form) then the range's first and last byte, each
	// as 16 hex digits. Its bytes cannot be checked against it (a xorb's
	// hash covers all its chunks, and signed xorb URLs only serve the
	// signed ranges): they are verified at the file level by the Xet
	// service, which drops them on a mismatch.
	XetRange Algo = "xet-range"
)

// Digest is the content id of a blob. Blobs are stored, shared and verified
// by their Digest alone; no request path ever becomes a file name.
type Digest struct {
	Algo Algo
	Hex  string // lower-case hex
}

// New checks hexStr against the length algo produces and returns the
// Digest with the hex lower-cased.
func New(algo Algo, hexStr string) (Digest, error) {
	var want int
	switch algo {
	case SHA256:
		want = 64
	case GitSHA1:
		want = 40
	case XetRange:
		want = 96
	default:
		return Digest{}, fmt.Errorf("unknown digest algorithm %q", algo)
	}
	h := strings.ToLower(hexStr)
	if len(h) != want {
		return Digest{}, fmt.Errorf("%s digest must be %d hex digits, got %d", algo, want, len(h))
	}
	if _, err := hex.DecodeString(h); err != nil {
		return Digest{}, fmt.Errorf("%s digest is not hex", algo)
	}
	return Digest{Algo: algo, Hex: h}, nil
}

// Parse parses the "algo:hex" form produced by String.
func Parse(s string) (Digest, error) {
	algo, h, ok := strings.Cut(s, ":")
	if !ok {
		return Digest{}, fmt.Errorf("digest %q has no algorithm prefix", s)
	}
	return New(Algo(algo), h)
}

// NewXetRange is the digest of bytes first..last (inclusive) of the xorb
// whose hash is xorbHex.
func NewXetRange(xorbHex string, first, last int64) (Digest, error) {
	if first < 0 || last < first {
		return Digest{}, fmt.Errorf("bad xorb range %d-%d", first, last)
	}
	return New(XetRange, xorbHex+fmt.Sprintf("%016x%016x", first, last))
}

// XetRangeParts returns the xorb hash and the first and last byte of a
// XetRange digest.
func (d Digest) XetRangeParts() (xorbHex string, first, last int64, ok bool) {
	if d.Algo != XetRange || len(d.Hex) != 96 {
		return "", 0, 0, false
	}
	f, err1 := strconv.ParseInt(d.Hex[64:80], 16, 64)
	l, err2 := strconv.ParseInt(d.Hex[80:], 16, 64)
	if err1 != nil || err2 != nil || f < 0 || l < f {
		return "", 0, 0, false
	}
	return d.Hex[:64], f, l, true
}

// Verifiable reports whether the digest is a hash of the content, so that
// the bytes can be checked against it (not so for XetRange).
func (d Digest) Verifiable() bool { return d.Algo != XetRange }

// String returns "algo:hex".
func (d Digest) String() string { return string(d.Algo) + ":" + d.Hex }

// IsZero reports whether d is the zero Digest.
func (d Digest) IsZero() bool { return d.Hex == "" }

// NewHash returns a hash that, fed the size bytes of the content, sums to d
// (a plain SHA-256 for the zero Digest).
func (d Digest) NewHash(size int64) hash.Hash {
	switch d.Algo {
	case GitSHA1:
		h := sha1.New()
		h.Write([]byte("blob " + strconv.FormatInt(size, 10) + "\x00"))
		return h
	default:
		return sha256.New()
	}
}
