package visionatrix

import (
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

var testOrigins = Origins{
	Hub:     []*url.URL{mustURL("https://huggingface.co"), mustURL("https://hf.co"), mustURL("https://127.0.0.1:4443")},
	CivitAI: []*url.URL{mustURL("https://civitai.com"), mustURL("https://127.0.0.1:5443")},
}

// A catalog in the shape Visionatrix publishes, with the formatting
// quirks a decode/re-encode would lose: escaped slashes, a \u escape,
// number forms, odd spacing, member order, an upper-case hash.
const catalogDoc = `{
  "SDXL Base":   {
    "url": "https://huggingface.co/org/sdxl/resolve/main/sd_xl_base_1.0.safetensors",
    "homepage": "https://huggingface.co/org/sdxl",
    "hash": "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b",
    "file_size": 6938078334, "ratio": 1.0e3, "neg": -0.50,
    "types": ["checkpoints"], "gated": false,
    "regexes": [{"input_value": "^sd_xl_base\\.safetensors$"}]
  },
  "Escaped":{"url":"https:\/\/huggingface.co\/org\/m\/resolve\/refs%2Fpr%2F1\/dir\/w\u0020x.bin?download=true","hash":"aa"},
  "Dataset": {"url": "https://hf.co/datasets/org/d/resolve/0123456789abcdef0123456789abcdef01234567/x.parquet"},
  "LoRA": {"hash": "ABCDEF", "url": "https://civitai.com/api/download/models/12345?type=Model&format=SafeTensor", "filename": "l.safetensors"},
  "Fake hub": {"url": "https://127.0.0.1:4443/org/gated/resolve/main/model.safetensors"},
  "Fake civitai": {"url": "https://127.0.0.1:5443/api/download/models/100"},
  "Blob page": {"url": "https://huggingface.co/org/m/blob/main/x.safetensors"},
  "Other host": {"url": "https://example.com/org/m/resolve/main/x.safetensors"},
  "Plain http": {"url": "http://huggingface.co/org/m/resolve/main/x.safetensors"},
  "CivitAI page": {"url": "https://civitai.com/models/1"},
  "Not a url key": {"download": "https://huggingface.co/org/m/resolve/main/y.safetensors"},
  "List": {"urls": ["https://huggingface.co/org/m/resolve/main/z.safetensors"], "url": ["https://huggingface.co/org/m/resolve/main/z.safetensors"]},
  "Nested": {"meta": {"url": 5}, "url": "https://huggingface.co/org/n/resolve/v1.0/n.pt"},
  "url": "https://huggingface.co/org/top/resolve/main/t.bin"
}
`

func TestRewriteChangesOnlyTheDownloadURLs(t *testing.T) {
	tests := []struct {
		name string
		base string
		// replaced are the exact string tokens (quotes included) of the
		// input that change, and what they become.
		replaced [][2]string
	}{
		{
			name: "mirror root",
			base: "http://gate:8080",
			replaced: [][2]string{
				{`"https://huggingface.co/org/sdxl/resolve/main/sd_xl_base_1.0.safetensors"`, `"http://gate:8080/org/sdxl/resolve/main/sd_xl_base_1.0.safetensors"`},
				{`"https:\/\/huggingface.co\/org\/m\/resolve\/refs%2Fpr%2F1\/dir\/w\u0020x.bin?download=true"`, `"http://gate:8080/org/m/resolve/refs%2Fpr%2F1/dir/w x.bin?download=true"`},
				{`"https://hf.co/datasets/org/d/resolve/0123456789abcdef0123456789abcdef01234567/x.parquet"`, `"http://gate:8080/datasets/org/d/resolve/0123456789abcdef0123456789abcdef01234567/x.parquet"`},
				{`"https://civitai.com/api/download/models/12345?type=Model&format=SafeTensor"`, `"http://gate:8080/api/download/models/12345?type=Model&format=SafeTensor"`},
				{`"https://127.0.0.1:4443/org/gated/resolve/main/model.safetensors"`, `"http://gate:8080/org/gated/resolve/main/model.safetensors"`},
				{`"https://127.0.0.1:5443/api/download/models/100"`, `"http://gate:8080/api/download/models/100"`},
				{`"https://huggingface.co/org/n/resolve/v1.0/n.pt"`, `"http://gate:8080/org/n/resolve/v1.0/n.pt"`},
				{`"https://huggingface.co/org/top/resolve/main/t.bin"`, `"http://gate:8080/org/top/resolve/main/t.bin"`},
			},
		},
		{
			name: "key prefix over TLS",
			base: "https://gate:8443/visionatrix/key/mgw_abc",
			replaced: [][2]string{
				{`"https://huggingface.co/org/sdxl/resolve/main/sd_xl_base_1.0.safetensors"`, `"https://gate:8443/visionatrix/key/mgw_abc/org/sdxl/resolve/main/sd_xl_base_1.0.safetensors"`},
				{`"https:\/\/huggingface.co\/org\/m\/resolve\/refs%2Fpr%2F1\/dir\/w\u0020x.bin?download=true"`, `"https://gate:8443/visionatrix/key/mgw_abc/org/m/resolve/refs%2Fpr%2F1/dir/w x.bin?download=true"`},
				{`"https://hf.co/datasets/org/d/resolve/0123456789abcdef0123456789abcdef01234567/x.parquet"`, `"https://gate:8443/visionatrix/key/mgw_abc/datasets/org/d/resolve/0123456789abcdef0123456789abcdef01234567/x.parquet"`},
				{`"https://civitai.com/api/download/models/12345?type=Model&format=SafeTensor"`, `"https://gate:8443/visionatrix/key/mgw_abc/api/download/models/12345?type=Model&format=SafeTensor"`},
				{`"https://127.0.0.1:4443/org/gated/resolve/main/model.safetensors"`, `"https://gate:8443/visionatrix/key/mgw_abc/org/gated/resolve/main/model.safetensors"`},
				{`"https://127.0.0.1:5443/api/download/models/100"`, `"https://gate:8443/visionatrix/key/mgw_abc/api/download/models/100"`},
				{`"https://huggingface.co/org/n/resolve/v1.0/n.pt"`, `"https://gate:8443/visionatrix/key/mgw_abc/org/n/resolve/v1.0/n.pt"`},
				{`"https://huggingface.co/org/top/resolve/main/t.bin"`, `"https://gate:8443/visionatrix/key/mgw_abc/org/top/resolve/main/t.bin"`},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := catalogDoc
			for _, r := range tt.replaced {
				require.Equal(t, 1, strings.Count(want, r[0]), r[0])
				want = strings.Replace(want, r[0], r[1], 1)
			}
			out, n, err := Rewrite([]byte(catalogDoc), tt.base, testOrigins)
			require.NoError(t, err)
			assert.Equal(t, len(tt.replaced), n)
			// Byte for byte: everything but the replaced tokens is the input.
			assert.Equal(t, want, string(out))
		})
	}
}

func TestRewriteRefusesWhatIsNotJSON(t *testing.T) {
	for _, doc := range []string{``, `{"url": "https://huggingface.co/a/b/resolve/main/c"`, `<html>`, `{"a":1}{"b":2}`} {
		_, _, err := Rewrite([]byte(doc), "http://gate", testOrigins)
		assert.Error(t, err, doc)
	}
}

func FuzzRewriteKeepsValidJSON(f *testing.F) {
	f.Add([]byte(catalogDoc))
	f.Add([]byte(`["url",{"url":"https://civitai.com/api/download/models/1"}]`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		out, _, err := Rewrite(doc, "http://gate:8080/visionatrix/key/mgw_x", testOrigins)
		if err != nil {
			return
		}
		if _, _, err := Rewrite(out, "http://gate", testOrigins); err != nil {
			t.Fatalf("rewritten document is not valid JSON: %q", out)
		}
	})
}
