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

	"golang.org/x/sync/singleflight"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/metrics"
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
}

// Handler answers CivitAI routes.
type Handler struct {
	Options
	resolving singleflight.Group
}

// New returns a Handler.
func New(opts Options) *Handler {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Handler{Options: opts}
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
// endpoint, carrying the worker's own Authorization (which the Upstream
// replaces with the operator's key) and the gateway's user agent.
func (h *Handler) newRequest(ctx context.Context, method, escapedPath string, query url.Values, in *http.Request) (*http.Request, error) {
	target := strings.TrimSuffix(h.Endpoint.String(), "/") + escapedPath
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, target, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Accept-Encoding", "identity")
	if in != nil {
		if v := in.Header.Get("Authorization"); v != "" {
			req.Header.Set("Authorization", v)
		}
	}
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
