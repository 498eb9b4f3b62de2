package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/modelgate/modelgate/reqinfo"
)

// intercepted is what the inner server knows of a connection: the
// CONNECT's target, and the worker key the CONNECT presented (re-checked
// on every request after a reload, so a key revoked by SIGHUP stops
// working on open connections too).
type intercepted struct {
	host, target string
	key          connKey
}

type interceptedCtx struct{}

// startInner starts the net/http server that serves the requests decoded
// from intercepted connections.
func (g *Gateway) startInner() {
	g.innerLn = newChanListener()
	g.inner = &http.Server{
		Handler:           &edge{next: http.HandlerFunc(g.routeIntercepted), log: g.log, m: g.opts.Metrics, bodyTimeout: g.opts.BodyReadTimeout, observe: g.opts.OnRequest},
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       g.opts.IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			ic, _ := g.innerConns.Load(c)
			return context.WithValue(ctx, interceptedCtx{}, ic)
		},
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				g.innerConns.Delete(c)
			}
		},
	}
	go g.inner.Serve(g.innerLn)
}

// handshakeTimeout bounds the TLS handshake of an intercepted connection;
// net/http's server would otherwise wait for it without a deadline.
const handshakeTimeout = 10 * time.Second

// interceptConn terminates TLS on a hijacked CONNECT with a certificate
// for its target and hands the connection to the inner server.
func (g *Gateway) interceptConn(req *http.Request, client net.Conn, _ *goproxy.ProxyCtx) {
	host, _, _ := validTarget(req.URL.Host)
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		client.Close()
		return
	}
	cert, err := g.certs.get(host)
	if err != nil {
		g.log.Error("signing certificate for intercepted host", "host", host, "err", err)
		client.Close()
		return
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{*cert},
		MinVersion:   tls.VersionTLS12,
		// HTTP/1.1 only: a download is one long stream, which h2 does not
		// speed up, and net/http would need h2 wired onto this listener.
		NextProtos: []string{"http/1.1"},
	}
	tconn := tls.Server(client, cfg)
	hctx, cancel := context.WithTimeout(req.Context(), handshakeTimeout)
	defer cancel()
	if err := tconn.HandshakeContext(hctx); err != nil {
		g.log.Debug("intercepted TLS handshake failed", "host", host, "err", err)
		tconn.Close()
		return
	}
	key, _ := req.Context().Value(connectKeyCtx{}).(connKey)
	g.innerConns.Store(net.Conn(tconn), &intercepted{host: host, target: req.URL.Host, key: key})
	if !g.innerLn.deliver(tconn) {
		g.innerConns.Delete(net.Conn(tconn))
		tconn.Close()
	}
}

// routeIntercepted serves a request decoded from an intercepted CONNECT;
// the CONNECT's target, not the Host header, says which site it is for.
func (g *Gateway) routeIntercepted(w http.ResponseWriter, r *http.Request) {
	reqinfo.From(r.Context()).Mode = "mitm"
	if refuseAdminKey(w, r) {
		return
	}
	ic, _ := r.Context().Value(interceptedCtx{}).(*intercepted)
	if ic == nil {
		ic = &intercepted{} // a connection the gateway did not hand over: no site matches
	}
	r, ok := g.authenticate(w, r, &ic.key)
	if !ok {
		return
	}
	if r.URL.IsAbs() {
		// An absolute-form request line inside an interception would
		// otherwise be relayed to the host it names: an open proxy that
		// proxy.tunnel and tunnel_allow never see.
		if !sameTarget(r.URL, ic.target) {
			info := reqinfo.From(r.Context())
			info.Route, info.Result = "proxy", "denied"
			http.Error(w, "requests inside this connection can only go to "+ic.host, http.StatusForbidden)
			return
		}
		r.URL.Scheme, r.URL.Host = "", ""
	}
	// The CONNECT's target decides where the request goes, not the Host
	// header the worker writes inside the tunnel.
	r.Host = ic.target
	if strings.HasSuffix(ic.target, ":443") {
		r.Host = ic.host
	}
	g.serveSite(w, r, ic.host)
}

// sameTarget reports whether the absolute URL u names the CONNECT target
// host:port (a missing port is the scheme's default).
func sameTarget(u *url.URL, target string) bool {
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return false
	}
	uport := u.Port()
	if uport == "" {
		uport = map[string]string{"http": "80", "https": "443"}[strings.ToLower(u.Scheme)]
	}
	return uport == port && strings.EqualFold(strings.TrimSuffix(u.Hostname(), "."), strings.TrimSuffix(host, "."))
}

// chanListener is a net.Listener whose connections are handed to it, so
// that intercepted TLS connections can be served by an http.Server.
type chanListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }
