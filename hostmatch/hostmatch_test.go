package hostmatch

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPatternsMatchWholeNamesOnly(t *testing.T) {
	hs, err := ParseList("hub.example", "*.cdn.example", "pinned.example:8443")
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
		{"pinned.example", "", false},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, hs.Match(tt.host, tt.port), "%s:%s", tt.host, tt.port)
	}
}

// One grammar for every host list: what the config used to refuse and what
// the edge used to refuse are both refused here.
func TestParseRefusesWhatIsNotAHostPattern(t *testing.T) {
	for _, bad := range []string{"a.*.example", "hub.example:0", "hub.example:99999", "hub.test/x", "user@hub.test",
		"*", "*.", "", ".hub.test", "hub.test.", "::1", "[::1]:443", "a b.test"} {
		_, err := Parse(bad)
		assert.Error(t, err, "%q", bad)
	}
	for in, canon := range map[string]string{"Hub.Example": "hub.example", "*.HF.co": "*.hf.co", "hub.test:8443": "hub.test:8443", "10.0.0.1": "10.0.0.1"} {
		p, err := Parse(in)
		require.NoError(t, err, in)
		assert.Equal(t, canon, p.String())
	}
}

func TestPatternsFromACommaList(t *testing.T) {
	var ps Patterns
	require.NoError(t, ps.UnmarshalText([]byte(" a.test, *.b.test ,,c.test:81")))
	assert.Equal(t, []string{"a.test", "*.b.test", "c.test:81"}, ps.Strings())
	assert.ErrorContains(t, ps.UnmarshalText([]byte("a.test,b.test:0")), "invalid port")
}
