package hfmirror

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"path"
	"strconv"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/blobhttp"
	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/reqinfo"
	"github.com/modelgate/modelgate/upstream"
)

// serveResolve answers HEAD/GET of a file with 200/206 from the gateway.
func (m *Mirror) serveResolve(w http.ResponseWriter, r *http.Request, route hfhub.Route) {
	ctx := r.Context()
	info := reqinfo.From(ctx)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		info.Result = "bad_request"
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "", "resolve answers GET and HEAD only")
		return
	}
	meta, fromIndex, err := m.fileMeta(ctx, r, route)
	if err != nil {
		info.Result = "error"
		m.writeMetaError(w, err)
		return
	}
	info.Result = "miss"
	if fromIndex {
		info.Result = "hit"
	}

	h := w.Header()
	h.Set(hfhub.HeaderRepoCommit, meta.Commit)
	h.Set(hfhub.HeaderLinkedEtag, meta.ETag())
	h.Set(hfhub.HeaderLinkedSize, strconv.FormatInt(meta.Size, 10))
	h.Set("Content-Disposition", contentDisposition(path.Base(route.Path)))
	if m.xetResolve(w, r, route, meta) {
		return
	}

	get := func() (*cache.Blob, cache.Result, error) {
		// The fill is counted against this client's cap.
		return m.Blobs.Get(cache.WithClient(ctx, r.RemoteAddr), meta.Digest, meta.Size, m.blobSource(route, meta, r))
	}
	blobhttp.Answer(w, r, meta.Size, meta.ETag(), get, m.Metrics, func(err error) { m.writeMetaError(w, err) })
}

// fileMeta resolves the route to a commit, content id and size: from the
// index when it can (a commit's files never change; a branch's commit is
// trusted for RevisionTTL), otherwise with one HEAD upstream for all
// identical concurrent requests. When the upstream is down (or the gateway
// offline), a branch falls back to the last commit it was known at.
func (m *Mirror) fileMeta(ctx context.Context, r *http.Request, route hfhub.Route) (hfhub.FileMeta, bool, error) {
	// Every key is scoped to whose credential the request uses: what one
	// credential may see must not decide what another sees.
	p := authinject.PrincipalFrom(ctx)
	commit := route.Revision
	if !hfhub.IsCommit(commit) {
		if b, err := m.Index.Get(p.Key(hfhub.RevisionKey(route.Repo, route.Revision))); err == nil {
			commit = string(b)
		}
	}
	if meta, ok := m.indexedMeta(p, route, commit); ok {
		return meta, true, nil
	}

	var meta hfhub.FileMeta
	var err error
	if m.Offline {
		err = errOffline
	} else {
		meta, err = m.headMeta(ctx, r, route)
	}
	if err == nil || !upstreamDown(err, 0) {
		return meta, false, err
	}
	if !hfhub.IsCommit(route.Revision) {
		if b, lerr := m.Index.Get(p.Key(hfhub.LastRevisionKey(route.Repo, route.Revision))); lerr == nil {
			if stale, ok := m.indexedMeta(p, route, string(b)); ok {
				m.countStale("revision")
				m.Logger.Warn("upstream unavailable; using the last known commit of the revision",
					"repo", route.Repo.ID, "revision", route.Revision, "commit", stale.Commit, "why", err.Error())
				return stale, true, nil
			}
		}
	}
	return meta, false, err
}

func (m *Mirror) indexedMeta(p authinject.Principal, route hfhub.Route, commit string) (hfhub.FileMeta, bool) {
	if !hfhub.IsCommit(commit) {
		return hfhub.FileMeta{}, false
	}
	key := p.Key(hfhub.FileKey(route.Repo, commit, route.Path))
	if meta, ok := m.metas.get(key); ok {
		return meta, true
	}
	b, err := m.Index.Get(key)
	if err != nil {
		return hfhub.FileMeta{}, false
	}
	meta, err := hfhub.UnmarshalMeta(b)
	if err != nil {
		return hfhub.FileMeta{}, false
	}
	m.metas.put(key, meta)
	return meta, true
}

// headMeta asks the Hub for a file's metadata, once for all identical
// concurrent requests, and records the answer in the index.
func (m *Mirror) headMeta(ctx context.Context, r *http.Request, route hfhub.Route) (hfhub.FileMeta, error) {
	p := authinject.PrincipalFrom(ctx)
	key := p.Key(hfhub.FileKey(route.Repo, route.Revision, route.Path))
	// Detached: the answer is shared, so one client leaving must not
	// cancel it for the others.
	ctx = context.WithoutCancel(ctx)
	v, err, _ := m.flight.Do(flightKey(ctx, key), func() (any, error) {
		req, err := m.newUpstreamRequest(ctx, http.MethodHead, hfhub.ResolvePath(route.Repo, route.Revision, route.Path), "", nil, r)
		if err != nil {
			return hfhub.FileMeta{}, err
		}
		// Follow the Hub's same-host redirects (small files, renamed
		// repos), stop at the one to a CDN: its headers carry
		// X-Linked-Etag/-Size.
		resp, err := m.Upstream.Do(req, authinject.FollowSameHost)
		if err != nil {
			return hfhub.FileMeta{}, upstreamError(err)
		}
		defer upstream.DrainClose(resp.Body)
		if resp.StatusCode >= 400 {
			return hfhub.FileMeta{}, &upstreamAnswerError{resp: resp, body: readLimited(resp.Body)}
		}
		meta, err := hfhub.ParseFileMeta(resp.Header, resp.StatusCode)
		if err != nil {
			return hfhub.FileMeta{}, &badUpstreamError{err: err}
		}
		// Kept under the repo the Hub really answered for (a renamed
		// repo's new name), never under an alias.
		repo := m.canonicalRepo(route.Repo, resp)
		if err := m.Index.Set(p.Key(hfhub.FileKey(repo, meta.Commit, route.Path)), hfhub.MarshalMeta(meta), 0); err != nil {
			m.Logger.Warn("caching file metadata", "err", err)
		}
		// Who may later have this blob by its content id alone (the CDN
		// path): callers of this principal that may read this repo.
		if err := m.Index.Set(p.Key(hfhub.SeenKey(meta.Digest, repo)), []byte{1}, 0); err != nil {
			m.Logger.Warn("caching file metadata", "err", err)
		}
		if meta.XetHash != "" {
			// What a gateway Xet token for this repo and commit may open
			// (the size: whether the Xet policy serves it).
			if err := m.Index.Set(p.Key(hfhub.XetFileKey(meta.XetHash, repo, meta.Commit)), []byte(strconv.FormatInt(meta.Size, 10)), 0); err != nil {
				m.Logger.Warn("caching file metadata", "err", err)
			}
		}
		if route.Revision != meta.Commit {
			if m.RevisionTTL > 0 {
				if err := m.Index.Set(p.Key(hfhub.RevisionKey(repo, route.Revision)), []byte(meta.Commit), m.RevisionTTL); err != nil {
					m.Logger.Warn("caching revision", "err", err)
				}
			}
			if err := m.Index.Set(p.Key(hfhub.LastRevisionKey(repo, route.Revision)), []byte(meta.Commit), 0); err != nil {
				m.Logger.Warn("caching revision", "err", err)
			}
		}
		return meta, nil
	})
	return v.(hfhub.FileMeta), err
}

// blobSource fetches a file's bytes for the cache: a GET of the resolve URL
// at the resolved commit, following every redirect (to the CDN, without any
// credential). A fresh resolve per fill means a fresh signed CDN URL, never
// a stale one from an earlier HEAD.
func (m *Mirror) blobSource(route hfhub.Route, meta hfhub.FileMeta, in *http.Request) cache.Source {
	// The fill runs detached from the request, with the same identity.
	principal := authinject.PrincipalFrom(in.Context())
	key := clientauth.FromContext(in.Context())
	clientAuth := in.Header.Get("Authorization")
	return func(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
		ctx = upstream.ForFill(authinject.WithPrincipal(ctx, principal))
		ctx = clientauth.WithKey(ctx, key) // for the redirect policy
		if m.Offline {
			return nil, 0, errOffline
		}
		req, err := m.newUpstreamRequest(ctx, http.MethodGet, hfhub.ResolvePath(route.Repo, meta.Commit, route.Path), "", nil, nil)
		if err != nil {
			return nil, 0, err
		}
		if clientAuth != "" {
			req.Header.Set("Authorization", clientAuth)
		}
		if rng := upstream.RangeHeader(off, end, meta.Size); rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := m.Upstream.Do(req, authinject.FollowAll)
		if err != nil {
			return nil, 0, upstreamError(err)
		}
		start, err := upstream.BodyRange(resp, off, end, meta.Size)
		if err != nil {
			body := readLimited(resp.Body)
			upstream.DrainClose(resp.Body)
			// A refusal by the Hub itself (token revoked, repo gone) is
			// relayed; a CDN's is the gateway's problem, not the worker's.
			if resp.StatusCode >= 400 && authinject.CanonicalHost(resp.Request.URL) == authinject.CanonicalHost(m.Endpoint) {
				return nil, 0, &upstreamAnswerError{resp: resp, body: body}
			}
			return nil, 0, &badUpstreamError{err: err}
		}
		return resp.Body, start, nil
	}
}

// upstreamError classifies an error of Upstream.Do: a refusal by the
// redirect policy stays one; anything else means no usable answer.
func upstreamError(err error) error {
	var refused *refusedError
	if errors.As(err, &refused) {
		return refused
	}
	return &unreachableError{err: upstream.Sanitize(err)}
}

// Errors of the metadata and fill steps, mapped to answers in one place.
type (
	// unreachableError: no answer from the upstream (dial, TLS, timeout).
	unreachableError struct{ err error }
	// upstreamAnswerError: the upstream answered with an error status.
	upstreamAnswerError struct {
		resp *http.Response
		body []byte
	}
	// badUpstreamError: the upstream answered, but not in a usable way.
	badUpstreamError struct{ err error }
)

func (e *unreachableError) Error() string { return "upstream unreachable: " + e.err.Error() }
func (e *unreachableError) Unwrap() error { return e.err }
func (e *upstreamAnswerError) Error() string {
	return "upstream answered " + strconv.Itoa(e.resp.StatusCode)
}

// Permanent tells the cache not to retry a fill the Hub refused (a 4xx
// other than a timeout or rate limit): asking again gets the same answer.
func (e *upstreamAnswerError) Permanent() bool {
	s := e.resp.StatusCode
	return s >= 400 && s < 500 && s != http.StatusRequestTimeout && s != http.StatusTooManyRequests
}
func (e *badUpstreamError) Error() string { return "unusable upstream answer: " + e.err.Error() }
func (e *badUpstreamError) Unwrap() error { return e.err }

func (m *Mirror) writeMetaError(w http.ResponseWriter, err error) {
	var (
		unreachable *unreachableError
		answer      *upstreamAnswerError
		bad         *badUpstreamError
	)
	var refused *refusedError
	switch {
	case errors.As(err, &refused):
		writeError(w, http.StatusForbidden, "", refused.msg)
	case errors.Is(err, errOffline):
		if m.Metrics != nil {
			m.Metrics.OfflineRefusals.Inc()
		}
		writeError(w, http.StatusGatewayTimeout, "", errOffline.Error())
	case errors.As(err, &answer) && answer.resp.StatusCode >= 500:
		m.Logger.Warn("upstream unavailable", "status", answer.resp.StatusCode)
		writeError(w, http.StatusGatewayTimeout, "", "the upstream hub is unavailable (it answered "+strconv.Itoa(answer.resp.StatusCode)+")")
	case errors.As(err, &answer):
		// The Hub's own refusal (gated, missing, bad revision): the
		// worker gets it as is, since clients act on X-Error-Code.
		copyRelayHeaders(w.Header(), answer.resp.Header)
		w.Header().Del("ETag")
		w.Header().Del("Content-Length")
		body := answer.body
		if len(body) == 0 {
			// The answer to a HEAD has no body; a GET's deserves one.
			msg := answer.resp.Header.Get(hfhub.HeaderErrorMessage)
			if msg == "" {
				msg = http.StatusText(answer.resp.StatusCode)
			}
			w.Header().Set("Content-Type", "application/json")
			body = []byte(`{"error":` + jsonString(msg) + "}\n")
		}
		w.WriteHeader(answer.resp.StatusCode)
		w.Write(body)
	case errors.As(err, &unreachable):
		m.Logger.Warn("upstream unreachable", "err", unreachable.err)
		writeUpstreamFailure(w, unreachable.err)
	case errors.As(err, &bad):
		m.Logger.Warn("unusable upstream answer", "err", bad.err)
		writeError(w, http.StatusBadGateway, "", "the upstream hub gave an answer the gateway cannot use: "+bad.err.Error())
	case cache.IsFillError(err):
		writeError(w, http.StatusBadGateway, "", "downloading the file from upstream failed")
	case errors.Is(err, context.Canceled):
		// The client left; nobody reads this answer.
	default:
		m.Logger.Error("serving file", "err", err)
		writeError(w, http.StatusInternalServerError, "", "internal error")
	}
}

// contentDisposition names the file the way the Hub's CDN does.
func contentDisposition(name string) string {
	v := mime.FormatMediaType("inline", map[string]string{"filename": name})
	if v == "" {
		return "inline"
	}
	return v
}

func readLimited(r io.Reader) []byte {
	b, _ := io.ReadAll(io.LimitReader(r, 64<<10))
	return b
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
