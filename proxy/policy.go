package proxy

import (
	"net/http"
	"strings"

	"github.com/modelgate/modelgate/reqinfo"
)

// verdict is what the edge does with a proxy-mode request for a host.
type verdict int

const (
	// intercept: answered by the gateway (the sites, or relayed by it).
	intercept verdict = iota
	// pass: a blind tunnel (CONNECT) or a plain relay (absolute URL).
	pass
	// deny: refused with 403.
	deny
)

// decide is the one policy for proxy-mode requests, CONNECT and absolute
// URL alike: intercepted hosts are answered by the gateway; with
// proxy.tunnel: deny or offline, nothing else passes; with
// proxy.tunnel_allow, only the hosts it names. A refusal comes with the
// reason for the client.
func (g *Gateway) decide(host, port string) (verdict, string) {
	switch {
	case g.opts.Intercept.Match(host, port):
		return intercept, ""
	case g.opts.DenyTunnels || g.opts.Offline:
		return deny, "this gateway only proxies the model hubs"
	case len(g.opts.TunnelAllow) > 0 && !g.opts.TunnelAllow.Match(host, port):
		return deny, "this gateway does not proxy " + host
	}
	return pass, ""
}

// serveAbsolute answers an absolute-form request (plain HTTP_PROXY use).
func (g *Gateway) serveAbsolute(w http.ResponseWriter, r *http.Request) {
	info := reqinfo.From(r.Context())
	host, port := strings.TrimSuffix(lowerASCII(r.URL.Hostname()), "."), r.URL.Port()
	if port == "" {
		port = "80"
	}
	switch v, reason := g.decide(host, port); v {
	case intercept:
		g.serveSite(w, r, host)
	case deny:
		info.Route, info.Result = "proxy", "denied"
		http.Error(w, reason, http.StatusForbidden)
	default:
		info.Route, info.Result = "proxy", "passthrough"
		g.relay(w, r)
	}
}
