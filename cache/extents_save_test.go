package cache

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The extents record may only claim bytes the sync before it made durable:
// a range that lands while the temp file is being synced (another
// connection's write) is not covered by that sync, so after a crash the
// record would claim bytes that never reached the disk.
func TestSavedExtentsClaimOnlyBytesWrittenBeforeTheSync(t *testing.T) {
	s := newStoreWith(t, Options{})
	tmp, err := os.Create(filepath.Join(t.TempDir(), "blob.tmp"))
	require.NoError(t, err)
	defer tmp.Close()
	f := &fill{size: 1 << 20, wake: make(chan struct{})}
	f.landed(0, 4096)

	sync := syncTemp
	t.Cleanup(func() { syncTemp = sync })
	syncTemp = func(file *os.File) error {
		err := sync(file)
		f.landed(4096, 4096) // written by another connection after the sync began
		return err
	}
	require.NoError(t, s.saveExtents(f, tmp))

	saved, ok := loadExtents(extentsPath(tmp.Name()), f.size)
	require.True(t, ok)
	assert.Equal(t, [][2]int64{{0, 4096}}, saved.spans)
}
