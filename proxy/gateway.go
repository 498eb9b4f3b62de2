package proxy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/elazarl/goproxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/buildinfo"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/metrics"
	"github.com/modelgate/modelgate/mitmca"
	"github.com/modelgate/modelgate/reqinfo"
	"github.com/modelgate/modelgate/upstream"
)

// Hub serves the Hugging Face Hub's routes; hfmirror.Mirror implements it.
type Hub interface {
	http.Handler
	// ServeCDN answers a request for one of the Hub's CDN hosts, from the
	// cache when it can, otherwise through forward.
	ServeCDN(w http.ResponseWriter, r *http.Request, forward http.Handler)
}

// Options configures the gateway's one listener.
type Options struct {
	// Hub answers the Hub's routes in mirror mode and for intercepted Hub
	// hosts in proxy mode: the very same handler, so a blob cached through
	// one mode is a hit in the other.
	Hub      Hub
	Gatherer prometheus.Gatherer
	Metrics  *metrics.Metrics
	Logger   *slog.Logger

	// CA signs the certificates of intercepted hosts.
	CA *mitmca.CA
	// Intercept lists the host patterns whose CONNECTs are intercepted
	// (config mitm.hosts).
	Intercept []string
	// HubHosts are the intercepted names answered as the Hub itself.
	HubHosts []string
	// CDNHosts are host patterns (as in mitm.hosts) of the Hub's CDN and
	// Xet hosts: served from the cache by content id when the caller may
	// have it, otherwise relayed without any credential. Other intercepted
	// hosts under the model domains (the inference router, ...) are
	// relayed with the worker's own headers.
	CDNHosts []string
	// CivitAI answers CivitAI's download and metadata routes, the paths
	// CivitAIRoute accepts: on the gateway itself in mirror mode, and on
	// CivitAIHosts in proxy mode.
	CivitAI      http.Handler
	CivitAIRoute func(path string) bool
	CivitAIHosts []string
	// CivitAIDomains are domains whose intercepted subdomains are
	// CivitAI's other hosts, relayed without credentials.
	CivitAIDomains []string
	// DenyTunnels refuses CONNECTs to hosts that are not intercepted.
	DenyTunnels bool
	// Offline never relays anything to the network: tunnels are refused
	// and requests that are not answered from the cache get a 504.
	Offline bool
	// IdleTimeout closes tunnels and intercepted connections with no
	// traffic for that long.
	IdleTimeout time.Duration
	// DialTunnel opens the connection behind a blind tunnel.
	DialTunnel func(ctx context.Context, addr string) (net.Conn, error)
	// Transport sends requests the gateway relays on a worker's behalf
	// without any credential of its own (CDN misses, other intercepted
	// hosts, plain-HTTP proxy requests to other hosts). The gateway uses a
	// clone whose dials are checked against the target policy.
	Transport *http.Transport
	// AllowPrivateTargets lets tunnels and relayed requests reach
	// loopback, link-local and private addresses (used when Guard is nil).
	AllowPrivateTargets bool
	// Guard checks every dial of a tunnel or relayed request: the
	// outbound guard, with only the parent proxy exempt.
	Guard *upstream.Guard
	// TunnelAllow, when not empty, limits tunnels and plain proxy requests
	// to hosts matching these patterns.
	TunnelAllow []string
	// Limits caps the client connections open at once (Listener applies
	// it).
	Limits Limits
	// BodyReadTimeout bounds how long the body of a request the gateway
	// answers itself may take to arrive (relayed bodies are streamed).
	BodyReadTimeout time.Duration

	// ClientAllow lists the client networks served; MetricsAllow those
	// that may read /metrics (empty: ClientAllow). /healthz is open.
	ClientAllow, MetricsAllow []netip.Prefix
	// Keys returns the known worker keys (current after a SIGHUP).
	Keys func() *clientauth.Keys
	// RequireKey refuses requests without a known worker key.
	RequireKey bool
	// RequireKeyForGated serves requests without a worker key without
	// the gateway's credentials (anonymously, as the upstream sees them).
	RequireKeyForGated bool
	// PassOwnCredentials forwards a worker's own upstream credential
	// instead of the gateway's (clients.own_credentials: pass).
	PassOwnCredentials bool
	// HasCredential reports whether the gateway holds a credential for
	// the Hub (false) or CivitAI (true).
	HasCredential func(civitai bool) bool

	// Ready reports whether the gateway should get new work: nil when it
	// should, the reason when not (draining for shutdown). /readyz
	// answers 503 while it is not nil; nil Ready means always ready.
	Ready func() error
	// Build is shown by /healthz to clients that ask for JSON.
	Build buildinfo.Info
}

// Gateway is the handler of the gateway's one listener: mirror mode for
// origin-form requests, forward proxy for CONNECT and absolute-form ones.
type Gateway struct {
	opts      Options
	log       *slog.Logger
	intercept hostPatterns
	hubHosts  map[string]bool
	civHosts  map[string]bool
	cdnHosts  hostPatterns
	gp        *goproxy.ProxyHttpServer
	certs     *certStore   // leaves for intercepted hosts, from opts.CA
	own       http.Handler // /healthz, /metrics, /ca.pem
	forward   *httputil.ReverseProxy
	handler   http.Handler // the edge around route

	targets     *targets
	tunnelAllow hostPatterns

	inner      *http.Server // serves intercepted connections
	innerLn    *chanListener
	innerHosts sync.Map // *tls.Conn -> intercepted: the CONNECT's target and worker key
	tunnels    sync.Map // *keyedTunnel -> struct{}: open tunnels opened with a worker key
}

// keyedTunnel is an open blind tunnel and the worker key whose CONNECT
// opened it, so that revoking the key can close it.
type keyedTunnel struct {
	key              clientauth.Fingerprint
	client, upstream net.Conn
}

// CloseRevoked closes every tunnel and intercepted connection whose
// CONNECT presented a worker key that is no longer known (called after a
// SIGHUP reloaded the keys). Intercepted connections re-check the key on
// every request anyway; closing them also cuts a download in flight and
// an idle keep-alive. It returns how many were closed.
func (g *Gateway) CloseRevoked() int {
	keys := g.keys()
	revoked := func(fp clientauth.Fingerprint) bool {
		_, known := keys.LookupFingerprint(fp)
		return !fp.IsZero() && !known
	}
	n := 0
	g.tunnels.Range(func(k, _ any) bool {
		if t := k.(*keyedTunnel); revoked(t.key) {
			t.client.Close()
			t.upstream.Close()
			n++
		}
		return true
	})
	g.innerHosts.Range(func(k, v any) bool {
		if revoked(v.(intercepted).key) {
			k.(net.Conn).Close()
			n++
		}
		return true
	})
	return n
}

// New builds the gateway and starts the server for intercepted
// connections; Close stops it.
func New(opts Options) (*Gateway, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 5 * time.Minute
	}
	g := &Gateway{opts: opts, log: opts.Logger, hubHosts: map[string]bool{}, civHosts: map[string]bool{}}
	var err error
	if g.intercept, err = parseHostPatterns(opts.Intercept); err != nil {
		return nil, err
	}
	for _, h := range opts.HubHosts {
		g.hubHosts[h] = true
	}
	for _, h := range opts.CivitAIHosts {
		g.civHosts[h] = true
	}
	if g.cdnHosts, err = parseHostPatterns(opts.CDNHosts); err != nil {
		return nil, err
	}
	if g.tunnelAllow, err = parseHostPatterns(opts.TunnelAllow); err != nil {
		return nil, err
	}
	if len(opts.MetricsAllow) == 0 {
		g.opts.MetricsAllow = opts.ClientAllow
	}
	g.targets = newTargets(opts.Guard, opts.AllowPrivateTargets)
	g.own = ownEndpoints(opts, g.asPrincipal)
	var relay http.RoundTripper = g.targets.relayTransport(opts.Transport)
	if opts.Metrics != nil {
		relay = opts.Metrics.InstrumentUpstream(relay, func(*http.Request) string { return "other" }, authinject.CarriesCredential)
	}
	g.forward = &httputil.ReverseProxy{
		Rewrite:      rewriteForward,
		Transport:    relay,
		ErrorHandler: g.forwardError,
	}

	// goproxy decides what each CONNECT becomes; the TLS of intercepted
	// connections is terminated with certificates its signer issues from
	// our CA, and the decoded requests are served by a plain net/http
	// server so that they get the same handler, Range handling and
	// timeouts as mirror mode.
	gp := goproxy.NewProxyHttpServer()
	gp.Logger = goproxyLogger{opts.Logger}
	gp.Tr = nil
	gp.ConnectDial = nil // never the process's own HTTPS_PROXY
	gp.OnRequest().HandleConnectFunc(g.connectPolicy)
	g.gp = gp
	if opts.CA != nil {
		g.certs = newCertStore(opts.CA, 1024, nil)
	}

	g.handler = &edge{next: refuseOverCap(http.HandlerFunc(g.route)), log: opts.Logger, m: opts.Metrics, bodyTimeout: opts.BodyReadTimeout}
	g.innerLn = newChanListener()
	g.inner = &http.Server{
		Handler:           &edge{next: http.HandlerFunc(g.routeIntercepted), log: opts.Logger, m: opts.Metrics, bodyTimeout: opts.BodyReadTimeout},
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       opts.IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			ic, _ := g.innerHosts.Load(c)
			return context.WithValue(ctx, interceptedHostKey{}, ic)
		},
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				g.innerHosts.Delete(c)
			}
		},
	}
	go g.inner.Serve(g.innerLn)
	return g, nil
}

// ServeHTTP is the listener's handler.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) { g.handler.ServeHTTP(w, r) }

// SetListenAddr tells the gateway its own address, so that tunnels and
// relayed requests to itself are refused (they would loop).
func (g *Gateway) SetListenAddr(a net.Addr) { g.targets.setListenAddr(a) }

// Listener returns ln with the connection caps applied (serve it with
// NewServer, whose ConnContext marks the connections beyond them), and
// tells the gateway its own address.
func (g *Gateway) Listener(ln net.Listener) net.Listener {
	g.SetListenAddr(ln.Addr())
	return newLimitListener(ln, g.opts.Limits, g.opts.Metrics)
}

// authenticateProxy checks the worker key of a proxy request (CONNECT or
// absolute URL), given as Proxy-Authorization Basic name:key: an unknown
// key, or none when one is required, is a 407 asking for one.
func (g *Gateway) authenticateProxy(w http.ResponseWriter, r *http.Request) (*http.Request, bool) {
	keys := g.keys()
	secret, presented := clientauth.FromProxyAuthorization(r.Header.Get("Proxy-Authorization"))
	r.Header.Del("Proxy-Authorization")
	var msg string
	switch k, known := keys.Lookup(secret); {
	case presented && known:
		reqinfo.From(r.Context()).Worker = k.Name
		ctx := clientauth.WithKey(r.Context(), k)
		// An intercepted connection looks the key up again per request.
		ctx = context.WithValue(ctx, connectSecretKey{}, clientauth.FingerprintOf(secret))
		return r.WithContext(ctx), true
	case presented:
		msg = "the worker key is not known to this gateway"
	case g.opts.RequireKey:
		msg = "this gateway needs a worker key: HTTPS_PROXY=http://NAME:KEY@gateway"
	default:
		return r, true
	}
	info := reqinfo.From(r.Context())
	info.Result, info.Status = "unauthorized", http.StatusProxyAuthRequired
	if info.Route == "" {
		info.Route = "proxy"
	}
	w.Header().Set("Proxy-Authenticate", `Basic realm="modelgate"`)
	http.Error(w, msg, http.StatusProxyAuthRequired)
	return nil, false
}

// authenticate checks the worker key of a request the gateway answers
// itself (mirror mode, or decoded from an interception whose CONNECT
// presented connKey). The key (Authorization: Bearer mgw_..., or
// ?token=mgw_...) is removed from the request so it never travels on. An
// unknown key is a 401 — never a silent fall-back to the operator's token.
func (g *Gateway) authenticate(w http.ResponseWriter, r *http.Request, connKey *clientauth.Key) (*http.Request, bool) {
	r = r.Clone(r.Context())
	secret, presented := clientauth.Take(r)
	k := connKey
	var msg string
	if presented {
		found, known := g.keys().Lookup(secret)
		if !known {
			msg = "the worker key is not known to this gateway"
		}
		k = found
	}
	if msg == "" && k == nil && g.opts.RequireKey {
		msg = "this gateway needs a worker key: set HF_TOKEN (or ?token=) to the key the operator gave you"
	}
	info := reqinfo.From(r.Context())
	if msg != "" {
		info.Result, info.Status = "unauthorized", http.StatusUnauthorized
		if info.Route == "" {
			info.Route = "auth"
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Error-Message", msg)
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"error":"`+msg+`"}`+"\n")
		return nil, false
	}
	if k == nil {
		return r, true
	}
	info.Worker = k.Name
	return r.WithContext(clientauth.WithKey(r.Context(), k)), true
}

// asPrincipal decides whose identity r uses upstream (and so which slice
// of the metadata cache it sees) and records it in r's context:
//   - the worker's own credential (a non-mgw Authorization), when
//     clients.own_credentials is "pass" or the gateway has none of its own
//     for that upstream;
//   - none at all, for a request without a worker key when
//     clients.require_key is "gated";
//   - otherwise the gateway's.
func (g *Gateway) asPrincipal(r *http.Request, civitai bool) *http.Request {
	own := r.Header.Get("Authorization")
	if _, isKey := clientauth.FromBearer(own); isKey {
		own = "" // a worker key is never anyone's upstream credential
	}
	// The credential travels in the principal, never on the request: no
	// handler reads or writes Authorization, only authinject attaches it.
	r.Header.Del("Authorization")
	var worker string
	if k := clientauth.FromContext(r.Context()); k != nil {
		worker = k.Name
	}
	hasGateway := g.opts.HasCredential != nil && g.opts.HasCredential(civitai)
	p := authinject.Principal{Worker: worker}
	switch {
	case own != "" && (g.opts.PassOwnCredentials || !hasGateway):
		p = authinject.ClientPrincipal(own, worker)
	case g.opts.RequireKeyForGated && clientauth.FromContext(r.Context()) == nil:
		p = authinject.Principal{Mode: authinject.ModeAnonymous, Scope: "anon"}
	}
	return r.WithContext(authinject.WithPrincipal(r.Context(), p))
}

// keys returns the current worker keys (they can change on SIGHUP).
func (g *Gateway) keys() *clientauth.Keys {
	if g.opts.Keys == nil {
		return &clientauth.Keys{}
	}
	return g.opts.Keys()
}

// clientAllowed reports whether the request's client address is in nets.
func clientAllowed(r *http.Request, nets []netip.Prefix) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, n := range nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// Close stops serving intercepted connections.
func (g *Gateway) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return g.Shutdown(ctx)
}

// Shutdown stops serving intercepted connections, letting the requests in
// flight on them finish until ctx ends; then it cuts them. It is the
// intercepted half of a graceful stop (http.Server.Shutdown does not see
// connections hijacked by CONNECT).
func (g *Gateway) Shutdown(ctx context.Context) error {
	if err := g.inner.Shutdown(ctx); err != nil {
		return g.inner.Close()
	}
	return nil
}

// route sends each request by its form: CONNECT to the proxy policy, an
// absolute URL (plain HTTP_PROXY use) to the site it names, anything else
// to the gateway's own endpoints and the mirror.
func (g *Gateway) route(w http.ResponseWriter, r *http.Request) {
	info := reqinfo.From(r.Context())
	// Probes are open to every network, like a load balancer expects.
	health := (r.URL.Path == "/healthz" || r.URL.Path == "/readyz") && !r.URL.IsAbs() && r.Method != http.MethodConnect
	nets := g.opts.ClientAllow
	if r.URL.Path == "/metrics" && !r.URL.IsAbs() {
		nets = g.opts.MetricsAllow
	}
	if !health && !clientAllowed(r, nets) {
		// Logged (with the address) and counted by the edge.
		info.Route, info.Result = "refused_client", "refused"
		http.Error(w, "this gateway does not serve your address", http.StatusForbidden)
		return
	}
	if r.Method == http.MethodConnect || r.URL.IsAbs() {
		var ok bool
		if r, ok = g.authenticateProxy(w, r); !ok {
			return
		}
		// A plain proxy request may also carry a key the way a mirror
		// request does (HF_TOKEN=mgw_...); take it off it too.
		if r.Method != http.MethodConnect {
			if r, ok = g.authenticate(w, r, clientauth.FromContext(r.Context())); !ok {
				return
			}
		}
	} else if !health && r.URL.Path != "/ca.pem" && r.URL.Path != "/metrics" {
		// The gateway's own endpoints answer without a worker key: the
		// network allow-lists govern them (a scraper has no key).
		var ok bool
		if r, ok = g.authenticate(w, r, nil); !ok {
			return
		}
	}
	switch {
	case r.Method == http.MethodConnect:
		info.Mode = "proxy"
		info.Route = "connect"
		g.gp.ServeHTTP(w, r)
	case r.URL.IsAbs():
		info.Mode = "proxy"
		host, port := strings.TrimSuffix(lowerASCII(r.URL.Hostname()), "."), r.URL.Port()
		if port == "" {
			port = "80"
		}
		switch {
		case g.intercept.match(host, port):
			g.serveSite(w, r, host)
		case g.opts.DenyTunnels || g.opts.Offline:
			info.Route, info.Result = "proxy", "denied"
			http.Error(w, "this gateway only proxies the model hubs", http.StatusForbidden)
		case len(g.tunnelAllow) > 0 && !g.tunnelAllow.match(host, port):
			info.Route, info.Result = "proxy", "denied"
			http.Error(w, "this gateway does not proxy "+host, http.StatusForbidden)
		default:
			info.Route, info.Result = "proxy", "passthrough"
			g.relay(w, r)
		}
	default:
		info.Mode = "mirror"
		g.own.ServeHTTP(w, r)
	}
}

type interceptedHostKey struct{}

// connectSecretKey carries the fingerprint of a CONNECT's worker key to
// its interception (never the key: contexts outlive the edge's part).
type connectSecretKey struct{}

// intercepted is what the inner server knows of a connection: the
// CONNECT's target, and the worker key the CONNECT presented (kept as its
// fingerprint, never the key, and looked up again on every request, so a
// key revoked by SIGHUP stops working on open connections too).
type intercepted struct {
	host, target string
	key          clientauth.Fingerprint
}

// routeIntercepted serves a request decoded from an intercepted CONNECT;
// the CONNECT's target, not the Host header, says which site it is for.
func (g *Gateway) routeIntercepted(w http.ResponseWriter, r *http.Request) {
	reqinfo.From(r.Context()).Mode = "mitm"
	ic, _ := r.Context().Value(interceptedHostKey{}).(intercepted)
	var connKey *clientauth.Key
	if !ic.key.IsZero() {
		k, known := g.keys().LookupFingerprint(ic.key)
		if !known {
			info := reqinfo.From(r.Context())
			info.Route, info.Result = "auth", "unauthorized"
			http.Error(w, "the worker key is not known to this gateway", http.StatusUnauthorized)
			return
		}
		connKey = k
	}
	r, ok := g.authenticate(w, r, connKey)
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
	host := ic.host
	r.Host = ic.target
	if strings.HasSuffix(ic.target, ":443") {
		r.Host = ic.host
	}
	g.serveSite(w, r, host)
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

// serveSite answers a proxy-mode request for host.
func (g *Gateway) serveSite(w http.ResponseWriter, r *http.Request, host string) {
	switch {
	case g.hubHosts[host]:
		g.opts.Hub.ServeHTTP(w, g.asPrincipal(r, false))
	case g.civHosts[host] && g.opts.CivitAI != nil && g.opts.CivitAIRoute(r.URL.Path):
		g.opts.CivitAI.ServeHTTP(w, g.asPrincipal(r, true))
	case isUnder(host, g.opts.CivitAIDomains...):
		// CivitAI's other hosts (images, storage): relayed, never with a
		// credential, and only for keys that may use CivitAI.
		if k := clientauth.FromContext(r.Context()); k != nil && !k.Allows(clientauth.ScopeCivitAI) {
			reqinfo.From(r.Context()).Result = "forbidden"
			http.Error(w, "this worker key may not use CivitAI", http.StatusForbidden)
			return
		}
		g.forwardWithoutCredentials(w, r)
	case g.cdnHosts.match(host, ""):
		// Whose principal the request carries decides which cached blobs
		// it may have by content id: decided here as for the Hub itself.
		g.opts.Hub.ServeCDN(w, g.asPrincipal(r, false), http.HandlerFunc(g.forwardWithoutCredentials))
	default:
		// Any other host (another host under the model domains, such as
		// the inference router, or a plain proxy request): relayed with
		// the worker's own headers, which its API needs, and never with a
		// credential of the gateway's.
		info := reqinfo.From(r.Context())
		info.Route, info.Result = "proxy", "passthrough"
		g.relay(w, r)
	}
}

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

// connectPolicy is goproxy's CONNECT handler: intercept the model hosts,
// tunnel (or refuse) the rest, reject malformed targets.
func (g *Gateway) connectPolicy(target string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
	info := reqinfo.From(ctx.Req.Context())
	host, port, ok := validTarget(target)
	switch {
	case !ok:
		info.Result, info.Status = "bad_request", http.StatusBadRequest
		ctx.Resp = plainResponse(ctx.Req, http.StatusBadRequest, "CONNECT needs a host:port target\n")
		return &goproxy.ConnectAction{Action: goproxy.ConnectReject}, target
	case g.intercept.match(host, port):
		info.Result = "intercept"
		return &goproxy.ConnectAction{Action: goproxy.ConnectHijack, Hijack: g.interceptConn}, target
	case g.opts.DenyTunnels || g.opts.Offline:
		info.Result, info.Status = "denied", http.StatusForbidden
		ctx.Resp = plainResponse(ctx.Req, http.StatusForbidden, "this gateway only proxies the model hubs\n")
		return &goproxy.ConnectAction{Action: goproxy.ConnectReject}, target
	case len(g.tunnelAllow) > 0 && !g.tunnelAllow.match(host, port):
		info.Result, info.Status = "denied", http.StatusForbidden
		ctx.Resp = plainResponse(ctx.Req, http.StatusForbidden, "this gateway does not tunnel to "+host+"\n")
		return &goproxy.ConnectAction{Action: goproxy.ConnectReject}, target
	default:
		if _, err := g.targets.resolve(ctx.Req.Context(), host, port); errors.Is(err, errPrivateTarget) || errors.Is(err, errSelfTarget) {
			info.Result, info.Status = "denied", http.StatusForbidden
			ctx.Resp = plainResponse(ctx.Req, http.StatusForbidden, err.Error()+"\n")
			return &goproxy.ConnectAction{Action: goproxy.ConnectReject}, target
		}
		info.Result = "tunnel"
		return &goproxy.ConnectAction{Action: goproxy.ConnectHijack, Hijack: g.tunnel}, target
	}
}

// handshakeTimeout bounds the TLS handshake of an intercepted connection;
// net/http's server would otherwise wait for it without a deadline.
const handshakeTimeout = 10 * time.Second

// interceptConn terminates TLS on a hijacked CONNECT with a certificate
// for its target and hands the connection to the inner server.
func (g *Gateway) interceptConn(req *http.Request, client net.Conn, ctx *goproxy.ProxyCtx) {
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
	fp, _ := req.Context().Value(connectSecretKey{}).(clientauth.Fingerprint)
	g.innerHosts.Store(net.Conn(tconn), intercepted{host: host, target: req.URL.Host, key: fp})
	if !g.innerLn.deliver(tconn) {
		g.innerHosts.Delete(net.Conn(tconn))
		tconn.Close()
	}
}

// tunnel connects a hijacked CONNECT to its target and copies bytes both
// ways without looking at them.
func (g *Gateway) tunnel(req *http.Request, client net.Conn, _ *goproxy.ProxyCtx) {
	info := reqinfo.From(req.Context())
	dial := g.targets.guardDial(func(ctx context.Context, _, addr string) (net.Conn, error) { return g.opts.DialTunnel(ctx, addr) })
	up, err := dial(req.Context(), "tcp", req.URL.Host)
	if err != nil {
		info.Result, info.Status = "error", http.StatusBadGateway
		msg := "the gateway could not connect to " + req.URL.Host + "\n"
		fmt.Fprintf(client, "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(msg), msg)
		client.Close()
		return
	}
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		client.Close()
		up.Close()
		return
	}
	if fp, _ := req.Context().Value(connectSecretKey{}).(clientauth.Fingerprint); !fp.IsZero() {
		t := &keyedTunnel{key: fp, client: client, upstream: up}
		g.tunnels.Store(t, struct{}{})
		defer g.tunnels.Delete(t)
	}
	sent, received := pipe(client, up, g.opts.IdleTimeout)
	info.Detail = "tunnel sent=" + strconv.FormatInt(sent, 10) + " received=" + strconv.FormatInt(received, 10)
}

func plainResponse(req *http.Request, status int, body string) *http.Response {
	resp := goproxy.NewResponse(req, "text/plain; charset=utf-8", status, body)
	resp.Close = true
	return resp
}

// ownEndpoints answers the gateway's own paths and sends everything else
// to the Hub mirror. Routing is a plain switch rather than an
// http.ServeMux: the mux answers a path with ".." segments with a redirect
// to the cleaned path, and the gateway must refuse such a path instead.
func ownEndpoints(opts Options, asPrincipal func(r *http.Request, civitai bool) *http.Request) http.Handler {
	metricsHandler := promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(opts.Logger.Handler(), slog.LevelError),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		get := r.Method == http.MethodGet || r.Method == http.MethodHead
		switch {
		case r.URL.Path == "/healthz" && get:
			// Alive: the process answers. The plain "ok" stays the
			// default body (scripts grep it); JSON with the build on ask.
			reqinfo.Set(r.Context(), metrics.RouteHealth, "ok")
			probeAnswer(w, r, http.StatusOK, "ok", &opts.Build)
		case r.URL.Path == "/readyz" && get:
			reqinfo.Set(r.Context(), metrics.RouteHealth, "ok")
			if opts.Ready != nil {
				if err := opts.Ready(); err != nil {
					probeAnswer(w, r, http.StatusServiceUnavailable, err.Error(), nil)
					return
				}
			}
			probeAnswer(w, r, http.StatusOK, "ready", nil)
		case r.URL.Path == "/metrics" && get:
			reqinfo.Set(r.Context(), metrics.RouteMetrics, "ok")
			metricsHandler.ServeHTTP(w, r)
		case r.URL.Path == "/ca.pem" && get && opts.CA != nil:
			reqinfo.Set(r.Context(), "ca", "ok")
			w.Header().Set("Content-Type", "application/x-pem-file")
			w.Header().Set("Content-Disposition", `attachment; filename="modelgate-ca.pem"`)
			// During a CA rotation's overlap, both certificates.
			w.Write(opts.CA.Bundle(time.Now()))
		case opts.CivitAI != nil && opts.CivitAIRoute(r.URL.Path):
			opts.CivitAI.ServeHTTP(w, asPrincipal(r, true))
		default:
			opts.Hub.ServeHTTP(w, asPrincipal(r, false))
		}
	})
}

// probeAnswer writes a probe's status: "<status>\n" as plain text, or as
// JSON ({"status": ..., and the build when given}) to a client whose
// Accept asks for application/json.
func probeAnswer(w http.ResponseWriter, r *http.Request, code int, status string, build *buildinfo.Info) {
	w.Header().Set("Cache-Control", "no-store")
	if !strings.Contains(r.Header.Get("Accept"), "application/json") {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(code)
		io.WriteString(w, status+"\n")
		return
	}
	body := struct {
		Status string `json:"status"`
		*buildinfo.Info
	}{status, build}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(body)
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

// goproxyLogger sends goproxy's own messages (mostly routine connection
// ends) to debug.
type goproxyLogger struct{ l *slog.Logger }

func (g goproxyLogger) Printf(format string, v ...any) {
	g.l.Debug(fmt.Sprintf(format, v...), "component", "goproxy")
}
