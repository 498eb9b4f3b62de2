package cache

import (
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/modelgate/modelgate/indexkeys"
)

// Index maintenance: the index holds two kinds of data. Some of it the
// gateway needs to work (blob records, file metadata at a commit); the
// rest are copies of upstream answers kept for speed or for when the
// upstream is down, which anyone on the LAN can make the gateway write.
// Left alone, those grow without bound, and badger never gives the space
// of deleted or expired values back by itself. Maintain bounds them and
// reclaims the space.

// KeyClass says what maintenance may do with an index entry; the classes
// are indexkeys', which owns the key layout (and indexkeys.Classify is
// the gateway's Classify).
type KeyClass = indexkeys.Class

const (
	// Kept entries are never removed by maintenance.
	Kept = indexkeys.Kept
	// Reclaimable entries are copies of upstream answers: when together
	// they exceed IndexLimits.MaxBytes, the least recently written go.
	Reclaimable = indexkeys.Reclaimable
	// Counted entries are kept however old they are (offline mode relies
	// on them), but only the IndexLimits.MaxCounted most recently written.
	Counted = indexkeys.Counted
)

// IndexLimits bounds what the index keeps.
type IndexLimits struct {
	// Classify says which class a key is in; nil keeps everything.
	Classify func(key []byte) KeyClass
	// MaxBytes bounds the total size of the Reclaimable entries; 0 means
	// no bound.
	MaxBytes int64
	// MaxCounted bounds the number of Counted entries; 0 means no bound.
	MaxCounted int
}

// MaintainStats says what one maintenance run did.
type MaintainStats struct {
	Dropped       int   // entries removed to meet the limits
	DroppedBytes  int64 // their estimated size
	GCRewrites    int   // value-log files rewritten
	DiskBytesThen int64 // index size on disk after the run
}

// gcFlushKey is written and dropped to make badger flush its memtable.
const gcFlushKey = "\xffmaintenance-flush"

// StartMaintenance runs Maintain with limits now and then every interval,
// until Close.
func (x *Index) StartMaintenance(limits IndexLimits, every time.Duration) {
	x.limits = limits
	x.wg.Add(1)
	go func() {
		defer x.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if st, err := x.Maintain(); err != nil {
				x.logWarn("index maintenance failed", "err", err)
			} else if st.Dropped > 0 || st.GCRewrites > 0 {
				x.logInfo("index maintenance", "dropped", st.Dropped, "dropped_bytes", st.DroppedBytes,
					"vlog_rewrites", st.GCRewrites, "disk_bytes", st.DiskBytesThen)
			}
			select {
			case <-x.stop:
				return
			case <-t.C:
			}
		}
	}()
}

// SetLimits sets the limits Maintain applies (StartMaintenance does too).
func (x *Index) SetLimits(limits IndexLimits) { x.limits = limits }

// Maintain drops the entries beyond the limits, then makes badger give
// back the space of deleted and expired values: its value-log GC only
// rewrites a file whose discarded bytes compaction has counted, and
// compaction only sees what was flushed from the memtable, which a
// lightly written index may not do for days. So the memtable is flushed
// first (badger has no direct call for it; dropping a prefix flushes).
func (x *Index) Maintain() (MaintainStats, error) {
	var st MaintainStats
	if x.limits.Classify != nil {
		if err := x.trim(&st); err != nil {
			return st, err
		}
	}
	if err := x.flushMemtable(); err != nil {
		return st, err
	}
	for st.GCRewrites < 1000 {
		err := x.db.RunValueLogGC(0.5)
		if errors.Is(err, badger.ErrNoRewrite) || errors.Is(err, badger.ErrRejected) {
			break
		}
		if err != nil {
			return st, err
		}
		st.GCRewrites++
	}
	st.DiskBytesThen = x.DiskSize()
	return st, nil
}

// flushMemtable forces the memtable to disk. badger refuses writes while
// it does, so the gateway's writers are held back meanwhile.
func (x *Index) flushMemtable() error {
	x.writeMu.Lock()
	defer x.writeMu.Unlock()
	if err := x.db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(gcFlushKey), nil) }); err != nil {
		return err
	}
	return x.db.DropPrefix([]byte(gcFlushKey))
}

type aged struct {
	version uint64
	size    int64
}

// trim deletes the oldest Reclaimable entries beyond MaxBytes and the
// oldest Counted entries beyond MaxCounted. badger's version of an entry
// grows with every write, so it orders entries by age without a clock.
func (x *Index) trim(st *MaintainStats) error {
	var reclaim, counted []aged
	var reclaimBytes int64
	err := x.iterateKeys(func(item *badger.Item) {
		switch x.limits.Classify(item.Key()) {
		case Reclaimable:
			a := aged{item.Version(), item.EstimatedSize()}
			reclaim = append(reclaim, a)
			reclaimBytes += a.size
		case Counted:
			counted = append(counted, aged{version: item.Version()})
		}
	})
	if err != nil {
		return err
	}
	byAge := func(a, b aged) int { return int(min(max(int64(a.version)-int64(b.version), -1), 1)) }
	// Everything at or below the cutoff version goes (0: nothing).
	var reclaimCut, countCut uint64
	if x.limits.MaxBytes > 0 && reclaimBytes > x.limits.MaxBytes {
		slices.SortFunc(reclaim, byAge)
		for _, a := range reclaim {
			if reclaimBytes <= x.limits.MaxBytes {
				break
			}
			reclaimBytes -= a.size
			reclaimCut = a.version
		}
	}
	if x.limits.MaxCounted > 0 && len(counted) > x.limits.MaxCounted {
		slices.SortFunc(counted, byAge)
		countCut = counted[len(counted)-x.limits.MaxCounted-1].version
	}
	if reclaimCut == 0 && countCut == 0 {
		return nil
	}
	var doomed [][]byte
	err = x.iterateKeys(func(item *badger.Item) {
		v := item.Version()
		switch x.limits.Classify(item.Key()) {
		case Reclaimable:
			if v > reclaimCut {
				return
			}
		case Counted:
			if v > countCut {
				return
			}
		default:
			return
		}
		doomed = append(doomed, item.KeyCopy(nil))
		st.Dropped++
		st.DroppedBytes += item.EstimatedSize()
	})
	if err != nil {
		return err
	}
	x.writeMu.RLock()
	defer x.writeMu.RUnlock()
	wb := x.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range doomed {
		if err := wb.Delete(k); err != nil {
			return err
		}
	}
	return wb.Flush()
}

// iterateKeys calls fn for every live entry without reading values.
func (x *Index) iterateKeys(fn func(*badger.Item)) error {
	return x.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			fn(it.Item())
		}
		return nil
	})
}

// DiskSize returns the bytes the index occupies on disk (allocated
// blocks: badger's files are preallocated and sparse, so their length
// would overstate it).
func (x *Index) DiskSize() int64 {
	var n int64
	filepath.WalkDir(x.dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += sys.Blocks * 512
			} else {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func (x *Index) logWarn(msg string, args ...any) {
	if x.log != nil {
		x.log.Warn(msg, append(args, "component", "index")...)
	}
}

func (x *Index) logInfo(msg string, args ...any) {
	if x.log != nil {
		x.log.Info(msg, append(args, "component", "index")...)
	}
}
