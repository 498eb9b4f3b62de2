package hfmirror

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/reqinfo"
)

// XetService is the gateway's Xet data plane (xet.Service implements it):
// it issues the gateway's own Xet tokens and answers the CAS routes under
// XetCASPrefix.
type XetService interface {
	// ServeTokenFor answers the token route with a gateway token whose
	// casUrl is cas.
	ServeTokenFor(w http.ResponseWriter, typ, repo, rev, principal, cas string)
	// ServeCASAt answers the CAS routes (reconstructions, xorbs) at path;
	// the xorb URLs it hands out start with xorbBase.
	ServeCASAt(w http.ResponseWriter, r *http.Request, path, xorbBase string)
}

// XetCASPrefix is where the gateway's CAS routes live (xet.CASPrefix).
const XetCASPrefix = "/xet/cas"

// servesXet reports whether a Xet-backed file of size bytes is served over
// Xet to this request: see xetRequest, then the policy's size rule.
func (m *Mirror) servesXet(ctx context.Context, size int64) bool {
	return m.xetRequest(ctx) && m.XetPolicy.Serves(size)
}

// xetRequest reports whether this request may be served Xet at all. In
// mirror mode, and in proxy mode inside an interception when the gateway
// intercepts the Hub's Xet hosts too (the links name the Hub's own CAS
// host, which only then reaches the gateway: otherwise the gateway's
// token would travel through a blind tunnel to the real CAS); not for a
// plain http:// proxy request. Only under the gateway's own identity: its
// Xet service reads with the operator's credential, so a worker using its
// own (or none) keeps downloading over plain HTTP, as the upstream lets
// it.
func (m *Mirror) xetRequest(ctx context.Context) bool {
	p := authinject.PrincipalFrom(ctx)
	mode := reqinfo.From(ctx).Mode
	return m.Xet != nil && m.XetPolicy.Any() && (mode == "mirror" || mode == "mitm" && m.XetIntercepted) &&
		p.Mode == authinject.ModeGateway && p.Scope == ""
}

// xetCAS is the casUrl (and the base of reconstruction links) for this
// request: the gateway's own /xet/cas in mirror mode; in proxy mode the
// Hub's CAS host, intercepted and answered by ServeXetHost, as the Hub
// itself names it.
func xetCAS(r *http.Request) string {
	if reqinfo.From(r.Context()).Mode == "mitm" {
		return "https://" + hfhub.XetCASHost
	}
	return gatewayBase(r) + XetCASPrefix
}

// ServeXetHost answers proxy-mode requests to the Hub's Xet CAS and
// transfer hosts (hfhub.XetHosts) with the gateway's own Xet service: the
// reconstruction route checks the gateway's Xet token, the xorb route the
// gateway's URL signature; an upstream Xet token is worth nothing here.
// The xorb URLs it hands out name the transfer host paired with the host
// the worker used.
func (m *Mirror) ServeXetHost(w http.ResponseWriter, r *http.Request) {
	reqinfo.Set(r.Context(), "xet", "")
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	m.Xet.ServeCASAt(w, r, r.URL.Path, "https://"+hfhub.XetTransferHost(strings.ToLower(host))+"/xorbs/default")
}

// xetResolve adds the Xet hints to a resolve answer when the file is served
// over Xet, pointing both links at the gateway. For huggingface.js's
// discovery request (Accept: application/vnd.xet-fileinfo+json) it answers
// the file info itself and reports true: the answer is complete.
func (m *Mirror) xetResolve(w http.ResponseWriter, r *http.Request, route hfhub.Route, meta hfhub.FileMeta) bool {
	if meta.XetHash == "" || !m.servesXet(r.Context(), meta.Size) {
		return false
	}
	base, cas := gatewayBase(r), xetCAS(r)
	hfhub.SetXetHeaders(w.Header(), base, route.Repo, meta.Commit, meta.XetHash, cas)
	if !hfhub.AcceptsXetFileInfo(r.Header.Get("Accept")) {
		return false
	}
	reqinfo.From(r.Context()).Result = "xet"
	body, _ := json.Marshal(map[string]any{
		"hash":              meta.XetHash,
		"etag":              meta.Digest.Hex,
		"size":              meta.Size,
		"refreshUrl":        base + "/api/" + route.Repo.APIType() + "/" + route.Repo.ID + "/xet-read-token/" + meta.Commit,
		"reconstructionUrl": cas + "/v1/reconstructions/" + meta.XetHash,
	})
	w.Header().Set("Content-Type", hfhub.XetFileInfoType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("ETag", meta.ETag())
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
	return true
}

// serveXetToken answers the xet-read-token route with a gateway-issued
// token bound to the repo, the revision and the worker's key, whose casUrl
// is the gateway; never an upstream token. Without Xet served, it is
// refused as before.
func (m *Mirror) serveXetToken(w http.ResponseWriter, r *http.Request, route hfhub.Route) {
	info := reqinfo.From(r.Context())
	if !m.xetRequest(r.Context()) {
		info.Result = "forbidden"
		writeError(w, http.StatusForbidden, "", "the gateway does not hand out Xet tokens: files download over plain HTTP from the gateway")
		return
	}
	var principal string
	if k := clientauth.FromContext(r.Context()); k != nil {
		principal = k.Name
	}
	info.Result = "xet"
	m.Xet.ServeTokenFor(w, string(route.Repo.Type), route.Repo.ID, route.Revision, principal, xetCAS(r))
}

// HasXetFile reports whether the gateway's own metadata (under its own
// identity) shows the Xet file xetHash in repo at rev (a commit, or a
// branch or tag resolved through the index), of a size the Xet policy
// serves: what a gateway Xet token for that repo and revision may
// reconstruct.
func (m *Mirror) HasXetFile(_ context.Context, typ, repo, rev, xetHash string) bool {
	rp := hfhub.Repo{Type: hfhub.RepoType(typ), ID: repo}
	commit := rev
	if !hfhub.IsCommit(commit) {
		// Listed at that branch or tag (recordXetFiles).
		if b, err := m.Index.Get(hfhub.XetFileKey(xetHash, rp, rev)); err == nil {
			size, err := strconv.ParseInt(string(b), 10, 64)
			return err == nil && m.XetPolicy.Serves(size)
		}
		b, err := m.Index.Get(hfhub.RevisionKey(rp, rev))
		if err != nil {
			if b, err = m.Index.Get(hfhub.LastRevisionKey(rp, rev)); err != nil {
				return false
			}
		}
		commit = string(b)
	}
	b, err := m.Index.Get(hfhub.XetFileKey(xetHash, rp, commit))
	if err != nil {
		return false
	}
	size, err := strconv.ParseInt(string(b), 10, 64)
	return err == nil && m.XetPolicy.Serves(size)
}

// recordXetFiles records the Xet files a tree or paths-info answer of
// route lists as files of that repo at that revision, as a resolve answer
// does, so that a client going straight from a listing's xetHash to the
// token route (huggingface_hub >= 1.22, without a HEAD) is served. At a
// branch or tag the record names the revision as asked (the listing says
// no commit): the file was in that repo, which is all a token for the repo
// may open. Under the principal that asked, like every file record.
func (m *Mirror) recordXetFiles(ctx context.Context, route hfhub.Route, body []byte) {
	if m.Xet == nil || (route.Kind != hfhub.Tree && route.Kind != hfhub.PathsInfo) || route.Revision == "" {
		return
	}
	p := authinject.PrincipalFrom(ctx)
	for _, e := range hfhub.XetEntries(body) {
		if err := m.Index.Set(p.Key(hfhub.XetFileKey(e.Hash, route.Repo, route.Revision)), []byte(strconv.FormatInt(e.Size, 10)), 0); err != nil {
			m.Logger.Warn("recording the Xet files of a listing", "err", err)
			return
		}
	}
}

// filterXetEntries keeps xetHash in a tree or paths-info answer only for
// the files served over Xet to this request.
func (m *Mirror) filterXetEntries(r *http.Request, body []byte) []byte {
	route, err := hfhub.ParseRoute(r.Method, r.URL)
	if err != nil || (route.Kind != hfhub.Tree && route.Kind != hfhub.PathsInfo) {
		return body
	}
	return hfhub.FilterXetEntries(body, func(size int64) bool { return m.servesXet(r.Context(), size) })
}
