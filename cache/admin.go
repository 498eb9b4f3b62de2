package cache

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Read-only snapshots and operator actions (purge, verify) for the admin
// API. They reuse what eviction relies on: a blob that is open (being
// served) or being filled is never removed from under its readers.

// FillProgress is a snapshot of one fill in flight.
type FillProgress struct {
	Key    string // the digest ("sha256:…"), or "unknown:…" for unverified content
	Size   int64
	Landed int64 // bytes on disk so far
}

// Fills returns the fills in flight with the bytes each has landed.
func (s *Store) Fills() []FillProgress {
	s.mu.Lock()
	fills := make([]*fill, 0, len(s.fills))
	for _, f := range s.fills {
		fills = append(fills, f)
	}
	s.mu.Unlock()
	out := make([]FillProgress, 0, len(fills))
	for _, f := range fills {
		f.mu.Lock()
		var landed int64
		for _, sp := range f.have.spans {
			landed += sp[1] - sp[0]
		}
		if f.published {
			landed = f.size
		}
		out = append(out, FillProgress{Key: f.key, Size: f.size, Landed: landed})
		f.mu.Unlock()
	}
	return out
}

// BlobInfo is one published blob's record.
type BlobInfo struct {
	Digest     Digest
	Size       int64
	Published  time.Time
	LastAccess time.Time
}

// Blobs calls fn for every published blob the index records.
func (s *Store) Blobs(fn func(BlobInfo) error) error {
	return s.idx.Scan(blobKeyPrefix, func(key string, val []byte) error {
		d, err := ParseDigest(strings.TrimPrefix(key, blobKeyPrefix))
		if err != nil {
			return nil
		}
		size, published, access := parseRecord(val)
		if at, ok := s.usage.lastAccess(d); ok {
			access = at
		}
		return fn(BlobInfo{Digest: d, Size: size, Published: time.UnixMilli(published), LastAccess: time.UnixMilli(access)})
	})
}

// Blob returns the record of one published blob, or ErrNotFound.
func (s *Store) Blob(d Digest) (BlobInfo, error) {
	val, err := s.idx.Get(blobKey(d))
	if err != nil {
		return BlobInfo{}, err
	}
	size, published, access := parseRecord(val)
	if at, ok := s.usage.lastAccess(d); ok {
		access = at
	}
	return BlobInfo{Digest: d, Size: size, Published: time.UnixMilli(published), LastAccess: time.UnixMilli(access)}, nil
}

// removeWhenIdle waits until d is neither open nor being filled, then —
// under the store lock, so that no fill can start in between — calls
// remove and drops d's record. It reports whether a blob was there.
func (s *Store) removeWhenIdle(ctx context.Context, d Digest, remove func(path string) error) (bool, error) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		_, filling := s.fills[d.String()]
		if !filling && !s.usage.isOpen(d) {
			defer s.mu.Unlock()
			val, err := s.idx.Get(blobKey(d))
			if err != nil {
				// Not recorded: nothing published (a stray file is the
				// reconciler's business at the next start).
				return false, nil
			}
			size, _, _ := parseRecord(val)
			if err := remove(s.blobPath(d)); err != nil && !os.IsNotExist(err) {
				return false, fmt.Errorf("cache: removing %s: %w", d, err)
			}
			if err := s.idx.Delete(blobKey(d)); err != nil {
				return true, err
			}
			s.blobs.Add(-1)
			s.bytes.Add(-size)
			return true, nil
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-s.ctx.Done():
			return false, s.ctx.Err()
		case <-tick.C:
		}
	}
}

// Remove deletes the published blob d once nobody reads it (waiting for
// the readers it has, and for a fill in flight to end). It reports
// whether there was a blob to remove.
func (s *Store) Remove(ctx context.Context, d Digest) (bool, error) {
	return s.removeWhenIdle(ctx, d, os.Remove)
}

// Quarantine moves the blob d out of the store into dir (named by its
// digest) once nobody reads it, and drops its record: the next request
// fills it again.
func (s *Store) Quarantine(ctx context.Context, d Digest, dir string) (bool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("cache: quarantine: %w", err)
	}
	return s.removeWhenIdle(ctx, d, func(path string) error {
		return os.Rename(path, filepath.Join(dir, string(d.Algo)+"-"+d.Hex))
	})
}

// Verify re-hashes the published blob d and returns a *DigestMismatchError
// or *SizeMismatchError when its bytes no longer match, ErrNotFound when
// it is not there. A blob whose digest is not a hash of its bytes (a Xet
// range, checked per file by the Xet service) has only its size checked.
func (s *Store) Verify(ctx context.Context, d Digest) error {
	b, err := s.Open(d)
	if err != nil {
		return err
	}
	defer b.Close()
	if rec, err := s.idx.Get(blobKey(d)); err == nil {
		if size, _, _ := parseRecord(rec); size != b.Size {
			return &SizeMismatchError{Want: size, Got: b.Size}
		}
	}
	if !d.Verifiable() {
		return nil
	}
	h := d.NewHash(b.Size)
	if _, err := io.Copy(h, ctxReader{ctx, io.NewSectionReader(b.file, 0, b.Size)}); err != nil {
		return fmt.Errorf("cache: reading %s: %w", d, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Hex {
		return &DigestMismatchError{Want: d, Got: got}
	}
	return nil
}

// ExportPath returns the published blob's file path, for a reader that
// must stream it (export); open the blob with Open to keep it in use.
func (s *Store) ExportPath(d Digest) string { return s.blobPath(d) }

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// AwaitPublished waits until a fill of d in flight, if any, has ended and
// reports whether d is published. A reader gets its last byte once the
// blob verified, a moment before the publish (fsync, rename, index) ends:
// a caller that must know the blob is on disk, such as a prefetch job,
// waits here.
func (s *Store) AwaitPublished(ctx context.Context, d Digest) bool {
	s.mu.Lock()
	f := s.fills[d.String()]
	s.mu.Unlock()
	if f != nil {
		select {
		case <-f.done:
		case <-ctx.Done():
			return false
		}
	}
	return s.Has(d)
}
