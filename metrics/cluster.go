package metrics

import "github.com/prometheus/client_golang/prometheus"

// ClusterEvents are what the shared S3 tier reports (s3tier.Options.OnEvent).
var ClusterEvents = []string{"bucket_hit", "lease_taken", "lease_takeover", "lease_wait", "lease_lost", "upload", "upload_part", "upload_resumed", "upload_refused", "upload_aborted", "upload_failed", "unreachable"}

// RegisterCluster registers modelgate_cluster_events_total{event} (every
// event pre-set to 0, so a rate() sees the first one) and returns the
// function that counts one; an unknown event is counted as "other".
func RegisterCluster(reg prometheus.Registerer) func(event string) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "cluster_events_total",
		Help: "Shared-bucket tier events: bucket_hit (a cold blob filled from the bucket), lease_taken, lease_takeover (a dead or stalled holder replaced), lease_wait (waited for another gateway's fill), lease_lost, upload (a blob published), upload_part, upload_resumed (another holder's upload continued), upload_refused (a holder that lost its lease did not complete), upload_aborted (a fill failed verification), upload_failed, unreachable (a fill went on locally without the bucket).",
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
