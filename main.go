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
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/term"

	"github.com/modelgate/modelgate/admincli"
	"github.com/modelgate/modelgate/app"
	"github.com/modelgate/modelgate/buildinfo"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/mitmca"
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
		ca, err := mitmca.Load(cfg.MITM.CACert, cfg.MITM.CAKey, filepath.Join(cfg.DataDir, "ca"), app.CAOptions(cfg))
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
// the bound address once the listener is up (tests use port 0). On SIGHUP
// and POST /admin/v1/reload, reload (when not nil) is asked for the
// configuration again and the upstream credentials and keys are replaced;
// everything else needs a restart.
func serve(ctx context.Context, cfg config.Config, log *slog.Logger, ready chan<- string, reload func() (config.Config, error)) error {
	a, err := app.New(cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	if reload != nil {
		a.SetReloadSource(reload)
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		done := make(chan struct{})
		defer close(done)
		go func() {
			for {
				select {
				case <-hup:
					a.ReloadFrom(reload)
				case <-done:
					return
				}
			}
		}()
	}
	return a.Serve(ctx, ready)
}

// rotateCA implements `modelgate ca --new`: the next CA, printed with the
// current one (what workers must trust during the overlap).
func rotateCA(cfg config.Config, stdout, stderr io.Writer) error {
	if cfg.MITM.CACert != "" {
		return errors.New("mitm.ca_cert is set: rotate that CA by replacing its files")
	}
	ca, err := mitmca.Rotate(filepath.Join(cfg.DataDir, "ca"), app.CAOptions(cfg))
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "new CA created; GET /ca.pem serves both certificates until %s, when the new one starts signing (restart or not). Have every worker trust the output below before then.\n",
		ca.NextFrom().Format(time.RFC3339))
	_, err = stdout.Write(ca.Bundle(time.Now()))
	return err
}
