package proxy

import (
	"net/http"

	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/metrics"
	"github.com/modelgate/modelgate/reqinfo"
	"github.com/modelgate/modelgate/site"
)

// serveMirror answers an origin-form request (mirror mode): the first site
// whose paths include it, with its principal decided.
func (g *Gateway) serveMirror(w http.ResponseWriter, r *http.Request) {
	for i := range g.sites {
		if s := &g.sites[i]; s.Paths != nil && s.Paths(r.URL.Path) {
			s.Handler.ServeHTTP(w, g.principal(r, s))
			return
		}
	}
	reqinfo.Set(r.Context(), metrics.RouteOther, "not_found")
	http.Error(w, "no such route on this gateway", http.StatusNotFound)
}

// serveSite answers a proxy-mode request for host (intercepted, or named
// by an absolute URL): a site's own route, a site's content host, or a
// relay of anything else.
func (g *Gateway) serveSite(w http.ResponseWriter, r *http.Request, host string) {
	for i := range g.sites {
		if s := &g.sites[i]; s.Hosts.Match(host, "") && s.Paths != nil && s.Paths(r.URL.Path) {
			s.Handler.ServeHTTP(w, g.principal(r, s))
			return
		}
	}
	for i := range g.sites {
		if s := &g.sites[i]; s.ServeSelfAuth != nil && s.SelfAuthHosts.Match(host, "") {
			g.serveSelfAuth(w, r, s)
			return
		}
	}
	for i := range g.sites {
		if s := &g.sites[i]; s.CDNHosts.Match(host, "") {
			g.serveCDN(w, r, s)
			return
		}
	}
	// Any other host (another host under the model domains, such as the
	// inference router, a site's host outside its routes, or a plain
	// proxy request): relayed with the worker's own headers, which its API
	// needs, and never with a credential of the gateway's.
	info := reqinfo.From(r.Context())
	info.Route, info.Result = "proxy", "passthrough"
	g.relay(w, r)
}

// serveCDN answers a request to one of site s's content hosts: never with
// a credential, and only for keys that may use s.
func (g *Gateway) serveCDN(w http.ResponseWriter, r *http.Request, s *site.Site) {
	if s.ServeCDN != nil {
		// Whose principal the request carries decides which cached blobs
		// it may have by content id: decided here as for the site itself.
		s.ServeCDN(w, g.principal(r, s), http.HandlerFunc(g.forwardWithoutCredentials))
		return
	}
	if k := clientauth.FromContext(r.Context()); k != nil && !k.Allows(s.Name) {
		reqinfo.From(r.Context()).Result = "forbidden"
		http.Error(w, "this worker key may not use "+s.Title, http.StatusForbidden)
		return
	}
	g.forwardWithoutCredentials(w, r)
}

// serveSelfAuth answers a request to one of site s's self-authenticating
// hosts: the site checks the credential it issued, which stays on the
// request; no principal is decided, so none of the gateway's credentials
// can be attached on the way out.
func (g *Gateway) serveSelfAuth(w http.ResponseWriter, r *http.Request, s *site.Site) {
	if k := clientauth.FromContext(r.Context()); k != nil && !k.Allows(s.Name) {
		reqinfo.From(r.Context()).Result = "forbidden"
		http.Error(w, "this worker key may not use "+s.Title, http.StatusForbidden)
		return
	}
	s.ServeSelfAuth.ServeHTTP(w, r)
}
