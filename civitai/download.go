package civitai

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/blobhttp"
	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/reqinfo"
	"github.com/modelgate/modelgate/upstream"
)

// fileRef is what a download resolved to, as kept in the index.
type fileRef struct {
	SHA256 string `json:"sha256"` // lower-case hex; "" when CivitAI published none
	Size   int64  `json:"size"`
	Name   string `json:"name"`
	FileID int64  `json:"file_id"`
	// Computed marks a SHA256 the gateway computed because CivitAI
	// published none: the bytes were not verified against CivitAI's word.
	Computed bool `json:"computed,omitempty"`
}

// resolution is a fresh resolution: the file, and the storage answer that
// was opened to learn its size and name. The first fill takes that body
// instead of asking the storage again.
type resolution struct {
	ref     fileRef
	pending *pendingBody
}

// pendingBody hands an opened body to exactly one taker.
type pendingBody struct {
	mu   sync.Mutex
	body io.ReadCloser
	loc  *url.URL // the signed URL body came from: the fill reuses it
}

func (p *pendingBody) take() io.ReadCloser {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.body
	p.body = nil
	return b
}

// discard closes the body if nobody took it.
func (p *pendingBody) discard() {
	if b := p.take(); b != nil {
		b.Close()
	}
}

const keyDownload = "civitai/download\x00"

func downloadKey(versionID string, params url.Values) string {
	return keyDownload + versionID + "\x00" + params.Encode()
}

// serveDownload answers GET/HEAD /api/download/models/{versionID}.
func (h *Handler) serveDownload(w http.ResponseWriter, r *http.Request, versionID string) {
	ctx := r.Context()
	info := reqinfo.From(ctx)
	params, err := normalizeDownloadQuery(r.URL.Query())
	if err != nil {
		info.Result = "bad_request"
		writeJSONError(w, http.StatusBadRequest, "Bad Request", err.Error(), "")
		return
	}
	ref, pending, fromIndex, err := h.lookup(ctx, r, versionID, params)
	defer pending.discard()
	if err != nil {
		info.Result = "error"
		h.writeError(w, err)
		return
	}
	key := authinject.PrincipalFrom(ctx).Key(downloadKey(versionID, params))
	info.Result = "miss"
	if fromIndex {
		info.Result = "hit"
	}
	w.Header().Set("Content-Disposition", attachment(ref.Name))
	var (
		get  blobhttp.Getter
		etag string
	)
	if ref.SHA256 != "" {
		digest, err := cache.NewDigest(cache.SHA256, ref.SHA256)
		if err != nil {
			info.Result = "error"
			h.writeError(w, &badUpstreamError{err: err})
			return
		}
		etag = `"` + ref.SHA256 + `"`
		get = func() (*cache.Blob, cache.Result, error) {
			b, res, err := h.Blobs.Get(cache.WithClient(ctx, r.RemoteAddr), digest, ref.Size, h.source(r, versionID, params, ref, pending))
			if res != cache.Miss {
				pending.discard() // cached, or filled by another request
			}
			return b, res, err
		}
	} else {
		// CivitAI published no hash (yet): the bytes are cached under the
		// sha256 the gateway computes, and the download is mapped to it
		// once the fill completes. Until then there is no ETag to give.
		info.Detail = "no published SHA256; keyed by the computed one"
		get = func() (*cache.Blob, cache.Result, error) {
			b, res, err := h.Blobs.GetUnverified(cache.WithClient(ctx, r.RemoteAddr), key, ref.Size, h.source(r, versionID, params, ref, pending), func(d cache.Digest) {
				computed := ref
				computed.SHA256, computed.Computed = d.Hex, true
				h.remember(key, computed)
			})
			if res == cache.Miss && err == nil && h.Metrics != nil {
				h.Metrics.Unverified.Inc()
			}
			return b, res, err
		}
	}
	blobhttp.Answer(w, r, ref.Size, etag, get, h.Metrics, func(err error) { h.writeError(w, err) })
}

// lookup returns the file a download maps to: from the index, or by
// resolving it upstream once for all concurrent requests of the same
// download.
func (h *Handler) lookup(ctx context.Context, in *http.Request, versionID string, params url.Values) (fileRef, *pendingBody, bool, error) {
	key := authinject.PrincipalFrom(ctx).Key(downloadKey(versionID, params))
	if ref, ok := h.indexedRef(key); ok {
		return ref, nil, true, nil
	}
	if h.Offline {
		if ref, ok := h.lastKnownRef(key, errOffline); ok {
			return ref, nil, true, nil
		}
		return fileRef{}, nil, false, errOffline
	}
	// The resolution outlives the request that started it: its storage
	// answer may feed the fill that every waiting request reads.
	detached := context.WithoutCancel(ctx)
	v, err, _ := h.resolving.Do(key, func() (any, error) {
		if ref, ok := h.indexedRef(key); ok {
			return resolution{ref: ref}, nil
		}
		res, err := h.resolve(detached, in, versionID, params)
		if err == nil && res.ref.SHA256 != "" {
			h.remember(key, res.ref)
		}
		return res, err
	})
	if err != nil {
		if ref, ok := h.lastKnownRef(key, err); ok {
			return ref, nil, true, nil
		}
		return fileRef{}, nil, false, err
	}
	res := v.(resolution)
	return res.ref, res.pending, false, nil
}

// lastKnownRef returns the last file a download mapped to, when err says
// CivitAI is unavailable (or the gateway offline) rather than refusing.
func (h *Handler) lastKnownRef(key string, err error) (fileRef, bool) {
	var unreachable *unreachableError
	var api *apiError
	down := errors.Is(err, errOffline) || errors.As(err, &unreachable) ||
		(errors.As(err, &api) && (api.status >= 500 || api.status == http.StatusTooManyRequests))
	if !down {
		return fileRef{}, false
	}
	ref, ok := h.indexedRef(key + lastKnownSuffix)
	if ok && h.Metrics != nil {
		h.Metrics.StaleAnswers.WithLabelValues("download").Inc()
	}
	return ref, ok
}

// lastKnownSuffix marks the copy of a mapping kept for LastKnownTTL.
const lastKnownSuffix = "\x00last"

// remember maps a download to its file for DownloadTTL.
func (h *Handler) remember(key string, ref fileRef) {
	if h.DownloadTTL <= 0 {
		return
	}
	b, _ := json.Marshal(ref)
	if err := h.Index.Set(key, b, h.DownloadTTL); err != nil {
		h.Logger.Warn("caching CivitAI download mapping", "err", err)
	}
	if err := h.Index.Set(key+lastKnownSuffix, b, h.LastKnownTTL); err != nil {
		h.Logger.Warn("caching CivitAI download mapping", "err", err)
	}
}

func (h *Handler) indexedRef(key string) (fileRef, bool) {
	b, err := h.Index.Get(key)
	if err != nil {
		return fileRef{}, false
	}
	var ref fileRef
	if json.Unmarshal(b, &ref) != nil || ref.SHA256 == "" {
		return fileRef{}, false
	}
	return ref, true
}

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

// resolve finds which file a download serves and its identity: the signed
// storage URL from the download route (with the key), the storage's answer
// (exact size, file name), and the version's metadata (published SHA256).
func (h *Handler) resolve(ctx context.Context, in *http.Request, versionID string, params url.Values) (resolution, error) {
	loc, err := h.storageLocation(ctx, in, versionID, params)
	if err != nil {
		return resolution{}, err
	}
	resp, err := h.fetchStorage(ctx, loc, "")
	if err != nil {
		return resolution{}, err
	}
	pending := &pendingBody{body: resp.Body, loc: loc}
	ref := fileRef{Size: resp.ContentLength, Name: dispositionName(resp.Header.Get("Content-Disposition"))}
	if ref.Name == "" {
		ref.Name = dispositionFromURL(loc)
	}
	if ref.Size < 0 {
		pending.discard()
		return resolution{}, &badUpstreamError{err: errors.New("the storage answer has no Content-Length")}
	}
	version, err := h.version(ctx, in, versionID)
	if err != nil {
		// The file still downloads; without the metadata it just cannot
		// be verified or cached.
		h.Logger.Warn("CivitAI version metadata unavailable; serving unverified", "version", versionID, "err", err)
		return resolution{ref: ref, pending: pending}, nil
	}
	if f, ok := version.match(params.Get("fileId"), ref.Name); ok {
		ref.FileID = f.ID
		if ref.Name == "" {
			ref.Name = f.Name
		}
		if sha := strings.ToLower(f.Hashes.SHA256); sha256Hex.MatchString(sha) {
			ref.SHA256 = sha
		}
	}
	return resolution{ref: ref, pending: pending}, nil
}

// storageLocation asks the download route for the signed storage URL. It
// follows no redirect: a redirect that stays on CivitAI is its login or
// early-access page (an auth failure, never content).
func (h *Handler) storageLocation(ctx context.Context, in *http.Request, versionID string, params url.Values) (*url.URL, error) {
	req, err := h.newRequest(ctx, http.MethodGet, "/api/download/models/"+versionID, params, in)
	if err != nil {
		return nil, err
	}
	resp, err := h.Upstream.Do(req, authinject.FollowNone)
	if err != nil {
		return nil, &unreachableError{err: upstream.Sanitize(err)}
	}
	defer upstream.DrainClose(resp.Body)
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		u, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
			return nil, &badUpstreamError{err: errors.New("the download redirect has no usable Location")}
		}
		if u.Scheme == "http" && resp.Request.URL.Scheme == "https" {
			return nil, &badUpstreamError{err: authinject.ErrDowngrade}
		}
		if authinject.CanonicalHost(u) == authinject.CanonicalHost(h.Endpoint) {
			return nil, &loginRedirectError{path: u.Path}
		}
		return u, nil
	case resp.StatusCode >= 400:
		return nil, newAPIError(resp)
	default:
		if isHTML(resp.Header) {
			return nil, &loginRedirectError{path: "(an HTML page)"}
		}
		return nil, &badUpstreamError{err: fmt.Errorf("the download route answered %d where a redirect to the file was expected", resp.StatusCode)}
	}
}

// fetchStorage GETs a signed storage URL from offset on. No credential is
// attached: the URL carries its own signature, and storage hosts refuse a
// request that also has an Authorization header.
func (h *Handler) fetchStorage(ctx context.Context, u *url.URL, rng string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Accept-Encoding", "identity")
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	// Anonymous, whatever the request's principal: not even a redirect
	// from the storage host may pick up a credential.
	req = req.WithContext(authinject.WithPrincipal(ctx, authinject.Principal{Mode: authinject.ModeAnonymous}))
	resp, err := h.Upstream.Do(req, authinject.FollowAll)
	if err != nil {
		return nil, &unreachableError{err: upstream.Sanitize(err)}
	}
	if (resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent) || isHTML(resp.Header) {
		upstream.DrainClose(resp.Body)
		return nil, &badUpstreamError{status: resp.StatusCode, err: fmt.Errorf("the storage host answered %d (%s)", resp.StatusCode, resp.Header.Get("Content-Type"))}
	}
	return resp, nil
}

// source fetches a file for the cache: the body the resolution already
// opened (for the whole file), else ranges of the signed storage URL. The
// URL is resolved once and shared by every request of the fill (a
// parallel fill makes many); when the storage refuses it (expired), it is
// resolved again once, for all of them.
func (h *Handler) source(in *http.Request, versionID string, params url.Values, ref fileRef, pending *pendingBody) cache.Source {
	// The fill runs detached, with the request's identity (and, for a
	// worker's own credential, that credential).
	principal := authinject.PrincipalFrom(in.Context())
	auth := in.Header.Get("Authorization")
	var (
		mu  sync.Mutex
		loc *url.URL
		gen int
	)
	if pending != nil {
		loc = pending.loc
	}
	// location returns the signed URL, resolving a new one when there is
	// none or when the caller found generation stale refused.
	location := func(ctx context.Context, stale int) (*url.URL, int, error) {
		mu.Lock()
		defer mu.Unlock()
		if loc != nil && gen != stale {
			return loc, gen, nil
		}
		withAuth, _ := http.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
		if auth != "" {
			withAuth.Header.Set("Authorization", auth)
		}
		u, err := h.storageLocation(ctx, withAuth, versionID, params)
		if err != nil {
			return nil, 0, err
		}
		loc, gen = u, gen+1
		return loc, gen, nil
	}
	return func(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
		ctx = upstream.ForFill(authinject.WithPrincipal(ctx, principal))
		if h.Offline {
			return nil, 0, errOffline
		}
		if off == 0 && end >= ref.Size {
			if b := pending.take(); b != nil {
				// Opened on the request's context: close it when the fill
				// ends, so that shutdown does not wait for the download.
				return closeOnDone(ctx, b), 0, nil
			}
		} else {
			pending.discard() // a ranged fill does not use the whole body
		}
		u, g, err := location(ctx, -1)
		if err != nil {
			return nil, 0, err
		}
		rng := upstream.RangeHeader(off, end, ref.Size)
		resp, err := h.fetchStorage(ctx, u, rng)
		var bad *badUpstreamError
		if errors.As(err, &bad) && (bad.status == http.StatusForbidden || bad.status == http.StatusUnauthorized || bad.status == http.StatusGone) {
			// Most likely the signature expired: one new URL for everyone.
			if u, _, err = location(ctx, g); err != nil {
				return nil, 0, err
			}
			resp, err = h.fetchStorage(ctx, u, rng)
		}
		if err != nil {
			return nil, 0, err
		}
		start, err := upstream.BodyRange(resp, off, end, ref.Size)
		if err != nil {
			upstream.DrainClose(resp.Body)
			return nil, 0, &badUpstreamError{err: err}
		}
		return resp.Body, start, nil
	}
}

// closeOnDone closes body when ctx ends, unless body is closed first.
func closeOnDone(ctx context.Context, body io.ReadCloser) io.ReadCloser {
	stop := context.AfterFunc(ctx, func() { body.Close() })
	return &stoppingBody{ReadCloser: body, stop: stop}
}

type stoppingBody struct {
	io.ReadCloser
	stop func() bool
}

func (b *stoppingBody) Close() error {
	b.stop()
	return b.ReadCloser.Close()
}

// attachment is the Content-Disposition naming the real file.
func attachment(name string) string {
	if name == "" {
		return "attachment"
	}
	if v := mime.FormatMediaType("attachment", map[string]string{"filename": name}); v != "" {
		return v
	}
	return "attachment"
}

// dispositionName returns the file name a Content-Disposition value gives.
func dispositionName(v string) string {
	if v == "" {
		return ""
	}
	_, params, err := mime.ParseMediaType(v)
	if err != nil {
		return ""
	}
	return safeName(params["filename"])
}

// dispositionFromURL reads the name from the disposition a signed storage
// URL asks the storage to send (R2/S3 and B2 styles).
func dispositionFromURL(u *url.URL) string {
	q := u.Query()
	for _, k := range []string{"response-content-disposition", "b2ContentDisposition"} {
		if n := dispositionName(q.Get(k)); n != "" {
			return n
		}
	}
	return ""
}

// safeName keeps only the base name of a file name from upstream.
func safeName(n string) string {
	if i := strings.LastIndexAny(n, `/\`); i >= 0 {
		n = n[i+1:]
	}
	if n == "." || n == ".." || strings.ContainsFunc(n, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return ""
	}
	return n
}

func isHTML(h http.Header) bool {
	return strings.HasPrefix(strings.ToLower(h.Get("Content-Type")), "text/html")
}

// Scanner reads index entries by key prefix; cache.Index implements it.
type Scanner interface {
	Scan(prefix string, fn func(key string, val []byte) error) error
}

// PinnedDigests returns the blobs the pinned model versions' downloads
// map to, for eviction to keep.
func PinnedDigests(idx Scanner, versionIDs []string) map[cache.Digest]bool {
	out := map[cache.Digest]bool{}
	keep := func(_ string, val []byte) error {
		var ref fileRef
		if json.Unmarshal(val, &ref) == nil {
			if d, err := cache.NewDigest(cache.SHA256, ref.SHA256); err == nil {
				out[d] = true
			}
		}
		return nil
	}
	for _, id := range versionIDs {
		prefix := keyDownload + id + "\x00"
		idx.Scan(prefix, keep)
		// The same mappings made under other principals' scopes.
		idx.Scan(authinject.ScopePrefix, func(key string, val []byte) error {
			if strings.HasPrefix(authinject.Unscoped(key), prefix) {
				return keep(key, val)
			}
			return nil
		})
	}
	return out
}

// IsCopyKey reports whether an index key (unscoped) holds a copy of a
// CivitAI answer that may be dropped and asked for again: metadata and
// download mappings (and their last-known copies).
func IsCopyKey(key string) bool {
	return strings.HasPrefix(key, keyAPI) || strings.HasPrefix(key, keyDownload)
}
