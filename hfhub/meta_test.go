package hfhub

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/digest"
)

const (
	testSHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	testSHA1   = "95d09f2b10159347eece71399a7e2e907ea3df4f"
	otherSHA1  = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
)

// hdr builds a header from name/value pairs, canonicalising names as a
// received header would be.
func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func sha256Digest(t *testing.T, hex string) digest.Digest {
	t.Helper()
	d, err := digest.New(digest.SHA256, hex)
	require.NoError(t, err)
	return d
}

func gitDigest(t *testing.T, hex string) digest.Digest {
	t.Helper()
	d, err := digest.New(digest.GitSHA1, hex)
	require.NoError(t, err)
	return d
}

func TestParseFileMeta_ReadsCommitContentIDAndSizeLikeHuggingfaceHub(t *testing.T) {
	tests := []struct {
		name   string
		status int
		h      http.Header
		want   FileMeta
	}{
		{
			name:   "LFS redirect uses the linked etag and size, not the redirect body length",
			status: http.StatusFound,
			h: hdr(
				HeaderRepoCommit, testCommit,
				HeaderLinkedEtag, `"`+testSHA256+`"`,
				HeaderLinkedSize, "5000000000",
				"ETag", `"`+otherSHA1+`"`,
				"Content-Length", "913",
				"Location", "https://cdn.hub.example/repos/ab/cd/x/"+testSHA256,
			),
			want: FileMeta{Commit: testCommit, Size: 5_000_000_000},
		},
		{
			name:   "small git file answered 200 uses ETag and Content-Length",
			status: http.StatusOK,
			h: hdr(
				HeaderRepoCommit, testCommit,
				"ETag", `"`+testSHA1+`"`,
				"Content-Length", "1234",
			),
			want: FileMeta{Commit: testCommit, Size: 1234},
		},
		{
			name:   "weak ETag prefix is stripped",
			status: http.StatusOK,
			h: hdr(
				HeaderRepoCommit, testCommit,
				"ETag", `W/"`+testSHA1+`"`,
				"Content-Length", "10",
			),
			want: FileMeta{Commit: testCommit, Size: 10},
		},
		{
			name:   "weak linked etag prefix is stripped",
			status: http.StatusFound,
			h: hdr(
				HeaderRepoCommit, testCommit,
				HeaderLinkedEtag, `W/"`+testSHA256+`"`,
				HeaderLinkedSize, "7",
			),
			want: FileMeta{Commit: testCommit, Size: 7},
		},
		{
			name:   "unquoted etag is accepted",
			status: http.StatusOK,
			h: hdr(
				HeaderRepoCommit, testCommit,
				"ETag", testSHA1,
				"Content-Length", "3",
			),
			want: FileMeta{Commit: testCommit, Size: 3},
		},
		{
			name:   "upper-case hex etag is lower-cased",
			status: http.StatusOK,
			h: hdr(
				HeaderRepoCommit, testCommit,
				"ETag", `"`+strings.ToUpper(testSHA256)+`"`,
				"Content-Length", "3",
			),
			want: FileMeta{Commit: testCommit, Size: 3},
		},
		{
			name:   "empty file",
			status: http.StatusOK,
			h: hdr(
				HeaderRepoCommit, testCommit,
				"ETag", `"`+otherSHA1+`"`,
				"Content-Length", "0",
			),
			want: FileMeta{Commit: testCommit, Size: 0},
		},
		{
			name:   "linked size wins over Content-Length on a 200 too",
			status: http.StatusOK,
			h: hdr(
				HeaderRepoCommit, testCommit,
				HeaderLinkedEtag, `"`+testSHA256+`"`,
				HeaderLinkedSize, "42",
				"Content-Length", "913",
			),
			want: FileMeta{Commit: testCommit, Size: 42},
		},
		{
			name:   "307 with linked metadata",
			status: http.StatusTemporaryRedirect,
			h: hdr(
				HeaderRepoCommit, testCommit,
				HeaderLinkedEtag, `"`+testSHA256+`"`,
				HeaderLinkedSize, "1",
			),
			want: FileMeta{Commit: testCommit, Size: 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFileMeta(tc.h, tc.status)
			require.NoError(t, err)
			// The digest kind follows the etag length.
			etag := tc.h.Get(HeaderLinkedEtag)
			if etag == "" {
				etag = tc.h.Get("ETag")
			}
			etag = strings.ToLower(strings.Trim(strings.TrimPrefix(etag, "W/"), `"`))
			if len(etag) == 64 {
				tc.want.Digest = sha256Digest(t, etag)
			} else {
				tc.want.Digest = gitDigest(t, etag)
			}
			assert.Equal(t, tc.want, got)
			assert.Equal(t, `"`+etag+`"`, got.ETag())
		})
	}
}

func TestParseFileMeta_PicksDigestAlgorithmByLength(t *testing.T) {
	m, err := ParseFileMeta(hdr(HeaderRepoCommit, testCommit, HeaderLinkedEtag, `"`+testSHA256+`"`, HeaderLinkedSize, "1"), http.StatusFound)
	require.NoError(t, err)
	assert.Equal(t, digest.SHA256, m.Digest.Algo)

	m, err = ParseFileMeta(hdr(HeaderRepoCommit, testCommit, "ETag", `"`+testSHA1+`"`, "Content-Length", "1"), http.StatusOK)
	require.NoError(t, err)
	assert.Equal(t, digest.GitSHA1, m.Digest.Algo)
}

func TestParseFileMeta_RejectsAnswersItCannotTrust(t *testing.T) {
	tests := []struct {
		name              string
		status            int
		h                 http.Header
		notContentAddress bool // the error must be ErrNotContentAddressed
		msg               string
	}{
		{
			name:   "missing X-Repo-Commit",
			status: http.StatusOK,
			h:      hdr("ETag", `"`+testSHA1+`"`, "Content-Length", "1"),
			msg:    HeaderRepoCommit,
		},
		{
			name:   "branch name instead of a commit",
			status: http.StatusOK,
			h:      hdr(HeaderRepoCommit, "main", "ETag", `"`+testSHA1+`"`, "Content-Length", "1"),
			msg:    HeaderRepoCommit,
		},
		{
			name:   "short commit",
			status: http.StatusOK,
			h:      hdr(HeaderRepoCommit, testCommit[:12], "ETag", `"`+testSHA1+`"`, "Content-Length", "1"),
			msg:    HeaderRepoCommit,
		},
		{
			name:   "upper-case commit",
			status: http.StatusOK,
			h:      hdr(HeaderRepoCommit, strings.ToUpper(testCommit), "ETag", `"`+testSHA1+`"`, "Content-Length", "1"),
			msg:    HeaderRepoCommit,
		},
		{
			name:              "ETag that is no hash",
			status:            http.StatusOK,
			h:                 hdr(HeaderRepoCommit, testCommit, "ETag", `"abc-123"`, "Content-Length", "1"),
			notContentAddress: true,
		},
		{
			name:              "missing ETag",
			status:            http.StatusOK,
			h:                 hdr(HeaderRepoCommit, testCommit, "Content-Length", "1"),
			notContentAddress: true,
		},
		{
			name:              "64 characters that are not hex",
			status:            http.StatusFound,
			h:                 hdr(HeaderRepoCommit, testCommit, HeaderLinkedEtag, `"`+strings.Repeat("z", 64)+`"`, HeaderLinkedSize, "1"),
			notContentAddress: true,
		},
		{
			name:              "40 characters that are not hex",
			status:            http.StatusOK,
			h:                 hdr(HeaderRepoCommit, testCommit, "ETag", `"`+strings.Repeat("z", 40)+`"`, "Content-Length", "1"),
			notContentAddress: true,
		},
		{
			name:              "md5-like etag",
			status:            http.StatusOK,
			h:                 hdr(HeaderRepoCommit, testCommit, "ETag", `"d41d8cd98f00b204e9800998ecf8427e"`, "Content-Length", "1"),
			notContentAddress: true,
		},
		{
			name:   "redirect without X-Linked-Size does not trust Content-Length",
			status: http.StatusFound,
			h:      hdr(HeaderRepoCommit, testCommit, HeaderLinkedEtag, `"`+testSHA256+`"`, "Content-Length", "913"),
			msg:    "size",
		},
		{
			name:   "307 without X-Linked-Size",
			status: http.StatusTemporaryRedirect,
			h:      hdr(HeaderRepoCommit, testCommit, "ETag", `"`+testSHA1+`"`, "Content-Length", "913"),
			msg:    "size",
		},
		{
			name:   "200 without any size",
			status: http.StatusOK,
			h:      hdr(HeaderRepoCommit, testCommit, "ETag", `"`+testSHA1+`"`),
			msg:    "size",
		},
		{
			name:   "negative size",
			status: http.StatusFound,
			h:      hdr(HeaderRepoCommit, testCommit, HeaderLinkedEtag, `"`+testSHA256+`"`, HeaderLinkedSize, "-1"),
			msg:    "size",
		},
		{
			name:   "non-numeric size",
			status: http.StatusOK,
			h:      hdr(HeaderRepoCommit, testCommit, "ETag", `"`+testSHA1+`"`, "Content-Length", "12kB"),
			msg:    "size",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseFileMeta(tc.h, tc.status)
			require.Error(t, err)
			assert.Equal(t, tc.notContentAddress, errors.Is(err, ErrNotContentAddressed), "errors.Is(err, ErrNotContentAddressed) for %v", err)
			if tc.msg != "" {
				assert.Contains(t, err.Error(), tc.msg)
			}
		})
	}
}

func TestMarshalMeta_RoundTripsThroughUnmarshalMeta(t *testing.T) {
	tests := []struct {
		name string
		meta FileMeta
	}{
		{"sha256 LFS file", FileMeta{Commit: testCommit, Digest: sha256Digest(t, testSHA256), Size: 5_000_000_000}},
		{"git blob", FileMeta{Commit: testCommit2, Digest: gitDigest(t, testSHA1), Size: 1234}},
		{"empty file", FileMeta{Commit: testCommit, Digest: gitDigest(t, otherSHA1), Size: 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := MarshalMeta(tc.meta)
			got, err := UnmarshalMeta(b)
			require.NoError(t, err)
			assert.Equal(t, tc.meta, got)
			assert.Equal(t, tc.meta.ETag(), got.ETag())
		})
	}
}

func TestUnmarshalMeta_RejectsGarbage(t *testing.T) {
	tests := []struct {
		name string
		in   string
	}{
		{"empty", ""},
		{"not JSON", "hello"},
		{"wrong shape", `[1,2]`},
		{"digest without algorithm", `{"commit":"` + testCommit + `","digest":"` + testSHA256 + `","size":1}`},
		{"unknown algorithm", `{"commit":"` + testCommit + `","digest":"md5:` + testSHA256 + `","size":1}`},
		{"digest of the wrong length", `{"commit":"` + testCommit + `","digest":"sha256:` + testSHA1 + `","size":1}`},
		{"missing digest", `{"commit":"` + testCommit + `","size":1}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := UnmarshalMeta([]byte(tc.in))
			require.Error(t, err)
			assert.Contains(t, err.Error(), "decoding file metadata")
		})
	}
}

func TestKeys_AreDistinctForDistinctInputsAndStable(t *testing.T) {
	type fileIn struct {
		repo         Repo
		commit, path string
	}
	type revIn struct {
		repo Repo
		rev  string
	}
	files := []fileIn{
		{Repo{Model, "org/model"}, testCommit, "config.json"},
		{Repo{Dataset, "org/model"}, testCommit, "config.json"},
		{Repo{Space, "org/model"}, testCommit, "config.json"},
		{Repo{Model, "org/model2"}, testCommit, "config.json"},
		{Repo{Model, "org/model"}, testCommit2, "config.json"},
		{Repo{Model, "org/model"}, testCommit, "sub/config.json"},
		{Repo{Model, "org/model"}, testCommit, "config.json.bak"},
		{Repo{Model, "org"}, testCommit, "model/config.json"},
		{Repo{Model, "org/model/x"}, testCommit, "config.json"},
	}
	revs := []revIn{
		{Repo{Model, "org/model"}, "main"},
		{Repo{Dataset, "org/model"}, "main"},
		{Repo{Space, "org/model"}, "main"},
		{Repo{Model, "org/model"}, "refs/pr/1"},
		{Repo{Model, "org/model"}, "refs/pr/10"},
		{Repo{Model, "org"}, "model/main"},
		{Repo{Model, "org/model"}, testCommit},
	}
	apis := []string{"", "abc", "abd", testSHA256}

	seen := map[string]string{}
	add := func(key, what string) {
		if prev, dup := seen[key]; dup {
			t.Errorf("key %q of %s collides with %s", key, what, prev)
		}
		seen[key] = what
	}
	for _, f := range files {
		k := FileKey(f.repo, f.commit, f.path)
		assert.Equal(t, k, FileKey(f.repo, f.commit, f.path), "FileKey is deterministic")
		add(k, "FileKey"+strings.Join([]string{string(f.repo.Type), f.repo.ID, f.commit, f.path}, ","))
	}
	for _, r := range revs {
		k := RevisionKey(r.repo, r.rev)
		assert.Equal(t, k, RevisionKey(r.repo, r.rev), "RevisionKey is deterministic")
		add(k, "RevisionKey"+strings.Join([]string{string(r.repo.Type), r.repo.ID, r.rev}, ","))
	}
	for _, a := range apis {
		k := APIKey(Repo{Model, "a/b"}, "main", a)
		assert.Equal(t, k, APIKey(Repo{Model, "a/b"}, "main", a), "APIKey is deterministic")
		add(k, "APIKey("+a+")")
	}
	assert.Len(t, seen, len(files)+len(revs)+len(apis))

	t.Run("key kinds never share a prefix", func(t *testing.T) {
		f := FileKey(Repo{Model, "a"}, testCommit, "b")
		r := RevisionKey(Repo{Model, "a"}, testCommit)
		a := APIKey(Repo{Model, "a"}, testCommit, "x")
		assert.False(t, strings.HasPrefix(f, r) || strings.HasPrefix(r, f))
		assert.False(t, strings.HasPrefix(a, r) || strings.HasPrefix(a, f))
		// A repo's answers are found by its prefix, and only its own.
		assert.True(t, strings.HasPrefix(a, APIKeyPrefix(Repo{Model, "a"})))
		assert.False(t, strings.HasPrefix(APIKey(Repo{Model, "ab"}, "", "x"), APIKeyPrefix(Repo{Model, "a"})))
		assert.False(t, strings.HasPrefix(APIKey(Repo{Dataset, "a"}, "", "x"), APIKeyPrefix(Repo{Model, "a"})))
	})
}
