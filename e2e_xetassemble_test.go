package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
	"github.com/modelgate/modelgate/xet/xetchunk"
)

// assembledSeries is the metric of plain-HTTP bytes assembled from xorbs.
const assembledSeries = "modelgate_xet_assembled_bytes_total"

// xetAssemblyFixture: two Xet-backed files of a little over 2 MiB
// (compressible text, so LZ4 chunks really are compressed), each in a repo
// of its own, and the gateway in mirror mode serving Xet for every file,
// with 1 MiB fill pieces so that a plain-HTTP fill asks its source for
// several ranges at once.
type xetAssemblyFixture struct {
	*xetFixture
	data map[string][]byte // repo -> model.bin
}

func newXetAssemblyFixture(t *testing.T, scheme xetchunk.Scheme) *xetAssemblyFixture {
	t.Helper()
	hub := fakehub.New(t, fakehub.Options{Token: operatorToken})
	hub.SetXetCompression(scheme) // for the files added from here on
	f := &xetAssemblyFixture{xetFixture: &xetFixture{hub: hub, rec: &fullRecorder{rt: &http.Transport{DisableCompression: true}}},
		data: map[string][]byte{}}
	commit := fakehub.Commit("xet-assemble")
	for i, repo := range []string{"org/model", "org/other"} {
		var b bytes.Buffer
		for row := 0; b.Len() < 2<<20+12345; row++ {
			fmt.Fprintf(&b, "%s row %07d: weight %d.%06d\n", repo, row, (row*(i+3))%7, (row*7919)%1000000)
		}
		data := b.Bytes()[:2<<20+12345]
		f.data[repo] = data
		hub.AddRepo(fakehub.Repo{ID: repo, Refs: map[string]string{"main": commit}, Commits: map[string][]fakehub.File{commit: {
			{Path: "model.bin", Data: data, Xet: true},
		}}})
	}
	var w1SHA string
	var err error
	f.w1, w1SHA, err = clientauth.Generate()
	require.NoError(t, err)
	f.g = startGateway(t, hub, func(c *config.Config) {
		c.HuggingFace.Xet = "serve"
		c.Clients.RequireKey = "all"
		c.Clients.Keys = []config.ClientKey{{Name: "w1", KeySHA256: w1SHA}}
		c.Upstream.FillPieceSize = 1 << 20
	})
	f.g.addSecrets(f.w1)
	f.rec.rt = &recordingTransport{rt: f.rec.rt, sink: f.g.Received}
	return f
}

func (f *xetAssemblyFixture) sha(repo string) string {
	s := sha256.Sum256(f.data[repo])
	return hex.EncodeToString(s[:])
}

// xetDownload downloads repo's model.bin over Xet through the gateway.
func (f *xetAssemblyFixture) xetDownload(t *testing.T, repo string) string {
	t.Helper()
	hash, links := f.discover(t, f.w1, "/"+repo+"/resolve/main/model.bin")
	require.Len(t, hash, 64)
	c := f.xetClient(f.w1)
	tok, err := c.GetToken(links["xet-auth"])
	require.NoError(t, err)
	got, err := c.Download(tok.CasURL, tok.AccessToken, hash)
	require.NoError(t, err)
	require.True(t, bytes.Equal(f.data[repo], got), "the Xet download is byte-exact")
	return hash
}

// xetDownloadOneRange fetches only the first xorb range set of repo's
// model.bin over Xet through the gateway: the file's ranges are then
// partly stored, provisional, not verified.
func (f *xetAssemblyFixture) xetDownloadOneRange(t *testing.T, repo string) {
	t.Helper()
	hash, links := f.discover(t, f.w1, "/"+repo+"/resolve/main/model.bin")
	c := f.xetClient(f.w1)
	tok, err := c.GetToken(links["xet-auth"])
	require.NoError(t, err)
	rec, err := c.Reconstruct(tok.CasURL, tok.AccessToken, hash)
	require.NoError(t, err)
	first := rec.Xorbs[rec.Terms[0].Hash][0]
	var specs []string
	for _, r := range first.Ranges {
		specs = append(specs, fmt.Sprintf("%d-%d", r.Bytes.Start, r.Bytes.End))
	}
	req, err := http.NewRequest(http.MethodGet, first.URL, nil)
	require.NoError(t, err)
	req.Header.Set("Range", "bytes="+strings.Join(specs, ","))
	resp, err := f.client().Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
}

// plainGET downloads repo's model.bin over plain HTTP from the gateway;
// rng, when set, is the Range header.
func (f *xetAssemblyFixture) plainGET(t *testing.T, repo, rng string) (*http.Response, []byte, error) {
	t.Helper()
	h := http.Header{"Authorization": {"Bearer " + f.w1}}
	if rng != "" {
		h.Set("Range", rng)
	}
	return f.g.do(t, http.MethodGet, "/"+repo+"/resolve/main/model.bin", h)
}

// TestPlainHTTPOfAXetFileIsAssembledFromItsVerifiedXorbs: once a file was
// downloaded over Xet through the gateway (its xorb ranges stored and
// verified against its Xet hash), a plain-HTTP download of it, whole or a
// Range of it, is assembled from those ranges — uncompressed, LZ4 and
// byte-grouped LZ4 chunks decoded — and checked against its sha256: the
// bytes are exact and the CDN serves none of them.
func TestPlainHTTPOfAXetFileIsAssembledFromItsVerifiedXorbs(t *testing.T) {
	for _, sc := range []xetchunk.Scheme{xetchunk.None, xetchunk.LZ4, xetchunk.ByteGrouping4LZ4} {
		t.Run(fmt.Sprint("scheme", sc), func(t *testing.T) {
			f := newXetAssemblyFixture(t, sc)
			model, other := f.data["org/model"], f.data["org/other"]
			f.xetDownload(t, "org/model")
			f.xetDownload(t, "org/other")

			resp, body, err := f.plainGET(t, "org/model", "")
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.True(t, bytes.Equal(model, body), "the assembled download is byte-exact")
			assert.Zero(t, f.hub.CDNBodyFetches(f.sha("org/model")), "no byte of it came from the CDN")
			assert.True(t, f.g.hasBlob(t, f.sha("org/model")), "verified against its sha256 and published")
			assert.Equal(t, float64(len(model)), f.g.metric(t, assembledSeries))

			// A Range of a file not in the blob cache yet: 206, exact.
			resp, body, err = f.plainGET(t, "org/other", "bytes=1048570-1100000")
			require.NoError(t, err)
			require.Equal(t, http.StatusPartialContent, resp.StatusCode)
			assert.Equal(t, fmt.Sprintf("bytes 1048570-1100000/%d", len(other)), resp.Header.Get("Content-Range"))
			require.True(t, bytes.Equal(other[1048570:1100001], body))
			assert.Zero(t, f.hub.CDNBodyFetches(f.sha("org/other")))
			assert.True(t, strings.Contains(f.g.Logs.String(), "assembling a plain-HTTP download from verified Xet xorb ranges"), "logged at debug")
		})
	}
}

// TestPlainHTTPOfAnUnverifiedXetFileComesFromTheCDN: a file only partly
// downloaded over Xet (its stored ranges provisional) is fetched from the
// CDN as before, whole or a Range of it, byte-exact, and nothing is
// assembled.
func TestPlainHTTPOfAnUnverifiedXetFileComesFromTheCDN(t *testing.T) {
	f := newXetAssemblyFixture(t, xetchunk.LZ4)
	model, other := f.data["org/model"], f.data["org/other"]
	f.xetDownloadOneRange(t, "org/model")
	f.xetDownloadOneRange(t, "org/other")

	resp, body, err := f.plainGET(t, "org/model", "")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.True(t, bytes.Equal(model, body))
	assert.Positive(t, f.hub.CDNBodyFetches(f.sha("org/model")), "from the CDN")

	resp, body, err = f.plainGET(t, "org/other", "bytes=2000000-")
	require.NoError(t, err)
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	require.True(t, bytes.Equal(other[2000000:], body))
	assert.Positive(t, f.hub.CDNBodyFetches(f.sha("org/other")))
	assert.Zero(t, f.g.metric(t, assembledSeries), "provisional ranges are never assembled")
}

// corruptStoredRanges flips the byte at offset at of up to max xorb range
// blobs on the gateway's disk, behind its back (after they verified).
func corruptStoredRanges(t *testing.T, g *gatewayUnderTest, at, max int) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(filepath.Join(g.DataDir, "blobs", "xet-range"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || n == max {
			return err
		}
		require.NoError(t, os.Chmod(p, 0o600))
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		b[at] ^= 0xff
		require.NoError(t, os.WriteFile(p, b, 0o600))
		n++
		return nil
	})
	require.NoError(t, err)
	return n
}

// TestPlainHTTPOfAXetFileDamagedOnDiskFinishesFromTheCDN: ranges damaged
// on disk after the file verified still decode (uncompressed chunks), but
// each chunk is held against the hash its file's check recorded before a
// byte of it is sent: the assembly stops at the first damaged chunk, the
// rest of that same download comes from the CDN, byte-exact, the damaged
// ranges are dropped, and over Xet they are fetched again.
func TestPlainHTTPOfAXetFileDamagedOnDiskFinishesFromTheCDN(t *testing.T) {
	f := newXetAssemblyFixture(t, xetchunk.None)
	model := f.data["org/model"]
	hash := f.xetDownload(t, "org/model")
	require.Positive(t, corruptStoredRanges(t, f.g, xetchunk.HeaderSize+100, 1<<30))

	resp, body, err := f.plainGET(t, "org/model", "")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.True(t, bytes.Equal(model, body), "no damaged byte sent: finished from the CDN")
	assert.Positive(t, f.hub.CDNBodyFetches(f.sha("org/model")))
	assert.True(t, f.g.hasBlob(t, f.sha("org/model")))
	assert.True(t, strings.Contains(f.g.Logs.String(), "the rest comes from upstream"), "logged")
	require.Eventually(t, func() bool { return strings.Contains(f.g.Logs.String(), "its damaged ranges were dropped") },
		10*time.Second, 10*time.Millisecond)

	resp, body, err = f.plainGET(t, "org/model", "bytes=100-")
	require.NoError(t, err)
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	require.True(t, bytes.Equal(model[100:], body))

	// The damaged ranges were dropped: over Xet they are fetched again.
	x := f.hub.XorbHashes(hash)[0]
	fetches := f.hub.XorbFetches(x)
	f.xetDownload(t, "org/model")
	assert.Greater(t, f.hub.XorbFetches(x), fetches)
}

// TestPlainHTTPOfAXetFileWhoseChunksDoNotDecodeFinishesFromTheCDN: an LZ4
// chunk damaged on disk after the file verified (its frame's magic
// number) stops the assembly where it is; the rest of that same download
// comes from the CDN, byte-exact, and the damaged ranges are dropped (over
// Xet they are fetched again).
func TestPlainHTTPOfAXetFileWhoseChunksDoNotDecodeFinishesFromTheCDN(t *testing.T) {
	f := newXetAssemblyFixture(t, xetchunk.LZ4)
	model := f.data["org/model"]
	hash := f.xetDownload(t, "org/model")
	// One range: the check that a chunk fails to decode drops it (with the
	// ranges it read before), and a Xet download fetches them again.
	require.Equal(t, 1, corruptStoredRanges(t, f.g, xetchunk.HeaderSize, 1))

	resp, body, err := f.plainGET(t, "org/model", "")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.True(t, bytes.Equal(model, body), "finished from the CDN")
	assert.Positive(t, f.hub.CDNBodyFetches(f.sha("org/model")))
	assert.True(t, strings.Contains(f.g.Logs.String(), "the rest comes from upstream"), "logged")
	// The reader has its final byte once the blob verified; the check of
	// the file's ranges runs as the fill ends, just after.
	require.Eventually(t, func() bool { return strings.Contains(f.g.Logs.String(), "its damaged ranges were dropped") },
		10*time.Second, 10*time.Millisecond)

	fetches := 0
	for _, x := range f.hub.XorbHashes(hash) {
		fetches += f.hub.XorbFetches(x)
	}
	f.xetDownload(t, "org/model")
	after := 0
	for _, x := range f.hub.XorbHashes(hash) {
		after += f.hub.XorbFetches(x)
	}
	assert.Greater(t, after, fetches, "the damaged range was dropped, and fetched again")
}
