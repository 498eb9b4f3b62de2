package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/reqinfo"
	"github.com/modelgate/modelgate/site"
)

// connectKeyCtx carries a CONNECT's resolved worker key to the
// interception or tunnel it opens.
type connectKeyCtx struct{}

// connKey is a worker key a CONNECT presented: its fingerprint (never the
// key itself, which does not leave the edge's first look at the request;
// the fingerprint re-checks it after the keys are reloaded and closes what
// a revoked key opened), the key set it was resolved in, and the key.
type connKey struct {
	fp   clientauth.Fingerprint
	keys *clientauth.Keys
	key  *clientauth.Key
}

// resolve returns the key for the current key set: the one resolved at
// CONNECT while the keys are unchanged, otherwise a new lookup, which
// fails once the key was revoked.
func (c connKey) resolve(keys *clientauth.Keys) (*clientauth.Key, bool) {
	switch {
	case c.fp.IsZero():
		return nil, true
	case keys == c.keys:
		return c.key, true
	}
	return keys.LookupFingerprint(c.fp)
}

// authenticate resolves the worker key of a request, once, and records it
// in the request's context (clientauth.FromContext) and log record. A key
// is presented in up to two places, and the inner one wins:
//   - outside the request: the Proxy-Authorization of a CONNECT or an
//     absolute-form request (Basic name:key; an unknown key, or none when
//     one is required, is a 407), or, for a request decoded from an
//     interception (conn not nil), the key its CONNECT presented (a key
//     revoked since is a 401);
//   - on the request itself (Authorization: Bearer mgw_..., or
//     ?token=mgw_...), for every form but CONNECT: an unknown key is a
//     401 — never a silent fall-back to the operator's token.
//
// Every presentation is taken off the request, so a key never travels on.
func (g *Gateway) authenticate(w http.ResponseWriter, r *http.Request, conn *connKey) (*http.Request, bool) {
	keys := g.keys()
	ctx := r.Context()
	info := reqinfo.From(ctx)
	var k *clientauth.Key
	switch {
	case conn != nil:
		var known bool
		if k, known = conn.resolve(keys); !known {
			info.Route, info.Result = "auth", "unauthorized"
			http.Error(w, "the worker key is not known to this gateway", http.StatusUnauthorized)
			return nil, false
		}
	case r.Method == http.MethodConnect || r.URL.IsAbs():
		secret, presented := clientauth.FromProxyAuthorization(r.Header.Get("Proxy-Authorization"))
		r.Header.Del("Proxy-Authorization")
		var msg string
		switch {
		case presented:
			var known bool
			if k, known = keys.Lookup(secret); known {
				ctx = context.WithValue(ctx, connectKeyCtx{}, connKey{fp: clientauth.FingerprintOf(secret), keys: keys, key: k})
			} else {
				msg = "the worker key is not known to this gateway"
			}
		case g.opts.RequireKey:
			msg = "this gateway needs a worker key: HTTPS_PROXY=http://NAME:KEY@gateway"
		}
		if msg != "" {
			info.Result, info.Status = "unauthorized", http.StatusProxyAuthRequired
			if info.Route == "" {
				info.Route = "proxy"
			}
			w.Header().Set("Proxy-Authenticate", `Basic realm="modelgate"`)
			http.Error(w, msg, http.StatusProxyAuthRequired)
			return nil, false
		}
	}
	if r.Method != http.MethodConnect {
		// A plain proxy or intercepted request may carry a key the way a
		// mirror request does (HF_TOKEN=mgw_...); it is taken off too.
		r = r.Clone(ctx)
		secret, presented := clientauth.Take(r)
		var msg string
		if presented {
			found, known := keys.Lookup(secret)
			if !known {
				msg = "the worker key is not known to this gateway"
			}
			k = found
		}
		if msg == "" && k == nil && g.opts.RequireKey {
			msg = "this gateway needs a worker key: set HF_TOKEN (or ?token=) to the key the operator gave you"
		}
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
		ctx = r.Context()
	}
	if k == nil {
		return r.WithContext(ctx), true
	}
	info.Worker = k.Name
	return r.WithContext(clientauth.WithKey(ctx, k)), true
}

// principal decides whose identity r uses upstream at site s (and so
// which slice of the metadata cache it sees) and records it in r's
// context:
//   - the worker's own credential (a non-mgw Authorization), when
//     clients.own_credentials is "pass" or the gateway holds none for
//     the site's endpoint;
//   - none at all, for a request without a worker key when
//     clients.require_key is "gated";
//   - otherwise the gateway's.
func (g *Gateway) principal(r *http.Request, s *site.Site) *http.Request {
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
	hasGateway := g.opts.HasCredential != nil && s.Endpoint != nil && g.opts.HasCredential(s.Endpoint)
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

// CloseRevoked closes every tunnel and intercepted connection whose
// CONNECT presented a worker key that is no longer known (called after a
// SIGHUP reloaded the keys). Intercepted connections re-check the key on
// every request anyway; closing them also cuts a download in flight and
// an idle keep-alive. It returns how many were closed.
func (g *Gateway) CloseRevoked() int {
	keys := g.keys()
	revoked := func(c connKey) bool {
		_, known := c.resolve(keys)
		return !known
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
	g.innerConns.Range(func(k, v any) bool {
		if revoked(v.(*intercepted).key) {
			k.(net.Conn).Close()
			n++
		}
		return true
	})
	return n
}

// clientAllowed reports whether the request's client address may use
// what it asks for: an own endpoint's networks, or clients.allow.
func (g *Gateway) clientAllowed(r *http.Request, own *Endpoint) bool {
	nets := g.opts.ClientAllow
	if own != nil {
		switch own.Access {
		case AccessAnyone:
			return true
		case AccessMetrics:
			nets = g.opts.MetricsAllow
		}
	}
	return addrIn(r, nets)
}

// addrIn reports whether the request's client address is in nets.
func addrIn(r *http.Request, nets []netip.Prefix) bool {
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

// pathKey takes a worker key out of a key path
// (/visionatrix/key/mgw_.../rest, see clientauth.TakePath) and presents it
// as the request's Authorization, where authenticate finds it; the
// prefix is kept in the context for the URLs the catalog hands out.
func (g *Gateway) pathKey(w http.ResponseWriter, r *http.Request) (*http.Request, bool) {
	if r.Method == http.MethodConnect || r.URL.IsAbs() || !strings.HasPrefix(r.URL.EscapedPath(), clientauth.PathKeyPrefix) {
		return r, true
	}
	r = r.Clone(r.Context())
	key, prefix, _ := clientauth.TakePath(r)
	if !strings.HasPrefix(key, clientauth.Prefix) {
		// Anything else there would otherwise pass for the worker's own
		// upstream credential.
		info := reqinfo.From(r.Context())
		info.Route, info.Result = "auth", "unauthorized"
		http.Error(w, "the path does not hold a worker key (/visionatrix/key/mgw_.../)", http.StatusUnauthorized)
		return nil, false
	}
	r.Header.Set("Authorization", "Bearer "+key)
	return r.WithContext(clientauth.WithPathPrefix(r.Context(), prefix)), true
}

// loopbackClient reports whether r comes from a process on the gateway's
// own host over loopback: from the very loopback address it connected to
// (127.0.0.1 to 127.0.0.1, ::1 to ::1), as the kernel picks it. A client
// bound to another loopback address (127.0.0.2 to 127.0.0.1) does not
// count; the tests use one as a stand-in for a remote client.
func loopbackClient(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	local, _ := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr)
	if local == nil {
		return false
	}
	la, _ := netip.AddrFromSlice(local.IP)
	return ap.Addr().Unmap().IsLoopback() && ap.Addr().Unmap() == la.Unmap()
}

// refuseAdminKey answers 403 to a request carrying an admin key (mga_)
// anywhere a worker would put a credential: an admin key is no download
// credential, and must not travel on as a worker's own token either.
func refuseAdminKey(w http.ResponseWriter, r *http.Request) bool {
	if !clientauth.CarriesAdminKey(r) {
		return false
	}
	info := reqinfo.From(r.Context())
	info.Route, info.Result = "auth", "forbidden"
	http.Error(w, "an admin key (mga_) opens the admin API only; workers use a worker key", http.StatusForbidden)
	return true
}
