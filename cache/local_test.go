package cache

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// OpenLocal never starts a fill: a blob this store neither has nor fills
// is ErrNotFound and nothing is fetched; a fill in flight is joined (its
// bytes as they land, the final one once verified); a published blob is
// opened.
func TestOpenLocalJoinsOrOpensButNeverFills(t *testing.T) {
	s, _ := newStore(t, t.TempDir())
	data := randomBytes(21, 600<<10)
	d, size := sha256Digest(t, data), int64(len(data))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	_, err := s.OpenLocal(ctx, d)
	require.ErrorIs(t, err, ErrNotFound)
	require.Empty(t, s.Fills(), "OpenLocal started a fill")

	src := &countingSource{data: data, gate: make(chan struct{}), gateAt: fillBufSize} // one read of the fill lands
	b, _, err := s.Get(ctx, d, size, src.source)
	require.NoError(t, err)
	defer b.Close()
	local, err := s.OpenLocal(ctx, d)
	require.NoError(t, err, "the fill in flight")
	r, err := local.NewReader(ctx, 0, size)
	require.NoError(t, err)
	first := make([]byte, 200<<10)
	_, err = io.ReadFull(r, first)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data[:len(first)], first))
	close(src.gate)
	rest, err := io.ReadAll(r)
	require.NoError(t, err)
	r.Close()
	local.Close()
	require.True(t, bytes.Equal(data, append(first, rest...)))
	require.EqualValues(t, 1, src.calls.Load())

	require.True(t, s.AwaitPublished(ctx, d))
	pub, err := s.OpenLocal(ctx, d)
	require.NoError(t, err)
	require.NotNil(t, pub.File(), "published")
	pub.Close()
}
