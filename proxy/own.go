package proxy

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/modelgate/modelgate/buildinfo"
	"github.com/modelgate/modelgate/metrics"
	"github.com/modelgate/modelgate/reqinfo"
)

// Access says which client networks may call one of the gateway's own
// endpoints. None of them takes a worker key.
type Access int

const (
	// AccessClients: the networks of clients.allow.
	AccessClients Access = iota
	// AccessMetrics: the networks of clients.metrics_allow.
	AccessMetrics
	// AccessAnyone: every network (probes, as a load balancer expects).
	AccessAnyone
)

// Endpoint is one of the gateway's own paths, answered in mirror mode
// before any site and without a worker key.
type Endpoint struct {
	// Path is the exact path; one ending in "/" also covers every path
	// under it.
	Path string
	// Methods are the methods it answers (nil: GET and HEAD); a request
	// with another method goes to the sites like any other.
	Methods []string
	// Access says who may call it.
	Access  Access
	Handler http.Handler
}

func (e *Endpoint) matches(r *http.Request) bool {
	methods := e.Methods
	if methods == nil {
		methods = []string{http.MethodGet, http.MethodHead}
	}
	if !slices.Contains(methods, r.Method) {
		return false
	}
	if strings.HasSuffix(e.Path, "/") {
		return strings.HasPrefix(r.URL.Path, e.Path)
	}
	return r.URL.Path == e.Path
}

// ownEndpoint returns the own endpoint an origin-form request asks for,
// or nil. Routing is a plain list rather than an http.ServeMux: the mux
// answers a path with ".." segments with a redirect to the cleaned path,
// and the gateway must refuse such a path instead.
func (g *Gateway) ownEndpoint(r *http.Request) *Endpoint {
	return matchEndpoint(g.own, r)
}

// matchEndpoint returns the first of eps an origin-form r asks for, or nil.
func matchEndpoint(eps []Endpoint, r *http.Request) *Endpoint {
	if r.Method == http.MethodConnect || r.URL.IsAbs() {
		return nil
	}
	for i := range eps {
		if eps[i].matches(r) {
			return &eps[i]
		}
	}
	return nil
}

// builtinEndpoints are /healthz, /readyz (open to every network),
// /metrics (clients.metrics_allow) and /ca.pem (when there is a CA).
func (g *Gateway) builtinEndpoints() []Endpoint {
	opts := g.opts
	metricsHandler := promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(opts.Logger.Handler(), slog.LevelError),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
	eps := []Endpoint{
		{Path: "/healthz", Access: AccessAnyone, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Alive: the process answers. The plain "ok" stays the
			// default body (scripts grep it); JSON with the build on ask.
			reqinfo.Set(r.Context(), metrics.RouteHealth, "ok")
			probeAnswer(w, r, http.StatusOK, "ok", &opts.Build)
		})},
		{Path: "/readyz", Access: AccessAnyone, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reqinfo.Set(r.Context(), metrics.RouteHealth, "ok")
			if opts.Ready != nil {
				if err := opts.Ready(); err != nil {
					probeAnswer(w, r, http.StatusServiceUnavailable, err.Error(), nil)
					return
				}
			}
			probeAnswer(w, r, http.StatusOK, "ready", nil)
		})},
		{Path: "/metrics", Access: AccessMetrics, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reqinfo.Set(r.Context(), metrics.RouteMetrics, "ok")
			metricsHandler.ServeHTTP(w, r)
		})},
	}
	if opts.CA != nil {
		eps = append(eps, Endpoint{Path: "/ca.pem", Access: AccessClients, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reqinfo.Set(r.Context(), "ca", "ok")
			w.Header().Set("Content-Type", "application/x-pem-file")
			w.Header().Set("Content-Disposition", `attachment; filename="modelgate-ca.pem"`)
			// During a CA rotation's overlap, both certificates.
			w.Write(opts.CA.Bundle(time.Now()))
		})})
	}
	return eps
}

// probeAnswer writes a probe's status: "<status>\n" as plain text, or as
// JSON ({"status": ..., and the build when given}) to a client whose
// Accept asks for application/json.
func probeAnswer(w http.ResponseWriter, r *http.Request, code int, status string, build *buildinfo.Info) {
	w.Header().Set("Cache-Control", "no-store")
	if !strings.Contains(r.Header.Get("Accept"), "application/json") {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(code)
		io.WriteString(w, status+"\n")
		return
	}
	body := struct {
		Status string `json:"status"`
		*buildinfo.Info
	}{status, build}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(body)
}
