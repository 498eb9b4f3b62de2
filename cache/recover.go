package cache

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// LockDir takes an exclusive lock on dir (a lock file in it) for as long
// as the process lives or until the returned file is closed, so that two
// gateways cannot share one data directory by accident: they would delete
// each other's temp files and race on the index.
func LockDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	path := filepath.Join(dir, ".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		owner, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data directory %s is in use by another process (pid %s)", dir, strings.TrimSpace(string(owner)))
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

// MakePrivate makes dir and everything under it the owner's alone:
// directories 0700, files without group or other permissions (a
// published blob stays read-only: 0400). Cached model weights may be
// gated or private, and data directories made by earlier versions had
// 0755 directories and 0444 blobs. Only what is looser is changed, so a
// start over many blobs costs a stat each, not a chmod.
func MakePrivate(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("making %s private: %w", dir, err)
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil // the link's own mode means nothing; its target is not ours
		}
		fi, err := d.Info()
		if err != nil {
			return fmt.Errorf("making %s private: %w", dir, err)
		}
		perm := fi.Mode().Perm()
		want := perm &^ 0o077
		if d.IsDir() {
			want = 0o700
		}
		if perm != want {
			if err := os.Chmod(p, want); err != nil {
				return fmt.Errorf("making %s private: %w", dir, err)
			}
		}
		return nil
	})
}

// tempName is the name of the temp file of a fill of d. It is fixed, so
// that a fill interrupted by a crash can be resumed from the bytes it had.
func tempName(d Digest) string { return string(d.Algo) + "-" + d.Hex + ".partial" }

// digestOfTemp parses a tempName; ok is false for anything else.
func digestOfTemp(name string) (Digest, bool) {
	base, found := strings.CutSuffix(name, ".partial")
	if !found {
		return Digest{}, false
	}
	i := strings.LastIndex(base, "-")
	if i < 0 {
		return Digest{}, false
	}
	d, err := NewDigest(Algo(base[:i]), base[i+1:])
	return d, err == nil
}

// recoverTemps keeps the temp files of interrupted fills whose digest is
// known and not yet published (a later fill resumes them), and removes
// everything else there.
func (s *Store) recoverTemps() error {
	entries, err := os.ReadDir(s.tmpDir)
	if err != nil {
		return fmt.Errorf("cache: reading %s: %w", s.tmpDir, err)
	}
	for _, e := range entries {
		name := e.Name()
		if base, isRecord := strings.CutSuffix(name, ".extents"); isRecord {
			// Kept with its temp file (a record without one is harmless:
			// it is dropped when a fill finds no file to match).
			if d, ok := digestOfTemp(base); ok && !s.Has(d) {
				continue
			}
		}
		if d, ok := digestOfTemp(name); ok && e.Type().IsRegular() && !s.Has(d) {
			s.log.Info("keeping a partial fill to resume", "digest", d.String())
			continue
		}
		_ = os.Remove(filepath.Join(s.tmpDir, e.Name()))
	}
	return nil
}

// reconcile makes the index and the blob files agree after a crash (or a
// hand-edited directory): a record without its file is dropped, a file
// without its record gets one. Files in the blob tree are only ever put
// there by a rename after verification, so one without a record is a
// whole blob whose record was lost, not a partial one. It also counts the
// blobs and their bytes.
func (s *Store) reconcile() error {
	indexed := make(map[Digest]int64)
	err := s.idx.Scan(blobKeyPrefix, func(key string, val []byte) error {
		d, err := ParseDigest(strings.TrimPrefix(key, blobKeyPrefix))
		if err != nil {
			return nil
		}
		size, _, _ := parseRecord(val)
		indexed[d] = size
		return nil
	})
	if err != nil {
		return fmt.Errorf("cache: reading blob records: %w", err)
	}
	var blobs, bytes int64
	for _, algo := range []Algo{SHA256, GitSHA1, XetRange} {
		algoDir := filepath.Join(s.blobDir, string(algo))
		fans, err := os.ReadDir(algoDir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("cache: reading %s: %w", algoDir, err)
		}
		for _, fan := range fans {
			names, err := os.ReadDir(filepath.Join(algoDir, fan.Name()))
			if err != nil {
				return fmt.Errorf("cache: reading %s: %w", fan.Name(), err)
			}
			for _, e := range names {
				d, err := NewDigest(algo, e.Name())
				if err != nil || d.Hex[:2] != fan.Name() {
					continue // not ours; left alone
				}
				size, ok := indexed[d]
				if ok {
					delete(indexed, d)
				} else {
					fi, err := e.Info()
					if err != nil {
						continue
					}
					size = fi.Size()
					s.log.Info("recording a blob whose index record was lost", "digest", d.String())
					if err := s.idx.Set(blobKey(d), blobRecord(size), 0); err != nil {
						return err
					}
				}
				blobs++
				bytes += size
			}
		}
	}
	for d := range indexed {
		s.log.Info("dropping the record of a blob whose file is gone", "digest", d.String())
		if err := s.idx.Delete(blobKey(d)); err != nil {
			return err
		}
	}
	s.blobs.Store(blobs)
	s.bytes.Store(bytes)
	return nil
}

// resumeTemp opens the temp file of a fill of f.digest, keeping what an
// interrupted fill left in it and announcing those bytes to readers (they
// are hashed again before anything else lands, and verified with the rest
// at the end). Which bytes are there comes from the extents record a
// parallel fill keeps beside the file; without one, a file shorter than
// the blob is the prefix a one-stream fill wrote, and anything else is
// started over.
func (s *Store) resumeTemp(f *fill) (*os.File, error) {
	path := filepath.Join(s.tmpDir, tempName(f.digest))
	tmp, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: opening temp file: %w", ErrStorage, err)
	}
	fi, err := tmp.Stat()
	if err != nil {
		tmp.Close()
		return nil, fmt.Errorf("%w: stat temp file: %w", ErrStorage, err)
	}
	have, ok := loadExtents(extentsPath(path), f.size)
	if ok {
		// Only what the file really holds.
		var kept extents
		for _, sp := range have.spans {
			if end := min(sp[1], fi.Size()); end > sp[0] {
				kept.add(sp[0], end-sp[0])
			}
		}
		have = kept
	} else {
		n := fi.Size()
		if n >= f.size {
			n = 0 // preallocated by a fill whose record is gone: unknown
		}
		if err := tmp.Truncate(n); err != nil {
			tmp.Close()
			return nil, fmt.Errorf("%w: truncating temp file: %w", ErrStorage, err)
		}
		have.add(0, n)
	}
	if len(have.spans) > 0 {
		var n int64
		f.mu.Lock()
		for _, sp := range have.spans {
			f.have.add(sp[0], sp[1]-sp[0])
			n += sp[1] - sp[0]
		}
		f.changedLocked()
		f.mu.Unlock()
		s.log.Info("resuming a fill from the bytes an earlier run left", "digest", f.digest.String(), "bytes", n, "ranges", len(have.spans), "size", f.size)
	}
	return tmp, nil
}
