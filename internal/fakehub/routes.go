package fakehub

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
)

type routeKind int

const (
	routeResolve      routeKind = iota // /{prefix}{repo}/resolve/{rev}/{path}
	routeResolveCache                  // /api/resolve-cache/{type}s/{repo}/{commit}/{path}
	routeInfo                          // /api/{type}s/{repo}[/revision/{rev}]
	routeTree                          // /api/{type}s/{repo}/tree/{rev}[/{path}]
	routePathsInfo                     // POST /api/{type}s/{repo}/paths-info/{rev}
	routeXetToken                      // /api/{type}s/{repo}/xet-read-token/{rev}
	routeAuthCheck                     // /api/{type}s/{repo}/auth-check
)

// route is a parsed Hub URL.
type route struct {
	kind routeKind
	typ  string // "model", "dataset", "space"
	id   string // repo id, unescaped
	rev  string // revision (or commit for resolve-cache), unescaped
	path string // file path (resolve) or directory (tree), unescaped
	// escBefore and escAfter are the escaped path segments around the repo
	// id, so a rename redirect can swap the id and keep everything else
	// byte-for-byte.
	escBefore, escAfter []string
}

// parseRoute splits the escaped path, never the decoded one: a revision like
// refs%2Fpr%2F1 is one segment, and each segment is unescaped on its own.
// ok is false for paths that are not a Hub route (or not validly escaped).
func (h *Hub) parseRoute(r *http.Request) (rt route, ok bool) {
	esc := strings.Split(strings.TrimPrefix(r.URL.EscapedPath(), "/"), "/")
	segs := make([]string, len(esc))
	for i, s := range esc {
		u, err := url.PathUnescape(s)
		if err != nil {
			return route{}, false
		}
		segs[i] = u
	}

	if segs[0] == "api" {
		if len(segs) >= 3 && segs[1] == "resolve-cache" {
			typ, ok := pluralType(segs[2])
			if !ok {
				return route{}, false
			}
			return h.pickRepo(typ, esc, segs, 3, func(rest []string) (route, bool) {
				if len(rest) < 2 || !isHex(rest[0], 40) {
					return route{}, false
				}
				return route{kind: routeResolveCache, rev: rest[0], path: strings.Join(rest[1:], "/")}, true
			})
		}
		if len(segs) < 3 {
			return route{}, false
		}
		typ, ok := pluralType(segs[1])
		if !ok {
			return route{}, false
		}
		return h.pickRepo(typ, esc, segs, 2, parseAPIRest)
	}

	typ, start := TypeModel, 0
	switch segs[0] {
	case "datasets":
		typ, start = TypeDataset, 1
	case "spaces":
		typ, start = TypeSpace, 1
	}
	return h.pickRepo(typ, esc, segs, start, func(rest []string) (route, bool) {
		if len(rest) < 3 || rest[0] != "resolve" {
			return route{}, false
		}
		return route{kind: routeResolve, rev: rest[1], path: strings.Join(rest[2:], "/")}, true
	})
}

// parseAPIRest parses what follows the repo id in /api/{type}s/{repo}/...
func parseAPIRest(rest []string) (route, bool) {
	if len(rest) == 0 {
		return route{kind: routeInfo, rev: "main"}, true
	}
	switch {
	case rest[0] == "revision" && len(rest) >= 2:
		// Accept an unencoded "refs/pr/1" too; the encoded form is one segment.
		return route{kind: routeInfo, rev: strings.Join(rest[1:], "/")}, true
	case rest[0] == "tree" && len(rest) >= 2:
		return route{kind: routeTree, rev: rest[1], path: strings.Trim(strings.Join(rest[2:], "/"), "/")}, true
	case rest[0] == "paths-info" && len(rest) == 2:
		return route{kind: routePathsInfo, rev: rest[1]}, true
	case rest[0] == "xet-read-token" && len(rest) == 2:
		return route{kind: routeXetToken, rev: rest[1]}, true
	case rest[0] == "auth-check" && len(rest) == 1:
		return route{kind: routeAuthCheck}, true
	}
	return route{}, false
}

// pickRepo tries a two- and a one-segment repo id starting at segs[start].
// When both parse, the one naming a known repo (or rename) wins, else the
// two-segment form, which is what almost every repo uses.
func (h *Hub) pickRepo(typ string, esc, segs []string, start int, parseRest func([]string) (route, bool)) (route, bool) {
	var fallback *route
	for _, k := range []int{2, 1} {
		if start+k > len(segs) {
			continue
		}
		idSegs := segs[start : start+k]
		id := strings.Join(idSegs, "/")
		// An escaped "/" inside a segment (org%2Fname) is not a repo id; the
		// Hub rejects it too.
		if !validRepoID(id) || slices.ContainsFunc(idSegs, func(s string) bool { return strings.Contains(s, "/") }) {
			continue
		}
		rt, ok := parseRest(segs[start+k:])
		if !ok {
			continue
		}
		rt.typ, rt.id = typ, id
		rt.escBefore, rt.escAfter = esc[:start], esc[start+k:]
		if h.knownRepoID(typ, id) {
			return rt, true
		}
		if fallback == nil {
			fallback = &rt
		}
	}
	if fallback == nil {
		return route{}, false
	}
	return *fallback, true
}

func pluralType(s string) (string, bool) {
	switch s {
	case "models":
		return TypeModel, true
	case "datasets":
		return TypeDataset, true
	case "spaces":
		return TypeSpace, true
	}
	return "", false
}

// repoPrefix is the URL prefix of a repo type on resolve routes.
func repoPrefix(typ string) string {
	if typ == TypeModel {
		return ""
	}
	return typ + "s/"
}

// escapeSegments percent-escapes each "/"-separated segment of p, keeping
// the separators, the way clients build repo ids and file paths in URLs.
func escapeSegments(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}

// serveHub is the Hub's single entry point: liveness, credentials, routing,
// renames and repo auth, then the route's handler.
func (h *Hub) serveHub(w http.ResponseWriter, r *http.Request) {
	if h.isDown() {
		hijackClose(w)
		return
	}
	if f, ok := h.takeHubFault(); ok {
		writeHubFault(w, r, f)
		return
	}
	who, ok := h.identify(r)
	if !ok {
		writeHubError(w, r, http.StatusUnauthorized, "", "Invalid credentials in Authorization header", "")
		return
	}
	rt, ok := h.parseRoute(r)
	if !ok {
		writeHubError(w, r, http.StatusNotFound, "", "Sorry, we can't find the page you are looking for.", "")
		return
	}
	if !checkMethod(w, r, rt.kind) {
		return
	}
	rs, renamedTo := h.lookupRepo(rt.typ, rt.id)
	if rs == nil && renamedTo != "" {
		redirectRenamed(w, r, rt, renamedTo)
		return
	}
	if !h.authorize(w, r, rt, rs, who) {
		return
	}
	switch rt.kind {
	case routeResolve, routeResolveCache:
		h.serveResolve(w, r, rt, rs)
	case routeInfo:
		h.serveInfo(w, r, rt, rs)
	case routeTree:
		h.serveTree(w, r, rt, rs)
	case routePathsInfo:
		h.servePathsInfo(w, r, rt, rs)
	case routeXetToken:
		h.serveXetToken(w, r, rt, rs)
	case routeAuthCheck:
		writeJSON(w, r, http.StatusOK, map[string]any{})
	}
}

func checkMethod(w http.ResponseWriter, r *http.Request, kind routeKind) bool {
	allowed := "GET, HEAD"
	if kind == routePathsInfo {
		allowed = "POST"
	}
	for _, m := range strings.Split(allowed, ", ") {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", allowed)
	writeHubError(w, r, http.StatusMethodNotAllowed, "", "Method "+r.Method+" not allowed", "")
	return false
}

// redirectRenamed answers like the Hub for a renamed repo: a relative 307 to
// the same route under the new id, query kept.
func redirectRenamed(w http.ResponseWriter, r *http.Request, rt route, newID string) {
	parts := append(append(append([]string{}, rt.escBefore...), escapeSegments(newID)), rt.escAfter...)
	loc := "/" + strings.Join(parts, "/")
	if r.URL.RawQuery != "" {
		loc += "?" + r.URL.RawQuery
	}
	w.Header().Set("Location", loc)
	writeText(w, r, http.StatusTemporaryRedirect, "Temporary Redirect. Redirecting to "+loc)
}
