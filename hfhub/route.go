// Package hfhub is modelgate's knowledge of the Hugging Face Hub protocol:
// the URL grammar of the routes a mirror serves, what makes a repo id,
// revision or file path valid, how file metadata is read from resolve
// answers, and how Xet hints are removed so stock clients download over
// plain HTTP. It performs no I/O.
package hfhub

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/modelgate/modelgate/redact"
)

// RepoType is the kind of repository.
type RepoType string

const (
	Model   RepoType = "model"
	Dataset RepoType = "dataset"
	Space   RepoType = "space"
)

// Repo identifies a repository.
type Repo struct {
	Type RepoType
	ID   string // "namespace/name" or a legacy bare "name"
}

// URLPrefix is what precedes the repo id in resolve URLs.
func (r Repo) URLPrefix() string {
	switch r.Type {
	case Dataset:
		return "datasets/"
	case Space:
		return "spaces/"
	}
	return ""
}

// APIType is the plural used in /api/ paths ("models", "datasets", "spaces").
func (r Repo) APIType() string { return string(r.Type) + "s" }

// Kind says which route a request is for.
type Kind int

const (
	// Resolve is a file download: /{repo}/resolve/{rev}/{path} or
	// /api/resolve-cache/{type}s/{repo}/{commit}/{path}.
	Resolve Kind = iota + 1
	// RepoInfo is GET /api/{type}s/{repo}[/revision/{rev}].
	RepoInfo
	// Tree is GET /api/{type}s/{repo}/tree/{rev}[/{path}].
	Tree
	// PathsInfo is POST /api/{type}s/{repo}/paths-info/{rev}.
	PathsInfo
	// RepoAPI is one of the other repository reads clients make:
	// GET /api/{type}s/{repo}/refs and /api/{type}s/{repo}/commits/{rev}.
	// Forwarded, never cached.
	RepoAPI
	// XetReadToken is GET /api/{type}s/{repo}/xet-read-token/{rev}: a Xet
	// read token, which the gateway issues itself when it serves Xet.
	XetReadToken
	// OtherAPI is any other /api/ route (account-level calls, listings,
	// Xet tokens, writes): never forwarded with the operator's token.
	OtherAPI
)

// Route is a parsed, validated Hub request.
type Route struct {
	Kind     Kind
	Repo     Repo
	Revision string // decoded; "" for RepoInfo without /revision/ (the default branch)
	Path     string // decoded file or folder path, "/"-separated
}

// Name is a short, bounded label for metrics and logs.
func (k Kind) Name() string {
	switch k {
	case Resolve:
		return "resolve"
	case RepoInfo:
		return "api_repo"
	case Tree:
		return "api_tree"
	case PathsInfo:
		return "api_paths_info"
	case XetReadToken:
		return "api_xet_token"
	}
	return "api_other"
}

// ErrNotHubRoute is returned for paths that are no Hub route at all.
var ErrNotHubRoute = errors.New("not a Hugging Face route")

// BadRequestError is a Hub route with an invalid part; it maps to 400.
type BadRequestError struct{ Reason string }

func (e *BadRequestError) Error() string { return e.Reason }

// badRequest builds a BadRequestError. The reason quotes what the worker
// sent, so a credential pasted where a repo id or revision goes is masked:
// error texts travel on to proxies, logs and screenshots.
func badRequest(format string, a ...any) error {
	return &BadRequestError{Reason: redact.String(fmt.Sprintf(format, a...))}
}

// Limits on what the gateway accepts; the Hub's own are of the same order.
const (
	maxPathLen     = 1024
	maxRevisionLen = 256
	maxSegmentLen  = 96
)

// ParseRoute parses a request for a Hub route. It splits the escaped path,
// so an encoded revision such as refs%2Fpr%2F1 stays one segment, and then
// validates every part. It returns ErrNotHubRoute for unrelated paths and a
// *BadRequestError for a Hub route with an invalid repo id, revision or path.
func ParseRoute(method string, u *url.URL) (Route, error) {
	escaped := u.EscapedPath()
	if len(escaped) > 4*maxPathLen {
		return Route{}, badRequest("path too long")
	}
	segs := strings.Split(strings.TrimPrefix(escaped, "/"), "/")
	if len(segs) > 0 && segs[0] == "api" {
		return parseAPI(method, segs[1:])
	}
	return parseResolve(segs)
}

// parseResolve handles /[datasets/|spaces/]{repo}/resolve/{rev}/{path...}.
func parseResolve(segs []string) (Route, error) {
	typ := Model
	if len(segs) > 0 {
		switch segs[0] {
		case "datasets":
			typ, segs = Dataset, segs[1:]
		case "spaces":
			typ, segs = Space, segs[1:]
		case "models":
			// Not a Hub URL form; models have no prefix.
		}
	}
	// The repo id is one or two segments; prefer two, as the Hub does for
	// every repo created since namespaces became mandatory.
	for _, n := range []int{2, 1} {
		if len(segs) > n+2 && segs[n] == "resolve" {
			r := Route{Kind: Resolve}
			var err error
			if r.Repo, err = parseRepo(typ, segs[:n]); err != nil {
				return Route{}, err
			}
			if r.Revision, err = parseRevision(segs[n+1]); err != nil {
				return Route{}, err
			}
			// An encoded "resolve" (%72esolve) as the revision of a legacy
			// id, followed by a nested path, names a file that no resolve
			// URL can: ResolvePath writes it back as /x/resolve/resolve/a/b,
			// which is the two-segment repo x/resolve. Refuse it rather
			// than cache one file under another's name.
			if n == 1 && r.Revision == "resolve" && len(segs) > 4 {
				return Route{}, badRequest("ambiguous resolve path")
			}
			if r.Path, err = parseFilePath(segs[n+2:]); err != nil {
				return Route{}, err
			}
			return r, nil
		}
	}
	return Route{}, ErrNotHubRoute
}

func parseAPI(method string, segs []string) (Route, error) {
	if len(segs) == 0 {
		return Route{}, ErrNotHubRoute
	}
	// A dot segment, even encoded, would make the upstream (or anything in
	// between) resolve the path to another route than the one checked.
	for _, s := range segs {
		if d, err := url.PathUnescape(s); err != nil || d == "." || d == ".." {
			return Route{}, badRequest("dot segments are not allowed in API paths")
		}
	}
	if segs[0] == "resolve-cache" {
		return parseResolveCache(segs[1:])
	}
	typ, ok := apiTypes[segs[0]]
	if !ok || len(segs) < 2 {
		return Route{Kind: OtherAPI}, nil
	}
	rest := segs[1:]
	// HEAD reads like GET (clients probe existence with it).
	get := method == http.MethodGet || method == http.MethodHead
	// /api/{type}s/{repo} with a one- or two-segment id.
	if get && (len(rest) == 1 || len(rest) == 2) {
		repo, err := parseRepo(typ, rest)
		if err != nil {
			return Route{}, err
		}
		return Route{Kind: RepoInfo, Repo: repo}, nil
	}
	for _, n := range []int{2, 1} {
		if len(rest) < n+1 {
			continue
		}
		var kind Kind
		switch {
		case rest[n] == "refs" && get && len(rest) == n+1:
			repo, err := parseRepo(typ, rest[:n])
			if err != nil {
				return Route{}, err
			}
			return Route{Kind: RepoAPI, Repo: repo}, nil
		case rest[n] == "commits" && get && len(rest) == n+2:
			kind = RepoAPI
		case rest[n] == "revision" && get && len(rest) == n+2:
			kind = RepoInfo
		case rest[n] == "tree" && get && len(rest) >= n+2:
			kind = Tree
		case rest[n] == "paths-info" && method == http.MethodPost && len(rest) == n+2:
			kind = PathsInfo
		case rest[n] == "xet-read-token" && get && len(rest) == n+2:
			kind = XetReadToken
		default:
			continue
		}
		r := Route{Kind: kind}
		var err error
		if r.Repo, err = parseRepo(typ, rest[:n]); err != nil {
			return Route{}, err
		}
		if r.Revision, err = parseRevision(rest[n+1]); err != nil {
			return Route{}, err
		}
		if kind == Tree && len(rest) > n+2 {
			if r.Path, err = parseFilePath(rest[n+2:]); err != nil {
				return Route{}, err
			}
		}
		return r, nil
	}
	return Route{Kind: OtherAPI}, nil
}

var apiTypes = map[string]RepoType{"models": Model, "datasets": Dataset, "spaces": Space}

// parseResolveCache handles {type}s/{repo}/{commit}/{path...}, the target
// of the Hub's relative redirect for small files.
func parseResolveCache(segs []string) (Route, error) {
	if len(segs) < 3 {
		return Route{}, ErrNotHubRoute
	}
	typ, ok := apiTypes[segs[0]]
	if !ok {
		return Route{}, ErrNotHubRoute
	}
	rest := segs[1:]
	for _, n := range []int{2, 1} {
		if len(rest) < n+2 || !IsCommit(rest[n]) {
			continue
		}
		repo, err := parseRepo(typ, rest[:n])
		if err != nil {
			return Route{}, err
		}
		// A model id under api/, datasets/ or spaces/ has no resolve URL of
		// its own: ResolvePath would name another repo (datasets/x is the
		// dataset x) or an API route.
		if typ == Model && (rest[0] == "api" || rest[0] == "datasets" || rest[0] == "spaces") {
			return Route{}, badRequest("invalid repo id %q", repo.ID)
		}
		p, err := parseFilePath(rest[n+1:])
		if err != nil {
			return Route{}, err
		}
		return Route{Kind: Resolve, Repo: repo, Revision: rest[n], Path: p}, nil
	}
	return Route{}, badRequest("resolve-cache path needs a 40-hex commit id")
}

var repoSegment = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$`)

// parseRepo validates escaped repo id segments. The Hub rejects an id with
// an encoded slash, and so do we: each segment must be plain.
func parseRepo(typ RepoType, segs []string) (Repo, error) {
	for _, s := range segs {
		if len(s) > maxSegmentLen || !repoSegment.MatchString(s) ||
			strings.Contains(s, "..") || strings.Contains(s, "--") {
			return Repo{}, badRequest("invalid repo id %q", strings.Join(segs, "/"))
		}
	}
	return Repo{Type: typ, ID: strings.Join(segs, "/")}, nil
}

var revisionChars = regexp.MustCompile(`^[A-Za-z0-9._/-]+$`)

// parseRevision decodes and validates one escaped revision segment: a
// branch, tag, refs/pr/N or commit id, following Git's ref-name rules.
func parseRevision(escaped string) (string, error) {
	rev, err := url.PathUnescape(escaped)
	if err != nil {
		return "", badRequest("revision is not valid percent-encoding")
	}
	if rev == "" || len(rev) > maxRevisionLen || !revisionChars.MatchString(rev) ||
		strings.Contains(rev, "..") || strings.Contains(rev, "//") ||
		strings.HasPrefix(rev, "/") || strings.HasSuffix(rev, "/") ||
		strings.HasPrefix(rev, ".") || strings.HasSuffix(rev, ".lock") || strings.Contains(rev, "/.") {
		return "", badRequest("invalid revision %q", rev)
	}
	return rev, nil
}

// parseFilePath decodes escaped path segments and refuses anything that
// could climb out of a directory or confuse one: "." and ".." segments,
// empty segments, backslashes, NUL and other control characters.
func parseFilePath(segs []string) (string, error) {
	parts := make([]string, 0, len(segs))
	total := 0
	for _, s := range segs {
		p, err := url.PathUnescape(s)
		if err != nil {
			return "", badRequest("file path is not valid percent-encoding")
		}
		if p == "" || p == "." || p == ".." || strings.ContainsAny(p, "/\\") || hasControl(p) {
			return "", badRequest("invalid file path")
		}
		total += len(p) + 1
		parts = append(parts, p)
	}
	if total > maxPathLen {
		return "", badRequest("file path too long")
	}
	return strings.Join(parts, "/"), nil
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}

var commitRe = regexp.MustCompile(`^[0-9a-f]{40}$`)

// IsCommit reports whether rev is a full commit id, whose answers never change.
func IsCommit(rev string) bool { return commitRe.MatchString(rev) }

// EscapePath percent-encodes a "/"-separated file path segment by segment,
// the way the Hub's clients do.
func EscapePath(p string) string {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}

// ResolvePath is the upstream path of a file: /{prefix}{repo}/resolve/{rev}/{path},
// with the revision escaped as one segment.
func ResolvePath(repo Repo, rev, path string) string {
	return "/" + repo.URLPrefix() + repo.ID + "/resolve/" + url.PathEscape(rev) + "/" + EscapePath(path)
}

var sha256Re = regexp.MustCompile(`^[0-9a-f]{64}$`)

// CDNContentSHA256 returns the sha256 an LFS CDN path names, for
// /repos/<xx>/<yy>/<repo key>/<sha256>: the signed query around it varies
// with every redirect, the content id in the path does not. Other CDN
// paths (Xet bridges name a Xet hash, not the sha256) return false.
func CDNContentSHA256(escapedPath string) (string, bool) {
	segs := strings.Split(strings.TrimPrefix(escapedPath, "/"), "/")
	if len(segs) != 5 || segs[0] != "repos" || !sha256Re.MatchString(segs[4]) {
		return "", false
	}
	return segs[4], true
}
