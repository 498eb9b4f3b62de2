package fakehub

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/internal/xetclient"
	"github.com/modelgate/modelgate/xet/xethash"
)

// casFixture holds a base model and a fine-tune that differs in one chunk,
// so they share xorbs, in two repos.
type casFixture struct {
	*fixture
	base, tuned []byte
	baseHash    string
	tunedHash   string
}

func newCASFixture(t *testing.T) *casFixture {
	f := &casFixture{fixture: newFixture(t)}
	f.base = RandomData(10, 19*XetChunkSize+123) // 20 chunks: xorbs of 8, 8, 4
	f.tuned = append([]byte(nil), f.base...)
	f.tuned[10*XetChunkSize+5] ^= 0xff // chunk 10, in the second xorb
	c := Commit("cas")
	f.h.AddRepo(Repo{ID: "org/base", Refs: map[string]string{"main": c},
		Commits: map[string][]File{c: {{Path: "w.bin", Data: f.base, Xet: true}}}})
	f.h.AddRepo(Repo{ID: "org/tuned", Refs: map[string]string{"main": c},
		Commits: map[string][]File{c: {{Path: "w.bin", Data: f.tuned, Xet: true}}}})
	f.baseHash = independentFileHash(f.base)
	f.tunedHash = independentFileHash(f.tuned)
	return f
}

// independentFileHash is the Xet file hash of data cut like the fake cuts.
func independentFileHash(data []byte) string {
	var nodes []xethash.Node
	for off := 0; off < len(data); off += XetChunkSize {
		c := data[off:min(off+XetChunkSize, len(data))]
		nodes = append(nodes, xethash.Node{Hash: xethash.Chunk(c), Size: uint64(len(c))})
	}
	return xethash.File(nodes).String()
}

func (f *casFixture) token(t *testing.T, repo string) xetclient.Token {
	t.Helper()
	resp, body := f.do(t, http.MethodGet, "/api/models/"+repo+"/xet-read-token/main", nil, bearer(opToken)...)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	var tok xetclient.Token
	require.NoError(t, json.Unmarshal(body, &tok))
	return tok
}

func TestCASDownloadsBothVersionsAndSharesXorbs(t *testing.T) {
	f := newCASFixture(t)
	resp, _ := f.do(t, http.MethodHead, "/org/base/resolve/main/w.bin", nil, bearer(opToken)...)
	require.Equal(t, f.baseHash, resp.Header.Get("X-Xet-Hash"), "the resolve answer names xet-core's file hash")
	assert.Contains(t, resp.Header.Get("Link"), f.h.CASURL()+"/v1/reconstructions/"+f.baseHash)

	for _, v1 := range []bool{false, true} {
		for _, tc := range []struct {
			repo, hash string
			data       []byte
		}{
			{"org/base", f.baseHash, f.base}, {"org/tuned", f.tunedHash, f.tuned},
		} {
			tok := f.token(t, tc.repo)
			require.Equal(t, f.h.CASURL(), tok.CasURL)
			c := &xetclient.Client{HTTP: f.c, V1: v1}
			got, err := c.Download(tok.CasURL, tok.AccessToken, tc.hash)
			require.NoError(t, err, "v1=%v %s", v1, tc.repo)
			require.Equal(t, tc.data, got, "v1=%v %s", v1, tc.repo)
		}
	}
	bx, tx := f.h.XorbHashes(f.baseHash), f.h.XorbHashes(f.tunedHash)
	require.Len(t, bx, 3)
	require.Len(t, tx, 4, "the fine-tune adds one xorb for its changed chunk")
	assert.Subset(t, tx, bx, "the fine-tune reuses every xorb of the base")
}

func TestCASMultiRangeAnswersMultipart(t *testing.T) {
	f := newCASFixture(t)
	tok := f.token(t, "org/tuned")
	rec, err := (&xetclient.Client{HTTP: f.c}).Reconstruct(tok.CasURL, tok.AccessToken, f.tunedHash)
	require.NoError(t, err)
	var multi *xetclient.Fetch
	for _, fs := range rec.Xorbs {
		for i := range fs {
			if len(fs[i].Ranges) > 1 {
				multi = &fs[i]
			}
		}
	}
	require.NotNil(t, multi, "the fine-tune skips a chunk of a shared xorb: two ranges in one entry")
	req, _ := http.NewRequest(http.MethodGet, multi.URL, nil)
	u, _ := url.Parse(multi.URL)
	signed := u.Query().Get("X-Xet-Signed-Range")
	req.Header.Set("Range", signed)
	resp, _ := f.c.Do(req)
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	assert.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), "multipart/byteranges"), resp.Header.Get("Content-Type"))
	resp.Body.Close()

	// Only the signed range set is accepted, and no Authorization.
	first, _, _ := strings.Cut(signed, ",")
	for _, tc := range []struct {
		name, rng, auth string
		want            int
	}{
		{"subset of the signed ranges", first, "", http.StatusForbidden},
		{"no range", "", "", http.StatusForbidden},
		{"authorization next to the signature", signed, "Bearer " + tok.AccessToken, http.StatusBadRequest},
	} {
		req, _ := http.NewRequest(http.MethodGet, multi.URL, nil)
		if tc.rng != "" {
			req.Header.Set("Range", tc.rng)
		}
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := f.c.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, tc.want, resp.StatusCode, tc.name)
	}
}

func TestCASExpiredXorbURLRequeried(t *testing.T) {
	f := newCASFixture(t)
	tok := f.token(t, "org/base")
	c := &xetclient.Client{HTTP: f.c}
	c.BeforeFetch = func(done int) {
		if done == 1 {
			f.h.ExpireXorbURLs()
		}
	}
	got, err := c.Download(tok.CasURL, tok.AccessToken, f.baseHash)
	require.NoError(t, err)
	require.Equal(t, f.base, got)
	assert.Equal(t, 1, c.Retries, "a 403 on an expired xorb URL makes the client re-query once")
}

func TestCASReconstructionRefusals(t *testing.T) {
	f := newCASFixture(t)
	baseTok := f.token(t, "org/base")
	rec := func(token, hash string, hdr ...string) int {
		h := append([]string{"Authorization", "Bearer " + token}, hdr...)
		resp, _ := f.do(t, http.MethodGet, f.h.CASURL()+"/v2/reconstructions/"+hash, nil, h...)
		return resp.StatusCode
	}
	assert.Equal(t, http.StatusOK, rec(baseTok.AccessToken, f.baseHash))
	assert.Equal(t, http.StatusUnauthorized, rec("xet-jwt-forged", f.baseHash))
	assert.Equal(t, http.StatusForbidden, rec(baseTok.AccessToken, f.tunedHash), "a token of one repo does not open another's file")
	assert.Equal(t, http.StatusNotFound, rec(baseTok.AccessToken, strings.Repeat("0", 64)))
	assert.Equal(t, http.StatusRequestedRangeNotSatisfiable, rec(baseTok.AccessToken, f.baseHash, "Range", "bytes=999999999-"))
	assert.Contains(t, f.h.XetTokens(), baseTok.AccessToken)
}

func TestCASFileRange(t *testing.T) {
	f := newCASFixture(t)
	tok := f.token(t, "org/base")
	resp, body := f.do(t, http.MethodGet, tok.CasURL+"/v2/reconstructions/"+f.baseHash, nil,
		"Authorization", "Bearer "+tok.AccessToken, "Range", "bytes=200000-210000")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var rec xetclient.Reconstruction
	require.NoError(t, json.Unmarshal(body, &rec))
	// Byte 200000 is in the second term (chunks 8-15 of the file, the
	// second xorb), which starts at byte 8*XetChunkSize.
	require.Len(t, rec.Terms, 1)
	assert.Equal(t, f.h.XorbHashes(f.baseHash)[1], rec.Terms[0].Hash)
	assert.Equal(t, int64(200000-8*XetChunkSize), rec.OffsetIntoFirstRange)
}

// TestCASChunkAndXorbSizesAreOptions: a Hub with its own chunk and xorb
// sizes cuts files with them (the hash names that cut), packs that many
// chunks per xorb, and serves the file byte for byte; XorbBodyBytes counts
// what the CAS sent.
func TestCASChunkAndXorbSizesAreOptions(t *testing.T) {
	const chunk, perXorb = 64 << 10, 4
	h := New(t, Options{Token: opToken, XetChunkSize: chunk, XetXorbChunks: perXorb})
	data := RandomData(77, 10*chunk+1) // 11 chunks: xorbs of 4, 4, 3
	c := Commit("sizes")
	h.AddRepo(Repo{ID: "org/big", Refs: map[string]string{"main": c},
		Commits: map[string][]File{c: {{Path: "w.bin", Data: data, Xet: true}}}})
	f := &fixture{h: h, c: h.srv.Client(t)}

	var nodes []xethash.Node
	for off := 0; off < len(data); off += chunk {
		b := data[off:min(off+chunk, len(data))]
		nodes = append(nodes, xethash.Node{Hash: xethash.Chunk(b), Size: uint64(len(b))})
	}
	want := xethash.File(nodes).String()
	resp, _ := f.do(t, http.MethodHead, "/org/big/resolve/main/w.bin", nil, bearer(opToken)...)
	require.Equal(t, want, resp.Header.Get("X-Xet-Hash"), "the hash names the Hub's own cut")
	require.Len(t, h.XorbHashes(want), 3)

	tok := (&casFixture{fixture: f}).token(t, "org/big")
	got, err := (&xetclient.Client{HTTP: f.c}).Download(tok.CasURL, tok.AccessToken, want)
	require.NoError(t, err)
	require.Equal(t, data, got)
	var sent int64
	for _, x := range h.XorbHashes(want) {
		sent += h.XorbBodyBytes(x)
	}
	assert.Equal(t, int64(len(data)+11*ChunkHeaderSize), sent, "each chunk once, behind its header")

	pc := &xetclient.Client{HTTP: f.c, Parallel: 3}
	got, err = pc.Download(tok.CasURL, tok.AccessToken, want)
	require.NoError(t, err)
	require.Equal(t, data, got, "xorbs fetched in parallel assemble the same bytes")
	assert.Equal(t, 3, pc.Requests)
}
