package fakecivitai

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/internal/fakeserver"
)

const (
	goodKey  = "civ_good"
	eaKey    = "civ_early"
	badKey   = "civ_unknown"
	browser  = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
	nonBrows = "python-httpx/0.27.0"
)

// fixture is a fake with versions covering every answer shape.
type fixture struct {
	c  *CivitAI
	cl *http.Client
	// file contents by file id
	data map[int][]byte
}

func randomData(seed uint64, n int) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	out := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(out)
	return out
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{
		c:    New(t, Options{Keys: []string{goodKey}, EarlyAccessKeys: []string{eaKey}}),
		data: map[int][]byte{},
	}
	d := func(id, n int) []byte {
		b := randomData(uint64(id), n)
		f.data[id] = b
		return b
	}
	f.c.AddVersion(Version{ID: 100, ModelID: 10, Name: "v1.0", ModelName: "Fake XL", Files: []File{
		{ID: 1001, Name: "fake_xl.safetensors", Data: d(1001, 64<<10), Primary: true},
		{ID: 1002, Name: "fake_xl_fp32.safetensors", Data: d(1002, 20<<10), FP: "fp32"},
		{ID: 1003, Name: "fake_xl_vae.safetensors", Data: d(1003, 5<<10), Type: "VAE"},
		{ID: 1004, Name: "fake xl Q8.gguf", Data: d(1004, 3000), Format: "GGUF", QuantType: "Q8_0"},
		{ID: 1005, Name: "config.yaml", Data: d(1005, 100), Type: "Config", Format: "Other"},
	}})
	f.c.AddVersion(Version{ID: 101, ModelID: 10, Name: "v1.1", ModelName: "Fake XL", Files: []File{
		{ID: 1011, Name: "fake_xl_v11.safetensors", Data: d(1011, 1000)},
	}})
	f.c.AddVersion(Version{ID: 200, ModelID: 20, Files: []File{
		{ID: 2001, Name: `b2 "model".safetensors`, Data: d(2001, 32<<10), Storage: "b2"},
	}})
	f.c.AddVersion(Version{ID: 300, ModelID: 30, RequireAuth: true, Files: []File{
		{ID: 3001, Name: "auth.safetensors", Data: d(3001, 1000)},
	}})
	f.c.AddVersion(Version{ID: 400, ModelID: 40, EarlyAccess: true, Files: []File{
		{ID: 4001, Name: "early.safetensors", Data: d(4001, 1000)},
	}})
	f.c.AddVersion(Version{ID: 500, ModelID: 50, Archived: true, Files: []File{
		{ID: 5001, Name: "old.safetensors", Data: d(5001, 1000)},
	}})
	f.c.AddVersion(Version{ID: 600, ModelID: 60, Files: []File{
		{ID: 6001, Name: "fresh.safetensors", Data: d(6001, 1000), NoHash: true},
	}})

	f.cl = f.c.srv.Client(t)
	return f
}

// do sends one request; hdr is "Key", "value" pairs ("Host" sets req.Host).
// Paths starting with "/" go to the API.
func (f *fixture) do(t *testing.T, method, target string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	if strings.HasPrefix(target, "/") {
		target = f.c.URL() + target
	}
	req, err := http.NewRequest(method, target, nil)
	require.NoError(t, err)
	req.Header.Set("User-Agent", nonBrows)
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return fakeserver.Fetch(t, f.cl, req)
}

// location downloads target from the API and returns the storage URL.
func (f *fixture) location(t *testing.T, target string, hdr ...string) string {
	t.Helper()
	resp, body := f.do(t, http.MethodGet, target, hdr...)
	require.Equal(t, http.StatusTemporaryRedirect, resp.StatusCode, "%s: %s", target, body)
	return resp.Header.Get("Location")
}

func bearer(k string) []string { return []string{"Authorization", "Bearer " + k} }

// fileOf returns the file id a storage URL names.
func fileOf(t *testing.T, loc string) int {
	t.Helper()
	u, err := url.Parse(loc)
	require.NoError(t, err)
	p := strings.TrimPrefix(strings.TrimPrefix(u.Path, "/file/civitai-modelfiles/model/"), "/civitai-modelfiles/")
	id, err := strconv.Atoi(strings.SplitN(p, "/", 2)[0])
	require.NoError(t, err, loc)
	return id
}

func TestDownloadSelection(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name, target string
		status       int
		fileID       int    // on 307
		errMsg       string // on JSON errors
	}{
		{"primary", "/api/download/models/100", 307, 1001, ""},
		{"type Model", "/api/download/models/100?type=Model", 307, 1001, ""},
		{"type VAE", "/api/download/models/100?type=VAE", 307, 1003, ""},
		{"type Config", "/api/download/models/100?type=Config&format=Other", 307, 1005, ""},
		{"format GGUF", "/api/download/models/100?format=GGUF", 307, 1004, ""},
		{"quantType", "/api/download/models/100?format=GGUF&quantType=Q8_0", 307, 1004, ""},
		{"quantType mismatch", "/api/download/models/100?format=GGUF&quantType=Q4_K_M", 404, 0, "File not found"},
		{"fp32", "/api/download/models/100?fp=fp32", 307, 1002, ""},
		{"all metadata", "/api/download/models/100?type=Model&format=SafeTensor&size=full&fp=fp32", 307, 1002, ""},
		{"fileId", "/api/download/models/100?fileId=1003", 307, 1003, ""},
		{"fileId beats type", "/api/download/models/100?fileId=1004&type=VAE", 307, 1004, ""},
		{"fileId of another version", "/api/download/models/100?fileId=2001", 404, 0, "File not found"},
		{"no match", "/api/download/models/100?format=PickleTensor", 404, 0, "File not found"},
		{"pruned absent", "/api/download/models/100?size=pruned", 404, 0, "File not found"},
		{"type without file", "/api/download/models/100?type=ControlNet", 404, 0, "File not found"},
		{"unknown params ignored", "/api/download/models/100?foo=bar&token=nothing", 307, 1001, ""},
		{"unknown version", "/api/download/models/999", 404, 0, "File not found"},
		{"bad type", "/api/download/models/100?type=Bogus", 400, 0, ""},
		{"bad format", "/api/download/models/100?format=ckpt", 400, 0, ""},
		{"bad fileId", "/api/download/models/100?fileId=abc", 400, 0, ""},
		{"bad version", "/api/download/models/abc", 400, 0, ""},
		{"b2", "/api/download/models/200", 307, 2001, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := f.do(t, http.MethodGet, tc.target)
			require.Equal(t, tc.status, resp.StatusCode, string(body))
			if tc.status == http.StatusTemporaryRedirect {
				assert.Equal(t, tc.fileID, fileOf(t, resp.Header.Get("Location")))
				return
			}
			assert.Equal(t, "application/json; charset=utf-8", resp.Header.Get("Content-Type"))
			var e struct{ Error string }
			require.NoError(t, json.Unmarshal(body, &e), string(body))
			if tc.errMsg != "" {
				assert.Equal(t, tc.errMsg, e.Error)
			} else {
				assert.NotEmpty(t, e.Error)
			}
		})
	}
}

func TestDownloadRedirectAndStorage(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name, target, base, pathPrefix, dispParam string
		fileID                                    int
	}{
		{"r2", "/api/download/models/100", f.c.R2URL(), "/civitai-modelfiles/1001/", "response-content-disposition", 1001},
		{"b2", "/api/download/models/200", f.c.B2URL(), "/file/civitai-modelfiles/model/2001/", "b2ContentDisposition", 2001},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, method := range []string{http.MethodHead, http.MethodGet} {
				resp, body := f.do(t, method, tc.target)
				require.Equal(t, http.StatusTemporaryRedirect, resp.StatusCode, method)
				loc := resp.Header.Get("Location")
				assert.Equal(t, "no-store, max-age=0", resp.Header.Get("Cache-Control"))
				assert.Equal(t, strconv.Itoa(len(loc)), resp.Header.Get("Content-Length"))
				if method == http.MethodGet {
					assert.Equal(t, loc, string(body))
				}
				require.True(t, strings.HasPrefix(loc, tc.base+tc.pathPrefix), loc)
				assert.True(t, strings.HasPrefix(loc, "https://127.0.0.1:"), loc)
			}
			loc := f.location(t, tc.target)
			u, err := url.Parse(loc)
			require.NoError(t, err)
			q := u.Query()
			fileName := map[int]string{1001: "fake_xl.safetensors", 2001: `b2 "model".safetensors`}[tc.fileID]
			wantDisp := `attachment; filename="` + strings.ReplaceAll(fileName, `"`, "_") + `"`
			assert.Equal(t, wantDisp, q.Get(tc.dispParam))
			assert.Contains(t, u.RawQuery, "filename%3D%22", "disposition is percent-encoded")
			assert.NotContains(t, u.RawQuery, "+", "spaces are %20")
			if tc.name == "r2" {
				assert.Equal(t, "AWS4-HMAC-SHA256", q.Get("X-Amz-Algorithm"))
				assert.Equal(t, "86400", q.Get("X-Amz-Expires"))
				assert.Equal(t, "host", q.Get("X-Amz-SignedHeaders"))
				assert.Equal(t, "fake", q.Get("X-Amz-Credential"))
				assert.Len(t, q.Get("X-Amz-Date"), len("20060102T150405Z"))
				assert.Len(t, q.Get("X-Amz-Signature"), 64)
			} else {
				assert.True(t, strings.HasPrefix(q.Get("Authorization"), "4_"), q.Get("Authorization"))
			}

			data := f.data[tc.fileID]
			resp, body := f.do(t, http.MethodGet, loc)
			require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
			assert.Equal(t, data, body)
			assert.Equal(t, SHA256Upper(data), SHA256Upper(body))
			assert.Equal(t, "application/octet-stream", resp.Header.Get("Content-Type"))
			assert.Equal(t, wantDisp, resp.Header.Get("Content-Disposition"))
			assert.Equal(t, "bytes", resp.Header.Get("Accept-Ranges"))
			assert.Equal(t, strconv.Itoa(len(data)), resp.Header.Get("Content-Length"))
			etag := resp.Header.Get("ETag")
			assert.Regexp(t, `^"[0-9a-f]{32}"$`, etag)
			assert.NotContains(t, strings.ToUpper(etag), SHA256Upper(data)[:10])

			resp, body = f.do(t, http.MethodGet, loc, "Range", "bytes=100-199")
			require.Equal(t, http.StatusPartialContent, resp.StatusCode)
			assert.Equal(t, data[100:200], body)
			assert.Equal(t, fmt.Sprintf("bytes 100-199/%d", len(data)), resp.Header.Get("Content-Range"))

			resp, body = f.do(t, http.MethodHead, loc)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Empty(t, body)
			assert.Equal(t, strconv.Itoa(len(data)), resp.Header.Get("Content-Length"))

			resp, _ = f.do(t, http.MethodGet, loc, "If-None-Match", etag)
			assert.Equal(t, http.StatusNotModified, resp.StatusCode)

			assert.Equal(t, 2, f.c.StorageFetches(tc.fileID), "a 200 and a 206 GET; HEAD and 304 do not count")
		})
	}
	assert.Zero(t, f.c.StorageFetches(1002))
}

func TestStorageRejectsAuthorizationHeader(t *testing.T) {
	f := newFixture(t)
	r2 := f.location(t, "/api/download/models/100")
	b2 := f.location(t, "/api/download/models/200")

	resp, body := f.do(t, http.MethodGet, r2, bearer(goodKey)...)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Equal(t, "application/xml", resp.Header.Get("Content-Type"))
	assert.Contains(t, string(body), "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>")

	resp, body = f.do(t, http.MethodGet, b2, bearer(goodKey)...)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	var e struct {
		Status int
		Code   string
	}
	require.NoError(t, json.Unmarshal(body, &e))
	assert.Equal(t, 401, e.Status)
	assert.Equal(t, "bad_auth_token", e.Code)

	assert.Zero(t, f.c.StorageFetches(1001))
	assert.Zero(t, f.c.StorageFetches(2001))
}

func TestStorageSignatureChecks(t *testing.T) {
	f := newFixture(t)
	r2 := f.location(t, "/api/download/models/100")
	b2 := f.location(t, "/api/download/models/200")
	edit := func(loc string, fn func(u *url.URL, q url.Values)) string {
		u, err := url.Parse(loc)
		require.NoError(t, err)
		q := u.Query()
		fn(u, q)
		u.RawQuery = q.Encode()
		return u.String()
	}
	fs := f.c.file(1001)
	fb := f.c.file(2001)
	for _, tc := range []struct {
		name, target string
		status       int
	}{
		{"r2 ok", r2, 200},
		{"r2 re-encoded query still ok", edit(r2, func(*url.URL, url.Values) {}), 200},
		{"r2 tampered signature", edit(r2, func(_ *url.URL, q url.Values) { q.Set("X-Amz-Signature", strings.Repeat("0", 64)) }), 403},
		{"r2 tampered disposition", edit(r2, func(_ *url.URL, q url.Values) {
			q.Set("response-content-disposition", `attachment; filename="x"`)
		}), 403},
		{"r2 tampered expires", edit(r2, func(_ *url.URL, q url.Values) { q.Set("X-Amz-Expires", "604800") }), 403},
		{"r2 no signature", edit(r2, func(u *url.URL, q url.Values) {
			for k := range q {
				q.Del(k)
			}
		}), 403},
		{"r2 other object", edit(r2, func(u *url.URL, _ url.Values) { u.Path = "/civitai-modelfiles/1002/fake_xl_fp32.safetensors" }), 403},
		{"r2 expired", f.c.signR2(fs, time.Now().Add(-25*time.Hour)), 403},
		{"r2 on the b2 server", strings.Replace(r2, f.c.R2URL(), f.c.B2URL(), 1), 403},
		{"b2 ok", b2, 200},
		{"b2 tampered token", edit(b2, func(_ *url.URL, q url.Values) { q.Set("Authorization", q.Get("Authorization")+"0") }), 403},
		{"b2 tampered disposition", edit(b2, func(_ *url.URL, q url.Values) { q.Set("b2ContentDisposition", "inline") }), 403},
		{"b2 no token", edit(b2, func(_ *url.URL, q url.Values) { q.Del("Authorization") }), 403},
		{"b2 expired", f.c.signB2(fb, time.Now().Add(-time.Minute)), 403},
		{"b2 on the r2 server", strings.Replace(b2, f.c.B2URL(), f.c.R2URL(), 1), 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := f.do(t, http.MethodGet, tc.target)
			assert.Equal(t, tc.status, resp.StatusCode, string(body))
		})
	}
	resp, body := f.do(t, http.MethodGet, f.c.signR2(fs, time.Now().Add(-25*time.Hour)))
	assert.Contains(t, string(body), "<Message>Request has expired</Message>")
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	resp, _ = f.do(t, http.MethodPut, r2)
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
}

func TestDownloadAuth(t *testing.T) {
	f := newFixture(t)
	const target = "/api/download/models/300"
	const unauthorized = `{"error":"Unauthorized","message":"The creator of this asset requires you to be logged in to download it"}`
	for _, tc := range []struct {
		name   string
		target string
		hdr    []string
		status int
		body   string // exact, for errors
		loc    string // exact Location, or "storage"
	}{
		{"anonymous", target, nil, 401, unauthorized, ""},
		{"unknown bearer is anonymous", target, bearer(badKey), 401, unauthorized, ""},
		{"unknown token is anonymous", target + "?token=" + badKey, nil, 401, unauthorized, ""},
		{"bearer", target, bearer(goodKey), 307, "", "storage"},
		{"lower-case scheme", target, []string{"Authorization", "bearer " + goodKey}, 307, "", "storage"},
		{"query token", target + "?token=" + goodKey, nil, 307, "", "storage"},
		{"early-access key is valid", target, bearer(eaKey), 307, "", "storage"},
		{"header beats query token", target + "?token=" + goodKey, bearer(badKey), 401, unauthorized, ""},
		{"browser anonymous", target, []string{"User-Agent", browser}, 307, "", LoginPath(300)},
		{"browser ua case-insensitive", target, []string{"User-Agent", "OPERA/9"}, 307, "", LoginPath(300)},
		{"browser with key", target, append(bearer(goodKey), "User-Agent", browser), 307, "", "storage"},
		{"public needs no key", "/api/download/models/100", nil, 307, "", "storage"},
		{"public ignores unknown key", "/api/download/models/100", bearer(badKey), 307, "", "storage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := f.do(t, http.MethodGet, tc.target, tc.hdr...)
			require.Equal(t, tc.status, resp.StatusCode, string(body))
			switch {
			case tc.loc == "storage":
				assert.True(t, strings.HasPrefix(resp.Header.Get("Location"), f.c.R2URL()+"/"), resp.Header.Get("Location"))
			case tc.loc != "":
				assert.Equal(t, tc.loc, resp.Header.Get("Location"))
				assert.Equal(t, "no-store, max-age=0", resp.Header.Get("Cache-Control"))
			default:
				assert.Equal(t, tc.body, string(body))
				assert.Equal(t, "application/json; charset=utf-8", resp.Header.Get("Content-Type"))
			}
		})
	}
	assert.Equal(t, "/login?returnUrl=%2Fmodel-versions%2F300&reason=download-auth", LoginPath(300))

	// Where a browser following the login redirect ends up.
	resp, body := f.do(t, http.MethodGet, LoginPath(300), "User-Agent", browser)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	assert.Equal(t, "<html>login</html>", string(body))
}

func TestEarlyAccess(t *testing.T) {
	f := newFixture(t)
	const target = "/api/download/models/400"
	for _, hdr := range [][]string{nil, bearer(goodKey), bearer(badKey)} {
		resp, body := f.do(t, http.MethodGet, target, hdr...)
		require.Equal(t, http.StatusForbidden, resp.StatusCode, string(body))
		var e struct{ Error, Deadline, Message string }
		require.NoError(t, json.Unmarshal(body, &e))
		assert.Equal(t, "Early Access", e.Error)
		assert.NotEmpty(t, e.Message)
		deadline, err := time.Parse(time.RFC3339, e.Deadline)
		require.NoError(t, err, e.Deadline)
		assert.True(t, deadline.After(time.Now()))
	}
	resp, _ := f.do(t, http.MethodGet, target, "User-Agent", browser)
	assert.Equal(t, http.StatusTemporaryRedirect, resp.StatusCode)
	assert.Equal(t, "/model-versions/400", resp.Header.Get("Location"))

	loc := f.location(t, target, bearer(eaKey)...)
	assert.Equal(t, 4001, fileOf(t, loc))
	loc = f.location(t, target+"?token="+eaKey)
	assert.Equal(t, 4001, fileOf(t, loc))
}

func TestArchived(t *testing.T) {
	f := newFixture(t)
	resp, body := f.do(t, http.MethodGet, "/api/download/models/500", bearer(goodKey)...)
	assert.Equal(t, http.StatusGone, resp.StatusCode)
	assert.Equal(t, `{"error":"Model archived, not available for download"}`, string(body))

	resp, body = f.do(t, http.MethodGet, "/api/download/models/500", "User-Agent", browser)
	assert.Equal(t, http.StatusGone, resp.StatusCode)
	assert.Equal(t, "text/plain; charset=utf-8", resp.Header.Get("Content-Type"))
	assert.Equal(t, "Model archived, not available for download", string(body))

	resp, body = f.do(t, http.MethodGet, "/api/v1/model-versions/500")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var v map[string]any
	require.NoError(t, json.Unmarshal(body, &v))
	assert.Empty(t, v["files"])
	assert.NotContains(t, v, "downloadUrl")
	assert.Equal(t, "Archived", v["model"].(map[string]any)["mode"])
}

func TestBrowserErrorsArePlainText(t *testing.T) {
	f := newFixture(t)
	resp, body := f.do(t, http.MethodGet, "/api/download/models/999", "User-Agent", browser)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.Equal(t, "File not found", string(body))
	assert.Equal(t, "text/plain; charset=utf-8", resp.Header.Get("Content-Type"))
}

type versionResp struct {
	ID          int    `json:"id"`
	ModelID     *int   `json:"modelId"`
	Name        string `json:"name"`
	BaseModel   string `json:"baseModel"`
	Status      string `json:"status"`
	DownloadURL string `json:"downloadUrl"`
	Files       []struct {
		ID       int     `json:"id"`
		Name     string  `json:"name"`
		Type     string  `json:"type"`
		SizeKB   float64 `json:"sizeKB"`
		Metadata struct {
			Format, Size, FP, QuantType string
		} `json:"metadata"`
		Hashes      map[string]string `json:"hashes"`
		Primary     bool              `json:"primary"`
		DownloadURL string            `json:"downloadUrl"`
	} `json:"files"`
	Model *struct {
		Name string `json:"name"`
		Type string `json:"type"`
		NSFW *bool  `json:"nsfw"`
	} `json:"model"`
}

func TestVersionJSON(t *testing.T) {
	f := newFixture(t)
	resp, body := f.do(t, http.MethodGet, "/api/v1/model-versions/100", "Host", "modelgate.test:8443")
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	assert.Equal(t, "application/json; charset=utf-8", resp.Header.Get("Content-Type"))
	var v versionResp
	require.NoError(t, json.Unmarshal(body, &v))
	assert.Equal(t, 100, v.ID)
	require.NotNil(t, v.ModelID)
	assert.Equal(t, 10, *v.ModelID)
	assert.Equal(t, "v1.0", v.Name)
	assert.Equal(t, "SDXL 1.0", v.BaseModel)
	assert.Equal(t, "Published", v.Status)
	assert.Equal(t, "https://modelgate.test:8443/api/download/models/100", v.DownloadURL)
	require.NotNil(t, v.Model)
	assert.Equal(t, "Fake XL", v.Model.Name)
	assert.Equal(t, "Checkpoint", v.Model.Type)
	require.NotNil(t, v.Model.NSFW)
	assert.False(t, *v.Model.NSFW)
	require.Len(t, v.Files, 5)

	primary := v.Files[0]
	assert.Equal(t, 1001, primary.ID)
	assert.True(t, primary.Primary)
	assert.Equal(t, "Model", primary.Type)
	assert.Equal(t, "fake_xl.safetensors", primary.Name)
	assert.Equal(t, 64.0, primary.SizeKB)
	assert.Equal(t, "SafeTensor", primary.Metadata.Format)
	assert.Equal(t, "full", primary.Metadata.Size)
	assert.Equal(t, "fp16", primary.Metadata.FP)
	assert.Equal(t, "https://modelgate.test:8443/api/download/models/100", primary.DownloadURL)
	sha := SHA256Upper(f.data[1001])
	assert.Equal(t, sha, primary.Hashes["SHA256"])
	assert.Equal(t, strings.ToUpper(sha), primary.Hashes["SHA256"], "upper-case")
	assert.Equal(t, sha[:10], primary.Hashes["AutoV2"])
	assert.Equal(t, AutoV2(f.data[1001]), primary.Hashes["AutoV2"])
	assert.Regexp(t, `^[0-9A-F]{8}$`, primary.Hashes["CRC32"])
	assert.Regexp(t, `^[0-9A-F]{64}$`, primary.Hashes["BLAKE3"])

	gguf := v.Files[3]
	assert.False(t, gguf.Primary)
	assert.Equal(t, "Q8_0", gguf.Metadata.QuantType)
	assert.InDelta(t, 3000.0/1024, gguf.SizeKB, 1e-9)
	assert.Equal(t, "https://modelgate.test:8443/api/download/models/100?type=Model&format=GGUF&size=full&fp=fp16&quantType=Q8_0", gguf.DownloadURL)
	assert.Equal(t, "https://modelgate.test:8443/api/download/models/100?type=VAE&format=SafeTensor&size=full&fp=fp16", v.Files[2].DownloadURL)

	// The URLs built from the default Host lead to the right files.
	_, body = f.do(t, http.MethodGet, "/api/v1/model-versions/100")
	require.NoError(t, json.Unmarshal(body, &v))
	for _, file := range v.Files {
		require.True(t, strings.HasPrefix(file.DownloadURL, f.c.URL()+"/"), file.DownloadURL)
		assert.Equal(t, file.ID, fileOf(t, f.location(t, file.DownloadURL)), file.DownloadURL)
	}

	// A file without hashes yet.
	_, body = f.do(t, http.MethodGet, "/api/v1/model-versions/600")
	assert.Contains(t, string(body), `"hashes":{}`)

	for _, tc := range []struct {
		method, target string
		status         int
		body           string
	}{
		{http.MethodGet, "/api/v1/model-versions/999", 404, `{"error":"Model not found"}`},
		{http.MethodGet, "/api/v1/model-versions/abc", 400, ""},
		{http.MethodHead, "/api/v1/model-versions/100", 405, ""},
		{http.MethodGet, "/api/v1/model-versions/100/extra", 404, `{"error":"Not found"}`},
		{http.MethodGet, "/api/v2/nothing", 404, `{"error":"Not found"}`},
	} {
		resp, body := f.do(t, tc.method, tc.target)
		assert.Equal(t, tc.status, resp.StatusCode, tc.target)
		if tc.body != "" {
			assert.Equal(t, tc.body, string(body))
		}
	}
}

func TestByHash(t *testing.T) {
	f := newFixture(t)
	sha := SHA256Upper(f.data[1002])
	var crc string
	{
		_, body := f.do(t, http.MethodGet, "/api/v1/model-versions/100")
		var v versionResp
		require.NoError(t, json.Unmarshal(body, &v))
		crc = v.Files[1].Hashes["CRC32"]
	}
	for _, tc := range []struct {
		name, hash string
		status     int
		version    int
	}{
		{"sha256 upper", sha, 200, 100},
		{"sha256 lower", strings.ToLower(sha), 200, 100},
		{"autov2 lower", strings.ToLower(sha[:10]), 200, 100},
		{"crc32 lower", strings.ToLower(crc), 200, 100},
		{"other version", SHA256Upper(f.data[2001]), 200, 200},
		{"no hash published", SHA256Upper(f.data[6001]), 404, 0},
		{"unknown", strings.Repeat("ab", 32), 404, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := f.do(t, http.MethodGet, "/api/v1/model-versions/by-hash/"+tc.hash, "Host", "proxy.modelgate.test")
			require.Equal(t, tc.status, resp.StatusCode, string(body))
			if tc.status != 200 {
				assert.Equal(t, `{"error":"Model not found"}`, string(body))
				return
			}
			var v versionResp
			require.NoError(t, json.Unmarshal(body, &v))
			assert.Equal(t, tc.version, v.ID)
			assert.Equal(t, "https://proxy.modelgate.test/api/download/models/"+strconv.Itoa(tc.version), v.DownloadURL)
		})
	}
}

func TestModelJSON(t *testing.T) {
	f := newFixture(t)
	resp, body := f.do(t, http.MethodGet, "/api/v1/models/10")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var m struct {
		ID            int
		Name          string
		Type          string
		ModelVersions []map[string]any
	}
	require.NoError(t, json.Unmarshal(body, &m))
	assert.Equal(t, 10, m.ID)
	assert.Equal(t, "Fake XL", m.Name)
	assert.Equal(t, "Checkpoint", m.Type)
	require.Len(t, m.ModelVersions, 2)
	assert.EqualValues(t, 101, m.ModelVersions[0]["id"], "newest first")
	assert.EqualValues(t, 100, m.ModelVersions[1]["id"])
	assert.NotContains(t, m.ModelVersions[0], "modelId")
	assert.Len(t, m.ModelVersions[1]["files"], 5)

	resp, body = f.do(t, http.MethodGet, "/api/v1/models/77")
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.Equal(t, `{"error":"No model with id 77"}`, string(body))
}

func TestCorruptFile(t *testing.T) {
	f := newFixture(t)
	data := f.data[1001]
	loc := f.location(t, "/api/download/models/100")

	f.c.CorruptFile(1001, true)
	resp, body := f.do(t, http.MethodGet, loc)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Len(t, body, len(data))
	assert.NotEqual(t, SHA256Upper(data), SHA256Upper(body))
	n := len(data) - 4096
	assert.Equal(t, data[:n], body[:n], "only the last 4 KiB are changed")
	resp, body = f.do(t, http.MethodGet, loc, "Range", fmt.Sprintf("bytes=%d-", len(data)-10))
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	assert.NotEqual(t, data[len(data)-10:], body, "ranges are corrupted too")

	// Smaller than the corrupted tail: every byte changes.
	loc2 := f.location(t, "/api/download/models/200")
	f.c.CorruptFile(2001, true)
	_, body = f.do(t, http.MethodGet, loc2)
	require.Len(t, body, len(f.data[2001]))
	assert.NotEqual(t, SHA256Upper(f.data[2001]), SHA256Upper(body))

	f.c.CorruptFile(1001, false)
	_, body = f.do(t, http.MethodGet, loc)
	assert.Equal(t, data, body)
}

func TestGateFile(t *testing.T) {
	f := newFixture(t)
	loc := f.location(t, "/api/download/models/200") // B2-style storage

	release := f.c.GateFile(2001, 1000)
	resp, err := f.cl.Get(loc)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, 1, f.c.StorageFetches(2001), "a gated fetch counts once its status is sent")
	assert.Equal(t, f.data[2001], fakeserver.ReadGated(t, resp.Body, 1000, release))

	_, body := f.do(t, http.MethodGet, loc)
	assert.Equal(t, f.data[2001], body, "released gates no longer apply")
	assert.Equal(t, 2, f.c.StorageFetches(2001))
}

func TestLoginRedirectKnob(t *testing.T) {
	f := newFixture(t)
	f.c.LoginRedirect(100, true)
	for _, hdr := range [][]string{nil, bearer(goodKey), {"User-Agent", browser}} {
		resp, body := f.do(t, http.MethodGet, "/api/download/models/100", hdr...)
		require.Equal(t, http.StatusTemporaryRedirect, resp.StatusCode)
		assert.Equal(t, LoginPath(100), resp.Header.Get("Location"))
		assert.Equal(t, LoginPath(100), string(body))
	}
	// A client that follows redirects saves the login page.
	follow := &http.Client{Transport: f.cl.Transport}
	resp, err := follow.Get(f.c.URL() + "/api/download/models/100")
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	require.NoError(t, resp.Body.Close())
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "<html>login</html>", string(b))
	assert.Equal(t, 1, f.c.Count(ServerAPI, http.MethodGet, "/login"))

	// Other versions are unaffected; switching off restores downloads.
	assert.Equal(t, 1011, fileOf(t, f.location(t, "/api/download/models/101")))
	f.c.LoginRedirect(100, false)
	assert.Equal(t, 1001, fileOf(t, f.location(t, "/api/download/models/100")))
}

func TestRecording(t *testing.T) {
	f := newFixture(t)
	loc := f.location(t, "/api/download/models/300", bearer(goodKey)...)
	_, _ = f.do(t, http.MethodGet, loc, "User-Agent", "test/1")
	b2 := f.location(t, "/api/download/models/200?token="+goodKey)
	_, _ = f.do(t, http.MethodHead, b2)

	reqs := f.c.Requests()
	require.Len(t, reqs, 4)
	assert.Equal(t, ServerAPI, reqs[0].Server)
	assert.Equal(t, "Bearer "+goodKey, reqs[0].Header.Get("Authorization"))
	assert.Equal(t, strings.TrimPrefix(f.c.URL(), "https://"), reqs[0].Host)
	assert.Equal(t, "/api/download/models/300", reqs[0].RequestURI)
	assert.Equal(t, ServerR2, reqs[1].Server)
	assert.Empty(t, reqs[1].Header.Get("Authorization"))
	assert.Equal(t, "test/1", reqs[1].Header.Get("User-Agent"))
	assert.Equal(t, "/api/download/models/200?token="+goodKey, reqs[2].RequestURI)
	assert.Equal(t, ServerB2, reqs[3].Server)
	assert.Equal(t, http.MethodHead, reqs[3].Method)
	for _, r := range reqs[1:] {
		if r.Server != ServerAPI {
			assert.NotContains(t, r.RequestURI, goodKey, "the key never reaches storage")
		}
	}

	assert.Equal(t, 2, f.c.Count(ServerAPI, http.MethodGet, "/api/download/models/"))
	assert.Equal(t, 1, f.c.Count(ServerR2, "", "/civitai-modelfiles/3001/"))
	assert.Equal(t, 1, f.c.Count(ServerB2, http.MethodHead, `/file/civitai-modelfiles/model/2001/b2 "model"`), "Count matches unescaped paths")
	assert.Equal(t, 4, f.c.Count("", "", "/"))
	assert.Equal(t, 1, f.c.StorageFetches(3001))
	assert.Zero(t, f.c.StorageFetches(2001), "HEAD does not count")

	reqs[0].Header.Set("Authorization", "changed")
	assert.Equal(t, "Bearer "+goodKey, f.c.Requests()[0].Header.Get("Authorization"), "Requests returns copies")
}

func TestAddVersionReplaces(t *testing.T) {
	f := newFixture(t)
	old := f.location(t, "/api/download/models/101")
	f.c.AddVersion(Version{ID: 101, ModelID: 10, Files: []File{{ID: 1012, Name: "new.safetensors", Data: []byte("new")}}})
	resp, _ := f.do(t, http.MethodGet, old)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode, "the replaced file is gone from storage")
	_, body := f.do(t, http.MethodGet, f.location(t, "/api/download/models/101"))
	assert.Equal(t, "new", string(body))
}

func TestAddVersionRejectsInvalid(t *testing.T) {
	f := newFixture(t)
	for _, v := range []Version{
		{ID: 0, ModelID: 1},
		{ID: 1, ModelID: 0},
		{ID: 1, ModelID: 1, Files: []File{{ID: 0, Name: "a"}}},
		{ID: 1, ModelID: 1, Files: []File{{ID: 1, Name: "a"}, {ID: 1, Name: "b"}}},
		{ID: 1, ModelID: 1, Files: []File{{ID: 1, Name: ""}}},
		{ID: 1, ModelID: 1, Files: []File{{ID: 1, Name: "a/b"}}},
		{ID: 1, ModelID: 1, Files: []File{{ID: 1, Name: "a", Storage: "s3"}}},
	} {
		assert.Panics(t, func() { f.c.AddVersion(v) }, "%+v", v)
	}
}

func TestCertificateFiles(t *testing.T) {
	f := newFixture(t)
	pemData, err := os.ReadFile(f.c.CAFile())
	require.NoError(t, err)
	assert.Contains(t, string(pemData), "BEGIN CERTIFICATE")
	urls := []string{f.c.URL(), f.c.R2URL(), f.c.B2URL()}
	for i, u := range urls {
		assert.True(t, strings.HasPrefix(u, "https://127.0.0.1:"), u)
		assert.NotContains(t, urls[i+1:], u)
	}
}

func TestHelpers(t *testing.T) {
	assert.Equal(t, "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", SHA256Upper(nil))
	assert.Equal(t, "E3B0C44298", AutoV2(nil))
	assert.Equal(t, "/model-versions/7", EarlyAccessPath(7))
}
