package hfhub

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	xetAuthLink  = `<https://hub.example/api/models/org/model/xet-read-token/` + testCommit + `>; rel="xet-auth"`
	xetReconLink = `<https://cas.hub.example/v1/reconstructions/` + testSHA256 + `>; rel="xet-reconstruction-info"`
	nextLink     = `<https://hub.example/api/models?cursor=abc&limit=10>; rel="next"`
)

func TestStripXetHeaders_RemovesEveryXetHintAndNothingElse(t *testing.T) {
	tests := []struct {
		name      string
		in        http.Header
		wantLinks []string // nil: no Link header at all
	}{
		{
			name: "X-Xet headers of a resolve answer",
			in: hdr(
				"X-Xet-Hash", testSHA256,
				"X-Xet-Refresh-Route", "/api/models/org/model/xet-read-token/"+testCommit,
				"X-Xet-Cas-Url", "https://cas.hub.example",
				"X-Xet-Access-Token", "secret-token",
				"X-Xet-Token-Expiration", "1700000000",
			),
		},
		{
			name:      "xet rels of Link in one value, next kept",
			in:        hdr("Link", xetAuthLink+", "+nextLink+", "+xetReconLink),
			wantLinks: []string{nextLink},
		},
		{
			name:      "xet rels of Link in separate values, next kept",
			in:        hdr("Link", xetAuthLink, "Link", nextLink, "Link", xetReconLink),
			wantLinks: []string{nextLink},
		},
		{
			name: "Link of only xet rels is removed entirely",
			in:   hdr("Link", xetAuthLink+", "+xetReconLink),
		},
		{
			name:      "unquoted and upper-case xet rels",
			in:        hdr("Link", `<https://hub.example/t>; rel=xet-auth, <https://hub.example/r>; REL="XET-RECONSTRUCTION-INFO", `+nextLink),
			wantLinks: []string{nextLink},
		},
		{
			name:      "comma inside a link URL does not split it",
			in:        hdr("Link", `<https://hub.example/api/models?expand=a,b>; rel="next", `+xetAuthLink),
			wantLinks: []string{`<https://hub.example/api/models?expand=a,b>; rel="next"`},
		},
		{
			name:      "non-xet links are kept as they are",
			in:        hdr("Link", nextLink+", <https://hub.example/p>; rel=\"prev\""),
			wantLinks: []string{nextLink + ", <https://hub.example/p>; rel=\"prev\""},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.in.Clone()
			h.Set(HeaderRepoCommit, testCommit)
			h.Set(HeaderLinkedEtag, `"`+testSHA256+`"`)
			h.Set(HeaderLinkedSize, "42")
			h.Set("ETag", `"`+testSHA1+`"`)
			h.Set("Content-Type", "text/plain; charset=utf-8")

			StripXetHeaders(h)

			for k := range h {
				assert.NotRegexp(t, `(?i)^x-xet-`, k)
			}
			assert.Equal(t, tc.wantLinks, h.Values("Link"))
			assert.Equal(t, testCommit, h.Get(HeaderRepoCommit))
			assert.Equal(t, `"`+testSHA256+`"`, h.Get(HeaderLinkedEtag))
			assert.Equal(t, "42", h.Get(HeaderLinkedSize))
			assert.Equal(t, `"`+testSHA1+`"`, h.Get("ETag"))
			assert.Equal(t, "text/plain; charset=utf-8", h.Get("Content-Type"))
		})
	}
}

func TestStripXetHeaders_RemovesNonCanonicalKeys(t *testing.T) {
	h := http.Header{"x-xet-hash": {testSHA256}, "X-XET-CAS-URL": {"https://cas.hub.example"}, "x-other": {"kept"}}
	StripXetHeaders(h)
	assert.Equal(t, http.Header{"x-other": {"kept"}}, h)
}

func TestStripXetHeaders_LeavesHeadersWithoutXetUntouched(t *testing.T) {
	h := hdr("ETag", `"`+testSHA1+`"`, "Content-Length", "3")
	want := h.Clone()
	StripXetHeaders(h)
	assert.Equal(t, want, h)
	_, hasLink := h["Link"]
	assert.False(t, hasLink, "no Link header is invented")
}

func TestFilterAccept_DropsOnlyTheXetFileInfoType(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"huggingface.js style", XetFileInfoType + ", */*", "*/*"},
		{"with parameters", XetFileInfoType + ";q=1.0, application/json;q=0.9", "application/json;q=0.9"},
		{"case-insensitive", "Application/VND.Xet-FileInfo+JSON, */*", "*/*"},
		{"with spaces around", "  " + XetFileInfoType + " ;q=1 ,text/plain", "text/plain"},
		{"only the xet type", XetFileInfoType, ""},
		{"empty", "", ""},
		{"no xet type", "application/json, text/plain;q=0.5", "application/json, text/plain;q=0.5"},
		{"empty entries are dropped", " , ,*/*", "*/*"},
		{"similar type is kept", "application/vnd.xet-fileinfo+json2, */*", "application/vnd.xet-fileinfo+json2, */*"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, FilterAccept(tc.in))
		})
	}
}

func TestStripXetFromEntries_RemovesXetHashAndKeepsEverythingElse(t *testing.T) {
	in := `[
  {"type":"directory","oid":"` + otherSHA1 + `","size":0,"path":"sub dir"},
  {"type":"file","oid":"` + testSHA1 + `","size":12345678901234567890,"path":"a<b>&c.bin",
   "xetHash":"` + testSHA256 + `",
   "lfs":{"oid":"` + testSHA256 + `","size":5000000000,"pointerSize":135},
   "lastCommit":{"id":"` + testCommit + `","title":"été","date":"2026-01-01T00:00:00.000Z"}},
  {"type":"file","oid":"` + testSHA1 + `","size":3,"path":"small.txt","xetHash":null}
]`
	out := StripXetFromEntries([]byte(in))

	assert.NotContains(t, string(out), "xetHash")
	assert.Contains(t, string(out), `"a<b>&c.bin"`, "HTML characters are not escaped")
	assert.Contains(t, string(out), "12345678901234567890", "numbers keep their exact text")

	var got, want []map[string]any
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.UseNumber()
	require.NoError(t, dec.Decode(&got))
	dec = json.NewDecoder(bytes.NewReader([]byte(in)))
	dec.UseNumber()
	require.NoError(t, dec.Decode(&want))
	for _, e := range want {
		delete(e, "xetHash")
	}
	assert.Equal(t, want, got)
	assert.False(t, bytes.HasSuffix(out, []byte("\n")), "no trailing newline added")
}

func TestStripXetFromEntries_ReturnsOtherBodiesUnchanged(t *testing.T) {
	tests := []struct {
		name string
		in   string
	}{
		{"entries without xetHash keep their exact bytes", "[ {\"type\":\"file\", \"path\":\"a\",\n \"size\":1} ]"},
		{"empty array", "[]"},
		{"empty body", ""},
		{"not JSON", "<html>oops</html>"},
		{"truncated JSON", `[{"xetHash":"` + testSHA256},
		{"object instead of array", `{"xetHash":"` + testSHA256 + `"}`},
		{"array of strings", `["xetHash"]`},
		{"array of arrays", `[[{"xetHash":"x"}]]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.in, string(StripXetFromEntries([]byte(tc.in))))
		})
	}
}

func TestRewriteNextLink_RewritesOnlyLinksOnTheUpstreamOrigin(t *testing.T) {
	upstream, err := url.Parse("https://hub.example")
	require.NoError(t, err)
	const gw = "http://gw.example:8080"

	tests := []struct {
		name string
		in   []string
		want []string // nil: no Link header
	}{
		{
			name: "next link on the upstream",
			in:   []string{nextLink},
			want: []string{`<http://gw.example:8080/api/models?cursor=abc&limit=10>; rel="next"`},
		},
		{
			name: "host compared case-insensitively",
			in:   []string{`<https://HUB.example/api/models?cursor=x>; rel="next"`},
			want: []string{`<http://gw.example:8080/api/models?cursor=x>; rel="next"`},
		},
		{
			name: "escaped path and query are kept",
			in:   []string{`<https://hub.example/api/datasets/org/data/tree/refs%2Fconvert%2Fparquet/sub%20dir?cursor=a%2Bb&recursive=true>; rel="next"`},
			want: []string{`<http://gw.example:8080/api/datasets/org/data/tree/refs%2Fconvert%2Fparquet/sub%20dir?cursor=a%2Bb&recursive=true>; rel="next"`},
		},
		{
			name: "another host is untouched",
			in:   []string{`<https://cdn.hub.example/api/models?cursor=x>; rel="next"`},
			want: []string{`<https://cdn.hub.example/api/models?cursor=x>; rel="next"`},
		},
		{
			name: "another scheme is untouched",
			in:   []string{`<http://hub.example/api/models?cursor=x>; rel="next"`},
			want: []string{`<http://hub.example/api/models?cursor=x>; rel="next"`},
		},
		{
			name: "another port is untouched",
			in:   []string{`<https://hub.example:8443/api/models?cursor=x>; rel="next"`},
			want: []string{`<https://hub.example:8443/api/models?cursor=x>; rel="next"`},
		},
		{
			name: "a look-alike host is untouched",
			in:   []string{`<https://hub.example.evil.example/api/models>; rel="next"`},
			want: []string{`<https://hub.example.evil.example/api/models>; rel="next"`},
		},
		{
			name: "relative link is untouched",
			in:   []string{`</api/models?cursor=x>; rel="next"`},
			want: []string{`</api/models?cursor=x>; rel="next"`},
		},
		{
			name: "mixed entries in one value",
			in:   []string{`<https://cdn.hub.example/p>; rel="prev", ` + nextLink},
			want: []string{`<https://cdn.hub.example/p>; rel="prev", <http://gw.example:8080/api/models?cursor=abc&limit=10>; rel="next"`},
		},
		{
			name: "several values",
			in:   []string{nextLink, `<https://cdn.hub.example/p>; rel="prev"`},
			want: []string{`<http://gw.example:8080/api/models?cursor=abc&limit=10>; rel="next"`, `<https://cdn.hub.example/p>; rel="prev"`},
		},
		{
			name: "no Link header",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tc.in {
				h.Add("Link", v)
			}
			RewriteNextLink(h, upstream, gw)
			assert.Equal(t, tc.want, h.Values("Link"))
		})
	}
}

func TestRewriteNextLink_MatchesAnUpstreamWithAnExplicitPort(t *testing.T) {
	upstream, err := url.Parse("http://127.0.0.1:34567")
	require.NoError(t, err)
	h := hdr("Link", `<http://127.0.0.1:34567/api/models?cursor=x>; rel="next"`)
	RewriteNextLink(h, upstream, "https://gw.example")
	assert.Equal(t, `<https://gw.example/api/models?cursor=x>; rel="next"`, h.Get("Link"))
}

func TestXetPolicyServes(t *testing.T) {
	for _, tt := range []struct {
		mode string
		size int64
		want bool
	}{
		{XetHide, 100 << 30, false},
		{XetServe, 1, true},
		{XetAuto, 50e9 - 1, false},
		{XetAuto, 50e9, true},
		{XetAuto, -1, false}, // size unknown: not served
	} {
		p := XetPolicy{Mode: tt.mode, MinSize: 50e9}
		assert.Equal(t, tt.want, p.Serves(tt.size), "%s %d", tt.mode, tt.size)
	}
	assert.False(t, XetPolicy{Mode: XetHide}.Any())
	assert.True(t, XetPolicy{Mode: XetAuto}.Any())
}

func TestFilterXetEntriesKeepsServedSizes(t *testing.T) {
	body := []byte(`[{"type":"file","path":"small","size":10,"xetHash":"aa","lfs":{"oid":"x","size":10}},` +
		`{"type":"file","path":"big","size":500,"xetHash":"bb","lfs":{"oid":"y","size":500}},` +
		`{"type":"file","path":"plain","size":3}]`)
	out := string(FilterXetEntries(body, func(size int64) bool { return size >= 100 }))
	assert.NotContains(t, out, `"aa"`, "below the size: stripped")
	assert.Contains(t, out, `"xetHash":"bb"`, "at or above: kept")
	assert.Equal(t, string(body), string(FilterXetEntries(body, func(int64) bool { return true })), "nothing to strip: unchanged")
}

func TestFileMetaKeepsXetHash(t *testing.T) {
	xh := strings.Repeat("ab", 32)
	h := http.Header{HeaderRepoCommit: {strings.Repeat("1", 40)}, HeaderLinkedEtag: {`"` + strings.Repeat("c", 64) + `"`},
		HeaderLinkedSize: {"5"}, HeaderXetHash: {xh}}
	m, err := ParseFileMeta(h, http.StatusFound)
	require.NoError(t, err)
	assert.Equal(t, xh, m.XetHash)
	back, err := UnmarshalMeta(MarshalMeta(m))
	require.NoError(t, err)
	assert.Equal(t, m, back)
	h.Set(HeaderXetHash, "not-a-hash")
	m, err = ParseFileMeta(h, http.StatusFound)
	require.NoError(t, err)
	assert.Empty(t, m.XetHash)
}

func TestXetEntriesListsOnlyWellFormedXetFiles(t *testing.T) {
	h := strings.Repeat("ab", 32)
	body := []byte(`[
		{"type":"file","path":"a.bin","size":134,"lfs":{"oid":"x","size":9000},"xetHash":"` + h + `"},
		{"type":"file","path":"b.txt","size":12,"xetHash":"` + strings.Repeat("cd", 32) + `"},
		{"type":"file","path":"c.bin","size":5,"xetHash":"not-a-hash"},
		{"type":"file","path":"d.txt","size":5},
		{"type":"directory","path":"e"}
	]`)
	assert.Equal(t, []XetEntry{{Hash: h, Size: 9000}, {Hash: strings.Repeat("cd", 32), Size: 12}}, XetEntries(body))
	assert.Nil(t, XetEntries([]byte(`{"not":"a list"}`)))
}
