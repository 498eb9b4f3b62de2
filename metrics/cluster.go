package metrics

import "github.com/prometheus/client_golang/prometheus"

// ClusterEvents are what the shared S3 tier reports (s3tier.Options.OnEvent).
var ClusterEvents = []string{"bucket_hit", "lease_taken", "lease_takeover", "lease_wait", "lease_lost", "upload", "upload_failed", "unreachable", "evicted"}

// RegisterCluster registers modelgate_cluster_events_total{event} (every
// event pre-set to 0, so a rate() sees the first one) and returns the
// function that counts one; an unknown event is counted as "other".
func RegisterCluster(reg prometheus.Registerer) func(event string) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "cluster_events_total",
		Help: "Shared-bucket tier events: bucket_hit (a cold blob filled from the bucket), lease_taken, lease_takeover (a dead or stalled holder replaced), lease_wait (waited for another gateway's fill), lease_lost, upload, upload_failed, unreachable (a fill went on locally without the bucket), evicted (a blob evicted from the bucket by this gateway).",
	}, []string{"event"})
	known := map[string]bool{}
	for _, e := range ClusterEvents {
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
