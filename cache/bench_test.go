package cache

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// BenchmarkOpenWith100kBlobs measures start-up (index scan, blob tree
// walk, reconcile) of a cache that holds 100 000 blobs. The blobs are tiny
// files: start-up reads names and records, never contents.
//
//	go test -run x -bench OpenWith100k -benchtime 5x ./cache
func BenchmarkOpenWith100kBlobs(b *testing.B) {
	const n = 100_000
	dir := b.TempDir()
	idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(b, err)
	setup := time.Now()
	for i := range n {
		var raw [32]byte
		copy(raw[:], fmt.Sprintf("blob-%08d", i))
		d := Digest{Algo: SHA256, Hex: hex.EncodeToString(raw[:])}
		p := filepath.Join(dir, "blobs", "sha256", d.Hex[:2], d.Hex)
		{
			require.NoError(b, os.MkdirAll(filepath.Dir(p), 0o755))
		}
		require.NoError(b, os.WriteFile(p, []byte{byte(i)}, 0o444))
		require.NoError(b, idx.Set(blobKey(d), blobRecord(1), 0))
	}
	require.NoError(b, idx.Close())
	b.Logf("setup of %d blobs took %s", n, time.Since(setup).Round(time.Millisecond))

	b.ResetTimer()
	for range b.N {
		idx, err := OpenIndex(filepath.Join(dir, "index"), nil)
		require.NoError(b, err)
		s, err := Open(Options{Dir: dir, Index: idx})
		require.NoError(b, err)
		require.Equal(b, int64(n), s.Stats().Blobs)
		s.Close()
		idx.Close()
	}
}
