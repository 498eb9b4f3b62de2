package upstream

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrPrivateTarget refuses a connection to an address the gateway must
// not be used to reach.
var ErrPrivateTarget error = Refusal("refusing to connect to a loopback, link-local or private address")

// ErrSelfTarget refuses a connection to the gateway's own listener.
var ErrSelfTarget error = Refusal("refusing to connect to the gateway's own listener")

// Refusal is a connection the gateway's policy refuses. It is permanent:
// a fill does not retry it.
type Refusal string

func (r Refusal) Error() string   { return string(r) }
func (r Refusal) Permanent() bool { return true }

// PrivateAddr reports whether a is an address the gateway must not reach
// unless told to: loopback, link-local (cloud metadata services live at
// 169.254.169.254), private (RFC 1918, fc00::/7), unspecified, multicast,
// and the special-purpose ranges that reach internal or undefined places.
func PrivateAddr(a netip.Addr) bool {
	a = a.Unmap()
	if a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsPrivate() ||
		a.IsUnspecified() || a.IsMulticast() {
		return true
	}
	for _, p := range specialRanges {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// specialRanges are IANA special-purpose ranges that the netip predicates
// do not cover.
var specialRanges = []netip.Prefix{
	netip.MustParsePrefix("100.64.0.0/10"), // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),  // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"), // benchmarking, often lab-internal
	netip.MustParsePrefix("240.0.0.0/4"),   // reserved, and broadcast
	// NAT64: the well-known prefix embeds any IPv4 address, private ones
	// included, and a NAT64 gateway on the LAN would dial it.
	netip.MustParsePrefix("64:ff9b::/96"),
}

// Guard decides which addresses outbound connections may reach. Every
// dial the gateway makes passes one: the transport's (upstream requests,
// every redirect hop included), and the relays' and tunnels' on a
// worker's behalf. A name is resolved once and the very address checked
// is dialled, so a DNS answer that changes in between cannot redirect it.
//
// Hosts named as exempt (the configured endpoints, the parent proxy,
// upstream.private_hosts; later, cluster peers) are dialled as named
// without the private-address check: the operator chose them. The
// gateway's own listener is never reachable.
type Guard struct {
	state  *guardState
	exempt map[string]bool // lower-case host:port
	// only, when set, is the whole of what this view may reach (see
	// Only); the private-address policy does not apply then.
	only []netip.Prefix
}

// guardState is what every view of a Guard shares.
type guardState struct {
	allowPrivate bool
	// resolve maps lower-case host:port names to the host:port dialled
	// instead (upstream.resolve); the target then passes the guard as
	// any address would.
	resolve     map[string]string
	listenPorts atomic.Value // map[string]bool: the gateway's own ports, once listening
	portsMu     sync.Mutex   // serialises SetListenAddr's copy-on-write
	local       map[netip.Addr]bool
}

// NewGuard returns a guard with no exemptions; allowPrivate lets it reach
// private addresses (proxy.allow_private_targets). resolve maps host:port
// names to the host:port dialled instead (upstream.resolve), for every
// view of the guard: the override is where the connection goes, and the
// guard checks (and exempts) that target, never the name it stands for.
func NewGuard(allowPrivate bool, resolve map[string]string) *Guard {
	s := &guardState{allowPrivate: allowPrivate, local: map[netip.Addr]bool{}, resolve: map[string]string{}}
	for from, to := range resolve {
		if host, port, err := net.SplitHostPort(from); err == nil {
			s.resolve[exemptKey(host, port)] = to
		}
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				s.local[p.Addr().Unmap()] = true
			}
		}
	}
	s.listenPorts.Store(map[string]bool{})
	return &Guard{state: s, exempt: map[string]bool{}}
}

// Exempting returns a view of g (same policy, same own address) under
// which the given host:port names are dialled without the private-address
// check. Names without a port are ignored.
func (g *Guard) Exempting(hostports ...string) *Guard {
	v := &Guard{state: g.state, exempt: map[string]bool{}}
	for _, hp := range hostports {
		if host, port, err := net.SplitHostPort(hp); err == nil && host != "" {
			v.exempt[exemptKey(host, port)] = true
		}
	}
	return v
}

// ErrOutsidePeers refuses a peer connection to an address outside
// cluster.peers.
var ErrOutsidePeers error = Refusal("refusing to connect to a gateway peer outside cluster.peers")

// Only returns a view of g (same own address) that reaches the addresses
// inside nets and nothing else, private or public: the dials to other
// gateways of a cluster (cluster.peers), whose addresses come from the
// shared bucket and so must not be able to point anywhere else. The
// gateway's own listener stays refused. An empty nets reaches nothing.
func (g *Guard) Only(nets []netip.Prefix) *Guard {
	only := make([]netip.Prefix, 0, len(nets))
	for _, p := range nets {
		only = append(only, p.Masked())
	}
	return &Guard{state: g.state, exempt: map[string]bool{}, only: only}
}

func exemptKey(host, port string) string {
	return net.JoinHostPort(strings.TrimSuffix(strings.ToLower(host), "."), canonicalPort(port))
}

// canonicalPort spells a numeric port as the dialler reads it: "08080" is
// port 8080 to net.Dial, so it must be to every check and lookup here too
// (the gateway's own ports, the exemptions, upstream.resolve).
func canonicalPort(port string) string {
	if n, err := strconv.ParseUint(port, 10, 16); err == nil {
		return strconv.FormatUint(n, 10)
	}
	return port
}

// SetListenAddr records one of the gateway's own ports (the plain
// listener's, listen_tls') once it listens.
func (g *Guard) SetListenAddr(a net.Addr) {
	if tcp, ok := a.(*net.TCPAddr); ok {
		g.state.portsMu.Lock()
		defer g.state.portsMu.Unlock()
		ports := maps.Clone(g.state.listenPorts.Load().(map[string]bool))
		ports[strconv.Itoa(tcp.Port)] = true
		g.state.listenPorts.Store(ports)
	}
}

// Check says whether ip:port may be dialled.
func (g *Guard) Check(ip netip.Addr, port string) error {
	ip, port = ip.Unmap(), canonicalPort(port)
	s := g.state
	if s.listenPorts.Load().(map[string]bool)[port] && (ip.IsLoopback() || ip.IsUnspecified() || s.local[ip]) {
		return ErrSelfTarget
	}
	if g.only != nil {
		for _, p := range g.only {
			if p.Contains(ip) {
				return nil
			}
		}
		return ErrOutsidePeers
	}
	if !s.allowPrivate && PrivateAddr(ip) {
		return ErrPrivateTarget
	}
	return nil
}

// target applies upstream.resolve: the host and port dialled for
// host:port.
func (g *Guard) target(host, port string) (string, string) {
	port = canonicalPort(port)
	if to, ok := g.state.resolve[exemptKey(host, port)]; ok {
		if h, p, err := net.SplitHostPort(to); err == nil {
			return h, canonicalPort(p)
		}
	}
	return host, port
}

// Resolve looks host up (after upstream.resolve) and returns the first
// address Check allows; with an override, the port to dial may differ
// from port, so callers that dial use Dial.
func (g *Guard) Resolve(ctx context.Context, host, port string) (netip.Addr, error) {
	host, port = g.target(host, port)
	return g.resolveTarget(ctx, host, port)
}

// resolveTarget looks up a host:port already mapped by target.
func (g *Guard) resolveTarget(ctx context.Context, host, port string) (netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip, g.Check(ip, port)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("resolving %s: %w", host, err)
	}
	var first error
	for _, ip := range ips {
		if err := g.Check(ip, port); err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		return ip, nil
	}
	if first == nil {
		first = fmt.Errorf("%s has no address", host)
	}
	return netip.Addr{}, first
}

// DialFunc is the shape of net.Dialer.DialContext.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Dial wraps dial so that it reaches only addresses the guard allows.
func (g *Guard) Dial(dial DialFunc) DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		host, port = g.target(host, port)
		addr = net.JoinHostPort(host, port)
		if g.exempt[exemptKey(host, port)] {
			// Still never the gateway itself, even when an endpoint says so.
			if ip, err := netip.ParseAddr(host); err == nil && g.Check(ip, port) == ErrSelfTarget {
				return nil, ErrSelfTarget
			}
			return dial(ctx, network, addr)
		}
		ip, err := g.resolveTarget(ctx, host, port)
		if err != nil {
			return nil, fmt.Errorf("dialling %s: %w", addr, err)
		}
		return dial(ctx, network, net.JoinHostPort(ip.String(), port))
	}
}
