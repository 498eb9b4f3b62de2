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
	"github.com/modelgate/modelgate/indexkeys"
	"github.com/modelgate/modelgate/origin"
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

func downloadKey(versionID string, params url.Values) string {
	return indexkeys.CivitAIDownloadKey(versionID, params.Encode())
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
	ref, pending, fromIndex, err := h.lookup(ctx, versionID, params)
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
			h.writeError(w, origin.BadAnswer(err))
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
// download; while CivitAI is down (or the gateway offline), the last file
// it mapped to.
func (h *Handler) lookup(ctx context.Context, versionID string, params url.Values) (fileRef, *pendingBody, bool, error) {
	key := authinject.PrincipalFrom(ctx).Key(downloadKey(versionID, params))
	if ref, ok := h.indexedRef(key); ok {
		return ref, nil, true, nil
	}
	// The resolution outlives the request that started it (origin.Shared
	// detaches it): its storage answer may feed the fill that every
	// waiting request reads.
	resolve := func(ctx context.Context) (resolution, error) {
		if ref, ok := h.indexedRef(key); ok {
			return resolution{ref: ref}, nil
		}
		res, err := h.resolve(ctx, versionID, params)
		if err == nil && res.ref.SHA256 != "" {
			h.remember(key, res.ref)
		}
		return res, err
	}
	res, err := origin.WhenOnline(h.Offline, origin.Shared(&h.resolving, downloadKey(versionID, params), resolve))(ctx)
	if err != nil {
		if ref, ok := h.lastKnownRef(key, err); ok {
			return ref, nil, true, nil
		}
		return fileRef{}, nil, false, err
	}
	return res.ref, res.pending, false, nil
}

// lastKnownRef returns the last file a download mapped to, when err says
// CivitAI is unavailable (or the gateway offline) rather than refusing.
func (h *Handler) lastKnownRef(key string, err error) (fileRef, bool) {
	if !origin.IsDown(err) {
		return fileRef{}, false
	}
	ref, ok := h.indexedRef(indexkeys.LastKnown(key))
	if ok {
		h.countStale("download")
	}
	return ref, ok
}

// remember maps a download to its file for DownloadTTL.
func (h *Handler) remember(key string, ref fileRef) {
	if h.DownloadTTL <= 0 {
		return
	}
	b, _ := json.Marshal(ref)
	if err := h.Index.Set(key, b, h.DownloadTTL); err != nil {
		h.Logger.Warn("caching CivitAI download mapping", "err", err)
	}
	if err := h.Index.Set(indexkeys.LastKnown(key), b, h.LastKnownTTL); err != nil {
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

// resolve finds which file a download serves and its identity: the
// download route's answer (a signed storage URL, fetched without any
// credential; or, from a gateway in front of CivitAI, the file itself)
// gives the exact size and file name, the version's metadata the
// published SHA256.
func (h *Handler) resolve(ctx context.Context, versionID string, params url.Values) (resolution, error) {
	resp, storage, err := h.open(ctx, versionID, params, "")
	if err != nil {
		return resolution{}, err
	}
	pending := &pendingBody{body: resp.Body, loc: storage}
	ref := fileRef{Size: resp.ContentLength, Name: dispositionName(resp.Header.Get("Content-Disposition"))}
	if ref.Name == "" && storage != nil {
		ref.Name = dispositionFromURL(storage)
	}
	// A gateway in front of CivitAI names the file by the sha256 it
	// verified; the published one, when the metadata gives it, wins.
	var served string
	if storage == nil {
		served = etagSHA256(resp.Header.Get("ETag"))
	}
	if ref.Size < 0 {
		pending.discard()
		return resolution{}, origin.BadAnswer(errors.New("the storage answer has no Content-Length"))
	}
	version, err := h.version(ctx, versionID)
	if err != nil {
		// The file still downloads; without the metadata it just cannot
		// be verified against CivitAI's word or cached.
		h.Logger.Warn("CivitAI version metadata unavailable; serving unverified", "version", versionID, "err", err)
		ref.SHA256 = served
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
	if ref.SHA256 == "" {
		ref.SHA256 = served
	}
	return resolution{ref: ref, pending: pending}, nil
}

// etagSHA256 returns the sha256 a strong ETag names ("" if none).
func etagSHA256(etag string) string {
	v, ok := strings.CutPrefix(etag, `"`)
	if !ok {
		return ""
	}
	v, ok = strings.CutSuffix(v, `"`)
	if !ok || !sha256Hex.MatchString(v) {
		return ""
	}
	return v
}

// open asks the download route for the file, or the range rng of it (retrying a
// transient failure). CivitAI answers with a redirect to a signed storage
// URL, which is fetched (storage is that URL); a gateway in front of
// CivitAI (a regional modelgate) answers with the file itself (200/206,
// named by Content-Disposition, ETag the sha256), which is just as good.
// No redirect is followed on CivitAI: one that stays there is its login or
// early-access page (an auth failure, never content).
func (h *Handler) open(ctx context.Context, versionID string, params url.Values, rng string) (resp *http.Response, storage *url.URL, err error) {
	ask := func(ctx context.Context) (*http.Response, error) {
		req, err := h.newRequest(ctx, http.MethodGet, "/api/download/models/"+versionID, params)
		if err != nil {
			return nil, err
		}
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := h.Upstream.Do(req, authinject.FollowNone)
		if err != nil {
			return nil, origin.Unreachable(err)
		}
		if resp.StatusCode >= 400 {
			return nil, origin.Refused(resp)
		}
		return resp, nil
	}
	resp, err = origin.Retrying(h.Retry, ask)(ctx)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		upstream.DrainClose(resp.Body)
		u, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
			return nil, nil, origin.BadAnswer(errors.New("the download redirect has no usable Location"))
		}
		if u.Scheme == "http" && resp.Request.URL.Scheme == "https" {
			return nil, nil, origin.BadAnswer(authinject.ErrDowngrade)
		}
		if authinject.CanonicalHost(u) == authinject.CanonicalHost(h.Endpoint) {
			return nil, nil, &loginRedirectError{path: u.Path}
		}
		resp, err := h.fetchStorage(ctx, u, rng)
		return resp, u, err
	case isHTML(resp.Header):
		upstream.DrainClose(resp.Body)
		return nil, nil, &loginRedirectError{path: "(an HTML page)"}
	case (resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent) &&
		(resp.Header.Get("Content-Disposition") != "" || etagSHA256(resp.Header.Get("ETag")) != ""):
		return resp, nil, nil
	default:
		upstream.DrainClose(resp.Body)
		return nil, nil, origin.BadAnswer(fmt.Errorf("the download route answered %d where a redirect to the file, or the file, was expected", resp.StatusCode))
	}
}

// fetchStorage GETs a signed storage URL (the range rng of it, if any). No credential is
// attached: the URL carries its own signature, and storage hosts refuse a
// request that also has an Authorization header.
func (h *Handler) fetchStorage(ctx context.Context, u *url.URL, rng string) (*http.Response, error) {
	// Anonymous, whatever the request's principal: not even a redirect
	// from the storage host may pick up a credential.
	ctx = authinject.WithPrincipal(ctx, authinject.Principal{Mode: authinject.ModeAnonymous})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Accept-Encoding", "identity")
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := h.Upstream.Do(req, authinject.FollowAll)
	if err != nil {
		return nil, origin.Unreachable(err)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusGone:
		upstream.DrainClose(resp.Body)
		return nil, origin.BadAnswer(fmt.Errorf("%w: it answered %d", errStorageRefused, resp.StatusCode))
	case (resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent) || isHTML(resp.Header):
		upstream.DrainClose(resp.Body)
		return nil, origin.BadAnswer(fmt.Errorf("the storage host answered %d (%s)", resp.StatusCode, resp.Header.Get("Content-Type")))
	}
	return resp, nil
}

// errStorageRefused: the storage host refused a signed URL (401, 403 or
// 410), most likely because its signature expired.
var errStorageRefused = errors.New("the storage host refused the signed URL")

// source fetches a file for the cache: the body the resolution already
// opened (for the whole file), else ranges of the file: from the signed
// storage URL, resolved once and shared by every request of the fill (a
// parallel fill makes many) and resolved again once, for all of them, when
// the storage refuses it (expired); or, from a gateway in front of CivitAI
// that serves the file itself, from its download route.
func (h *Handler) source(in *http.Request, versionID string, params url.Values, ref fileRef, pending *pendingBody) cache.Source {
	// The fill runs detached, with the request's identity (the principal
	// carries whose credential it uses).
	principal := authinject.PrincipalFrom(in.Context())
	var (
		mu  sync.Mutex
		loc *url.URL // the signed storage URL, when CivitAI gave one
		gen int
	)
	if pending != nil {
		loc = pending.loc
	}
	// storage returns the signed URL (nil when the download route serves
	// the file itself), asking the download route for a new one when there
	// is none yet or the caller found generation stale refused. The
	// answer to that asking is returned too when it is the wanted range.
	storage := func(ctx context.Context, stale int, rng string) (*url.URL, int, *http.Response, error) {
		mu.Lock()
		defer mu.Unlock()
		if loc != nil && gen != stale {
			return loc, gen, nil, nil
		}
		resp, u, err := h.open(ctx, versionID, params, rng)
		if err != nil {
			return nil, 0, nil, err
		}
		if u != nil {
			loc, gen = u, gen+1
		}
		return u, gen, resp, nil
	}
	return func(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
		ctx = upstream.ForFill(authinject.WithPrincipal(ctx, principal))
		if h.Offline {
			return nil, 0, origin.ErrOffline
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
		rng := upstream.RangeHeader(off, end, ref.Size)
		u, g, resp, err := storage(ctx, -1, rng)
		if err == nil && resp == nil {
			resp, err = h.fetchStorage(ctx, u, rng)
			if errors.Is(err, errStorageRefused) {
				// Most likely the signature expired: one new URL for everyone.
				if u, _, resp, err = storage(ctx, g, rng); err == nil && resp == nil {
					resp, err = h.fetchStorage(ctx, u, rng)
				}
			}
		}
		if err != nil {
			return nil, 0, err
		}
		start, err := upstream.BodyRange(resp, off, end, ref.Size)
		if err != nil {
			upstream.DrainClose(resp.Body)
			return nil, 0, origin.BadAnswer(err)
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
// map to, for eviction to keep. The mappings are read in one pass (under
// every principal), whatever the number of pins.
func PinnedDigests(idx Scanner, versionIDs []string) map[cache.Digest]bool {
	out := map[cache.Digest]bool{}
	pinned := make(map[string]bool, len(versionIDs))
	for _, id := range versionIDs {
		pinned[id] = true
	}
	if len(pinned) == 0 {
		return out
	}
	indexkeys.ScanEverywhere(idx, indexkeys.CivitAIDownload, func(key, _ string, val []byte) error {
		id, _, _ := strings.Cut(strings.TrimPrefix(key, indexkeys.CivitAIDownload), "\x00")
		if !pinned[id] {
			return nil
		}
		var ref fileRef
		if json.Unmarshal(val, &ref) == nil {
			if d, err := cache.NewDigest(cache.SHA256, ref.SHA256); err == nil {
				out[d] = true
			}
		}
		return nil
	})
	return out
}
