// Package s3tier keeps blobs in an S3-compatible bucket shared by several
// gateways, behind each one's local disk, and makes sure only one of them
// fetches a blob from the upstream at a time.
//
// Layout in the bucket (every key under the configured prefix):
//
//	blobs/<algo>/<hex>    a blob, by content id, uploaded only after the
//	                      uploading node verified it (immutable)
//	leases/<algo>/<hex>   the fill lease of a blob (a small JSON document)
//	uploads/<algo>/<hex>  the record of a blob's multipart upload in
//	                      progress (upload.go)
//
// The lease protocol uses conditional writes only, so it needs no clock
// agreement between nodes and no other coordination service:
//
//   - take: PUT with If-None-Match: * (the lease does not exist);
//   - renew: PUT with If-Match: <the etag of our last write>; every write
//     carries a fresh nonce, so every write changes the etag;
//   - expiry is judged by the observer: a lease whose etag has not changed
//     for a whole TTL of the observer's own clock is expired, and is taken
//     over with If-Match: <that etag> (one taker wins, the others get 412);
//   - release: DELETE, once the blob is in the bucket (or the fill failed).
//
// The holder renews every TTL/3 while its fill (download, then upload) moves
// bytes; a holder that dies or stalls stops renewing and is replaced one TTL
// after the last renewal its observers saw. A renewal that gets 412 means
// the lease was taken over: the holder goes on for its own clients but no
// longer renews, releases, uploads or completes (upload.go).
package s3tier

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/modelgate/modelgate/cache"
)

// Options configures a Tier.
type Options struct {
	// Endpoint is the S3 endpoint URL: https://s3.example.com or
	// http://127.0.0.1:9000.
	Endpoint string
	Bucket   string
	// Prefix starts every key the gateways write ("" or ending in "/").
	Prefix    string
	Region    string
	PathStyle bool
	// Credentials; all empty means anonymous requests.
	AccessKeyID, SecretAccessKey, SessionToken string
	// Transport carries every request to the endpoint (its dialer passes
	// the outbound guard; its roots include storage.s3.ca_file).
	Transport http.RoundTripper
	// LeaseTTL is how long a lease lives without renewal. Default 30s.
	LeaseTTL time.Duration
	// Node names this gateway in the leases it writes (for operators
	// reading the bucket); default the host name.
	Node string
	// PartSize is the multipart part size of uploads. Default 16 MiB.
	PartSize uint64
	Logger   *slog.Logger
	// OnEvent, when set, counts what happens: "bucket_hit", "lease_taken",
	// "lease_takeover", "lease_wait", "lease_lost", "upload", "upload_part",
	// "upload_resumed", "upload_refused", "upload_aborted", "upload_failed",
	// "unreachable" (a fill went on locally without the bucket), "evicted",
	// and for peer streaming "peer_stream", "peer_fallback".
	OnEvent func(event string)
	// OnBytes, when set, counts the bytes fills got from each source:
	// "bucket", "peer", "upstream".
	OnBytes func(source string, n int64)

	// Peer streaming (see peer.go), off while PeerSecret is empty.
	// Advertise is this gateway's URL for the others (cluster.advertise),
	// written into the leases it takes.
	Advertise string
	// PeerSecret is cluster.secret: it signs requests to other gateways.
	PeerSecret []byte
	// PeerTransport carries them; its dials reach only cluster.peers.
	PeerTransport http.RoundTripper

	// Eviction of the bucket's blobs (see evict.go).
	//
	// MaxSize bounds the total size of the bucket's blobs; 0 is unbounded.
	MaxSize int64
	// AccessEvery is how often at most a node records that it read a
	// blob. Default 1h.
	AccessEvery time.Duration
	// EvictEvery is how often StartMaintenance runs an eviction. Default 1m.
	EvictEvery time.Duration
	// Pinned returns the blobs this node's pins resolve to; they are
	// published to the bucket and no node evicts them.
	Pinned func() map[cache.Digest]bool
	// OnEvict, when set, is called for every blob evicted from the bucket.
	OnEvict func(d cache.Digest, size int64)
}

// Tier is a cache.Tier over one bucket.
type Tier struct {
	c        *minio.Client
	core     minio.Core
	bucket   string
	prefix   string
	ttl      time.Duration
	poll     time.Duration
	node     string
	partSize uint64
	log      *slog.Logger
	onEvent  func(string)
	onBytes  func(string, int64)

	advertise  string
	peerSecret []byte
	peerClient *http.Client
	ev         evictState
}

var _ cache.Tier = (*Tier)(nil)

// New returns a Tier for the bucket. It does not contact the endpoint: an
// unreachable bucket at start must not keep the hot tier from serving.
func New(opts Options) (*Tier, error) {
	u, err := url.Parse(opts.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("s3tier: endpoint %q is not an http(s) URL", opts.Endpoint)
	}
	lookup := minio.BucketLookupAuto
	if opts.PathStyle {
		lookup = minio.BucketLookupPath
	}
	var creds *credentials.Credentials
	if opts.AccessKeyID != "" || opts.SecretAccessKey != "" {
		creds = credentials.NewStaticV4(opts.AccessKeyID, opts.SecretAccessKey, opts.SessionToken)
	} else {
		creds = credentials.New(&credentials.Static{}) // anonymous
	}
	c, err := minio.New(u.Host, &minio.Options{
		Creds:        creds,
		Secure:       u.Scheme == "https",
		Region:       opts.Region,
		BucketLookup: lookup,
		Transport:    opts.Transport,
	})
	if err != nil {
		return nil, fmt.Errorf("s3tier: client: %w", err)
	}
	t := &Tier{
		c: c, core: minio.Core{Client: c},
		bucket: opts.Bucket, prefix: opts.Prefix,
		ttl: opts.LeaseTTL, node: opts.Node, partSize: opts.PartSize,
		log: opts.Logger, onEvent: opts.OnEvent, onBytes: opts.OnBytes,
		advertise: opts.Advertise, peerSecret: opts.PeerSecret,
	}
	if len(t.peerSecret) > 0 {
		if opts.PeerTransport == nil {
			return nil, errors.New("s3tier: peer streaming needs a PeerTransport")
		}
		t.peerClient = &http.Client{
			Transport: opts.PeerTransport,
			// A peer answers itself; a redirect is not followed anywhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if t.onBytes == nil {
		t.onBytes = func(string, int64) {}
	}
	if t.ttl <= 0 {
		t.ttl = 30 * time.Second
	}
	t.ev.init(opts)
	// Waiters look often enough to notice a finished blob or an expired
	// lease soon, rarely enough not to load the store.
	t.poll = min(max(t.ttl/10, 50*time.Millisecond), 2*time.Second)
	if t.node == "" {
		t.node, _ = os.Hostname()
	}
	if t.partSize == 0 {
		t.partSize = 16 << 20
	}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if t.onEvent == nil {
		t.onEvent = func(string) {}
	}
	return t, nil
}

func (t *Tier) blobKey(d cache.Digest) string {
	return t.prefix + "blobs/" + string(d.Algo) + "/" + d.Hex
}

func (t *Tier) leaseKey(d cache.Digest) string {
	return t.prefix + "leases/" + string(d.Algo) + "/" + d.Hex
}

func isNotFound(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.StatusCode == http.StatusNotFound || r.Code == "NoSuchKey" || r.Code == "NotFound"
}

func isPreconditionFailed(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.StatusCode == http.StatusPreconditionFailed || r.Code == "PreconditionFailed" ||
		r.StatusCode == http.StatusConflict // a concurrent conditional write (AWS answers 409)
}

// Has reports whether the bucket holds blob d of the given size. A copy of
// another size is not d (the digest names the size too) and is ignored.
func (t *Tier) Has(ctx context.Context, d cache.Digest, size int64) (bool, error) {
	info, err := t.c.StatObject(ctx, t.bucket, t.blobKey(d), minio.StatObjectOptions{})
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("s3tier: stat %s: %w", d, err)
	}
	return info.Size == size, nil
}

// Source returns a cache.Source reading blob d from the bucket with ranged
// GETs.
func (t *Tier) Source(d cache.Digest) cache.Source {
	return func(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
		var opts minio.GetObjectOptions
		if err := opts.SetRange(off, end-1); err != nil {
			return nil, 0, err
		}
		body, _, _, err := t.core.GetObject(ctx, t.bucket, t.blobKey(d), opts)
		if err != nil {
			return nil, 0, fmt.Errorf("s3tier: get %s [%d,%d): %w", d, off, end, err)
		}
		return body, off, nil
	}
}

// Fill implements cache.Tier: the bucket's copy when there is one;
// otherwise the upstream, once this node holds the blob's lease, or the
// bucket's copy once the holder published it.
func (t *Tier) Fill(ctx context.Context, d cache.Digest, size int64, upstream cache.Source) (cache.TierFill, error) {
	return t.fill(ctx, d, size, upstream, "")
}

// fill is Fill; with peer streaming on, a node that finds another holding
// the lease streams from it, unless it is skipPeer (a holder that already
// failed this fill).
func (t *Tier) fill(ctx context.Context, d cache.Digest, size int64, upstream cache.Source, skipPeer string) (cache.TierFill, error) {
	var (
		seenETag  string
		seenAt    time.Time
		lastOK    = time.Now()
		announced bool
		// peerChecked is the lease etag whose holder was last looked up.
		peerChecked string
	)
	for {
		has, rd, err := t.openRead(ctx, d, size)
		if err == nil && has {
			t.onEvent("bucket_hit")
			return t.counted(t.fromBucket(d, rd), "bucket"), nil
		}
		if err == nil {
			var l *lease
			l, seenETag, seenAt, err = t.tryLease(ctx, d, seenETag, seenAt)
			if err == nil && l != nil {
				return t.counted(l.fill(ctx, upstream, size), "upstream"), nil
			}
		}
		switch {
		case ctx.Err() != nil:
			return cache.TierFill{}, context.Cause(ctx)
		case err != nil:
			// The bucket is unreachable (or refuses us): a node never
			// waits longer for it than a lease would live.
			if time.Since(lastOK) >= t.ttl || !announced {
				t.log.Warn("shared bucket unreachable; filling locally from the upstream", "blob", d.String(), "err", err)
				t.onEvent("unreachable")
				return t.counted(cache.TierFill{Source: upstream}, "upstream"), nil
			}
		default:
			lastOK = time.Now()
			if seenETag != peerChecked {
				// A lease new to us (or renewed): does it name a holder
				// this node can stream from?
				peerChecked = seenETag
				if tf, ok := t.streamFromPeer(ctx, d, size, upstream, skipPeer); ok {
					return tf, nil
				}
			}
			if !announced {
				announced = true
				t.onEvent("lease_wait")
				t.log.Debug("another gateway is fetching the blob; waiting for it", "blob", d.String())
			}
		}
		timer := time.NewTimer(t.poll)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return cache.TierFill{}, context.Cause(ctx)
		}
	}
}

// fromBucket fills the hot tier from the bucket's verified copy.
func (t *Tier) fromBucket(d cache.Digest, rd *bucketRead) cache.TierFill {
	return cache.TierFill{
		Source:  t.Source(d),
		Trusted: true,
		Done: func(_ string, err error) {
			rd.end()
			var mismatch *cache.DigestMismatchError
			if errors.As(err, &mismatch) {
				// Only a verified blob is ever uploaded, so this copy was
				// damaged in the bucket; remove it so that the next fill
				// fetches a good one.
				t.log.Error("the bucket's copy of a blob does not match its digest; removing it", "blob", d.String())
				_ = t.c.RemoveObject(context.Background(), t.bucket, t.blobKey(d), minio.RemoveObjectOptions{})
			}
		},
	}
}

// leaseDoc is a lease's content; only the etag matters to the lease
// protocol, and Advertise to peer streaming; the rest is for an operator
// reading the bucket.
type leaseDoc struct {
	Node    string    `json:"node"`
	Nonce   string    `json:"nonce"`
	Written time.Time `json:"written"`
	TTL     string    `json:"ttl"`
	// Advertise is where the holder serves its fill to the other nodes
	// (peer streaming), when it does.
	Advertise string `json:"advertise,omitempty"`
}

func (t *Tier) leaseBody() []byte {
	b, _ := t.leaseBodyNonce()
	return b
}

// leaseBodyNonce is a lease's content and its nonce, which tells this
// write from every other.
func (t *Tier) leaseBodyNonce() ([]byte, string) {
	var n [12]byte
	_, _ = rand.Read(n[:])
	nonce := hex.EncodeToString(n[:])
	b, _ := json.Marshal(leaseDoc{Node: t.node, Advertise: t.advertise, Nonce: nonce, Written: time.Now().UTC(), TTL: t.ttl.String()})
	return b, nonce
}

// readLease reads d's lease as it is now: its content and etag.
func (t *Tier) readLease(ctx context.Context, d cache.Digest) (leaseDoc, string, error) {
	obj, info, _, err := t.core.GetObject(ctx, t.bucket, t.leaseKey(d), minio.GetObjectOptions{})
	if err != nil {
		return leaseDoc{}, "", err
	}
	defer obj.Close()
	var doc leaseDoc
	if err := json.NewDecoder(io.LimitReader(obj, 4<<10)).Decode(&doc); err != nil {
		return leaseDoc{}, "", fmt.Errorf("s3tier: reading lease of %s: %w", d, err)
	}
	return doc, trimETag(info.ETag), nil
}

// putLease writes the lease: create-only when match is "", else only over
// the version with etag match. It returns the new etag.
func (t *Tier) putLease(ctx context.Context, d cache.Digest, match string) (string, error) {
	etag, _, err := t.putLeaseNonce(ctx, d, match)
	return etag, err
}

// putLeaseNonce is putLease, also returning the nonce of what it wrote
// (or tried to).
func (t *Tier) putLeaseNonce(ctx context.Context, d cache.Digest, match string) (string, string, error) {
	body, nonce := t.leaseBodyNonce()
	opts := minio.PutObjectOptions{ContentType: "application/json", DisableMultipart: true}
	if match == "" {
		opts.SetMatchETagExcept("*")
	} else {
		opts.SetMatchETag(match)
	}
	info, err := t.c.PutObject(ctx, t.bucket, t.leaseKey(d), bytes.NewReader(body), int64(len(body)), opts)
	if err != nil {
		return "", nonce, err
	}
	return trimETag(info.ETag), nonce, nil
}

// tryLease takes the lease of d if it is free or expired. It returns nil
// (and what it observed of the current lease) when another node holds it.
func (t *Tier) tryLease(ctx context.Context, d cache.Digest, seenETag string, seenAt time.Time) (*lease, string, time.Time, error) {
	info, err := t.c.StatObject(ctx, t.bucket, t.leaseKey(d), minio.StatObjectOptions{})
	switch {
	case isNotFound(err):
		etag, err := t.putLease(ctx, d, "")
		if isPreconditionFailed(err) {
			return nil, "", time.Time{}, nil // another node was first
		}
		if err != nil {
			return nil, "", time.Time{}, fmt.Errorf("s3tier: taking lease of %s: %w", d, err)
		}
		t.onEvent("lease_taken")
		return t.newLease(d, etag), "", time.Time{}, nil
	case err != nil:
		return nil, seenETag, seenAt, fmt.Errorf("s3tier: stat lease of %s: %w", d, err)
	}
	etag := trimETag(info.ETag)
	if etag != seenETag {
		// New to us (or renewed since we looked): its TTL starts now, on
		// our clock.
		return nil, etag, time.Now(), nil
	}
	if time.Since(seenAt) < t.ttl {
		return nil, seenETag, seenAt, nil
	}
	newETag, err := t.putLease(ctx, d, etag)
	if isPreconditionFailed(err) || isNotFound(err) {
		return nil, "", time.Time{}, nil // renewed, released or taken by another
	}
	if err != nil {
		return nil, seenETag, seenAt, fmt.Errorf("s3tier: taking over lease of %s: %w", d, err)
	}
	t.log.Warn("took over the fill lease of a gateway that stopped renewing it", "blob", d.String(), "ttl", t.ttl)
	t.onEvent("lease_takeover")
	return t.newLease(d, newETag), "", time.Time{}, nil
}
