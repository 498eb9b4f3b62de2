package cache

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// PutFunc streams r into the store as the blob d of size bytes (see
// Store.Ingest). It reads exactly size bytes from r.
type PutFunc func(d Digest, size int64, r io.Reader) error

// ErrStalled ends an ingest whose upstream body delivered no byte for the
// stall timeout.
var ErrStalled = errors.New("upstream body stalled")

// Ingest runs fetch under the limits every fill has — a fill slot for the
// client named in ctx (MaxFills, MaxFillsPerClient), the MaxFillTime
// deadline, and the stall timeout on each body it reads — and lets it
// publish blobs read from one upstream answer with put. It is for content
// the fill machinery cannot drive: several blobs in one answer (the parts
// of a multi-range Xet xorb request, whose signed URL accepts no other
// range), fetched in one go rather than resumed piece by piece.
//
// put streams the bytes to a temp file, never holding them in memory,
// checks their count (and, for a digest that is a hash of the content,
// the hash) and publishes the blob as a fill does: counted against
// MaxSize, evictable, pinnable. A blob already published is read through
// and kept. fetch's ctx ends with the deadline, a stalled body, or Close:
// it must make its upstream request with it.
func (s *Store) Ingest(ctx context.Context, fetch func(ctx context.Context, put PutFunc) error) error {
	release, err := s.slots.acquire(ctx, clientFrom(ctx))
	if err != nil {
		return fmt.Errorf("waiting for a fill slot: %w", err)
	}
	defer release()
	s.filling.Add(1)
	defer s.filling.Add(-1)
	// Detached from the caller's cancellation only as far as the store
	// allows: Close ends it, and so does the fill deadline.
	ictx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(s.ctx, func() { cancel(context.Canceled) })
	defer stop()
	ictx, cancelDeadline := context.WithTimeoutCause(ictx, s.maxFillTime, ErrFillTimeout)
	defer cancelDeadline()
	put := func(d Digest, size int64, r io.Reader) error {
		g := newStallGuard(r, s.stallTimeout, func() { cancel(ErrStalled) })
		defer g.stop()
		err := s.put(ictx, d, size, g)
		if err != nil && context.Cause(ictx) != nil {
			err = fmt.Errorf("%w: %w", context.Cause(ictx), err)
		}
		return err
	}
	err = fetch(ictx, put)
	if err != nil && context.Cause(ictx) != nil && !errors.Is(err, context.Cause(ictx)) {
		err = fmt.Errorf("%w: %w", context.Cause(ictx), err)
	}
	return err
}

// put writes size bytes of r to a temp file and publishes them as d.
func (s *Store) put(ctx context.Context, d Digest, size int64, r io.Reader) (err error) {
	tmp, err := os.CreateTemp(s.tmpDir, "ingest-*.tmp")
	if err != nil {
		return fmt.Errorf("%w: creating temp file: %w", ErrStorage, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := d.NewHash(size)
	n, err := io.Copy(io.MultiWriter(storageWriter{tmp}, h), io.LimitReader(ctxReader{ctx, r}, size))
	if err != nil {
		return fmt.Errorf("ingesting %s: %w", d, err)
	}
	if n != size {
		return &SizeMismatchError{Want: size, Got: n}
	}
	if got := hex.EncodeToString(h.Sum(nil)); d.Verifiable() && got != d.Hex {
		return &DigestMismatchError{Want: d, Got: got}
	}
	if s.Has(d) {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil
	}
	if _, err := s.commit(tmp, d, size, os.Rename); err != nil {
		return fmt.Errorf("%w: %w", ErrStorage, err)
	}
	return nil
}

// storageWriter marks the temp file's write errors as ErrStorage, apart
// from the upstream body's read errors.
type storageWriter struct{ w io.Writer }

func (sw storageWriter) Write(p []byte) (int, error) {
	n, err := sw.w.Write(p)
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrStorage, err)
	}
	return n, err
}

// commit makes a complete temp file the blob d: fsync, read-only, rename
// (with rename, so a fill can do it under its own lock), directory fsync,
// then the index record — in that order, so that a crash at any point
// leaves either no blob or a complete one. It returns the blob's path.
func (s *Store) commit(tmp *os.File, d Digest, size int64, rename func(from, to string) error) (string, error) {
	if err := s.syncPublish(tmp); err != nil {
		return "", fmt.Errorf("syncing temp file: %w", err)
	}
	if err := tmp.Chmod(0o400); err != nil { // read-only, and the gateway user's alone
		return "", fmt.Errorf("making blob read-only: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("closing temp file: %w", err)
	}
	final := s.blobPath(d)
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("creating %s: %w", dir, err)
	}
	if err := rename(tmp.Name(), final); err != nil {
		return "", fmt.Errorf("publishing blob: %w", err)
	}
	if err := syncDir(dir); err != nil {
		os.Remove(final) // unrecorded, it would be served yet never counted
		return "", err
	}
	if err := s.idx.Set(blobKey(d), blobRecord(size), 0); err != nil {
		os.Remove(final)
		return "", err
	}
	s.blobs.Add(1)
	s.bytes.Add(size)
	s.usage.touch(d)
	s.requestEviction()
	return final, nil
}

// PublishedWithPrefix calls fn for every published blob of algo whose hex
// starts with hexPrefix (the stored ranges of one Xet xorb, say), from the
// index.
func (s *Store) PublishedWithPrefix(algo Algo, hexPrefix string, fn func(d Digest, size int64) error) error {
	prefix := blobKeyPrefix + string(algo) + ":" + hexPrefix
	return s.idx.Scan(prefix, func(key string, val []byte) error {
		d, err := ParseDigest(strings.TrimPrefix(key, blobKeyPrefix))
		if err != nil {
			return nil
		}
		size, _, _ := parseRecord(val)
		return fn(d, size)
	})
}
