package admin

import (
	"context"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/reqinfo"
)

// ErrorRing is an slog.Handler that passes every record on and keeps the
// last warnings and errors for the status page. Put it after the
// redactor, so that what it keeps is already clean.
type ErrorRing struct {
	next  slog.Handler
	attrs []slog.Attr
	st    *ringState
}

type ringState struct {
	mu   sync.Mutex
	max  int
	recs []RecentError
}

// RecentError is one warning or error shown on the status page.
type RecentError struct {
	Time    time.Time `json:"time"`
	Level   string    `json:"level"`
	Message string    `json:"message"`
	Detail  string    `json:"detail,omitempty"`
}

// NewErrorRing wraps next (nil: keep only) and keeps the last max records.
func NewErrorRing(next slog.Handler, max int) *ErrorRing {
	return &ErrorRing{next: next, st: &ringState{max: max}}
}

func (e *ErrorRing) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || (e.next != nil && e.next.Enabled(ctx, l))
}

func (e *ErrorRing) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		var parts []string
		add := func(a slog.Attr) bool {
			parts = append(parts, a.Key+"="+a.Value.String())
			return true
		}
		for _, a := range e.attrs {
			add(a)
		}
		r.Attrs(add)
		e.st.mu.Lock()
		e.st.recs = append(e.st.recs, RecentError{Time: r.Time.UTC(), Level: r.Level.String(), Message: r.Message, Detail: strings.Join(parts, " ")})
		if len(e.st.recs) > e.st.max {
			e.st.recs = e.st.recs[len(e.st.recs)-e.st.max:]
		}
		e.st.mu.Unlock()
	}
	if e.next != nil && e.next.Enabled(ctx, r.Level) {
		return e.next.Handle(ctx, r)
	}
	return nil
}

func (e *ErrorRing) WithAttrs(as []slog.Attr) slog.Handler {
	n := &ErrorRing{st: e.st, attrs: append(append([]slog.Attr{}, e.attrs...), as...)}
	if e.next != nil {
		n.next = e.next.WithAttrs(as)
	}
	return n
}

func (e *ErrorRing) WithGroup(name string) slog.Handler {
	n := &ErrorRing{st: e.st, attrs: e.attrs}
	if e.next != nil {
		n.next = e.next.WithGroup(name)
	}
	return n
}

// Recent returns the kept records, newest first.
func (e *ErrorRing) Recent() []RecentError {
	e.st.mu.Lock()
	defer e.st.mu.Unlock()
	out := make([]RecentError, len(e.st.recs))
	for i, r := range e.st.recs {
		out[len(out)-1-i] = r
	}
	return out
}

// traffic keeps samples of the gateway's counters to report the last
// hour, and per-repo request counts from the edge.
type traffic struct {
	g       prometheus.Gatherer
	mu      sync.Mutex
	samples []sample
	repos   map[string]*repoUse
	// fill rates: the previous landed count of each fill in flight
	fillPrev map[string]fillMark
}

type sample struct {
	at     time.Time
	values map[string]float64 // "metric{labels}" -> value
}

type repoUse struct {
	Repo     string    `json:"repo"`
	Requests int64     `json:"requests"`
	Bytes    int64     `json:"bytes"`
	Last     time.Time `json:"last"`
}

type fillMark struct {
	at     time.Time
	landed int64
	rate   float64
}

func newTraffic(g prometheus.Gatherer) *traffic {
	return &traffic{g: g, repos: map[string]*repoUse{}, fillPrev: map[string]fillMark{}}
}

const sampleEvery = 30 * time.Second

func (t *traffic) run(ctx context.Context) {
	t.sample()
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			t.sample()
		}
	}
}

// counters read by the status page.
var wanted = map[string]bool{
	"modelgate_requests_total":              true,
	"modelgate_served_bytes_total":          true,
	"modelgate_upstream_requests_total":     true,
	"modelgate_upstream_rate_limited_total": true,
}

func (t *traffic) read() map[string]float64 {
	out := map[string]float64{}
	if t.g == nil {
		return out
	}
	mfs, err := t.g.Gather()
	if err != nil && len(mfs) == 0 {
		return out
	}
	for _, mf := range mfs {
		if !wanted[mf.GetName()] {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[seriesKey(mf.GetName(), m)] = m.GetCounter().GetValue()
		}
	}
	return out
}

func seriesKey(name string, m *dto.Metric) string {
	var b strings.Builder
	b.WriteString(name)
	for _, l := range m.GetLabel() {
		b.WriteString("|" + l.GetName() + "=" + l.GetValue())
	}
	return b.String()
}

func (t *traffic) sample() {
	v := t.read()
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.samples = append(t.samples, sample{at: now, values: v})
	// Keep one sample older than an hour as the window's base.
	for len(t.samples) > 2 && now.Sub(t.samples[1].at) > time.Hour {
		t.samples = t.samples[1:]
	}
}

// window returns the counters' increase over (up to) the last hour.
func (t *traffic) window() (map[string]float64, time.Duration) {
	now := t.read()
	t.mu.Lock()
	var base sample
	for _, s := range t.samples {
		if time.Since(s.at) <= time.Hour {
			base = s
			break
		}
	}
	t.mu.Unlock()
	d := map[string]float64{}
	for k, v := range now {
		d[k] = v - base.values[k]
	}
	span := time.Hour
	if !base.at.IsZero() {
		span = time.Since(base.at)
	}
	return d, span
}

// observe counts a finished request per repo (file downloads only).
func (t *traffic) observe(r *http.Request, info *reqinfo.Info, status int, bytes int64) {
	var repo string
	switch info.Route {
	case "resolve":
		if rt, err := hfhub.ParseRoute(http.MethodGet, r.URL); err == nil {
			repo = "hf:" + rt.Repo.URLPrefix() + rt.Repo.ID
		}
	case "civitai_download":
		repo = "civitai:" + strings.TrimPrefix(r.URL.Path, "/api/download/models/")
	}
	if repo == "" || status >= 400 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	u := t.repos[repo]
	if u == nil {
		if len(t.repos) > 10000 {
			return // bounded: the page shows the top few
		}
		u = &repoUse{Repo: repo}
		t.repos[repo] = u
	}
	u.Requests++
	u.Bytes += bytes
	u.Last = time.Now().UTC()
}

func (t *traffic) topRepos(n int) []repoUse {
	t.mu.Lock()
	out := make([]repoUse, 0, len(t.repos))
	for _, u := range t.repos {
		out = append(out, *u)
	}
	t.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Requests != out[j].Requests {
			return out[i].Requests > out[j].Requests
		}
		return out[i].Repo < out[j].Repo
	})
	if len(out) > n {
		out = out[:n]
	}
	return out
}

// fillRate returns the rate of a fill since it was last looked at.
func (t *traffic) fillRate(key string, landed int64, live map[string]bool) float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	prev, ok := t.fillPrev[key]
	rate := prev.rate
	if ok && now.Sub(prev.at) >= 200*time.Millisecond {
		rate = float64(landed-prev.landed) / now.Sub(prev.at).Seconds()
		t.fillPrev[key] = fillMark{at: now, landed: landed, rate: rate}
	} else if !ok {
		t.fillPrev[key] = fillMark{at: now, landed: landed}
	}
	for k := range t.fillPrev {
		if !live[k] {
			delete(t.fillPrev, k)
		}
	}
	return rate
}

// ObserveRequest is the edge's hook: every finished request.
func (s *Server) ObserveRequest(r *http.Request, info *reqinfo.Info, status int, bytes int64) {
	s.traffic.observe(r, info, status, bytes)
	s.audit(r, info, status, bytes)
}

// Status is the JSON behind the status page and `modelgate status`.
type Status struct {
	Time      time.Time        `json:"time"`
	Offline   bool             `json:"offline"`
	Cache     CacheStatus      `json:"cache"`
	Traffic   TrafficStatus    `json:"traffic"`
	Upstreams []UpstreamStatus `json:"upstreams"`
	Fills     []FillStatus     `json:"fills"`
	Jobs      []Job            `json:"jobs"`
	TopRepos  []repoUse        `json:"top_repos"`
	Errors    []RecentError    `json:"errors"`
}

type CacheStatus struct {
	Blobs      int64 `json:"blobs"`
	Bytes      int64 `json:"bytes"`
	IndexBytes int64 `json:"index_bytes"`
	MaxSize    int64 `json:"max_size"`
	DiskFree   int64 `json:"disk_free"`
	Fills      int64 `json:"fills_in_flight"`
}

type TrafficStatus struct {
	WindowSeconds float64            `json:"window_seconds"`
	Hits          int64              `json:"hits"`
	Misses        int64              `json:"misses"`
	Coalesced     int64              `json:"coalesced"`
	HitRatio      float64            `json:"hit_ratio"`
	BytesBySource map[string]float64 `json:"bytes_by_source"`
}

type UpstreamStatus struct {
	Host        string `json:"host"`
	Requests    int64  `json:"requests"`
	Errors      int64  `json:"errors"`
	RateLimited int64  `json:"rate_limited"`
	State       string `json:"state"` // ok, errors, idle, offline
}

type FillStatus struct {
	Key    string  `json:"key"`
	Size   int64   `json:"size"`
	Landed int64   `json:"landed"`
	Rate   float64 `json:"rate_bytes_per_second"`
}

func (s *Server) status() Status {
	st := s.opts.Store.Stats()
	out := Status{Time: time.Now().UTC(), Offline: s.opts.Offline,
		Cache: CacheStatus{Blobs: st.Blobs, Bytes: st.Bytes, IndexBytes: s.opts.Index.DiskSize(),
			MaxSize: s.opts.MaxSize, DiskFree: st.DiskFree, Fills: st.FillsInFlight}}
	d, span := s.traffic.window()
	tr := TrafficStatus{WindowSeconds: span.Seconds(), BytesBySource: map[string]float64{"cache": 0, "fill": 0, "upstream": 0}}
	ups := map[string]*UpstreamStatus{}
	for k, v := range d {
		parts := strings.Split(k, "|")
		labels := map[string]string{}
		for _, p := range parts[1:] {
			n, val, _ := strings.Cut(p, "=")
			labels[n] = val
		}
		switch parts[0] {
		case "modelgate_requests_total":
			if labels["route"] != "resolve" && labels["route"] != "civitai_download" {
				continue
			}
			switch labels["result"] {
			case "hit":
				tr.Hits += int64(v)
			case "miss":
				tr.Misses += int64(v)
			case "coalesced":
				tr.Coalesced += int64(v)
			}
		case "modelgate_served_bytes_total":
			tr.BytesBySource[labels["source"]] += v
		case "modelgate_upstream_requests_total":
			u := upstream(ups, labels["host"])
			u.Requests += int64(v)
			if c := labels["code"]; c == "5xx" || c == "error" {
				u.Errors += int64(v)
			}
		case "modelgate_upstream_rate_limited_total":
			upstream(ups, labels["host"]).RateLimited += int64(v)
		}
	}
	if n := tr.Hits + tr.Misses + tr.Coalesced; n > 0 {
		tr.HitRatio = float64(tr.Hits) / float64(n)
	}
	out.Traffic = tr
	for _, h := range []string{"huggingface", "civitai", "other"} {
		upstream(ups, h)
	}
	for _, u := range ups {
		switch {
		case s.opts.Offline:
			u.State = "offline"
		case u.Requests == 0:
			u.State = "idle"
		case u.Errors > 0 || u.RateLimited > 0:
			u.State = "errors"
		default:
			u.State = "ok"
		}
		out.Upstreams = append(out.Upstreams, *u)
	}
	sort.Slice(out.Upstreams, func(i, j int) bool { return out.Upstreams[i].Host < out.Upstreams[j].Host })
	fills := s.opts.Store.Fills()
	live := map[string]bool{}
	for _, f := range fills {
		live[f.Key] = true
	}
	out.Fills = []FillStatus{}
	for _, f := range fills {
		out.Fills = append(out.Fills, FillStatus{Key: f.Key, Size: f.Size, Landed: f.Landed, Rate: s.traffic.fillRate(f.Key, f.Landed, live)})
	}
	sort.Slice(out.Fills, func(i, j int) bool { return out.Fills[i].Key < out.Fills[j].Key })
	out.Jobs = s.jobs.list()
	if len(out.Jobs) > 20 {
		out.Jobs = out.Jobs[:20]
	}
	out.TopRepos = s.traffic.topRepos(10)
	out.Errors = s.opts.Errors.Recent()
	if len(out.Errors) > 20 {
		out.Errors = out.Errors[:20]
	}
	return out
}

func upstream(m map[string]*UpstreamStatus, host string) *UpstreamStatus {
	if host == "" {
		host = "other"
	}
	u := m[host]
	if u == nil {
		u = &UpstreamStatus{Host: host}
		m[host] = u
	}
	return u
}

func (s *Server) serveStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.status())
}
