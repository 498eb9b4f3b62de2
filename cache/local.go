package cache

import (
	"context"
	"errors"
	"fmt"
)

// OpenLocal returns blob d as this store has it: published, or being
// filled here (its readers get bytes as they land, and the final byte of
// each range only once the blob verified, exactly as for Get). It never
// starts a fill: it answers other gateways of a cluster, which stream a
// fill from the one that holds its lease, and must not make this one
// fetch anything. ErrNotFound when the blob is in neither state.
func (s *Store) OpenLocal(ctx context.Context, d Digest) (*Blob, error) {
	if d.IsZero() {
		return nil, ErrNotFound
	}
	if b, err := s.Open(d); !errors.Is(err, ErrNotFound) {
		return b, err
	}
	s.mu.Lock()
	f := s.fills[d.String()]
	if f == nil || f.orphaned || f.failed() {
		s.mu.Unlock()
		// It may have published and left the registry since Open looked.
		return s.Open(d)
	}
	s.addInterestLocked(f)
	s.mu.Unlock()
	if err := f.waitReady(ctx); err != nil {
		s.dropInterest(f)
		return nil, fmt.Errorf("cache: waiting for the fill of %s: %w", d, err)
	}
	b := s.track(&Blob{Digest: d, Size: f.size, fill: f})
	tracked := b.release
	b.release = func() {
		tracked()
		s.dropInterest(f)
	}
	return b, nil
}
