package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ClusterEvents are what the shared S3 tier reports (s3tier.Options.OnEvent,
// s3tier.PeerServerOptions.OnEvent).
var ClusterEvents = []string{"bucket_hit", "lease_taken", "lease_takeover", "lease_wait", "lease_lost", "upload", "upload_part", "upload_resumed", "upload_refused", "upload_aborted", "upload_failed", "unreachable",
	"peer_stream", "peer_fallback", "peer_served", "peer_refused", "evicted"}

// ClusterByteSources are where a cluster node's fills got their bytes
// ("bucket", "peer", "upstream") and what it sent to other nodes
// ("peer_sent").
var ClusterByteSources = []string{"bucket", "peer", "upstream", "peer_sent"}

// RegisterCluster registers modelgate_cluster_events_total{event} (every
// event pre-set to 0, so a rate() sees the first one) and returns the
// function that counts one; an unknown event is counted as "other".
func RegisterCluster(reg prometheus.Registerer) func(event string) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "cluster_events_total",
		Help: "Shared-bucket tier events: bucket_hit (a cold blob filled from the bucket), lease_taken, lease_takeover (a dead or stalled holder replaced), lease_wait (waited for another gateway's fill), lease_lost, upload (a blob published), upload_part, upload_resumed (another holder's upload continued), upload_refused (a holder that lost its lease did not complete), upload_aborted (a fill failed verification), upload_failed, unreachable (a fill went on locally without the bucket), peer_stream (a fill streamed from the gateway holding the lease), peer_fallback (that gateway failed; waited on the lease instead), peer_served (a stream sent whole to another gateway), peer_refused (a node-to-node request refused: unsigned, bad or stale signature, or from outside cluster.peers), evicted (a blob evicted from the bucket by this gateway).",
	}, []string{"event"})
	return counterFunc(reg, c, ClusterEvents)
}

// RegisterClusterBytes registers modelgate_cluster_bytes_total{source} and
// returns the function that adds to it (s3tier's OnBytes).
func RegisterClusterBytes(reg prometheus.Registerer) func(source string, n int64) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "cluster_bytes_total",
		Help: "Blob bytes by source: what this gateway's fills got from the bucket, from a peer gateway's fill in progress (peer) and from the upstream (upstream), and what it sent to peer gateways (peer_sent). Hot-tier hits are modelgate_served_bytes_total.",
	}, []string{"source"})
	known := map[string]prometheus.Counter{}
	for _, s := range ClusterByteSources {
		known[s] = c.WithLabelValues(s)
	}
	reg.MustRegister(c)
	return func(source string, n int64) {
		if k, ok := known[source]; ok {
			k.Add(float64(n))
		}
	}
}

func counterFunc(reg prometheus.Registerer, c *prometheus.CounterVec, labels []string) func(string) {
	known := map[string]bool{}
	for _, e := range labels {
		known[e] = true
		c.WithLabelValues(e)
	}
	reg.MustRegister(c)
	return func(event string) {
		if !known[event] {
			event = "other"
		}
		c.WithLabelValues(event).Inc()
	}
}

// S3Ops are the operation labels of the S3 request metrics.
var S3Ops = []string{"stat", "get", "put", "put_part", "create_multipart", "complete_multipart", "abort_multipart", "delete", "list", "other"}

// InstrumentS3 wraps the transport of the S3 client:
// modelgate_s3_request_duration_seconds{op} (time to the response
// headers) and modelgate_s3_request_errors_total{op} (no answer, a 5xx, or
// a 400/401/403: the service failing or refusing us; the protocol's own
// answers — 404 for a missing object, 304/409/412 for a conditional write
// that lost, 416 — are not errors). The operation is read from the method
// and the query's sub-resource, never from a key or a credential.
func InstrumentS3(reg prometheus.Registerer, next http.RoundTripper) http.RoundTripper {
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "s3_request_duration_seconds",
		Help:    "S3 requests by operation: time until the response headers arrived.",
		Buckets: prometheus.ExponentialBucketsRange(0.001, 60, 14),
	}, []string{"op"})
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "s3_request_errors_total",
		Help: "S3 requests that failed: no answer, 5xx, or 400/401/403 (bad credentials or configuration), by operation.",
	}, []string{"op"})
	for _, op := range S3Ops {
		dur.WithLabelValues(op)
		errs.WithLabelValues(op)
	}
	reg.MustRegister(dur, errs)
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		op := s3Op(r)
		start := time.Now()
		resp, err := next.RoundTrip(r)
		dur.WithLabelValues(op).Observe(time.Since(start).Seconds())
		if err != nil || resp.StatusCode >= 500 || resp.StatusCode == 400 || resp.StatusCode == 401 || resp.StatusCode == 403 {
			errs.WithLabelValues(op).Inc()
		}
		return resp, err
	})
}

// s3Op names an S3 request's operation.
func s3Op(r *http.Request) string {
	q := r.URL.Query()
	switch r.Method {
	case http.MethodHead:
		return "stat"
	case http.MethodGet:
		if q.Has("list-type") || q.Has("uploads") || q.Has("uploadId") || q.Has("location") || q.Has("prefix") {
			return "list"
		}
		return "get"
	case http.MethodPut:
		if q.Has("partNumber") {
			return "put_part"
		}
		return "put"
	case http.MethodPost:
		if q.Has("uploads") {
			return "create_multipart"
		}
		if q.Has("uploadId") {
			return "complete_multipart"
		}
		return "other"
	case http.MethodDelete:
		if q.Has("uploadId") {
			return "abort_multipart"
		}
		return "delete"
	}
	return "other"
}

// RegisterClusterBucket registers what this gateway's last scan of the
// shared bucket found (modelgate_cluster_bucket_blobs and _bytes, with the
// bound as modelgate_cluster_bucket_max_bytes, 0 for none) and returns the
// function that counts the bytes of a blob this gateway evicted from the
// bucket (modelgate_cluster_evicted_bytes_total).
func RegisterClusterBucket(reg prometheus.Registerer, maxBytes int64, stats func() (blobs, bytes int64)) func(size int64) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "cluster_bucket_blobs",
			Help: "Blobs in the shared bucket, as of this gateway's last scan (every storage.s3.evict_interval).",
		}, func() float64 { n, _ := stats(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "cluster_bucket_bytes",
			Help: "Total size of the blobs in the shared bucket, as of this gateway's last scan.",
		}, func() float64 { _, b := stats(); return float64(b) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "cluster_bucket_max_bytes",
			Help: "storage.s3.max_size; 0 means unbounded.",
		}, func() float64 { return float64(maxBytes) }),
	)
	evicted := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "cluster_evicted_bytes_total",
		Help: "Bytes of the blobs this gateway evicted from the shared bucket.",
	})
	reg.MustRegister(evicted)
	return func(size int64) { evicted.Add(float64(size)) }
}
