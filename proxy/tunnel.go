package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/modelgate/modelgate/reqinfo"
)

// keyedTunnel is an open blind tunnel and the worker key whose CONNECT
// opened it, so that revoking the key can close it.
type keyedTunnel struct {
	key              connKey
	client, upstream net.Conn
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
	if key, _ := req.Context().Value(connectKeyCtx{}).(connKey); !key.fp.IsZero() {
		t := &keyedTunnel{key: key, client: client, upstream: up}
		g.tunnels.Store(t, struct{}{})
		defer g.tunnels.Delete(t)
	}
	sent, received := pipe(client, up, g.opts.IdleTimeout)
	info.Detail = "tunnel sent=" + strconv.FormatInt(sent, 10) + " received=" + strconv.FormatInt(received, 10)
}

// pipe copies between a and b until both directions end, and closes both.
// A connection on which no byte moved in either direction for idle is
// closed: a download that only flows one way keeps the other direction
// alive, but a dead peer does not pin two sockets and two goroutines.
// It returns the bytes copied a→b and b→a.
func pipe(a, b net.Conn, idle time.Duration) (ab, ba int64) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); ab = copyIdle(b, a, idle, &last) }()
	go func() { defer wg.Done(); ba = copyIdle(a, b, idle, &last) }()
	wg.Wait()
	a.Close()
	b.Close()
	return ab, ba
}

// copyIdle copies src to dst, refreshing deadlines as bytes move; a read
// that times out while the other direction was recently active is retried.
func copyIdle(dst, src net.Conn, idle time.Duration, last *atomic.Int64) int64 {
	buf := make([]byte, 32<<10)
	var n int64
	defer closeWrite(dst)
	for {
		src.SetReadDeadline(time.Now().Add(idle))
		nr, rerr := src.Read(buf)
		if nr > 0 {
			last.Store(time.Now().UnixNano())
			dst.SetWriteDeadline(time.Now().Add(idle))
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n
			}
		}
		if rerr != nil {
			if errors.Is(rerr, os.ErrDeadlineExceeded) && time.Since(time.Unix(0, last.Load())) < idle {
				continue
			}
			return n
		}
	}
}

// closeWrite half-closes dst so the peer sees EOF while the other
// direction may still flow; without half-close support it closes it.
func closeWrite(c net.Conn) {
	type halfCloser interface{ CloseWrite() error }
	if hc, ok := c.(halfCloser); ok {
		hc.CloseWrite()
		return
	}
	c.Close()
}
