package proxy

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHostPatternsMatchWholeNamesOnly(t *testing.T) {
	hs, err := parseHostPatterns([]string{"hub.example", "*.cdn.example", "pinned.example:8443"})
	require.NoError(t, err)
	tests := []struct {
		host, port string
		want       bool
	}{
		{"hub.example", "443", true},
		{"HUB.example", "8080", true},
		{"hub.example.", "443", true},
		{"evilhub.example", "443", false},
		{"hub.example.attacker", "443", false},
		{"x.hub.example", "443", false},
		{"a.cdn.example", "443", true},
		{"a.b.cdn.example", "443", true},
		{"cdn.example", "443", false},
		{"evilcdn.example", "443", false},
		{"pinned.example", "8443", true},
		{"pinned.example", "443", false},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, hs.match(tt.host, tt.port), "%s:%s", tt.host, tt.port)
	}
	_, err = parseHostPatterns([]string{"a.*.example"})
	assert.Error(t, err)
	_, err = parseHostPatterns([]string{"hub.example:0"})
	assert.Error(t, err)
}

func TestValidTarget(t *testing.T) {
	tests := []struct {
		target string
		ok     bool
	}{
		{"hub.example:443", true},
		{"127.0.0.1:8443", true},
		{"[::1]:443", true},
		{"hub.example", false},
		{"hub.example:", false},
		{"hub.example:https", false},
		{"hub.example:0", false},
		{"hub.example:70000", false},
		{"hub.example:+443", false},
		{":443", false},
		{"bad host:443", false},
		{"-bad.example:443", false},
		{"a..b:443", false},
		{"ex%41mple.com:443", false},
	}
	for _, tt := range tests {
		_, _, ok := validTarget(tt.target)
		assert.Equal(t, tt.ok, ok, tt.target)
	}
}
