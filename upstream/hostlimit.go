package upstream

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
)

type fillKey struct{}

// ForFill marks ctx as a blob fill's request: HostLimiter caps those per
// host. Metadata requests are not marked, so they never wait behind fills.
func ForFill(ctx context.Context) context.Context {
	return context.WithValue(ctx, fillKey{}, true)
}

func isFill(ctx context.Context) bool { v, _ := ctx.Value(fillKey{}).(bool); return v }

// HostLimiter is a RoundTripper that lets at most Max fill requests (see
// ForFill) be in flight to one host at a time, each until its body is
// closed, so that many cold blobs at once do not open a connection per
// piece per blob. Other requests pass straight through.
type HostLimiter struct {
	Next http.RoundTripper
	Max  int
	// OnChange, when set, learns every change (+1, -1) of the fill
	// requests in flight.
	OnChange func(delta int)

	mu    sync.Mutex
	inUse map[string]int
	wake  chan struct{}
}

// RoundTrip implements http.RoundTripper.
func (l *HostLimiter) RoundTrip(req *http.Request) (*http.Response, error) {
	if !isFill(req.Context()) || l.Max <= 0 {
		return l.Next.RoundTrip(req)
	}
	host := strings.ToLower(req.URL.Host)
	if err := l.acquire(req.Context(), host); err != nil {
		return nil, err
	}
	resp, err := l.Next.RoundTrip(req)
	if err != nil {
		l.release(host)
		return nil, err
	}
	resp.Body = &releasingBody{ReadCloser: resp.Body, release: sync.OnceFunc(func() { l.release(host) })}
	return resp, nil
}

func (l *HostLimiter) acquire(ctx context.Context, host string) error {
	for {
		l.mu.Lock()
		if l.inUse == nil {
			l.inUse, l.wake = map[string]int{}, make(chan struct{})
		}
		if l.inUse[host] < l.Max {
			l.inUse[host]++
			l.mu.Unlock()
			if l.OnChange != nil {
				l.OnChange(1)
			}
			return nil
		}
		wake := l.wake
		l.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (l *HostLimiter) release(host string) {
	l.mu.Lock()
	if l.inUse[host]--; l.inUse[host] <= 0 {
		delete(l.inUse, host)
	}
	close(l.wake)
	l.wake = make(chan struct{})
	l.mu.Unlock()
	if l.OnChange != nil {
		l.OnChange(-1)
	}
}

type releasingBody struct {
	io.ReadCloser
	release func()
}

func (b *releasingBody) Close() error {
	err := b.ReadCloser.Close()
	b.release()
	return err
}
