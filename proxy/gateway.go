package proxy

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/elazarl/goproxy"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/buildinfo"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/hostmatch"
	"github.com/modelgate/modelgate/metrics"
	"github.com/modelgate/modelgate/mitmca"
	"github.com/modelgate/modelgate/reqinfo"
	"github.com/modelgate/modelgate/site"
	"github.com/modelgate/modelgate/upstream"
)

// Options configures the gateway's one listener.
type Options struct {
	// Sites are the hubs the gateway serves, in the order their paths
	// are tried in mirror mode (see site.Site.Paths).
	Sites []site.Site
	// Endpoints are own endpoints added to the built-in ones (/healthz,
	// /readyz, /metrics, /ca.pem); they are tried before any site.
	Endpoints []Endpoint
	// KeyedEndpoints are own endpoints that, like a site, are answered
	// only after the worker key was checked (the Visionatrix catalog,
	// whose URLs carry the key in their path); tried before any site.
	KeyedEndpoints []Endpoint
	// RequireTLSForKeys refuses a request presenting a worker or admin key
	// over plain HTTP, unless it comes from a loopback client.
	RequireTLSForKeys bool

	// Admin, when set, answers /admin/ and the status page at / for
	// clients in AdminAllow (checked instead of ClientAllow; it does its
	// own key check). Other networks get /admin/ refused and / as before.
	Admin      http.Handler
	AdminAllow []netip.Prefix
	// OnRequest, when set, is called with every finished request (its
	// route, result, worker key name, status and body bytes), after its
	// log line: the admin side's traffic figures and audit records.
	OnRequest func(r *http.Request, info *reqinfo.Info, status int, bytes int64)

	Gatherer prometheus.Gatherer
	Metrics  *metrics.Metrics
	Logger   *slog.Logger

	// CA signs the certificates of intercepted hosts.
	CA *mitmca.CA
	// Intercept are the hosts whose CONNECTs are intercepted (config
	// mitm.hosts); plain proxy requests to them are answered the same way.
	Intercept hostmatch.Patterns
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
	TunnelAllow hostmatch.Patterns
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
	// HasCredential reports whether the gateway holds a credential bound
	// to endpoint's host (a site's Endpoint).
	HasCredential func(endpoint *url.URL) bool

	// Ready reports whether the gateway should get new work: nil when it
	// should, the reason when not (draining for shutdown). /readyz
	// answers 503 while it is not nil; nil Ready means always ready.
	Ready func() error
	// Build is shown by /healthz to clients that ask for JSON.
	Build buildinfo.Info
}

// Gateway is the handler of the gateway's one listener: mirror mode for
// origin-form requests, forward proxy for CONNECT and absolute-form ones.
// It knows no hub: the sites it is given say which hosts and paths are
// theirs.
type Gateway struct {
	opts    Options
	log     *slog.Logger
	sites   []site.Site
	own     []Endpoint // the gateway's own paths, built-in first
	gp      *goproxy.ProxyHttpServer
	certs   *certStore // leaves for intercepted hosts, from opts.CA
	forward *httputil.ReverseProxy
	handler http.Handler // the edge around route
	targets *targets
	// counts caps the connections of every listener together.
	counts     *connCounts
	countsOnce sync.Once

	inner      *http.Server // serves intercepted connections
	innerLn    *chanListener
	innerConns sync.Map // *tls.Conn -> *intercepted
	tunnels    sync.Map // *keyedTunnel -> struct{}: open tunnels opened with a worker key
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
	if len(opts.MetricsAllow) == 0 {
		opts.MetricsAllow = opts.ClientAllow
	}
	g := &Gateway{opts: opts, log: opts.Logger, sites: opts.Sites}
	g.targets = newTargets(opts.Guard, opts.AllowPrivateTargets)
	g.own = append(g.builtinEndpoints(), opts.Endpoints...)
	var relay http.RoundTripper = g.targets.relayTransport(opts.Transport)
	if opts.Metrics != nil {
		relay = opts.Metrics.InstrumentUpstream(relay, func(*http.Request) string { return "other" }, authinject.CarriesCredential)
	}
	g.forward = &httputil.ReverseProxy{
		Rewrite:      rewriteForward,
		Transport:    relay,
		ErrorHandler: g.forwardError,
	}
	g.gp = g.newConnectHandler()
	if opts.CA != nil {
		g.certs = newCertStore(opts.CA, 1024, nil)
	}
	g.handler = &edge{next: refuseOverCap(http.HandlerFunc(g.route)), log: opts.Logger, m: opts.Metrics, bodyTimeout: opts.BodyReadTimeout, observe: opts.OnRequest}
	g.startInner()
	return g, nil
}

// ServeHTTP is the listener's handler.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) { g.handler.ServeHTTP(w, r) }

// SetListenAddr tells the gateway its own address, so that tunnels and
// relayed requests to itself are refused (they would loop).
func (g *Gateway) SetListenAddr(a net.Addr) { g.targets.setListenAddr(a) }

// Listener returns ln with the connection caps applied (serve it with
// NewServer, whose ConnContext marks the connections beyond them), and
// tells the gateway its own address. Every listener of the gateway (the
// plain one, listen_tls) shares the caps.
func (g *Gateway) Listener(ln net.Listener) net.Listener {
	g.SetListenAddr(ln.Addr())
	g.countsOnce.Do(func() { g.counts = newConnCounts(g.opts.Limits, g.opts.Metrics) })
	return &limitListener{Listener: ln, connCounts: g.counts}
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

// route sends each request on by its form, after the client allow-lists
// and the worker key: the gateway's own endpoints; CONNECT to the proxy
// policy; an absolute URL (plain HTTP_PROXY use) to the site it names;
// anything else (origin form) to the site whose paths it matches.
func (g *Gateway) route(w http.ResponseWriter, r *http.Request) {
	info := reqinfo.From(r.Context())
	// Worker and admin keys alike, before anything reads one.
	if g.opts.RequireTLSForKeys && r.TLS == nil && !loopbackClient(r) && clientauth.Presents(r) {
		// The key has crossed the network in the clear already; refusing
		// it tells the operator before it becomes the norm.
		info.Route, info.Result = "auth", "refused"
		http.Error(w, "this gateway accepts worker and admin keys over TLS only: use its https:// address", http.StatusForbidden)
		return
	}
	if g.opts.Admin != nil && r.Method != http.MethodConnect && !r.URL.IsAbs() {
		isAdmin := strings.HasPrefix(r.URL.Path, "/admin/") || r.URL.Path == "/admin"
		switch {
		case (isAdmin || r.URL.Path == "/") && addrIn(r, g.opts.AdminAllow):
			info.Mode = "admin"
			g.opts.Admin.ServeHTTP(w, r)
			return
		case isAdmin:
			info.Route, info.Result = "admin", "refused"
			http.Error(w, "the admin API is not open to your address", http.StatusForbidden)
			return
		}
	}
	if refuseAdminKey(w, r) {
		return
	}
	own := g.ownEndpoint(r)
	if !g.clientAllowed(r, own) {
		// Logged (with the address) and counted by the edge.
		info.Route, info.Result = "refused_client", "refused"
		http.Error(w, "this gateway does not serve your address", http.StatusForbidden)
		return
	}
	if own != nil {
		// The gateway's own endpoints answer without a worker key: the
		// network allow-lists govern them (a scraper has no key).
		info.Mode = "mirror"
		own.Handler.ServeHTTP(w, r)
		return
	}
	r, ok := g.pathKey(w, r)
	if !ok {
		return
	}
	if r, ok = g.authenticate(w, r, nil); !ok {
		return
	}
	if ep := matchEndpoint(g.opts.KeyedEndpoints, r); ep != nil {
		info.Mode = "mirror"
		ep.Handler.ServeHTTP(w, r)
		return
	}
	switch {
	case r.Method == http.MethodConnect:
		info.Mode, info.Route = "proxy", "connect"
		g.gp.ServeHTTP(w, r)
	case r.URL.IsAbs():
		info.Mode = "proxy"
		g.serveAbsolute(w, r)
	default:
		info.Mode = "mirror"
		g.serveMirror(w, r)
	}
}
