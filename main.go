// Command modelgate is a caching gateway between ML workers and the model
// hubs: a Hugging Face mirror (HF_ENDPOINT=http://gate:8080) that keeps the
// operator's token to itself and serves every blob from local disk after it
// crossed the internet once. main only wires the packages together.
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.yaml.in/yaml/v3"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/buildinfo"
	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/civitai"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/hfmirror"
	"github.com/modelgate/modelgate/metrics"
	"github.com/modelgate/modelgate/mitmca"
	"github.com/modelgate/modelgate/proxy"
	"github.com/modelgate/modelgate/redact"
	"github.com/modelgate/modelgate/upstream"
)

// defaultConfig is config.yaml as committed: used when -config is not
// given and there is no config.yaml in the working directory.
//
//go:embed config.yaml
var defaultConfig []byte

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "modelgate:", err)
		os.Exit(1)
	}
}

// usage is printed for -h and for an unknown subcommand.
const usage = `usage:
  modelgate [-config config.yaml]          run the gateway (SIGHUP re-reads the
                                           credentials: token, token_file, api_key)
  modelgate ca [-config config.yaml]       print the CA certificate(s) workers must trust
                                           (created in data_dir/ca if there is none yet)
  modelgate ca --new [-config config.yaml] create the next CA: /ca.pem serves both for
                                           mitm.ca_overlap, then the new one signs
  modelgate config [-config config.yaml]   print the effective configuration
                                           (secrets shown as ***)
  modelgate key new NAME                   print a new worker key and its config entry
  modelgate version                        print the module version, commit and build time
  modelgate healthcheck [-config config.yaml] [-url URL]
                                           exit 0 when the gateway at the configured
                                           listen address (or URL) answers /readyz with
                                           200, 1 otherwise (a container's HEALTHCHECK)
`

func run(args []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "key":
		return newKey(args, stdout)
	case "version":
		_, err := fmt.Fprintln(stdout, buildinfo.Read())
		return err
	case "healthcheck":
		return healthcheck(args, stdout, stderr)
	}
	fs := flag.NewFlagSet("modelgate "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { io.WriteString(stderr, usage) }
	configPath := fs.String("config", "config.yaml", "path of the YAML configuration file")
	newCA := new(bool)
	if cmd == "ca" {
		newCA = fs.Bool("new", false, "create the next CA (announced for mitm.ca_overlap before it signs)")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := loadConfig(*configPath, isFlagSet(fs, "config"))
	if err != nil {
		return err
	}
	switch cmd {
	case "serve":
	case "ca":
		if *newCA {
			return rotateCA(cfg, stdout, stderr)
		}
		ca, err := mitmca.Load(cfg.MITM.CACert, cfg.MITM.CAKey, filepath.Join(cfg.DataDir, "ca"), caOptions(cfg))
		if err != nil {
			return err
		}
		_, err = stdout.Write(ca.Bundle(time.Now()))
		return err
	case "config":
		// The effective configuration; secrets print as ***, and so does
		// a parent proxy's password.
		if u, err := url.Parse(cfg.Upstream.Proxy); err == nil && u.User != nil {
			cfg.Upstream.Proxy = u.Redacted()
		}
		return yaml.NewEncoder(stdout).Encode(cfg)
	default:
		io.WriteString(stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	for _, u := range config.UnknownEnv(os.Environ()) {
		log.Warn("environment variable names no configuration key; it is ignored",
			"variable", u.Name, "nearest_key_variable", u.Nearest)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	reload := func() (config.Config, error) { return loadConfig(*configPath, isFlagSet(fs, "config")) }
	return serve(ctx, cfg, log, nil, reload)
}

// newKey implements `modelgate key new NAME`: a fresh worker key, and the
// clients.keys entry that holds its sha256 (the key itself is shown once
// and stored nowhere).
func newKey(args []string, stdout io.Writer) error {
	if len(args) != 2 || args[0] != "new" || args[1] == "" {
		return errors.New("usage: modelgate key new NAME")
	}
	key, sha, err := clientauth.Generate()
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n\n# Give the key above to the worker %q (as its HF_TOKEN, ?token=, or\n# HTTPS_PROXY=http://%s:KEY@gate:8080), and add to config.yaml:\nclients:\n  keys:\n    - name: %s\n      key_sha256: %s\n      scopes: [huggingface, civitai]\n", key, args[1], args[1], args[1], sha)
	return err
}

// healthcheck implements `modelgate healthcheck`: GET /readyz on the
// gateway this configuration describes (or -url), so that an image without
// curl can still have a HEALTHCHECK. Not ready (draining, or not up yet)
// and unreachable both fail.
func healthcheck(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("modelgate healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "config.yaml", "path of the YAML configuration file (for listen)")
	base := fs.String("url", "", "the gateway's base URL (default: from the configuration's listen address)")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *base == "" {
		cfg, err := loadConfig(*configPath, isFlagSet(fs, "config"))
		if err != nil {
			return err
		}
		*base, err = localURL(cfg.Listen)
		if err != nil {
			return err
		}
	}
	client := &http.Client{Timeout: *timeout, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get(strings.TrimSuffix(*base, "/") + "/readyz")
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: not ready: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	_, err = stdout.Write(body)
	return err
}

// localURL is the URL this host reaches a listen address at: the wildcard
// host becomes loopback.
func localURL(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("listen: %w", err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// loadConfig reads path; a missing default file falls back to the embedded
// config.yaml so that a bare `modelgate` runs.
func loadConfig(path string, explicit bool) (config.Config, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) && !explicit {
		return config.Parse(defaultConfig, os.Getenv, os.ReadFile)
	}
	return config.Load(path, os.Getenv, os.ReadFile)
}

func isFlagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func newLogger(c config.LogConfig, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

// serve runs the gateway until ctx ends. When ready is not nil it receives
// the bound address once the listener is up (tests use port 0). On SIGHUP,
// reload (when not nil) is asked for the configuration again and the
// upstream credentials are replaced; everything else needs a restart.
func serve(ctx context.Context, cfg config.Config, log *slog.Logger, ready chan<- string, reload func() (config.Config, error)) error {
	// Every line goes through the redactor, whoever built the logger.
	log = slog.New(redact.NewHandler(log.Handler()))
	gw, err := build(cfg, log)
	if err != nil {
		return err
	}
	defer gw.close()

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	ln = gw.listen(ln)
	srv := proxy.NewServer(cfg.Listen, gw.handler, log)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("modelgate listening", "addr", ln.Addr().String(), "data_dir", cfg.DataDir,
		"huggingface", cfg.HuggingFace.Endpoint, "hf_token", cfg.HuggingFace.Token != "",
		"civitai", cfg.CivitAI.Endpoint, "civitai_key", cfg.CivitAI.APIKey != "", "offline", cfg.Offline)
	if ready != nil {
		ready <- ln.Addr().String()
	}

	hup := make(chan os.Signal, 1)
	if reload != nil {
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
	}
wait:
	for {
		select {
		case err := <-errc:
			return fmt.Errorf("serving: %w", err)
		case <-ctx.Done():
			break wait
		case <-hup:
			next, err := reload()
			if err == nil {
				err = gw.setSecrets(next)
			}
			if err != nil {
				log.Error("reloading credentials failed; keeping the current ones", "err", err)
				continue
			}
			log.Info("credentials reloaded", "hf_token", next.HuggingFace.Token != "", "civitai_key", next.CivitAI.APIKey != "")
		}
	}
	// Draining: /readyz says 503 (for a balancer that still asks on a
	// kept-alive connection), the listener closes so new connections are
	// refused, and the answers in flight, plain and intercepted, get
	// shutdown_timeout to finish.
	gw.drain()
	log.Info("shutting down: draining the downloads in flight", "timeout", cfg.ShutdownTimeout.String())
	shutCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout.Duration)
	defer cancel()
	inner := make(chan error, 1)
	go func() { inner <- gw.shutdown(shutCtx) }()
	err = srv.Shutdown(shutCtx)
	if ierr := <-inner; err == nil {
		err = ierr
	}
	if err != nil {
		// Long downloads are still running; cut them.
		srv.Close()
		log.Warn("shutdown_timeout passed; cut the downloads still running")
		return nil
	}
	log.Info("drained; exiting")
	return nil
}

// gateway is the wired set of components.
type gateway struct {
	handler http.Handler
	// listen applies the connection caps to the listener and tells the
	// edge its own address (to refuse loops).
	listen func(net.Listener) net.Listener
	close  func()
	// setSecrets swaps in the upstream credentials of a reloaded config.
	setSecrets func(config.Config) error
	// drain marks the gateway not ready (/readyz answers 503).
	drain func()
	// shutdown stops serving intercepted connections once their requests
	// in flight are done, or ctx ends.
	shutdown func(ctx context.Context) error
}

func build(cfg config.Config, log *slog.Logger) (_ *gateway, err error) {
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
	// The index is open and crash recovery done by the time build returns
	// (both are synchronous), so the gateway is ready until it drains.
	var draining atomic.Bool

	idx, err := cache.OpenIndex(filepath.Join(cfg.DataDir, "index"), log)
	if err != nil {
		return nil, err
	}
	closers = append(closers, idx.Close)
	idx.StartMaintenance(cache.IndexLimits{
		Classify:   classifyIndexKey,
		MaxBytes:   int64(cfg.Cache.IndexMaxSize),
		MaxCounted: maxLastRevisions,
	}, indexMaintenanceEvery)
	retries := cfg.Upstream.Retries
	if retries == 0 {
		retries = -1 // cache.Options: negative means none, zero the default
	}
	pinned, err := pinnedBlobs(cfg.Cache.Pinned, idx)
	if err != nil {
		return nil, err
	}
	store, err := cache.Open(cache.Options{
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
	metrics.RegisterCache(reg, func() (int64, int64, int64) {
		s := store.Stats()
		return s.Blobs, s.Bytes, s.FillsInFlight
	}, store.DiskFree)
	metrics.RegisterCacheLimits(reg, int64(cfg.Cache.MaxSize), int64(cfg.Cache.MinFree))

	hfURL, err := url.Parse(cfg.HuggingFace.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("huggingface.endpoint: %w", err)
	}
	civURL, err := url.Parse(cfg.CivitAI.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("civitai.endpoint: %w", err)
	}
	// One guard for every outbound dial. The gateway's own requests (and
	// the redirects they follow) may reach the hosts the operator named
	// even on private addresses; tunnels and relays, on a worker's behalf,
	// only the parent proxy they are sent through.
	guard := upstream.NewGuard(cfg.Proxy.AllowPrivateTargets)
	var parent []string
	if u, err := url.Parse(cfg.Upstream.Proxy); err == nil && u.Host != "" {
		parent = append(parent, authinject.CanonicalHost(u))
	}
	upOpts := upstream.Options{
		CAFile:  cfg.Upstream.CAFile,
		Proxy:   cfg.Upstream.Proxy,
		Timeout: cfg.Upstream.Timeout.Duration,
		Guard: guard.Exempting(append(append([]string{authinject.CanonicalHost(hfURL), authinject.CanonicalHost(civURL)},
			parent...), cfg.Upstream.PrivateHosts...)...),
	}
	transport, err := upstream.NewTransport(upOpts)
	if err != nil {
		return nil, err
	}
	// Fill requests go over HTTP/1.1, one connection per piece; metadata
	// keeps HTTP/2.
	split := upstream.SplitFills(transport)
	closers = append(closers, func() error { split.CloseIdleConnections(); return nil })
	ca, err := mitmca.Load(cfg.MITM.CACert, cfg.MITM.CAKey, filepath.Join(cfg.DataDir, "ca"), caOptions(cfg))
	if err != nil {
		return nil, fmt.Errorf("mitm CA: %w", err)
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
	counted := m.InstrumentUpstream(limited, classify)
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
	clientNets, err := parseNetworks(cfg.Clients.Allow)
	if err != nil {
		return nil, err
	}
	metricsNets, err := parseNetworks(cfg.Clients.MetricsAllow)
	if err != nil {
		return nil, err
	}
	keys, err := clientauth.Load(cfg.Clients.Keys, os.ReadFile)
	if err != nil {
		return nil, err
	}
	var currentKeys atomic.Pointer[clientauth.Keys]
	currentKeys.Store(keys)
	gw, err := proxy.New(proxy.Options{
		Keys:               currentKeys.Load,
		RequireKey:         cfg.Clients.RequireKey == "all",
		RequireKeyForGated: cfg.Clients.RequireKey == "gated",
		PassOwnCredentials: cfg.Clients.OwnCredentials == "pass",
		HasCredential: func(civitai bool) bool {
			if civitai {
				return up.HasCredential(civURL)
			}
			return up.HasCredential(hfURL)
		},
		Hub:                 mirror,
		CivitAI:             civ,
		CivitAIRoute:        civitai.IsRoute,
		CivitAIHosts:        []string{"civitai.com", "civitai.red", civURL.Hostname()},
		Gatherer:            reg,
		Metrics:             m,
		Logger:              log,
		CA:                  ca,
		Intercept:           cfg.MITM.Hosts,
		HubHosts:            []string{"huggingface.co", "hf.co", hfURL.Hostname()},
		CDNHosts:            []string{"*.hf.co", "cdn-lfs.huggingface.co", "cdn-lfs-us-1.huggingface.co", "cdn-lfs-eu-1.huggingface.co"},
		CivitAIDomains:      []string{"civitai.com"},
		DenyTunnels:         cfg.Proxy.Tunnel == "deny",
		Offline:             cfg.Offline,
		IdleTimeout:         cfg.Proxy.IdleTimeout.Duration,
		DialTunnel:          upstream.TunnelDialer(upOpts, transport),
		Transport:           transport,
		AllowPrivateTargets: cfg.Proxy.AllowPrivateTargets,
		Guard:               guard.Exempting(parent...),
		TunnelAllow:         cfg.Proxy.TunnelAllow,
		Limits:              proxy.Limits{Max: cfg.Proxy.MaxConnections, PerClient: cfg.Proxy.MaxConnectionsPerClient},
		BodyReadTimeout:     cfg.Proxy.BodyReadTimeout.Duration,
		ClientAllow:         clientNets,
		MetricsAllow:        metricsNets,
		Build:               bi,
		Ready: func() error {
			if draining.Load() {
				return errors.New("draining")
			}
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	closers = append(closers, gw.Close)
	handler := http.Handler(gw)
	setSecrets := func(next config.Config) error {
		if next.HuggingFace.Endpoint != cfg.HuggingFace.Endpoint || next.CivitAI.Endpoint != cfg.CivitAI.Endpoint {
			return errors.New("an endpoint changed; that needs a restart")
		}
		creds, err := upstreamCredentials(next)
		if err != nil {
			return err
		}
		keys, err := clientauth.Load(next.Clients.Keys, os.ReadFile)
		if err != nil {
			return err
		}
		up.SetCredentials(creds...)
		currentKeys.Store(keys)
		if n := gw.CloseRevoked(); n > 0 {
			log.Info("closed connections opened with a revoked worker key", "connections", n)
		}
		return nil
	}
	return &gateway{handler: handler, listen: gw.Listener, close: closeAll, setSecrets: setSecrets,
		drain: func() { draining.Store(true) }, shutdown: gw.Shutdown}, nil
}

func parseNetworks(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		p, err := config.ParseNetwork(s)
		if err != nil {
			return nil, fmt.Errorf("clients: %q: %w", s, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// upstreamCredentials binds the Hugging Face token and the CivitAI key to
// their endpoints' hosts.
func upstreamCredentials(cfg config.Config) ([]authinject.Credential, error) {
	hf, err := authinject.Bearer(cfg.HuggingFace.Endpoint, cfg.HuggingFace.Token.Reveal())
	if err != nil {
		return nil, err
	}
	civ, err := authinject.Bearer(cfg.CivitAI.Endpoint, cfg.CivitAI.APIKey.Reveal())
	if err != nil {
		return nil, err
	}
	return []authinject.Credential{hf, civ}, nil
}

// pinnedBlobs turns cache.pinned into the function eviction asks for the
// blobs to keep: "hf:" entries through the Hub's file records,
// "civitai:" entries through the download mappings.
func pinnedBlobs(specs []string, idx *cache.Index) (func() map[cache.Digest]bool, error) {
	var hf []hfhub.Pin
	var civ []string
	for _, spec := range specs {
		switch kind, rest, _ := strings.Cut(spec, ":"); kind {
		case "hf":
			p, err := hfhub.ParsePin(rest)
			if err != nil {
				return nil, fmt.Errorf("cache.pinned: %w", err)
			}
			hf = append(hf, p)
		case "civitai":
			civ = append(civ, rest)
		default:
			return nil, fmt.Errorf("cache.pinned: %q is neither hf: nor civitai:", spec)
		}
	}
	if len(hf) == 0 && len(civ) == 0 {
		return nil, nil
	}
	return func() map[cache.Digest]bool {
		keep := hfmirror.PinnedDigests(idx, hf)
		for d := range civitai.PinnedDigests(idx, civ) {
			keep[d] = true
		}
		return keep
	}, nil
}

func fillFailureReason(err error) string {
	var dm *cache.DigestMismatchError
	var sm *cache.SizeMismatchError
	switch {
	case errors.Is(err, cache.ErrOrphaned):
		return "abandoned"
	case errors.Is(err, cache.ErrRetriesExhausted), errors.Is(err, cache.ErrFillTimeout):
		return "upstream"
	case errors.As(err, &dm), errors.As(err, &sm):
		return "verify"
	case errors.Is(err, cache.ErrStorage):
		return "io"
	case errors.Is(err, context.Canceled):
		return "shutdown"
	}
	return "upstream"
}

const (
	// indexMaintenanceEvery is how often the index is trimmed to its
	// limits and its freed space given back.
	indexMaintenanceEvery = 10 * time.Minute
	// maxLastRevisions bounds the branch -> commit mappings kept for
	// offline use (~150 bytes each).
	maxLastRevisions = 100_000
)

// classifyIndexKey says which index entries maintenance may drop: copies
// of upstream answers (bounded by cache.index_max_size), and the last
// commit of each revision (bounded by count); blob records and file
// metadata stay.
func classifyIndexKey(key []byte) cache.KeyClass {
	k := authinject.Unscoped(string(key))
	switch {
	case hfhub.IsLastRevisionKey(k):
		return cache.Counted
	case hfhub.IsCopyKey(k), civitai.IsCopyKey(k):
		return cache.Reclaimable
	}
	return cache.Kept
}

// caOptions is how the interception CA is created and rotated.
func caOptions(cfg config.Config) mitmca.Options {
	return mitmca.Options{Hosts: cfg.MITM.Hosts, Overlap: cfg.MITM.CAOverlap.Duration}
}

// rotateCA implements `modelgate ca --new`: the next CA, printed with the
// current one (what workers must trust during the overlap).
func rotateCA(cfg config.Config, stdout, stderr io.Writer) error {
	if cfg.MITM.CACert != "" {
		return errors.New("mitm.ca_cert is set: rotate that CA by replacing its files")
	}
	ca, err := mitmca.Rotate(filepath.Join(cfg.DataDir, "ca"), caOptions(cfg))
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "new CA created; GET /ca.pem serves both certificates until %s, when the new one starts signing (restart or not). Have every worker trust the output below before then.\n",
		ca.NextFrom().Format(time.RFC3339))
	_, err = stdout.Write(ca.Bundle(time.Now()))
	return err
}
