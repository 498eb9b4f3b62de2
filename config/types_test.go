package config

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

func TestParseByteSize(t *testing.T) {
	tests := []struct {
		in      string
		want    ByteSize
		wantErr string
	}{
		{in: "0", want: 0},
		{in: "1234", want: 1234},
		{in: "1234B", want: 1234},
		{in: "500GiB", want: 500 << 30},
		{in: "500 GiB", want: 500 << 30},
		{in: "500gib", want: 500 << 30},
		{in: "500Gi", want: 500 << 30},
		{in: "10MB", want: 10_000_000},
		{in: "10M", want: 10_000_000},
		{in: "1.5GiB", want: 3 << 29},
		{in: "0.5KB", want: 500},
		{in: ".5KiB", want: 512},
		{in: "1KiB", want: 1024},
		{in: "2TiB", want: 2 << 40},
		{in: "3TB", want: 3_000_000_000_000},
		{in: "0.1KiB", want: 102}, // rounded down
		{in: " 7MiB\n", want: 7 << 20},
		{in: "-1", want: -1}, // range is Validate's job
		{in: "8191PiB", want: 8191 << 50},
		{in: "", wantErr: `invalid size ""`},
		{in: "abc", wantErr: `invalid size "abc"`},
		{in: "GiB", wantErr: `invalid size "GiB"`},
		{in: "1.5", wantErr: "whole number"},
		{in: "1.5.5GiB", wantErr: "invalid size"},
		{in: "5XB", wantErr: `unknown unit "XB"`},
		{in: "1e9", wantErr: `invalid size "1e9"`},
		{in: "8192PiB", wantErr: "out of range"},
		{in: "99999999999999999999", wantErr: "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var got ByteSize
			err := got.UnmarshalText([]byte(tt.in))
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestByteSizeFormat(t *testing.T) {
	tests := []struct {
		in   ByteSize
		str  string
		yaml string
	}{
		{0, "0", "0\n"},
		{1234, "1234", "1234\n"},
		{1024, "1KiB", "1KiB\n"},
		{500 << 30, "500GiB", "500GiB\n"},
		{1500 << 20, "1500MiB", "1500MiB\n"},
		{10_000_000, "10MB", "10MB\n"},
		{-2048, "-2KiB", "-2KiB\n"},
	}
	for _, tt := range tests {
		t.Run(tt.str, func(t *testing.T) {
			assert.Equal(t, tt.str, tt.in.String())
			out, err := yaml.Marshal(tt.in)
			require.NoError(t, err)
			assert.Equal(t, tt.yaml, string(out))
			var back ByteSize
			require.NoError(t, yaml.Unmarshal(out, &back))
			assert.Equal(t, tt.in, back)
		})
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{in: "60s", want: time.Minute},
		{in: "5m", want: 5 * time.Minute},
		{in: "1h30m", want: 90 * time.Minute},
		{in: "250ms", want: 250 * time.Millisecond},
		{in: "60", want: time.Minute},
		{in: "0", want: 0},
		{in: " 30s ", want: 30 * time.Second},
		{in: "-5", want: -5 * time.Second},
		{in: "abc", wantErr: `invalid duration "abc"`},
		{in: "", wantErr: `invalid duration ""`},
		{in: "5 minutes", wantErr: "invalid duration"},
		{in: "1.5", wantErr: "invalid duration"},
		{in: "99999999999", wantErr: "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var got Duration
			err := got.UnmarshalText([]byte(tt.in))
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got.Duration)
		})
	}

	out, err := yaml.Marshal(Duration{90 * time.Second})
	require.NoError(t, err)
	assert.Equal(t, "1m30s\n", string(out))
	text, err := Duration{time.Second}.MarshalText()
	require.NoError(t, err)
	assert.Equal(t, "1s", string(text))
}

// TestEnumsReadTyped checks that the enumerated settings are read into
// their types, case and spaces forgiven, from the file and from the
// environment, and that several bad values are reported in one error.
func TestEnumsReadTyped(t *testing.T) {
	c, err := parse("clients:\n  require_key: GATED\n  own_credentials: ' pass '\nproxy:\n  tunnel: Deny\nlog:\n  format: JSON\n",
		map[string]string{"MODELGATE_HUGGINGFACE_XET": "Serve", "MODELGATE_LOG_LEVEL": "WARN"}, nil)
	require.NoError(t, err)
	assert.Equal(t, RequireKeyGated, c.Clients.RequireKey)
	assert.Equal(t, OwnCredentialsPass, c.Clients.OwnCredentials)
	assert.Equal(t, TunnelDeny, c.Proxy.Tunnel)
	assert.Equal(t, LogJSON, c.Log.Format)
	assert.Equal(t, XetServe, c.HuggingFace.Xet)
	assert.Equal(t, LogWarn, c.Log.Level)

	_, err = parse("clients:\n  require_key: maybe\nproxy:\n  tunnel: sometimes\nshutdown_timeout: 0s\n", nil, nil)
	require.Error(t, err)
	for _, want := range []string{`line 2: clients.require_key: must be one of false, gated, all, got "maybe"`,
		`line 4: proxy.tunnel: must be one of allow, deny, got "sometimes"`, "shutdown_timeout: must be > 0"} {
		assert.Contains(t, err.Error(), want)
	}
}

// TestPins checks that cache.pinned is parsed into Pins when the config
// loads, with the full Hub grammar (what the gateway used to check only at
// start), and that each pin's canonical form reads back to itself.
func TestPins(t *testing.T) {
	tests := []struct {
		in      string
		want    Pin
		wantErr string
	}{
		{in: "hf:org/repo", want: Pin{RepoType: "model", Repo: "org/repo"}},
		{in: "hf:gpt2", want: Pin{RepoType: "model", Repo: "gpt2"}},
		{in: "hf:org/repo@refs/pr/3", want: Pin{RepoType: "model", Repo: "org/repo", Revision: "refs/pr/3"}},
		{in: "hf:datasets/org/data@v1.0", want: Pin{RepoType: "dataset", Repo: "org/data", Revision: "v1.0"}},
		{in: "hf:spaces/org/app", want: Pin{RepoType: "space", Repo: "org/app"}},
		{in: "civitai:4201", want: Pin{Version: "4201"}},
		{in: "org/repo", wantErr: "no hf: or civitai: prefix"},
		{in: "s3:org/repo", wantErr: `unknown prefix "s3:"`},
		{in: "hf:org/re--po", wantErr: "invalid repo id"},
		{in: "hf:org/repo-", wantErr: "invalid repo id"},
		{in: "hf:a/b/c", wantErr: "not [datasets/|spaces/]org/name"},
		{in: "hf:org/repo@", wantErr: "invalid revision"},
		{in: "hf:org/repo@main.lock", wantErr: "invalid revision"},
		{in: "hf:org/repo@a..b", wantErr: "invalid revision"},
		{in: "civitai:abc", wantErr: "must be a number"},
		{in: "civitai:0", wantErr: "must be a number"},
		{in: "civitai:1234567890123", wantErr: "must be a number"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePin(tt.in)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			assert.Equal(t, tt.in, got.String())
		})
	}

	c, err := parse("cache:\n  pinned: [\"hf:org/a@main\"]\n", map[string]string{}, nil)
	require.NoError(t, err)
	assert.Equal(t, []Pin{{RepoType: "model", Repo: "org/a", Revision: "main"}}, c.Cache.Pinned)
	c, err = parse("", map[string]string{"MODELGATE_CACHE_PINNED": "hf:datasets/o/d, civitai:7"}, nil)
	require.NoError(t, err)
	assert.Equal(t, []Pin{{RepoType: "dataset", Repo: "o/d"}, {Version: "7"}}, c.Cache.Pinned)
	_, err = parse("cache:\n  pinned: [\"hf:org/a--b\"]\n", nil, nil)
	require.ErrorContains(t, err, `line 2: cache.pinned: "hf:org/a--b" is not`)
}

// TestEndpointParsedOnce checks that an endpoint is a parsed URL from the
// file and the environment, that URL hands out a copy (a caller extending
// it cannot change the config), and that a refused one echoes no password.
func TestEndpointParsedOnce(t *testing.T) {
	c, err := parse("huggingface:\n  endpoint: http://hub.test:8081/mirror/\n",
		map[string]string{"MODELGATE_CIVITAI_ENDPOINT": "https://ca.test"}, nil)
	require.NoError(t, err)
	u := c.HuggingFace.Endpoint.URL()
	require.NotNil(t, u)
	assert.Equal(t, "hub.test:8081", u.Host)
	assert.Equal(t, "/mirror", u.Path)
	u.Path += "/api"
	assert.Equal(t, "http://hub.test:8081/mirror", c.HuggingFace.Endpoint.String())
	assert.Equal(t, "ca.test", c.CivitAI.Endpoint.URL().Host)

	_, err = parse("huggingface:\n  endpoint: https://user:hunter2@hub.test\n", nil, nil)
	require.ErrorContains(t, err, "huggingface.endpoint: must not contain credentials")
	assert.NotContains(t, err.Error(), "hunter2")
	require.Error(t, (&Config{}).Validate(), "an unset endpoint does not validate")
}
