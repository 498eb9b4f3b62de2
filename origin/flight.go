package origin

import (
	"context"
	"sync"

	"golang.org/x/sync/singleflight"

	"github.com/modelgate/modelgate/authinject"
)

// Flight makes one call per key for all identical concurrent callers. The
// zero value is ready to use.
type Flight struct {
	// PerWorker shares a call only between requests of the same worker
	// key (Principal.Worker): needed when the call runs a policy of the
	// leader's key (the Hub's redirect check).
	PerWorker bool

	g singleflight.Group

	mu      sync.Mutex
	waiting map[string]int // callers in Do per flight key
}

// Shared returns call made once for all concurrent callers of the same key
// and principal (and worker key, with PerWorker). It runs detached from
// the caller's cancellation: the answer is shared, so one client leaving
// must not cancel it for the others. The key is scoped to the principal:
// what one credential may see must not decide what another sees.
func Shared[T any](f *Flight, key string, call Call[T]) Call[T] {
	return func(ctx context.Context) (T, error) {
		p := authinject.PrincipalFrom(ctx)
		fk := p.Key(key)
		if f.PerWorker {
			fk += "\x00worker:" + p.Worker
		}
		f.enter(fk, 1)
		defer f.enter(fk, -1)
		detached := context.WithoutCancel(ctx)
		v, err, _ := f.g.Do(fk, func() (any, error) { return call(detached) })
		t, _ := v.(T)
		return t, err
	}
}

func (f *Flight) enter(key string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.waiting == nil {
		f.waiting = map[string]int{}
	}
	f.waiting[key] += n
	if f.waiting[key] == 0 {
		delete(f.waiting, key)
	}
}

// Waiting returns how many callers are in a shared call now, over every
// key: what tests wait on to know that concurrent callers all joined.
func (f *Flight) Waiting() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.waiting {
		n += c
	}
	return n
}
