//go:build !linux

package cache

import "os"

// preallocate extends f to size (sparse) where fallocate is not available.
func preallocate(f *os.File, size int64) error { return f.Truncate(size) }
