package cache

import (
	"fmt"

	"github.com/modelgate/modelgate/digest"
)

// The content id lives in the digest leaf package (hfhub needs it without
// the cache); these names keep the cache's API as it was.
type (
	// Algo names the hash function a Digest was computed with.
	Algo = digest.Algo
	// Digest is the content id of a blob. Blobs are stored, shared and
	// verified by their Digest alone; no request path ever becomes a
	// file name.
	Digest = digest.Digest
)

const (
	// SHA256 is the plain SHA-256 of the content.
	SHA256 = digest.SHA256
	// GitSHA1 is Git's blob id.
	GitSHA1 = digest.GitSHA1
	// XetRange is a byte range of a Xet xorb (see digest.XetRange).
	XetRange = digest.XetRange
)

// NewDigest checks hexStr against the length algo produces and returns the
// Digest with the hex lower-cased.
func NewDigest(algo Algo, hexStr string) (Digest, error) { return digest.New(algo, hexStr) }

// NewXetRangeDigest is the digest of bytes first..last of the Xet xorb
// xorbHex (see digest.NewXetRange).
func NewXetRangeDigest(xorbHex string, first, last int64) (Digest, error) {
	return digest.NewXetRange(xorbHex, first, last)
}

// ParseDigest parses the "algo:hex" form produced by Digest.String.
func ParseDigest(s string) (Digest, error) { return digest.Parse(s) }

// DigestMismatchError reports content whose hash is not the promised one.
type DigestMismatchError struct {
	Want Digest
	Got  string // hex of what the bytes hashed to
}

func (e *DigestMismatchError) Error() string {
	return fmt.Sprintf("content hashes to %s:%s, want %s", e.Want.Algo, e.Got, e.Want)
}

// SizeMismatchError reports content whose length is not the promised one.
type SizeMismatchError struct {
	Want, Got int64
}

func (e *SizeMismatchError) Error() string {
	return fmt.Sprintf("content is %d bytes (or more), want %d", e.Got, e.Want)
}
