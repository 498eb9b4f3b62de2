// Package proxy is modelgate's HTTP edge, and knows no hub: the listener
// and its server settings (server.go), connection caps (limit.go), client
// allow-lists and worker-key authentication (auth.go), routing by request
// form (gateway.go), the one proxy policy (policy.go), CONNECT handling
// (connect.go), TLS interception (intercept.go, certstore.go), blind
// tunnels (tunnel.go), the outbound guard's view (targets.go), relays
// (relay.go), the gateway's own endpoints (own.go), and the dispatch to
// the hubs, which register as site.Site values (sites.go). Every request
// passes the edge middleware here, which logs and counts it.
package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/metrics"
	"github.com/modelgate/modelgate/reqinfo"
)

// Server settings for the one listener. There is deliberately no
// WriteTimeout or ReadTimeout: they bound a whole answer or request, and a
// multi-GB model download must never be cut by one.
const (
	ReadHeaderTimeout = 10 * time.Second
	IdleTimeout       = 2 * time.Minute
	MaxHeaderBytes    = 64 << 10
)

// NewServer returns an http.Server for h with the gateway's timeouts.
func NewServer(addr string, h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return context.Background() },
		ConnContext:       connContext,
	}
}

// edge logs one line per request and counts it by route and result.
type edge struct {
	next http.Handler
	log  *slog.Logger
	m    *metrics.Metrics
	// bodyTimeout bounds the arrival of a request body (see bodyDeadline).
	bodyTimeout time.Duration
	// observe, when set, learns every finished request (Options.OnRequest).
	observe func(r *http.Request, info *reqinfo.Info, status int, bytes int64)
}

func (e *edge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if e.m != nil {
		e.m.InFlight.Inc()
		defer e.m.InFlight.Dec()
	}
	ctx, info := reqinfo.New(r.Context())
	rec := &recorder{ResponseWriter: w}
	defer func() {
		p := recover()
		if p != nil && p != http.ErrAbortHandler {
			info.Result = "error"
			e.log.Error("handler panic", "panic", p)
		}
		e.finish(r, rec, info, time.Since(start))
		if p != nil {
			panic(p)
		}
	}()
	e.next.ServeHTTP(rec, bodyDeadline(w, r.WithContext(ctx), e.bodyTimeout))
}

func (e *edge) finish(r *http.Request, rec *recorder, info *reqinfo.Info, d time.Duration) {
	route, result, status := info.Route, info.Result, rec.status()
	if rec.code == 0 && info.Status != 0 {
		status = info.Status // answered on a hijacked connection
	}
	if route == "" {
		route = metrics.RouteOther
	}
	if result == "" {
		result = "ok"
	}
	if e.m != nil {
		e.m.Requests.WithLabelValues(route, result).Inc()
		e.m.RequestDuration.WithLabelValues(route).Observe(d.Seconds())
	}
	level := slog.LevelInfo
	if route == metrics.RouteHealth || route == metrics.RouteMetrics {
		level = slog.LevelDebug
	}
	// A key carried in the path (/visionatrix/key/mgw_…/) is no part of
	// what was asked for: the log line, the audit and the status page see
	// the path served.
	if strings.HasPrefix(r.URL.EscapedPath(), clientauth.PathKeyPrefix) {
		r = r.Clone(r.Context())
		clientauth.TakePath(r)
	}
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		// The path only: queries may carry tokens.
		slog.String("path", r.URL.Path),
		slog.String("route", route),
		slog.String("result", result),
		slog.String("mode", info.Mode),
		slog.Int("status", status),
		slog.Int64("bytes", rec.bytes),
		slog.Duration("duration", d),
		slog.String("remote", r.RemoteAddr),
	}
	if info.Worker != "" {
		attrs = append(attrs, slog.String("worker", info.Worker))
	}
	if info.Detail != "" {
		attrs = append(attrs, slog.String("detail", info.Detail))
	}
	e.log.LogAttrs(r.Context(), level, "request", attrs...)
	if e.observe != nil {
		e.observe(r, info, status, rec.bytes)
	}
}

// recorder notes the status and body bytes of an answer. It forwards
// ReadFrom so that copying a blob file still reaches sendfile, and Unwrap
// for http.ResponseController.
type recorder struct {
	http.ResponseWriter
	code  int
	bytes int64
}

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := r.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(writerOnly{r.ResponseWriter}, src)
	}
	r.bytes += n
	return n, err
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Hijack lets goproxy take over a CONNECT's connection.
func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := r.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("connection cannot be hijacked")
	}
	return hj.Hijack()
}

func (r *recorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

// writerOnly hides ReadFrom to avoid recursion in io.Copy.
type writerOnly struct{ io.Writer }
