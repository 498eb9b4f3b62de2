// Package config loads modelgate's configuration.
//
// A configuration is built in layers: the built-in defaults ([Default]), then
// an optional YAML file, then environment variables named MODELGATE_ followed
// by the upper-case key path joined with "_" (cache.max_size is
// MODELGATE_CACHE_MAX_SIZE), then credential fallbacks from well-known
// environment variables, and finally [Config.Validate]. See [Load].
package config

import (
	"encoding"
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

	"github.com/modelgate/modelgate/hostmatch"
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
	// ShutdownTimeout is how long a stopping gateway (SIGTERM, SIGINT)
	// lets downloads in flight finish after it stopped accepting new
	// connections; then it cuts them and exits. Default 30s.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// ListenTLS is an optional second address, host:port, serving exactly
	// what Listen serves over TLS (mirror mode at https://, the admin API,
	// and HTTPS-proxy mode: a TLS connection to the proxy carrying
	// CONNECT). Empty means off. Default "".
	ListenTLS string `yaml:"listen_tls"`
	// TLS says which certificate the TLS listener presents.
	TLS TLSConfig `yaml:"tls"`
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
	// Visionatrix configures the models catalog served at /visionatrix/.
	Visionatrix VisionatrixConfig `yaml:"visionatrix"`
	// Admin says who may use the admin API (/admin/v1/) and the status page.
	Admin AdminConfig `yaml:"admin"`
	// Log configures logging.
	Log LogConfig `yaml:"log"`
	// Storage says where blobs live besides data_dir.
	Storage StorageConfig `yaml:"storage"`
	// Cluster configures how gateways sharing one bucket coordinate.
	Cluster ClusterConfig `yaml:"cluster"`
}

// StorageConfig says where blobs live. With backend s3, data_dir stays a
// hot tier (bounded by cache.max_size/min_free) in front of a bucket that
// several gateways share.
type StorageConfig struct {
	// Backend is "disk" (data_dir only) or "s3" (data_dir in front of the
	// bucket in storage.s3). Default "disk".
	Backend StorageBackend `yaml:"backend"`
	// S3 is the shared bucket, for backend s3.
	S3 S3Config `yaml:"s3"`
}

// S3Config is an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, B2,
// versitygw). It must support conditional writes (If-None-Match: * and
// If-Match on PUT).
type S3Config struct {
	// Endpoint is the service URL: "https://s3.eu-west-1.amazonaws.com",
	// "http://10.0.0.9:9000". The outbound guard lets it through even on
	// a private address. Required for backend s3.
	Endpoint string `yaml:"endpoint"`
	// Bucket must exist. Required for backend s3.
	Bucket string `yaml:"bucket"`
	// Prefix starts every key the gateways write ("modelgate/"); a "/" is
	// added when missing. Default "".
	Prefix string `yaml:"prefix"`
	// Region, for services that need it in the signature. Default "".
	Region string `yaml:"region"`
	// PathStyle addresses the bucket as endpoint/bucket instead of
	// bucket.endpoint (MinIO, Ceph, versitygw). Default false.
	PathStyle bool `yaml:"path_style"`
	// CAFile is a PEM file of extra roots for an https endpoint. Default "".
	CAFile string `yaml:"ca_file"`
	// AccessKeyID, SecretAccessKey and SessionToken sign the requests;
	// when empty they come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
	// and AWS_SESSION_TOKEN. All empty means anonymous requests.
	AccessKeyID     Secret `yaml:"access_key_id"`
	SecretAccessKey Secret `yaml:"secret_access_key"`
	SessionToken    Secret `yaml:"session_token"`
	// MaxSize bounds the total size of the bucket's blobs; the least
	// recently used (across all gateways) are evicted, never a pinned one
	// or one a gateway is reading. 0 means unbounded. Default 0.
	MaxSize ByteSize `yaml:"max_size"`
	// EvictInterval is how often each gateway offers to run the bucket's
	// eviction (one at a time runs it). Must be >= 1s. Default 1m.
	EvictInterval Duration `yaml:"evict_interval"`
	// PartSize is the part of a blob's multipart upload: the holder of a
	// fill uploads each part as soon as it has it, and a gateway taking
	// over a dead holder's fill resumes after its last whole part. At
	// least 5MiB (S3's smallest part), at most 5GiB. Default 16MiB.
	PartSize ByteSize `yaml:"part_size"`
}

// ClusterConfig configures how gateways sharing one bucket agree that one
// of them fetches a blob from the upstream.
type ClusterConfig struct {
	// LeaseTTL is how long a fill lease lives without renewal: the holder
	// renews it every third of it while its fill moves bytes, and another
	// gateway takes over a lease unchanged for this long. Must be >= 1s.
	// Default 30s.
	LeaseTTL Duration `yaml:"lease_ttl"`
	// Node names this gateway in the leases it writes (for operators
	// reading the bucket). Default: the host name.
	Node string `yaml:"node"`
	// Secret turns on peer streaming: a gateway waiting for another's
	// fill streams it from that gateway (its Advertise URL, read from the
	// lease) instead of waiting for the upload. Every gateway of the
	// cluster has the same one; it signs the node-to-node requests (HMAC,
	// never sent). At least 32 characters. Default "" (off).
	Secret Secret `yaml:"secret"`
	// SecretFile is a file holding Secret (trimmed), instead of Secret.
	SecretFile string `yaml:"secret_file"`
	// Advertise is where the other gateways reach this one: an http(s)
	// URL without a path, "http://10.0.0.5:8080". Required with Secret.
	Advertise string `yaml:"advertise"`
	// Peers are the networks the other gateways' Advertise addresses are
	// in: peer connections go there and nowhere else, and the node-to-node
	// endpoint answers only them. Required with Secret.
	Peers Networks `yaml:"peers"`
}

// TLSConfig is the certificate of the TLS listener (listen_tls).
type TLSConfig struct {
	// CertFile and KeyFile are PEM files of the listener's certificate
	// (chain) and key. Both or neither; when neither, the gateway issues
	// itself a certificate for Names from its own CA (mitm), so the CA
	// workers already trust covers it. Default empty.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Names are the DNS names and IP addresses the issued certificate
	// covers, and that a CA the gateway creates may sign for besides the
	// model domains. Default empty: the host name and the addresses of
	// listen_tls (every interface address when its host is empty).
	Names []string `yaml:"names"`
}

// VisionatrixConfig configures the Visionatrix models catalog the gateway
// serves (GET /visionatrix/<name>), with its Hub and CivitAI download URLs
// pointing at the gateway.
type VisionatrixConfig struct {
	// CatalogURL is the base URL catalog names are fetched under, an
	// absolute http(s) URL (Visionatrix's MODELS_CATALOG_URL). Empty turns
	// /visionatrix/ off. Default "https://visionatrix.github.io/VixFlowsDocs/".
	CatalogURL string `yaml:"catalog_url"`
	// CatalogTTL is how long a fetched catalog is served before it is
	// fetched again; the last good copy is served while the catalog host
	// is down (for cache.last_known_ttl). 0 means fetch every time.
	// Default 10m.
	CatalogTTL Duration `yaml:"catalog_ttl"`
}

// AdminConfig says who may use the admin API and the status page, and how
// prefetch jobs and audit records behave.
type AdminConfig struct {
	// Allow lists the networks that reach /admin/v1/ and the status page
	// at /, checked instead of clients.allow. Without admin keys, only
	// loopback clients among them are answered. Default: loopback only.
	Allow Networks `yaml:"allow"`
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
	Pinned []Pin `yaml:"pinned"`
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
	// MaxFills caps the blob downloads running at once; a request for a
	// blob beyond it waits for a slot (a slow start, not an error).
	// Default 32.
	MaxFills int `yaml:"max_fills"`
	// MaxFillsPerClient caps the blob downloads running at once for one
	// client address. Default 8.
	MaxFillsPerClient int `yaml:"max_fills_per_client"`
	// OrphanFillTimeout stops a blob download that no client has read for
	// this long and that is not pinned; what it fetched is kept for a
	// later resume. Default 10s.
	OrphanFillTimeout Duration `yaml:"orphan_fill_timeout"`
}

// HuggingFaceConfig configures the Hugging Face hub upstream.
type HuggingFaceConfig struct {
	// Repos limits, for everyone, which repositories the gateway serves.
	Repos RepoFilter `yaml:"repos"`
	// Endpoint is the base URL of the hub, an absolute http(s) URL without
	// query or fragment; a trailing "/" is removed. Default
	// "https://huggingface.co".
	Endpoint Endpoint `yaml:"endpoint"`
	// Token is the access token sent upstream for gated and private
	// repositories. If empty it is read from TokenFile, then from the
	// environment variables HF_TOKEN and HF_AUTH_TOKEN. Default empty.
	Token Secret `yaml:"token"`
	// TokenFile is the path of a file holding the token (surrounding
	// whitespace is ignored). It cannot be combined with Token. Load reads
	// the file into Token and clears TokenFile. Default empty.
	TokenFile string `yaml:"token_file"`
	// Xet says when the gateway serves Xet to its workers (mirror mode):
	// "hide" never (every Xet hint is stripped: clients download plain
	// HTTP), "serve" for every Xet-backed file, "auto" for Xet-backed
	// files of at least XetMinSize. Default "auto".
	Xet XetMode `yaml:"xet"`
	// XetMinSize is the size from which "auto" serves Xet. Default 50GB,
	// the largest plain-HTTP download huggingface_hub 1.x accepts.
	XetMinSize ByteSize `yaml:"xet_min_size"`
}

// CivitAIConfig configures the CivitAI upstream.
type CivitAIConfig struct {
	// Endpoint is the base URL of CivitAI, an absolute http(s) URL without
	// query or fragment; a trailing "/" is removed. Default
	// "https://civitai.com".
	Endpoint Endpoint `yaml:"endpoint"`
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
	// Resolve maps host:port names to the host:port dialled instead, for
	// every outbound connection of the gateway (its own requests, every
	// redirect hop, relays and tunnels on a worker's behalf): curl's
	// --resolve, Docker's extra_hosts. TLS verifies the original name. The
	// target passes the outbound guard as any address would (an exempt
	// host:port in private_hosts, or proxy.allow_private_targets, for a
	// private one). With upstream.proxy set, the gateway's own requests
	// go to the parent, which resolves names itself. Default empty.
	Resolve Resolve `yaml:"resolve"`
	// MaxFillAttempts caps the upstream requests one blob download may make
	// in total, progress or not, so an upstream that cuts every transfer
	// cannot keep a download alive forever. Default 20.
	MaxFillAttempts int `yaml:"max_fill_attempts"`
	// MaxFillTime caps how long one blob download may take from start to
	// end. Default 6h.
	MaxFillTime Duration `yaml:"max_fill_time"`
	// FillConnections is how many ranged requests one blob download makes
	// at once; 1 downloads every blob with one stream. Default 8.
	FillConnections int `yaml:"fill_connections"`
	// FillPieceSize is the size of each ranged request of a parallel
	// download; a blob under two pieces is one request. Default 16MiB.
	FillPieceSize ByteSize `yaml:"fill_piece_size"`
	// MaxConnectionsPerHost caps the blob-download requests in flight to
	// one host, all downloads together (metadata requests are not
	// counted and never wait). Default 64.
	MaxConnectionsPerHost int `yaml:"max_connections_per_host"`
}

// LogConfig configures logging.
type LogConfig struct {
	// Level is the minimum level logged: debug, info, warn or error.
	// Default "info".
	Level LogLevel `yaml:"level"`
	// Format is the log line format: text or json. Default "text".
	Format LogFormat `yaml:"format"`
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
	Hosts hostmatch.Patterns `yaml:"hosts"`
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
	Tunnel TunnelPolicy `yaml:"tunnel"`
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
	TunnelAllow hostmatch.Patterns `yaml:"tunnel_allow"`
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
	Allow Networks `yaml:"allow"`
	// MetricsAllow lists who may read /metrics. Default empty: the same
	// networks as allow.
	MetricsAllow Networks `yaml:"metrics_allow"`
	// RequireKey is "false" (worker keys are optional: everyone on the
	// allow-list is served with the gateway's credentials), "gated" (a
	// request without a worker key is served without the gateway's
	// credentials: public models only) or "all" (every request needs a
	// known worker key; /healthz, /metrics and /ca.pem excepted: the
	// network allow-lists govern those). Default "false".
	RequireKey RequireKey `yaml:"require_key"`
	// OwnCredentials is what happens to a worker's own upstream credential
	// (a Hub token that is not a worker key): "replace" (the gateway's is
	// sent instead) or "pass" (the worker's is forwarded, to its own host
	// only). Blobs stay shared, but metadata answers obtained with a
	// worker's own credential are cached under that credential's hash, so
	// each worker reaches a file only through its own access check.
	// Default "replace".
	OwnCredentials OwnCredentials `yaml:"own_credentials"`
	// RequireTLSForKeys refuses (403) a request presenting a worker key
	// (mgw_) or an admin key (mga_) over plain HTTP, except from a
	// loopback client (one connecting from the loopback address it
	// connects to); keys then travel only over listen_tls. Default false.
	RequireTLSForKeys bool `yaml:"require_tls_for_keys"`
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
		Listen:          ":8080",
		DataDir:         "./data",
		ShutdownTimeout: Duration{30 * time.Second},
		Cache: CacheConfig{
			MaxSize:           0,
			MinFree:           5 << 30,
			Pinned:            []Pin{},
			RevisionTTL:       Duration{60 * time.Second},
			LastKnownTTL:      Duration{7 * 24 * time.Hour},
			IndexMaxSize:      1 << 30,
			MaxFills:          32,
			MaxFillsPerClient: 8,
			OrphanFillTimeout: Duration{10 * time.Second},
		},
		HuggingFace: HuggingFaceConfig{
			Endpoint:   MustEndpoint("https://huggingface.co"),
			Repos:      RepoFilter{Allow: []string{}, Deny: []string{}},
			Xet:        "auto",
			XetMinSize: 50e9,
		},
		CivitAI: CivitAIConfig{
			Endpoint:    MustEndpoint("https://civitai.com"),
			MetadataTTL: Duration{10 * time.Minute},
			DownloadTTL: Duration{24 * time.Hour},
		},
		Upstream: UpstreamConfig{
			Timeout:               Duration{30 * time.Second},
			Retries:               5,
			PrivateHosts:          []string{},
			Resolve:               Resolve{},
			MaxFillAttempts:       20,
			MaxFillTime:           Duration{6 * time.Hour},
			FillConnections:       8,
			FillPieceSize:         16 << 20,
			MaxConnectionsPerHost: 64,
		},
		MITM: MITMConfig{
			Hosts:     hostmatch.MustParse(DefaultMITMHosts...),
			CAOverlap: Duration{14 * 24 * time.Hour},
		},
		Proxy: ProxyConfig{
			Tunnel:      "allow",
			IdleTimeout: Duration{5 * time.Minute},
			TunnelAllow: hostmatch.Patterns{},

			MaxConnections:          4096,
			MaxConnectionsPerClient: 512,
			BodyReadTimeout:         Duration{30 * time.Second},
		},
		Clients: ClientsConfig{
			Allow:          MustNetworks(DefaultClientNetworks...),
			MetricsAllow:   Networks{},
			RequireKey:     "false",
			OwnCredentials: "replace",
			Keys:           []ClientKey{},
		},
		TLS: TLSConfig{Names: []string{}},
		Visionatrix: VisionatrixConfig{
			CatalogURL: "https://visionatrix.github.io/VixFlowsDocs/",
			CatalogTTL: Duration{10 * time.Minute},
		},
		Admin: AdminConfig{
			Allow:         MustNetworks("127.0.0.0/8", "::1/128"),
			Keys:          []AdminKey{},
			PrefetchFiles: 4,
			AuditTTL:      Duration{30 * 24 * time.Hour},
		},
		Log: LogConfig{
			Level:  "info",
			Format: "text",
		},
		Storage: StorageConfig{Backend: "disk", S3: S3Config{EvictInterval: Duration{time.Minute}, PartSize: 16 << 20}},
		Cluster: ClusterConfig{LeaseTTL: Duration{30 * time.Second}, Peers: Networks{}},
	}
}

var (
	sha256Hex   = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)
	repoPattern = regexp.MustCompile(`^((datasets|spaces)/)?[A-Za-z0-9*?._-]+(/[A-Za-z0-9*?._-]+)?$`)
)

// checkEnum reports v under key unless u accepts it: a value set in code
// rather than read from the file or the environment is checked here.
func checkEnum(fail func(key, format string, args ...any), key, v string, u encoding.TextUnmarshaler) {
	if err := u.UnmarshalText([]byte(v)); err != nil {
		fail(key, "%s", err)
	}
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
	if c.ListenTLS != "" {
		if msg := checkListen(c.ListenTLS); msg != "" {
			fail("listen_tls", "%s", msg)
		} else if _, port, _ := net.SplitHostPort(c.Listen); c.ListenTLS == c.Listen && port != "0" {
			fail("listen_tls", "must differ from listen (%q)", c.Listen)
		}
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		fail("tls.cert_file", "tls.cert_file and tls.key_file must be set together")
	}
	for _, n := range c.TLS.Names {
		if net.ParseIP(n) != nil {
			continue
		}
		if _, err := hostmatch.Parse(n); err != nil || strings.HasPrefix(n, "*.") || strings.Contains(n, ":") {
			fail("tls.names", "%q is not a host name or an IP address", n)
		}
	}
	if c.Visionatrix.CatalogURL != "" {
		if msg := checkURL(c.Visionatrix.CatalogURL, "must be empty or an absolute http(s) URL", false, "http", "https"); msg != "" {
			fail("visionatrix.catalog_url", "%s", msg)
		}
	}
	if c.Visionatrix.CatalogTTL.Duration < 0 {
		fail("visionatrix.catalog_ttl", "must be >= 0, got %s", c.Visionatrix.CatalogTTL)
	}
	if strings.TrimSpace(c.DataDir) == "" {
		fail("data_dir", "must not be empty")
	}
	c.validateStorage(fail)
	c.validateCluster(fail)
	if c.Cache.MaxSize < 0 {
		fail("cache.max_size", "must be >= 0 (0 means unbounded), got %d", int64(c.Cache.MaxSize))
	}
	if c.ShutdownTimeout.Duration <= 0 {
		fail("shutdown_timeout", "must be > 0, got %s", c.ShutdownTimeout)
	}
	if c.Cache.MinFree < 0 {
		fail("cache.min_free", "must be >= 0 (0 means no floor), got %d", int64(c.Cache.MinFree))
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
	if !c.HuggingFace.Endpoint.IsSet() {
		fail("huggingface.endpoint", endpointWant)
	}
	if c.HuggingFace.Token != "" && c.HuggingFace.TokenFile != "" {
		fail("huggingface.token", "cannot be combined with huggingface.token_file; set only one")
	}
	if !printable(c.HuggingFace.Token) {
		fail("huggingface.token", "must not contain whitespace or control characters")
	}
	checkEnum(fail, "huggingface.xet", string(c.HuggingFace.Xet), new(XetMode))
	if c.HuggingFace.XetMinSize < 0 {
		fail("huggingface.xet_min_size", "must not be negative")
	}
	if !c.CivitAI.Endpoint.IsSet() {
		fail("civitai.endpoint", endpointWant)
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
	for _, msg := range checkResolve(c.Upstream.Resolve) {
		fail("upstream.resolve", "%s", msg)
	}
	if c.Cache.MaxFills < 1 || c.Cache.MaxFills > 100000 {
		fail("cache.max_fills", "must be from 1 to 100000, got %d", c.Cache.MaxFills)
	}
	if c.Cache.MaxFillsPerClient < 1 || c.Cache.MaxFillsPerClient > c.Cache.MaxFills {
		fail("cache.max_fills_per_client", "must be from 1 to cache.max_fills (%d), got %d", c.Cache.MaxFills, c.Cache.MaxFillsPerClient)
	}
	if c.Cache.OrphanFillTimeout.Duration <= 0 {
		fail("cache.orphan_fill_timeout", "must be > 0, got %s", c.Cache.OrphanFillTimeout)
	}
	if c.Upstream.FillConnections < 1 || c.Upstream.FillConnections > 64 {
		fail("upstream.fill_connections", "must be from 1 to 64, got %d", c.Upstream.FillConnections)
	}
	if c.Upstream.FillPieceSize < 1<<20 {
		fail("upstream.fill_piece_size", "must be at least 1MiB, got %d", int64(c.Upstream.FillPieceSize))
	}
	if c.Upstream.MaxConnectionsPerHost < 1 {
		fail("upstream.max_connections_per_host", "must be at least 1, got %d", c.Upstream.MaxConnectionsPerHost)
	}
	if c.Upstream.MaxFillAttempts < 1 || c.Upstream.MaxFillAttempts > 10000 {
		fail("upstream.max_fill_attempts", "must be from 1 to 10000, got %d", c.Upstream.MaxFillAttempts)
	}
	if c.Upstream.MaxFillTime.Duration <= 0 {
		fail("upstream.max_fill_time", "must be > 0, got %s", c.Upstream.MaxFillTime)
	}
	if c.Upstream.Timeout.Duration <= 0 {
		fail("upstream.timeout", "must be > 0, got %s", c.Upstream.Timeout)
	}
	if (c.MITM.CACert == "") != (c.MITM.CAKey == "") {
		fail("mitm.ca_cert", "mitm.ca_cert and mitm.ca_key must be set together")
	}
	if c.MITM.CAOverlap.Duration < 0 {
		fail("mitm.ca_overlap", "must be >= 0, got %s", c.MITM.CAOverlap)
	}
	checkEnum(fail, "proxy.tunnel", string(c.Proxy.Tunnel), new(TunnelPolicy))
	checkEnum(fail, "clients.require_key", string(c.Clients.RequireKey), new(RequireKey))
	checkEnum(fail, "clients.own_credentials", string(c.Clients.OwnCredentials), new(OwnCredentials))
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
	checkEnum(fail, "log.level", string(c.Log.Level), new(LogLevel))
	checkEnum(fail, "log.format", string(c.Log.Format), new(LogFormat))
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

// s3BucketName is the DNS-compatible bucket name every S3 service accepts.
var s3BucketName = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

func (c *Config) validateStorage(fail func(key, format string, args ...any)) {
	switch c.Storage.Backend {
	case BackendDisk:
		return
	case BackendS3:
	default:
		checkEnum(fail, "storage.backend", string(c.Storage.Backend), new(StorageBackend))
		return
	}
	s3 := c.Storage.S3
	if msg := checkURL(s3.Endpoint, "must be an absolute http(s) URL", false, "http", "https"); msg != "" {
		fail("storage.s3.endpoint", "%s", msg)
	} else if u, _ := url.Parse(s3.Endpoint); u.Path != "" && u.Path != "/" {
		fail("storage.s3.endpoint", "must have no path (the bucket goes in storage.s3.bucket), got %q", u.Path)
	}
	if !s3BucketName.MatchString(s3.Bucket) {
		fail("storage.s3.bucket", "must be a bucket name (3-63 of a-z 0-9 . -), got %q", s3.Bucket)
	}
	if strings.HasPrefix(s3.Prefix, "/") || strings.Contains(s3.Prefix, "..") || strings.ContainsFunc(s3.Prefix, unicode.IsControl) {
		fail("storage.s3.prefix", "must not start with / or contain .. or control characters, got %q", s3.Prefix)
	}
	for key, v := range map[string]Secret{"access_key_id": s3.AccessKeyID, "secret_access_key": s3.SecretAccessKey, "session_token": s3.SessionToken} {
		if !printable(v) {
			fail("storage.s3."+key, "must not contain whitespace or control characters")
		}
	}
	if s3.PartSize < 5<<20 || s3.PartSize > 5<<30 {
		fail("storage.s3.part_size", "must be between 5MiB and 5GiB (S3's part sizes), got %d", int64(s3.PartSize))
	}
	if (s3.AccessKeyID == "") != (s3.SecretAccessKey == "") {
		fail("storage.s3.access_key_id", "storage.s3.access_key_id and secret_access_key must be set together")
	}
	if s3.MaxSize < 0 {
		fail("storage.s3.max_size", "must be >= 0 (0 means unbounded), got %d", int64(s3.MaxSize))
	}
	if s3.EvictInterval.Duration < time.Second {
		fail("storage.s3.evict_interval", "must be >= 1s, got %s", s3.EvictInterval)
	}
	if c.Cluster.LeaseTTL.Duration < time.Second {
		fail("cluster.lease_ttl", "must be >= 1s, got %s", c.Cluster.LeaseTTL)
	}
}

// MinClusterSecret is the shortest cluster.secret accepted.
const MinClusterSecret = 32

// validateCluster checks the peer-streaming keys (cluster.lease_ttl is
// checked with the bucket it belongs to).
func (c *Config) validateCluster(fail func(key, format string, args ...any)) {
	cl := c.Cluster
	if cl.Secret == "" {
		if cl.Advertise != "" {
			fail("cluster.advertise", "needs cluster.secret (peer streaming is off without it)")
		}
		if len(cl.Peers) > 0 {
			fail("cluster.peers", "needs cluster.secret (peer streaming is off without it)")
		}
		return
	}
	if c.Storage.Backend != BackendS3 {
		fail("cluster.secret", "needs storage.backend s3 (peers find each other through the bucket's leases)")
	}
	if !printable(cl.Secret) {
		fail("cluster.secret", "must not contain whitespace or control characters")
	} else if len(cl.Secret) < MinClusterSecret {
		fail("cluster.secret", "must be at least %d characters, got %d (e.g. openssl rand -hex 32)", MinClusterSecret, len(cl.Secret))
	}
	if cl.Advertise == "" {
		fail("cluster.advertise", "is required with cluster.secret: the URL the other gateways reach this one at, e.g. http://10.0.0.5:8080")
	} else if msg := checkURL(cl.Advertise, "must be an absolute http(s) URL", false, "http", "https"); msg != "" {
		fail("cluster.advertise", "%s", msg)
	} else if u, _ := url.Parse(cl.Advertise); u.Path != "" && u.Path != "/" {
		fail("cluster.advertise", "must have no path, got %q", u.Path)
	} else if ip, err := netip.ParseAddr(u.Hostname()); err == nil && ip.IsUnspecified() {
		fail("cluster.advertise", "must be an address the other gateways can reach, not %s", u.Hostname())
	}
	if len(cl.Peers) == 0 {
		fail("cluster.peers", "is required with cluster.secret: the networks of the other gateways, e.g. [10.0.0.0/24]")
	}
}
