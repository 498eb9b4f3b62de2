package hfhub

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// fuzzMethods are the methods FuzzParseRoute picks from by its first input.
// The odd ones ("get", "") must be handled as safely as the real ones.
var fuzzMethods = []string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
	http.MethodDelete, http.MethodOptions, http.MethodPatch, http.MethodConnect,
	"get", "",
}

// FuzzParseRoute feeds ParseRoute raw request targets, parsed the way
// net/http's server parses a request line, and checks that whatever it
// accepts is safe to use as a repo id, revision and file path, that what it
// accepts round-trips through ResolvePath, and that it fails only with its
// two documented errors.
func FuzzParseRoute(f *testing.F) {
	const (
		get  = 0
		head = 1
		post = 2
	)
	long := strings.Repeat("a", maxPathLen)
	seeds := []struct {
		method byte
		path   string
	}{
		// Typical routes.
		{get, "/org/model/resolve/main/config.json"},
		{head, "/org/model/resolve/main/model.safetensors"},
		{get, "/gpt2/resolve/main/config.json"},
		{get, "/datasets/org/data/resolve/main/train.csv"},
		{get, "/datasets/squad/resolve/main/train.json"},
		{get, "/spaces/org/app/resolve/main/app.py"},
		{get, "/org/model/resolve/refs%2Fpr%2F1/config.json"},
		{get, "/datasets/org/data/resolve/refs%2Fconvert%2Fparquet/default/train/0000.parquet"},
		{get, "/org/model/resolve/0123456789abcdef0123456789abcdef01234567/a.bin"},
		{get, "/org/model/resolve/main/sub%20dir/a%20b.bin"},
		{get, "/org/model/resolve/main/100%25.txt"},
		{get, "/org/model/resolve/main/%C3%A9t%C3%A9/x.parquet"},
		{get, "/org/model/resolve/main/config.json?download=true"},
		{get, "/api/models/org/model"},
		{get, "/api/models/gpt2"},
		{get, "/api/datasets/org/data/revision/refs%2Fconvert%2Fparquet"},
		{get, "/api/models/org/model/tree/main"},
		{get, "/api/models/org/model/tree/main/sub/dir?recursive=true"},
		{post, "/api/models/org/model/paths-info/main"},
		{get, "/api/whoami-v2"},
		{get, "/api/resolve-cache/models/org/model/0123456789abcdef0123456789abcdef01234567/config.json"},
		{get, "/api/resolve-cache/datasets/squad/0123456789abcdef0123456789abcdef01234567/a/b.json"},
		{get, "http://gw.example/org/model/resolve/main/config.json"},
		// Hostile routes.
		{get, "/org/model/resolve/main/%2e%2e/secret"},
		{get, "/org/model/resolve/main/.%2E/secret"},
		{get, "/org/model/resolve/main/..%2F..%2Fsecret"},
		{get, "/org/model/resolve/main/..%5C..%5Csecret"},
		{get, "/org/model/resolve/main/a%00b"},
		{get, "/org/model/resolve/ma%00in/a"},
		{get, "/org/model/resolve/main/a%5Cb"},
		{get, "/org/model/resolve/main/a//b"},
		{get, "/org/model/resolve/main/dir/"},
		{get, "/org/model/resolve/%2Fmain/a"},
		{get, "/org/model/resolve/refs%2F%2Fpr/a"},
		{get, "/org/model/resolve/%2e%2e/a"},
		{get, "/org%2Fmodel/resolve/main/a"},
		{get, "/org/model/resolve/main/" + long + "/" + long},
		{get, "/org/model/resolve/main/" + strings.Repeat("%41", maxPathLen)},
		{get, "/org/model/resolve/" + strings.Repeat("r", maxRevisionLen+1) + "/a"},
		{get, "/api/models/x/tree/main/.."},
		{get, "/api/models/org/model/tree/main/%2e%2e"},
		{get, "/api/resolve-cache/models/org/model/main/config.json"},
		{get, "/api/resolve-cache/models/org/model/0123456789abcdef0123456789abcdef01234567/../x"},
		{get, "/api/resolve-cache/models/datasets/x/0123456789abcdef0123456789abcdef01234567/a"},
		{get, "/x/resolve/%72esolve/a/b"},
		{get, "/org/model/resolve/main/a%C2%85b"},
		{get, "/org/model/resolve/main/%FF"},
		// A file literally named "%zz": an invalid escape ("%zz" on the
		// wire) never reaches the router (net/http refuses the request
		// line, and the fuzz body skips what url.ParseRequestURI refuses),
		// so the seed is its valid spelling.
		{get, "/org/model/resolve/main/%25zz"},
		{post, "/api/models/org/model"},
		{get, "*"},
	}
	for _, s := range seeds {
		f.Add(s.method, s.path)
	}

	f.Fuzz(func(t *testing.T, m byte, target string) {
		method := fuzzMethods[int(m)%len(fuzzMethods)]
		u, err := url.ParseRequestURI(target)
		if err != nil {
			t.Skip()
		}
		r, err := ParseRoute(method, u)
		if err != nil {
			checkRouteError(t, r, err)
			return
		}
		checkRoute(t, r)

		if r.Kind != Resolve || r.Revision == "" {
			return
		}
		back := ResolvePath(r.Repo, r.Revision, r.Path)
		bu, err := url.ParseRequestURI(back)
		if err != nil {
			t.Fatalf("ResolvePath(%+v, %q, %q) = %q, which does not parse: %v", r.Repo, r.Revision, r.Path, back, err)
		}
		r2, err := ParseRoute(http.MethodGet, bu)
		if err != nil {
			t.Fatalf("%s %q parsed as %+v, but its ResolvePath %q fails: %v", method, target, r, back, err)
		}
		if r2.Kind != Resolve || r2.Repo != r.Repo || r2.Revision != r.Revision || r2.Path != r.Path {
			t.Fatalf("%s %q parsed as %+v, but its ResolvePath %q parses as %+v", method, target, r, back, r2)
		}
	})
}

// checkRouteError fails unless err is one of ParseRoute's two errors and
// comes with an empty route.
func checkRouteError(t *testing.T, r Route, err error) {
	t.Helper()
	var bad *BadRequestError
	switch {
	case errors.Is(err, ErrNotHubRoute):
	case errors.As(err, &bad):
		if bad.Reason == "" {
			t.Fatalf("BadRequestError without a reason")
		}
	default:
		t.Fatalf("error %v (%T) is neither ErrNotHubRoute nor *BadRequestError", err, err)
	}
	if r != (Route{}) {
		t.Fatalf("error %v comes with a non-empty route %+v", err, r)
	}
}

// checkRoute fails unless every part of an accepted route is safe.
func checkRoute(t *testing.T, r Route) {
	t.Helper()
	switch r.Kind {
	case OtherAPI:
		if r.Repo != (Repo{}) || r.Revision != "" || r.Path != "" {
			t.Fatalf("OtherAPI route with parts: %+v", r)
		}
		return
	case Resolve, RepoInfo, Tree, PathsInfo, RepoAPI:
	default:
		t.Fatalf("unknown kind in %+v", r)
	}

	switch r.Repo.Type {
	case Model, Dataset, Space:
	default:
		t.Fatalf("unknown repo type in %+v", r)
	}
	segs := strings.Split(r.Repo.ID, "/")
	if len(segs) < 1 || len(segs) > 2 {
		t.Fatalf("repo id %q has %d segments", r.Repo.ID, len(segs))
	}
	for _, s := range segs {
		if s == "" || strings.Contains(s, "..") || strings.ContainsAny(s, `/\%`) || hasAnyControl(s) {
			t.Fatalf("unsafe repo id segment %q in %q", s, r.Repo.ID)
		}
	}

	if r.Revision != "" {
		if strings.Contains(r.Revision, "..") || strings.HasPrefix(r.Revision, "/") ||
			strings.HasSuffix(r.Revision, "/") || hasAnyControl(r.Revision) {
			t.Fatalf("unsafe revision %q", r.Revision)
		}
	}
	switch r.Kind {
	case Resolve, Tree, PathsInfo:
		if r.Revision == "" {
			t.Fatalf("%s route without a revision: %+v", r.Kind.Name(), r)
		}
	}

	if r.Path != "" {
		if len(r.Path) > maxPathLen {
			t.Fatalf("path of %d bytes", len(r.Path))
		}
		if strings.Contains(r.Path, `\`) || hasAnyControl(r.Path) {
			t.Fatalf("unsafe path %q", r.Path)
		}
		for _, s := range strings.Split(r.Path, "/") {
			if s == "" || s == "." || s == ".." {
				t.Fatalf("path %q has segment %q", r.Path, s)
			}
		}
	}
	switch r.Kind {
	case Resolve:
		if r.Path == "" {
			t.Fatalf("resolve route without a path: %+v", r)
		}
	case RepoInfo, PathsInfo:
		if r.Path != "" {
			t.Fatalf("%s route with a path: %+v", r.Kind.Name(), r)
		}
	}
}

// hasAnyControl reports a C0 control character or DEL in any byte of s,
// valid UTF-8 or not (the parser's own hasControl works on runes).
func hasAnyControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}
