// Package civitai serves CivitAI's download and metadata routes from the
// gateway, holding the operator's API key so that workers need none.
//
// A download (/api/download/models/{versionId}?type=…&format=…) is resolved
// to one file of the version: the gateway asks CivitAI for it with the key,
// follows the 307 to the signed storage URL itself (without the key, which
// storage hosts reject), and matches the file the storage serves to the
// version's published SHA256. The blob is stored under that hash in the
// same content-addressed cache as Hugging Face blobs, verified before it is
// published, and the mapping (version, parameters) → hash is kept for
// download_ttl because CivitAI can re-upload a version's file. Workers get
// 200/206 with the real file name and ETag = the sha256; never the signed
// URL, never the key.
package civitai

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/metrics"
	"github.com/modelgate/modelgate/origin"
	"github.com/modelgate/modelgate/reqinfo"
)

// Upstream sends requests with per-host credentials; authinject.Injector
// implements it.
type Upstream interface {
	Do(req *http.Request, follow authinject.Follow) (*http.Response, error)
}

// Index is the persistent metadata map; cache.Index implements it.
type Index interface {
	Get(key string) ([]byte, error)
	Set(key string, val []byte, ttl time.Duration) error
}

// Blobs is the content-addressed store; cache.Store implements it.
type Blobs interface {
	Get(ctx context.Context, d cache.Digest, size int64, src cache.Source) (*cache.Blob, cache.Result, error)
	GetUnverified(ctx context.Context, key string, size int64, src cache.Source, onPublish func(cache.Digest)) (*cache.Blob, cache.Result, error)
}

// Options configures the Handler.
type Options struct {
	// Endpoint is CivitAI's base URL, where requests are really sent.
	Endpoint *url.URL
	// HasKey says whether the operator's API key is configured (it can
	// change on SIGHUP); it only changes the advice in error answers.
	HasKey      func() bool
	MetadataTTL time.Duration
	DownloadTTL time.Duration
	// LastKnownTTL is how long the last file a download mapped to is kept
	// for when CivitAI is down; 0 keeps it until index maintenance trims it.
	LastKnownTTL time.Duration
	Upstream     Upstream
	Index        Index
	Blobs        Blobs
	Metrics      *metrics.Metrics
	Logger       *slog.Logger
	// Offline answers only from the cache and never touches the network.
	Offline bool
	// Retry bounds the retries of metadata calls and of the download
	// route (zero: origin.DefaultRetry).
	Retry origin.Retry
}

// Handler answers CivitAI routes.
type Handler struct {
	Options
	// resolving makes one resolution per download for all concurrent
	// requests.
	resolving origin.Flight
	// metadata keeps /api/v1/ answers in the index (coalesced, retried,
	// with last-known copies).
	metadata *origin.Answers
}

// New returns a Handler.
func New(opts Options) *Handler {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Retry == (origin.Retry{}) {
		opts.Retry = origin.DefaultRetry
	}
	h := &Handler{Options: opts}
	h.metadata = &origin.Answers{
		Index: opts.Index, Offline: opts.Offline, LastKnownTTL: opts.LastKnownTTL,
		Retry: opts.Retry, Logger: opts.Logger, OnStale: func() { h.countStale("api") },
	}
	return h
}

// countStale counts an answer served from last-known data.
func (h *Handler) countStale(kind string) {
	if h.Metrics != nil {
		h.Metrics.StaleAnswers.WithLabelValues(kind).Inc()
	}
}

var (
	downloadPath = regexp.MustCompile(`^/api/download/models/([0-9]{1,12})$`)
	metadataPath = regexp.MustCompile(`^/api/v1/(?:model-versions/(?:by-hash/[0-9A-Fa-f]{8,64}|[0-9]{1,12})|models/[0-9]{1,12})$`)
)

// IsRoute reports whether path is one of the CivitAI routes the gateway
// serves in mirror mode (the Hub has no /api/download/ or /api/v1/ routes).
func IsRoute(path string) bool {
	return strings.HasPrefix(path, "/api/download/") || strings.HasPrefix(path, "/api/v1/")
}

// ServeHTTP answers a CivitAI route; anything else is a 404.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	info := reqinfo.From(r.Context())
	path := r.URL.EscapedPath()
	if k := clientauth.FromContext(r.Context()); k != nil && !k.Allows(clientauth.ScopeCivitAI) {
		info.Route, info.Result = "civitai", "forbidden"
		writeJSONError(w, http.StatusForbidden, "Forbidden", "this worker key may not use CivitAI", "")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		info.Route, info.Result = "civitai", "bad_request"
		w.Header().Set("Allow", "GET, HEAD")
		writeJSONError(w, http.StatusMethodNotAllowed, "Method Not Allowed", "the gateway answers GET and HEAD on CivitAI routes", "")
		return
	}
	if m := downloadPath.FindStringSubmatch(path); m != nil {
		info.Route = "civitai_download"
		h.serveDownload(w, r, m[1])
		return
	}
	if metadataPath.MatchString(path) {
		info.Route = "civitai_api"
		h.serveMetadata(w, r)
		return
	}
	info.Route, info.Result = "civitai", "not_found"
	writeJSONError(w, http.StatusNotFound, "Not Found", "this CivitAI route is not served by the gateway", "")
}

// userAgent is sent upstream instead of the worker's: CivitAI answers a
// browser-like agent that lacks access with a redirect to its login page,
// and anything else with a JSON error the gateway can relay.
const userAgent = "modelgate (caching gateway)"

// newRequest builds an upstream request for path and query on the
// endpoint, with the gateway's user agent (whose credential it carries is
// the context's principal's business, and authinject's).
func (h *Handler) newRequest(ctx context.Context, method, escapedPath string, query url.Values) (*http.Request, error) {
	req, err := origin.NewRequest(ctx, h.Endpoint.String(), method, escapedPath, query.Encode(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", userAgent)
	return req, nil
}

// gatewayBase is the scheme://host the client used to reach the gateway.
func gatewayBase(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}
