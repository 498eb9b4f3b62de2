package origin

import (
	"context"
	"log/slog"
	"time"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/indexkeys"
)

// LastKnownSuffix marks the index copy of the last good answer for a key,
// kept for cache.last_known_ttl for when the origin is down.
const LastKnownSuffix = indexkeys.LastKnownSuffix

// Index is the persistent metadata map; cache.Index implements it.
type Index interface {
	Get(key string) ([]byte, error)
	Set(key string, val []byte, ttl time.Duration) error
}

// Answers keeps an origin's metadata answers (opaque bytes) in the index:
// every decorator of this package stacked around one fetch.
type Answers struct {
	Index Index
	// Offline answers from the index only.
	Offline bool
	// LastKnownTTL is how long the last good answer is kept for when the
	// origin is down; 0 keeps it until index maintenance trims it.
	LastKnownTTL time.Duration
	Retry        Retry
	Logger       *slog.Logger
	// OnStale, when set, is told each time a last-known answer stands in.
	OnStale func()
	// Flight shares one fetch between concurrent callers (set its
	// PerWorker before use when the fetch runs a worker's policy).
	Flight Flight
}

// Fetched is a fresh answer of the origin.
type Fetched struct {
	Value []byte
	// Keep says whether the answer may be kept and reused (the origin's
	// good answer about what was asked); one that is not is still
	// returned, once.
	Keep bool
	// KeepAs, when set, is the key (unscoped) to keep it under instead of
	// the one asked: a renamed repo's answer belongs to its new name.
	KeepAs string
}

// From says where an answer came from.
type From int

const (
	FromIndex     From = iota // a copy younger than its TTL
	FromOrigin                // asked just now
	FromLastKnown             // the origin is down: the last good copy
)

// Get returns the answer for key (unscoped; it is scoped to the context's
// principal here): a copy from the index while younger than ttl (ttl 0:
// forever; ttl < 0: none is kept), else one retried fetch for all
// concurrent callers, kept for ttl and as the last-known copy; when the
// origin is down (or the gateway offline), that last-known copy.
func (a *Answers) Get(ctx context.Context, key string, ttl time.Duration, fetch Call[Fetched]) ([]byte, From, error) {
	p := authinject.PrincipalFrom(ctx)
	scoped := p.Key(key)
	if ttl >= 0 {
		if b, err := a.Index.Get(scoped); err == nil {
			return b, FromIndex, nil
		}
	}
	f, err := WhenOnline(a.Offline, Shared(&a.Flight, key, Retrying(a.Retry, fetch)))(ctx)
	if err == nil {
		if f.Keep {
			store := scoped
			if f.KeepAs != "" {
				store = p.Key(f.KeepAs)
			}
			if ttl >= 0 {
				a.set(store, f.Value, ttl)
			}
			// Bounded in age (and, by index maintenance, in total size).
			a.set(indexkeys.LastKnown(store), f.Value, a.LastKnownTTL)
		}
		return f.Value, FromOrigin, nil
	}
	if IsDown(err) {
		if b, lerr := a.Index.Get(indexkeys.LastKnown(scoped)); lerr == nil {
			if a.OnStale != nil {
				a.OnStale()
			}
			a.logger().Warn("upstream unavailable; serving the last known answer", "why", err.Error())
			return b, FromLastKnown, nil
		}
	}
	return nil, FromOrigin, err
}

// Waiting returns how many callers are in a shared fetch now.
func (a *Answers) Waiting() int { return a.Flight.Waiting() }

func (a *Answers) set(key string, val []byte, ttl time.Duration) {
	if err := a.Index.Set(key, val, ttl); err != nil {
		a.logger().Warn("caching an upstream answer", "err", err)
	}
}

func (a *Answers) logger() *slog.Logger {
	if a.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return a.Logger
}
