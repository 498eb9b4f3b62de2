package hfhub

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/modelgate/modelgate/digest"
	"github.com/modelgate/modelgate/indexkeys"
)

// Headers of the Hub's resolve answers that clients read.
const (
	HeaderRepoCommit   = "X-Repo-Commit"
	HeaderLinkedEtag   = "X-Linked-Etag"
	HeaderLinkedSize   = "X-Linked-Size"
	HeaderXetHash      = "X-Xet-Hash"
	HeaderErrorCode    = "X-Error-Code"
	HeaderErrorMessage = "X-Error-Message"
)

// FileMeta is what the gateway needs to serve a file: the commit it
// resolved to, the content id and the size. It is immutable for a commit.
type FileMeta struct {
	Commit string
	Digest digest.Digest
	Size   int64
	// XetHash is the file's Xet hash when the Hub stores it in Xet ("":
	// not Xet-backed, or learned before the gateway kept it).
	XetHash string
}

// storedMeta is FileMeta as kept in the index.
type storedMeta struct {
	Commit string `json:"commit"`
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
	Xet    string `json:"xet,omitempty"`
}

// ErrNotContentAddressed is returned when an answer's ETag is neither a
// sha256 nor a Git blob id, so the bytes cannot be verified or shared.
var ErrNotContentAddressed = errors.New("file etag is not a content hash")

// ParseFileMeta reads a file's metadata from the final answer of a HEAD on
// a resolve URL (after following same-host redirects), exactly as
// huggingface_hub does: commit from X-Repo-Commit; content id from
// X-Linked-Etag, else ETag; size from X-Linked-Size, else Content-Length
// unless the answer is a redirect (whose body length means nothing).
func ParseFileMeta(h http.Header, status int) (FileMeta, error) {
	commit := h.Get(HeaderRepoCommit)
	if !IsCommit(commit) {
		return FileMeta{}, fmt.Errorf("upstream answer has no valid %s", HeaderRepoCommit)
	}
	etag := h.Get(HeaderLinkedEtag)
	if etag == "" {
		etag = h.Get("ETag")
	}
	etag = strings.Trim(strings.TrimPrefix(etag, "W/"), `"`)
	var (
		d   digest.Digest
		err error
	)
	switch len(etag) {
	case 64:
		d, err = digest.New(digest.SHA256, etag)
	case 40:
		d, err = digest.New(digest.GitSHA1, etag)
	default:
		err = ErrNotContentAddressed
	}
	if err != nil {
		return FileMeta{}, fmt.Errorf("%w: %q", ErrNotContentAddressed, etag)
	}
	sizeStr := h.Get(HeaderLinkedSize)
	if sizeStr == "" && (status < 300 || status > 399) {
		sizeStr = h.Get("Content-Length")
	}
	size, err := strconv.ParseInt(sizeStr, 10, 64)
	if err != nil || size < 0 {
		return FileMeta{}, fmt.Errorf("upstream answer has no valid file size")
	}
	xh := h.Get(HeaderXetHash)
	if !sha256Re.MatchString(xh) {
		xh = "" // not a Xet hash the gateway could serve
	}
	return FileMeta{Commit: commit, Digest: d, Size: size, XetHash: xh}, nil
}

// ETag is the quoted content id, as the Hub sends it.
func (m FileMeta) ETag() string { return `"` + m.Digest.Hex + `"` }

// MarshalMeta encodes m for the index.
func MarshalMeta(m FileMeta) []byte {
	b, _ := json.Marshal(storedMeta{Commit: m.Commit, Digest: m.Digest.String(), Size: m.Size, Xet: m.XetHash})
	return b
}

// UnmarshalMeta decodes what MarshalMeta produced.
func UnmarshalMeta(b []byte) (FileMeta, error) {
	var sm storedMeta
	if err := json.Unmarshal(b, &sm); err != nil {
		return FileMeta{}, fmt.Errorf("decoding file metadata: %w", err)
	}
	d, err := digest.Parse(sm.Digest)
	if err != nil {
		return FileMeta{}, fmt.Errorf("decoding file metadata: %w", err)
	}
	if !sha256Re.MatchString(sm.Xet) {
		sm.Xet = ""
	}
	return FileMeta{Commit: sm.Commit, Digest: d, Size: sm.Size, XetHash: sm.Xet}, nil
}

// Index keys: indexkeys owns their layout; these take the Hub's types.
// Repo ids, revisions and paths are validated before they get here, and
// the NUL separator cannot occur in any of them.

// XetFileKey is the index key recording that the gateway saw repo hold
// the Xet file xetHash at commit (a resolve answer named it): what a
// gateway Xet token for that repo and commit may reconstruct.
func XetFileKey(xetHash string, repo Repo, commit string) string {
	return indexkeys.HFXetKey(xetHash, string(repo.Type), repo.ID, commit)
}

// SeenKey is the index key recording that the gateway saw repo hold a
// file with content d (a resolve answer named it); scoped by principal,
// it says who may have the blob by its content id alone.
func SeenKey(d digest.Digest, repo Repo) string {
	return indexkeys.HFSeenKey(d.String(), repo.URLPrefix()+repo.ID)
}

// SeenPrefix starts every SeenKey of d; what follows it is the repo as
// written in URLs ("org/name", "datasets/org/name").
func SeenPrefix(d digest.Digest) string { return indexkeys.HFSeenPrefix(d.String()) }

// FileKey is the index key of a file at a commit.
func FileKey(repo Repo, commit, path string) string {
	return FileKeyPrefix(repo, commit) + path
}

// RevisionKey is the index key of a revision's commit.
func RevisionKey(repo Repo, rev string) string {
	return indexkeys.HFRevKey(string(repo.Type), repo.ID, rev)
}

// LastRevisionKey is the index key of the last commit a revision was
// seen at, kept without expiry for when the upstream is down.
func LastRevisionKey(repo Repo, rev string) string {
	return indexkeys.HFLastRevKey(string(repo.Type), repo.ID, rev)
}

// APIKey is the index key of a cached API answer about repo at rev (""
// for a repo's info without /revision/), given a digest of the request
// that produced it. The repo and revision lead the key so that a purge
// finds a repo's answers by prefix (see APIKeyPrefix).
func APIKey(repo Repo, rev, requestDigest string) string {
	return indexkeys.HFAPIKey(string(repo.Type), repo.ID, rev, requestDigest)
}

// APIKeyPrefix starts every APIKey of repo; what follows it is the
// revision, a NUL, and the request digest.
func APIKeyPrefix(repo Repo) string {
	return indexkeys.HFAPIPrefix(string(repo.Type), repo.ID)
}

// Pin is a Hub pin (cache.pinned, parsed by the config package): a
// repository, and optionally one revision of it.
type Pin struct {
	Repo     Repo
	Revision string // "" pins every cached revision
}

// FileKeyPrefix is the index key prefix of a repo's files at commit, or at
// every commit when commit is "".
func FileKeyPrefix(repo Repo, commit string) string {
	return indexkeys.HFFilePrefix(string(repo.Type), repo.ID, commit)
}
