// Package metrics defines modelgate's Prometheus metrics. Everything is
// registered on an injected Registerer, never the global one, so two
// gateways in one test process do not collide. Every label is bounded:
// routes, results, sources, host classes and status classes — never a repo,
// a file name, a client address or anything derived from a credential.
package metrics

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

const namespace = "modelgate"

// Metrics holds the gateway's collectors.
type Metrics struct {
	// Requests counts answered requests by route and result
	// (hit, miss, coalesced, passthrough, cached, error, bad_request, ...).
	Requests *prometheus.CounterVec
	// InFlight is the number of requests being answered right now.
	InFlight prometheus.Gauge
	// RequestDuration observes time to the end of each answer, by route.
	RequestDuration *prometheus.HistogramVec
	// ServedBytes counts body bytes sent to clients by source: cache (a
	// published blob), fill (a blob being filled right now) or upstream
	// (an answer relayed without a blob, e.g. API JSON).
	ServedBytes *prometheus.CounterVec
	// UpstreamRequests counts requests sent upstream by host class and
	// status class ("2xx" … "5xx", or "error" when no answer came).
	UpstreamRequests *prometheus.CounterVec
	// FillFailures counts fills that did not publish, by reason.
	FillFailures *prometheus.CounterVec
	// Evictions and EvictedBytes count blobs removed to keep the cache
	// within cache.max_size and cache.min_free.
	Evictions    prometheus.Counter
	EvictedBytes prometheus.Counter
	// RateLimited counts 429 answers from upstream, by host class; while a
	// host's backoff lasts the gateway answers 429 itself.
	RateLimited *prometheus.CounterVec
	// StaleAnswers counts answers served from last-known metadata because
	// the upstream was down, rate-limiting, or the gateway is offline, by
	// kind (revision, api, download).
	StaleAnswers *prometheus.CounterVec
	// OfflineRefusals counts requests an offline gateway could not answer
	// from its cache.
	OfflineRefusals prometheus.Counter
	// FillResumes counts retries of fills: resumed after a cut, or asked
	// again after a failed attempt.
	FillResumes prometheus.Counter
	// FillConnections is the number of upstream requests of fills in
	// flight (all hosts together).
	FillConnections prometheus.Gauge
	// FillPieces counts pieces of parallel fills, by result (fetched,
	// retried).
	FillPieces *prometheus.CounterVec
	// FillThroughput is the speed of each published fill, in MiB/s.
	FillThroughput prometheus.Histogram
	// Unverified counts CivitAI fills keyed by the sha256 the gateway
	// computed, because CivitAI published none for the file.
	Unverified prometheus.Counter
}

// Route labels.
const (
	RouteHealth  = "healthz"
	RouteMetrics = "metrics"
	RouteOther   = "other"
)

// Source labels for ServedBytes.
const (
	SourceCache    = "cache"
	SourceFill     = "fill"
	SourceUpstream = "upstream"
)

// New creates the collectors and registers them on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "requests_total",
			Help: "Requests answered, by route and result.",
		}, []string{"route", "result"}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "requests_in_flight",
			Help: "Requests being answered right now.",
		}),
		RequestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "request_duration_seconds",
			Help:    "Time from request to the end of the answer, by route.",
			Buckets: prometheus.ExponentialBucketsRange(0.001, 3600, 16),
		}, []string{"route"}),
		ServedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "served_bytes_total",
			Help: "Body bytes sent to clients, by source (cache, fill, upstream).",
		}, []string{"source"}),
		UpstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "upstream_requests_total",
			Help: "Requests sent upstream, by host class and status class.",
		}, []string{"host", "code"}),
		FillFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "fill_failures_total",
			Help: "Blob fills that ended without publishing, by reason (verify, upstream, io, abandoned, shutdown).",
		}, []string{"reason"}),
	}
	m.Unverified = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "civitai_unverified_downloads_total",
		Help: "CivitAI files cached under the sha256 the gateway computed, because none was published.",
	})
	m.FillResumes = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "fill_resumes_total",
		Help: "Fill retries: resumed from the bytes landed after a cut, or asked again after a failed attempt.",
	})
	m.StaleAnswers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "stale_answers_total",
		Help: "Answers served from last-known metadata while the upstream was unavailable or the gateway offline, by kind.",
	}, []string{"kind"})
	m.OfflineRefusals = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "offline_refusals_total",
		Help: "Requests an offline gateway could not answer from its cache.",
	})
	m.RateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "upstream_rate_limited_total",
		Help: "429 answers from upstream, by host class; the gateway then backs off that host.",
	}, []string{"host"})
	m.Evictions = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "evictions_total",
		Help: "Blobs evicted to stay within cache.max_size and cache.min_free.",
	})
	m.EvictedBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "evicted_bytes_total",
		Help: "Bytes of the blobs evicted.",
	})
	m.FillConnections = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "fill_connections",
		Help: "Upstream requests of blob fills in flight, all hosts together (capped per host by upstream.max_connections_per_host).",
	})
	m.FillPieces = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "fill_pieces_total",
		Help: "Pieces of parallel fills, by result (fetched, retried).",
	}, []string{"result"})
	m.FillThroughput = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "fill_throughput_mib_per_second",
		Help:    "Speed of each published blob fill, in MiB/s.",
		Buckets: []float64{1, 5, 10, 25, 50, 100, 200, 400, 800, 1600},
	})
	reg.MustRegister(m.FillConnections, m.FillPieces, m.FillThroughput)
	reg.MustRegister(m.Unverified, m.FillResumes, m.StaleAnswers, m.OfflineRefusals, m.RateLimited, m.Evictions, m.EvictedBytes)
	reg.MustRegister(m.Requests, m.InFlight, m.RequestDuration, m.ServedBytes, m.UpstreamRequests, m.FillFailures)
	return m
}

// RegisterCache exports the cache's blob count, bytes and fills in flight,
// and the data directory's free space, read at scrape time rather than
// mirrored into gauges.
func RegisterCache(reg prometheus.Registerer, stats func() (blobs, bytes, fills int64), diskFree func() (int64, error)) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "disk_free_bytes",
			Help: "Free space available on the data directory's file system.",
		}, func() float64 { n, _ := diskFree(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "cache_blobs",
			Help: "Published blobs on disk.",
		}, func() float64 { b, _, _ := stats(); return float64(b) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "cache_blob_bytes",
			Help: "Total size of the published blobs on disk.",
		}, func() float64 { _, n, _ := stats(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "fills_in_flight",
			Help: "Blob fills downloading right now.",
		}, func() float64 { _, _, f := stats(); return float64(f) }),
	)
}

// InstrumentUpstream wraps rt so that every request it sends is counted by
// the host class classify gives it and by status class.
func (m *Metrics) InstrumentUpstream(rt http.RoundTripper, classify func(*http.Request) string) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(r)
		code := "error"
		if err == nil {
			code = strconv.Itoa(resp.StatusCode/100) + "xx"
		}
		m.UpstreamRequests.WithLabelValues(classify(r), code).Inc()
		return resp, err
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
