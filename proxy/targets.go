package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"
)

// errPrivateTarget refuses a tunnel or relayed request to an address the
// gateway must not be used to reach.
var errPrivateTarget = errors.New("refusing to connect to a loopback, link-local or private address")

// errSelfTarget refuses a tunnel or relayed request to the gateway itself.
var errSelfTarget = errors.New("refusing to connect to the gateway's own listener")

// privateAddr reports whether a is an address a worker must not reach
// through the gateway unless proxy.allow_private_targets says so:
// loopback, link-local (cloud metadata services live at 169.254.169.254),
// private (RFC 1918, fc00::/7), unspecified, multicast, and the
// special-purpose ranges that reach internal or undefined places.
func privateAddr(a netip.Addr) bool {
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

// targets decides which addresses tunnels and relayed requests may reach.
type targets struct {
	allowPrivate bool
	listenPort   atomic.Value // string: the gateway's own port, once listening
	local        map[netip.Addr]bool
}

func newTargets(allowPrivate bool) *targets {
	t := &targets{allowPrivate: allowPrivate, local: map[netip.Addr]bool{}}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				t.local[p.Addr().Unmap()] = true
			}
		}
	}
	t.listenPort.Store("")
	return t
}

// check says whether ip:port may be dialled for a worker.
func (t *targets) check(ip netip.Addr, port string) error {
	ip = ip.Unmap()
	if port == t.listenPort.Load().(string) && (ip.IsLoopback() || ip.IsUnspecified() || t.local[ip]) {
		return errSelfTarget
	}
	if !t.allowPrivate && privateAddr(ip) {
		return errPrivateTarget
	}
	return nil
}

// resolve looks host up and returns the first address check allows, so
// that the dial goes to the very address that was checked (a DNS answer
// that changes between check and dial cannot redirect it).
func (t *targets) resolve(ctx context.Context, host, port string) (netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip, t.check(ip, port)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("resolving %s: %w", host, err)
	}
	var first error
	for _, ip := range ips {
		if err := t.check(ip, port); err != nil {
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

// guardDial wraps a dial function so that it only reaches allowed
// addresses.
func (t *targets) guardDial(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		ip, err := t.resolve(ctx, host, port)
		if err != nil {
			return nil, err
		}
		return dial(ctx, network, net.JoinHostPort(ip.String(), port))
	}
}

// relayTransport is tr for worker-directed requests: every dial is
// checked. With a parent proxy the dial goes to the parent, which decides.
func (t *targets) relayTransport(tr *http.Transport) *http.Transport {
	rt := tr.Clone()
	if rt.Proxy == nil {
		rt.DialContext = t.guardDial(tr.DialContext)
	}
	return rt
}

// setListenAddr records the gateway's own port once it listens.
func (t *targets) setListenAddr(a net.Addr) {
	if tcp, ok := a.(*net.TCPAddr); ok {
		t.listenPort.Store(strconv.Itoa(tcp.Port))
	}
}
