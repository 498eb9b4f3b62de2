package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/modelgate/modelgate/metrics"
	"github.com/modelgate/modelgate/reqinfo"
)

// Limits caps the client connections the listener keeps open: every one
// costs a descriptor (a tunnel, two), and nothing else bounds how many a
// worker may hold.
type Limits struct {
	// Max is the cap on all client connections; PerClient the cap per
	// client address. Zero means no cap.
	Max, PerClient int
}

// limitListener counts the connections it accepts until they are closed.
// A connection beyond a cap is still accepted, so that its request can be
// answered 503 (a CONNECT is closed) by refuseOverCap, but it is not
// counted: it lives for one request only.
type limitListener struct {
	net.Listener
	*connCounts
}

// connCounts are the open connections of every listener of one gateway
// (the plain one and listen_tls share the caps).
type connCounts struct {
	limits Limits
	m      *metrics.Metrics

	mu        sync.Mutex
	open      int
	perClient map[netip.Addr]int
}

func newConnCounts(limits Limits, m *metrics.Metrics) *connCounts {
	return &connCounts{limits: limits, m: m, perClient: map[netip.Addr]int{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	ip := remoteIP(c)
	l.mu.Lock()
	defer l.mu.Unlock()
	over := ""
	switch {
	case l.limits.PerClient > 0 && l.perClient[ip] >= l.limits.PerClient:
		over = "per_client"
	case l.limits.Max > 0 && l.open >= l.limits.Max:
		over = "total"
	}
	if over != "" {
		if l.m != nil {
			l.m.ConnectionsRefused.WithLabelValues(over).Inc()
		}
		return &limitedConn{Conn: c, over: over}, nil
	}
	l.open++
	l.perClient[ip]++
	if l.m != nil {
		l.m.ConnectionsOpen.Inc()
	}
	lc := &limitedConn{Conn: c}
	lc.release = func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.open--
		if l.perClient[ip]--; l.perClient[ip] <= 0 {
			delete(l.perClient, ip)
		}
		if l.m != nil {
			l.m.ConnectionsOpen.Dec()
		}
	}
	return lc, nil
}

func remoteIP(c net.Conn) netip.Addr {
	if tcp, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(tcp.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// limitedConn is an accepted connection: counted until closed, or over a
// cap (over names which).
type limitedConn struct {
	net.Conn
	over    string
	release func()
	once    sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	if c.release != nil {
		c.once.Do(c.release)
	}
	return err
}

// ReadFrom keeps sendfile for blobs copied to the connection.
func (c *limitedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(writerOnly{c.Conn}, r)
}

// CloseWrite keeps the half-close tunnels rely on.
func (c *limitedConn) CloseWrite() error {
	if hc, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return hc.CloseWrite()
	}
	return c.Close()
}

type overCapKey struct{}

// connContext marks the requests of a connection over a cap.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok { // listen_tls: the counted conn is underneath
		c = tc.NetConn()
	}
	if lc, ok := c.(*limitedConn); ok && lc.over != "" {
		return context.WithValue(ctx, overCapKey{}, lc.over)
	}
	return ctx
}

// refuseOverCap answers the request of a connection beyond a cap: 503 and
// close, or for a CONNECT just close (a client cannot tell a refused
// tunnel from a 503 anyway, and a closed connection costs least).
func refuseOverCap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		over, _ := r.Context().Value(overCapKey{}).(string)
		if over == "" {
			next.ServeHTTP(w, r)
			return
		}
		info := reqinfo.From(r.Context())
		info.Route, info.Result, info.Detail = "connection_limit", "refused", "limit="+over
		if r.Method == http.MethodConnect {
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				c.Close()
				return
			}
		}
		w.Header().Set("Connection", "close")
		w.Header().Set("Retry-After", "5")
		http.Error(w, "the gateway has too many connections open; try again later", http.StatusServiceUnavailable)
	})
}

// bodyDeadline bounds how long r's body may take to arrive: the
// connection's read deadline is set now, and cleared once the body has
// been read (or closed), so the rest of the connection is not bound by it.
// A relayed request streams its body and clears it at once (noBodyDeadline).
func bodyDeadline(w http.ResponseWriter, r *http.Request, d time.Duration) *http.Request {
	if d <= 0 || r.Body == nil || r.Body == http.NoBody || r.Method == http.MethodConnect {
		return r
	}
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(time.Now().Add(d)) != nil {
		return r
	}
	r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc}
	return r
}

// noBodyDeadline lifts the deadline bodyDeadline set, for a request whose
// body is streamed on to another host.
func noBodyDeadline(w http.ResponseWriter, r *http.Request) {
	if db, ok := r.Body.(*deadlineBody); ok {
		db.clear()
	}
}

type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	once sync.Once
}

func (b *deadlineBody) clear() { b.once.Do(func() { b.rc.SetReadDeadline(time.Time{}) }) }

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.clear()
	}
	return n, err
}

func (b *deadlineBody) Close() error {
	b.clear()
	return b.ReadCloser.Close()
}
