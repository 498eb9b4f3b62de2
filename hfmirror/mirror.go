// Package hfmirror serves the Hugging Face Hub's routes from the gateway,
// as a mirror that workers reach with HF_ENDPOINT=http://gate:8080.
//
// A file download resolves the revision and file to a content id (from the
// index, or with one HEAD upstream carrying the operator's token), then
// answers 200/206 itself from the blob cache — never with a redirect to a
// CDN — so the bytes cross the internet once. API routes are forwarded
// with the token; their answers are cached when they are about a commit
// (forever) or a branch (for revision_ttl). Xet hints are removed, so stock
// clients download plain HTTP from the gateway, except for the files the
// Xet policy serves over Xet from the gateway itself (xet.go). A plain
// download of a Xet-backed file whose xorbs the gateway holds, verified,
// is assembled from them instead of fetched again (xetassemble.go).
package hfmirror

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/metrics"
	"github.com/modelgate/modelgate/origin"
	"github.com/modelgate/modelgate/reqinfo"
	"github.com/modelgate/modelgate/upstream"
)

// Upstream sends a request to the Hub (or a CDN it redirects to) with the
// credentials that belong to each hop; authinject.Injector implements it.
type Upstream interface {
	Do(req *http.Request, follow authinject.Follow) (*http.Response, error)
}

// Index is the persistent metadata map; cache.Index implements it.
type Index interface {
	Get(key string) ([]byte, error)
	Set(key string, val []byte, ttl time.Duration) error
	Scan(prefix string, fn func(key string, val []byte) error) error
}

// Blobs is the content-addressed store; cache.Store implements it.
type Blobs interface {
	Get(ctx context.Context, d cache.Digest, size int64, src cache.Source) (*cache.Blob, cache.Result, error)
	Open(d cache.Digest) (*cache.Blob, error)
}

// Options configures a Mirror.
type Options struct {
	// Endpoint is the Hub base URL requests are sent to.
	Endpoint *url.URL
	// RevisionTTL is how long a branch or tag's commit, and API answers
	// about it, are trusted.
	RevisionTTL time.Duration
	// LastKnownTTL is how long the last good API answer is kept for
	// stale fallbacks; 0 keeps it until index maintenance trims it.
	LastKnownTTL time.Duration
	Upstream     Upstream
	Index        Index
	Blobs        Blobs
	Metrics      *metrics.Metrics
	Logger       *slog.Logger
	// Offline answers only from the cache and never touches the network
	// (air-gapped sites): what is not cached is a 504.
	Offline bool
	// RepoAllow and RepoDeny filter repositories for everyone
	// (huggingface.repos); a worker key may narrow them further.
	RepoAllow, RepoDeny []string
	// Retry bounds the retries of metadata calls (zero: origin.DefaultRetry).
	Retry origin.Retry
	// Xet, when set, serves Xet for the files XetPolicy picks; nil hides
	// every Xet hint (huggingface.xet: hide).
	Xet       XetService
	XetPolicy hfhub.XetPolicy
	// XetIntercepted reports that proxy mode answers the Hub's Xet CAS
	// and transfer hosts itself (mitm.hosts covers every hfhub.XetHosts
	// name on port 443). Without it proxy mode serves no Xet: the links
	// would name hosts the gateway tunnels blindly, and a worker following
	// them would take the gateway's Xet token (and its key's name) to the
	// real CAS.
	XetIntercepted bool
	// XetFiles, when set, assembles plain-HTTP downloads of Xet-backed
	// files from the xorb ranges the gateway holds and verified (any
	// principal: the file's metadata was read under the request's own,
	// and the fill checks the bytes against its sha256), instead of
	// fetching them again whole.
	XetFiles XetFiles
}

// Mirror is the http.Handler for Hub routes.
type Mirror struct {
	Options
	// heads coalesces identical concurrent file HEADs into one upstream
	// call.
	heads origin.Flight
	// answers keeps API answers in the index (coalesced, retried, with
	// last-known copies).
	answers *origin.Answers
	// metas keeps file metadata read from the index (immutable per commit).
	metas metaCache
}

// New returns a Mirror.
func New(opts Options) *Mirror {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Retry == (origin.Retry{}) {
		opts.Retry = origin.DefaultRetry
	}
	m := &Mirror{Options: opts}
	m.answers = &origin.Answers{
		Index: opts.Index, Offline: opts.Offline, LastKnownTTL: opts.LastKnownTTL,
		Retry: opts.Retry, Logger: opts.Logger, OnStale: func() { m.countStale("api") },
		// The redirect policy runs with the leader's worker key.
		Flight: origin.Flight{PerWorker: true},
	}
	m.heads.PerWorker = true
	return m
}

// ServeHTTP answers one Hub route; anything else is a 404.
func (m *Mirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	route, err := hfhub.ParseRoute(r.Method, r.URL)
	var bad *hfhub.BadRequestError
	switch {
	case errors.As(err, &bad):
		reqinfo.Set(r.Context(), "hub", "bad_request")
		writeError(w, http.StatusBadRequest, "", bad.Reason)
		return
	case err != nil:
		reqinfo.Set(r.Context(), metrics.RouteOther, "not_found")
		writeError(w, http.StatusNotFound, "", "no such route on this gateway")
		return
	}
	reqinfo.Set(r.Context(), route.Kind.Name(), "")
	r = withWorker(r)
	if route.Kind == hfhub.OtherAPI {
		m.refuseAPI(w, r)
		return
	}
	if msg := m.refusal(clientauth.FromContext(r.Context()), route); msg != "" {
		// Refused before any upstream request.
		reqinfo.From(r.Context()).Result = "forbidden"
		writeError(w, http.StatusForbidden, "", msg)
		return
	}
	switch route.Kind {
	case hfhub.Resolve:
		m.serveResolve(w, r, route)
	case hfhub.XetReadToken:
		m.serveXetToken(w, r, route)
	case hfhub.RepoInfo, hfhub.Tree, hfhub.PathsInfo:
		m.serveCachedAPI(w, r, route)
	default:
		m.forwardAPI(w, r)
	}
}

// refuseAPI answers an /api/ route that is not on the allow-list of
// repository reads: the operator's token is not lent to account-level
// calls (whoami, listings that include private repos, settings), to
// writes, or to minting Xet tokens, which would outlive a worker key.
func (m *Mirror) refuseAPI(w http.ResponseWriter, r *http.Request) {
	info := reqinfo.From(r.Context())
	info.Result = "forbidden"
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "", "the gateway forwards read-only API calls only")
		return
	}
	if strings.Contains(r.URL.Path, "/xet-read-token/") || strings.Contains(r.URL.Path, "/xet-write-token/") {
		writeError(w, http.StatusForbidden, "", "the gateway does not hand out Xet tokens: files download over plain HTTP from the gateway")
		return
	}
	writeError(w, http.StatusForbidden, "", "the gateway does not forward this API call: it lends its token to repository reads only "+
		"(files, repo info, revision, tree, paths-info, refs, commits), never to account-level calls")
}

// refusal says why a worker with key k (nil: none) may not have route
// ("" when it may): its key's scope, the global repo filter, then its
// key's repo patterns.
func (m *Mirror) refusal(k *clientauth.Key, route hfhub.Route) string {
	if k != nil && !k.Allows(clientauth.ScopeHuggingFace) {
		return "this worker key may not use Hugging Face"
	}
	if route.Repo.ID == "" {
		return ""
	}
	return m.repoRefusal(k, route.Repo.URLPrefix()+route.Repo.ID)
}

// repoRefusal applies the global repo filter, then the key's patterns.
func (m *Mirror) repoRefusal(k *clientauth.Key, repo string) string {
	switch {
	case clientauth.MatchRepo(m.RepoDeny, repo):
		return "the gateway does not serve " + repo
	case len(m.RepoAllow) > 0 && !clientauth.MatchRepo(m.RepoAllow, repo):
		return "the gateway does not serve " + repo
	case k != nil && !k.AllowsRepo(repo):
		return "this worker key may not fetch " + repo
	}
	return ""
}

// errFound stops an index scan at the first match.
var errFound = errors.New("found")

// maySeeByDigest reports whether the request may have blob d by its
// content id alone: only when the gateway saw, under the request's own
// principal, a repo holding d that the request may read. Knowing a
// digest (public metadata, even for gated files) proves nothing.
func (m *Mirror) maySeeByDigest(r *http.Request, d cache.Digest) bool {
	k := clientauth.FromContext(r.Context())
	if k != nil && !k.Allows(clientauth.ScopeHuggingFace) {
		return false
	}
	prefix := authinject.PrincipalFrom(r.Context()).Key(hfhub.SeenPrefix(d))
	err := m.Index.Scan(prefix, func(key string, _ []byte) error {
		if m.repoRefusal(k, strings.TrimPrefix(key, prefix)) == "" {
			return errFound
		}
		return nil
	})
	return errors.Is(err, errFound)
}

// newUpstreamRequest builds a request for path (already escaped) and query
// on the Hub endpoint, with the headers the Hub needs from the worker's
// request in (its credential travels in the context's principal).
func (m *Mirror) newUpstreamRequest(ctx context.Context, method, escapedPath, rawQuery string, body io.Reader, in *http.Request) (*http.Request, error) {
	// Wherever the Hub redirects this request, the worker's access
	// policy goes along.
	ctx = m.withRedirectPolicy(ctx, clientauth.FromContext(ctx))
	req, err := origin.NewRequest(ctx, m.Endpoint.String(), method, escapedPath, rawQuery, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		if v := in.Header.Get("User-Agent"); v != "" {
			req.Header.Set("User-Agent", v)
		}
		if v := hfhub.FilterAccept(in.Header.Get("Accept")); v != "" {
			req.Header.Set("Accept", v)
		}
		if v := in.Header.Get("Content-Type"); v != "" && body != nil {
			req.Header.Set("Content-Type", v)
		}
	}
	return req, nil
}

// relayHeaders are the upstream answer headers a worker gets back: what
// clients read (errors, commit, pagination, rate limits). Anything else —
// cookies, Xet tokens, upstream infrastructure details — stays here.
var relayHeaders = []string{
	"Content-Type", hfhub.HeaderErrorCode, hfhub.HeaderErrorMessage, hfhub.HeaderRepoCommit,
	"ETag", "Link", "X-Total-Count", "Retry-After", "RateLimit", "RateLimit-Policy",
}

// copyRelayHeaders sets the relayed headers of from on to, removing any
// stale value to has for them.
func copyRelayHeaders(to, from http.Header) {
	for _, k := range relayHeaders {
		to.Del(k)
		for _, v := range from.Values(k) {
			to.Add(k, v)
		}
	}
	hfhub.StripXetHeaders(to)
}

// countStale counts an answer served from last-known data.
func (m *Mirror) countStale(kind string) {
	if m.Metrics != nil {
		m.Metrics.StaleAnswers.WithLabelValues(kind).Inc()
	}
}

// writeUpstreamFailure answers for an upstream that could not be reached:
// 504, with a message that says so. Never a made-up 401/404, which would
// make a client believe the repo is gone.
func writeUpstreamFailure(w http.ResponseWriter, err error) {
	msg := "the upstream hub is unreachable"
	if upstream.IsTimeout(err) {
		msg = "the upstream hub did not answer in time"
	}
	writeError(w, http.StatusGatewayTimeout, "", msg)
}

// writeError writes a JSON error the way the Hub does (X-Error-Message and
// {"error": ...}), so clients show the message.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	h := w.Header()
	if code != "" {
		h.Set(hfhub.HeaderErrorCode, code)
	}
	h.Set(hfhub.HeaderErrorMessage, msg)
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	w.WriteHeader(status)
	io.WriteString(w, `{"error":`+jsonString(msg)+"}\n")
}
