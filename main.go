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
  modelgate ca [-config config.yaml]       print the CA certificate workers must trust
                                           (created in data_dir/ca if there is none yet)
  modelgate config [-config config.yaml]   print the effective configuration
                                           (secrets shown as ***)
  modelgate key new NAME                   print a new worker key and its config entry
`

func run(args []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	if cmd == "key" {
		return newKey(args, stdout)
	}
	fs := flag.NewFlagSet("modelgate "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { io.WriteString(stderr, usage) }
	configPath := fs.String("config", "config.yaml", "path of the YAML configuration file")
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
		ca, err := mitmca.Load(cfg.MITM.CACert, cfg.MITM.CAKey, filepath.Join(cfg.DataDir, "ca"))
		if err != nil {
			return err
		}
		_, err = stdout.Write(ca.PEM)
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
	gw.listening(ln.Addr())
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
	log.Info("shutting down")
	shutCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		// Long downloads are still running; cut them.
		srv.Close()
	}
	return nil
}

// gateway is the wired set of components.
type gateway struct {
	handler http.Handler
	// listening tells the edge its own address (to refuse loops).
	listening func(net.Addr)
	close     func()
	// setSecrets swaps in the upstream credentials of a reloaded config.
	setSecrets func(config.Config) error
}

func build(cfg config.Config, log *slog.Logger) (_ *gateway, err error) {
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
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

	idx, err := cache.OpenIndex(filepath.Join(cfg.DataDir, "index"), log)
	if err != nil {
		return nil, err
	}
	closers = append(closers, idx.Close)
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
		// A body silent for twice the header timeout is cut and resumed.
		StallTimeout: 2 * cfg.Upstream.Timeout.Duration,
		OnEvict: func(_ cache.Digest, size int64) {
			m.Evictions.Inc()
			m.EvictedBytes.Add(float64(size))
		},
		OnFillDone: func(_ cache.Digest, _ int64, err error) {
			if err != nil {
				m.FillFailures.WithLabelValues(fillFailureReason(err)).Inc()
			}
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

	upOpts := upstream.Options{
		CAFile:  cfg.Upstream.CAFile,
		Proxy:   cfg.Upstream.Proxy,
		Timeout: cfg.Upstream.Timeout.Duration,
	}
	transport, err := upstream.NewTransport(upOpts)
	if err != nil {
		return nil, err
	}
	closers = append(closers, func() error { transport.CloseIdleConnections(); return nil })
	ca, err := mitmca.Load(cfg.MITM.CACert, cfg.MITM.CAKey, filepath.Join(cfg.DataDir, "ca"))
	if err != nil {
		return nil, fmt.Errorf("mitm CA: %w", err)
	}
	hfURL, err := url.Parse(cfg.HuggingFace.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("huggingface.endpoint: %w", err)
	}
	civURL, err := url.Parse(cfg.CivitAI.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("civitai.endpoint: %w", err)
	}
	creds, err := upstreamCredentials(cfg)
	if err != nil {
		return nil, err
	}
	hfHost, civHost := authinject.CanonicalHost(hfURL), authinject.CanonicalHost(civURL)
	classify := func(r *http.Request) string {
		switch authinject.CanonicalHost(r.URL) {
		case hfHost:
			return "huggingface"
		case civHost:
			return "civitai"
		}
		return "other" // CDNs and storage: never sent a credential
	}
	// Fill requests are capped per host; metadata passes straight through.
	limited := &upstream.HostLimiter{Next: transport, Max: cfg.Upstream.MaxConnectionsPerHost,
		OnChange: func(d int) { m.FillConnections.Add(float64(d)) }}
	counted := m.InstrumentUpstream(limited, classify)
	// A 429 makes the gateway back off that host for everyone; its own 429s
	// in the meantime are not upstream requests, so they are not counted.
	backoff := upstream.NewBackoff(counted)
	backoff.OnRateLimited = func(r *http.Request) { m.RateLimited.WithLabelValues(classify(r)).Inc() }
	backoff.Scope = func(r *http.Request) string { return authinject.PrincipalFrom(r.Context()).Scope }
	up := authinject.New(backoff, creds...)

	mirror := hfmirror.New(hfmirror.Options{
		Endpoint:    hfURL,
		RevisionTTL: cfg.Cache.RevisionTTL.Duration,
		Upstream:    up,
		Index:       idx,
		Blobs:       store,
		Metrics:     m,
		Logger:      log,
		Offline:     cfg.Offline,
		RepoAllow:   cfg.HuggingFace.Repos.Allow,
		RepoDeny:    cfg.HuggingFace.Repos.Deny,
	})
	civ := civitai.New(civitai.Options{
		Endpoint:    civURL,
		HasKey:      func() bool { return up.HasCredential(civURL) },
		MetadataTTL: cfg.CivitAI.MetadataTTL.Duration,
		DownloadTTL: cfg.CivitAI.DownloadTTL.Duration,
		Upstream:    up,
		Index:       idx,
		Blobs:       store,
		Metrics:     m,
		Logger:      log,
		Offline:     cfg.Offline,
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
		CDNDomains:          []string{"hf.co", "huggingface.co"},
		CivitAIDomains:      []string{"civitai.com"},
		DenyTunnels:         cfg.Proxy.Tunnel == "deny",
		Offline:             cfg.Offline,
		IdleTimeout:         cfg.Proxy.IdleTimeout.Duration,
		DialTunnel:          upstream.TunnelDialer(upOpts, transport),
		Transport:           transport,
		AllowPrivateTargets: cfg.Proxy.AllowPrivateTargets,
		TunnelAllow:         cfg.Proxy.TunnelAllow,
		ClientAllow:         clientNets,
		MetricsAllow:        metricsNets,
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
		return nil
	}
	return &gateway{handler: handler, listening: gw.SetListenAddr, close: closeAll, setSecrets: setSecrets}, nil
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
