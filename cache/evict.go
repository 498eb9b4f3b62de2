package cache

import (
	"encoding/binary"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Eviction: when the published blobs exceed Options.MaxSize, or the disk's
// free space drops below Options.MinFree, the least recently used blobs are
// deleted — never one that is open (being served) or being filled, never
// a pinned one. Access times are kept in memory and written to the blob
// records in batches (every accessFlush), not once per hit.

// usage tracks open handles and recent accesses of published blobs.
type usage struct {
	mu      sync.Mutex
	open    map[Digest]int
	touched map[Digest]int64 // unix ms, not yet written to the index
}

func (u *usage) acquire(d Digest) {
	u.mu.Lock()
	u.open[d]++
	u.touched[d] = time.Now().UnixMilli()
	u.mu.Unlock()
}

func (u *usage) release(d Digest) {
	u.mu.Lock()
	if u.open[d]--; u.open[d] <= 0 {
		delete(u.open, d)
	}
	u.mu.Unlock()
}

func (u *usage) touch(d Digest) {
	u.mu.Lock()
	u.touched[d] = time.Now().UnixMilli()
	u.mu.Unlock()
}

func (u *usage) isOpen(d Digest) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.open[d] > 0
}

// take returns and forgets the accesses not yet written.
func (u *usage) take() map[Digest]int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	t := u.touched
	u.touched = make(map[Digest]int64)
	return t
}

// lastAccess returns the unwritten access time of d, if any.
func (u *usage) lastAccess(d Digest) (int64, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	t, ok := u.touched[d]
	return t, ok
}

// record fields: uvarint size, uvarint published (unix ms), uvarint last
// access (unix ms; absent in records written before access times).
func parseRecord(val []byte) (size, published, access int64) {
	s, n := binary.Uvarint(val)
	p, m := binary.Uvarint(val[n:])
	a, _ := binary.Uvarint(val[n+m:])
	if a == 0 {
		a = p
	}
	return int64(s), int64(p), int64(a)
}

func makeRecord(size, published, access int64) []byte {
	b := binary.AppendUvarint(nil, uint64(size))
	b = binary.AppendUvarint(b, uint64(published))
	return binary.AppendUvarint(b, uint64(access))
}

// flushAccess writes the access times gathered since the last flush.
func (s *Store) flushAccess() {
	for d, at := range s.usage.take() {
		val, err := s.idx.Get(blobKey(d))
		if err != nil {
			continue // evicted or never published meanwhile
		}
		size, published, _ := parseRecord(val)
		if err := s.idx.Set(blobKey(d), makeRecord(size, published, at), 0); err != nil {
			s.log.Warn("recording blob access times", "err", err)
			return
		}
	}
}

// DiskFree returns the bytes available to the gateway on the data
// directory's file system.
func (s *Store) DiskFree() (int64, error) {
	if s.diskFree != nil {
		return s.diskFree()
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.blobDir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// overBy returns how many bytes must go to satisfy MaxSize (blobs and the
// index together) and MinFree.
func (s *Store) overBy() int64 {
	var need int64
	if s.maxSize > 0 {
		need = s.bytes.Load() - s.maxSize
		if s.indexSize != nil {
			need += s.indexSize()
		}
	}
	if s.minFree > 0 {
		if free, err := s.DiskFree(); err == nil {
			need = max(need, s.minFree-free)
		}
	}
	return need
}

// requestEviction asks the evictor to run soon, without blocking.
func (s *Store) requestEviction() {
	select {
	case s.evictNow <- struct{}{}:
	default:
	}
}

// requestEvictionSoon asks for an eviction run at most once a second:
// releases of served blobs call it while a run is blocked, and a run
// scans every blob record.
func (s *Store) requestEvictionSoon() {
	now := time.Now().UnixMilli()
	last := s.lastEvictAsk.Load()
	if now-last < 1000 || !s.lastEvictAsk.CompareAndSwap(last, now) {
		return
	}
	s.requestEviction()
}

// evictLoop runs eviction after publishes, on a timer, and flushes access
// times, until the store closes.
func (s *Store) evictLoop() {
	defer s.wg.Done()
	tick := time.NewTicker(s.accessFlush)
	defer tick.Stop()
	for {
		select {
		case <-s.ctx.Done():
			s.flushAccess()
			return
		case <-tick.C:
			s.flushAccess()
			s.evict()
		case <-s.evictNow:
			s.evict()
		}
	}
}

type candidate struct {
	d      Digest
	size   int64
	access int64
}

// evict deletes least recently used blobs until the limits hold again.
func (s *Store) evict() {
	need := s.overBy()
	if need <= 0 {
		s.evictBlocked.Store(false)
		return
	}
	var cands []candidate
	err := s.idx.Scan(blobKeyPrefix, func(key string, val []byte) error {
		d, err := ParseDigest(strings.TrimPrefix(key, blobKeyPrefix))
		if err != nil {
			return nil
		}
		size, _, access := parseRecord(val)
		if at, ok := s.usage.lastAccess(d); ok {
			access = at
		}
		cands = append(cands, candidate{d: d, size: size, access: access})
		return nil
	})
	if err != nil {
		s.log.Warn("eviction: reading blob records", "err", err)
		return
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].access < cands[j].access })
	var pinned map[Digest]bool
	if s.pinned != nil {
		pinned = s.pinned()
	}
	for _, c := range cands {
		if need <= 0 {
			break
		}
		if pinned[c.d] || s.usage.isOpen(c.d) {
			continue
		}
		// Under the store lock, so that no fill of this blob can start
		// (and publish a record this would then delete) in between.
		s.mu.Lock()
		if _, filling := s.fills[c.d.String()]; filling {
			s.mu.Unlock()
			continue
		}
		if err := os.Remove(s.blobPath(c.d)); err != nil && !os.IsNotExist(err) {
			s.mu.Unlock()
			s.log.Warn("eviction: removing blob", "digest", c.d.String(), "err", err)
			continue
		}
		if err := s.idx.Delete(blobKey(c.d)); err != nil {
			s.log.Warn("eviction: dropping blob record", "digest", c.d.String(), "err", err)
		}
		s.mu.Unlock()
		s.blobs.Add(-1)
		s.bytes.Add(-c.size)
		need -= c.size
		s.log.Info("evicted blob", "digest", c.d.String(), "size", c.size)
		if s.onEvict != nil {
			s.onEvict(c.d, c.size)
		}
	}
	s.evictBlocked.Store(need > 0)
	if need > 0 {
		s.log.Warn("cache is over its limits, but every remaining blob is pinned or in use", "over_by", need)
	}
}
