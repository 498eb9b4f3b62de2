package proxy

import (
	"context"
	"errors"
	"net/http"
	"net/http/httputil"

	"github.com/modelgate/modelgate/reqinfo"
)

// relay sends a request on to the host it names, unless offline.
func (g *Gateway) relay(w http.ResponseWriter, r *http.Request) {
	if g.opts.Offline {
		reqinfo.From(r.Context()).Result = "offline"
		http.Error(w, "the gateway is offline and this is not in its cache", http.StatusGatewayTimeout)
		return
	}
	noBodyDeadline(w, r) // streamed to the upstream, as slow as it is
	g.forward.ServeHTTP(w, r)
}

// forwardWithoutCredentials relays a request to a CDN or storage host, stripped of
// anything that could authenticate the worker or the gateway there.
func (g *Gateway) forwardWithoutCredentials(w http.ResponseWriter, r *http.Request) {
	r = r.Clone(r.Context())
	r.Header.Del("Authorization")
	r.Header.Del("Cookie")
	g.relay(w, r)
}

// rewriteForward sends a relayed request to the host it was meant for:
// intercepted requests are origin-form, so the target comes from Host.
func rewriteForward(pr *httputil.ProxyRequest) {
	if !pr.In.URL.IsAbs() {
		pr.Out.URL.Scheme = "https"
		pr.Out.URL.Host = pr.In.Host
	}
	pr.Out.Host = pr.Out.URL.Host
	pr.Out.Header.Del("Proxy-Authorization")
	pr.Out.Header.Del("Proxy-Connection")
}

func (g *Gateway) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	reqinfo.From(r.Context()).Result = "error"
	if errors.Is(err, context.Canceled) {
		return
	}
	if errors.Is(err, errPrivateTarget) || errors.Is(err, errSelfTarget) {
		reqinfo.From(r.Context()).Result = "denied"
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	g.log.Warn("relaying request failed", "host", r.Host, "err", err.Error())
	http.Error(w, "the gateway could not reach "+r.Host, http.StatusBadGateway)
}
