// Package visionatrix serves Visionatrix's models catalog through the
// gateway. Visionatrix ignores HF_ENDPOINT: it downloads every model from
// the absolute Hub or CivitAI URL its catalog (models_catalog.json, fetched
// from MODELS_CATALOG_URL) names. The gateway fetches that catalog from
// visionatrix.catalog_url and hands it out with those URLs pointing at its
// own mirror routes, so a worker that sets
// MODELS_CATALOG_URL=http://gate:8080/visionatrix/ downloads every catalog
// model through the cache without a token and without trusting a CA.
package visionatrix

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/indexkeys"
	"github.com/modelgate/modelgate/reqinfo"
	"github.com/modelgate/modelgate/upstream"
)

// Prefix is the gateway path under which catalogs are served.
const Prefix = "/visionatrix/"

// Upstream sends the catalog request; authinject.Injector implements it
// (the catalog host gets no credential: it is neither the Hub nor CivitAI).
type Upstream interface {
	Do(req *http.Request, follow authinject.Follow) (*http.Response, error)
}

// Index keeps the fetched catalogs; cache.Index implements it.
type Index interface {
	Get(key string) ([]byte, error)
	Set(key string, val []byte, ttl time.Duration) error
}

// Options configures the Handler.
type Options struct {
	// CatalogURL is the base URL catalog names are resolved under
	// (visionatrix.catalog_url).
	CatalogURL *url.URL
	// TTL is how long a fetched catalog is served before it is fetched
	// again; LastKnownTTL how long the last good copy is kept for when the
	// catalog host cannot be reached.
	TTL, LastKnownTTL time.Duration
	// Origins recognise the download URLs to rewrite.
	Origins  Origins
	Upstream Upstream
	Index    Index
	Logger   *slog.Logger
	// Offline serves only the copies in the index.
	Offline bool
}

// Handler answers GET /visionatrix/<name>.
type Handler struct {
	opts     Options
	fetching singleflight.Group
}

// New returns a Handler.
func New(opts Options) *Handler {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if !strings.HasSuffix(opts.CatalogURL.Path, "/") {
		u := *opts.CatalogURL
		u.Path += "/"
		opts.CatalogURL = &u
	}
	return &Handler{opts: opts}
}

// Index keys: the fresh copy (expires after TTL) and the last good one.
const (
	keyFresh     = indexkeys.VixFresh
	keyLastKnown = indexkeys.VixLastKnown
	// maxCatalog bounds a catalog (the 2025 one is ~100 KB).
	maxCatalog = 32 << 20
)

// catalogName is what may follow /visionatrix/: one file name, as
// Visionatrix appends to MODELS_CATALOG_URL (models_catalog.json,
// models_catalog-1.2.json).
var catalogName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.json$`)

// Route is the label of catalog requests in logs and metrics.
const Route = "visionatrix"

// ServeHTTP answers GET or HEAD /visionatrix/<name>.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	info := reqinfo.From(r.Context())
	info.Route = Route
	result := func(res string) { info.Result = res }
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		result("bad_request")
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "the catalog is read with GET", http.StatusMethodNotAllowed)
		return
	}
	name, ok := strings.CutPrefix(r.URL.Path, Prefix)
	if !ok || !catalogName.MatchString(name) {
		result("bad_request")
		http.Error(w, "not a catalog name: /visionatrix/ is followed by one file name ending in .json", http.StatusBadRequest)
		return
	}
	base, err := gatewayBase(r)
	if err != nil {
		result("bad_request")
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	doc, res, err := h.catalog(r.Context(), name)
	if err != nil {
		result("error")
		var st *statusError
		if errors.As(err, &st) {
			http.Error(w, st.msg, st.status)
			return
		}
		h.opts.Logger.Warn("fetching the Visionatrix catalog failed", "name", name, "err", err.Error())
		http.Error(w, "the catalog host could not be reached and no copy is cached", http.StatusGatewayTimeout)
		return
	}
	out, _, err := Rewrite(doc, base, h.opts.Origins)
	if err != nil { // only valid catalogs are kept
		result("error")
		http.Error(w, "the cached catalog is not JSON", http.StatusBadGateway)
		return
	}
	result(res)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.Header().Set("Cache-Control", "no-cache")
	if res == "stale" {
		w.Header().Set("Warning", `110 - "the catalog host is unreachable; this is the last copy fetched"`)
	}
	if r.Method == http.MethodHead {
		return
	}
	w.Write(out)
}

// gatewayBase is the origin and path prefix the worker reached the gateway
// at, for the rewritten URLs: the worker downloads from where it read the
// catalog.
func gatewayBase(r *http.Request) (string, error) {
	u, err := url.Parse("http://" + r.Host)
	if r.Host == "" || err != nil || u.Host != r.Host || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
		return "", errors.New("the request's Host is not a host name")
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	// A worker that read the catalog under a key path downloads under it.
	return scheme + "://" + r.Host + clientauth.PathPrefix(r.Context()), nil
}

// statusError is an upstream answer relayed with its status.
type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string { return e.msg }

// catalog returns the catalog document: the fresh copy, else one fetched
// now (one fetch for all concurrent requests), else, when the catalog
// host cannot be reached or fails, the last good copy.
func (h *Handler) catalog(ctx context.Context, name string) ([]byte, string, error) {
	if b, err := h.opts.Index.Get(keyFresh + name); err == nil {
		return b, "hit", nil
	}
	if h.opts.Offline {
		if b, err := h.opts.Index.Get(keyLastKnown + name); err == nil {
			return b, "stale", nil
		}
		return nil, "", &statusError{http.StatusGatewayTimeout, "the gateway is offline and has no copy of this catalog"}
	}
	v, err, _ := h.fetching.Do(name, func() (any, error) {
		// Detached: one worker hanging up must not fail the others.
		return h.fetch(context.WithoutCancel(ctx), name)
	})
	if err == nil {
		return v.([]byte), "miss", nil
	}
	var st *statusError
	if errors.As(err, &st) && st.status < 500 {
		return nil, "", err // the host answered: a 404 is a 404
	}
	if b, gerr := h.opts.Index.Get(keyLastKnown + name); gerr == nil {
		h.opts.Logger.Warn("serving the last copy of the Visionatrix catalog", "name", name, "err", err.Error())
		return b, "stale", nil
	}
	return nil, "", err
}

func (h *Handler) fetch(ctx context.Context, name string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	u := h.opts.CatalogURL.ResolveReference(&url.URL{Path: name})
	// Anonymous: the catalog host is a third party, and not one of its
	// redirects (onto the Hub, say) may pick up a credential the gateway
	// holds for the host it lands on.
	ctx = authinject.WithPrincipal(ctx, authinject.Principal{Mode: authinject.ModeAnonymous})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := h.opts.Upstream.Do(req, authinject.FollowAll)
	if err != nil {
		return nil, upstream.Sanitize(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		status := resp.StatusCode
		if status >= 500 || status < 400 {
			status = http.StatusBadGateway
		}
		return nil, &statusError{status, fmt.Sprintf("the catalog host answered %d for %s", resp.StatusCode, name)}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxCatalog+1))
	if err != nil {
		return nil, upstream.Sanitize(err)
	}
	if len(body) > maxCatalog {
		return nil, &statusError{http.StatusBadGateway, "the catalog is larger than 32 MiB"}
	}
	if _, _, err := Rewrite(body, "", h.opts.Origins); err != nil {
		return nil, &statusError{http.StatusBadGateway, "the catalog host did not answer with JSON"}
	}
	if h.opts.TTL > 0 { // a zero TTL in the index would mean forever
		if err := h.opts.Index.Set(keyFresh+name, body, h.opts.TTL); err != nil {
			h.opts.Logger.Warn("caching the Visionatrix catalog", "err", err)
		}
	}
	if err := h.opts.Index.Set(keyLastKnown+name, body, h.opts.LastKnownTTL); err != nil {
		h.opts.Logger.Warn("caching the Visionatrix catalog", "err", err)
	}
	return body, nil
}
