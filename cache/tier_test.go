package cache

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// sourceTier answers every fill with its own source (standing for a shared
// store's copy) and records how the fill ended.
type sourceTier struct {
	src     Source
	trusted bool
	done    chan error
	path    chan string
}

func (st *sourceTier) Fill(_ context.Context, _ Digest, _ int64, _ Source) (TierFill, error) {
	return TierFill{Source: st.src, Trusted: st.trusted, Done: func(path string, err error) {
		st.path <- path
		st.done <- err
	}}, nil
}

func newTierStore(t *testing.T, tier Tier) *Store {
	dir := t.TempDir()
	idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	s, err := Open(Options{Dir: dir, Index: idx, Retries: 3, RetryBackoff: time.Millisecond, FillConnections: 1, Tier: tier})
	require.NoError(t, err)
	t.Cleanup(func() {
		s.Close()
		idx.Close()
	})
	return s
}

// A fill from a tier's verified copy hands a reader the final byte of its
// range as soon as it landed: a Range answer does not wait for the rest of
// the blob (which here never comes until the gate opens).
func TestTierTrustedSourceAnswersRangeBeforeWholeBlob(t *testing.T) {
	data := randomBytes(41, 1<<20)
	d := sha256Digest(t, data)
	bucket := &countingSource{data: data, gate: make(chan struct{}), gateAt: 512 << 10} // a multiple of the fill's 256 KiB copy buffer
	upstream := &countingSource{data: data}
	tier := &sourceTier{src: bucket.source, trusted: true, done: make(chan error, 1), path: make(chan string, 1)}
	s := newTierStore(t, tier)

	b, _, err := s.Get(context.Background(), d, int64(len(data)), upstream.source)
	require.NoError(t, err)
	defer b.Close()
	// Ends where the gate holds the source; a reader that waited for the
	// whole blob would wait until the deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := b.NewReader(ctx, 1000, 512<<10)
	require.NoError(t, err)
	got, err := io.ReadAll(r)
	r.Close()
	require.NoError(t, err)
	require.True(t, bytes.Equal(data[1000:512<<10], got), "range bytes")

	close(bucket.gate)
	got, err = readAll(t, b, 0, int64(len(data)))
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got), "whole blob")
	require.NoError(t, <-tier.done)
	require.Equal(t, s.blobPath(d), <-tier.path)
	require.True(t, s.Has(d))
	require.Zero(t, upstream.calls.Load(), "the fill came from the tier, not the upstream")
}

// An untrusted tier source is verified like the upstream: a damaged copy
// fails the fill (and the tier learns why), nothing is published.
func TestTierUntrustedBadCopyIsNotPublished(t *testing.T) {
	data := randomBytes(42, 64<<10)
	d := sha256Digest(t, data)
	bad := append([]byte(nil), data...)
	bad[5] ^= 1
	tier := &sourceTier{src: (&countingSource{data: bad}).source, done: make(chan error, 1), path: make(chan string, 1)}
	s := newTierStore(t, tier)
	b, _, err := s.Get(context.Background(), d, int64(len(data)), (&countingSource{data: data}).source)
	if err == nil {
		_, err = readAll(t, b, 0, int64(len(data)))
		b.Close()
	}
	require.Error(t, err)
	var mismatch *DigestMismatchError
	require.ErrorAs(t, <-tier.done, &mismatch)
	<-tier.path
	require.False(t, s.Has(d))
}

// skipTier says it holds the blob's first skip bytes: the fill must fetch
// the rest from the upstream first, let the tier finish (Rest, where the
// rest must be on disk already), then fetch the start from the tier.
type skipTier struct {
	t       *testing.T
	skip    int64
	size    int64
	bucket  *countingSource
	partial chan Partial
	rested  chan int64 // the contiguous bytes from skip when Rest ran
	done    chan error
}

func (st *skipTier) Fill(_ context.Context, _ Digest, _ int64, up Source) (TierFill, error) {
	return TierFill{
		Source: up,
		Skip:   st.skip,
		Watch:  func(p Partial) { st.partial <- p },
		Rest: func(context.Context) (Source, error) {
			p := <-st.partial
			got, _ := p.Available(st.skip)
			st.rested <- got
			return st.bucket.source, nil
		},
		Done: func(_ string, err error) { st.done <- err },
	}, nil
}

func TestTierSkipFetchesOnlyTheRestUpstream(t *testing.T) {
	data := randomBytes(43, 1<<20+77)
	d := sha256Digest(t, data)
	const skip = 300 << 10
	for _, tc := range []struct {
		name    string
		conns   int
		badHead bool
	}{
		{name: "one stream", conns: 1},
		{name: "pieces", conns: 4},
		{name: "bad start from the tier", conns: 4, badHead: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			head := data
			if tc.badHead {
				head = append([]byte(nil), data...)
				head[skip-1] ^= 1
			}
			upstream := &countingSource{data: data}
			tier := &skipTier{t: t, skip: skip, size: int64(len(data)), bucket: &countingSource{data: head},
				partial: make(chan Partial, 1), rested: make(chan int64, 1), done: make(chan error, 1)}
			dir := t.TempDir()
			idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
			require.NoError(t, err)
			s, err := Open(Options{Dir: dir, Index: idx, Retries: 3, RetryBackoff: time.Millisecond, FillConnections: tc.conns, PieceSize: 128 << 10, Tier: tier})
			require.NoError(t, err)
			t.Cleanup(func() {
				s.Close()
				idx.Close()
			})

			b, _, err := s.Get(context.Background(), d, int64(len(data)), upstream.source)
			var got []byte
			if err == nil {
				got, err = readAll(t, b, 0, int64(len(data)))
				b.Close()
			}
			select {
			case got := <-tier.rested:
				require.Equal(t, int64(len(data)), got, "Rest ran before the rest was on disk")
			default:
				t.Fatal("the fill never called Rest")
			}
			for _, off := range upstream.offsets {
				require.GreaterOrEqual(t, off, int64(skip), "the upstream was asked for bytes the tier holds")
			}
			require.NotEmpty(t, tier.bucket.offsets)
			for _, off := range tier.bucket.offsets {
				require.Less(t, off, int64(skip), "the tier was asked for bytes the upstream served")
			}
			if tc.badHead {
				require.Error(t, err)
				var mismatch *DigestMismatchError
				require.ErrorAs(t, <-tier.done, &mismatch)
				require.False(t, s.Has(d))
				return
			}
			require.NoError(t, err)
			require.True(t, bytes.Equal(data, got))
			require.NoError(t, <-tier.done)
			require.True(t, s.Has(d))
		})
	}
}
