package proxy

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

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
