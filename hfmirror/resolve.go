package hfmirror

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"path"
	"strconv"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/blobhttp"
	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/origin"
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
		fctx, src := cache.WithClient(ctx, r.RemoteAddr), m.blobSource(route, meta, r)
		if a := m.xetAssembly(route, meta, src); a != nil {
			// A Xet-backed file whose xorbs the gateway holds is assembled
			// from them rather than fetched again whole.
			fctx, src = cache.WithFillDone(fctx, a.done), a.source
		}
		return m.Blobs.Get(fctx, meta.Digest, meta.Size, src)
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
		err = origin.ErrOffline
	} else {
		meta, err = m.headMeta(ctx, r, route)
	}
	if err == nil || !origin.IsDown(err) {
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
// concurrent requests (retrying a transient failure), and records the
// answer in the index.
func (m *Mirror) headMeta(ctx context.Context, r *http.Request, route hfhub.Route) (hfhub.FileMeta, error) {
	p := authinject.PrincipalFrom(ctx)
	head := func(ctx context.Context) (hfhub.FileMeta, error) {
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
		if resp.StatusCode >= 400 {
			return hfhub.FileMeta{}, origin.Refused(resp)
		}
		defer upstream.DrainClose(resp.Body)
		meta, err := hfhub.ParseFileMeta(resp.Header, resp.StatusCode)
		if err != nil {
			return hfhub.FileMeta{}, origin.BadAnswer(err)
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
	}
	key := hfhub.FileKey(route.Repo, route.Revision, route.Path)
	return origin.Shared(&m.heads, key, origin.Retrying(m.Retry, head))(ctx)
}

// blobSource fetches a file's bytes for the cache. The Hub redirects a
// resolve to a signed CDN URL; the fill asks for it once (a HEAD of the
// resolve URL at the resolved commit) and sends every piece there, without
// any credential, resolving a new one once for all pieces when the CDN
// refuses it (expired). A fresh resolve per fill means a fresh signed URL,
// never a stale one from an earlier HEAD. A file the Hub serves itself (no
// redirect off the Hub) is fetched from the resolve URL.
func (m *Mirror) blobSource(route hfhub.Route, meta hfhub.FileMeta, in *http.Request) cache.Source {
	// The fill runs detached from the request, with the same identity.
	// (The principal carries whose credential it uses.)
	principal := authinject.PrincipalFrom(in.Context())
	key := clientauth.FromContext(in.Context())
	fillCtx := func(ctx context.Context) context.Context {
		ctx = upstream.ForFill(authinject.WithPrincipal(ctx, principal))
		return clientauth.WithKey(ctx, key) // for the redirect policy
	}
	cdn := &upstream.SignedURL{Resolve: func(ctx context.Context) (*url.URL, error) {
		return m.cdnLocation(fillCtx(ctx), route, meta)
	}}
	return func(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
		ctx = fillCtx(ctx)
		if m.Offline {
			return nil, 0, origin.ErrOffline
		}
		u, gen, err := cdn.Get(ctx)
		if err != nil {
			return nil, 0, err
		}
		if u == nil {
			return m.fetchFromHub(ctx, route, meta, off, end)
		}
		resp, err := m.fetchCDN(ctx, u, off, end, meta.Size)
		if err == nil && upstream.SignatureRefused(resp.StatusCode) {
			// Most likely the signature expired: one new URL for every
			// piece that meets the refusal.
			upstream.DrainClose(resp.Body)
			if u, _, err = cdn.Renew(ctx, gen); err != nil {
				return nil, 0, err
			}
			if u == nil {
				return m.fetchFromHub(ctx, route, meta, off, end)
			}
			resp, err = m.fetchCDN(ctx, u, off, end, meta.Size)
		}
		if err != nil {
			return nil, 0, upstreamError(err)
		}
		start, err := upstream.BodyRange(resp, off, end, meta.Size)
		if err != nil {
			upstream.DrainClose(resp.Body)
			return nil, 0, origin.BadAnswer(err)
		}
		return resp.Body, start, nil
	}
}

// cdnLocation asks the Hub where the file's bytes are: the signed URL of
// the redirect that leaves the Hub (its own redirects, for a renamed repo,
// are followed under the access policy), or nil when the Hub answers with
// the file itself.
func (m *Mirror) cdnLocation(ctx context.Context, route hfhub.Route, meta hfhub.FileMeta) (*url.URL, error) {
	req, err := m.newUpstreamRequest(ctx, http.MethodHead, hfhub.ResolvePath(route.Repo, meta.Commit, route.Path), "", nil, nil)
	if err != nil {
		return nil, err
	}
	resp, err := m.Upstream.Do(req, authinject.FollowSameHost)
	if err != nil {
		return nil, upstreamError(err)
	}
	defer upstream.DrainClose(resp.Body)
	if resp.StatusCode >= 400 {
		// The Hub's own refusal (token revoked, repo gone) is relayed.
		return nil, origin.Refused(resp)
	}
	if resp.StatusCode < 300 || resp.StatusCode >= 400 || resp.Header.Get("Location") == "" {
		return nil, nil
	}
	u, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, origin.BadAnswer(errors.New("the hub's download redirect has no usable Location"))
	}
	if u.Scheme == "http" && resp.Request.URL.Scheme == "https" {
		return nil, upstreamError(authinject.ErrDowngrade)
	}
	return u, nil
}

// fetchCDN GETs bytes [off, end) of the file at a signed CDN URL. No
// credential goes along: the URL carries its own signature, and object
// stores refuse a request with a second one. The caller checks the status.
func (m *Mirror) fetchCDN(ctx context.Context, u *url.URL, off, end, size int64) (*http.Response, error) {
	// Anonymous, whatever the fill's principal: not even a redirect from
	// the CDN may pick up a credential.
	ctx = authinject.WithPrincipal(ctx, authinject.Principal{Mode: authinject.ModeAnonymous})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept-Encoding", "identity")
	if rng := upstream.RangeHeader(off, end, size); rng != "" {
		req.Header.Set("Range", rng)
	}
	return m.Upstream.Do(req, authinject.FollowAll)
}

// fetchFromHub GETs bytes [off, end) of a file the Hub serves itself,
// following every redirect.
func (m *Mirror) fetchFromHub(ctx context.Context, route hfhub.Route, meta hfhub.FileMeta, off, end int64) (io.ReadCloser, int64, error) {
	req, err := m.newUpstreamRequest(ctx, http.MethodGet, hfhub.ResolvePath(route.Repo, meta.Commit, route.Path), "", nil, nil)
	if err != nil {
		return nil, 0, err
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
		// A refusal by the Hub itself (token revoked, repo gone) is
		// relayed; a CDN's is the gateway's problem, not the worker's.
		if resp.StatusCode >= 400 && authinject.CanonicalHost(resp.Request.URL) == authinject.CanonicalHost(m.Endpoint) {
			return nil, 0, origin.Refused(resp)
		}
		upstream.DrainClose(resp.Body)
		return nil, 0, origin.BadAnswer(err)
	}
	return resp.Body, start, nil
}

// upstreamError classifies an error of Upstream.Do: a refusal by the
// redirect policy stays one; anything else means no usable answer.
func upstreamError(err error) error {
	var refused *refusedError
	if errors.As(err, &refused) {
		return refused
	}
	return origin.Unreachable(err)
}

// writeMetaError renders an error of the metadata and fill steps the way
// Hub clients read errors.
func (m *Mirror) writeMetaError(w http.ResponseWriter, err error) {
	var (
		unreachable *origin.UnreachableError
		answer      *origin.RefusedError
		bad         *origin.BadAnswerError
		refused     *refusedError
	)
	switch {
	case errors.As(err, &refused):
		writeError(w, http.StatusForbidden, "", refused.msg)
	case errors.Is(err, origin.ErrOffline):
		if m.Metrics != nil {
			m.Metrics.OfflineRefusals.Inc()
		}
		writeError(w, http.StatusGatewayTimeout, "", origin.ErrOffline.Error())
	case errors.As(err, &answer) && answer.Status >= 500:
		m.Logger.Warn("upstream unavailable", "status", answer.Status)
		writeError(w, http.StatusGatewayTimeout, "", "the upstream hub is unavailable (it answered "+strconv.Itoa(answer.Status)+")")
	case errors.As(err, &answer):
		// The Hub's own refusal (gated, missing, bad revision): the
		// worker gets it as is, since clients act on X-Error-Code.
		copyRelayHeaders(w.Header(), answer.Header)
		w.Header().Del("ETag")
		w.Header().Del("Content-Length")
		body := answer.Body
		if len(body) == 0 {
			// The answer to a HEAD has no body; a GET's deserves one.
			msg := answer.Header.Get(hfhub.HeaderErrorMessage)
			if msg == "" {
				msg = http.StatusText(answer.Status)
			}
			w.Header().Set("Content-Type", "application/json")
			body = []byte(`{"error":` + jsonString(msg) + "}\n")
		}
		w.WriteHeader(answer.Status)
		w.Write(body)
	case errors.As(err, &unreachable):
		m.Logger.Warn("upstream unreachable", "err", unreachable.Err)
		writeUpstreamFailure(w, unreachable.Err)
	case errors.As(err, &bad):
		m.Logger.Warn("unusable upstream answer", "err", bad.Err)
		writeError(w, http.StatusBadGateway, "", "the upstream hub gave an answer the gateway cannot use: "+bad.Err.Error())
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

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
