// Package metrics defines modelgate's Prometheus metrics. Everything is
// registered on an injected Registerer, never the global one, so two
// gateways in one test process do not collide. Every label is bounded:
// routes, results, sources, host classes and status classes — never a repo,
// a file name, a client address or anything derived from a credential.
package metrics

import (
	"io"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelgate/modelgate/cache"
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
	// ConnectionsOpen is the number of client connections open now;
	// ConnectionsRefused counts those refused by a cap, by limit
	// (total, per_client).
	ConnectionsOpen    prometheus.Gauge
	ConnectionsRefused *prometheus.CounterVec
	// UpstreamAuthFailures counts 401 and 403 answers from upstream, by
	// host class, status code and whether the gateway had put a credential
	// on the request: with one, the operator's token was rejected (revoked,
	// expired, or lacking access to a gated repo).
	UpstreamAuthFailures *prometheus.CounterVec
	// UpstreamBytes counts body bytes received from upstream, by host
	// class: the throughput of fills and relayed answers.
	UpstreamBytes *prometheus.CounterVec
	// Fills counts blob fills that ended, by result (ok, failed); FillBytes
	// the bytes of those that published.
	Fills     *prometheus.CounterVec
	FillBytes prometheus.Counter
	// XetXorbBytes counts bytes of Xet xorb ranges served, by result: hit
	// (from the blob store without an upstream fetch) or miss (after one).
	XetXorbBytes *prometheus.CounterVec
	// XetSharedBytes counts hit bytes of xorb ranges first fetched for
	// another file: what deduplication across files saved upstream.
	XetSharedBytes prometheus.Counter
	// XetReconstructions counts Xet reconstructions answered, by result:
	// hit (the gateway's own copy) or miss (asked upstream).
	XetReconstructions *prometheus.CounterVec
	// XetAssembledBytes counts bytes of plain-HTTP downloads (blob fills)
	// assembled from verified Xet xorb ranges in the store instead of
	// fetched upstream.
	XetAssembledBytes prometheus.Counter
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
	m.ConnectionsOpen = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "connections_open",
		Help: "Client connections open (tunnels and intercepted connections included).",
	})
	m.ConnectionsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "connections_refused_total",
		Help: "Client connections refused by proxy.max_connections (total) or proxy.max_connections_per_client (per_client).",
	}, []string{"limit"})
	m.UpstreamAuthFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "upstream_auth_failures_total",
		Help: "401 and 403 answers from upstream, by host class, code, and whether the gateway sent a credential (credential=\"true\": the operator's token was refused).",
	}, []string{"host", "code", "credential"})
	m.UpstreamBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "upstream_received_bytes_total",
		Help: "Body bytes received from upstream, by host class.",
	}, []string{"host"})
	m.Fills = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "fills_total",
		Help: "Blob fills that ended, by result (ok, failed).",
	}, []string{"result"})
	m.FillBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "fill_bytes_total",
		Help: "Bytes of the blobs fills published.",
	})
	reg.MustRegister(m.UpstreamAuthFailures, m.UpstreamBytes, m.Fills, m.FillBytes)
	reg.MustRegister(m.ConnectionsOpen, m.ConnectionsRefused)
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
	m.XetXorbBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "xet_xorb_bytes_total",
		Help: "Bytes of Xet xorb ranges served, by result (hit: from the blob store; miss: after an upstream fetch).",
	}, []string{"result"})
	m.XetSharedBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "xet_shared_bytes_total",
		Help: "Bytes of Xet xorb ranges served from the store that were first fetched for another file (saved by deduplication).",
	})
	m.XetReconstructions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "xet_reconstructions_total",
		Help: "Xet reconstructions answered, by result (hit: the gateway's own copy; miss: asked upstream).",
	}, []string{"result"})
	m.XetAssembledBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "xet_assembled_bytes_total",
		Help: "Bytes of plain-HTTP downloads assembled from verified Xet xorb ranges in the store instead of fetched upstream.",
	})
	reg.MustRegister(m.XetXorbBytes, m.XetSharedBytes, m.XetReconstructions, m.XetAssembledBytes)
	reg.MustRegister(m.Unverified, m.FillResumes, m.StaleAnswers, m.OfflineRefusals, m.RateLimited, m.Evictions, m.EvictedBytes)
	reg.MustRegister(m.Requests, m.InFlight, m.RequestDuration, m.ServedBytes, m.UpstreamRequests, m.FillFailures)
	m.initSeries()
	return m
}

// initSeries creates the series of the known label values at zero, so that
// they are exported from the first scrape: an alert on increase() then
// sees the first failure (a series born at 1 has no increase), and a
// dashboard query finds the metric before anything went wrong.
func (m *Metrics) initSeries() {
	for _, host := range HostClasses {
		m.RateLimited.WithLabelValues(host)
		m.UpstreamBytes.WithLabelValues(host)
		for _, code := range []string{"2xx", "3xx", "4xx", "5xx", "error"} {
			m.UpstreamRequests.WithLabelValues(host, code)
		}
		for _, code := range []string{"401", "403"} {
			for _, sent := range []string{"true", "false"} {
				m.UpstreamAuthFailures.WithLabelValues(host, code, sent)
			}
		}
	}
	for _, reason := range []string{"verify", "upstream", "io", "shutdown"} {
		m.FillFailures.WithLabelValues(reason)
	}
	for _, result := range []string{"ok", "failed"} {
		m.Fills.WithLabelValues(result)
	}
	for _, source := range []string{SourceCache, SourceFill, SourceUpstream} {
		m.ServedBytes.WithLabelValues(source)
	}
	for _, kind := range []string{"revision", "api", "download"} {
		m.StaleAnswers.WithLabelValues(kind)
	}
	for _, limit := range []string{"total", "per_client"} {
		m.ConnectionsRefused.WithLabelValues(limit)
	}
	for _, result := range []string{"hit", "miss"} {
		m.XetXorbBytes.WithLabelValues(result)
		m.XetReconstructions.WithLabelValues(result)
	}
}

// RegisterCacheLimits exports the configured cache.max_size and
// cache.min_free, so that alerts and dashboards compare the disk against
// the operator's own numbers rather than copies of them.
func RegisterCacheLimits(reg prometheus.Registerer, maxSize, minFree int64) {
	for _, g := range []struct {
		name, help string
		v          int64
	}{
		{"cache_max_size_bytes", "cache.max_size: the most the published blobs may take (0: unbounded).", maxSize},
		{"cache_min_free_bytes", "cache.min_free: the free space eviction keeps on the data directory's file system (0: no floor).", minFree},
	} {
		gauge := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: g.name, Help: g.help})
		gauge.Set(float64(g.v))
		reg.MustRegister(gauge)
	}
}

// CacheStats is what the cache collector reads of the blob store;
// *cache.Store implements it.
type CacheStats interface {
	Stats() cache.Stats
}

// RegisterCache exports the cache's blob count, bytes and fills in flight,
// and the data directory's free space, from one Stats snapshot taken at
// scrape time: the store pushes nothing, and the four numbers of a scrape
// come from the same moment.
func RegisterCache(reg prometheus.Registerer, store CacheStats) {
	reg.MustRegister(newCacheCollector(store))
}

type cacheCollector struct {
	store                            CacheStats
	diskFree, blobs, bytes, inFlight *prometheus.Desc
}

func newCacheCollector(store CacheStats) *cacheCollector {
	return &cacheCollector{
		store:    store,
		diskFree: prometheus.NewDesc(namespace+"_disk_free_bytes", "Free space available on the data directory's file system.", nil, nil),
		blobs:    prometheus.NewDesc(namespace+"_cache_blobs", "Published blobs on disk.", nil, nil),
		bytes:    prometheus.NewDesc(namespace+"_cache_blob_bytes", "Total size of the published blobs on disk.", nil, nil),
		inFlight: prometheus.NewDesc(namespace+"_fills_in_flight", "Blob fills downloading right now.", nil, nil),
	}
}

func (c *cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.diskFree
	ch <- c.blobs
	ch <- c.bytes
	ch <- c.inFlight
}

func (c *cacheCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.store.Stats()
	ch <- prometheus.MustNewConstMetric(c.diskFree, prometheus.GaugeValue, float64(st.DiskFree))
	ch <- prometheus.MustNewConstMetric(c.blobs, prometheus.GaugeValue, float64(st.Blobs))
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(st.Bytes))
	ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(st.FillsInFlight))
}

// RegisterBuildInfo exports modelgate_build_info, a constant 1 whose labels
// say which build runs (the usual Prometheus idiom: join it on instance to
// annotate other series, or alert on mixed versions in a fleet).
func RegisterBuildInfo(reg prometheus.Registerer, version, commit, goVersion string) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help:        "A constant 1 labelled with the running build's module version, VCS commit and Go version.",
		ConstLabels: prometheus.Labels{"version": version, "commit": commit, "goversion": goVersion},
	})
	g.Set(1)
	reg.MustRegister(g)
}

// RegisterBackoff exports, at scrape time, how many seconds each host
// class still has to wait after a 429 (0 when it is not backing off).
// remaining is asked on every scrape.
func RegisterBackoff(reg prometheus.Registerer, remaining func() map[string]float64) {
	reg.MustRegister(&backoffCollector{remaining: remaining, desc: prometheus.NewDesc(
		namespace+"_upstream_backoff_seconds",
		"Seconds left before the gateway sends to this host class again after a 429 (0: not backing off).",
		[]string{"host"}, nil)})
}

type backoffCollector struct {
	remaining func() map[string]float64
	desc      *prometheus.Desc
}

func (c *backoffCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *backoffCollector) Collect(ch chan<- prometheus.Metric) {
	// Every class is always exported, so that "for: 15m" on an alert sees
	// a continuous series rather than one that appears and vanishes.
	left := c.remaining()
	for _, host := range HostClasses {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, left[host], host)
	}
}

// HostClasses are the values of the host label on upstream metrics.
var HostClasses = []string{"huggingface", "civitai", "other"}

// InstrumentUpstream wraps rt so that every request it sends is counted by
// the host class classify gives it and by status class, its body bytes as
// they are read, and 401/403 answers separately by exact code (the status
// class alone cannot tell a refused token from a missing file), labelled
// with whether a credential went out as sent says (authinject knows;
// nil: none did).
func (m *Metrics) InstrumentUpstream(rt http.RoundTripper, classify func(*http.Request) string, sent func(*http.Request) bool) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(r)
		host := classify(r)
		code := "error"
		if err == nil {
			code = strconv.Itoa(resp.StatusCode/100) + "xx"
		}
		m.UpstreamRequests.WithLabelValues(host, code).Inc()
		if err != nil {
			return resp, err
		}
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			// Whether a credential went out, never which one.
			m.UpstreamAuthFailures.WithLabelValues(host, strconv.Itoa(resp.StatusCode), strconv.FormatBool(sent != nil && sent(r))).Inc()
		}
		if resp.Body != nil && resp.Body != http.NoBody {
			resp.Body = &countingBody{ReadCloser: resp.Body, c: m.UpstreamBytes.WithLabelValues(host)}
		}
		return resp, nil
	})
}

// countingBody adds the bytes read through it to a counter as they arrive,
// so that throughput shows while a multi-GB fill is still running.
type countingBody struct {
	io.ReadCloser
	c prometheus.Counter
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.c.Add(float64(n))
	}
	return n, err
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
