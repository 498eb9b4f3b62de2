package fakehub

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"path"
	"sort"
	"strconv"
	"strings"
)

// Repository types understood by the fake. They double as the singular of the
// "{type}s" segment in API routes ("models", "datasets", "spaces").
const (
	TypeModel   = "model"
	TypeDataset = "dataset"
	TypeSpace   = "space"
)

// File is one file of a repository at one commit.
type File struct {
	// Path is the repo-relative path, "/"-separated, e.g. "sub dir/a.bin".
	Path string
	Data []byte
	// LFS files are answered with a 302 to the CDN and identified by their
	// sha256 (X-Linked-Etag); non-LFS files are small git blobs answered with a
	// relative 307 to /api/resolve-cache/... and identified by their git sha1.
	LFS bool
	// Xet adds the Xet metadata (X-Xet-Hash, Link rel="xet-auth" and
	// rel="xet-reconstruction-info", tree "xetHash") on top of LFS. Xet implies
	// LFS: a Xet file is always served through the CDN.
	Xet bool
}

// Repo describes one repository. Refs and Commits are copied by AddRepo, the
// file contents are not: callers must not mutate File.Data afterwards.
type Repo struct {
	Type    string            // "model" (default when empty), "dataset", "space"
	ID      string            // "org/name" or legacy "name"
	Refs    map[string]string // revision name -> 40-hex commit, e.g. "main", "refs/pr/1", "v1.0"
	Commits map[string][]File // commit -> files at that commit
	Gated   bool              // needs Options.Token; see the package doc for the status matrix
	Private bool              // invisible to everyone but Options.Token
}

// Commit returns a deterministic 40-hex commit id derived from seed, so tests
// can name commits without hard-coding hashes.
func Commit(seed string) string {
	sum := sha1.Sum([]byte(seed))
	return hex.EncodeToString(sum[:])
}

// SHA256Hex is the lower-case hex sha256 of b: the etag the Hub uses for LFS
// and Xet files.
func SHA256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// GitBlobSHA1 is git's object id of b (sha1 of "blob <len>\x00<content>"): the
// etag the Hub uses for small, non-LFS files.
func GitBlobSHA1(b []byte) string {
	h := sha1.New()
	h.Write([]byte("blob " + strconv.Itoa(len(b)) + "\x00"))
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// RandomData returns n deterministic pseudo-random bytes for seed. It uses a
// ChaCha8 stream, which fills 64 MiB in tens of milliseconds, so tests can
// build large blobs without checking them in.
func RandomData(seed int64, n int) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], uint64(seed))
	copy(key[8:], "fakehub-random-data-v1")
	out := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(out) // ChaCha8.Read never fails
	return out
}

// derivedHex returns a 64-hex value derived from parts. It gives the fake
// stable identifiers (Xet hashes, CDN etags, repo keys) that look real but can
// never collide with the content sha256 they are derived from.
func derivedHex(parts ...string) string {
	return SHA256Hex([]byte("fakehub\x00" + strings.Join(parts, "\x00")))
}

// isHex reports whether s is exactly n lower-case hex digits.
func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// fileState is a File with every identifier the Hub and the CDN need
// precomputed, so handlers never hash large blobs on the request path.
type fileState struct {
	File
	size        int64
	sha256      string // LFS only
	gitOID      string // git object id: blob sha1 of the content, or of the LFS pointer
	etag        string // unquoted: sha256 for LFS, gitOID for small files
	xetHash     string // Xet only
	pointerSize int
}

// repoState is an immutable snapshot of one repository. AddRepo replaces the
// whole value, so handlers can use it without holding the Hub's lock.
type repoState struct {
	Repo
	key     string                           // 64-hex stable key used in CDN paths
	files   map[string]map[string]*fileState // commit -> path -> file
	entries map[string][]treeEntry           // commit -> sorted files and directories (without lastCommit)
}

func normalizeType(t string) (string, error) {
	switch t {
	case "", TypeModel:
		return TypeModel, nil
	case TypeDataset, TypeSpace:
		return t, nil
	}
	return "", fmt.Errorf("unknown repo type %q (want model, dataset or space)", t)
}

func validRepoID(id string) bool {
	segs := strings.Split(id, "/")
	if len(segs) < 1 || len(segs) > 2 {
		return false
	}
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return false
		}
	}
	return true
}

func validFilePath(p string) bool {
	if p == "" || strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") {
		return false
	}
	for _, s := range strings.Split(p, "/") {
		if s == "" || s == "." || s == ".." {
			return false
		}
	}
	return true
}

// newRepoState validates r and precomputes everything handlers need; Xet
// files are cut into chunks of chunkSize bytes.
func newRepoState(r Repo, chunkSize int) (*repoState, error) {
	typ, err := normalizeType(r.Type)
	if err != nil {
		return nil, fmt.Errorf("repo %q: %w", r.ID, err)
	}
	if !validRepoID(r.ID) {
		return nil, fmt.Errorf("repo id %q: want \"org/name\" or \"name\"", r.ID)
	}
	rs := &repoState{
		key:     derivedHex("repo-key", typ, r.ID),
		files:   make(map[string]map[string]*fileState, len(r.Commits)),
		entries: make(map[string][]treeEntry, len(r.Commits)),
	}
	rs.Repo = Repo{Type: typ, ID: r.ID, Gated: r.Gated, Private: r.Private,
		Refs: make(map[string]string, len(r.Refs)), Commits: make(map[string][]File, len(r.Commits))}
	for name, c := range r.Refs {
		if !isHex(c, 40) {
			return nil, fmt.Errorf("repo %q: ref %q points to %q, want a lower-case 40-hex commit", r.ID, name, c)
		}
		rs.Refs[name] = c
	}
	for c, files := range r.Commits {
		if !isHex(c, 40) {
			return nil, fmt.Errorf("repo %q: commit %q is not lower-case 40-hex", r.ID, c)
		}
		rs.Commits[c] = append([]File(nil), files...)
		byPath := make(map[string]*fileState, len(files))
		for _, f := range files {
			if !validFilePath(f.Path) {
				return nil, fmt.Errorf("repo %q commit %s: invalid file path %q", r.ID, c, f.Path)
			}
			if _, dup := byPath[f.Path]; dup {
				return nil, fmt.Errorf("repo %q commit %s: duplicate file %q", r.ID, c, f.Path)
			}
			byPath[f.Path] = newFileState(f, chunkSize)
		}
		rs.files[c] = byPath
		entries, err := buildEntries(c, byPath)
		if err != nil {
			return nil, fmt.Errorf("repo %q commit %s: %w", r.ID, c, err)
		}
		rs.entries[c] = entries
	}
	return rs, nil
}

// lfsPointer is the git-lfs pointer text the Hub stores in git for an LFS
// file; its blob sha1 is the tree "oid" of LFS entries.
func lfsPointer(sha256hex string, size int64) string {
	return "version https://git-lfs.github.com/spec/v1\noid sha256:" + sha256hex + "\nsize " + strconv.FormatInt(size, 10) + "\n"
}

func newFileState(f File, chunkSize int) *fileState {
	if f.Xet {
		f.LFS = true
	}
	fs := &fileState{File: f, size: int64(len(f.Data))}
	if !f.LFS {
		fs.gitOID = GitBlobSHA1(f.Data)
		fs.etag = fs.gitOID
		return fs
	}
	fs.sha256 = SHA256Hex(f.Data)
	ptr := lfsPointer(fs.sha256, fs.size)
	fs.pointerSize = len(ptr)
	fs.gitOID = GitBlobSHA1([]byte(ptr))
	fs.etag = fs.sha256
	if f.Xet {
		_, fh := xetLayout(f.Data, chunkSize)
		fs.xetHash = fh.String()
	}
	return fs
}

// treeEntry is one element of the tree and paths-info JSON answers.
type treeEntry struct {
	Type       string      `json:"type"`
	OID        string      `json:"oid"`
	Size       int64       `json:"size"`
	Path       string      `json:"path"`
	LFS        *lfsInfo    `json:"lfs,omitempty"`
	XetHash    string      `json:"xetHash,omitempty"`
	LastCommit *lastCommit `json:"lastCommit,omitempty"`
}

type lfsInfo struct {
	OID         string `json:"oid"`
	Size        int64  `json:"size"`
	PointerSize int    `json:"pointerSize"`
}

type lastCommit struct {
	ID    string `json:"id"`
	Title string `json:"title"`
	Date  string `json:"date"`
}

// buildEntries lists every file and every implied directory of one commit,
// sorted by path, which is the order tree pagination walks.
func buildEntries(commit string, files map[string]*fileState) ([]treeEntry, error) {
	dirs := map[string]bool{}
	out := make([]treeEntry, 0, len(files))
	for p, f := range files {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
		e := treeEntry{Type: "file", OID: f.gitOID, Size: f.size, Path: p, XetHash: f.xetHash}
		if f.LFS {
			e.LFS = &lfsInfo{OID: f.sha256, Size: f.size, PointerSize: f.pointerSize}
		}
		out = append(out, e)
	}
	for d := range dirs {
		if _, clash := files[d]; clash {
			return nil, fmt.Errorf("%q is both a file and a directory", d)
		}
		out = append(out, treeEntry{Type: "directory", OID: derivedHex("tree", commit, d)[:40], Path: d})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// resolveRev maps a revision (ref name or known commit id) to a commit.
func (rs *repoState) resolveRev(rev string) (string, bool) {
	if c, ok := rs.Refs[rev]; ok {
		return c, true
	}
	if _, ok := rs.Commits[rev]; ok {
		return rev, true
	}
	return "", false
}
