// Command modelgate is a caching gateway between ML workers and the model
// hubs: a Hugging Face mirror (HF_ENDPOINT=http://gate:8080) that keeps the
// operator's token to itself and serves every blob from local disk after it
// crossed the internet once. main only wires the packages together.
package main

import (
	"context"
	"crypto/tls"
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
	"golang.org/x/term"

	"github.com/modelgate/modelgate/admin"
	"github.com/modelgate/modelgate/admincli"
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
	"github.com/modelgate/modelgate/reqinfo"
	"github.com/modelgate/modelgate/s3tier"
	"github.com/modelgate/modelgate/site"
	"github.com/modelgate/modelgate/upstream"
	"github.com/modelgate/modelgate/visionatrix"
	"github.com/modelgate/modelgate/xet"
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
  modelgate key new --admin NAME           print a new admin key and its admin.keys entry

` + admincli.Usage

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
	if admincli.Commands[cmd] {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		f, isFile := stdout.(*os.File)
		return admincli.Run(ctx, cmd, args, admincli.Env{
			Getenv: os.Getenv, Stdout: stdout, Stderr: stderr, Stdin: os.Stdin,
			IsTerminal: isFile && term.IsTerminal(int(f.Fd())),
		})
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
	if len(args) == 3 && args[0] == "new" && args[1] == "--admin" && args[2] != "" {
		key, sha, err := clientauth.GenerateAdmin()
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s\n\n# The admin key above is shown once. Use it as MODELGATE_ADMIN_KEY for the\n# modelgate CLI (or Authorization: Bearer for the admin API), and add to config.yaml:\nadmin:\n  keys:\n    - name: %s\n      key_sha256: %s\n", key, args[2], sha)
		return err
	}
	if len(args) != 2 || args[0] != "new" || args[1] == "" || strings.HasPrefix(args[1], "-") {
		return errors.New("usage: modelgate key new [--admin] NAME")
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
	if c.Format == config.LogJSON {
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
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("modelgate listening", "addr", ln.Addr().String(), "data_dir", cfg.DataDir,
		"huggingface", cfg.HuggingFace.Endpoint, "hf_token", cfg.HuggingFace.Token != "",
		"civitai", cfg.CivitAI.Endpoint, "civitai_key", cfg.CivitAI.APIKey != "", "offline", cfg.Offline)
	if ready != nil {
		ready <- ln.Addr().String()
	}
	// listen_tls serves the very same handler over TLS: mirror mode, the
	// admin API, and CONNECT inside TLS (HTTPS_PROXY=https://...).
	servers := []*http.Server{srv}
	if gw.tls != nil {
		tln, err := net.Listen("tcp", cfg.ListenTLS)
		if err != nil {
			srv.Close()
			return fmt.Errorf("listen_tls: %w", err)
		}
		tln = gw.listen(tln)
		tlsSrv := proxy.NewServer(cfg.ListenTLS, gw.handler, log)
		servers = append(servers, tlsSrv)
		go func() { errc <- tlsSrv.Serve(tls.NewListener(tln, gw.tls)) }()
		log.Info("modelgate listening with TLS", "addr", tln.Addr().String())
		if ready != nil {
			ready <- tln.Addr().String()
		}
	}

	// reloadNow is what SIGHUP and POST /admin/v1/reload do.
	reloadNow := func() error {
		next, err := reload()
		if err == nil {
			err = gw.setSecrets(next)
		}
		if err != nil {
			log.Error("reloading credentials failed; keeping the current ones", "err", err)
			return err
		}
		log.Info("credentials reloaded", "hf_token", next.HuggingFace.Token != "", "civitai_key", next.CivitAI.APIKey != "")
		return nil
	}
	hup := make(chan os.Signal, 1)
	if reload != nil {
		gw.setReload(reloadNow)
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
			reloadNow()
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
	// Every listener and the interceptions drain at once, within one
	// shutdown_timeout.
	done := make(chan error, len(servers)+1)
	go func() { done <- gw.shutdown(shutCtx) }()
	for _, s := range servers {
		go func() { done <- s.Shutdown(shutCtx) }()
	}
	var cut bool
	for range len(servers) + 1 {
		if err := <-done; err != nil {
			cut = true
		}
	}
	if cut {
		// Long downloads are still running; cut them.
		for _, s := range servers {
			s.Close()
		}
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
	// tls is the TLS listener's configuration (nil: listen_tls is off).
	tls *tls.Config
	// setReload tells the admin API how to reload (what SIGHUP does).
	setReload func(func() error)
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
	pinned := pinnedBlobs(cfg.Cache.Pinned, idx, func() []string { return admin.RuntimePins(idx) })
	// One guard for every outbound dial. The gateway's own requests (and
	// the redirects they follow) may reach the hosts the operator named
	// even on private addresses; tunnels and relays, on a worker's behalf,
	// only the parent proxy they are sent through.
	guard := upstream.NewGuard(cfg.Proxy.AllowPrivateTargets)
	tier, err := sharedTier(cfg, guard, log, metrics.RegisterCluster(reg))
	if err != nil {
		return nil, err
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
	metrics.RegisterCache(reg, store)
	metrics.RegisterCacheLimits(reg, int64(cfg.Cache.MaxSize), int64(cfg.Cache.MinFree))

	hfURL, err := url.Parse(cfg.HuggingFace.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("huggingface.endpoint: %w", err)
	}
	civURL, err := url.Parse(cfg.CivitAI.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("civitai.endpoint: %w", err)
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
	ca, err := mitmca.Load(cfg.MITM.CACert, cfg.MITM.CAKey, filepath.Join(cfg.DataDir, "ca"), caOptions(cfg))
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
	var own []proxy.Endpoint
	if cfg.HuggingFace.Xet != config.XetHide && !cfg.Offline {
		// Xet: the gateway's own tokens and CAS; the upstream side asks
		// the Hub's token route with the operator's credential (through
		// the injector) and the CAS with the operator's Xet token.
		svc, err := xet.New(xet.Options{
			Hub:      hfURL,
			Client:   &http.Client{Transport: &xetUpstream{hub: up, hubHost: hfHost, rest: backoff}},
			HubToken: func() string { return "" }, // attached by the injector, never held here
			Dir:      filepath.Join(cfg.DataDir, "xet"),
			KeyKnown: func(name string) bool { return currentKeys.Load().Known(name) },
			HasFile:  mirror.HasXetFile,
			Logger:   log,
		})
		if err != nil {
			return nil, err
		}
		mirror.Xet = svc
		mirror.XetPolicy = hfhub.XetPolicy{Mode: string(cfg.HuggingFace.Xet), MinSize: int64(cfg.HuggingFace.XetMinSize)}
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
	// serve sets how a reload is done (SIGHUP and POST /admin/v1/reload
	// do the same).
	var reloadFn atomic.Pointer[func() error]
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
		if next.HuggingFace.Endpoint != cfg.HuggingFace.Endpoint || next.CivitAI.Endpoint != cfg.CivitAI.Endpoint {
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
	return &gateway{handler: handler, listen: gw.Listener, close: closeAll, setSecrets: setSecrets,
		drain: func() { draining.Store(true) }, shutdown: gw.Shutdown, tls: tlsConf,
		setReload: func(f func() error) { reloadFn.Store(&f) }}, nil
}

// xetUpstream is the Xet service's way out: requests to the Hub (its
// xet-read-token route) through the injector, which attaches the
// operator's credential; anything else (the CAS, xorb URLs) as is, with the
// operator's Xet token the service set, and never a Hub credential.
type xetUpstream struct {
	hub     *authinject.Injector
	hubHost string
	rest    http.RoundTripper
}

func (x *xetUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	if authinject.CanonicalHost(r.URL) == x.hubHost {
		return x.hub.Do(r, authinject.FollowSameHost)
	}
	return x.rest.RoundTrip(r)
}

// requestBase is the scheme://host a client reached the gateway at.
func requestBase(r *http.Request) string {
	if r.TLS != nil {
		return "https://" + r.Host
	}
	return "http://" + r.Host
}

// keySpecs hands the configured worker keys to clientauth.
// adminKeySpecs converts admin.keys for clientauth.LoadAdmin.
func adminKeySpecs(keys []config.AdminKey) []clientauth.Spec {
	out := make([]clientauth.Spec, len(keys))
	for i, k := range keys {
		out[i] = clientauth.Spec{Name: k.Name, KeySHA256: k.KeySHA256, KeyFile: k.KeyFile}
	}
	return out
}

func keySpecs(keys []config.ClientKey) []clientauth.Spec {
	out := make([]clientauth.Spec, len(keys))
	for i, k := range keys {
		out[i] = clientauth.Spec{Name: k.Name, KeySHA256: k.KeySHA256, KeyFile: k.KeyFile, Scopes: k.Scopes, Repos: k.Repos}
	}
	return out
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
// blobs to keep: Hub pins through the Hub's file records, CivitAI pins
// through the download mappings.
func pinnedBlobs(pins []config.Pin, idx *cache.Index, runtime func() []string) func() map[cache.Digest]bool {
	return func() map[cache.Digest]bool {
		all := pins
		if runtime != nil {
			// Pins set through the admin API were checked when they were
			// set; a bad one is skipped rather than unpinning the rest.
			for _, spec := range runtime() {
				if p, err := config.ParsePin(spec); err == nil {
					all = append(all[:len(all):len(all)], p)
				}
			}
		}
		hf, civ := splitPins(all)
		keep := hfmirror.PinnedDigests(idx, hf)
		for d := range civitai.PinnedDigests(idx, civ) {
			keep[d] = true
		}
		return keep
	}
}

// splitPins splits pins into Hub pins and CivitAI version ids.
func splitPins(pins []config.Pin) ([]hfhub.Pin, []string) {
	var hf []hfhub.Pin
	var civ []string
	for _, p := range pins {
		if p.IsHub() {
			hf = append(hf, hfhub.Pin{Repo: hfhub.Repo{Type: hfhub.RepoType(p.RepoType), ID: p.Repo}, Revision: p.Revision})
		} else {
			civ = append(civ, p.Version)
		}
	}
	return hf, civ
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
	case hfhub.IsCopyKey(k), civitai.IsCopyKey(k), visionatrix.IsCopyKey(k):
		return cache.Reclaimable
	}
	return cache.Kept
}

// caOptions is how the interception CA is created and rotated. With
// listen_tls on, a new CA may also sign for the gateway's own names.
func caOptions(cfg config.Config) mitmca.Options {
	opts := mitmca.Options{Hosts: cfg.MITM.Hosts.Strings(), Overlap: cfg.MITM.CAOverlap.Duration}
	if cfg.ListenTLS != "" && cfg.TLS.CertFile == "" {
		opts.Names = tlsNames(cfg)
	}
	return opts
}

// tlsNames are the names the TLS listener's own certificate covers:
// tls.names, or the host name and the addresses of listen_tls (every
// interface address, link-local ones aside, when it names no host).
func tlsNames(cfg config.Config) []string {
	if len(cfg.TLS.Names) > 0 {
		return cfg.TLS.Names
	}
	var names []string
	if h, err := os.Hostname(); err == nil && h != "" {
		names = append(names, strings.ToLower(h))
	}
	host, _, _ := net.SplitHostPort(cfg.ListenTLS)
	ip, err := netip.ParseAddr(host)
	switch {
	case host != "" && err != nil:
		names = append(names, host) // a name
	case host != "" && !ip.IsUnspecified():
		names = append(names, ip.String())
	default:
		addrs, _ := net.InterfaceAddrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && !p.Addr().IsLinkLocalUnicast() {
				names = append(names, p.Addr().Unmap().String())
			}
		}
	}
	return names
}

// listenerTLS is the TLS listener's configuration: tls.cert_file and
// tls.key_file, or a certificate for tlsNames issued from the gateway's
// CA (which workers trust already) and renewed as it ages.
func listenerTLS(cfg config.Config, ca *mitmca.CA, log *slog.Logger) (*tls.Config, error) {
	conf := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// HTTP/1.1 only: CONNECT (HTTPS_PROXY=https://) is an HTTP/1.1
		// hijack, and downloads are single long streams.
		NextProtos: []string{"http/1.1"},
	}
	if cfg.TLS.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls.cert_file: %w", err)
		}
		conf.Certificates = []tls.Certificate{pair}
		return conf, nil
	}
	names := tlsNames(cfg)
	if len(names) == 0 {
		return nil, errors.New("listen_tls: no name for its certificate; set tls.names")
	}
	if bad := ca.Uncovered(names, time.Now()); len(bad) > 0 {
		// Clients will refuse the certificate for these names.
		log.Error("the CA cannot sign for some of tls.names (it was created before they were configured); run `modelgate ca --new` and have workers trust the new CA, or set tls.cert_file",
			"names", strings.Join(bad, ","))
	}
	conf.GetCertificate = ca.ServerCertificates(names, nil)
	return conf, nil
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

// sharedTier returns the S3 tier of storage.backend s3, or nil for disk.
// Its transport has its own dialer through the outbound guard, exempting
// only the bucket's endpoint (which is usually on a private address).
func sharedTier(cfg config.Config, guard *upstream.Guard, log *slog.Logger, onEvent func(string)) (cache.Tier, error) {
	if cfg.Storage.Backend != config.BackendS3 {
		return nil, nil
	}
	s3 := cfg.Storage.S3
	u, err := url.Parse(s3.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("storage.s3.endpoint: %w", err)
	}
	transport, err := upstream.NewTransport(upstream.Options{
		CAFile:  s3.CAFile,
		Timeout: cfg.Upstream.Timeout.Duration,
		Guard:   guard.Exempting(authinject.CanonicalHost(u)),
	})
	if err != nil {
		return nil, fmt.Errorf("storage.s3: %w", err)
	}
	tier, err := s3tier.New(s3tier.Options{
		Endpoint:        s3.Endpoint,
		Bucket:          s3.Bucket,
		Prefix:          s3.Prefix,
		Region:          s3.Region,
		PathStyle:       s3.PathStyle,
		AccessKeyID:     s3.AccessKeyID.Reveal(),
		SecretAccessKey: s3.SecretAccessKey.Reveal(),
		SessionToken:    s3.SessionToken.Reveal(),
		Transport:       transport,
		LeaseTTL:        cfg.Cluster.LeaseTTL.Duration,
		Node:            cfg.Cluster.Node,
		Logger:          log.With("component", "s3tier"),
		OnEvent:         onEvent,
	})
	if err != nil {
		return nil, err
	}
	log.Info("blobs shared through an S3 bucket", "endpoint", s3.Endpoint, "bucket", s3.Bucket, "prefix", s3.Prefix, "lease_ttl", cfg.Cluster.LeaseTTL)
	return tier, nil
}
