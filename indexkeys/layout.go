package indexkeys

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// LayoutVersionKey holds the version of the index layout the data_dir was
// last opened with, in decimal.
const LayoutVersionKey = Meta + "layout_version"

// LayoutVersion is the layout this code writes. Version 1 is the layout
// before the key existed (release f6bd027 and earlier): its API answers
// were keyed by request digest alone, and it kept no HFSeen records.
// Version 3 adds blob records of Xet xorb ranges ("blob/xet-range:..."),
// which count against cache.max_size, and the Xet namespaces (XetRecon,
// XetVerified): a release of layout 2 would neither count nor evict those
// blobs, so it must refuse the index rather than run over its budget.
const LayoutVersion = 3

// Store is the index as the migration needs it; cache.Index implements it.
type Store interface {
	Scanner
	Set(key string, val []byte, ttl time.Duration) error
	Delete(key string) error
}

// errStop ends a scan early.
var errStop = errors.New("stop")

// Upgrade brings the index to LayoutVersion, once: it reads the layout
// version, runs the migrations from there, and writes the version last.
// Every migration step is idempotent, so a crash part-way through is
// mended by running them again at the next start. A fresh (empty) index
// is simply stamped. An index written by a newer layout is refused rather
// than misread. It returns the version found (0: a fresh index).
func Upgrade(idx Store, log *slog.Logger) (from int, err error) {
	from, err = readVersion(idx)
	if err != nil {
		return 0, err
	}
	switch {
	case from == LayoutVersion:
		return from, nil
	case from > LayoutVersion:
		return from, fmt.Errorf("the index has layout version %d, newer than this release's %d: run a newer release on this data_dir", from, LayoutVersion)
	}
	steps := []func(Store) (int, error){1: migrate1to2, 2: migrate2to3}
	for v := max(from, 1); from > 0 && v < LayoutVersion; v++ {
		start := time.Now()
		n, err := steps[v](idx)
		if err != nil {
			return from, fmt.Errorf("migrating the index from layout %d to %d: %w", v, v+1, err)
		}
		log.Info("index layout migrated", "from", v, "to", v+1, "changes", n, "took", time.Since(start).Round(time.Millisecond))
	}
	if err := idx.Set(LayoutVersionKey, []byte(strconv.Itoa(LayoutVersion)), 0); err != nil {
		return from, fmt.Errorf("writing the index layout version: %w", err)
	}
	return from, nil
}

// readVersion is the stored layout version: 0 for an empty index, 1 for a
// non-empty index without the key.
func readVersion(idx Store) (int, error) {
	var raw []byte
	found := false
	err := idx.Scan(LayoutVersionKey, func(k string, v []byte) error {
		if k == LayoutVersionKey {
			raw, found = append([]byte(nil), v...), true
			return errStop
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return 0, fmt.Errorf("reading the index layout version: %w", err)
	}
	if found {
		v, err := strconv.Atoi(string(raw))
		if err != nil || v < 1 {
			return 0, fmt.Errorf("the index layout version %q is not a version", raw)
		}
		return v, nil
	}
	empty := true
	err = idx.Scan("", func(string, []byte) error { empty = false; return errStop })
	if err != nil && !errors.Is(err, errStop) {
		return 0, fmt.Errorf("reading the index: %w", err)
	}
	if empty {
		return 0, nil
	}
	return 1, nil
}

// migrate1to2: API answers keyed by request digest alone ("hf/api\0" +
// 64 hex, and its last-known copy) cannot be found under today's keys
// (which name repo and revision first): they are dropped. HFSeen records,
// which the CDN path needs to hand out a blob by its content id, are
// derived from the file records, in the same principal's scope: a file
// record says the gateway saw, under that principal, the repo hold the
// file's content. Re-running it rewrites the same records and deletes
// nothing new, so it is idempotent.
func migrate1to2(idx Store) (int, error) {
	var drop []string
	seen := map[string]bool{}
	err := idx.Scan("", func(raw string, val []byte) error {
		scope, k := Split(raw)
		if rest, ok := strings.CutPrefix(k, HFAPI); ok && isV1APIRest(rest) {
			drop = append(drop, raw)
			return nil
		}
		typ, id, _, _, ok := ParseHFFile(k)
		if !ok {
			return nil
		}
		var m struct {
			Digest string `json:"digest"`
		}
		if json.Unmarshal(val, &m) != nil || m.Digest == "" {
			return nil // unreadable either way; not ours to judge here
		}
		seen[Scoped(scope, HFSeenKey(m.Digest, HFURLRepo(typ, id)))] = true
		return nil
	})
	if err != nil {
		return 0, err
	}
	for k := range seen {
		if err := idx.Set(k, []byte{1}, 0); err != nil {
			return 0, err
		}
	}
	for _, k := range drop {
		if err := idx.Delete(k); err != nil {
			return 0, err
		}
	}
	return len(seen) + len(drop), nil
}

// migrate2to3 changes no entry: layout 3 only adds kinds of entries (Xet
// range blob records, XetRecon, XetVerified) that a layout-2 index cannot
// hold. The Xet ranges a layout-2 release kept as plain files under
// data_dir/xet/xorbs are a cache, dropped by the Xet service at start
// (fetched again when asked), not imported.
func migrate2to3(Store) (int, error) { return 0, nil }

// isV1APIRest reports whether what follows HFAPI is a layout-1 key: a
// 64-hex request digest, alone or with the last-known suffix. Layout-2
// keys start with a repo type instead.
func isV1APIRest(rest string) bool {
	rest = strings.TrimSuffix(rest, LastKnownSuffix)
	if len(rest) != 64 {
		return false
	}
	for _, c := range rest {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
