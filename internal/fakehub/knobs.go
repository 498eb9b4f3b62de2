package fakehub

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"
)

// corruptTail is how many trailing bytes CorruptBlob flips: enough to break
// any hash, late enough that a streaming verifier only notices at the end.
const corruptTail = 4 << 10

// errClosing aborts in-flight CDN responses when the test ends, so the
// servers' Close does not wait for a gate nobody will release.
var errClosing = errors.New("fakehub: shutting down")

// blobKnobs are the fault knobs of one blob; the zero value is "healthy".
type blobKnobs struct {
	corrupt  bool
	throttle int // bytes per second, 0 = unthrottled
	gate     *gate
}

// gate holds full GETs of a blob after a byte offset until released.
type gate struct {
	after    int64
	released chan struct{}
	once     sync.Once
}

// updateKnobs edits the knobs of a blob under the lock and drops entries
// that went back to the zero value.
func (h *Hub) updateKnobs(sha string, edit func(k *blobKnobs)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := h.knobs[sha]
	if k == nil {
		k = &blobKnobs{}
	}
	edit(k)
	if *k == (blobKnobs{}) {
		delete(h.knobs, sha)
		return
	}
	h.knobs[sha] = k
}

// knobsFor returns a copy of the knobs of a blob.
func (h *Hub) knobsFor(sha string) blobKnobs {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if k := h.knobs[sha]; k != nil {
		return *k
	}
	return blobKnobs{}
}

// CorruptBlob makes the CDN serve the blob with the same length but its last
// 4 KiB flipped, on full and ranged requests, until switched off.
func (h *Hub) CorruptBlob(sha256hex string, on bool) {
	h.updateKnobs(sha256hex, func(k *blobKnobs) { k.corrupt = on })
}

// ThrottleBlob limits CDN bodies of the blob to about bytesPerSec, written in
// small flushed chunks so clients see steady progress; 0 removes the limit.
// The rate is re-read per chunk, so it also affects responses in flight.
func (h *Hub) ThrottleBlob(sha256hex string, bytesPerSec int) {
	h.updateKnobs(sha256hex, func(k *blobKnobs) { k.throttle = max(bytesPerSec, 0) })
}

// GateBlob makes every full (non-Range) CDN GET of the blob that starts
// before release is called write its first `after` bytes, flush, and block
// until release() (or until the request's context ends). release is
// idempotent and also removes the gate for later requests. Ranged GETs are
// not gated.
func (h *Hub) GateBlob(sha256hex string, after int64) (release func()) {
	g := &gate{after: max(after, 0), released: make(chan struct{})}
	h.updateKnobs(sha256hex, func(k *blobKnobs) { k.gate = g })
	return func() {
		g.once.Do(func() { close(g.released) })
		h.updateKnobs(sha256hex, func(k *blobKnobs) {
			if k.gate == g {
				k.gate = nil
			}
		})
	}
}

// corruptReaderAt reads data with every byte from `from` on inverted, without
// copying the (possibly huge) blob.
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

// sleepCtx waits d unless the request ends or the fake shuts down.
func sleepCtx(ctx context.Context, closing <-chan struct{}, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-closing:
		return errClosing
	}
}

// throttleWriter paces body writes to the blob's current throttle rate.
type throttleWriter struct {
	http.ResponseWriter
	ctx     context.Context
	closing <-chan struct{}
	rate    func() int
}

func (t *throttleWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		rate := t.rate()
		if rate <= 0 {
			m, err := t.ResponseWriter.Write(p)
			return n + m, err
		}
		// ~20 chunks per second keeps progress smooth without tiny writes.
		chunk := min(len(p), max(1, min(rate/20, 64<<10)))
		m, err := t.ResponseWriter.Write(p[:chunk])
		n += m
		if err != nil {
			return n, err
		}
		if err := http.NewResponseController(t.ResponseWriter).Flush(); err != nil {
			return n, err
		}
		p = p[chunk:]
		if err := sleepCtx(t.ctx, t.closing, time.Duration(chunk)*time.Second/time.Duration(rate)); err != nil {
			return n, err
		}
	}
	return n, nil
}

// Unwrap exposes the underlying writer to http.ResponseController.
func (t *throttleWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// gateWriter passes the first g.after bytes, flushes them, then blocks until
// the gate is released.
type gateWriter struct {
	http.ResponseWriter
	ctx     context.Context
	closing <-chan struct{}
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
				return n, gw.ctx.Err()
			case <-gw.closing:
				return n, errClosing
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
