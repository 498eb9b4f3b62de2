package admin

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/hfhub"
)

func TestParseSpec(t *testing.T) {
	tests := []struct {
		in      string
		want    Spec
		wantErr bool
	}{
		{in: "hf:org/model", want: Spec{Repo: hfhub.Repo{Type: hfhub.Model, ID: "org/model"}}},
		{in: "hf:org/model@v1.0", want: Spec{Repo: hfhub.Repo{Type: hfhub.Model, ID: "org/model"}, Revision: "v1.0"}},
		{in: "hf:datasets/org/data@main", want: Spec{Repo: hfhub.Repo{Type: hfhub.Dataset, ID: "org/data"}, Revision: "main"}},
		{in: "hf:spaces/org/app", want: Spec{Repo: hfhub.Repo{Type: hfhub.Space, ID: "org/app"}}},
		{in: "civitai:12345", want: Spec{Version: "12345"}},
		{in: "civitai:12345/all", want: Spec{Version: "12345", All: true}},
		{in: "civitai:abc", wantErr: true},
		{in: "civitai:0", wantErr: true},
		{in: "hf:org/../x", wantErr: true},
		{in: "org/model", wantErr: true},
		{in: "s3:bucket", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSpec(tt.in)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			tt.want.Raw = tt.in
			assert.Equal(t, tt.want, got)
			assert.Equal(t, tt.in, got.String())
		})
	}
}

func TestGlobMatchesLikeFnmatch(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"*.safetensors", "model.safetensors", true},
		{"*.safetensors", "unet/diffusion.safetensors", true}, // * crosses /
		{"*.json", "model.safetensors", false},
		{"unet/*", "unet/a/b.bin", true},
		{"model-?????-of-00002.bin", "model-00001-of-00002.bin", true},
		{"[ab].txt", "a.txt", true},
		{"[!ab].txt", "a.txt", false},
		{"[!ab].txt", "c.txt", true},
		{"a.b", "axb", false}, // . is literal
		{"[oops", "[oops", true},
	}
	for _, tt := range tests {
		g, err := CompileGlob(tt.pattern)
		require.NoError(t, err)
		assert.Equal(t, tt.want, g.Match(tt.name), "%s ~ %s", tt.pattern, tt.name)
	}
	f, err := NewFilter([]string{"*.safetensors", "*.json"}, []string{"*fp16*"})
	require.NoError(t, err)
	assert.True(t, f.Keep("config.json"))
	assert.False(t, f.Keep("model.fp16.safetensors"))
	assert.False(t, f.Keep("README.md"))
}

func jsonBody(s string) *strings.Reader { return strings.NewReader(s) }
