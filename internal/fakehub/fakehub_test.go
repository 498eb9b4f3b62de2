package fakehub

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/internal/fakeserver"
)

const (
	opToken    = "hf_operator"
	otherToken = "hf_other"
	pageSize   = 7
)

// fixture is a Hub with a few repos covering every answer shape.
type fixture struct {
	h                *Hub
	c                *http.Client
	mainC, prC       string
	config, prConfig []byte
	lfs, xet, prLFS  []byte
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{
		h:        New(t, Options{Token: opToken, OtherTokens: []string{otherToken}, PageSize: pageSize}),
		mainC:    Commit("main"),
		prC:      Commit("pr1"),
		config:   []byte(`{"model_type":"fake"}`),
		prConfig: []byte(`{"model_type":"fake-pr"}`),
		lfs:      RandomData(1, 256<<10),
		xet:      RandomData(2, 64<<10),
		prLFS:    RandomData(3, 10<<10),
	}
	f.h.AddRepo(Repo{
		ID:   "org/model",
		Refs: map[string]string{"main": f.mainC, "refs/pr/1": f.prC, "v1.0": f.mainC},
		Commits: map[string][]File{
			f.mainC: {
				{Path: "config.json", Data: f.config},
				{Path: "sub dir/a b.bin", Data: f.lfs, LFS: true},
				{Path: "model.safetensors", Data: f.xet, LFS: true, Xet: true},
			},
			f.prC: {
				{Path: "config.json", Data: f.prConfig},
				{Path: "pr.bin", Data: f.prLFS, LFS: true},
			},
		},
	})
	small := map[string][]File{f.mainC: {{Path: "config.json", Data: f.config}, {Path: "w.bin", Data: f.lfs, LFS: true}}}
	main := map[string]string{"main": f.mainC}
	f.h.AddRepo(Repo{ID: "org/gated", Gated: true, Refs: main, Commits: small})
	f.h.AddRepo(Repo{ID: "org/private", Private: true, Refs: main, Commits: small})
	f.h.AddRepo(Repo{Type: TypeDataset, ID: "org/ds", Refs: main, Commits: small})

	f.c = f.h.srv.Client(t)
	return f
}

// do sends one request; hdr is "Key", "value" pairs.
func (f *fixture) do(t *testing.T, method, target string, body io.Reader, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	if strings.HasPrefix(target, "/") {
		target = f.h.URL() + target
	}
	req, err := http.NewRequest(method, target, body)
	require.NoError(t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return fakeserver.Fetch(t, f.c, req)
}

func bearer(tok string) []string { return []string{"Authorization", "Bearer " + tok} }

func TestLFSResolveAndCDN(t *testing.T) {
	f := newFixture(t)
	sha := SHA256Hex(f.lfs)

	for _, method := range []string{http.MethodHead, http.MethodGet} {
		resp, body := f.do(t, method, "/org/model/resolve/main/sub%20dir/a%20b.bin", nil)
		require.Equal(t, http.StatusFound, resp.StatusCode, method)
		loc := resp.Header.Get("Location")
		assert.True(t, strings.HasPrefix(loc, f.h.CDNURL()+"/repos/"), loc)
		assert.True(t, strings.Contains(loc, "/"+sha+"?"), loc)
		assert.Equal(t, f.mainC, resp.Header.Get("X-Repo-Commit"))
		assert.Equal(t, `"`+sha+`"`, resp.Header.Get("X-Linked-Etag"))
		assert.Equal(t, `"`+sha+`"`, resp.Header.Get("ETag"))
		assert.Equal(t, strconv.Itoa(len(f.lfs)), resp.Header.Get("X-Linked-Size"))
		assert.Equal(t, "text/plain; charset=utf-8", resp.Header.Get("Content-Type"))
		assert.Equal(t, strconv.Itoa(len("Found. Redirecting to "+loc)), resp.Header.Get("Content-Length"))
		assert.Empty(t, resp.Header.Get("X-Xet-Hash"))
		if method == http.MethodGet {
			assert.Equal(t, "Found. Redirecting to "+loc, string(body))
		}
		u, err := url.Parse(loc)
		require.NoError(t, err)
		q := u.Query()
		assert.Equal(t, `inline; filename*=UTF-8''a%20b.bin; filename="a b.bin";`, q.Get("response-content-disposition"))
		assert.Equal(t, "K1", q.Get("Key-Pair-Id"))
		assert.NotEmpty(t, q.Get("Signature"))
		assert.NotEmpty(t, q.Get("Expires"))
	}

	resp, _ := f.do(t, http.MethodHead, "/org/model/resolve/main/sub%20dir/a%20b.bin", nil)
	loc := resp.Header.Get("Location")

	// Full GET from the CDN.
	resp, body := f.do(t, http.MethodGet, loc, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, bytes.Equal(f.lfs, body))
	assert.Equal(t, "application/octet-stream", resp.Header.Get("Content-Type"))
	assert.Equal(t, "bytes", resp.Header.Get("Accept-Ranges"))
	assert.Equal(t, strconv.Itoa(len(f.lfs)), resp.Header.Get("Content-Length"))
	assert.Contains(t, resp.Header.Get("Content-Disposition"), `filename="a b.bin"`)
	cdnETag := resp.Header.Get("ETag")
	assert.Len(t, cdnETag, 66)
	assert.NotContains(t, cdnETag, sha, "the CDN ETag must not be the content hash")
	assert.Equal(t, 1, f.h.CDNBodyFetches(sha))

	// HEAD does not count as a body fetch; Range does.
	resp, _ = f.do(t, http.MethodHead, loc, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, 1, f.h.CDNBodyFetches(sha))
	resp, body = f.do(t, http.MethodGet, loc, nil, "Range", "bytes=10-19")
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	assert.Equal(t, fmt.Sprintf("bytes 10-19/%d", len(f.lfs)), resp.Header.Get("Content-Range"))
	assert.Equal(t, f.lfs[10:20], body)
	assert.Equal(t, 2, f.h.CDNBodyFetches(sha))
	// hf_transfer asks one byte past EOF on its last chunk: clamp, do not 416.
	resp, body = f.do(t, http.MethodGet, loc, nil, "Range", fmt.Sprintf("bytes=%d-%d", len(f.lfs)-5, len(f.lfs)))
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	assert.Equal(t, f.lfs[len(f.lfs)-5:], body)

	u, err := url.Parse(loc)
	require.NoError(t, err)
	expired := func() string {
		v := url.Values{}
		exp := strconv.FormatInt(time.Now().Add(-time.Minute).Unix(), 10)
		v.Set("Expires", exp)
		v.Set("Signature", f.h.sign(u.Path, exp))
		v.Set("Key-Pair-Id", "K1")
		return f.h.CDNURL() + u.Path + "?" + v.Encode()
	}()
	unknownSHA := func() string {
		p := strings.TrimSuffix(u.Path, sha) + strings.Repeat("0", 64)
		q := u.Query()
		q.Set("Signature", f.h.sign(p, q.Get("Expires")))
		return f.h.CDNURL() + p + "?" + q.Encode()
	}()
	for _, tc := range []struct {
		name   string
		target string
		hdr    []string
		status int
		code   string
	}{
		{"authorization rejected", loc, bearer(opToken), http.StatusBadRequest, "InvalidArgument"},
		{"no signature", f.h.CDNURL() + u.Path, nil, http.StatusForbidden, "AccessDenied"},
		{"tampered signature", strings.Replace(loc, "Signature=", "Signature=00", 1), nil, http.StatusForbidden, "AccessDenied"},
		{"tampered expiry", strings.Replace(loc, "Expires=", "Expires=9", 1), nil, http.StatusForbidden, "AccessDenied"},
		{"expired", expired, nil, http.StatusForbidden, "AccessDenied"},
		{"unknown blob", unknownSHA, nil, http.StatusNotFound, "NoSuchKey"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := f.do(t, http.MethodGet, tc.target, nil, tc.hdr...)
			assert.Equal(t, tc.status, resp.StatusCode)
			assert.Contains(t, string(body), "<Code>"+tc.code+"</Code>")
		})
	}
	assert.Equal(t, 3, f.h.CDNBodyFetches(sha), "errors are not body fetches")
	rejected := slices.IndexFunc(f.h.Requests(), func(r Request) bool {
		return r.Server == "cdn" && r.Header.Get("Authorization") == "Bearer "+opToken
	})
	assert.GreaterOrEqual(t, rejected, 0, "the rejected CDN request carrying Authorization is recorded")
}

func TestXetResolve(t *testing.T) {
	f := newFixture(t)
	sha := SHA256Hex(f.xet)
	resp, _ := f.do(t, http.MethodHead, "/org/model/resolve/main/model.safetensors", nil)
	require.Equal(t, http.StatusFound, resp.StatusCode)
	xh := resp.Header.Get("X-Xet-Hash")
	assert.True(t, isHex(xh, 64))
	assert.NotEqual(t, sha, xh)
	assert.Equal(t, `"`+sha+`"`, resp.Header.Get("X-Linked-Etag"))
	assert.Equal(t,
		"<"+f.h.URL()+"/api/models/org/model/xet-read-token/"+f.mainC+`>; rel="xet-auth", <`+
			f.h.CASURL()+"/v1/reconstructions/"+xh+`>; rel="xet-reconstruction-info"`,
		resp.Header.Get("Link"))
	// Like the Hub, a Xet file's plain download goes to the Xet bridge,
	// which names it by its Xet hash.
	loc := resp.Header.Get("Location")
	assert.True(t, strings.HasPrefix(loc, f.h.CDNURL()+"/xet-bridge-us/"), loc)
	assert.Contains(t, loc, "/"+xh+"?")
	resp, body := f.do(t, http.MethodGet, loc, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, f.xet, body)
	assert.Equal(t, 1, f.h.CDNBodyFetches(sha), "counted under the file's sha256")
	u, _ := url.Parse(loc)
	resp, _ = f.do(t, http.MethodGet, f.h.CDNURL()+u.Path+"?"+strings.Replace(u.RawQuery, "Signature=", "Signature=0", 1), nil)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode, "the bridge URL is signed")

	resp, body = f.do(t, http.MethodGet, "/api/models/org/model/xet-read-token/main", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var tok struct {
		AccessToken string `json:"accessToken"`
		Exp         int64  `json:"exp"`
		CasURL      string `json:"casUrl"`
	}
	require.NoError(t, json.Unmarshal(body, &tok))
	assert.True(t, strings.HasPrefix(tok.AccessToken, "xet-jwt-"))
	assert.Greater(t, tok.Exp, time.Now().Unix())
	assert.Equal(t, f.h.CASURL(), tok.CasURL)
	assert.Equal(t, tok.AccessToken, resp.Header.Get("X-Xet-Access-Token"))
	assert.Equal(t, strconv.FormatInt(tok.Exp, 10), resp.Header.Get("X-Xet-Token-Expiration"))
	assert.Equal(t, tok.CasURL, resp.Header.Get("X-Xet-Cas-Url"))

	entries := f.pathsInfo(t, "/api/models/org/model/paths-info/main", url.Values{"paths": {"model.safetensors"}})
	require.Len(t, entries, 1)
	assert.Equal(t, xh, entries[0].XetHash)
}

func TestSmallFileResolve(t *testing.T) {
	f := newFixture(t)
	sha1 := GitBlobSHA1(f.config)
	resp, body := f.do(t, http.MethodGet, "/org/model/resolve/main/config.json", nil)
	require.Equal(t, http.StatusTemporaryRedirect, resp.StatusCode)
	loc := resp.Header.Get("Location")
	assert.Equal(t, "/api/resolve-cache/models/org/model/"+f.mainC+"/config.json?"+
		url.QueryEscape("/org/model/resolve/main/config.json")+"=&etag=%22"+sha1+"%22", loc)
	assert.Equal(t, f.mainC, resp.Header.Get("X-Repo-Commit"))
	assert.Equal(t, `"`+sha1+`"`, resp.Header.Get("ETag"))
	assert.Equal(t, "Temporary Redirect. Redirecting to "+loc, string(body))

	// Clients drop the query and re-request the path on the same host.
	path := strings.SplitN(loc, "?", 2)[0]
	resp, _ = f.do(t, http.MethodHead, path, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, 0, f.h.SmallBodyFetches(f.mainC, "config.json"), "HEAD is not a body fetch")
	for _, target := range []string{path, f.h.URL() + loc} {
		resp, body = f.do(t, http.MethodGet, target, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, f.config, body)
		assert.Equal(t, `"`+sha1+`"`, resp.Header.Get("ETag"))
		assert.Equal(t, f.mainC, resp.Header.Get("X-Repo-Commit"))
		assert.Equal(t, "bytes", resp.Header.Get("Accept-Ranges"))
		assert.Equal(t, "text/plain; charset=utf-8", resp.Header.Get("Content-Type"))
		assert.Equal(t, strconv.Itoa(len(f.config)), resp.Header.Get("Content-Length"))
	}
	assert.Equal(t, 2, f.h.SmallBodyFetches(f.mainC, "config.json"))

	resp, body = f.do(t, http.MethodGet, path, nil, "Range", "bytes=2-5")
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	assert.Equal(t, f.config[2:6], body)

	// resolve-cache enforces the same auth as resolve.
	resp, _ = f.do(t, http.MethodGet, "/api/resolve-cache/models/org/gated/"+f.mainC+"/config.json", nil)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.Equal(t, "GatedRepo", resp.Header.Get("X-Error-Code"))
	assert.Equal(t, 3, f.h.SmallBodyFetches(f.mainC, "config.json"), "the ranged GET counts, the refused one does not")
}

func TestRevisions(t *testing.T) {
	f := newFixture(t)
	resp, _ := f.do(t, http.MethodHead, "/org/model/resolve/refs%2Fpr%2F1/pr.bin", nil)
	require.Equal(t, http.StatusFound, resp.StatusCode)
	assert.Equal(t, f.prC, resp.Header.Get("X-Repo-Commit"))
	assert.Equal(t, `"`+SHA256Hex(f.prLFS)+`"`, resp.Header.Get("X-Linked-Etag"))

	resp, _ = f.do(t, http.MethodHead, "/org/model/resolve/"+f.prC+"/config.json", nil)
	require.Equal(t, http.StatusTemporaryRedirect, resp.StatusCode)
	assert.Equal(t, `"`+GitBlobSHA1(f.prConfig)+`"`, resp.Header.Get("ETag"))

	for _, tc := range []struct{ target, sha string }{
		{"/api/models/org/model", f.mainC},
		{"/api/models/org/model/revision/main", f.mainC},
		{"/api/models/org/model/revision/v1.0", f.mainC},
		{"/api/models/org/model/revision/refs%2Fpr%2F1", f.prC},
		{"/api/models/org/model/revision/" + f.prC, f.prC},
		{"/api/datasets/org/ds/revision/main", f.mainC},
	} {
		t.Run(tc.target, func(t *testing.T) {
			resp, body := f.do(t, http.MethodGet, tc.target, nil)
			require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
			var info struct {
				ID       string `json:"id"`
				ModelID  string `json:"modelId"`
				SHA      string `json:"sha"`
				Private  bool   `json:"private"`
				Gated    any    `json:"gated"`
				Siblings []struct {
					RFilename string `json:"rfilename"`
				} `json:"siblings"`
			}
			require.NoError(t, json.Unmarshal(body, &info))
			assert.Equal(t, tc.sha, info.SHA)
			assert.Equal(t, info.ID, info.ModelID)
			assert.Equal(t, false, info.Gated)
			assert.NotEmpty(t, info.Siblings)
		})
	}
}

func TestErrors(t *testing.T) {
	f := newFixture(t)
	repoNotFound, gated := "RepoNotFound", "GatedRepo"
	for _, tc := range []struct {
		name   string
		method string
		target string
		hdr    []string
		status int
		code   string
		msg    string
		commit string
	}{
		{"gated anonymous", "HEAD", "/org/gated/resolve/main/w.bin", nil, 401, gated,
			"Access to model org/gated is restricted. You must have access to it and be authenticated to access it. Please log in.", ""},
		{"gated other token", "HEAD", "/org/gated/resolve/main/w.bin", bearer(otherToken), 403, gated,
			"Access to model org/gated is restricted and you are not in the authorized list. Visit " + "%HUB%/org/gated to ask for access.", ""},
		{"gated operator", "HEAD", "/org/gated/resolve/main/w.bin", bearer(opToken), 302, "", "", f.mainC},
		{"gated api anonymous", "GET", "/api/models/org/gated/revision/main", nil, 401, gated, "", ""},
		{"gated api operator", "GET", "/api/models/org/gated/revision/main", bearer(opToken), 200, "", "", ""},
		{"private anonymous", "GET", "/org/private/resolve/main/w.bin", nil, 401, repoNotFound, "", ""},
		{"private other token", "GET", "/org/private/resolve/main/w.bin", bearer(otherToken), 404, repoNotFound, "", ""},
		{"private operator", "GET", "/api/models/org/private", bearer(opToken), 200, "", "", ""},
		{"unknown repo anonymous", "GET", "/org/nope/resolve/main/x", nil, 401, repoNotFound, "", ""},
		{"unknown repo authenticated", "GET", "/api/models/org/nope", bearer(opToken), 404, repoNotFound, "", ""},
		{"invalid token on public repo", "GET", "/org/model/resolve/main/config.json", bearer("hf_bogus"), 401, "",
			"Invalid credentials in Authorization header", ""},
		{"invalid token on api", "GET", "/api/models/org/model", bearer("hf_bogus"), 401, "",
			"Invalid credentials in Authorization header", ""},
		{"unknown file", "HEAD", "/org/model/resolve/main/missing.bin", nil, 404, "EntryNotFound",
			`missing.bin does not exist on "main"`, f.mainC},
		{"unknown file at pr", "GET", "/org/model/resolve/refs%2Fpr%2F1/sub%20dir/a%20b.bin", nil, 404, "EntryNotFound",
			`sub dir/a b.bin does not exist on "refs/pr/1"`, f.prC},
		{"unknown revision", "HEAD", "/org/model/resolve/nope/config.json", nil, 404, "RevisionNotFound", "Invalid rev id: nope", ""},
		{"unknown revision api", "GET", "/api/models/org/model/revision/nope", nil, 404, "RevisionNotFound", "Invalid rev id: nope", ""},
		{"unknown route", "GET", "/api/unknown", nil, 404, "", "", ""},
		{"wrong method", "DELETE", "/org/model/resolve/main/config.json", nil, 405, "", "", ""},
		{"dataset prefix", "HEAD", "/datasets/org/ds/resolve/main/config.json", nil, 307, "", "", f.mainC},
		{"dataset as model", "HEAD", "/org/ds/resolve/main/config.json", nil, 401, repoNotFound, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := f.do(t, tc.method, tc.target, nil, tc.hdr...)
			require.Equal(t, tc.status, resp.StatusCode, string(body))
			assert.Equal(t, tc.code, resp.Header.Get("X-Error-Code"))
			if tc.msg != "" {
				assert.Equal(t, strings.ReplaceAll(tc.msg, "%HUB%", f.h.URL()), resp.Header.Get("X-Error-Message"))
			}
			if tc.commit != "" {
				assert.Equal(t, tc.commit, resp.Header.Get("X-Repo-Commit"))
			}
			if tc.status >= 400 {
				assert.Equal(t, "application/json; charset=utf-8", resp.Header.Get("Content-Type"))
				assert.NotEmpty(t, resp.Header.Get("X-Error-Message"))
				if tc.method == http.MethodGet {
					var e struct {
						Error string `json:"error"`
					}
					require.NoError(t, json.Unmarshal(body, &e))
					assert.Equal(t, resp.Header.Get("X-Error-Message"), e.Error)
				}
			}
			if resp.StatusCode/100 == 3 {
				assert.NotEmpty(t, resp.Header.Get("Location"))
			}
		})
	}
}

func TestIfNoneMatch(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct{ target, etag string }{
		{"/org/model/resolve/main/sub%20dir/a%20b.bin", SHA256Hex(f.lfs)},
		{"/org/model/resolve/main/config.json", GitBlobSHA1(f.config)},
		{"/api/resolve-cache/models/org/model/" + f.mainC + "/config.json", GitBlobSHA1(f.config)},
	} {
		resp, _ := f.do(t, http.MethodGet, tc.target, nil, "If-None-Match", `"`+tc.etag+`"`)
		assert.Equal(t, http.StatusNotModified, resp.StatusCode, tc.target)
		assert.Equal(t, f.mainC, resp.Header.Get("X-Repo-Commit"), tc.target)
		assert.Equal(t, `"`+tc.etag+`"`, resp.Header.Get("ETag"), tc.target)
	}
}

func TestTreePagination(t *testing.T) {
	f := newFixture(t)
	c := Commit("tree")
	var files []File
	for i := range 20 {
		files = append(files, File{Path: fmt.Sprintf("d%d/f%02d.txt", i%3, i), Data: []byte(strconv.Itoa(i))})
	}
	files = append(files, File{Path: "top.bin", Data: f.lfs, LFS: true}, File{Path: "d0/deep/x.bin", Data: []byte("x")})
	f.h.AddRepo(Repo{ID: "org/tree", Refs: map[string]string{"main": c}, Commits: map[string][]File{c: files}})

	type entry = treeEntry
	collect := func(t *testing.T, target string) ([]entry, int) {
		t.Helper()
		var all []entry
		pages := 0
		for target != "" {
			resp, body := f.do(t, http.MethodGet, target, nil)
			require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
			var page []entry
			require.NoError(t, json.Unmarshal(body, &page))
			assert.LessOrEqual(t, len(page), pageSize)
			all = append(all, page...)
			pages++
			target = ""
			if link := resp.Header.Get("Link"); link != "" {
				require.True(t, strings.HasPrefix(link, "<"+f.h.URL()+"/api/models/org/tree/tree/"), link)
				require.True(t, strings.HasSuffix(link, `>; rel="next"`), link)
				target = strings.TrimSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`)
			}
		}
		return all, pages
	}
	paths := func(es []entry) []string {
		var out []string
		for _, e := range es {
			out = append(out, e.Type[:1]+":"+e.Path)
		}
		return out
	}

	for _, tc := range []struct {
		name   string
		target string
		want   int // number of entries
	}{
		{"recursive", "/api/models/org/tree/tree/main?recursive=true&expand=false", 20 + 1 + 1 + 4},
		{"recursive python 0.x spelling", "/api/models/org/tree/tree/main?recursive=True&expand=False", 26},
		{"top level", "/api/models/org/tree/tree/main", 4},
		{"subdir escaped", "/api/models/org/tree/tree/main/d0%2Fdeep?recursive=1", 1},
		{"subdir non-recursive", "/api/models/org/tree/tree/main/d0", 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			all, pages := collect(t, tc.target)
			assert.Len(t, all, tc.want, paths(all))
			assert.Equal(t, (tc.want+pageSize-1)/pageSize, pages)
			assert.True(t, slices.IsSortedFunc(all, func(a, b entry) int { return strings.Compare(a.Path, b.Path) }))
			assert.Len(t, slices.Compact(paths(all)), len(all), "no duplicates across pages")
		})
	}

	all, _ := collect(t, "/api/models/org/tree/tree/main?recursive=true")
	byPath := map[string]entry{}
	for _, e := range all {
		byPath[e.Path] = e
	}
	require.Contains(t, byPath, "top.bin")
	top := byPath["top.bin"]
	assert.Equal(t, "file", top.Type)
	assert.EqualValues(t, len(f.lfs), top.Size)
	require.NotNil(t, top.LFS)
	assert.Equal(t, SHA256Hex(f.lfs), top.LFS.OID)
	assert.EqualValues(t, len(f.lfs), top.LFS.Size)
	assert.True(t, isHex(top.OID, 40))
	assert.Empty(t, top.XetHash)
	assert.Equal(t, GitBlobSHA1([]byte("0")), byPath["d0/f00.txt"].OID)
	assert.Nil(t, byPath["d0/f00.txt"].LFS)
	assert.Equal(t, "directory", byPath["d0/deep"].Type)
	assert.True(t, isHex(byPath["d0/deep"].OID, 40))

	resp, _ := f.do(t, http.MethodGet, "/api/models/org/tree/tree/main/nope", nil)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.Equal(t, "EntryNotFound", resp.Header.Get("X-Error-Code"))
	assert.Equal(t, c, resp.Header.Get("X-Repo-Commit"))
	resp, _ = f.do(t, http.MethodGet, "/api/models/org/tree/tree/nope", nil)
	assert.Equal(t, "RevisionNotFound", resp.Header.Get("X-Error-Code"))
	resp, _ = f.do(t, http.MethodGet, "/api/models/org/tree/tree/main?recursive=maybe", nil)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
}

func (f *fixture) pathsInfo(t *testing.T, target string, form url.Values) []treeEntry {
	t.Helper()
	resp, body := f.do(t, http.MethodPost, target, strings.NewReader(form.Encode()),
		"Content-Type", "application/x-www-form-urlencoded")
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	var out []treeEntry
	require.NoError(t, json.Unmarshal(body, &out))
	return out
}

func TestPathsInfo(t *testing.T) {
	f := newFixture(t)
	out := f.pathsInfo(t, "/api/models/org/model/paths-info/main",
		url.Values{"paths": {"config.json", "missing", "sub dir/a b.bin", "sub dir"}, "expand": {"false"}})
	require.Len(t, out, 3)
	assert.Equal(t, "config.json", out[0].Path)
	assert.Equal(t, GitBlobSHA1(f.config), out[0].OID)
	assert.Equal(t, "sub dir/a b.bin", out[1].Path)
	require.NotNil(t, out[1].LFS)
	assert.Equal(t, SHA256Hex(f.lfs), out[1].LFS.OID)
	assert.Equal(t, "directory", out[2].Type)
	assert.Nil(t, out[0].LastCommit)

	out = f.pathsInfo(t, "/api/models/org/model/paths-info/refs%2Fpr%2F1", url.Values{"paths": {"pr.bin"}, "expand": {"True"}})
	require.Len(t, out, 1)
	require.NotNil(t, out[0].LastCommit)
	assert.Equal(t, f.prC, out[0].LastCommit.ID)

	resp, _ := f.do(t, http.MethodGet, "/api/models/org/model/paths-info/main", nil)
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	rec := f.h.Requests()
	assert.Contains(t, string(rec[0].Body), "paths=config.json", "request bodies are recorded")
}

func TestRename(t *testing.T) {
	f := newFixture(t)
	f.h.AddRename("legacy-name", "org/model")
	f.h.AddRename("old-org/model", "org/model")
	for _, tc := range []struct{ target, want string }{
		{"/legacy-name/resolve/main/config.json", "/org/model/resolve/main/config.json"},
		{"/old-org/model/resolve/refs%2Fpr%2F1/pr.bin", "/org/model/resolve/refs%2Fpr%2F1/pr.bin"},
		{"/legacy-name/resolve/main/sub%20dir/a%20b.bin", "/org/model/resolve/main/sub%20dir/a%20b.bin"},
		{"/api/models/legacy-name", "/api/models/org/model"},
		{"/api/models/old-org/model/revision/main", "/api/models/org/model/revision/main"},
		{"/api/models/legacy-name/tree/main?recursive=true", "/api/models/org/model/tree/main?recursive=true"},
	} {
		resp, body := f.do(t, http.MethodGet, tc.target, nil)
		require.Equal(t, http.StatusTemporaryRedirect, resp.StatusCode, tc.target)
		assert.Equal(t, tc.want, resp.Header.Get("Location"))
		assert.Equal(t, "Temporary Redirect. Redirecting to "+tc.want, string(body))
		resp, _ = f.do(t, http.MethodGet, tc.want, nil)
		assert.Contains(t, []int{200, 302, 307}, resp.StatusCode, tc.want)
	}
}

func TestSmallTextFilesAreGzippedForClientsThatAcceptIt(t *testing.T) {
	f := newFixture(t)
	path := "/api/resolve-cache/models/org/model/" + f.mainC + "/config.json"
	resp, body := f.do(t, http.MethodGet, path, nil, "Accept-Encoding", "gzip, deflate")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "gzip", resp.Header.Get("Content-Encoding"))
	assert.Equal(t, `"`+GitBlobSHA1(f.config)+`"`, resp.Header.Get("ETag"))
	zr, err := gzip.NewReader(bytes.NewReader(body))
	require.NoError(t, err)
	plain, err := io.ReadAll(zr)
	require.NoError(t, err)
	assert.Equal(t, f.config, plain)

	for _, hdr := range [][]string{nil, {"Accept-Encoding", "identity"}, {"Accept-Encoding", "gzip", "Range", "bytes=0-3"}} {
		resp, body = f.do(t, http.MethodGet, path, nil, hdr...)
		assert.Empty(t, resp.Header.Get("Content-Encoding"), "%v", hdr)
		assert.True(t, bytes.HasPrefix(f.config, body), "%v", hdr)
	}
}

func TestCorruptSmallFile(t *testing.T) {
	f := newFixture(t)
	path := "/api/resolve-cache/models/org/model/" + f.mainC + "/config.json"
	f.h.CorruptSmallFile(GitBlobSHA1(f.config), true)
	resp, body := f.do(t, http.MethodGet, path, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Len(t, body, len(f.config))
	assert.Equal(t, `"`+GitBlobSHA1(f.config)+`"`, resp.Header.Get("ETag"), "the etag still names the good content")
	for i := range body {
		require.NotEqual(t, f.config[i], body[i], "byte %d", i)
	}
	resp, body = f.do(t, http.MethodGet, path, nil, "Range", "bytes=0-1")
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	assert.NotEqual(t, f.config[:2], body, "ranges are corrupted too")

	f.h.CorruptSmallFile(GitBlobSHA1(f.config), false)
	_, body = f.do(t, http.MethodGet, path, nil)
	assert.Equal(t, f.config, body)
}

func TestCorruptBlob(t *testing.T) {
	f := newFixture(t)
	sha := SHA256Hex(f.lfs)
	resp, _ := f.do(t, http.MethodHead, "/org/model/resolve/main/sub%20dir/a%20b.bin", nil)
	loc := resp.Header.Get("Location")

	f.h.CorruptBlob(sha, true)
	resp, body := f.do(t, http.MethodGet, loc, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Len(t, body, len(f.lfs))
	assert.NotEqual(t, sha, SHA256Hex(body))
	n := len(f.lfs) - 4096
	assert.Equal(t, f.lfs[:n], body[:n], "only the last 4 KiB are changed")
	for i := n; i < len(body); i++ {
		require.NotEqual(t, f.lfs[i], body[i], "byte %d", i)
	}
	resp, body = f.do(t, http.MethodGet, loc, nil, "Range", fmt.Sprintf("bytes=%d-", len(f.lfs)-10))
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	assert.Len(t, body, 10)
	assert.NotEqual(t, f.lfs[len(f.lfs)-10:], body, "ranges are corrupted too")

	f.h.CorruptBlob(sha, false)
	_, body = f.do(t, http.MethodGet, loc, nil)
	assert.Equal(t, sha, SHA256Hex(body))
}

func TestGateBlob(t *testing.T) {
	f := newFixture(t)
	sha := SHA256Hex(f.lfs)
	resp, _ := f.do(t, http.MethodHead, "/org/model/resolve/main/sub%20dir/a%20b.bin", nil)
	loc := resp.Header.Get("Location")

	release := f.h.GateBlob(sha, 1000)
	resp, err := f.c.Get(loc)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, 1, f.h.CDNBodyFetches(sha), "a gated fetch counts once its status is sent")
	assert.Equal(t, f.lfs, fakeserver.ReadGated(t, resp.Body, 1000, release))

	// Released gates no longer apply.
	_, body := f.do(t, http.MethodGet, loc, nil)
	assert.Equal(t, f.lfs, body)
}

func TestThrottleBlob(t *testing.T) {
	f := newFixture(t)
	sha := SHA256Hex(f.prLFS) // 10 KiB
	resp, _ := f.do(t, http.MethodHead, "/org/model/resolve/refs%2Fpr%2F1/pr.bin", nil)
	loc := resp.Header.Get("Location")
	f.h.ThrottleBlob(sha, 20<<10) // 20 KiB/s -> ~0.5 s
	start := time.Now()
	resp, body := f.do(t, http.MethodGet, loc, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, f.prLFS, body)
	assert.GreaterOrEqual(t, time.Since(start), 400*time.Millisecond)

	// Switching the throttle off releases an answer in flight, which at
	// 100 B/s would take 100 s; the bound is a tenth of that.
	f.h.ThrottleBlob(sha, 100)
	done := make(chan []byte, 1)
	go func() {
		resp, err := f.c.Get(loc)
		if !assert.NoError(t, err) {
			done <- nil
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		done <- b
	}()
	n := f.h.Count("cdn", http.MethodGet, "/")
	require.Eventually(t, func() bool { return f.h.Count("cdn", http.MethodGet, "/") == n+1 }, 5*time.Second, time.Millisecond)
	f.h.ThrottleBlob(sha, 0)
	select {
	case body = <-done:
		assert.Equal(t, f.prLFS, body)
	case <-time.After(10 * time.Second):
		t.Fatal("switching the throttle off did not release the answer in flight")
	}
}

func TestSetDown(t *testing.T) {
	f := newFixture(t)
	f.h.SetDown(true)
	_, err := f.c.Get(f.h.URL() + "/org/model/resolve/main/config.json")
	require.Error(t, err)
	assert.Equal(t, 1, f.h.Count("hub", http.MethodGet, "/org/model/resolve/"), "requests to a down Hub are recorded")

	f.h.SetDown(false)
	resp, _ := f.do(t, http.MethodGet, "/org/model/resolve/main/config.json", nil)
	assert.Equal(t, http.StatusTemporaryRedirect, resp.StatusCode)
}

func TestRecording(t *testing.T) {
	f := newFixture(t)
	resp, _ := f.do(t, http.MethodHead, "/org/gated/resolve/main/w.bin", nil, bearer(opToken)...)
	_, _ = f.do(t, http.MethodGet, resp.Header.Get("Location"), nil, "User-Agent", "test/1")
	_, _ = f.do(t, http.MethodGet, "/org/model/resolve/refs%2Fpr%2F1/config.json", nil)

	reqs := f.h.Requests()
	require.Len(t, reqs, 3)
	assert.Equal(t, "hub", reqs[0].Server)
	assert.Equal(t, http.MethodHead, reqs[0].Method)
	assert.Equal(t, "Bearer "+opToken, reqs[0].Header.Get("Authorization"))
	assert.Equal(t, strings.TrimPrefix(f.h.URL(), "https://"), reqs[0].Host)
	assert.Equal(t, "cdn", reqs[1].Server)
	assert.Empty(t, reqs[1].Header.Get("Authorization"))
	assert.Equal(t, "test/1", reqs[1].Header.Get("User-Agent"))
	assert.Equal(t, "/org/model/resolve/refs%2Fpr%2F1/config.json", reqs[2].RequestURI)

	assert.Equal(t, 1, f.h.Count("hub", http.MethodGet, "/org/model/resolve/refs/pr/1/"), "Count matches unescaped paths")
	assert.Equal(t, 2, f.h.Count("hub", "", "/org/"))
	assert.Equal(t, 1, f.h.Count("cdn", "", "/repos/"))
	assert.Equal(t, 3, f.h.Count("", "", "/"))

	reqs[0].Header.Set("Authorization", "changed")
	assert.Equal(t, "Bearer "+opToken, f.h.Requests()[0].Header.Get("Authorization"), "Requests returns copies")
}

func TestCertificateFiles(t *testing.T) {
	f := newFixture(t)
	pemData, err := os.ReadFile(f.h.CAFile())
	require.NoError(t, err)
	assert.Contains(t, string(pemData), "BEGIN CERTIFICATE")
	assert.True(t, strings.HasPrefix(f.h.URL(), "https://127.0.0.1:"))
	assert.True(t, strings.HasPrefix(f.h.CDNURL(), "https://127.0.0.1:"))
	assert.NotEqual(t, f.h.URL(), f.h.CDNURL())
}

func TestAddRepoRejectsInvalid(t *testing.T) {
	f := newFixture(t)
	for _, r := range []Repo{
		{ID: "", Refs: nil},
		{ID: "a/b/c"},
		{Type: "kernel", ID: "org/x"},
		{ID: "org/x", Refs: map[string]string{"main": "short"}},
		{ID: "org/x", Commits: map[string][]File{Commit("x"): {{Path: "/abs"}}}},
		{ID: "org/x", Commits: map[string][]File{Commit("x"): {{Path: "a"}, {Path: "a/b"}}}},
	} {
		assert.Panics(t, func() { f.h.AddRepo(r) }, "%+v", r)
	}
}

func TestHelpers(t *testing.T) {
	// `printf 'hello\n' | git hash-object --stdin`
	assert.Equal(t, "ce013625030ba8dba906f756967f9e9ca394464a", GitBlobSHA1([]byte("hello\n")))
	assert.Equal(t, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", SHA256Hex(nil))
	assert.Equal(t, Commit("a"), Commit("a"))
	assert.NotEqual(t, Commit("a"), Commit("b"))
	assert.True(t, isHex(Commit("a"), 40))
	assert.Equal(t, RandomData(7, 1000), RandomData(7, 1000))
	assert.NotEqual(t, RandomData(7, 1000), RandomData(8, 1000))
	assert.Equal(t, RandomData(7, 1000)[:10], RandomData(7, 10))
	assert.Len(t, RandomData(1, 0), 0)
}

func BenchmarkRandomData64MiB(b *testing.B) {
	for b.Loop() {
		_ = RandomData(1, 64<<20)
	}
}
