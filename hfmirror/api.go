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
	// Scoped to whose credential answers: what one may see must not
	// decide what another sees.
	p := authinject.PrincipalFrom(r.Context())
	key := p.Key(hfhub.APIKey(requestDigest(r.Method, r.URL.EscapedPath(), query, reqBody)))
	if ttl >= 0 {
		if a, ok := m.cachedAPIAnswer(key); ok {
			info.Result = "hit"
			m.writeAPIAnswer(w, r, a)
			return
		}
	}

	var a apiAnswer
	var err error
	if m.Offline {
		err = errOffline
	} else {
		a, err = m.fetchAPI(r, route, key, query, reqBody)
	}
	if err == nil && a.Status == http.StatusOK {
		info.Result = "miss"
		// Kept under the route the Hub really answered (a renamed repo's
		// new name), never under an alias: the alias must always meet
		// the policy for the new name upstream.
		store := key
		if a.finalPath != "" && a.finalPath != r.URL.EscapedPath() {
			store = p.Key(hfhub.APIKey(requestDigest(r.Method, a.finalPath, query, reqBody)))
		}
		if ttl >= 0 {
			enc, _ := json.Marshal(a)
			if err := m.Index.Set(store, enc, ttl); err != nil {
				m.Logger.Warn("caching API answer", "err", err)
			}
		}
		enc, _ := json.Marshal(a)
		// Bounded in age (and, by index maintenance, in total size).
		if err := m.Index.Set(store+lastKnownSuffix, enc, m.LastKnownTTL); err != nil {
			m.Logger.Warn("caching API answer", "err", err)
		}
		m.writeAPIAnswer(w, r, a)
		return
	}
	if upstreamDown(err, a.Status) {
		if last, ok := m.cachedAPIAnswer(key + lastKnownSuffix); ok {
			info.Result = "stale"
			m.countStale("api")
			m.Logger.Warn("upstream unavailable; serving the last known answer", "path", r.URL.Path, "why", describeDown(err, a.Status))
			w.Header().Set("Warning", `110 - "Response is Stale"`)
			m.writeAPIAnswer(w, r, last)
			return
		}
	}
	info.Result = "error"
	switch {
	case err != nil:
		m.writeMetaError(w, err)
	case a.Status >= 500:
		m.writeMetaError(w, &unreachableError{err: fmt.Errorf("upstream answered %d", a.Status)})
	default:
		// The Hub's own answer (an error, or a redirect it did not
		// resolve): relayed as is.
		m.writeAPIAnswer(w, r, a)
	}
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

// lastKnownSuffix marks the index copy of the last good answer, kept
// for LastKnownTTL for when the upstream is down.
const lastKnownSuffix = "\x00last"

func (m *Mirror) cachedAPIAnswer(key string) (apiAnswer, bool) {
	b, err := m.Index.Get(key)
	if err != nil {
		return apiAnswer{}, false
	}
	var a apiAnswer
	if json.Unmarshal(b, &a) != nil {
		return apiAnswer{}, false
	}
	if a.Status == 0 {
		a.Status = http.StatusOK // written before Status was stored
	}
	return a, true
}

// fetchAPI asks upstream once for all identical concurrent requests and
// returns the buffered answer, with Xet hints removed.
func (m *Mirror) fetchAPI(r *http.Request, route hfhub.Route, key, query string, reqBody []byte) (apiAnswer, error) {
	// Detached: the answer is shared, so one client leaving must not
	// cancel it for the others.
	ctx := context.WithoutCancel(r.Context())
	v, err, _ := m.flight.Do(flightKey(ctx, key), func() (any, error) {
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
			return apiAnswer{}, &unreachableError{err: upstream.Sanitize(err)}
		}
		if len(data) > maxCachedAPIBody {
			return apiAnswer{}, &badUpstreamError{err: fmt.Errorf("API answer larger than %d bytes", maxCachedAPIBody)}
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
	})
	if err != nil {
		return apiAnswer{}, err
	}
	return v.(apiAnswer), nil
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
		m.writeMetaError(w, errOffline)
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
