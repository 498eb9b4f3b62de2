package cache

import (
	"context"
	"errors"
	"net"
	"sync"
)

// ErrOrphaned ends a fill that nobody read for the orphan timeout (and that
// is not pinned): its bytes are kept for a later resume.
var ErrOrphaned = errors.New("nobody is reading the blob any more")

type clientKey struct{}

// WithClient returns ctx naming the client a Get is for, by its network
// address ("host:port" or a bare host): fills are capped per client host.
// A Get without a client (a background job) counts against the global cap
// only.
func WithClient(ctx context.Context, addr string) context.Context {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		addr = host
	}
	return context.WithValue(ctx, clientKey{}, addr)
}

func clientFrom(ctx context.Context) string {
	c, _ := ctx.Value(clientKey{}).(string)
	return c
}

type fillDoneKey struct{}

// WithFillDone returns ctx with fn, which a Get (or GetUnverified) with
// this ctx that starts a fill registers with it: fn is called once when
// that fill ends, with nil once the blob is published or with the fill's
// error (a *DigestMismatchError when the bytes did not verify), before
// the fill leaves the registry, so a request that arrives after it failed
// starts its fill after fn returned. A Get that joins a fill another one
// started, or finds the blob on disk, registers nothing: fn is for a
// caller whose Source has a stake in how the fill it chose ends (bytes
// assembled from another copy, which only the blob's own digest judges).
func WithFillDone(ctx context.Context, fn func(err error)) context.Context {
	return context.WithValue(ctx, fillDoneKey{}, fn)
}

func fillDoneFrom(ctx context.Context) func(error) {
	fn, _ := ctx.Value(fillDoneKey{}).(func(error))
	return fn
}

// fillSlots caps how many fills run at once, in total and per client, so
// that a burst of requests (or abandoned ones) cannot open an unbounded
// number of upstream downloads. A fill beyond a cap waits for a slot: its
// clients see a slow start, not an error.
type fillSlots struct {
	max, maxPer int

	mu    sync.Mutex
	total int
	per   map[string]int
	wake  chan struct{} // closed and replaced whenever a slot frees
}

func newFillSlots(max, maxPer int) *fillSlots {
	return &fillSlots{max: max, maxPer: maxPer, per: map[string]int{}, wake: make(chan struct{})}
}

// acquire waits for a slot for client ("" = no per-client cap) until ctx
// ends, and returns its release.
func (sl *fillSlots) acquire(ctx context.Context, client string) (func(), error) {
	for {
		sl.mu.Lock()
		if sl.total < sl.max && (client == "" || sl.per[client] < sl.maxPer) {
			sl.total++
			if client != "" {
				sl.per[client]++
			}
			sl.mu.Unlock()
			var once sync.Once
			return func() { once.Do(func() { sl.release(client) }) }, nil
		}
		wake := sl.wake
		sl.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

func (sl *fillSlots) release(client string) {
	sl.mu.Lock()
	sl.total--
	if client != "" {
		if sl.per[client]--; sl.per[client] <= 0 {
			delete(sl.per, client)
		}
	}
	close(sl.wake)
	sl.wake = make(chan struct{})
	sl.mu.Unlock()
}
