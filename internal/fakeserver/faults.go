package fakeserver

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"sync"
	"time"
)

// corruptTail is how many trailing bytes Corrupt inverts: enough to break
// any hash, late enough that a streaming verifier only notices at the end.
const corruptTail = 4 << 10

// Faults holds the fault knobs of the bodies a fake serves, keyed by what
// names a body in that fake (a hash, a file id). The zero value has every
// body healthy and is ready to use; a Faults must not be copied after first
// use. All methods are safe for concurrent use, including while the bodies
// they affect are being served.
type Faults[K comparable] struct {
	mu sync.Mutex
	m  map[K]fault
}

// fault is the knob set of one body; the zero value is "healthy" and is not
// stored.
type fault struct {
	corrupt     bool
	throttle    int // bytes per second, 0 = unthrottled
	gate        *gate
	ignoreRange bool
	cutAfter    int64 // with cuts > 0: abort the body after this many bytes
	cuts        int   // how many more GETs are cut
	failStatus  int   // with fails > 0: answer this status instead
	fails       int   // how many more requests fail
}

// gate holds full GETs of a body after a byte offset until released.
type gate struct {
	after    int64
	released chan struct{}
	once     sync.Once
}

// update edits the knobs of key under the lock and drops entries that went
// back to healthy, so a long test does not accumulate them.
func (f *Faults[K]) update(key K, edit func(k *fault)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.m[key]
	edit(&k)
	if k == (fault{}) {
		delete(f.m, key)
		return
	}
	if f.m == nil {
		f.m = map[K]fault{}
	}
	f.m[key] = k
}

func (f *Faults[K]) get(key K) fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m[key]
}

// Corrupt makes ServeContent answer key with the same length but its last
// 4 KiB (all of it, when smaller) inverted, on full and ranged requests,
// until switched off: only a hash check notices.
func (f *Faults[K]) Corrupt(key K, on bool) {
	f.update(key, func(k *fault) { k.corrupt = on })
}

// Throttle limits bodies of key to about bytesPerSec, written in small
// flushed chunks so clients see steady progress; 0 removes the limit. The
// rate is re-read per chunk, so it also affects answers in flight.
func (f *Faults[K]) Throttle(key K, bytesPerSec int) {
	f.update(key, func(k *fault) { k.throttle = max(bytesPerSec, 0) })
}

// Gate makes every full (non-Range) GET of key that starts before release
// is called write its first `after` bytes, flush, and block until release()
// (or until the request's context ends, which includes the servers' cleanup:
// see Servers.Start). release is idempotent and also removes the gate for
// later requests. Ranged GETs are not gated, so a client can still probe.
func (f *Faults[K]) Gate(key K, after int64) (release func()) {
	g := &gate{after: max(after, 0), released: make(chan struct{})}
	f.update(key, func(k *fault) { k.gate = g })
	return func() {
		g.once.Do(func() { close(g.released) })
		f.update(key, func(k *fault) {
			if k.gate == g {
				k.gate = nil
			}
		})
	}
}

// IgnoreRange makes ServeContent answer every request for key as if it had
// no Range header (200 with the whole body), like servers that do not
// support ranges.
func (f *Faults[K]) IgnoreRange(key K, on bool) {
	f.update(key, func(k *fault) { k.ignoreRange = on })
}

// Cut makes the next `times` GETs of key abort their connection after
// `after` bytes of body, like a connection dropped mid-transfer.
func (f *Faults[K]) Cut(key K, after int64, times int) {
	f.update(key, func(k *fault) { k.cutAfter, k.cuts = max(after, 0), max(times, 0) })
}

// Fail makes the next `times` requests for key answer status (e.g. 503)
// with a short text body.
func (f *Faults[K]) Fail(key K, status, times int) {
	f.update(key, func(k *fault) { k.failStatus, k.fails = status, max(times, 0) })
}

// take reads the knobs of key for one request, using up one cut and one
// failure if any are armed.
func (f *Faults[K]) take(key K, get bool) fault {
	var k fault
	f.update(key, func(cur *fault) {
		k = *cur
		if cur.fails > 0 {
			cur.fails--
			if cur.fails == 0 {
				cur.failStatus = 0
			}
		} else if get && cur.cuts > 0 {
			cur.cuts--
			if cur.cuts == 0 {
				cur.cutAfter = 0
			}
		}
	})
	return k
}

// ServeContent answers r with data like http.ServeContent (single ranges,
// conditional requests, HEAD), with the faults of key applied. The corrupt
// and gate knobs are read once, when the request starts; the throttle rate
// per chunk.
func (f *Faults[K]) ServeContent(w http.ResponseWriter, r *http.Request, key K, data []byte, modtime time.Time) {
	k := f.take(key, r.Method == http.MethodGet)
	if k.fails > 0 {
		http.Error(w, "injected failure", k.failStatus)
		return
	}
	if k.ignoreRange {
		r = r.Clone(r.Context())
		r.Header.Del("Range")
		r.Header.Del("If-Range")
	}
	var content io.ReadSeeker = bytes.NewReader(data)
	if k.corrupt {
		size := int64(len(data))
		content = io.NewSectionReader(corruptReaderAt{data: data, from: size - min(size, corruptTail)}, 0, size)
	}
	var out http.ResponseWriter = &throttleWriter{ResponseWriter: w, ctx: r.Context(), rate: func() int {
		return f.get(key).throttle
	}}
	if k.gate != nil && r.Method == http.MethodGet && r.Header.Get("Range") == "" {
		out = &gateWriter{ResponseWriter: out, ctx: r.Context(), g: k.gate}
	}
	if k.cuts > 0 && r.Method == http.MethodGet {
		out = &cutWriter{ResponseWriter: out, left: k.cutAfter}
	}
	http.ServeContent(out, r, "", modtime, content)
}

// cutWriter passes `left` body bytes, flushes them, then aborts the
// connection: the client sees a body that ends early.
type cutWriter struct {
	http.ResponseWriter
	left int64
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if int64(len(p)) <= c.left {
		n, err := c.ResponseWriter.Write(p)
		c.left -= int64(n)
		return n, err
	}
	n, _ := c.ResponseWriter.Write(p[:c.left])
	c.left = 0
	http.NewResponseController(c.ResponseWriter).Flush()
	_ = n
	panic(http.ErrAbortHandler)
}

// Unwrap exposes the underlying writer to http.ResponseController.
func (c *cutWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// corruptReaderAt reads data with every byte from `from` on inverted,
// without copying the (possibly huge) body.
type corruptReaderAt struct {
	data []byte
	from int64
}

func (c corruptReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(c.data)) {
		return 0, io.EOF
	}
	n := copy(p, c.data[off:])
	for i := range n {
		if off+int64(i) >= c.from {
			p[i] ^= 0xff
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// sleepCtx waits d unless the request ends first (the client went away or
// the servers are shutting down).
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// throttleWriter paces body writes to the body's current throttle rate.
// It paces against a clock started when the rate was last seen to change,
// not by sleeping a chunk's worth after each write: http.ServeContent
// writes 32 KiB at a time, and at tens of MiB/s each sleep is under a
// millisecond, so timer overshoot alone would halve the rate.
type throttleWriter struct {
	http.ResponseWriter
	ctx  context.Context
	rate func() int

	paceRate  int       // the rate the clock runs at
	paceStart time.Time // when it started
	paceSent  int64     // bytes written since
}

func (t *throttleWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		rate := t.rate()
		if rate <= 0 {
			t.paceRate = 0
			m, err := t.ResponseWriter.Write(p)
			return n + m, err
		}
		if rate != t.paceRate {
			t.paceRate, t.paceStart, t.paceSent = rate, time.Now(), 0
		}
		// ~20 chunks per second keeps progress smooth without tiny writes.
		chunk := min(len(p), max(1, min(rate/20, 64<<10)))
		m, err := t.ResponseWriter.Write(p[:chunk])
		n += m
		t.paceSent += int64(m)
		if err != nil {
			return n, err
		}
		if err := http.NewResponseController(t.ResponseWriter).Flush(); err != nil {
			return n, err
		}
		p = p[chunk:]
		due := t.paceStart.Add(time.Duration(float64(t.paceSent) / float64(rate) * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			if err := sleepCtx(t.ctx, d); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// Unwrap exposes the underlying writer to http.ResponseController.
func (t *throttleWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// gateWriter passes the first g.after bytes, flushes them so the client
// really has them, then blocks until the gate is released.
type gateWriter struct {
	http.ResponseWriter
	ctx     context.Context
	g       *gate
	written int64
	open    bool
}

func (gw *gateWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if !gw.open && gw.written >= gw.g.after {
			if err := http.NewResponseController(gw.ResponseWriter).Flush(); err != nil {
				return n, err
			}
			select {
			case <-gw.g.released:
				gw.open = true
			case <-gw.ctx.Done():
				return n, context.Cause(gw.ctx)
			}
		}
		chunk := p
		if !gw.open {
			chunk = p[:min(int64(len(p)), gw.g.after-gw.written)]
		}
		m, err := gw.ResponseWriter.Write(chunk)
		n += m
		gw.written += int64(m)
		p = p[m:]
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Unwrap exposes the underlying writer to http.ResponseController.
func (gw *gateWriter) Unwrap() http.ResponseWriter { return gw.ResponseWriter }
