package s3tier

// Peer streaming: a gateway that finds another one holding a blob's fill
// lease streams the blob from that gateway (the holder's cluster.advertise,
// written in the lease) instead of waiting for the upload, so its clients
// get bytes as the holder gets them. The holder serves its fill in progress
// through cache.Store.OpenLocal (the final byte of a range only once the
// blob verified, as for its own readers); the streaming gateway still
// verifies the whole blob itself before publishing it, and never uploads
// it (it holds no lease). When the holder cannot be reached or refuses,
// the streaming gateway falls back to waiting on the lease as before, from
// the bytes it already has.

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/reqinfo"
)

// PeerPathPrefix is where a gateway serves blobs to the other gateways:
// PeerPathPrefix + "<algo>/<hex>", GET with one Range.
const PeerPathPrefix = "/_modelgate/cluster/v1/blobs/"

const (
	// PeerAuthHeader carries "t=<unix seconds>,s=<hex HMAC-SHA256>".
	PeerAuthHeader = "X-Modelgate-Peer-Auth"
	// peerAuthWindow is how far a request's timestamp may be from the
	// server's clock either way: short, so that a recorded request is
	// soon useless (and it only ever reads content-addressed bytes).
	peerAuthWindow = 30 * time.Second
)

// peerSignature is the MAC of one node-to-node request: its method, escaped
// path, Range header and timestamp, so a signature fits no other request.
func peerSignature(secret []byte, method, path, rng string, ts int64) string {
	m := hmac.New(sha256.New, secret)
	fmt.Fprintf(m, "modelgate-peer-v1\n%s\n%s\n%s\n%d", method, path, rng, ts)
	return hex.EncodeToString(m.Sum(nil))
}

// SignPeerRequest signs r for another gateway of the cluster. The secret
// itself never goes on the wire.
func SignPeerRequest(r *http.Request, secret []byte, now time.Time) {
	ts := now.Unix()
	sig := peerSignature(secret, r.Method, r.URL.EscapedPath(), r.Header.Get("Range"), ts)
	r.Header.Set(PeerAuthHeader, "t="+strconv.FormatInt(ts, 10)+",s="+sig)
}

var (
	errPeerNoAuth  = errors.New("no signature")
	errPeerExpired = errors.New("signature outside the validity window (clocks more than 30s apart?)")
	errPeerBadSig  = errors.New("bad signature")
)

// VerifyPeerRequest checks r's signature against secret at now.
func VerifyPeerRequest(r *http.Request, secret []byte, now time.Time) error {
	v := r.Header.Get(PeerAuthHeader)
	if v == "" || len(secret) == 0 {
		return errPeerNoAuth
	}
	tsPart, sigPart, ok := strings.Cut(v, ",")
	tsStr, ok1 := strings.CutPrefix(tsPart, "t=")
	sig, ok2 := strings.CutPrefix(sigPart, "s=")
	ts, err := strconv.ParseInt(tsStr, 10, 64)
	if !ok || !ok1 || !ok2 || err != nil {
		return errPeerBadSig
	}
	if d := now.Sub(time.Unix(ts, 0)); d > peerAuthWindow || d < -peerAuthWindow {
		return errPeerExpired
	}
	want := peerSignature(secret, r.Method, r.URL.EscapedPath(), r.Header.Get("Range"), ts)
	if !hmac.Equal([]byte(want), []byte(sig)) {
		return errPeerBadSig
	}
	return nil
}

// LocalBlobs is what the peer endpoint reads: a blob published on this
// gateway's disk or being filled here, never a new fill.
type LocalBlobs interface {
	OpenLocal(ctx context.Context, d cache.Digest) (*cache.Blob, error)
}

// PeerServerOptions configures the node-to-node endpoint.
type PeerServerOptions struct {
	// Secret is cluster.secret; empty turns the endpoint off (every
	// request is a 404).
	Secret []byte
	// Peers are the networks (cluster.peers) whose clients it answers.
	Peers []netip.Prefix
	Blobs LocalBlobs
	// OnEvent counts "peer_served" (a stream sent whole) and
	// "peer_refused" (a request refused before any blob was looked at).
	OnEvent func(event string)
	// OnBytes counts the bytes sent to peers ("peer_sent").
	OnBytes func(source string, n int64)
	Logger  *slog.Logger
	// Now is the clock signatures are checked against (tests).
	Now func() time.Time
}

type peerServer struct{ opts PeerServerOptions }

// NewPeerServer returns the handler of PeerPathPrefix. Whatever is wrong
// with a request before its signature checked out — cluster mode off, a
// client outside cluster.peers, no signature, a bad or stale one — gets
// the same plain 404 as an unknown path, so that a worker probing it
// learns nothing; the reason goes to the log only.
func NewPeerServer(opts PeerServerOptions) http.Handler {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.OnEvent == nil {
		opts.OnEvent = func(string) {}
	}
	if opts.OnBytes == nil {
		opts.OnBytes = func(string, int64) {}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &peerServer{opts: opts}
}

func (s *peerServer) refuse(w http.ResponseWriter, r *http.Request, reason string) {
	reqinfo.Set(r.Context(), "cluster", "refused")
	if len(s.opts.Secret) > 0 {
		s.opts.OnEvent("peer_refused")
		s.opts.Logger.Info("refused a node-to-node request", "client", r.RemoteAddr, "reason", reason)
	}
	http.NotFound(w, r)
}

func (s *peerServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if len(s.opts.Secret) == 0 {
		s.refuse(w, r, "cluster.secret not set")
		return
	}
	if !clientIn(r, s.opts.Peers) {
		s.refuse(w, r, "client outside cluster.peers")
		return
	}
	if r.Method != http.MethodGet {
		s.refuse(w, r, "method "+r.Method)
		return
	}
	if err := VerifyPeerRequest(r, s.opts.Secret, s.opts.Now()); err != nil {
		s.refuse(w, r, err.Error())
		return
	}
	// Authenticated: from here on the answers may say what is wrong.
	rest := strings.TrimPrefix(r.URL.Path, PeerPathPrefix)
	algo, hexStr, _ := strings.Cut(rest, "/")
	d, err := cache.NewDigest(cache.Algo(algo), hexStr)
	if err != nil {
		reqinfo.Set(r.Context(), "cluster", "bad_request")
		http.Error(w, "not a content id: "+err.Error(), http.StatusBadRequest)
		return
	}
	start, last, ok := parseOneRange(r.Header.Get("Range"))
	if !ok {
		reqinfo.Set(r.Context(), "cluster", "bad_request")
		http.Error(w, "one Range: bytes=first-last is required", http.StatusBadRequest)
		return
	}
	b, err := s.opts.Blobs.OpenLocal(r.Context(), d)
	if err != nil {
		reqinfo.Set(r.Context(), "cluster", "not_here")
		if errors.Is(err, cache.ErrNotFound) {
			http.Error(w, "not on this gateway", http.StatusNotFound)
			return
		}
		http.Error(w, "blob unavailable", http.StatusServiceUnavailable)
		return
	}
	defer b.Close()
	if last >= b.Size || start > last {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", b.Size))
		http.Error(w, "range outside the blob", http.StatusRequestedRangeNotSatisfiable)
		return
	}
	// The cache's reader holds back the final byte of its range until the
	// blob verified. The peer verifies the blob itself, and its fill asks
	// for one piece per request: held back at every piece's end, it would
	// stall until this fill ends. So read one byte beyond the range and
	// send the range: only the blob's own final byte waits for this
	// node's verification.
	body, err := b.NewReader(r.Context(), start, min(last+2, b.Size))
	if err != nil {
		reqinfo.Set(r.Context(), "cluster", "failed")
		http.Error(w, "blob unavailable", http.StatusServiceUnavailable)
		return
	}
	defer body.Close()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, last, b.Size))
	h.Set("Content-Length", strconv.FormatInt(last+1-start, 10))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusPartialContent)
	n, err := io.CopyN(w, body, last+1-start)
	s.opts.OnBytes("peer_sent", n)
	if err != nil {
		// The fill failed (or the peer left): cut the connection so the
		// peer sees a broken body, never a short one taken for whole.
		reqinfo.Set(r.Context(), "cluster", "cut")
		panic(http.ErrAbortHandler)
	}
	reqinfo.Set(r.Context(), "cluster", "ok")
	s.opts.OnEvent("peer_served")
}

// parseOneRange reads "bytes=first-last" (both given).
func parseOneRange(v string) (first, last int64, ok bool) {
	spec, ok := strings.CutPrefix(v, "bytes=")
	if !ok {
		return 0, 0, false
	}
	a, b, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, 0, false
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || first < 0 || last < first {
		return 0, 0, false
	}
	return first, last, true
}

func clientIn(r *http.Request, nets []netip.Prefix) bool {
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

// peerBase checks a lease's advertise URL and returns it as a base URL, or
// "" when it is not one this node should dial.
func (t *Tier) peerBase(advertise, skip string) string {
	if advertise == "" || advertise == t.advertise || advertise == skip {
		return ""
	}
	u, err := url.Parse(advertise)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return ""
	}
	return u.Scheme + "://" + u.Host
}

// leaseHolder reads the advertise URL of the current lease of d ("" when
// there is none, or none this node may stream from).
func (t *Tier) leaseHolder(ctx context.Context, d cache.Digest) string {
	doc, _, err := t.readLease(ctx, d)
	if err != nil {
		return ""
	}
	return doc.Advertise
}

// streamFromPeer returns a fill streaming d from the holder of its lease,
// when peer streaming is on and the lease names a holder other than this
// node and skip.
func (t *Tier) streamFromPeer(ctx context.Context, d cache.Digest, size int64, upstream cache.Source, skip string) (cache.TierFill, bool) {
	if len(t.peerSecret) == 0 {
		return cache.TierFill{}, false
	}
	base := t.peerBase(t.leaseHolder(ctx, d), skip)
	if base == "" {
		return cache.TierFill{}, false
	}
	p := &peerFill{t: t, d: d, size: size, upstream: upstream, base: base}
	// Not Trusted: the holder's bytes are not verified yet; this node's
	// readers get a range's final byte once this node verified the blob.
	return cache.TierFill{Source: p.source, Done: p.done}, true
}

// peerFill is one fill streaming from a peer, until the peer fails it.
type peerFill struct {
	t        *Tier
	d        cache.Digest
	size     int64
	upstream cache.Source
	base     string

	mu       sync.Mutex
	started  bool            // a peer request succeeded
	fallback *cache.TierFill // what the fill uses once the peer failed
}

func (p *peerFill) source(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
	p.mu.Lock()
	fb := p.fallback
	p.mu.Unlock()
	if fb == nil {
		body, err := p.t.peerGet(ctx, p.base, p.d, p.size, off, end)
		if err == nil {
			p.mu.Lock()
			first := !p.started
			p.started = true
			p.mu.Unlock()
			if first {
				p.t.onEvent("peer_stream")
				p.t.log.Debug("streaming a blob from the gateway filling it", "blob", p.d.String(), "peer", p.base)
			}
			return &bytesBody{ReadCloser: body, source: "peer", count: p.t.onBytes}, off, nil
		}
		if ctx.Err() != nil {
			return nil, off, context.Cause(ctx)
		}
		// Holding mu while waiting: the fill's other requests need the
		// same answer, and get it when this one has it.
		p.mu.Lock()
		if p.fallback == nil {
			p.t.log.Warn("cannot stream a blob from the gateway filling it; waiting on its lease instead",
				"blob", p.d.String(), "peer", p.base, "err", err)
			p.t.onEvent("peer_fallback")
			tf, werr := p.t.fill(ctx, p.d, p.size, p.upstream, p.base)
			if werr != nil {
				p.mu.Unlock()
				return nil, off, werr
			}
			p.fallback = &tf
		}
		fb = p.fallback
		p.mu.Unlock()
	}
	return fb.Source(ctx, off, end)
}

func (p *peerFill) done(path string, err error) {
	p.mu.Lock()
	fb := p.fallback
	p.mu.Unlock()
	if fb != nil && fb.Done != nil {
		fb.Done(path, err) // a lease this node took over is released there
	}
}

// peerGet asks the peer at base for bytes [off, end) of d.
func (t *Tier) peerGet(ctx context.Context, base string, d cache.Digest, size, off, end int64) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+PeerPathPrefix+string(d.Algo)+"/"+d.Hex, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, end-1))
	SignPeerRequest(req, t.peerSecret, time.Now())
	resp, err := t.peerClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("s3tier: peer %s: %w", base, err)
	}
	want := fmt.Sprintf("bytes %d-%d/%d", off, end-1, size)
	if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") != want {
		resp.Body.Close()
		return nil, fmt.Errorf("s3tier: peer %s answered %s (Content-Range %q, want %q)", base, resp.Status, resp.Header.Get("Content-Range"), want)
	}
	return resp.Body, nil
}

// bytesBody counts what a fill read from one source.
type bytesBody struct {
	io.ReadCloser
	source string
	count  func(source string, n int64)
}

func (b *bytesBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.count(b.source, int64(n))
	}
	return n, err
}

// counted makes tf's source count its bytes as source's.
func (t *Tier) counted(tf cache.TierFill, source string) cache.TierFill {
	src := tf.Source
	tf.Source = func(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
		body, start, err := src(ctx, off, end)
		if err != nil {
			return nil, start, err
		}
		return &bytesBody{ReadCloser: body, source: source, count: t.onBytes}, start, nil
	}
	return tf
}
