package blobhttp

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestParseRange(t *testing.T) {
	tests := []struct {
		name            string
		header          string
		size            int64
		start, end      int64
		ok, satisfiable bool
	}{
		{"open ended", "bytes=10-", 100, 10, 99, true, true},
		{"closed", "bytes=10-19", 100, 10, 19, true, true},
		{"end past EOF is clamped", "bytes=90-100", 100, 90, 99, true, true},
		{"first byte", "bytes=0-0", 100, 0, 0, true, true},
		{"suffix", "bytes=-10", 100, 90, 99, true, true},
		{"suffix longer than content", "bytes=-1000", 100, 0, 99, true, true},
		{"start at size is unsatisfiable", "bytes=100-", 100, 0, 0, true, false},
		{"start past size is unsatisfiable", "bytes=500-600", 100, 0, 0, true, false},
		{"zero suffix is unsatisfiable", "bytes=-0", 100, 0, 0, true, false},
		{"empty content", "bytes=0-", 0, 0, 0, true, false},
		{"multiple ranges are ignored", "bytes=0-1,5-6", 100, 0, 0, false, false},
		{"other unit is ignored", "items=0-1", 100, 0, 0, false, false},
		{"reversed is ignored", "bytes=20-10", 100, 0, 0, false, false},
		{"garbage is ignored", "bytes=a-b", 100, 0, 0, false, false},
		{"negative is ignored", "bytes=-5-10", 100, 0, 0, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, e, ok, sat := parseRange(tt.header, tt.size)
			assert.Equal(t, tt.ok, ok, "ok")
			assert.Equal(t, tt.satisfiable, sat, "satisfiable")
			if ok && sat {
				assert.Equal(t, tt.start, s)
				assert.Equal(t, tt.end, e)
			}
		})
	}
}

func TestETagMatching(t *testing.T) {
	assert.True(t, etagMatches(`"abc"`, `"abc"`))
	assert.True(t, etagMatches(`W/"abc"`, `"abc"`))
	assert.True(t, etagMatches(`"x", "abc"`, `"abc"`))
	assert.True(t, etagMatches(`*`, `"abc"`))
	assert.False(t, etagMatches(`"abd"`, `"abc"`))
	assert.True(t, ifRangeHolds("", `"abc"`))
	assert.True(t, ifRangeHolds(`"abc"`, `"abc"`))
	assert.False(t, ifRangeHolds(`W/"abc"`, `"abc"`))
	assert.False(t, ifRangeHolds("Wed, 21 Oct 2015 07:28:00 GMT", `"abc"`))
}
