package digest

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestXetRangeDigest(t *testing.T) {
	x := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	d, err := NewXetRange(x, 16, 4095)
	require.NoError(t, err)
	assert.Equal(t, "xet-range:"+x+"0000000000000010"+"0000000000000fff", d.String())
	assert.False(t, d.Verifiable(), "a range's bytes cannot be checked against its id")
	back, err := Parse(d.String())
	require.NoError(t, err)
	xorb, first, last, ok := back.XetRangeParts()
	require.True(t, ok)
	assert.Equal(t, x, xorb)
	assert.Equal(t, []int64{16, 4095}, []int64{first, last})

	for _, bad := range []struct {
		x           string
		first, last int64
	}{{x, 5, 4}, {x, -1, 4}, {x[:63], 0, 1}, {x[:63] + "g", 0, 1}} {
		_, err := NewXetRange(bad.x, bad.first, bad.last)
		assert.Error(t, err, "%+v", bad)
	}
	_, _, _, ok = Digest{Algo: SHA256, Hex: x}.XetRangeParts()
	assert.False(t, ok)
	assert.True(t, Digest{Algo: SHA256, Hex: x}.Verifiable())
}
