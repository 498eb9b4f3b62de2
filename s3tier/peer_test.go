package s3tier

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/internal/versity"
	"github.com/modelgate/modelgate/upstream"
)

var (
	testSecret = []byte("0123456789abcdef0123456789abcdef")
	loopback   = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
)

// gatedOrigin serves a blob from memory; bytes from gateAt on wait until
// release. It counts the bytes it sent.
type gatedOrigin struct {
	data     []byte
	gateAt   int64
	gate     chan struct{}
	once     sync.Once
	released atomic.Bool
	sent     atomic.Int64
}

func newGatedOrigin(data []byte, gateAt int64) *gatedOrigin {
	return &gatedOrigin{data: data, gateAt: gateAt, gate: make(chan struct{})}
}

func (o *gatedOrigin) release() {
	o.once.Do(func() {
		o.released.Store(true)
		close(o.gate)
	})
}

func (o *gatedOrigin) source(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
	pr, pw := io.Pipe()
	go func() {
		for pos := off; pos < end; {
			if pos >= o.gateAt {
				select {
				case <-o.gate:
				case <-ctx.Done():
					pw.CloseWithError(ctx.Err())
					return
				}
			}
			stop := min(pos+16<<10, end)
			if pos < o.gateAt {
				stop = min(stop, o.gateAt)
			}
			n, err := pw.Write(o.data[pos:stop])
			o.sent.Add(int64(n))
			if err != nil {
				return
			}
			pos = stop
		}
		pw.Close()
	}()
	return pr, off, nil
}

// handlerSlot lets a test server exist before its handler (the tier needs
// the server's URL, the handler the tier's store).
type handlerSlot struct {
	h    atomic.Pointer[http.Handler]
	hits atomic.Int32
}

func (s *handlerSlot) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.hits.Add(1)
	(*s.h.Load()).ServeHTTP(w, r)
}

// peerNode is one gateway's share of a cluster: a tier on the bucket, a
// store, and the node-to-node endpoint on a real loopback listener.
type peerNode struct {
	tier  *Tier
	store *cache.Store
	srv   *httptest.Server
	slot  *handlerSlot
	ev    *events
	mu    sync.Mutex
	bytes map[string]int64
}

func (n *peerNode) addBytes(source string, k int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.bytes[source] += k
}

func (n *peerNode) bytesFrom(source string) int64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.bytes[source]
}

// newPeerNode starts a node whose outbound peer dials reach only dialNets
// and whose endpoint answers serveSecret-signed requests from loopback.
func newPeerNode(t *testing.T, srv *versity.Server, ttl time.Duration, secret, serveSecret []byte, dialNets []netip.Prefix) *peerNode {
	n := &peerNode{slot: &handlerSlot{}, ev: &events{}, bytes: map[string]int64{}}
	n.srv = httptest.NewServer(n.slot)
	t.Cleanup(n.srv.Close)
	var d net.Dialer
	tier, err := New(Options{
		Endpoint: srv.Endpoint, Bucket: srv.Bucket, Prefix: "mg/", PathStyle: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey,
		LeaseTTL: ttl, Node: t.Name(), OnEvent: n.ev.add, OnBytes: n.addBytes, Transport: http.DefaultTransport,
		Advertise: n.srv.URL, PeerSecret: secret,
		PeerTransport: &http.Transport{DialContext: upstream.NewGuard(false, nil).Only(dialNets).Dial(d.DialContext)},
	})
	require.NoError(t, err)
	n.tier = tier
	n.store = newStore(t, tier)
	var h http.Handler = NewPeerServer(PeerServerOptions{Secret: serveSecret, Peers: loopback, Blobs: n.store, OnEvent: n.ev.add, OnBytes: n.addBytes})
	n.slot.h.Store(&h)
	return n
}

// startRead starts a whole-blob read on s and returns its reader.
func startRead(t *testing.T, ctx context.Context, s *cache.Store, d cache.Digest, size int64, src cache.Source) io.ReadCloser {
	b, _, err := s.Get(ctx, d, size, src)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	r, err := b.NewReader(ctx, 0, size)
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return r
}

// The holder's upstream is held back; a node without the lease streams
// the bytes the holder has so far from it — its reader gets them before
// the holder could have finished (let alone uploaded) — then the rest, and
// verifies and keeps the blob without fetching or uploading anything.
func TestPeerStreamsFillInProgress(t *testing.T) {
	srv := versity.Start(t)
	data := randomBytes(10, 1<<20+5)
	d, size := digestOf(t, data), int64(len(data))
	// Three of the holder's pieces (256 KiB, which land whole: the fill
	// copies in 256 KiB reads) arrive; b's reader reads past the ends of
	// its own first pieces, so the holder must not hold back a piece's
	// last byte until its blob verified.
	up := newGatedOrigin(data, 768<<10)
	a := newPeerNode(t, srv, 2*time.Second, testSecret, testSecret, loopback)
	b := newPeerNode(t, srv, 2*time.Second, testSecret, testSecret, loopback)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	ra := startRead(t, ctx, a.store, d, size, up.source)
	require.Equal(t, 1, a.ev.get("lease_taken"))
	rb := startRead(t, ctx, b.store, d, size, up.source)
	first := make([]byte, 600<<10)
	_, err := io.ReadFull(rb, first)
	require.NoError(t, err, "b's reader got no byte while the holder's upstream is held back: %v %v %v", b.ev.n, b.bytes, a.bytes)
	require.False(t, up.released.Load())
	require.True(t, bytes.Equal(data[:len(first)], first))
	require.Zero(t, a.ev.get("upload"), "uploaded before the upstream sent everything?")

	up.release()
	rest, err := io.ReadAll(rb)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, append(first, rest...)), "b's reader got wrong bytes")
	all, err := io.ReadAll(ra)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, all))

	assert.Equal(t, size, up.sent.Load(), "upstream bytes for the cluster")
	assert.Equal(t, 1, b.ev.get("peer_stream"))
	assert.Zero(t, b.ev.get("peer_fallback"))
	assert.Zero(t, b.ev.get("lease_taken")+b.ev.get("lease_takeover")+b.ev.get("upload"), "b holds no lease and uploads nothing")
	assert.GreaterOrEqual(t, b.bytesFrom("peer"), size)
	assert.Zero(t, b.bytesFrom("upstream")+b.bytesFrom("bucket"))
	assert.GreaterOrEqual(t, a.bytesFrom("peer_sent"), size)
	assert.Equal(t, size, a.bytesFrom("upstream"))
	require.Eventually(t, func() bool { return b.store.Has(d) }, 10*time.Second, 10*time.Millisecond, "b verified and kept the blob")
	require.Eventually(t, func() bool {
		return a.ev.get("upload") == 1 && slices.Equal([]string{"mg/blobs/sha256/" + d.Hex}, fillKeys(t, srv))
	}, 10*time.Second, 10*time.Millisecond, "the blob, and no lease left")
}

// A holder that refuses the stream (another secret), one outside
// cluster.peers, or one that goes away mid-stream: the other node waits
// on the lease as before and takes the blob from the bucket once the
// holder uploaded it; its reader gets the right bytes, and the upstream
// sends the blob once.
func TestPeerStreamFallsBackToTheLease(t *testing.T) {
	tests := []struct {
		name      string
		bSecret   []byte
		bDials    []netip.Prefix
		dieMidway bool
	}{
		{name: "holder refuses another secret", bSecret: []byte("another-secret-of-32-characters!")},
		{name: "holder outside cluster.peers", bSecret: testSecret, bDials: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		{name: "holder's endpoint gone mid-stream", bSecret: testSecret, dieMidway: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := versity.Start(t)
			data := randomBytes(11, 1<<20+77)
			d, size := digestOf(t, data), int64(len(data))
			up := newGatedOrigin(data, 300<<10)
			a := newPeerNode(t, srv, 2*time.Second, testSecret, testSecret, loopback)
			dials := loopback
			if tt.bDials != nil {
				dials = tt.bDials
			}
			b := newPeerNode(t, srv, 2*time.Second, tt.bSecret, tt.bSecret, dials)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			ra := startRead(t, ctx, a.store, d, size, up.source)
			var first []byte
			var rb io.ReadCloser
			if tt.dieMidway {
				rb = startRead(t, ctx, b.store, d, size, up.source)
				first = make([]byte, 100<<10)
				_, err := io.ReadFull(rb, first)
				require.NoError(t, err)
				a.srv.Listener.Close()
				a.srv.CloseClientConnections()
			} else {
				// b's Get returns once its fill's source answered: here,
				// once the wait on the lease ended, after the release.
				type got struct {
					b   *cache.Blob
					err error
				}
				opened := make(chan got, 1)
				go func() {
					blob, _, err := b.store.Get(ctx, d, size, up.source)
					opened <- got{blob, err}
				}()
				require.Eventually(t, func() bool { return b.ev.get("peer_fallback") == 1 }, 20*time.Second, 5*time.Millisecond)
				up.release()
				o := <-opened
				require.NoError(t, o.err)
				defer o.b.Close()
				var err error
				rb, err = o.b.NewReader(ctx, 0, size)
				require.NoError(t, err)
				defer rb.Close()
			}
			require.Eventually(t, func() bool { return b.ev.get("peer_fallback") == 1 }, 20*time.Second, 5*time.Millisecond)
			up.release()
			rest, err := io.ReadAll(rb)
			require.NoError(t, err)
			require.True(t, bytes.Equal(data, append(first, rest...)), "b's reader got wrong bytes")
			_, err = io.ReadAll(ra)
			require.NoError(t, err)

			assert.Equal(t, size, up.sent.Load(), "upstream bytes for the cluster")
			assert.Equal(t, 1, b.ev.get("bucket_hit"), "b took the rest from the bucket")
			assert.Zero(t, b.ev.get("upload"))
			switch {
			case tt.bDials != nil:
				assert.Zero(t, a.slot.hits.Load(), "a dial outside cluster.peers reached the holder")
			case !tt.dieMidway:
				assert.GreaterOrEqual(t, a.ev.get("peer_refused"), 1)
				assert.Zero(t, a.bytesFrom("peer_sent"))
			}
		})
	}
}

// The endpoint answers only a client in cluster.peers whose request is
// signed with the secret, for this very method, path and range, within
// the validity window; every refusal is the same bare 404 as an unknown
// path, and with no secret configured everything is.
func TestPeerEndpointAuth(t *testing.T) {
	data := randomBytes(12, 64<<10)
	d, size := digestOf(t, data), int64(len(data))
	dir := t.TempDir()
	idx, err := cache.OpenIndex(filepath.Join(dir, "index"), nil)
	require.NoError(t, err)
	store, err := cache.Open(cache.Options{Dir: dir, Index: idx})
	require.NoError(t, err)
	t.Cleanup(func() {
		store.Close()
		idx.Close()
	})
	_ = get(t, store, d, size, (&origin{data: data}).source, 0, size)
	require.True(t, store.AwaitPublished(context.Background(), d))

	now := time.Now()
	serve := func(secret []byte, peers []netip.Prefix) *httptest.Server {
		s := httptest.NewServer(NewPeerServer(PeerServerOptions{Secret: secret, Peers: peers, Blobs: store, Now: func() time.Time { return now }}))
		t.Cleanup(s.Close)
		return s
	}
	on := serve(testSecret, loopback)
	off := serve(nil, loopback)
	elsewhere := serve(testSecret, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	path := PeerPathPrefix + "sha256/" + d.Hex
	const rng = "bytes=100-4195"

	plain404 := func() []byte {
		resp, err := http.Get(on.URL + "/_modelgate/cluster/v1/nothing-here")
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		require.Equal(t, http.StatusNotFound, resp.StatusCode)
		return b
	}()

	tests := []struct {
		name   string
		srv    *httptest.Server
		method string
		path   string
		sign   func(r *http.Request)
		want   int
	}{
		{"good signature", on, http.MethodGet, path, func(r *http.Request) { SignPeerRequest(r, testSecret, now) }, http.StatusPartialContent},
		{"a little clock skew", on, http.MethodGet, path, func(r *http.Request) { SignPeerRequest(r, testSecret, now.Add(-20*time.Second)) }, http.StatusPartialContent},
		{"no signature", on, http.MethodGet, path, func(*http.Request) {}, http.StatusNotFound},
		{"another secret", on, http.MethodGet, path, func(r *http.Request) { SignPeerRequest(r, []byte("0123456789abcdef0123456789abcdeX"), now) }, http.StatusNotFound},
		{"expired", on, http.MethodGet, path, func(r *http.Request) { SignPeerRequest(r, testSecret, now.Add(-31*time.Second)) }, http.StatusNotFound},
		{"from the future", on, http.MethodGet, path, func(r *http.Request) { SignPeerRequest(r, testSecret, now.Add(31*time.Second)) }, http.StatusNotFound},
		{"signed for another range", on, http.MethodGet, path, func(r *http.Request) {
			SignPeerRequest(r, testSecret, now)
			r.Header.Set("Range", "bytes=0-65535")
		}, http.StatusNotFound},
		{"signed for another path", on, http.MethodGet, path, func(r *http.Request) {
			SignPeerRequest(r, testSecret, now)
			r.URL.Path = PeerPathPrefix + "sha256/" + d.Hex[:63] + "0"
		}, http.StatusNotFound},
		{"garbage header", on, http.MethodGet, path, func(r *http.Request) { r.Header.Set(PeerAuthHeader, "t=x,s=y") }, http.StatusNotFound},
		{"the secret itself as a header", on, http.MethodGet, path, func(r *http.Request) {
			r.Header.Set(PeerAuthHeader, fmt.Sprintf("t=%d,s=%s", now.Unix(), testSecret))
		}, http.StatusNotFound},
		{"signed POST", on, http.MethodPost, path, func(r *http.Request) { SignPeerRequest(r, testSecret, now) }, http.StatusNotFound},
		{"cluster mode off", off, http.MethodGet, path, func(r *http.Request) { SignPeerRequest(r, nil, now) }, http.StatusNotFound},
		{"client outside cluster.peers", elsewhere, http.MethodGet, path, func(r *http.Request) { SignPeerRequest(r, testSecret, now) }, http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, tt.srv.URL+tt.path, nil)
			require.NoError(t, err)
			req.Header.Set("Range", rng)
			tt.sign(req)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.Equal(t, tt.want, resp.StatusCode)
			if tt.want == http.StatusPartialContent {
				assert.Equal(t, fmt.Sprintf("bytes 100-4195/%d", size), resp.Header.Get("Content-Range"))
				assert.True(t, bytes.Equal(data[100:4196], body))
				return
			}
			assert.Equal(t, plain404, body, "a refusal must look like any unknown path")
			assert.Empty(t, resp.Header.Get("Content-Range"))
		})
	}
}
