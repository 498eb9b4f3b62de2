package civitai

import (
	"net/url"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDownloadQueryKeepsOnlyCivitAIParameters(t *testing.T) {
	q, err := normalizeDownloadQuery(url.Values{
		"type": {"Model"}, "format": {"SafeTensor"}, "fp": {"fp16", "fp32"},
		"token": {"worker-secret"}, "utm_source": {"x"}, "fileId": {"42"},
	})
	require.NoError(t, err)
	assert.Equal(t, "fileId=42&format=SafeTensor&fp=fp16&type=Model", q.Encode())

	for _, bad := range []url.Values{
		{"fileId": {"../1"}},
		{"type": {"Model\x00"}},
		{"fp": {string(make([]byte, 65))}},
	} {
		_, err := normalizeDownloadQuery(bad)
		assert.Error(t, err, bad)
	}
}

func TestRoutes(t *testing.T) {
	for path, want := range map[string]bool{
		"/api/download/models/123":                  true,
		"/api/v1/model-versions/123":                true,
		"/api/v1/model-versions/by-hash/ABCDEF0123": true,
		"/api/v1/models/9":                          true,
		"/api/models/org/name":                      false,
		"/org/model/resolve/main/x":                 false,
	} {
		assert.Equal(t, want, IsRoute(path), path)
	}
	assert.True(t, downloadPath.MatchString("/api/download/models/123"))
	assert.False(t, downloadPath.MatchString("/api/download/models/12a"))
	assert.False(t, downloadPath.MatchString("/api/download/models/1/../2"))
	assert.False(t, metadataPath.MatchString("/api/v1/model-versions/by-hash/zz"))
}

func TestDownloadURLsPointAtTheGateway(t *testing.T) {
	body := []byte(`{"id":1,"downloadUrl":"https://up.example/api/download/models/1","files":[{"downloadUrl":"https://up.example/api/download/models/1?type=VAE&format=SafeTensor","sizeKB":1.5}],"other":"https://up.example/keep"}`)
	got := string(rewriteDownloadURLs(body, "https://up.example", "http://gate:8080"))
	assert.Contains(t, got, `"downloadUrl":"http://gate:8080/api/download/models/1"`)
	assert.Contains(t, got, `"downloadUrl":"http://gate:8080/api/download/models/1?type=VAE&format=SafeTensor"`)
	assert.Contains(t, got, `"other":"https://up.example/keep"`)
	assert.Contains(t, got, `"sizeKB":1.5`, "numbers keep their form")
	assert.Equal(t, "not json", string(rewriteDownloadURLs([]byte("not json"), "https://up.example", "http://g")))
}

func TestFileMatching(t *testing.T) {
	v := versionInfo{Files: []versionFile{{ID: 1, Name: "a.safetensors"}, {ID: 2, Name: "b.vae"}}}
	f, ok := v.match("2", "")
	require.True(t, ok)
	assert.Equal(t, int64(2), f.ID)
	_, ok = v.match("3", "a.safetensors")
	assert.False(t, ok, "an explicit fileId that is not in the version matches nothing")
	f, ok = v.match("", "a.safetensors")
	require.True(t, ok)
	assert.Equal(t, int64(1), f.ID)
	_, ok = v.match("", "")
	assert.False(t, ok, "two files and no name: ambiguous")
	one := versionInfo{Files: []versionFile{{ID: 7, Name: "only.bin"}}}
	f, ok = one.match("", "")
	require.True(t, ok)
	assert.Equal(t, int64(7), f.ID)
}

func TestDispositionNames(t *testing.T) {
	assert.Equal(t, "model.safetensors", dispositionName(`attachment; filename="model.safetensors"`))
	assert.Equal(t, "passwd", dispositionName(`attachment; filename="../../etc/passwd"`))
	assert.Equal(t, "", dispositionName(`attachment; filename=".."`))
	u, _ := url.Parse("https://s.example/f?b2ContentDisposition=" + url.QueryEscape(`attachment; filename="x.bin"`))
	assert.Equal(t, "x.bin", dispositionFromURL(u))
	assert.Equal(t, `attachment; filename="a b.bin"`, attachment("a b.bin"))
}
