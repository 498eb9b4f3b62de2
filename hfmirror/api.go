package hfmirror

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strconv"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/metrics"
	"github.com/modelgate/modelgate/reqinfo"
	"github.com/modelgate/modelgate/upstream"
)

const (
	// maxCachedAPIBody bounds an API answer kept in the index; larger
	// answers (huge trees are paginated anyway) are relayed uncached.
	maxCachedAPIBody = 8 << 20
	// maxAPIRequestBody bounds a paths-info request body.
	maxAPIRequestBody = 1 << 20
)

// cachedAnswer is an API answer as kept in the index.
type cachedAnswer struct {
	Header http.Header `json:"header"`
	Body   []byte      `json:"body"`
}

// serveCachedAPI answers repo info, tree and paths-info: from the index
// when an answer for the same request is still valid, otherwise from
// upstream with the token, keeping a 200 answer — forever when it is about
// a commit, for RevisionTTL when about a branch or tag.
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
	ttl := m.RevisionTTL
	if hfhub.IsCommit(route.Revision) {
		ttl = 0 // immutable
	} else if ttl <= 0 {
		ttl = -1 // not cached at all
	}
	key := hfhub.APIKey(requestDigest(r, reqBody))
	if ttl >= 0 {
		if b, err := m.Index.Get(key); err == nil {
			var a cachedAnswer
			if json.Unmarshal(b, &a) == nil {
				info.Result = "hit"
				m.writeAPIAnswer(w, r, http.StatusOK, a.Header, a.Body)
				return
			}
		}
	}

	var body io.Reader
	if r.Method == http.MethodPost {
		body = bytes.NewReader(reqBody)
	}
	req, err := m.newUpstreamRequest(r.Context(), r.Method, r.URL.EscapedPath(), r.URL.RawQuery, body, r)
	if err != nil {
		info.Result = "error"
		writeError(w, http.StatusBadRequest, "", "invalid request")
		return
	}
	resp, err := m.Upstream.Do(req, authinject.FollowSameHost)
	if err != nil {
		info.Result = "error"
		m.Logger.Warn("upstream unreachable", "err", upstream.Sanitize(err))
		writeUpstreamFailure(w, err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		info.Result = "error"
		if resp.StatusCode < 400 {
			info.Result = "passthrough"
		}
		m.relay(w, r, resp)
		return
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxCachedAPIBody+1))
	if err != nil {
		info.Result = "error"
		writeUpstreamFailure(w, err)
		return
	}
	if len(data) > maxCachedAPIBody {
		info.Result = "passthrough"
		resp.Body = io.NopCloser(io.MultiReader(bytes.NewReader(data), resp.Body))
		m.relay(w, r, resp)
		return
	}
	if route.Kind == hfhub.Tree || route.Kind == hfhub.PathsInfo {
		data = hfhub.StripXetFromEntries(data)
	}
	header := http.Header{}
	copyRelayHeaders(header, resp.Header)
	info.Result = "miss"
	if ttl >= 0 {
		enc, _ := json.Marshal(cachedAnswer{Header: header, Body: data})
		if err := m.Index.Set(key, enc, ttl); err != nil {
			m.Logger.Warn("caching API answer", "err", err)
		}
	}
	m.writeAPIAnswer(w, r, http.StatusOK, header, data)
}

// writeAPIAnswer writes a buffered API answer, pointing pagination links at
// the gateway the client used.
func (m *Mirror) writeAPIAnswer(w http.ResponseWriter, r *http.Request, status int, header http.Header, body []byte) {
	h := w.Header()
	copyRelayHeaders(h, header)
	hfhub.RewriteNextLink(h, m.Endpoint, gatewayBase(r))
	h.Set("Content-Length", itoa(int64(len(body))))
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	n, _ := w.Write(body)
	m.countUpstreamBytes(int64(n))
}

// forwardAPI relays any other /api/ request with the token, uncached.
func (m *Mirror) forwardAPI(w http.ResponseWriter, r *http.Request) {
	info := reqinfo.From(r.Context())
	var body io.Reader
	if r.Body != nil && r.Body != http.NoBody && r.Method != http.MethodGet && r.Method != http.MethodHead {
		body = http.MaxBytesReader(w, r.Body, maxAPIRequestBody)
	}
	req, err := m.newUpstreamRequest(r.Context(), r.Method, r.URL.EscapedPath(), r.URL.RawQuery, body, r)
	if err != nil {
		info.Result = "error"
		writeError(w, http.StatusBadRequest, "", "invalid request")
		return
	}
	if body != nil {
		req.ContentLength = r.ContentLength
	}
	resp, err := m.Upstream.Do(req, authinject.FollowSameHost)
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
		// A same-host redirect the Hub did not resolve for us (e.g. a
		// renamed repo's API route) stays usable through the gateway.
		if u, err := resp.Request.URL.Parse(loc); err == nil && authinject.CanonicalHost(u) == authinject.CanonicalHost(m.Endpoint) {
			loc = gatewayBase(r) + u.RequestURI()
		}
		h.Set("Location", loc)
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

// requestDigest identifies an API request for caching: method, path, query
// (canonically ordered) and body. Credentials are not part of it: every
// worker is served with the operator's identity.
func requestDigest(r *http.Request, body []byte) string {
	h := sha256.New()
	io.WriteString(h, r.Method+"\x00"+r.URL.EscapedPath()+"\x00"+r.URL.Query().Encode()+"\x00")
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
