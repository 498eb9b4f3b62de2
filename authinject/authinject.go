// Package authinject is the only code that handles the operator's upstream
// credentials. It sends each upstream request, attaching a credential only
// when the request's host is the one host that credential belongs to, and
// follows redirects itself so that no credential ever rides a redirect to
// another host (a CDN or storage bucket).
//
// Go's own redirect following is not used on purpose: http.Client keeps
// Authorization on redirects to subdomains, which would hand the token to a
// CDN living under the hub's domain.
package authinject

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"

	"github.com/modelgate/modelgate/indexkeys"
	"github.com/modelgate/modelgate/upstream"
)

// Credential is a secret bound to the single host it may be sent to.
type Credential struct {
	scheme string // "https" or "http": a credential never crosses schemes
	host   string // canonical host:port
	header string // the full Authorization header value; empty: none configured
}

// Bearer binds token to the scheme and host of endpoint ("https://hub.example"
// binds https on "hub.example:443"). An empty token yields a credential that
// only marks the host as the one a worker's own Authorization may be
// forwarded to.
func Bearer(endpoint, token string) (Credential, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return Credential{}, fmt.Errorf("credential endpoint %q is not an absolute URL", endpoint)
	}
	c := Credential{scheme: strings.ToLower(u.Scheme), host: CanonicalHost(u)}
	if token != "" {
		c.header = "Bearer " + token
	}
	return c, nil
}

// String never shows the secret.
func (c Credential) String() string { return "credential for " + c.scheme + "://" + c.host }

// GoString keeps %#v (which ignores String) from printing the secret.
func (c Credential) GoString() string { return "authinject.Credential{" + c.String() + "}" }

// Format makes every verb print String, so no format directive can reach
// the header value.
func (c Credential) Format(f fmt.State, _ rune) { io.WriteString(f, c.String()) }

// Follow says which redirects Do follows.
type Follow int

const (
	// FollowNone returns every redirect to the caller.
	FollowNone Follow = iota
	// FollowSameHost follows redirects that stay on the request's host and
	// returns the first one that leaves it (whose Location the caller may
	// want to read, but must never send a credential to).
	FollowSameHost
	// FollowAll follows every redirect; credentials are attached per hop
	// by host, so they are dropped when a hop leaves their host.
	FollowAll
)

// ErrDowngrade refuses a redirect from an https: URL to an http: one.
var ErrDowngrade error = upstream.Refusal("upstream redirected from https to plain http; refused")

// maxRedirects bounds a redirect chain.
const maxRedirects = 10

// Injector sends requests with credentials attached by host.
type Injector struct {
	rt    http.RoundTripper
	creds atomic.Pointer[[]Credential]
}

// GoString and Format keep fmt from printing the credentials inside.
func (i *Injector) GoString() string {
	return fmt.Sprintf("authinject.Injector{%d credentials}", len(*i.creds.Load()))
}
func (i *Injector) Format(f fmt.State, _ rune) { io.WriteString(f, i.GoString()) }

// New returns an Injector that sends through rt.
func New(rt http.RoundTripper, creds ...Credential) *Injector {
	i := &Injector{rt: rt}
	i.SetCredentials(creds...)
	return i
}

// SetCredentials replaces the credentials (a rotated token takes effect
// for the next request; requests in flight keep the one they started
// with).
func (i *Injector) SetCredentials(creds ...Credential) {
	c := append([]Credential(nil), creds...)
	i.creds.Store(&c)
}

// Owns reports whether u's host is one that a credential is bound to.
func (i *Injector) Owns(u *url.URL) bool {
	_, ok := i.credentialFor(u)
	return ok
}

func (i *Injector) credentialFor(u *url.URL) (Credential, bool) {
	h := CanonicalHost(u)
	for _, c := range *i.creds.Load() {
		if c.host == h && strings.EqualFold(c.scheme, u.Scheme) {
			return c, true
		}
	}
	return Credential{}, false
}

// Do sends req and follows redirects as follow says.
//
// Whatever Authorization, Proxy-Authorization or Cookie req carries is
// removed: the credential of each hop comes from the request's Principal
// alone, so that no handler handles one. Each hop gets the configured
// credential of its host; the worker's own (Principal.Own) goes only to
// the origin the request was sent to, and only in ModeClient or when no
// credential is configured for that host.
//
// The returned response's Request is the last hop sent.
func (i *Injector) Do(req *http.Request, follow Follow) (*http.Response, error) {
	p := PrincipalFrom(req.Context())
	mode, clientAuth := p.Mode, p.Own.header
	out := req.Clone(req.Context())
	for _, h := range []string{"Authorization", "Proxy-Authorization", "Cookie"} {
		out.Header.Del(h)
	}
	for hop := 0; ; hop++ {
		i.attach(out, mode, clientAuth, req.URL)
		resp, err := i.rt.RoundTrip(out)
		if err != nil {
			return nil, err
		}
		loc := resp.Header.Get("Location")
		if follow == FollowNone || !isRedirect(resp.StatusCode) || loc == "" {
			return resp, nil
		}
		target, err := out.URL.Parse(loc)
		if err != nil || (target.Scheme != "http" && target.Scheme != "https") || target.Host == "" {
			return resp, nil // the caller sees the odd redirect as is
		}
		if follow == FollowSameHost && CanonicalHost(target) != CanonicalHost(out.URL) {
			return resp, nil
		}
		if strings.EqualFold(out.URL.Scheme, "https") && target.Scheme == "http" {
			// What TLS protected would travel in clear (and a signed URL
			// or a body could be read or changed on the way).
			upstream.DrainClose(resp.Body)
			return nil, ErrDowngrade
		}
		if !dropsBody(resp.StatusCode, out.Method) && out.GetBody == nil && out.Body != nil && out.Body != http.NoBody {
			return resp, nil // the body cannot be sent again: the caller sees the redirect
		}
		upstream.DrainClose(resp.Body)
		if hop+1 >= maxRedirects {
			return nil, errors.New("upstream redirected too many times")
		}
		next, err := nextHop(out, resp.StatusCode, target)
		if err != nil {
			return nil, err
		}
		if check := redirectCheckFrom(req.Context()); check != nil {
			if err := check(next); err != nil {
				return nil, err
			}
		}
		out = next
	}
}

// attach sets the Authorization header for out's host. The worker's own
// clientAuth only ever goes back to the origin the worker asked (clientURL).
func (i *Injector) attach(out *http.Request, mode Mode, clientAuth string, clientURL *url.URL) {
	out.Header.Del("Authorization")
	c, ok := i.credentialFor(out.URL)
	sameOrigin := strings.EqualFold(out.URL.Scheme, clientURL.Scheme) && CanonicalHost(out.URL) == CanonicalHost(clientURL)
	switch {
	case !ok, mode == ModeAnonymous:
	case mode == ModeClient:
		if clientAuth != "" && sameOrigin {
			out.Header.Set("Authorization", clientAuth)
		}
	case c.header != "":
		out.Header.Set("Authorization", c.header)
	case clientAuth != "" && sameOrigin:
		out.Header.Set("Authorization", clientAuth)
	}
}

// CarriesCredential reports whether an outbound request (a hop Do sends)
// carries a credential, for metrics below Do that must not read one.
func CarriesCredential(r *http.Request) bool { return r.Header.Get("Authorization") != "" }

// HasCredential reports whether a credential is configured for endpoint's
// host.
func (i *Injector) HasCredential(endpoint *url.URL) bool {
	c, ok := i.credentialFor(endpoint)
	return ok && c.header != ""
}

// Mode says which credential a request carries upstream.
type Mode int

const (
	// ModeGateway sends the gateway's configured credential for the host
	// (or, when none is configured, the worker's own, to its origin only).
	ModeGateway Mode = iota
	// ModeAnonymous sends no credential at all.
	ModeAnonymous
	// ModeClient sends the worker's own credential, to the origin it
	// asked only, never the gateway's.
	ModeClient
)

// Principal is whose identity a request uses upstream. Scope names the
// slice of the metadata cache its answers belong to: what one credential
// may see must not decide what another sees ("" is the gateway's own,
// shared by every worker that uses it).
type Principal struct {
	Mode  Mode
	Scope string
	// Worker names the worker key the request was authenticated with
	// ("": none), as the edge resolved it: the key itself never leaves
	// the edge. Calls shared between requests (singleflight) are shared
	// only by requests of the same worker key, whose policy they ran
	// with.
	Worker string
	// Own is the worker's own credential for the upstream, as the edge
	// took it off the request: sent (by Do only) in ModeClient, or in
	// ModeGateway to a host the gateway holds no credential for.
	Own Secret
}

// Secret is a worker's own credential (an Authorization value) in
// transit from the edge to Do. Only this package reads it; fmt never
// prints it.
type Secret struct{ header string }

// OwnCredential wraps a worker's Authorization value.
func OwnCredential(authorization string) Secret { return Secret{header: authorization} }

// IsZero reports whether no credential is held.
func (s Secret) IsZero() bool { return s.header == "" }

// String never shows the secret.
func (s Secret) String() string {
	if s.header == "" {
		return "no credential"
	}
	return "a worker's credential"
}

// GoString and Format keep every verb from printing the value.
func (s Secret) GoString() string           { return "authinject.Secret{" + s.String() + "}" }
func (s Secret) Format(f fmt.State, _ rune) { io.WriteString(f, s.String()) }

// ClientPrincipal is the principal of a request that uses the worker's own
// credential (an Authorization value): its answers are cached in a scope
// named by the credential's hash.
func ClientPrincipal(authorization, worker string) Principal {
	return Principal{Mode: ModeClient, Scope: ClientScope(authorization), Worker: worker, Own: OwnCredential(authorization)}
}

type principalKey struct{}

type redirectCheckKey struct{}

// WithRedirectCheck returns ctx carrying check, which Do calls with the
// request for every redirect hop before sending it: an error stops the
// chain there and is returned as is. The caller's access policy thus applies to where
// the upstream sends a request too (a renamed repo's new name), not only
// to what the worker asked for.
func WithRedirectCheck(ctx context.Context, check func(next *http.Request) error) context.Context {
	return context.WithValue(ctx, redirectCheckKey{}, check)
}

func redirectCheckFrom(ctx context.Context) func(*http.Request) error {
	check, _ := ctx.Value(redirectCheckKey{}).(func(*http.Request) error)
	return check
}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the Principal in ctx (the gateway's by default).
func PrincipalFrom(ctx context.Context) Principal {
	p, _ := ctx.Value(principalKey{}).(Principal)
	return p
}

// ScopePrefix starts every index key scoped to a principal other than
// the gateway's own.
// (indexkeys owns the layout.)
const ScopePrefix = indexkeys.ScopePrefix

// Key scopes an index key to p: the gateway's own entries keep their key.
func (p Principal) Key(key string) string { return indexkeys.Scoped(p.Scope, key) }

// Unscoped returns the key a scoped index key was made from.
func Unscoped(key string) string { return indexkeys.Unscoped(key) }

// ClientScope names the cache scope of a worker's own credential: a hash,
// so the credential itself appears nowhere.
func ClientScope(authorization string) string {
	sum := sha256.Sum256([]byte(authorization))
	return "cred-" + hex.EncodeToString(sum[:8])
}

func nextHop(prev *http.Request, status int, target *url.URL) (*http.Request, error) {
	method := prev.Method
	var body io.ReadCloser
	// As browsers and net/http do: 301/302/303 turn a POST into a GET;
	// 307/308 repeat the request, body included.
	if dropsBody(status, method) {
		method = http.MethodGet
	} else if prev.GetBody != nil {
		b, err := prev.GetBody()
		if err != nil {
			return nil, fmt.Errorf("replaying request body on redirect: %w", err)
		}
		body = b
	}
	next, err := http.NewRequestWithContext(prev.Context(), method, target.String(), body)
	if err != nil {
		return nil, fmt.Errorf("building redirected request: %w", err)
	}
	next.Header = prev.Header.Clone()
	next.GetBody = prev.GetBody
	next.ContentLength = prev.ContentLength
	if method != prev.Method {
		next.Header.Del("Content-Type")
		next.GetBody = nil
		next.ContentLength = 0
	}
	return next, nil
}

// dropsBody reports whether following a status-redirect of method turns the
// request into a GET without body.
func dropsBody(status int, method string) bool {
	return (status == http.StatusMovedPermanently || status == http.StatusFound || status == http.StatusSeeOther) && method == http.MethodPost
}

func isRedirect(code int) bool {
	switch code {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// CanonicalHost returns u's lower-cased host with the scheme's default port
// made explicit, so that "hub.example" and "hub.example:443" compare equal
// and "http://hub.example" (port 80) does not match an https credential.
func CanonicalHost(u *url.URL) string {
	host := strings.ToLower(u.Hostname())
	port := u.Port()
	if port == "" {
		switch u.Scheme {
		case "http":
			port = "80"
		default:
			port = "443"
		}
	}
	return net.JoinHostPort(host, port)
}
