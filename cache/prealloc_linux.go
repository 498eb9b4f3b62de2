package cache

import (
	"errors"
	"os"
	"syscall"
)

// preallocate reserves size bytes for f, so that pieces written at their
// offsets neither fragment the file nor fail half-way for lack of space.
// A file system that cannot (EOPNOTSUPP) gets a sparse file instead.
func preallocate(f *os.File, size int64) error {
	err := syscall.Fallocate(int(f.Fd()), 0, 0, size)
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		return f.Truncate(size)
	}
	return err
}
