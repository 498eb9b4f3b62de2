package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// envOf returns a getenv reading from m, so tests never touch the real
// environment.
func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// filesOf returns a readFile reading from m.
func filesOf(m map[string]string) func(string) ([]byte, error) {
	return func(p string) ([]byte, error) {
		if s, ok := m[p]; ok {
			return []byte(s), nil
		}
		return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
	}
}

// parse loads yamlText with the given environment and files.
func parse(yamlText string, env, files map[string]string) (Config, error) {
	return Parse([]byte(yamlText), envOf(env), filesOf(files))
}

func TestDefault(t *testing.T) {
	c := Default()
	assert.Equal(t, ":8080", c.Listen)
	assert.Equal(t, "./data", c.DataDir)
	assert.Equal(t, ByteSize(0), c.Cache.MaxSize)
	assert.Equal(t, 60*time.Second, c.Cache.RevisionTTL.Duration)
	assert.Equal(t, "https://huggingface.co", c.HuggingFace.Endpoint.String())
	assert.Empty(t, c.HuggingFace.Token)
	assert.Empty(t, c.HuggingFace.TokenFile)
	assert.Equal(t, XetAuto, c.HuggingFace.Xet)
	assert.Equal(t, ByteSize(50e9), c.HuggingFace.XetMinSize)
	assert.Equal(t, "https://civitai.com", c.CivitAI.Endpoint.String())
	assert.Empty(t, c.CivitAI.APIKey)
	assert.Empty(t, c.Upstream.CAFile)
	assert.Empty(t, c.Upstream.Proxy)
	assert.Equal(t, 30*time.Second, c.Upstream.Timeout.Duration)
	assert.Equal(t, LogInfo, c.Log.Level)
	assert.Equal(t, LogText, c.Log.Format)
	require.NoError(t, c.Validate())

	// Empty input, no file and a comment-only file all give the defaults.
	for _, src := range []string{"", "# nothing\n", "---\n"} {
		got, err := parse(src, nil, nil)
		require.NoError(t, err, "%q", src)
		assert.Equal(t, Default(), got, "%q", src)
	}
	got, err := Load("", envOf(nil), filesOf(nil))
	require.NoError(t, err)
	assert.Equal(t, Default(), got)
}

func TestRepoConfigYAMLIsDefault(t *testing.T) {
	data, err := os.ReadFile("../config.yaml")
	require.NoError(t, err)

	got, err := Parse(data, envOf(nil), filesOf(nil))
	require.NoError(t, err)
	assert.Equal(t, Default(), got)

	got, err = Load("../config.yaml", envOf(nil), os.ReadFile)
	require.NoError(t, err)
	assert.Equal(t, Default(), got)
}

// Every key has exactly one environment variable, it is supported by the
// env parser, and config.yaml documents both key and variable.
func TestEveryKeyHasDocumentedEnvVar(t *testing.T) {
	data, err := os.ReadFile("../config.yaml")
	require.NoError(t, err)
	doc := string(data)

	seen := map[string]string{}
	var c Config
	err = walkLeaves(reflect.ValueOf(&c).Elem(), nil, func(path []string, f reflect.Value) error {
		key, name := strings.Join(path, "."), envName(path)
		if other, dup := seen[name]; dup {
			t.Errorf("%s and %s share env variable %s", other, key, name)
		}
		seen[name] = key
		assert.Contains(t, doc, "Env: "+name+".", "config.yaml must document %s", name)
		assert.Contains(t, doc, path[len(path)-1]+":", "config.yaml must list %s", key)
		return nil
	})
	require.NoError(t, err)
	assert.Len(t, seen, 83)
	assert.Equal(t, "cache.max_size", seen["MODELGATE_CACHE_MAX_SIZE"])
	assert.Equal(t, "huggingface.token_file", seen["MODELGATE_HUGGINGFACE_TOKEN_FILE"])
}

func TestYAMLOverrides(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want func(*Config)
	}{
		{
			name: "top level",
			yaml: "listen: 127.0.0.1:9000\ndata_dir: /var/lib/modelgate\n",
			want: func(c *Config) { c.Listen = "127.0.0.1:9000"; c.DataDir = "/var/lib/modelgate" },
		},
		{
			name: "cache",
			yaml: "cache:\n  max_size: 500GiB\n  revision_ttl: 5m\n",
			want: func(c *Config) {
				c.Cache.MaxSize = 500 << 30
				c.Cache.RevisionTTL = Duration{5 * time.Minute}
			},
		},
		{
			name: "cache integers",
			yaml: "cache:\n  max_size: 1048576\n  revision_ttl: 0\n",
			want: func(c *Config) { c.Cache.MaxSize = 1 << 20; c.Cache.RevisionTTL = Duration{} },
		},
		{
			name: "bare integer duration is seconds",
			yaml: "cache:\n  revision_ttl: 90\n",
			want: func(c *Config) { c.Cache.RevisionTTL = Duration{90 * time.Second} },
		},
		{
			name: "huggingface, trailing slash trimmed",
			yaml: "huggingface:\n  endpoint: http://hub.test:8081/mirror/\n  token: hf_yaml\n",
			want: func(c *Config) {
				c.HuggingFace.Endpoint = MustEndpoint("http://hub.test:8081/mirror")
				c.HuggingFace.Token = "hf_yaml"
			},
		},
		{
			name: "civitai",
			yaml: "civitai:\n  endpoint: https://civitai.test/\n  api_key: ca_yaml\n",
			want: func(c *Config) {
				c.CivitAI.Endpoint = MustEndpoint("https://civitai.test")
				c.CivitAI.APIKey = "ca_yaml"
			},
		},
		{
			name: "upstream",
			yaml: "upstream:\n  ca_file: /etc/ca.pem\n  proxy: socks5://proxy.test:1080\n  timeout: 1m30s\n",
			want: func(c *Config) {
				c.Upstream.CAFile = "/etc/ca.pem"
				c.Upstream.Proxy = "socks5://proxy.test:1080"
				c.Upstream.Timeout = Duration{90 * time.Second}
			},
		},
		{
			name: "log, case-insensitive",
			yaml: "log:\n  level: DEBUG\n  format: json\n",
			want: func(c *Config) { c.Log.Level = "debug"; c.Log.Format = "json" },
		},
		{
			name: "empty section keeps defaults",
			yaml: "log:\n# level: debug\n",
			want: func(*Config) {},
		},
		{
			name: "key without a value keeps its default",
			yaml: "listen:\nupstream:\n  timeout: ~\n  proxy:\n",
			want: func(*Config) {},
		},
		{
			name: "partial section keeps other defaults",
			yaml: "upstream:\n  proxy: http://user:pw@proxy.test:3128\n",
			want: func(c *Config) { c.Upstream.Proxy = "http://user:pw@proxy.test:3128" },
		},
		{
			name: "aliases",
			yaml: "cache:\n  revision_ttl: &t 45s\nupstream:\n  timeout: *t\n",
			want: func(c *Config) {
				c.Cache.RevisionTTL = Duration{45 * time.Second}
				c.Upstream.Timeout = Duration{45 * time.Second}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parse(tt.yaml, nil, nil)
			require.NoError(t, err)
			want := Default()
			tt.want(&want)
			assert.Equal(t, want, got)
		})
	}
}

func TestYAMLStructureErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"unknown top-level key", "lsiten: :9000\n", []string{"line 1: lsiten: unknown key", "listen, data_dir"}},
		{"unknown nested key", "cache:\n  max_sise: 1GiB\n", []string{"line 2: cache.max_sise: unknown key", "under cache: max_size, min_free, pinned, revision_ttl, last_known_ttl, index_max_size"}},
		{"unknown section", "metrics:\n  enabled: true\n", []string{"metrics: unknown key"}},
		{"duplicate key", "log:\n  level: info\n  level: debug\n", []string{"line 3: log.level: duplicate key (first set on line 2)"}},
		{"section not a mapping", "cache: 5\n", []string{"cache: must be a mapping"}},
		{"top level not a mapping", "- a\n- b\n", []string{"top level must be a mapping"}},
		{"list for a string", "listen: [a, b]\n", []string{"listen: must be a single value, got a list"}},
		{"mapping for a duration", "upstream:\n  timeout: {a: 1}\n", []string{"upstream.timeout: must be a duration"}},
		{"two documents", "listen: :1\n---\nlisten: :2\n", []string{"only one YAML document"}},
		{"syntax error", "cache:\n  max_size: 1\n bad\n", []string{"config: yaml: line"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(tt.yaml, nil, nil)
			require.Error(t, err)
			assert.True(t, strings.HasPrefix(err.Error(), "config: "), err.Error())
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}

	// Load names the file.
	_, err := Load("/etc/mg.yaml", envOf(nil), filesOf(map[string]string{"/etc/mg.yaml": "cache:\n  revision_ttl: abc\n"}))
	require.Error(t, err)
	assert.Equal(t, `config: /etc/mg.yaml: line 2: cache.revision_ttl: invalid duration "abc": use a number with a unit such as "30s", "5m" or "1h30m", or whole seconds`, err.Error())

	_, err = Load("/missing.yaml", envOf(nil), filesOf(nil))
	require.ErrorIs(t, err, fs.ErrNotExist)
	assert.Contains(t, err.Error(), "/missing.yaml")
}

func TestEnvOverrides(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		env  map[string]string
		want func(*Config)
	}{
		{
			name: "top level",
			env:  map[string]string{"MODELGATE_LISTEN": "[::1]:7000", "MODELGATE_DATA_DIR": "/srv/mg"},
			want: func(c *Config) { c.Listen = "[::1]:7000"; c.DataDir = "/srv/mg" },
		},
		{
			name: "byte size and duration",
			env:  map[string]string{"MODELGATE_CACHE_MAX_SIZE": "500GiB", "MODELGATE_CACHE_REVISION_TTL": "2m"},
			want: func(c *Config) { c.Cache.MaxSize = 500 << 30; c.Cache.RevisionTTL = Duration{2 * time.Minute} },
		},
		{
			name: "SI size and bare seconds",
			env:  map[string]string{"MODELGATE_CACHE_MAX_SIZE": "10MB", "MODELGATE_UPSTREAM_TIMEOUT": "5"},
			want: func(c *Config) { c.Cache.MaxSize = 10_000_000; c.Upstream.Timeout = Duration{5 * time.Second} },
		},
		{
			name: "nested strings and secrets",
			env: map[string]string{
				"MODELGATE_HUGGINGFACE_ENDPOINT": "https://hf.test/",
				"MODELGATE_HUGGINGFACE_TOKEN":    "hf_env",
				"MODELGATE_CIVITAI_ENDPOINT":     "http://ca.test",
				"MODELGATE_CIVITAI_API_KEY":      "ca_env",
				"MODELGATE_UPSTREAM_CA_FILE":     "/ca.pem",
				"MODELGATE_UPSTREAM_PROXY":       "http://proxy.test:3128",
				"MODELGATE_LOG_LEVEL":            "warn",
				"MODELGATE_LOG_FORMAT":           "json",
			},
			want: func(c *Config) {
				c.HuggingFace.Endpoint = MustEndpoint("https://hf.test")
				c.HuggingFace.Token = "hf_env"
				c.CivitAI.Endpoint = MustEndpoint("http://ca.test")
				c.CivitAI.APIKey = "ca_env"
				c.Upstream.CAFile = "/ca.pem"
				c.Upstream.Proxy = "http://proxy.test:3128"
				c.Log.Level = "warn"
				c.Log.Format = "json"
			},
		},
		{
			name: "env wins over file",
			yaml: "log:\n  level: debug\ncache:\n  max_size: 1GiB\n",
			env:  map[string]string{"MODELGATE_LOG_LEVEL": "error"},
			want: func(c *Config) { c.Log.Level = "error"; c.Cache.MaxSize = 1 << 30 },
		},
		{
			name: "empty variable is unset",
			env:  map[string]string{"MODELGATE_LISTEN": ""},
			want: func(*Config) {},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parse(tt.yaml, tt.env, nil)
			require.NoError(t, err)
			want := Default()
			tt.want(&want)
			assert.Equal(t, want, got)
		})
	}
}

func TestInvalidValues(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		env  map[string]string
		want []string
	}{
		{"bad duration", "cache:\n  revision_ttl: abc\n", nil, []string{`cache.revision_ttl: invalid duration "abc"`}},
		{"bad listen_tls", "listen_tls: 8443\n", nil, []string{"listen_tls: must be host:port"}},
		{"listen_tls same as listen", "listen_tls: \":8080\"\n", nil, []string{"listen_tls: must differ from listen"}},
		{"tls cert without key", "tls:\n  cert_file: /c.pem\n", nil, []string{"tls.cert_file: tls.cert_file and tls.key_file must be set together"}},
		{"tls name pattern", "tls:\n  names: [\"*.gate.lan\"]\n", nil, []string{`tls.names: "*.gate.lan" is not a host name or an IP address`}},
		{"tls name with port", "", map[string]string{"MODELGATE_TLS_NAMES": "gate:8443"}, []string{`tls.names: "gate:8443" is not`}},
		{"catalog url", "visionatrix:\n  catalog_url: visionatrix.github.io\n", nil, []string{"visionatrix.catalog_url: must be empty or an absolute http(s) URL"}},
		{"catalog ttl", "visionatrix:\n  catalog_ttl: -1m\n", nil, []string{"visionatrix.catalog_ttl: must be >= 0"}},
		{"bad duration env", "", map[string]string{"MODELGATE_CACHE_REVISION_TTL": "abc"},
			[]string{"MODELGATE_CACHE_REVISION_TTL", `cache.revision_ttl: invalid duration "abc"`}},
		{"negative ttl", "cache:\n  revision_ttl: -1s\n", nil, []string{"cache.revision_ttl: must be >= 0"}},
		{"zero timeout", "upstream:\n  timeout: 0s\n", nil, []string{"upstream.timeout: must be > 0"}},
		{"bad size", "cache:\n  max_size: lots\n", nil, []string{`cache.max_size: invalid size "lots"`}},
		{"bad xet mode", "huggingface:\n  xet: always\n", nil, []string{`huggingface.xet: must be one of auto, serve, hide, got "always"`}},
		{"bad xet size", "", map[string]string{"MODELGATE_HUGGINGFACE_XET_MIN_SIZE": "-1"}, []string{"huggingface.xet_min_size"}},
		{"bad size unit", "cache:\n  max_size: 5XB\n", nil, []string{`cache.max_size: invalid size "5XB": unknown unit "XB"`}},
		{"bad size env", "", map[string]string{"MODELGATE_CACHE_MAX_SIZE": "1.5.5GiB"},
			[]string{"MODELGATE_CACHE_MAX_SIZE", "cache.max_size: invalid size"}},
		{"negative size", "cache:\n  max_size: -1\n", nil, []string{"cache.max_size: must be >= 0"}},
		{"bad level", "log:\n  level: verbose\n", nil, []string{`log.level: must be one of debug, info, warn, error, got "verbose"`}},
		{"bad level env", "", map[string]string{"MODELGATE_LOG_LEVEL": "trace"}, []string{"log.level:"}},
		{"bad format", "log:\n  format: xml\n", nil, []string{"log.format: must be one of text, json"}},
		{"endpoint not a URL", "huggingface:\n  endpoint: huggingface\n", nil, []string{"huggingface.endpoint: must be an absolute http(s) URL"}},
		{"endpoint wrong scheme", "civitai:\n  endpoint: ftp://civitai.test\n", nil, []string{"civitai.endpoint: must be an absolute http(s) URL"}},
		{"endpoint with query", "huggingface:\n  endpoint: https://hf.test/?x=1\n", nil, []string{"huggingface.endpoint: must be an absolute http(s) URL without a query"}},
		{"endpoint with fragment", "huggingface:\n  endpoint: https://hf.test/#top\n", nil, []string{"huggingface.endpoint:", "without a fragment"}},
		{"endpoint empty", "huggingface:\n  endpoint: \"\"\n", nil, []string{"huggingface.endpoint: must be an absolute http(s) URL"}},
		{"endpoint with credentials", "", map[string]string{"MODELGATE_CIVITAI_ENDPOINT": "https://u:pw@ca.test"}, []string{"civitai.endpoint: must not contain credentials"}},
		{"bad listen", "listen: 8080\n", nil, []string{`listen: must be host:port`}},
		{"bad listen port", "listen: ':http'\n", nil, []string{`listen: port must be a number`}},
		{"listen port out of range", "listen: ':70000'\n", nil, []string{`listen: port must be a number`}},
		{"empty data dir", "data_dir: \"\"\n", nil, []string{"data_dir: must not be empty"}},
		{"bad proxy", "upstream:\n  proxy: ftp://proxy.test\n", nil, []string{"upstream.proxy: must be empty or an absolute http, https or socks5 URL"}},
		{"proxy without scheme", "upstream:\n  proxy: proxy.test:3128\n", nil, []string{"upstream.proxy:"}},
		{"bad client network", "clients:\n  allow: [\"10.0.0.0/33\"]\n", nil, []string{`clients.allow: "10.0.0.0/33" is not a CIDR`}},
		{"bad metrics network", "", map[string]string{"MODELGATE_CLIENTS_METRICS_ALLOW": "nope"}, []string{"clients.metrics_allow:"}},
		{"bad tunnel pattern", "proxy:\n  tunnel_allow: [\"a/b\"]\n", nil, []string{"proxy.tunnel_allow:"}},
		{"private host without port", "upstream:\n  private_hosts: [minio.lan]\n", nil, []string{`upstream.private_hosts: "minio.lan" is not host:port`}},
		{"resolve name without port", "upstream:\n  resolve: {\"cdn.test\": \"10.0.0.7:443\"}\n", nil, []string{`upstream.resolve: "cdn.test" is not name:port`}},
		{"resolve an address", "upstream:\n  resolve: {\"10.0.0.1:443\": \"10.0.0.7:443\"}\n", nil, []string{`upstream.resolve: "10.0.0.1:443" names an address`}},
		{"resolve a pattern", "upstream:\n  resolve: {\"*.hf.co:443\": \"10.0.0.7:443\"}\n", nil, []string{`upstream.resolve: "*.hf.co:443" is not name:port`}},
		{"resolve target without port", "", map[string]string{"MODELGATE_UPSTREAM_RESOLVE": "cdn.test:443=10.0.0.7"}, []string{`upstream.resolve: "cdn.test:443": target "10.0.0.7" is not host:port`}},
		{"resolve entry without target", "", map[string]string{"MODELGATE_UPSTREAM_RESOLVE": "cdn.test:443"}, []string{`MODELGATE_UPSTREAM_RESOLVE`, `is not name:port=address:port`}},
		{"no connections", "proxy:\n  max_connections: 0\n", nil, []string{"proxy.max_connections: must be > 0"}},
		{"per-client cap above the total", "proxy:\n  max_connections: 10\n  max_connections_per_client: 11\n", nil, []string{"proxy.max_connections_per_client: must be from 1 to proxy.max_connections (10)"}},
		{"no body read time", "", map[string]string{"MODELGATE_PROXY_BODY_READ_TIMEOUT": "0s"}, []string{"proxy.body_read_timeout: must be > 0"}},
		{"no shutdown time", "", map[string]string{"MODELGATE_SHUTDOWN_TIMEOUT": "0s"}, []string{"shutdown_timeout: must be > 0"}},
		{"bad require_key", "clients:\n  require_key: maybe\n", nil, []string{`clients.require_key: must be one of false, gated, all, got "maybe"`}},
		{"bad own_credentials", "clients:\n  own_credentials: keep\n", nil, []string{`clients.own_credentials: must be one of replace, pass, got "keep"`}},
		{"key without hash or file", "clients:\n  keys:\n    - name: a\n", nil, []string{"clients.keys[0]: needs exactly one of key_sha256 and key_file"}},
		{"key with bad hash", "clients:\n  keys:\n    - name: a\n      key_sha256: xyz\n", nil, []string{"clients.keys[0]: key_sha256 must be 64 hex digits"}},
		{"key with bad scope", "clients:\n  keys:\n    - name: a\n      key_file: /k\n      scopes: [s3]\n", nil, []string{`unknown scope "s3"`}},
		{"bad repo pattern", "huggingface:\n  repos:\n    deny: [\"a/b/c\"]\n", nil, []string{"huggingface.repos:"}},
		{"bad pin", "cache:\n  pinned: [\"org/repo\"]\n", nil, []string{`cache.pinned: "org/repo" is not`}},
		{"bad civitai pin", "", map[string]string{"MODELGATE_CACHE_PINNED": "civitai:abc"}, []string{"cache.pinned:"}},
		{"mitm host with path", "mitm:\n  hosts: [\"hub.test/x\"]\n", nil, []string{`mitm.hosts: "hub.test/x" is not a host name`}},
		{"mitm host with inner wildcard", "mitm:\n  hosts: [\"a.*.test\"]\n", nil, []string{"mitm.hosts:"}},
		{"mitm host with bad port", "", map[string]string{"MODELGATE_MITM_HOSTS": "hub.test:0"}, []string{"mitm.hosts: invalid port"}},
		{"mitm CA half set", "mitm:\n  ca_cert: /x.pem\n", nil, []string{"mitm.ca_cert: mitm.ca_cert and mitm.ca_key must be set together"}},
		{"bad tunnel policy", "proxy:\n  tunnel: maybe\n", nil, []string{`proxy.tunnel: must be one of allow, deny, got "maybe"`}},
		{"zero idle timeout", "proxy:\n  idle_timeout: 0s\n", nil, []string{"proxy.idle_timeout: must be > 0"}},
		{"several problems reported together", "listen: x\nlog:\n  level: x\n  format: x\n", nil,
			[]string{"listen:", "log.level:", "log.format:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(tt.yaml, tt.env, nil)
			require.Error(t, err)
			assert.True(t, strings.HasPrefix(err.Error(), "config: "), err.Error())
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestHuggingFaceTokenFallbacks(t *testing.T) {
	allEnv := map[string]string{"HF_TOKEN": "hf_env1", "HF_AUTH_TOKEN": "hf_env2"}
	files := map[string]string{"/tok": "  hf_file\n", "/empty": " \n"}
	tests := []struct {
		name    string
		yaml    string
		env     map[string]string
		want    Secret
		wantErr string
	}{
		{name: "token wins over everything", yaml: "huggingface:\n  token: hf_yaml\n", env: allEnv, want: "hf_yaml"},
		{name: "token via MODELGATE env", env: map[string]string{"MODELGATE_HUGGINGFACE_TOKEN": "hf_mg", "HF_TOKEN": "hf_env1"}, want: "hf_mg"},
		{name: "token_file over HF_TOKEN", yaml: "huggingface:\n  token_file: /tok\n", env: allEnv, want: "hf_file"},
		{name: "token_file via env", env: map[string]string{"MODELGATE_HUGGINGFACE_TOKEN_FILE": "/tok"}, want: "hf_file"},
		{name: "HF_TOKEN over HF_AUTH_TOKEN", env: allEnv, want: "hf_env1"},
		{name: "HF_AUTH_TOKEN last", env: map[string]string{"HF_AUTH_TOKEN": "hf_env2"}, want: "hf_env2"},
		{name: "none", want: ""},
		{
			name: "token and token_file both set", yaml: "huggingface:\n  token: hf_yaml\n  token_file: /tok\n",
			wantErr: "huggingface.token_file: cannot be combined with huggingface.token",
		},
		{name: "unreadable token_file", yaml: "huggingface:\n  token_file: /nope\n", env: allEnv, wantErr: "huggingface.token_file: open /nope"},
		{name: "empty token_file", yaml: "huggingface:\n  token_file: /empty\n", env: allEnv, wantErr: "huggingface.token_file: /empty is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parse(tt.yaml, tt.env, files)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.NotContains(t, err.Error(), "hf_")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got.HuggingFace.Token)
			assert.Empty(t, got.HuggingFace.TokenFile, "token_file is consumed by Load")
			assert.NoError(t, got.Validate(), "a loaded config stays valid")
		})
	}

	// Validate on its own also rejects both being set.
	c := Default()
	c.HuggingFace.Token, c.HuggingFace.TokenFile = "hf_x", "/tok"
	err := c.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "huggingface.token: cannot be combined with huggingface.token_file")
	assert.NotContains(t, err.Error(), "hf_x")
}

func TestCivitAIKeyFallbacks(t *testing.T) {
	all := map[string]string{"CIVITAI_API_KEY": "k1", "CA_AUTH_TOKEN": "k2", "CA_API_KEY": "k3"}
	tests := []struct {
		name string
		yaml string
		env  map[string]string
		want Secret
	}{
		{"api_key wins", "civitai:\n  api_key: k0\n", all, "k0"},
		{"MODELGATE env wins", "", map[string]string{"MODELGATE_CIVITAI_API_KEY": "kmg", "CIVITAI_API_KEY": "k1"}, "kmg"},
		{"CIVITAI_API_KEY first", "", all, "k1"},
		{"CA_AUTH_TOKEN second", "", map[string]string{"CA_AUTH_TOKEN": "k2", "CA_API_KEY": "k3"}, "k2"},
		{"CA_API_KEY last", "", map[string]string{"CA_API_KEY": "k3"}, "k3"},
		{"whitespace-only is unset", "", map[string]string{"CIVITAI_API_KEY": " ", "CA_API_KEY": " k3\n"}, "k3"},
		{"none", "", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parse(tt.yaml, tt.env, nil)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got.CivitAI.APIKey)
		})
	}
}

func TestSecretNeverPrinted(t *testing.T) {
	const hfTok, caKey = "hf_SUPERSECRETvalue", "ca-SUPERSECRET-key"
	cfg, err := parse("huggingface:\n  token: "+hfTok+"\n", map[string]string{"CA_API_KEY": caKey}, nil)
	require.NoError(t, err)
	require.Equal(t, hfTok, cfg.HuggingFace.Token.Reveal())
	require.Equal(t, caKey, cfg.CivitAI.APIKey.Reveal())

	var logText, logJSON bytes.Buffer
	slog.New(slog.NewTextHandler(&logText, nil)).Info("loaded", "config", cfg, "token", cfg.HuggingFace.Token)
	slog.New(slog.NewJSONHandler(&logJSON, nil)).Info("loaded", "config", cfg, "key", cfg.CivitAI.APIKey)
	dump, err := yaml.Marshal(cfg)
	require.NoError(t, err)
	js, err := json.Marshal(cfg)
	require.NoError(t, err)

	badVerb := "%d" // a variable, so vet allows the wrong verb
	outputs := map[string]string{
		"%v":         fmt.Sprintf("%v", cfg),
		"%+v":        fmt.Sprintf("%+v", cfg),
		"%#v":        fmt.Sprintf("%#v", cfg),
		"%s":         fmt.Sprintf("%s", cfg.HuggingFace.Token),
		"%q":         fmt.Sprintf("%q", cfg.HuggingFace.Token),
		"%x":         fmt.Sprintf("%x", cfg.HuggingFace.Token),
		"%d":         fmt.Sprintf(badVerb, cfg.HuggingFace.Token),
		"%v pointer": fmt.Sprintf("%v", &cfg.HuggingFace),
		"Sprint":     fmt.Sprint(cfg.CivitAI.APIKey),
		"slog text":  logText.String(),
		"slog json":  logJSON.String(),
		"yaml":       string(dump),
		"json":       string(js),
	}
	for name, out := range outputs {
		assert.NotContains(t, out, "SUPERSECRET", name)
		assert.NotContains(t, out, fmt.Sprintf("%x", "SUPERSECRET"), name)
	}
	assert.Contains(t, outputs["%+v"], "Token:***")
	assert.Contains(t, outputs["%#v"], "Token:***")
	assert.Equal(t, "***", outputs["%s"])
	assert.Contains(t, outputs["slog text"], "token=***")
	assert.Contains(t, outputs["slog json"], `"key":"***"`)
	assert.Contains(t, outputs["yaml"], `token: '***'`)
	assert.Contains(t, outputs["json"], `"APIKey":"***"`)

	// An empty secret prints as empty, so "not configured" stays visible.
	var empty Secret
	assert.Equal(t, "", empty.String())
	assert.Equal(t, "", fmt.Sprintf("%#v", empty))
	assert.Equal(t, "", empty.LogValue().String())
	b, err := empty.MarshalText()
	require.NoError(t, err)
	assert.Empty(t, b)

	// Errors caused by a secret do not quote it.
	for _, src := range []string{
		"huggingface:\n  token: [" + hfTok + "]\n",
		"civitai:\n  api_key: {" + caKey + ": 1}\n",
		"huggingface:\n  token: \"" + hfTok + " x\"\n",
	} {
		_, err := parse(src, nil, nil)
		require.Error(t, err, src)
		assert.NotContains(t, err.Error(), "SUPERSECRET", src)
	}
}

// A config dump (with no secrets set) loads back to the same config.
func TestDumpRoundTrip(t *testing.T) {
	c := Default()
	c.Cache.MaxSize = 1500 << 20
	c.Cache.RevisionTTL = Duration{90 * time.Second}
	c.Upstream.Proxy = "http://proxy.test:3128"
	c.Log.Format = "json"
	dump, err := yaml.Marshal(c)
	require.NoError(t, err)
	assert.Contains(t, string(dump), "max_size: 1500MiB")
	got, err := Parse(dump, envOf(nil), filesOf(nil))
	require.NoError(t, err)
	assert.Equal(t, c, got)
}

func TestUnknownEnv(t *testing.T) {
	got := UnknownEnv([]string{
		"PATH=/usr/bin",
		"MODELGATE_CACHE_MAX_SIZE=10GiB",   // a key: fine
		"MODELGATE_CACHE_MAXSIZE=10GiB",    // a typo
		"MODELGATE_GATEWAY=http://gate:80", // the CLI's own
		"MODELGATE_ADMIN_KEY=mga_x",        // the CLI's own
		"MODELGATE_PORT=tcp://10.0.0.1:80", // Kubernetes service variable
		"HF_TOKEN=hf_x",
	})
	require.Len(t, got, 2)
	assert.Equal(t, EnvNotAKey{Name: "MODELGATE_CACHE_MAXSIZE", Nearest: "MODELGATE_CACHE_MAX_SIZE"}, got[0])
	assert.Equal(t, "MODELGATE_PORT", got[1].Name)
	assert.NotEmpty(t, got[1].Nearest)
}

// Networks and host patterns are parsed once, at load: the config hands
// out typed values, from the file and from the environment alike.
func TestListsLoadAsTypedValues(t *testing.T) {
	c, err := parse("clients:\n  allow: [\"10.1.2.3\", \"192.168.7.9/16\"]\nmitm:\n  hosts: [\"Hub.Test\", \"*.cdn.test:8443\"]\n",
		map[string]string{"MODELGATE_PROXY_TUNNEL_ALLOW": "a.test, *.b.test", "MODELGATE_CLIENTS_METRICS_ALLOW": "::1"}, nil)
	require.NoError(t, err)
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.1.2.3/32"), netip.MustParsePrefix("192.168.0.0/16")}, []netip.Prefix(c.Clients.Allow))
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("::1/128")}, []netip.Prefix(c.Clients.MetricsAllow))
	assert.Equal(t, []string{"hub.test", "*.cdn.test:8443"}, c.MITM.Hosts.Strings())
	assert.True(t, c.MITM.Hosts.Match("x.cdn.test", "8443"))
	assert.False(t, c.MITM.Hosts.Match("x.cdn.test", "443"))
	assert.Equal(t, []string{"a.test", "*.b.test"}, c.Proxy.TunnelAllow.Strings())

	// A list key stays a list in the file, though its variable is a
	// comma-separated string.
	_, err = parse("mitm:\n  hosts: hub.test\n", nil, nil)
	assert.ErrorContains(t, err, "mitm.hosts: must be a list")
	_, err = parse("clients:\n  allow: 10.0.0.0/8\n", nil, nil)
	assert.ErrorContains(t, err, "clients.allow: must be a list")
}

func TestStorageS3Config(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	tests := []struct {
		name    string
		yaml    string
		env     map[string]string
		wantErr string
		check   func(t *testing.T, c Config)
	}{
		{name: "disk by default", check: func(t *testing.T, c Config) {
			assert.Equal(t, BackendDisk, c.Storage.Backend)
			assert.Equal(t, 30*time.Second, c.Cluster.LeaseTTL.Duration)
		}},
		{name: "s3 with AWS variables", yaml: "storage: {backend: S3, s3: {endpoint: 'http://10.0.0.9:9000/', bucket: models, prefix: mg}}",
			env: map[string]string{"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "AWS_SESSION_TOKEN": "sess-tok"},
			check: func(t *testing.T, c Config) {
				s3 := c.Storage.S3
				assert.Equal(t, BackendS3, c.Storage.Backend)
				assert.Equal(t, "http://10.0.0.9:9000", s3.Endpoint)
				assert.Equal(t, "mg/", s3.Prefix)
				assert.Equal(t, "AKIDEXAMPLE", s3.AccessKeyID.Reveal())
				assert.Equal(t, "s3cr3t-value", s3.SecretAccessKey.Reveal())
				assert.Equal(t, "sess-tok", s3.SessionToken.Reveal())
				assert.NotContains(t, fmt.Sprintf("%v %+v", c, c), "s3cr3t-value")
			}},
		{name: "configured keys win over AWS variables", yaml: "storage: {backend: s3, s3: {endpoint: 'https://s3.example', bucket: models, access_key_id: mine, secret_access_key: minesecret}}",
			env: map[string]string{"AWS_ACCESS_KEY_ID": "other", "AWS_SECRET_ACCESS_KEY": "othersecret"},
			check: func(t *testing.T, c Config) {
				assert.Equal(t, "minesecret", c.Storage.S3.SecretAccessKey.Reveal())
			}},
		{name: "AWS variables ignored for disk", env: map[string]string{"AWS_SECRET_ACCESS_KEY": "x"}, check: func(t *testing.T, c Config) {
			assert.Empty(t, c.Storage.S3.SecretAccessKey)
		}},
		{name: "unknown backend", yaml: "storage: {backend: gcs}", wantErr: "storage.backend"},
		{name: "s3 needs an endpoint", yaml: "storage: {backend: s3, s3: {bucket: models}}", wantErr: "storage.s3.endpoint"},
		{name: "endpoint with a path", yaml: "storage: {backend: s3, s3: {endpoint: 'http://h:9000/models', bucket: models}}", wantErr: "storage.s3.endpoint"},
		{name: "bad bucket", yaml: "storage: {backend: s3, s3: {endpoint: 'http://h:9000', bucket: Models_1}}", wantErr: "storage.s3.bucket"},
		{name: "half the keys", yaml: "storage: {backend: s3, s3: {endpoint: 'http://h:9000', bucket: models, access_key_id: a}}", wantErr: "storage.s3.access_key_id"},
		{name: "short lease", yaml: "storage: {backend: s3, s3: {endpoint: 'http://h:9000', bucket: models}}\ncluster: {lease_ttl: 100ms}", wantErr: "cluster.lease_ttl"},
		{name: "negative bucket bound", yaml: "storage: {backend: s3, s3: {endpoint: 'http://h:9000', bucket: models, max_size: -1}}", wantErr: "storage.s3.max_size"},
		{name: "short evict interval", yaml: "storage: {backend: s3, s3: {endpoint: 'http://h:9000', bucket: models, evict_interval: 10ms}}", wantErr: "storage.s3.evict_interval"},
		{name: "bucket bound", yaml: "storage: {backend: s3, s3: {endpoint: 'http://h:9000', bucket: models, max_size: 500GB}}",
			check: func(t *testing.T, c Config) {
				assert.EqualValues(t, 500_000_000_000, c.Storage.S3.MaxSize)
				assert.Equal(t, time.Minute, c.Storage.S3.EvictInterval.Duration, "default")
			}},
		{name: "part too small", yaml: "storage: {backend: s3, s3: {endpoint: 'http://h:9000', bucket: models, part_size: 4MiB}}", wantErr: "storage.s3.part_size"},
		{name: "part too large", yaml: "storage: {backend: s3, s3: {endpoint: 'http://h:9000', bucket: models, part_size: 6GiB}}", wantErr: "storage.s3.part_size"},
		{name: "default part size", yaml: "storage: {backend: s3, s3: {endpoint: 'http://h:9000', bucket: models}}",
			check: func(t *testing.T, c Config) { assert.EqualValues(t, 16<<20, c.Storage.S3.PartSize) }},
		{name: "env override", env: map[string]string{"MODELGATE_STORAGE_BACKEND": "s3", "MODELGATE_STORAGE_S3_ENDPOINT": "http://h:9000", "MODELGATE_STORAGE_S3_BUCKET": "models", "MODELGATE_STORAGE_S3_PATH_STYLE": "true", "MODELGATE_CLUSTER_LEASE_TTL": "5s", "MODELGATE_STORAGE_S3_PART_SIZE": "8MiB"},
			check: func(t *testing.T, c Config) {
				assert.EqualValues(t, 8<<20, c.Storage.S3.PartSize)
				assert.True(t, c.Storage.S3.PathStyle)
				assert.Equal(t, 5*time.Second, c.Cluster.LeaseTTL.Duration)
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml), env(tt.env), nil)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				for _, v := range tt.env {
					assert.NotContains(t, err.Error(), v)
				}
				return
			}
			require.NoError(t, err)
			tt.check(t, c)
		})
	}
}

// upstream.resolve reads as a map from the file and as name=target pairs
// from its variable, and an empty default.
func TestResolveLoads(t *testing.T) {
	c, err := parse("upstream:\n  resolve:\n    \"cdn-lfs.hf.co:443\": \"10.0.0.7:8443\"\n", nil, nil)
	require.NoError(t, err)
	assert.Equal(t, Resolve{"cdn-lfs.hf.co:443": "10.0.0.7:8443"}, c.Upstream.Resolve)

	c, err = parse("", map[string]string{"MODELGATE_UPSTREAM_RESOLVE": "a.test:443=10.0.0.7:443, b.test:443=mirror.lan:8443"}, nil)
	require.NoError(t, err)
	assert.Equal(t, Resolve{"a.test:443": "10.0.0.7:443", "b.test:443": "mirror.lan:8443"}, c.Upstream.Resolve)

	assert.Empty(t, Default().Upstream.Resolve)
	_, err = parse("upstream:\n  resolve: [a.test]\n", nil, nil)
	assert.Error(t, err, "a list is not a map")
}

func TestClusterPeerConfig(t *testing.T) {
	const secret = "0123456789abcdef0123456789abcdef-SUPERSECRET"
	const s3 = "storage: {backend: s3, s3: {endpoint: 'http://h:9000', bucket: models}}\n"
	files := map[string]string{"/run/secret": "  " + secret + "\n", "/run/empty": "\n"}
	readFile := func(p string) ([]byte, error) {
		if v, ok := files[p]; ok {
			return []byte(v), nil
		}
		return nil, fmt.Errorf("open %s: no such file", p)
	}
	tests := []struct {
		name    string
		yaml    string
		env     map[string]string
		wantErr string
		check   func(t *testing.T, c Config)
	}{
		{name: "off by default", yaml: s3, check: func(t *testing.T, c Config) {
			assert.Empty(t, c.Cluster.Secret)
			assert.Empty(t, c.Cluster.Peers)
		}},
		{name: "on", yaml: s3 + "cluster: {secret: " + secret + ", advertise: 'http://10.0.0.5:8080/', peers: [10.0.0.0/24, 127.0.0.1]}",
			check: func(t *testing.T, c Config) {
				assert.Equal(t, secret, c.Cluster.Secret.Reveal())
				assert.Equal(t, "http://10.0.0.5:8080", c.Cluster.Advertise)
				assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("127.0.0.1/32")}, []netip.Prefix(c.Cluster.Peers))
				assert.NotContains(t, fmt.Sprintf("%v %+v %#v", c, c, c), "SUPERSECRET")
				dump, err := yaml.Marshal(c)
				require.NoError(t, err)
				assert.NotContains(t, string(dump), "SUPERSECRET")
			}},
		{name: "from the environment", yaml: s3,
			env: map[string]string{"MODELGATE_CLUSTER_SECRET": secret, "MODELGATE_CLUSTER_ADVERTISE": "https://gw-1.lan:8443", "MODELGATE_CLUSTER_PEERS": "10.0.0.0/8,fd00::/8"},
			check: func(t *testing.T, c Config) {
				assert.Equal(t, secret, c.Cluster.Secret.Reveal())
				assert.Len(t, c.Cluster.Peers, 2)
			}},
		{name: "from a file", yaml: s3 + "cluster: {secret_file: /run/secret, advertise: 'http://10.0.0.5:8080', peers: [10.0.0.0/24]}",
			check: func(t *testing.T, c Config) {
				assert.Equal(t, secret, c.Cluster.Secret.Reveal())
				assert.Empty(t, c.Cluster.SecretFile)
			}},
		{name: "file and value", yaml: s3 + "cluster: {secret: " + secret + ", secret_file: /run/secret, advertise: 'http://10.0.0.5:8080', peers: [10.0.0.0/24]}", wantErr: "cluster.secret_file"},
		{name: "empty file", yaml: s3 + "cluster: {secret_file: /run/empty, advertise: 'http://10.0.0.5:8080', peers: [10.0.0.0/24]}", wantErr: "cluster.secret_file"},
		{name: "short secret", yaml: s3 + "cluster: {secret: SUPERSECRET, advertise: 'http://10.0.0.5:8080', peers: [10.0.0.0/24]}", wantErr: "cluster.secret: must be at least 32"},
		{name: "secret with a space", yaml: s3 + "cluster: {secret: '" + secret + " x', advertise: 'http://10.0.0.5:8080', peers: [10.0.0.0/24]}", wantErr: "cluster.secret: must not contain whitespace"},
		{name: "secret without s3", yaml: "cluster: {secret: " + secret + ", advertise: 'http://10.0.0.5:8080', peers: [10.0.0.0/24]}", wantErr: "cluster.secret: needs storage.backend s3"},
		{name: "no advertise", yaml: s3 + "cluster: {secret: " + secret + ", peers: [10.0.0.0/24]}", wantErr: "cluster.advertise: is required"},
		{name: "advertise not a URL", yaml: s3 + "cluster: {secret: " + secret + ", advertise: '10.0.0.5:8080', peers: [10.0.0.0/24]}", wantErr: "cluster.advertise: must be an absolute http(s) URL"},
		{name: "advertise with a path", yaml: s3 + "cluster: {secret: " + secret + ", advertise: 'http://10.0.0.5:8080/x', peers: [10.0.0.0/24]}", wantErr: "cluster.advertise: must have no path"},
		{name: "advertise unspecified", yaml: s3 + "cluster: {secret: " + secret + ", advertise: 'http://0.0.0.0:8080', peers: [10.0.0.0/24]}", wantErr: "cluster.advertise: must be an address"},
		{name: "no peers", yaml: s3 + "cluster: {secret: " + secret + ", advertise: 'http://10.0.0.5:8080'}", wantErr: "cluster.peers: is required"},
		{name: "bad peers", yaml: s3 + "cluster: {secret: " + secret + ", advertise: 'http://10.0.0.5:8080', peers: [10.0.0/33]}", wantErr: "cluster.peers"},
		{name: "advertise without secret", yaml: s3 + "cluster: {advertise: 'http://10.0.0.5:8080'}", wantErr: "cluster.advertise: needs cluster.secret"},
		{name: "peers without secret", yaml: s3 + "cluster: {peers: [10.0.0.0/24]}", wantErr: "cluster.peers: needs cluster.secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml), func(k string) string { return tt.env[k] }, readFile)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				assert.NotContains(t, err.Error(), "SUPERSECRET")
				return
			}
			require.NoError(t, err)
			tt.check(t, c)
		})
	}
}
