// Package proxy is modelgate's HTTP edge: the listener's server settings,
// the routing of the gateway's own endpoints (/healthz, /metrics) and the
// mirror routes, and the middleware that logs and counts every request.
package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/modelgate/modelgate/metrics"
	"github.com/modelgate/modelgate/reqinfo"
)

// Options configures the gateway's handler.
type Options struct {
	// Mirror serves every path that is not one of the gateway's own.
	Mirror http.Handler
	// Gatherer is what /metrics exposes.
	Gatherer prometheus.Gatherer
	Metrics  *metrics.Metrics
	Logger   *slog.Logger
}

// NewHandler returns the gateway's root handler.
func NewHandler(opts Options) http.Handler {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	metricsHandler := promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(opts.Logger.Handler(), slog.LevelError),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
	// Routing is a plain switch rather than an http.ServeMux: the mux
	// answers a path with ".." segments with a redirect to the cleaned
	// path, and the gateway must refuse such a path with a 400 instead.
	root := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/healthz" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
			reqinfo.Set(r.Context(), metrics.RouteHealth, "ok")
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			io.WriteString(w, "ok\n")
		case r.URL.Path == "/metrics" && r.Method == http.MethodGet:
			reqinfo.Set(r.Context(), metrics.RouteMetrics, "ok")
			metricsHandler.ServeHTTP(w, r)
		default:
			opts.Mirror.ServeHTTP(w, r)
		}
	})
	return &edge{next: root, log: opts.Logger, m: opts.Metrics}
}

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
	}
}

// edge logs one line per request and counts it by route and result.
type edge struct {
	next http.Handler
	log  *slog.Logger
	m    *metrics.Metrics
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
	e.next.ServeHTTP(rec, r.WithContext(ctx))
}

func (e *edge) finish(r *http.Request, rec *recorder, info *reqinfo.Info, d time.Duration) {
	route, result := info.Route, info.Result
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
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		// The path only: queries may carry tokens.
		slog.String("path", r.URL.Path),
		slog.String("route", route),
		slog.String("result", result),
		slog.Int("status", rec.status()),
		slog.Int64("bytes", rec.bytes),
		slog.Duration("duration", d),
		slog.String("remote", r.RemoteAddr),
	}
	if info.Detail != "" {
		attrs = append(attrs, slog.String("detail", info.Detail))
	}
	e.log.LogAttrs(r.Context(), level, "request", attrs...)
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

func (r *recorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

// writerOnly hides ReadFrom to avoid recursion in io.Copy.
type writerOnly struct{ io.Writer }

// IsClosed reports whether err is the normal end of a server.
func IsClosed(err error) bool { return errors.Is(err, http.ErrServerClosed) }
