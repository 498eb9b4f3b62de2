// Package config loads modelgate's configuration.
//
// A configuration is built in layers: the built-in defaults ([Default]), then
// an optional YAML file, then environment variables named MODELGATE_ followed
// by the upper-case key path joined with "_" (cache.max_size is
// MODELGATE_CACHE_MAX_SIZE), then credential fallbacks from well-known
// environment variables, and finally [Config.Validate]. See [Load].
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Config is the complete modelgate configuration.
type Config struct {
	// Listen is the address the gateway listens on, as host:port. One port
	// serves the mirror API, /metrics and /healthz. An empty host means all
	// interfaces. Default ":8080".
	Listen string `yaml:"listen"`
	// DataDir is the directory holding cached blobs and the index. A
	// relative path is relative to the working directory. Default "./data".
	DataDir string `yaml:"data_dir"`
	// Offline makes the gateway answer only from its cache, without ever
	// touching the network (air-gapped sites); what is not cached is a
	// 504. Default false.
	Offline bool `yaml:"offline"`
	// Cache controls the local blob cache.
	Cache CacheConfig `yaml:"cache"`
	// HuggingFace configures the Hugging Face hub upstream.
	HuggingFace HuggingFaceConfig `yaml:"huggingface"`
	// CivitAI configures the CivitAI upstream.
	CivitAI CivitAIConfig `yaml:"civitai"`
	// Upstream configures outbound connections to all upstreams.
	Upstream UpstreamConfig `yaml:"upstream"`
	// MITM configures which hosts forward-proxy mode intercepts, and the
	// certificate authority it signs their certificates with.
	MITM MITMConfig `yaml:"mitm"`
	// Proxy configures forward-proxy mode for the hosts it does not intercept.
	Proxy ProxyConfig `yaml:"proxy"`
	// Clients says who may use the gateway.
	Clients ClientsConfig `yaml:"clients"`
	// Admin says who may use the admin API (/admin/v1/) and the status page.
	Admin AdminConfig `yaml:"admin"`
	// Log configures logging.
	Log LogConfig `yaml:"log"`
}

// AdminConfig says who may use the admin API and the status page, and how
// prefetch jobs and audit records behave.
type AdminConfig struct {
	// Allow lists the networks that reach /admin/v1/ and the status page
	// at /, checked instead of clients.allow. Without admin keys, only
	// loopback clients among them are answered. Default: loopback only.
	Allow []string `yaml:"allow"`
	// Keys are the admin keys (mga_...). With any configured, every admin
	// request needs one (Authorization: Bearer mga_...). Create one with
	// `modelgate key new --admin NAME`. Not settable from the
	// environment. Default empty.
	Keys []AdminKey `yaml:"keys"`
	// PrefetchFiles is how many files one prefetch job fills at a time.
	// Default 4.
	PrefetchFiles int `yaml:"prefetch_files"`
	// AuditTTL is how long the record of a gated or private download is
	// kept for GET /admin/v1/audit. Must be > 0. Default 30d (720h).
	AuditTTL Duration `yaml:"audit_ttl"`
}

// AdminKey is one admin key: a name and the key's sha256 or a file
// holding the key.
type AdminKey struct {
	Name      string `yaml:"name"`
	KeySHA256 string `yaml:"key_sha256"`
	KeyFile   string `yaml:"key_file"`
}

// CacheConfig controls the local blob cache.
type CacheConfig struct {
	// MaxSize is the largest total size of cached blobs, in bytes or with a
	// unit ("500GiB"). Beyond it the least recently used blobs are evicted.
	// 0 means unbounded. Default 0.
	MaxSize ByteSize `yaml:"max_size"`
	// MinFree is the free space to keep on the data directory's file
	// system; below it the least recently used blobs are evicted. 0 means
	// no floor. Default 5GiB.
	MinFree ByteSize `yaml:"min_free"`
	// Pinned lists what eviction must keep: "hf:org/repo" (every cached
	// revision), "hf:org/repo@rev", "hf:datasets/org/name", or
	// "civitai:<modelVersionId>". Default empty.
	Pinned []string `yaml:"pinned"`
	// RevisionTTL is how long an answer mapping a branch or tag to a commit
	// is trusted before the upstream is asked again. 0 means always ask.
	// Default 60s.
	RevisionTTL Duration `yaml:"revision_ttl"`
	// LastKnownTTL is how long the last good copy of an upstream answer
	// (API answers, CivitAI download mappings) is kept to be served while
	// the upstream is down or the gateway offline. The branch → commit
	// mappings offline mode relies on are kept regardless of age (the
	// newest 100 000). Must be > 0. Default 7d (168h).
	LastKnownTTL Duration `yaml:"last_known_ttl"`
	// IndexMaxSize bounds the metadata index's copies of upstream answers,
	// in bytes or with a unit; beyond it the least recently written go.
	// The index's size on disk also counts against max_size. Must be > 0.
	// Default 1GiB.
	IndexMaxSize ByteSize `yaml:"index_max_size"`
}

// HuggingFaceConfig configures the Hugging Face hub upstream.
type HuggingFaceConfig struct {
	// Repos limits, for everyone, which repositories the gateway serves.
	Repos RepoFilter `yaml:"repos"`
	// Endpoint is the base URL of the hub, an absolute http(s) URL without
	// query or fragment; a trailing "/" is removed. Default
	// "https://huggingface.co".
	Endpoint string `yaml:"endpoint"`
	// Token is the access token sent upstream for gated and private
	// repositories. If empty it is read from TokenFile, then from the
	// environment variables HF_TOKEN and HF_AUTH_TOKEN. Default empty.
	Token Secret `yaml:"token"`
	// TokenFile is the path of a file holding the token (surrounding
	// whitespace is ignored). It cannot be combined with Token. Load reads
	// the file into Token and clears TokenFile. Default empty.
	TokenFile string `yaml:"token_file"`
}

// CivitAIConfig configures the CivitAI upstream.
type CivitAIConfig struct {
	// Endpoint is the base URL of CivitAI, an absolute http(s) URL without
	// query or fragment; a trailing "/" is removed. Default
	// "https://civitai.com".
	Endpoint string `yaml:"endpoint"`
	// APIKey is the API key sent upstream. If empty it is read from the
	// environment variables CIVITAI_API_KEY, CA_AUTH_TOKEN and CA_API_KEY,
	// in that order. Default empty.
	APIKey Secret `yaml:"api_key"`
	// MetadataTTL is how long the JSON of /api/v1/ model and version
	// answers is reused. Default 10m.
	MetadataTTL Duration `yaml:"metadata_ttl"`
	// DownloadTTL is how long a download request (version id and its
	// parameters) stays mapped to the file it served. CivitAI can re-upload
	// a version's file, so this is not forever. Default 24h.
	DownloadTTL Duration `yaml:"download_ttl"`
}

// UpstreamConfig configures outbound connections to all upstreams.
type UpstreamConfig struct {
	// CAFile is the path of a PEM file with extra root certificates trusted
	// for upstream TLS, in addition to the system roots (for tests or
	// corporate TLS inspection). Default empty.
	CAFile string `yaml:"ca_file"`
	// Proxy is an optional parent proxy for outbound traffic, an absolute
	// http, https or socks5 URL such as "http://proxy:3128". Empty means
	// connect directly. Default empty.
	Proxy string `yaml:"proxy"`
	// Timeout bounds connecting and waiting for response headers. It never
	// limits how long a body transfer takes. Must be > 0. Default 30s.
	Timeout Duration `yaml:"timeout"`
	// Retries is how many times in a row a blob download may fail without
	// receiving a byte before the gateway gives up on it. A download that
	// is cut resumes from the bytes it has (Range: bytes=N-) with
	// exponential backoff. 0 means no retry. Default 5.
	Retries int `yaml:"retries"`
	// PrivateHosts are host:port names the gateway may fetch from although
	// they resolve to loopback, link-local or private addresses: an
	// on-premises Hub mirror's storage, say. Every other outbound
	// connection (redirect hops included) to such an address is refused,
	// except to the configured endpoints and parent proxy. Default empty.
	PrivateHosts []string `yaml:"private_hosts"`
}

// LogConfig configures logging.
type LogConfig struct {
	// Level is the minimum level logged: debug, info, warn or error.
	// Default "info".
	Level string `yaml:"level"`
	// Format is the log line format: text or json. Default "text".
	Format string `yaml:"format"`
}

// RepoFilter is a global allow/deny list of Hugging Face repositories:
// ids or patterns ("org/*", "datasets/org/*"). Deny wins; a non-empty
// allow list refuses everything it does not match.
type RepoFilter struct {
	Allow []string `yaml:"allow"`
	Deny  []string `yaml:"deny"`
}

// MITMConfig configures TLS interception in forward-proxy mode.
type MITMConfig struct {
	// Hosts are the host names whose CONNECT tunnels are intercepted: an
	// exact name ("huggingface.co"), or "*." and a domain for every name
	// under it but not the domain itself ("*.hf.co"). A pattern may end in
	// ":port" to match one port only; without it any port matches. Matching
	// is exact and case-insensitive: "huggingface.co" does not match
	// "evilhuggingface.co.example". Default: the Hugging Face and CivitAI
	// hosts and their subdomains.
	Hosts []string `yaml:"hosts"`
	// CACert and CAKey are PEM files of the CA that signs intercepted
	// hosts' certificates. Both or neither; when neither, an ECDSA P-256 CA
	// is generated on first start into data_dir/ca and reused. Default empty.
	CACert string `yaml:"ca_cert"`
	CAKey  string `yaml:"ca_key"`
	// CAOverlap is how long after `modelgate ca --new` the new CA is only
	// announced (GET /ca.pem serves both certificates) before it starts
	// signing, so that workers can trust it first. Must be >= 0.
	// Default 14d (336h).
	CAOverlap Duration `yaml:"ca_overlap"`
}

// ProxyConfig configures forward-proxy mode for hosts that are not
// intercepted.
type ProxyConfig struct {
	// Tunnel is "allow" (CONNECT to any other host is a blind tunnel the
	// gateway never decodes) or "deny" (refused with 403). Default "allow".
	Tunnel string `yaml:"tunnel"`
	// IdleTimeout closes a tunnel or an intercepted connection on which no
	// byte moved in either direction for this long. Default 5m.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// AllowPrivateTargets lets tunnels and relayed requests reach
	// loopback, link-local (cloud metadata at 169.254.169.254) and private
	// addresses. Off, the gateway cannot be used to reach the LAN's
	// internals. The gateway's own listener is refused either way. Default
	// false.
	AllowPrivateTargets bool `yaml:"allow_private_targets"`
	// TunnelAllow, when not empty, limits tunnels (and plain-HTTP proxy
	// requests) to hosts matching these patterns (same form as
	// mitm.hosts); others get 403. Default empty: any host.
	TunnelAllow []string `yaml:"tunnel_allow"`
	// MaxConnections caps the client connections open at once (tunnels,
	// intercepted and plain connections alike); beyond it a new
	// connection's request is answered 503 and a CONNECT is closed.
	// Default 4096.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerClient is the same cap for one client address.
	// Default 512.
	MaxConnectionsPerClient int `yaml:"max_connections_per_client"`
	// BodyReadTimeout bounds how long a request body sent to the gateway
	// itself (paths-info and the like) may take to arrive; relayed
	// requests stream theirs. Default 30s.
	BodyReadTimeout Duration `yaml:"body_read_timeout"`
}

// ClientsConfig says who may use the gateway.
type ClientsConfig struct {
	// Allow lists the client networks served, as CIDRs or single
	// addresses; anyone else gets 403 (mirror) or a 403 to its CONNECT
	// (proxy). /healthz stays open to all. Default: loopback and the
	// private ranges 10/8, 172.16/12, 192.168/16, fc00::/7.
	Allow []string `yaml:"allow"`
	// MetricsAllow lists who may read /metrics. Default empty: the same
	// networks as allow.
	MetricsAllow []string `yaml:"metrics_allow"`
	// RequireKey is "false" (worker keys are optional: everyone on the
	// allow-list is served with the gateway's credentials), "gated" (a
	// request without a worker key is served without the gateway's
	// credentials: public models only) or "all" (every request needs a
	// known worker key; /healthz, /metrics and /ca.pem excepted: the
	// network allow-lists govern those). Default "false".
	RequireKey string `yaml:"require_key"`
	// OwnCredentials is what happens to a worker's own upstream credential
	// (a Hub token that is not a worker key): "replace" (the gateway's is
	// sent instead) or "pass" (the worker's is forwarded, to its own host
	// only). Blobs stay shared, but metadata answers obtained with a
	// worker's own credential are cached under that credential's hash, so
	// each worker reaches a file only through its own access check.
	// Default "replace".
	OwnCredentials string `yaml:"own_credentials"`
	// Keys are the worker keys the gateway knows. A worker presents its
	// key as its HF_TOKEN (Authorization: Bearer mgw_...), as ?token= on
	// CivitAI routes, or in HTTPS_PROXY=http://name:key@gate:8080. The
	// gateway swaps it for the real credential; a key never goes upstream.
	// Create one with `modelgate key new NAME`. Not settable from the
	// environment. Default empty.
	Keys []ClientKey `yaml:"keys"`
}

// ClientKey is one worker key.
type ClientKey struct {
	// Name identifies the worker in logs (never the key itself).
	Name string `yaml:"name"`
	// KeySHA256 is the hex sha256 of the key; or KeyFile holds the key
	// itself (read at start and on SIGHUP). Exactly one of the two.
	KeySHA256 string `yaml:"key_sha256"`
	KeyFile   string `yaml:"key_file"`
	// Scopes are the upstreams the key may use: huggingface, civitai.
	// Default (empty): both.
	Scopes []string `yaml:"scopes"`
	// Repos limits the Hugging Face repositories the key may fetch:
	// patterns such as "org/*" or exact ids. Empty: any.
	Repos []string `yaml:"repos"`
}

// DefaultClientNetworks are the networks served unless clients.allow says
// otherwise.
var DefaultClientNetworks = []string{"127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"}

// DefaultMITMHosts are the hosts intercepted unless mitm.hosts says otherwise.
var DefaultMITMHosts = []string{"huggingface.co", "hf.co", "*.hf.co", "*.huggingface.co", "civitai.com", "*.civitai.com"}

// Default returns the built-in configuration. The repository's config.yaml
// documents the same values and must load to exactly this.
func Default() Config {
	return Config{
		Listen:  ":8080",
		DataDir: "./data",
		Cache: CacheConfig{
			MaxSize:      0,
			MinFree:      5 << 30,
			Pinned:       []string{},
			RevisionTTL:  Duration{60 * time.Second},
			LastKnownTTL: Duration{7 * 24 * time.Hour},
			IndexMaxSize: 1 << 30,
		},
		HuggingFace: HuggingFaceConfig{
			Endpoint: "https://huggingface.co",
			Repos:    RepoFilter{Allow: []string{}, Deny: []string{}},
		},
		CivitAI: CivitAIConfig{
			Endpoint:    "https://civitai.com",
			MetadataTTL: Duration{10 * time.Minute},
			DownloadTTL: Duration{24 * time.Hour},
		},
		Upstream: UpstreamConfig{
			Timeout:      Duration{30 * time.Second},
			Retries:      5,
			PrivateHosts: []string{},
		},
		MITM: MITMConfig{
			Hosts:     slices.Clone(DefaultMITMHosts),
			CAOverlap: Duration{14 * 24 * time.Hour},
		},
		Proxy: ProxyConfig{
			Tunnel:      "allow",
			IdleTimeout: Duration{5 * time.Minute},
			TunnelAllow: []string{},

			MaxConnections:          4096,
			MaxConnectionsPerClient: 512,
			BodyReadTimeout:         Duration{30 * time.Second},
		},
		Clients: ClientsConfig{
			Allow:          slices.Clone(DefaultClientNetworks),
			MetricsAllow:   []string{},
			RequireKey:     "false",
			OwnCredentials: "replace",
			Keys:           []ClientKey{},
		},
		Admin: AdminConfig{
			Allow:         []string{"127.0.0.0/8", "::1/128"},
			Keys:          []AdminKey{},
			PrefetchFiles: 4,
			AuditTTL:      Duration{30 * 24 * time.Hour},
		},
		Log: LogConfig{
			Level:  "info",
			Format: "text",
		},
	}
}

var (
	sha256Hex   = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)
	repoPattern = regexp.MustCompile(`^((datasets|spaces)/)?[A-Za-z0-9*?._-]+(/[A-Za-z0-9*?._-]+)?$`)
)

// pinPattern is the shape of a cache.pinned entry; the Hub part is checked
// fully when the gateway starts.
var pinPattern = regexp.MustCompile(`^(hf:((datasets|spaces)/)?[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?(@[A-Za-z0-9._/-]+)?|civitai:[0-9]{1,12})$`)

var (
	logLevels      = []string{"debug", "info", "warn", "error"}
	logFormats     = []string{"text", "json"}
	tunnelPolicies = []string{"allow", "deny"}
)

// ParseNetwork parses a clients.allow entry: a CIDR, or one address.
func ParseNetwork(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// checkHostPattern returns why p is not a valid mitm.hosts pattern, or "".
func checkHostPattern(p string) string {
	host := p
	if h, port, err := net.SplitHostPort(p); err == nil {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return fmt.Sprintf("invalid port in %q", p)
		}
		host = h
	}
	host = strings.TrimPrefix(host, "*.")
	if host == "" || strings.ContainsAny(host, "*/ :@") || strings.HasPrefix(host, ".") || strings.HasSuffix(host, ".") {
		return fmt.Sprintf("%q is not a host name or *.domain pattern", p)
	}
	return ""
}

// Validate checks every setting and returns all problems found, joined; each
// one starts with the key it concerns, e.g.
// "huggingface.endpoint: must be an absolute http(s) URL". Error messages
// never contain a secret's value.
func (c *Config) Validate() error {
	var errs []error
	fail := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}

	if msg := checkListen(c.Listen); msg != "" {
		fail("listen", "%s", msg)
	}
	if strings.TrimSpace(c.DataDir) == "" {
		fail("data_dir", "must not be empty")
	}
	if c.Cache.MaxSize < 0 {
		fail("cache.max_size", "must be >= 0 (0 means unbounded), got %d", int64(c.Cache.MaxSize))
	}
	if c.Cache.MinFree < 0 {
		fail("cache.min_free", "must be >= 0 (0 means no floor), got %d", int64(c.Cache.MinFree))
	}
	for _, p := range c.Cache.Pinned {
		if !pinPattern.MatchString(p) {
			fail("cache.pinned", `%q is not "hf:org/repo[@rev]", "hf:datasets/org/name[@rev]" or "civitai:<versionId>"`, p)
		}
	}
	if c.Cache.RevisionTTL.Duration < 0 {
		fail("cache.revision_ttl", "must be >= 0, got %s", c.Cache.RevisionTTL)
	}
	if c.Cache.LastKnownTTL.Duration <= 0 {
		fail("cache.last_known_ttl", "must be > 0, got %s", c.Cache.LastKnownTTL)
	}
	if c.Cache.IndexMaxSize <= 0 {
		fail("cache.index_max_size", "must be > 0, got %d", int64(c.Cache.IndexMaxSize))
	}
	if msg := checkURL(c.HuggingFace.Endpoint, "must be an absolute http(s) URL", false, "http", "https"); msg != "" {
		fail("huggingface.endpoint", "%s", msg)
	}
	if c.HuggingFace.Token != "" && c.HuggingFace.TokenFile != "" {
		fail("huggingface.token", "cannot be combined with huggingface.token_file; set only one")
	}
	if !printable(c.HuggingFace.Token) {
		fail("huggingface.token", "must not contain whitespace or control characters")
	}
	if msg := checkURL(c.CivitAI.Endpoint, "must be an absolute http(s) URL", false, "http", "https"); msg != "" {
		fail("civitai.endpoint", "%s", msg)
	}
	if c.CivitAI.MetadataTTL.Duration < 0 {
		fail("civitai.metadata_ttl", "must be >= 0, got %s", c.CivitAI.MetadataTTL)
	}
	if c.CivitAI.DownloadTTL.Duration < 0 {
		fail("civitai.download_ttl", "must be >= 0, got %s", c.CivitAI.DownloadTTL)
	}
	if !printable(c.CivitAI.APIKey) {
		fail("civitai.api_key", "must not contain whitespace or control characters")
	}
	if c.Upstream.Proxy != "" {
		if msg := checkURL(c.Upstream.Proxy, "must be empty or an absolute http, https or socks5 URL", true, "http", "https", "socks5", "socks5h"); msg != "" {
			fail("upstream.proxy", "%s", msg)
		}
	}
	if c.Upstream.Retries < 0 || c.Upstream.Retries > 100 {
		fail("upstream.retries", "must be from 0 to 100, got %d", c.Upstream.Retries)
	}
	for _, hp := range c.Upstream.PrivateHosts {
		host, port, err := net.SplitHostPort(hp)
		if n, perr := strconv.ParseUint(port, 10, 16); err != nil || host == "" || perr != nil || n == 0 || strings.ContainsAny(host, "*/ @") {
			fail("upstream.private_hosts", "%q is not host:port", hp)
		}
	}
	if c.Upstream.Timeout.Duration <= 0 {
		fail("upstream.timeout", "must be > 0, got %s", c.Upstream.Timeout)
	}
	for _, h := range c.MITM.Hosts {
		if msg := checkHostPattern(h); msg != "" {
			fail("mitm.hosts", "%s", msg)
		}
	}
	if (c.MITM.CACert == "") != (c.MITM.CAKey == "") {
		fail("mitm.ca_cert", "mitm.ca_cert and mitm.ca_key must be set together")
	}
	if c.MITM.CAOverlap.Duration < 0 {
		fail("mitm.ca_overlap", "must be >= 0, got %s", c.MITM.CAOverlap)
	}
	if !slices.Contains(tunnelPolicies, c.Proxy.Tunnel) {
		fail("proxy.tunnel", "must be one of %s, got %q", strings.Join(tunnelPolicies, ", "), c.Proxy.Tunnel)
	}
	for _, h := range c.Proxy.TunnelAllow {
		if msg := checkHostPattern(h); msg != "" {
			fail("proxy.tunnel_allow", "%s", msg)
		}
	}
	for key, list := range map[string][]string{"clients.allow": c.Clients.Allow, "clients.metrics_allow": c.Clients.MetricsAllow, "admin.allow": c.Admin.Allow} {
		for _, n := range list {
			if _, err := ParseNetwork(n); err != nil {
				fail(key, "%q is not a CIDR or an IP address", n)
			}
		}
	}
	if !slices.Contains([]string{"false", "gated", "all"}, c.Clients.RequireKey) {
		fail("clients.require_key", `must be "false", "gated" or "all", got %q`, c.Clients.RequireKey)
	}
	if c.Clients.OwnCredentials != "replace" && c.Clients.OwnCredentials != "pass" {
		fail("clients.own_credentials", `must be "replace" or "pass", got %q`, c.Clients.OwnCredentials)
	}
	names := map[string]bool{}
	for i, k := range c.Clients.Keys {
		key := fmt.Sprintf("clients.keys[%d]", i)
		switch {
		case k.Name == "" || names[k.Name]:
			fail(key, "needs a unique name")
		case (k.KeySHA256 == "") == (k.KeyFile == ""):
			fail(key, "needs exactly one of key_sha256 and key_file")
		case k.KeySHA256 != "" && !sha256Hex.MatchString(k.KeySHA256):
			fail(key, "key_sha256 must be 64 hex digits")
		}
		names[k.Name] = true
		for _, sc := range k.Scopes {
			if sc != "huggingface" && sc != "civitai" {
				fail(key, "unknown scope %q (huggingface, civitai)", sc)
			}
		}
	}
	adminNames := map[string]bool{}
	for i, k := range c.Admin.Keys {
		key := fmt.Sprintf("admin.keys[%d]", i)
		switch {
		case k.Name == "" || adminNames[k.Name]:
			fail(key, "needs a unique name")
		case (k.KeySHA256 == "") == (k.KeyFile == ""):
			fail(key, "needs exactly one of key_sha256 and key_file")
		case k.KeySHA256 != "" && !sha256Hex.MatchString(k.KeySHA256):
			fail(key, "key_sha256 must be 64 hex digits")
		}
		adminNames[k.Name] = true
	}
	if c.Admin.PrefetchFiles < 1 || c.Admin.PrefetchFiles > 64 {
		fail("admin.prefetch_files", "must be from 1 to 64, got %d", c.Admin.PrefetchFiles)
	}
	if c.Admin.AuditTTL.Duration <= 0 {
		fail("admin.audit_ttl", "must be > 0, got %s", c.Admin.AuditTTL)
	}
	for _, p := range append(slices.Clone(c.HuggingFace.Repos.Allow), c.HuggingFace.Repos.Deny...) {
		if !repoPattern.MatchString(p) {
			fail("huggingface.repos", "%q is not a repo id or pattern such as org/*", p)
		}
	}
	if c.Proxy.IdleTimeout.Duration <= 0 {
		fail("proxy.idle_timeout", "must be > 0, got %s", c.Proxy.IdleTimeout)
	}
	if c.Proxy.MaxConnections <= 0 {
		fail("proxy.max_connections", "must be > 0, got %d", c.Proxy.MaxConnections)
	}
	if c.Proxy.MaxConnectionsPerClient <= 0 || c.Proxy.MaxConnectionsPerClient > c.Proxy.MaxConnections {
		fail("proxy.max_connections_per_client", "must be from 1 to proxy.max_connections (%d), got %d", c.Proxy.MaxConnections, c.Proxy.MaxConnectionsPerClient)
	}
	if c.Proxy.BodyReadTimeout.Duration <= 0 {
		fail("proxy.body_read_timeout", "must be > 0, got %s", c.Proxy.BodyReadTimeout)
	}
	if !slices.Contains(logLevels, c.Log.Level) {
		fail("log.level", "must be one of %s, got %q", strings.Join(logLevels, ", "), c.Log.Level)
	}
	if !slices.Contains(logFormats, c.Log.Format) {
		fail("log.format", "must be one of %s, got %q", strings.Join(logFormats, ", "), c.Log.Format)
	}
	return errors.Join(errs...)
}

// checkListen returns why addr is not a valid host:port, or "".
func checkListen(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("must be host:port such as \":8080\" or \"127.0.0.1:8080\", got %q", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Sprintf("port must be a number from 0 to 65535, got %q", port)
	}
	return ""
}

// checkURL returns why raw is not an absolute URL with one of schemes, or "".
// Credentials are rejected unless allowUser is set, and never echoed back.
func checkURL(raw, want string, allowUser bool, schemes ...string) string {
	u, err := url.Parse(raw)
	if err != nil {
		// The parse error quotes the input, which may hold credentials.
		return want
	}
	// Only scheme, host and path are echoed: a query or user info may hold
	// a credential.
	got := fmt.Sprintf(", got %q", (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String())
	switch {
	case !slices.Contains(schemes, u.Scheme) || u.Host == "" || u.Opaque != "":
		return want + got
	case u.User != nil && !allowUser:
		return "must not contain credentials; configure the token or API key instead" + got
	case u.RawQuery != "" || u.ForceQuery:
		return want + " without a query" + got
	case u.Fragment != "":
		return want + " without a fragment" + got
	}
	return ""
}

// printable reports whether s has no whitespace or control characters, which
// would make an invalid HTTP header.
func printable(s Secret) bool {
	return !strings.ContainsFunc(string(s), func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r)
	})
}
