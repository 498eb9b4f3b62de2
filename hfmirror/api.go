package hfmirror

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/metrics"
	"github.com/modelgate/modelgate/origin"
	"github.com/modelgate/modelgate/reqinfo"
	"github.com/modelgate/modelgate/upstream"
)

const (
	// maxCachedAPIBody bounds an API answer the gateway buffers (trees
	// are paginated, 1000 entries a page; a repo's info lists its files).
	maxCachedAPIBody = 32 << 20
	// maxAPIRequestBody bounds a paths-info request body.
	maxAPIRequestBody = 1 << 20
)

// serveCachedAPI answers repo info, tree and paths-info: from the index
// when an answer for the same request is still valid, otherwise from
// upstream with the token (one upstream call for identical concurrent
// requests), keeping a 200 answer — forever when it is about a commit, for
// RevisionTTL when about a branch or tag. The last good answer is also
// kept for LastKnownTTL, to be served (marked stale) while the upstream is
// down or the gateway is offline.
func (m *Mirror) serveCachedAPI(w http.ResponseWriter, r *http.Request, route hfhub.Route) {
	info := reqinfo.From(r.Context())
	var reqBody []byte
	if r.Body != nil {
		b, err := io.ReadAll(io.LimitReader(r.Body, maxAPIRequestBody+1))
		if err != nil {
			info.Result = "error"
			writeError(w, http.StatusBadRequest, "", "reading request body failed")
			return
		}
		if len(b) > maxAPIRequestBody {
			info.Result = "bad_request"
			writeError(w, http.StatusRequestEntityTooLarge, "", "request body too large")
			return
		}
		reqBody = b
	}
	// Only what the gateway understands goes upstream and into the key:
	// junk parameters or reordered paths must not each cost an index entry.
	query := hfhub.APIQuery(route.Kind, r.URL.Query()).Encode()
	if route.Kind == hfhub.PathsInfo {
		canon, err := hfhub.PathsInfoBody(r.Header.Get("Content-Type"), reqBody)
		if err != nil {
			info.Result = "bad_request"
			writeError(w, http.StatusBadRequest, "", err.Error())
			return
		}
		reqBody = canon
	}
	ttl := m.RevisionTTL
	if hfhub.IsCommit(route.Revision) {
		ttl = 0 // immutable
	} else if ttl <= 0 {
		ttl = -1 // not cached at all
	}
	// The key is scoped to whose credential answers (by origin.Answers):
	// what one may see must not decide what another sees.
	key := hfhub.APIKey(route.Repo, route.Revision, requestDigest(r.Method, r.URL.EscapedPath(), query, reqBody))
	fetch := func(ctx context.Context) (origin.Fetched, error) {
		a, err := m.fetchAPI(ctx, r, route, query, reqBody)
		if err != nil {
			return origin.Fetched{}, err
		}
		if a.Status >= 500 || a.Status == http.StatusTooManyRequests {
			// An outage, not an answer: retried, or stood in for by the
			// last known answer.
			return origin.Fetched{}, &origin.RefusedError{Status: a.Status, Header: a.Header, Body: a.Body}
		}
		enc, _ := json.Marshal(a)
		f := origin.Fetched{Value: enc, Keep: a.Status == http.StatusOK}
		final := route
		// Kept under the route the Hub really answered (a renamed repo's
		// new name), never under an alias: the alias must always meet
		// the policy for the new name upstream.
		if a.finalPath != "" && a.finalPath != r.URL.EscapedPath() {
			if u, err := url.Parse(a.finalPath); err == nil {
				if fr, err := hfhub.ParseRoute(r.Method, u); err == nil {
					final = fr
				}
			}
			f.KeepAs = hfhub.APIKey(final.Repo, final.Revision, requestDigest(r.Method, a.finalPath, query, reqBody))
		}
		if a.Status == http.StatusOK {
			m.recordXetFiles(ctx, final, a.Body)
		}
		return f, nil
	}
	b, from, err := m.answers.Get(r.Context(), key, ttl, fetch)
	var refused *origin.RefusedError
	switch {
	case errors.As(err, &refused) && refused.Status == http.StatusTooManyRequests:
		// The Hub's rate limit, with its headers: relayed as is.
		info.Result = "error"
		m.writeAPIAnswer(w, r, apiAnswer{Status: refused.Status, Header: refused.Header, Body: refused.Body})
		return
	case err != nil:
		info.Result = "error"
		m.writeMetaError(w, err)
		return
	}
	a, ok := decodeAPIAnswer(b)
	if !ok {
		info.Result = "error"
		writeError(w, http.StatusInternalServerError, "", "internal error")
		return
	}
	switch {
	case from == origin.FromIndex:
		info.Result = "hit"
	case from == origin.FromLastKnown:
		info.Result = "stale"
		w.Header().Set("Warning", `110 - "Response is Stale"`)
	case a.Status == http.StatusOK:
		info.Result = "miss"
	default:
		// The Hub's own answer (an error, or a redirect it did not
		// resolve): relayed as is.
		info.Result = "error"
	}
	m.writeAPIAnswer(w, r, a)
}

// apiAnswer is a buffered upstream API answer, also as kept in the index.
type apiAnswer struct {
	Status int         `json:"status"`
	Header http.Header `json:"header"`
	Body   []byte      `json:"body"`
	// finalPath is the escaped path (on the Hub endpoint) of the hop
	// that answered, when it was a Hub route; not stored.
	finalPath string
}

func decodeAPIAnswer(b []byte) (apiAnswer, bool) {
	var a apiAnswer
	if json.Unmarshal(b, &a) != nil {
		return apiAnswer{}, false
	}
	if a.Status == 0 {
		a.Status = http.StatusOK // written before Status was stored
	}
	return a, true
}

// fetchAPI asks upstream (origin.Answers makes it one call for identical
// concurrent requests, detached from each) and returns the buffered
// answer, whole: writeAPIAnswer filters its Xet hints by today's policy.
func (m *Mirror) fetchAPI(ctx context.Context, r *http.Request, route hfhub.Route, query string, reqBody []byte) (apiAnswer, error) {
	var body io.Reader
	if r.Method == http.MethodPost {
		body = bytes.NewReader(reqBody)
	}
	req, err := m.newUpstreamRequest(ctx, r.Method, r.URL.EscapedPath(), query, body, r)
	if err != nil {
		return apiAnswer{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded") // PathsInfoBody's form
	}
	resp, err := m.Upstream.Do(req, authinject.FollowSameHost)
	if err != nil {
		return apiAnswer{}, upstreamError(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxCachedAPIBody+1))
	if err != nil {
		return apiAnswer{}, origin.Unreachable(err)
	}
	if len(data) > maxCachedAPIBody {
		return apiAnswer{}, origin.BadAnswer(fmt.Errorf("API answer larger than %d bytes", maxCachedAPIBody))
	}
	a := apiAnswer{Status: resp.StatusCode, Header: http.Header{}, Body: data}
	if final, onHub := m.hubRoute(resp.Request.Method, resp.Request.URL); onHub && final.err == nil && final.Kind == route.Kind {
		a.finalPath = strings.TrimPrefix(resp.Request.URL.EscapedPath(), strings.TrimSuffix(m.Endpoint.EscapedPath(), "/"))
	}
	copyRelayHeaders(a.Header, resp.Header)
	if loc := resp.Header.Get("Location"); loc != "" {
		if gl, ok := m.gatewayLocation(resp.Request.URL, loc, r); ok {
			a.Header.Set("Location", gl)
		}
	}
	return a, nil
}

// writeAPIAnswer writes a buffered API answer, pointing pagination links at
// the gateway the client used.
func (m *Mirror) writeAPIAnswer(w http.ResponseWriter, r *http.Request, a apiAnswer) {
	h := w.Header()
	copyRelayHeaders(h, a.Header)
	if loc := a.Header.Get("Location"); loc != "" {
		h.Set("Location", loc)
	}
	hfhub.RewriteNextLink(h, m.Endpoint, gatewayBase(r))
	// Kept whole in the index; which xetHash a worker sees follows the
	// Xet policy of today, not of when the answer was fetched.
	body := m.filterXetEntries(r, a.Body)
	h.Set("Content-Length", itoa(int64(len(body))))
	w.WriteHeader(a.Status)
	if r.Method == http.MethodHead {
		return
	}
	n, _ := w.Write(body)
	m.countUpstreamBytes(int64(n))
}

// forwardAPI relays any other /api/ request with the token, uncached.
func (m *Mirror) forwardAPI(w http.ResponseWriter, r *http.Request) {
	info := reqinfo.From(r.Context())
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		// The operator's token must not be lent to every worker for
		// writes (creating, committing to, deleting repositories).
		info.Result = "forbidden"
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "", "the gateway forwards read-only API calls only")
		return
	}
	if m.Offline {
		info.Result = "error"
		m.writeMetaError(w, origin.ErrOffline)
		return
	}
	req, err := m.newUpstreamRequest(r.Context(), r.Method, r.URL.EscapedPath(), r.URL.RawQuery, nil, r)
	if err != nil {
		info.Result = "error"
		writeError(w, http.StatusBadRequest, "", "invalid request")
		return
	}
	// Every redirect is followed here (credentials per hop, by host), so
	// no signed CDN URL is handed to the worker.
	resp, err := m.Upstream.Do(req, authinject.FollowAll)
	var refused *refusedError
	if errors.As(err, &refused) {
		info.Result = "forbidden"
		writeError(w, http.StatusForbidden, "", refused.msg)
		return
	}
	if err != nil {
		info.Result = "error"
		m.Logger.Warn("upstream unreachable", "err", upstream.Sanitize(err))
		writeUpstreamFailure(w, err)
		return
	}
	defer resp.Body.Close()
	info.Result = "passthrough"
	if resp.StatusCode >= 400 {
		info.Result = "error"
	}
	m.relay(w, r, resp)
}

// relay streams an upstream answer to the worker with the relayed headers.
func (m *Mirror) relay(w http.ResponseWriter, r *http.Request, resp *http.Response) {
	h := w.Header()
	copyRelayHeaders(h, resp.Header)
	if loc := resp.Header.Get("Location"); loc != "" {
		if gl, ok := m.gatewayLocation(resp.Request.URL, loc, r); ok {
			h.Set("Location", gl)
		}
	}
	hfhub.RewriteNextLink(h, m.Endpoint, gatewayBase(r))
	if resp.ContentLength >= 0 {
		h.Set("Content-Length", itoa(resp.ContentLength))
	}
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead {
		return
	}
	n, _ := io.Copy(w, resp.Body)
	m.countUpstreamBytes(n)
}

// gatewayLocation keeps a redirect on the Hub usable through the gateway
// (e.g. a renamed repo's API route the Hub did not resolve for us). A
// redirect elsewhere (a signed CDN URL) is never passed to a worker.
func (m *Mirror) gatewayLocation(base *url.URL, loc string, r *http.Request) (string, bool) {
	if u, err := base.Parse(loc); err == nil && authinject.CanonicalHost(u) == authinject.CanonicalHost(m.Endpoint) {
		return gatewayBase(r) + u.RequestURI(), true
	}
	return "", false
}

func (m *Mirror) countUpstreamBytes(n int64) {
	if m.Metrics != nil && n > 0 {
		m.Metrics.ServedBytes.WithLabelValues(metrics.SourceUpstream).Add(float64(n))
	}
}

// gatewayBase is the scheme://host the client used to reach the gateway.
func gatewayBase(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// requestDigest identifies an API request for caching: method, path, the
// canonical query and body. Whose credential asked is not part of it: the
// caller scopes the key by principal.
func requestDigest(method, escapedPath, query string, body []byte) string {
	h := sha256.New()
	io.WriteString(h, method+"\x00"+escapedPath+"\x00"+query+"\x00")
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
