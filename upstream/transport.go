// Package upstream builds the HTTP transport the gateway uses for every
// outbound request, and classifies its failures.
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/elazarl/goproxy"
)

// Options configures the transport.
type Options struct {
	// CAFile is a PEM file of extra roots trusted besides the system ones.
	CAFile string
	// Proxy is an optional parent proxy URL. The process's own
	// HTTPS_PROXY is deliberately ignored: it could point at the gateway.
	Proxy string
	// Timeout bounds the dial, the TLS handshake and the wait for response
	// headers; never a whole body, which for a model can take an hour.
	Timeout time.Duration
	// Guard, when set, checks every dial (redirect hops included) against
	// the private-address policy; exempt it the hosts the operator named.
	Guard *Guard
}

// NewTransport returns a transport with explicit timeouts, no transparent
// compression (cached bytes must be the upstream's bytes), and the
// configured roots and parent proxy.
func NewTransport(opts Options) (*http.Transport, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading upstream.ca_file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream.ca_file %s holds no PEM certificate", opts.CAFile)
		}
	}
	var proxy func(*http.Request) (*url.URL, error)
	if opts.Proxy != "" {
		u, err := url.Parse(opts.Proxy)
		if err != nil {
			return nil, fmt.Errorf("parsing upstream.proxy: %w", err)
		}
		proxy = http.ProxyURL(u)
	}
	dialer := &net.Dialer{Timeout: opts.Timeout, KeepAlive: 30 * time.Second}
	dial := dialer.DialContext
	if opts.Guard != nil {
		dial = opts.Guard.Dial(dial)
	}
	return &http.Transport{
		Proxy:                 proxy,
		DialContext:           dial,
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   opts.Timeout,
		ResponseHeaderTimeout: opts.Timeout,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   32,
		ForceAttemptHTTP2:     true,
		DisableCompression:    true,
	}, nil
}

// IsTimeout reports whether err means the upstream did not answer in time
// (as opposed to refusing the connection or breaking it).
func IsTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Sanitize returns err with any request URL's query string and user info
// removed: upstream URLs carry signatures (and, on some storage hosts,
// credentials) in their queries, and url.Error prints the whole URL. The
// result still unwraps to the original cause, so IsTimeout keeps working.
func Sanitize(err error) error {
	var ue *url.Error
	if err == nil || !errors.As(err, &ue) {
		return err
	}
	clean := "(unparseable URL)"
	if u, perr := url.Parse(ue.URL); perr == nil {
		clean = (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
	}
	return &url.Error{Op: ue.Op, URL: clean, Err: ue.Err}
}

// TunnelDialer returns the dialer for forward-proxy tunnels: direct, with
// the transport's dial timeout, or through the parent proxy when one is
// configured (http/https parents speak CONNECT; a socks5 parent is used by
// the transport only, and tunnels dial directly).
func TunnelDialer(opts Options, tr *http.Transport) func(ctx context.Context, addr string) (net.Conn, error) {
	if opts.Proxy != "" {
		if u, err := url.Parse(opts.Proxy); err == nil && (u.Scheme == "http" || u.Scheme == "https") {
			viaParent := (&goproxy.ProxyHttpServer{Tr: tr}).NewConnectDialToProxy(opts.Proxy)
			if viaParent != nil {
				return func(_ context.Context, addr string) (net.Conn, error) { return viaParent("tcp", addr) }
			}
		}
	}
	return func(ctx context.Context, addr string) (net.Conn, error) { return tr.DialContext(ctx, "tcp", addr) }
}

// RangeHeader is the Range a fill sends for bytes [off, end) of a blob of
// size bytes: none for the whole blob, "bytes=off-" to its end.
func RangeHeader(off, end, size int64) string {
	switch {
	case off == 0 && end >= size:
		return ""
	case end >= size:
		return fmt.Sprintf("bytes=%d-", off)
	default:
		return fmt.Sprintf("bytes=%d-%d", off, end-1)
	}
}

// BodyRange checks the answer to a GET of bytes [off, end) of a file of
// the given size (sent with RangeHeader) and returns the offset its body
// starts at: off for a 206 that matches, 0 for a 200 (the whole file: the
// upstream ignored the range).
func BodyRange(resp *http.Response, off, end, size int64) (int64, error) {
	var start int64
	want := size
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusPartialContent && RangeHeader(off, end, size) != "":
		var first, last, total int64
		if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-%d/%d", &first, &last, &total); err != nil ||
			first != off || last != min(end, size)-1 || total != size {
			return 0, fmt.Errorf("range answer %q does not match %s of %d", resp.Header.Get("Content-Range"), RangeHeader(off, end, size), size)
		}
		start, want = off, min(end, size)-off
	default:
		return 0, fmt.Errorf("download answered %d", resp.StatusCode)
	}
	if ce := resp.Header.Get("Content-Encoding"); ce != "" && ce != "identity" {
		return 0, fmt.Errorf("download is %s-encoded", ce)
	}
	if resp.ContentLength >= 0 && resp.ContentLength != want {
		return 0, fmt.Errorf("download is %d bytes, want %d", resp.ContentLength, want)
	}
	return start, nil
}

// DrainClose reads a little of a discarded response body, so that its
// connection can be reused, and closes it.
func DrainClose(body io.ReadCloser) {
	io.CopyN(io.Discard, body, 64<<10)
	body.Close()
}
