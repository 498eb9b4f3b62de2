// Package admin is the operator's side of the gateway: the admin API under
// /admin/v1/ (prefetch and verify jobs, inventory, runtime pins, purge,
// audit, export/import, reload) and the read-only status page at /.
//
// It drives the cache only through the gateway's own request handlers
// (a prefetch is a set of in-process downloads, served into a discarding
// writer, so it takes the normal fill path: parallel, verified, coalesced
// with any worker already downloading the same file) and through a few
// narrow store methods defined where they are used (Store below).
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/redact"
	"github.com/modelgate/modelgate/reqinfo"
)

// Store is what the admin API needs of the blob store; *cache.Store
// implements it.
type Store interface {
	Stats() cache.Stats
	Fills() []cache.FillProgress
	Blobs(fn func(cache.BlobInfo) error) error
	Blob(d cache.Digest) (cache.BlobInfo, error)
	Has(d cache.Digest) bool
	// AwaitPublished waits for a fill of d in flight to end and reports
	// whether d is published (a reader has its last byte once the blob
	// verified, a moment before it is on disk).
	AwaitPublished(ctx context.Context, d cache.Digest) bool
	Open(d cache.Digest) (*cache.Blob, error)
	Get(ctx context.Context, d cache.Digest, size int64, src cache.Source) (*cache.Blob, cache.Result, error)
	Remove(ctx context.Context, d cache.Digest) (bool, error)
	Quarantine(ctx context.Context, d cache.Digest, dir string) (bool, error)
	Verify(ctx context.Context, d cache.Digest) error
}

// Index is the metadata index; *cache.Index implements it.
type Index interface {
	Get(key string) ([]byte, error)
	Set(key string, val []byte, ttl time.Duration) error
	Delete(key string) error
	Scan(prefix string, fn func(key string, val []byte) error) error
	DiskSize() int64
}

// Options configures the admin server.
type Options struct {
	Index Index
	Store Store
	// Hub and CivitAI are the gateway's own handlers for the Hub's and
	// CivitAI's routes; prefetch jobs send them in-process requests with
	// the gateway's principal.
	Hub, CivitAI http.Handler
	// Keys returns the admin keys (current after a reload).
	Keys func() *clientauth.Keys
	// Reload does what SIGHUP does.
	Reload func() error
	// Gatherer is read for the traffic figures of the status page.
	Gatherer prometheus.Gatherer
	Logger   *slog.Logger
	// MaxSize is cache.max_size (0: unbounded), for the status page.
	MaxSize int64
	// PrefetchFiles is how many files a job fills at a time.
	PrefetchFiles int
	// AuditTTL is how long audit records are kept.
	AuditTTL time.Duration
	// QuarantineDir receives blobs a verify job found corrupt.
	QuarantineDir string
	// Offline is shown on the status page.
	Offline bool
	// Errors, when set, holds recent warnings and errors for the page.
	Errors *ErrorRing
	// Cluster, when set, is the bucket several gateways share: pins,
	// purges, jobs and the inventory then apply cluster-wide.
	Cluster Cluster
	// Node names this gateway in the jobs it runs (cluster.node).
	Node string
}

// Server answers /admin/v1/ and the status page.
type Server struct {
	opts    Options
	log     *slog.Logger
	jobs    *jobs
	traffic *traffic
	mux     *http.ServeMux

	ctx    context.Context // ends background work at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New builds the server and resumes the jobs a previous run left queued
// or running.
func New(opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.PrefetchFiles <= 0 {
		opts.PrefetchFiles = 4
	}
	if opts.AuditTTL <= 0 {
		opts.AuditTTL = 30 * 24 * time.Hour
	}
	if opts.Keys == nil {
		opts.Keys = func() *clientauth.Keys { return &clientauth.Keys{} }
	}
	if opts.Errors == nil {
		opts.Errors = NewErrorRing(nil, 50)
	}
	s := &Server{opts: opts, log: opts.Logger}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.traffic = newTraffic(opts.Gatherer)
	s.jobs = newJobs(s)
	s.routes()
	if err := s.jobs.resume(); err != nil {
		s.cancel()
		return nil, err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.traffic.run(s.ctx)
	}()
	return s, nil
}

// Close stops the running jobs (they stay recorded as running, and
// resume at the next start) and waits for them.
func (s *Server) Close() error {
	s.cancel()
	s.jobs.wait()
	s.wg.Wait()
	return nil
}

func (s *Server) routes() {
	m := http.NewServeMux()
	m.HandleFunc("GET /admin/v1/status", s.serveStatus)
	m.HandleFunc("GET /admin/v1/jobs", s.listJobs)
	m.HandleFunc("POST /admin/v1/jobs", s.startJob)
	m.HandleFunc("GET /admin/v1/jobs/{id}", s.getJob)
	m.HandleFunc("GET /admin/v1/jobs/{id}/events", s.watchJob)
	m.HandleFunc("DELETE /admin/v1/jobs/{id}", s.cancelJob)
	m.HandleFunc("POST /admin/v1/jobs/{id}/cancel", s.cancelJob)
	m.HandleFunc("GET /admin/v1/inventory", s.serveInventory)
	m.HandleFunc("GET /admin/v1/blobs/{digest}", s.serveBlob)
	m.HandleFunc("GET /admin/v1/pins", s.listPins)
	m.HandleFunc("POST /admin/v1/pins", s.addPin)
	m.HandleFunc("DELETE /admin/v1/pins", s.removePin)
	m.HandleFunc("POST /admin/v1/purge", s.purge)
	m.HandleFunc("GET /admin/v1/audit", s.serveAudit)
	m.HandleFunc("POST /admin/v1/reload", s.reload)
	m.HandleFunc("POST /admin/v1/export", s.export)
	m.HandleFunc("POST /admin/v1/import", s.importTar)
	s.mux = m
}

// ServeHTTP answers a request the edge routed here: the client's address
// is already in admin.allow. The status page (/, its assets and its JSON)
// needs no key; the API needs an admin key when any is configured, and a
// loopback client otherwise.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	info := reqinfo.From(r.Context())
	info.Route = "admin"
	if r.URL.Path == "/" || strings.HasPrefix(r.URL.Path, "/admin/ui/") {
		info.Route = "status_page"
		if _, bad := clientauth.FromBearer(r.Header.Get("Authorization")); bad {
			// A worker key opens nothing here, not even the page.
			info.Result = "forbidden"
			writeError(w, http.StatusForbidden, "a worker key does not open the admin pages")
			return
		}
		s.servePage(w, r)
		return
	}
	if !s.authorize(w, r, info) {
		return
	}
	if info.Result == "" {
		info.Result = "ok"
	}
	s.mux.ServeHTTP(w, r)
}

// authorize applies the admin access rules and records who asked.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, info *reqinfo.Info) bool {
	authz := r.Header.Get("Authorization")
	if _, isWorker := clientauth.FromBearer(authz); isWorker {
		info.Result = "forbidden"
		writeError(w, http.StatusForbidden, "a worker key (mgw_) does not open the admin API; use an admin key (mga_)")
		return false
	}
	keys := s.opts.Keys()
	secret, presented := clientauth.AdminFromBearer(authz)
	if keys.Len() > 0 {
		k, known := keys.Lookup(secret)
		if !presented || !known {
			info.Result = "unauthorized"
			w.Header().Set("WWW-Authenticate", `Bearer realm="modelgate admin"`)
			msg := "this gateway's admin API needs an admin key: Authorization: Bearer mga_…"
			if presented {
				msg = "the admin key is not known to this gateway"
			}
			writeError(w, http.StatusUnauthorized, msg)
			return false
		}
		info.Worker = "admin:" + k.Name
		return true
	}
	if presented {
		info.Result = "unauthorized"
		writeError(w, http.StatusUnauthorized, "no admin keys are configured on this gateway (admin.keys)")
		return false
	}
	if !isLoopback(r.RemoteAddr) {
		info.Result = "forbidden"
		writeError(w, http.StatusForbidden, "without admin.keys the admin API answers loopback clients only")
		return false
	}
	return true
}

func isLoopback(remote string) bool {
	ap, err := netip.ParseAddrPort(remote)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// decodeBody reads a small JSON request body into v.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body: %w", err)
	}
	return nil
}

func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	if s.opts.Reload == nil {
		writeError(w, http.StatusNotImplemented, "this gateway was started without a configuration to reload")
		return
	}
	if err := s.opts.Reload(); err != nil {
		// A config error may quote the offending value, and a secret pasted
		// into the wrong field would come back in the answer: masked like
		// the log line of the same failure.
		writeError(w, http.StatusInternalServerError, "reload failed; the current configuration stays: "+redact.String(err.Error()))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "reloaded"})
}

var errBadInput = errors.New("bad input")
