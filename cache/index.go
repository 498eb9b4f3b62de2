package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// ErrNotFound is returned for a key or blob the cache does not hold.
var ErrNotFound = errors.New("not found")

// Index is a small persistent key-value map on badger. The cache keeps its
// blob records in it, and callers keep their own metadata (under their own
// key prefixes) beside them, optionally with a time to live.
//
// Values are expected to be small (metadata, not content), which is why the
// options below are tuned for a low memory footprint rather than throughput.
type Index struct {
	db  *badger.DB
	dir string
	log *slog.Logger
	// writeMu lets maintenance flush the memtable (which makes badger
	// refuse writes for its duration) without a concurrent write failing:
	// writers hold it shared and wait instead.
	writeMu sync.RWMutex

	limits   IndexLimits
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// OpenIndex opens (creating if needed) the index stored in dir.
func OpenIndex(dir string, logger *slog.Logger) (*Index, error) {
	opts := badger.DefaultOptions(dir).
		// Small-memory profile: the defaults allocate ~90 MB of memtable
		// arena at open and a 256 MB block cache that only helps with
		// compression, which tiny metadata values do not need.
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(4).
		WithBlockCacheSize(0).
		WithValueLogFileSize(16 << 20).
		// Must stay below 15% of MemTableSize or Open fails.
		WithValueThreshold(64 << 10).
		WithNumCompactors(2).
		WithCompression(0).
		// badger's metrics are process-global expvar maps; we export our own.
		WithMetricsEnabled(false).
		// Every key is written by a single logical owner, so last-writer-wins
		// is the wanted semantics and conflict detection is wasted work.
		WithDetectConflicts(false).
		WithLogger(badgerLogger{logger})
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("opening index in %s: %w", dir, err)
	}
	return &Index{db: db, dir: dir, log: logger, stop: make(chan struct{})}, nil
}

// Close stops maintenance, flushes and closes the index. Call it exactly
// once.
func (x *Index) Close() error {
	x.stopOnce.Do(func() { close(x.stop) })
	x.wg.Wait()
	if err := x.db.Close(); err != nil {
		return fmt.Errorf("closing index: %w", err)
	}
	return nil
}

// Get returns the value stored under key, or ErrNotFound (also for an
// expired entry).
func (x *Index) Get(key string) ([]byte, error) {
	var val []byte
	err := x.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(key))
		if err != nil {
			return err
		}
		val, err = item.ValueCopy(nil)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("index get: %w", err)
	}
	return val, nil
}

// Set stores val under key. A positive ttl makes the entry disappear after
// that long; zero keeps it until it is deleted.
func (x *Index) Set(key string, val []byte, ttl time.Duration) error {
	e := badger.NewEntry([]byte(key), val)
	if ttl > 0 {
		e = e.WithTTL(ttl)
	}
	x.writeMu.RLock()
	defer x.writeMu.RUnlock()
	if err := x.db.Update(func(txn *badger.Txn) error { return txn.SetEntry(e) }); err != nil {
		return fmt.Errorf("index set: %w", err)
	}
	return nil
}

// Delete removes key; deleting a missing key is not an error.
func (x *Index) Delete(key string) error {
	x.writeMu.RLock()
	defer x.writeMu.RUnlock()
	if err := x.db.Update(func(txn *badger.Txn) error { return txn.Delete([]byte(key)) }); err != nil {
		return fmt.Errorf("index delete: %w", err)
	}
	return nil
}

// Scan calls fn for every live entry whose key starts with prefix, in key
// order, until fn returns an error (which Scan returns).
func (x *Index) Scan(prefix string, fn func(key string, val []byte) error) error {
	return x.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = []byte(prefix)
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			val, err := item.ValueCopy(nil)
			if err != nil {
				return fmt.Errorf("index scan: %w", err)
			}
			if err := fn(string(item.Key()), val); err != nil {
				return err
			}
		}
		return nil
	})
}

// badgerLogger routes badger's log lines to slog. badger is chatty at info
// level about routine compactions, so those go to debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) { b.log(slog.LevelError, f, a) }
func (b badgerLogger) Warningf(f string, a ...any) {
	b.log(slog.LevelWarn, f, a)
}
func (b badgerLogger) Infof(f string, a ...any)  { b.log(slog.LevelDebug, f, a) }
func (b badgerLogger) Debugf(f string, a ...any) { b.log(slog.LevelDebug, f, a) }

func (b badgerLogger) log(level slog.Level, f string, a []any) {
	if b.l == nil {
		return
	}
	b.l.Log(context.Background(), level, strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "index")
}
