package proxy

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

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
