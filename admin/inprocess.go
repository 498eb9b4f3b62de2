package admin

import (
	"context"
	"io"
	"net/http"
	"sync/atomic"

	"github.com/modelgate/modelgate/reqinfo"
)

// countingWriter is the ResponseWriter of an in-process download: it
// keeps the status and headers, counts the body and throws it away.
type countingWriter struct {
	header http.Header
	code   int
	n      *atomic.Int64 // shared with the job's live progress
	body   []byte        // kept only when keep is set (small API answers)
	keep   bool
	// aborted: the handler cut the answer short.
	aborted bool
}

func (c *countingWriter) Header() http.Header { return c.header }
func (c *countingWriter) WriteHeader(code int) {
	if c.code == 0 {
		c.code = code
	}
}
func (c *countingWriter) Write(p []byte) (int, error) {
	if c.code == 0 {
		c.code = http.StatusOK
	}
	c.n.Add(int64(len(p)))
	if c.keep && len(c.body) < 64<<20 {
		c.body = append(c.body, p...)
	}
	return len(p), nil
}

// ReadFrom lets the blob answer stream from its file without an extra
// buffer per call.
func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	buf := make([]byte, 256<<10)
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			c.Write(buf[:n])
			total += int64(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func (c *countingWriter) status() int {
	if c.code == 0 {
		return http.StatusOK
	}
	return c.code
}

// serveInProcess sends a request (GET, HEAD) for target (path and query) to h as if a
// loopback client without a key had asked, with the gateway's own
// principal (the zero one in the context), and returns the answer.
// progress, when set, counts the body bytes as they pass.
func serveInProcess(ctx context.Context, h http.Handler, method, target string, keep bool, progress *atomic.Int64) *countingWriter {
	if progress == nil {
		progress = new(atomic.Int64)
	}
	ctx, _ = reqinfo.New(ctx)
	w := &countingWriter{header: http.Header{}, n: progress, keep: keep}
	r, err := http.NewRequestWithContext(ctx, method, "http://modelgate.internal"+target, nil)
	if err != nil {
		w.code = http.StatusBadRequest
		return w
	}
	// Origin-form, as a mirror-mode request arrives.
	r.URL.Scheme, r.URL.Host = "", ""
	r.RemoteAddr = "127.0.0.1:0"
	func() {
		// A handler aborts an answer it cannot complete (a fill that
		// failed) the way net/http expects: with ErrAbortHandler.
		defer func() {
			if p := recover(); p != nil {
				if p != http.ErrAbortHandler {
					panic(p)
				}
				w.aborted = true
			}
		}()
		h.ServeHTTP(w, r)
	}()
	return w
}
