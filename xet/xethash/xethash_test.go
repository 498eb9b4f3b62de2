package xethash

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// Reference vectors from xet-core's merklehash aggregated_hashes.rs
// test_correctness: leaf (hash, size) lists, the cas (xorb) hash, and the
// file hash with the zero salt.
func TestRootAndFileMatchXetCoreReferences(t *testing.T) {
	const (
		a = "cfc5d07f6f03c29bbf424132963fe08d19a37d5757aaf520bf08119f05cd56d6"
		b = "c3e67584b5c4fc2a89837ec39e40f2c8a6bb0b2987ac94cd4b31e5fbdd210a72"
		c = "0d2beb91b9196929a5ddec9f6e306924ddf4a24268e3e59fd8464738d525af37"
		d = "adf8773496a9b7319b2e50dc98093f344053b17d8ad37100b9c07d9805988784"
		z = "0000000000000000000000000000000000000000000000000000000000000000"
		e = "4ac202caf347fc1e9c874b1ef6a1c5e619141eb775a6f43f0f0124ccd0060d9e"
		f = "b3b28636f65c149ea52eb1f94669466f70f033b54cea792824c696ba6ef3c389"
		g = "0e2c1a002aae913d2c0fc8ddfa4e9e14b7b311b3b0d458726d5d9f6a6318013c"
	)
	type leaf struct {
		h    string
		size uint64
	}
	eight := []leaf{{z, 0}, {a, 100}, {b, 200}, {c, 300}, {d, 400}, {e, 500}, {f, 600}, {g, 700}}
	var sixtyFour, thirtyTwo []leaf
	for range 8 {
		sixtyFour = append(sixtyFour, eight...)
	}
	for range 32 {
		thirtyTwo = append(thirtyTwo, leaf{a, 100})
	}
	tests := []struct {
		name       string
		leaves     []leaf
		root, file string
	}{
		{"empty", nil, z, z},
		{"zero leaf", []leaf{{z, 0}}, z, "638a6bc391964a85939d48f008e8bdbae6a7975e7ca2d87a3ce2492f4e4d8a4c"},
		{"one leaf", []leaf{{a, 100}}, a, "8e16257caa3fe079d484d872a8975264b2ff683b0d6db9028cc7c0f968a45661"},
		{"three", []leaf{{a, 100}, {b, 200}, {c, 300}},
			"71ec1275fca074724e2dd666921b3277c7cee603e4d025bcab2d4050015be2bc",
			"54e55dccc6653c612bdb5576c5d3cb34bb31bc4e100248abccf4c908b3ef7715"},
		{"four same", []leaf{{a, 100}, {a, 100}, {a, 100}, {a, 100}},
			"89f2ada89ff8c96763c6b25010e6dd76a4c05b1466207633ea559acf2093211b",
			"2cdba690d0e09563596e0cda626d43eb4c96ef1e994fe72d9b2f5a83cfcd36dd"},
		{"six", []leaf{{a, 100}, {b, 200}, {a, 100}, {b, 200}, {c, 300}, {d, 400}},
			"52c826f99507aa05d0b45e9837fa1709e0485425cfbcb1e80db3905cf98b3ee9",
			"91d21684db364c8883ab8209fa5eb2e781cf07f37e1fa43e731c30839afe422f"},
		{"zeros between", []leaf{{z, 0}, {a, 100}, {z, 0}, {a, 100}, {z, 0}},
			"f36c6a6374a567efd36ed087aeb680b57e3af4e0b5b8e7be2593df4cb647a2de",
			"ab2f46d31855e1133b3b5b70e78f841394a648710a208923b221c1a8a0572a1f"},
		{"eight", eight,
			"f62abe77e3fb9c954fe52b0028027ddc90c064c45951a4fd2211d87e5c0011db",
			"d1b068be5bbdb38992269e8efe61f601881e39f7a7585fd76883cc6ea5c23b44"},
		{"sixty-four (three levels)", sixtyFour,
			"6554007c9b5d0a5e7918f79596a1b68815c1407535585435f5735db761f21b88",
			"a8640ab81d48854e00078e12b1ea8be5d90be0ffb5f73a15b7009981d093ddd8"},
		{"thirty-two same", thirtyTwo,
			"0a0123c1617921883b7e13902095fcb86676e77c49120c33b233003b0af0e0a6",
			"53af4711fd1d5e5bdc7f931b6be932314d8d673cb16ad2482f6f5222eaf9e63d"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var nodes []Node
			for _, l := range tt.leaves {
				h, err := Parse(l.h)
				require.NoError(t, err)
				nodes = append(nodes, Node{Hash: h, Size: l.size})
			}
			require.Equal(t, tt.root, Root(nodes).String())
			require.Equal(t, tt.file, File(nodes).String())
		})
	}
}

func TestParseRoundTripsAndRejects(t *testing.T) {
	h := Chunk([]byte("hello"))
	p, err := Parse(h.String())
	require.NoError(t, err)
	require.Equal(t, h, p)
	for _, bad := range []string{"", "zz", h.String()[:63], h.String()[:63] + "g"} {
		_, err := Parse(bad)
		require.Error(t, err, bad)
	}
}
