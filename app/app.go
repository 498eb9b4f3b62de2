// Package app wires modelgate's components into a running gateway: New
// builds everything a configuration asks for, Serve runs the listeners
// until its context ends and then drains, Reload swaps in what a reload
// may change (upstream credentials and keys), Close releases the rest.
// main keeps the flags, the subcommands and the signals.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/modelgate/modelgate/admin"
	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/buildinfo"
	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/civitai"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/hfmirror"
	"github.com/modelgate/modelgate/indexkeys"
	"github.com/modelgate/modelgate/metrics"
	"github.com/modelgate/modelgate/mitmca"
	"github.com/modelgate/modelgate/proxy"
	"github.com/modelgate/modelgate/redact"
	"github.com/modelgate/modelgate/reqinfo"
	"github.com/modelgate/modelgate/s3tier"
	"github.com/modelgate/modelgate/site"
	"github.com/modelgate/modelgate/upstream"
	"github.com/modelgate/modelgate/visionatrix"
	"github.com/modelgate/modelgate/xet"
)

// App is the wired gateway.
type App struct {
	cfg     config.Config
	log     *slog.Logger
	handler http.Handler
	// listen applies the connection caps to the listener and tells the
	// edge its own address (to refuse loops).
	listen   func(net.Listener) net.Listener
	closeAll func()
	// setSecrets swaps in the upstream credentials of a reloaded config.
	setSecrets func(config.Config) error
	// drain marks the gateway not ready (/readyz answers 503).
	drain func()
	// shutdown stops serving intercepted connections once their requests
	// in flight are done, or ctx ends.
	shutdown func(ctx context.Context) error
	// tls is the TLS listener's configuration (nil: listen_tls is off).
	tls *tls.Config
	// setReload tells the admin API how to reload (what SIGHUP does).
	setReload func(func() error)
}

// Handler is the gateway's HTTP handler: the edge, with the sites, the
// admin API and the own endpoints behind it.
func (a *App) Handler() http.Handler { return a.handler }

// Listener wraps ln with the connection caps and tells the edge the
// address it serves on (to refuse loops).
func (a *App) Listener(ln net.Listener) net.Listener { return a.listen(ln) }

// TLSConfig is the configuration of the listen_tls listener; nil when
// listen_tls is off.
func (a *App) TLSConfig() *tls.Config { return a.tls }

// Drain marks the gateway not ready: /readyz answers 503 from now on.
func (a *App) Drain() { a.drain() }

// Shutdown stops serving intercepted connections once their requests in
// flight are done, or ctx ends.
func (a *App) Shutdown(ctx context.Context) error { return a.shutdown(ctx) }

// Close releases everything New opened, last opened first.
func (a *App) Close() { a.closeAll() }

// Reload applies what a reload may change from next: the upstream
// credentials, the worker keys and the admin keys (connections opened with
// a revoked worker key are closed). Anything else needs a restart; a
// changed endpoint is refused and the current settings stay.
func (a *App) Reload(next config.Config) error {
	if err := a.setSecrets(next); err != nil {
		a.log.Error("reloading credentials failed; keeping the current ones", "err", err)
		return err
	}
	a.log.Info("credentials reloaded", "hf_token", next.HuggingFace.Token != "", "civitai_key", next.CivitAI.APIKey != "")
	return nil
}

// ReloadFrom loads the configuration again with load and applies it
// ([App.Reload]): what SIGHUP does.
func (a *App) ReloadFrom(load func() (config.Config, error)) error {
	next, err := load()
	if err != nil {
		a.log.Error("reloading credentials failed; keeping the current ones", "err", err)
		return err
	}
	return a.Reload(next)
}

// SetReloadSource makes POST /admin/v1/reload load the configuration with
// load and apply it, as SIGHUP does. Without it the route answers that
// reloading is not available.
func (a *App) SetReloadSource(load func() (config.Config, error)) {
	a.setReload(func() error { return a.ReloadFrom(load) })
}

// New wires the gateway for cfg: it opens the data directory, the index and
// the store, and builds the upstream transport, the sites, the admin API
// and the edge. Nothing listens yet ([App.Serve] does). On error whatever
// was opened is closed again.
func New(cfg config.Config, log *slog.Logger) (_ *App, err error) {
	// Every line goes through the redactor, whoever built the logger.
	log = slog.New(redact.NewHandler(log.Handler()))
	// Cached weights may be gated or private: nothing the gateway writes
	// is for other local users. The umask covers the files badger and
	// the libraries create; MakePrivate what earlier versions left.
	syscall.Umask(0o077)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	if err := cache.MakePrivate(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	// Recent warnings and errors, already redacted, for the status page.
	ring := admin.NewErrorRing(log.Handler(), 50)
	log = slog.New(redact.NewHandler(ring))
	var closers []func() error
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	defer func() {
		if err != nil {
			closeAll()
		}
	}()

	// One gateway per data directory: a second one would delete the
	// first one's partial fills and race on the index.
	lock, err := cache.LockDir(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	closers = append(closers, lock.Close)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg)
	bi := buildinfo.Read()
	metrics.RegisterBuildInfo(reg, bi.Version, bi.Commit, bi.GoVersion)
	// The index is open and crash recovery done by the time New returns
	// (both are synchronous), so the gateway is ready until it drains.
	var draining atomic.Bool

	idx, err := cache.OpenIndex(filepath.Join(cfg.DataDir, "index"), log)
	if err != nil {
		return nil, err
	}
	closers = append(closers, idx.Close)
	if _, err := indexkeys.Upgrade(idx, log); err != nil {
		return nil, err
	}
	idx.StartMaintenance(cache.IndexLimits{
		Classify:   indexkeys.Classify,
		MaxBytes:   int64(cfg.Cache.IndexMaxSize),
		MaxCounted: maxLastRevisions,
	}, indexMaintenanceEvery)
	retries := cfg.Upstream.Retries
	if retries == 0 {
		retries = -1 // cache.Options: negative means none, zero the default
	}
	// The pins set through the admin API on any gateway of a cluster
	// (read from the bucket by the shared tier) apply here too.
	var shared *s3tier.Tier
	// Set once the Xet service exists (it needs the store this feeds).
	var xetRanges atomic.Pointer[func(map[string]bool) map[cache.Digest]bool]
	pinned := pinnedBlobs(cfg.Cache.Pinned, idx, func() []string {
		pins := admin.RuntimePins(idx)
		if shared != nil {
			pins = append(pins, shared.KnownPins()...)
		}
		return pins
	}, &xetRanges)
	// One guard for every outbound dial. The gateway's own requests (and
	// the redirects they follow) may reach the hosts the operator named
	// even on private addresses; tunnels and relays, on a worker's behalf,
	// only the parent proxy they are sent through.
	guard := upstream.NewGuard(cfg.Proxy.AllowPrivateTargets, cfg.Upstream.Resolve)
	clusterEvents, clusterBytes := metrics.RegisterCluster(reg), metrics.RegisterClusterBytes(reg)
	shared, err = sharedTier(cfg, guard, log, reg, clusterEvents, clusterBytes, pinned)
	if err != nil {
		return nil, err
	}
	var tier cache.Tier // nil unless shared: no typed nil in the interface
	var cluster admin.Cluster
	if shared != nil {
		tier, cluster = shared, clusterAdmin{shared}
		countEvicted := metrics.RegisterClusterBucket(reg, int64(cfg.Storage.S3.MaxSize), func() (int64, int64) {
			st := shared.Stats()
			return st.Blobs, st.Bytes
		})
		shared.SetOnEvict(func(_ cache.Digest, size int64) { countEvicted(size) })
		// Closed after the store: its fills' last uploads record uses.
		closers = append(closers, shared.Close)
	}
	store, err := cache.Open(cache.Options{
		Tier:              tier,
		Dir:               cfg.DataDir,
		Index:             idx,
		Logger:            log,
		Retries:           retries,
		MaxFillAttempts:   cfg.Upstream.MaxFillAttempts,
		MaxFillTime:       cfg.Upstream.MaxFillTime.Duration,
		MaxFills:          cfg.Cache.MaxFills,
		MaxFillsPerClient: cfg.Cache.MaxFillsPerClient,
		OrphanFillTimeout: cfg.Cache.OrphanFillTimeout.Duration,
		FillConnections:   cfg.Upstream.FillConnections,
		PieceSize:         int64(cfg.Upstream.FillPieceSize),
		OnPiece: func(retry bool) {
			if retry {
				m.FillPieces.WithLabelValues("retried").Inc()
			} else {
				m.FillPieces.WithLabelValues("fetched").Inc()
			}
		},
		OnFillThroughput: m.FillThroughput.Observe,
		OnResume:         m.FillResumes.Inc,
		MaxSize:          int64(cfg.Cache.MaxSize),
		MinFree:          int64(cfg.Cache.MinFree),
		Pinned:           pinned,
		// The index shares the disk and the budget with the blobs.
		IndexSize: idx.DiskSize,
		// A body silent for twice the header timeout is cut and resumed.
		StallTimeout: 2 * cfg.Upstream.Timeout.Duration,
		OnEvict: func(_ cache.Digest, size int64) {
			m.Evictions.Inc()
			m.EvictedBytes.Add(float64(size))
		},
		OnFillDone: func(_ cache.Digest, size int64, err error) {
			if err != nil {
				m.Fills.WithLabelValues("failed").Inc()
				m.FillFailures.WithLabelValues(fillFailureReason(err)).Inc()
				return
			}
			m.Fills.WithLabelValues("ok").Inc()
			m.FillBytes.Add(float64(size))
		},
	})
	if err != nil {
		return nil, err
	}
	closers = append(closers, store.Close)
	if shared != nil {
		shared.SetOnPurged(func(d cache.Digest) { dropPurged(store, pinned, d, log) })
		shared.StartMaintenance()
	}
	metrics.RegisterCache(reg, store)
	metrics.RegisterCacheLimits(reg, int64(cfg.Cache.MaxSize), int64(cfg.Cache.MinFree))

	// Parsed and checked when the config loaded; a config built in code
	// without them is refused here rather than failing on first use.
	hfURL, civURL := cfg.HuggingFace.Endpoint.URL(), cfg.CivitAI.Endpoint.URL()
	if hfURL == nil || civURL == nil {
		return nil, errors.New("huggingface.endpoint and civitai.endpoint must be set")
	}
	var parent []string
	if u, err := url.Parse(cfg.Upstream.Proxy); err == nil && u.Host != "" {
		parent = append(parent, authinject.CanonicalHost(u))
	}
	// The Visionatrix catalog host is named by the operator too.
	named := []string{authinject.CanonicalHost(hfURL), authinject.CanonicalHost(civURL)}
	var catalogURL *url.URL
	if cfg.Visionatrix.CatalogURL != "" {
		if catalogURL, err = url.Parse(cfg.Visionatrix.CatalogURL); err != nil {
			return nil, fmt.Errorf("visionatrix.catalog_url: %w", err)
		}
		named = append(named, authinject.CanonicalHost(catalogURL))
	}
	upOpts := upstream.Options{
		CAFile:  cfg.Upstream.CAFile,
		Proxy:   cfg.Upstream.Proxy,
		Timeout: cfg.Upstream.Timeout.Duration,
		Guard:   guard.Exempting(append(append(named, parent...), cfg.Upstream.PrivateHosts...)...),
	}
	transport, err := upstream.NewTransport(upOpts)
	if err != nil {
		return nil, err
	}
	// Fill requests go over HTTP/1.1, one connection per piece; metadata
	// keeps HTTP/2.
	split := upstream.SplitFills(transport)
	closers = append(closers, func() error { split.CloseIdleConnections(); return nil })
	ca, err := mitmca.Load(cfg.MITM.CACert, cfg.MITM.CAKey, filepath.Join(cfg.DataDir, "ca"), CAOptions(cfg))
	if err != nil {
		return nil, fmt.Errorf("mitm CA: %w", err)
	}
	var tlsConf *tls.Config
	if cfg.ListenTLS != "" {
		if tlsConf, err = listenerTLS(cfg, ca, log); err != nil {
			return nil, err
		}
	}
	creds, err := upstreamCredentials(cfg)
	if err != nil {
		return nil, err
	}
	hfHost, civHost := authinject.CanonicalHost(hfURL), authinject.CanonicalHost(civURL)
	classifyURL := func(u *url.URL) string {
		switch authinject.CanonicalHost(u) {
		case hfHost:
			return "huggingface"
		case civHost:
			return "civitai"
		}
		return "other" // CDNs and storage: never sent a credential
	}
	classify := func(r *http.Request) string { return classifyURL(r.URL) }
	// Fill requests are capped per host; metadata passes straight through.
	limited := &upstream.HostLimiter{Next: split, Max: cfg.Upstream.MaxConnectionsPerHost,
		OnChange: func(d int) { m.FillConnections.Add(float64(d)) }}
	counted := m.InstrumentUpstream(limited, classify, authinject.CarriesCredential)
	// A 429 makes the gateway back off that host for everyone; its own 429s
	// in the meantime are not upstream requests, so they are not counted.
	backoff := upstream.NewBackoff(counted)
	backoff.OnRateLimited = func(r *http.Request) { m.RateLimited.WithLabelValues(classify(r)).Inc() }
	backoff.Scope = func(r *http.Request) string { return authinject.PrincipalFrom(r.Context()).Scope }
	up := authinject.New(backoff, creds...)
	metrics.RegisterBackoff(reg, func() map[string]float64 {
		out := map[string]float64{}
		for host, left := range backoff.Remaining() {
			if u, err := url.Parse(host); err == nil {
				c := classifyURL(u)
				out[c] = max(out[c], left.Seconds())
			}
		}
		return out
	})

	mirror := hfmirror.New(hfmirror.Options{
		Endpoint:     hfURL,
		RevisionTTL:  cfg.Cache.RevisionTTL.Duration,
		LastKnownTTL: cfg.Cache.LastKnownTTL.Duration,
		Upstream:     up,
		Index:        idx,
		Blobs:        store,
		Metrics:      m,
		Logger:       log,
		Offline:      cfg.Offline,
		RepoAllow:    cfg.HuggingFace.Repos.Allow,
		RepoDeny:     cfg.HuggingFace.Repos.Deny,
	})
	civ := civitai.New(civitai.Options{
		Endpoint:     civURL,
		HasKey:       func() bool { return up.HasCredential(civURL) },
		MetadataTTL:  cfg.CivitAI.MetadataTTL.Duration,
		DownloadTTL:  cfg.CivitAI.DownloadTTL.Duration,
		LastKnownTTL: cfg.Cache.LastKnownTTL.Duration,
		Upstream:     up,
		Index:        idx,
		Blobs:        store,
		Metrics:      m,
		Logger:       log,
		Offline:      cfg.Offline,
	})
	var vix http.Handler
	if catalogURL != nil {
		vix = visionatrix.New(visionatrix.Options{
			CatalogURL:   catalogURL,
			TTL:          cfg.Visionatrix.CatalogTTL.Duration,
			LastKnownTTL: cfg.Cache.LastKnownTTL.Duration,
			// The configured endpoints (tests point them at fakes) and the
			// public names the catalog is written with.
			Origins: visionatrix.Origins{
				Hub:     []*url.URL{hfURL, {Scheme: "https", Host: "huggingface.co"}, {Scheme: "https", Host: "hf.co"}},
				CivitAI: []*url.URL{civURL, {Scheme: "https", Host: "civitai.com"}},
			},
			Upstream: up,
			Index:    idx,
			Logger:   log,
			Offline:  cfg.Offline,
		})
	}
	keys, err := clientauth.Load(keySpecs(cfg.Clients.Keys), os.ReadFile)
	if err != nil {
		return nil, err
	}
	var currentKeys atomic.Pointer[clientauth.Keys]
	currentKeys.Store(keys)
	own := []proxy.Endpoint{peerEndpoint(cfg, store, log, clusterEvents, clusterBytes)}
	if cfg.HuggingFace.Xet != config.XetHide && !cfg.Offline {
		// Xet: the gateway's own tokens and CAS; the upstream side asks
		// the Hub's token route with the operator's credential (through
		// the injector) and the CAS with the operator's Xet token.
		svc, err := xet.New(xet.Options{
			Hub:      hfURL,
			Client:   &http.Client{Transport: &xetUpstream{hub: up, hubHost: hfHost, rest: backoff}, CheckRedirect: xetRedirect},
			HubToken: func() string { return "" }, // attached by the injector, never held here
			Dir:      filepath.Join(cfg.DataDir, "xet"),
			Store:    store,
			Index:    idx,
			Metrics:  xetMetrics(m),
			KeyAllows: func(name, typ, repo string) bool {
				return currentKeys.Load().AllowsHubRepo(name, indexkeys.HFURLRepo(typ, repo))
			},
			HasFile: mirror.HasXetFile,
			Logger:  log,
		})
		if err != nil {
			return nil, err
		}
		mirror.Xet = svc
		mirror.XetFiles = svc
		rangesOf := svc.RangesOf
		xetRanges.Store(&rangesOf)
		mirror.XetPolicy = hfhub.XetPolicy{Mode: string(cfg.HuggingFace.Xet), MinSize: int64(cfg.HuggingFace.XetMinSize)}
		mirror.XetIntercepted = interceptsAll(cfg.MITM.Hosts, hfhub.XetHosts, "443")
		// Before the worker key check, like the probes: the reconstruction
		// route authenticates with the gateway's Xet token (bound to a key
		// name, refused once that key is revoked) and the xorb route with
		// the gateway's URL signature; clients send neither a worker key.
		own = append(own, proxy.Endpoint{Path: xet.CASPrefix + "/", Access: proxy.AccessClients,
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				reqinfo.Set(r.Context(), "xet", "")
				svc.ServeCAS(w, r, strings.TrimPrefix(r.URL.Path, xet.CASPrefix), requestBase(r))
			})})
	}
	var keyed []proxy.Endpoint
	if vix != nil {
		// After the worker key, like a site: under require_key the
		// catalog's URLs carry the key in their path.
		keyed = append(keyed, proxy.Endpoint{Path: "/visionatrix/", Handler: vix})
	}
	adminKeys, err := clientauth.LoadAdmin(adminKeySpecs(cfg.Admin.Keys), os.ReadFile)
	if err != nil {
		return nil, err
	}
	var currentAdminKeys atomic.Pointer[clientauth.Keys]
	currentAdminKeys.Store(adminKeys)
	// SetReloadSource sets how a reload is done (SIGHUP and POST
	// /admin/v1/reload do the same).
	var reloadFn atomic.Pointer[func() error]
	if len(cfg.Admin.Keys) == 0 {
		// The admin API then trusts every process that reaches it over
		// loopback: on a host other users share, that is all of them.
		log.Warn("no admin.keys: the admin API (export, purge, import, reload, prefetch) answers any loopback client without a key; set admin.keys where other users share this host")
	}
	adminSrv, err := admin.New(admin.Options{
		Index:   idx,
		Store:   store,
		Hub:     mirror,
		CivitAI: civ,
		Keys:    currentAdminKeys.Load,
		Reload: func() error {
			f := reloadFn.Load()
			if f == nil {
				return errors.New("this gateway has no configuration file to reload")
			}
			return (*f)()
		},
		Gatherer:      reg,
		Logger:        log,
		MaxSize:       int64(cfg.Cache.MaxSize),
		PrefetchFiles: cfg.Admin.PrefetchFiles,
		AuditTTL:      cfg.Admin.AuditTTL.Duration,
		QuarantineDir: filepath.Join(cfg.DataDir, "quarantine"),
		Offline:       cfg.Offline,
		Errors:        ring,
		Cluster:       cluster,
		Node:          clusterNode(shared),
	})
	if err != nil {
		return nil, err
	}
	closers = append(closers, adminSrv.Close)
	gw, err := proxy.New(proxy.Options{
		Keys:               currentKeys.Load,
		RequireKey:         cfg.Clients.RequireKey == config.RequireKeyAll,
		RequireKeyForGated: cfg.Clients.RequireKey == config.RequireKeyGated,
		PassOwnCredentials: cfg.Clients.OwnCredentials == config.OwnCredentialsPass,
		HasCredential:      up.HasCredential,
		// The order is mirror mode's: the Hub answers every path the
		// sites before it do not.
		Sites:               []site.Site{civ.Site(), mirror.Site()},
		Gatherer:            reg,
		Metrics:             m,
		Logger:              log,
		CA:                  ca,
		Intercept:           cfg.MITM.Hosts,
		DenyTunnels:         cfg.Proxy.Tunnel == config.TunnelDeny,
		Offline:             cfg.Offline,
		IdleTimeout:         cfg.Proxy.IdleTimeout.Duration,
		DialTunnel:          upstream.TunnelDialer(upOpts, transport),
		Transport:           transport,
		AllowPrivateTargets: cfg.Proxy.AllowPrivateTargets,
		Guard:               guard.Exempting(parent...),
		TunnelAllow:         cfg.Proxy.TunnelAllow,
		Limits:              proxy.Limits{Max: cfg.Proxy.MaxConnections, PerClient: cfg.Proxy.MaxConnectionsPerClient},
		BodyReadTimeout:     cfg.Proxy.BodyReadTimeout.Duration,
		ClientAllow:         cfg.Clients.Allow,
		MetricsAllow:        cfg.Clients.MetricsAllow,
		Build:               bi,
		Ready: func() error {
			if draining.Load() {
				return errors.New("draining")
			}
			return nil
		},
		RequireTLSForKeys: cfg.Clients.RequireTLSForKeys,
		KeyedEndpoints:    keyed,
		Endpoints:         own,
		Admin:             adminSrv,
		AdminAllow:        cfg.Admin.Allow,
		OnRequest:         adminSrv.ObserveRequest,
	})
	if err != nil {
		return nil, err
	}
	closers = append(closers, gw.Close)
	handler := http.Handler(gw)
	setSecrets := func(next config.Config) error {
		if next.HuggingFace.Endpoint.String() != cfg.HuggingFace.Endpoint.String() || next.CivitAI.Endpoint.String() != cfg.CivitAI.Endpoint.String() {
			return errors.New("an endpoint changed; that needs a restart")
		}
		creds, err := upstreamCredentials(next)
		if err != nil {
			return err
		}
		keys, err := clientauth.Load(keySpecs(next.Clients.Keys), os.ReadFile)
		if err != nil {
			return err
		}
		adminKeys, err := clientauth.LoadAdmin(adminKeySpecs(next.Admin.Keys), os.ReadFile)
		if err != nil {
			return err
		}
		up.SetCredentials(creds...)
		currentKeys.Store(keys)
		currentAdminKeys.Store(adminKeys)
		if n := gw.CloseRevoked(); n > 0 {
			log.Info("closed connections opened with a revoked worker key", "connections", n)
		}
		return nil
	}
	return &App{cfg: cfg, log: log, handler: handler, listen: gw.Listener, closeAll: closeAll, setSecrets: setSecrets,
		drain: func() { draining.Store(true) }, shutdown: gw.Shutdown, tls: tlsConf,
		setReload: func(f func() error) { reloadFn.Store(&f) }}, nil
}
