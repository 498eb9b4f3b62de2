package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/elazarl/goproxy"

	"github.com/modelgate/modelgate/reqinfo"
)

// newConnectHandler returns goproxy set up to decide what each CONNECT
// becomes (connectPolicy). The TLS of intercepted connections is
// terminated with certificates signed by our CA, and the decoded requests
// are served by a plain net/http server (intercept.go) so that they get
// the same handler, Range handling and timeouts as mirror mode.
func (g *Gateway) newConnectHandler() *goproxy.ProxyHttpServer {
	gp := goproxy.NewProxyHttpServer()
	gp.Logger = goproxyLogger{g.log}
	gp.Tr = nil
	gp.ConnectDial = nil // never the process's own HTTPS_PROXY
	gp.OnRequest().HandleConnectFunc(g.connectPolicy)
	return gp
}

// connectPolicy is goproxy's CONNECT handler: reject malformed targets,
// then apply the one proxy policy (decide): intercept, tunnel or refuse.
// A tunnel to a private or the gateway's own address is refused here,
// before the CONNECT is answered.
func (g *Gateway) connectPolicy(target string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
	info := reqinfo.From(ctx.Req.Context())
	reject := func(status int, msg string) (*goproxy.ConnectAction, string) {
		ctx.Resp = plainResponse(ctx.Req, status, msg+"\n")
		return &goproxy.ConnectAction{Action: goproxy.ConnectReject}, target
	}
	host, port, ok := validTarget(target)
	if !ok {
		info.Result, info.Status = "bad_request", http.StatusBadRequest
		return reject(http.StatusBadRequest, "CONNECT needs a host:port target")
	}
	switch v, reason := g.decide(host, port); v {
	case intercept:
		info.Result = "intercept"
		return &goproxy.ConnectAction{Action: goproxy.ConnectHijack, Hijack: g.interceptConn}, target
	case deny:
		info.Result, info.Status = "denied", http.StatusForbidden
		return reject(http.StatusForbidden, reason)
	}
	if _, err := g.targets.resolve(ctx.Req.Context(), host, port); errors.Is(err, errPrivateTarget) || errors.Is(err, errSelfTarget) {
		info.Result, info.Status = "denied", http.StatusForbidden
		return reject(http.StatusForbidden, err.Error())
	}
	info.Result = "tunnel"
	return &goproxy.ConnectAction{Action: goproxy.ConnectHijack, Hijack: g.tunnel}, target
}

func plainResponse(req *http.Request, status int, body string) *http.Response {
	resp := goproxy.NewResponse(req, "text/plain; charset=utf-8", status, body)
	resp.Close = true
	return resp
}

// goproxyLogger sends goproxy's own messages (mostly routine connection
// ends) to debug.
type goproxyLogger struct{ l *slog.Logger }

func (g goproxyLogger) Printf(format string, v ...any) {
	g.l.Debug(fmt.Sprintf(format, v...), "component", "goproxy")
}
