package cache

import (
	"context"
	"fmt"
	"os"
)

// Tier is a shared blob store behind the local disk (an object store that
// several gateways use, see package s3tier). The Store consults it before a
// fill of a known content id fetches anything, so the tier decides where the
// bytes come from: its own verified copy, or the upstream after it has
// coordinated with the other nodes that only one of them fetches it.
//
// Hits on the local disk never reach the tier; fills of content whose digest
// is not known in advance (GetUnverified) do not either.
type Tier interface {
	// Fill may block (another node is fetching the blob). It returns an
	// error only when ctx ended; a tier that cannot be reached answers
	// with the upstream source, so the fill goes on locally.
	Fill(ctx context.Context, d Digest, size int64, upstream Source) (TierFill, error)
}

// TierToucher is a Tier that wants to hear of every blob this disk
// serves, so that it can rank its own copies by use across the nodes (the
// hot tier's hits never reach Fill). Touch must not block.
type TierToucher interface {
	Touch(d Digest)
}

// TierFill is a Tier's answer for one fill.
type TierFill struct {
	// Source is where the fill gets its bytes.
	Source Source
	// Trusted says Source serves a copy that was verified before it was
	// stored (the tier's own): readers then get every byte as it lands,
	// the final one included, instead of waiting for the whole blob to
	// verify — so a Range answer does not wait for a whole copy. The fill
	// still verifies the blob before it publishes it.
	Trusted bool
	// Done, when set, is called once when the fill ended: with nil and
	// the published blob's path, or with the fill's error.
	Done func(path string, err error)

	// Watch, when set, is called once the fill's temp file exists, with a
	// view of the bytes landing in it: a tier uploads them while the fill
	// goes on, instead of reading the whole blob again after it.
	Watch func(Partial)

	// Skip > 0 says the tier already holds the blob's first Skip bytes
	// (another node fetched them before it died): the fill fetches
	// [Skip, size) from Source first, then calls Rest, and fetches what
	// it lacks of [0, Skip) from the source Rest returns. The tier
	// finishes its copy in Rest (it holds the state of the hash over the
	// first Skip bytes, so it needs nobody to read them again), and
	// answers with that copy; so the upstream serves only the bytes
	// nobody had. The fill verifies the whole blob before it publishes it,
	// as always.
	Skip int64
	Rest func(ctx context.Context) (Source, error)
}

// Partial is a read-only view of a fill's temp file while it grows.
type Partial struct{ f *fill }

// Available returns the end of the contiguous bytes on disk from off on
// (off when the byte at off is not there yet), and a channel that is
// closed at the next change: bytes landed, or the fill ended.
func (p Partial) Available(off int64) (int64, <-chan struct{}) {
	p.f.mu.Lock()
	defer p.f.mu.Unlock()
	return p.f.have.availableFrom(off), p.f.wake
}

// ReadAt reads bytes that Available reported. It opens the file for
// every call, so it reads the published blob once the temp file was
// renamed.
func (p Partial) ReadAt(b []byte, off int64) (int, error) {
	p.f.mu.Lock()
	file, err := os.Open(p.f.path)
	p.f.mu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("opening blob being filled: %w", err)
	}
	defer file.Close()
	return file.ReadAt(b, off)
}

// tierFill asks the tier (if any) where the fill of f gets its bytes.
func (s *Store) tierFill(f *fill, src Source) (TierFill, error) {
	if s.tier == nil || f.digest.IsZero() {
		return TierFill{Source: src}, nil
	}
	tf, err := s.tier.Fill(f.ctx, f.digest, f.size, src)
	if err != nil {
		return TierFill{}, fmt.Errorf("waiting for the shared tier: %w", err)
	}
	if tf.Source == nil {
		tf.Source = src
	}
	if tf.Trusted {
		f.mu.Lock()
		f.trusted = true
		f.mu.Unlock()
	}
	return tf, nil
}

// touchTier tells the tier that a published blob is served from this disk.
func (s *Store) touchTier(d Digest) {
	if t, ok := s.tier.(TierToucher); ok {
		t.Touch(d)
	}
}
