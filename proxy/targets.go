package proxy

import (
	"context"
	"net"
	"net/http"
	"net/netip"

	"github.com/modelgate/modelgate/upstream"
)

// The guard refusals, as the edge reports them.
var (
	errPrivateTarget = upstream.ErrPrivateTarget
	errSelfTarget    = upstream.ErrSelfTarget
)

// targets decides which addresses tunnels and relayed requests may reach
// on a worker's behalf: the outbound guard (upstream.Guard), in the view
// main gives the proxy (only the parent proxy exempt).
type targets struct{ guard *upstream.Guard }

func newTargets(guard *upstream.Guard, allowPrivate bool) *targets {
	if guard == nil {
		guard = upstream.NewGuard(allowPrivate, nil)
	}
	return &targets{guard: guard}
}

func (t *targets) resolve(ctx context.Context, host, port string) (netip.Addr, error) {
	return t.guard.Resolve(ctx, host, port)
}

func (t *targets) guardDial(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return t.guard.Dial(dial)
}

// relayTransport is tr for worker-directed requests: every dial is
// checked. With a parent proxy the dial goes to the parent, which decides.
func (t *targets) relayTransport(tr *http.Transport) *http.Transport {
	rt := tr.Clone()
	rt.DialContext = t.guard.Dial(tr.DialContext)
	return rt
}

func (t *targets) setListenAddr(a net.Addr) { t.guard.SetListenAddr(a) }
