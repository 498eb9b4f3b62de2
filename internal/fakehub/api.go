package fakehub

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// lastModified is a fixed timestamp so JSON answers are reproducible.
const lastModified = "2026-01-01T00:00:00.000Z"

// xetTokenLifetime is the validity of the fake Xet access tokens.
const xetTokenLifetime = time.Hour

type sibling struct {
	RFilename string `json:"rfilename"`
}

// repoInfo is the subset of the Hub's model/dataset/space info that clients
// rely on (sha, siblings, visibility).
type repoInfo struct {
	MongoID      string    `json:"_id"`
	ID           string    `json:"id"`
	ModelID      string    `json:"modelId"`
	Author       string    `json:"author,omitempty"`
	SHA          string    `json:"sha"`
	LastModified string    `json:"lastModified"`
	Private      bool      `json:"private"`
	Disabled     bool      `json:"disabled"`
	Gated        any       `json:"gated"` // false or "manual"
	Tags         []string  `json:"tags"`
	Siblings     []sibling `json:"siblings"`
}

// serveInfo answers /api/{type}s/{repo} and /api/{type}s/{repo}/revision/{rev}.
func (h *Hub) serveInfo(w http.ResponseWriter, r *http.Request, rt route, rs *repoState) {
	commit, ok := rs.resolveRev(rt.rev)
	if !ok {
		writeHubError(w, r, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rt.rev, "")
		return
	}
	info := repoInfo{
		MongoID:      derivedHex("mongo-id", rs.Type, rs.ID)[:24],
		ID:           rs.ID,
		ModelID:      rs.ID,
		SHA:          commit,
		LastModified: lastModified,
		Private:      rs.Private,
		Gated:        false,
		Tags:         []string{},
		Siblings:     []sibling{},
	}
	if org, _, found := strings.Cut(rs.ID, "/"); found {
		info.Author = org
	}
	if rs.Gated {
		info.Gated = "manual"
	}
	for _, e := range rs.entries[commit] {
		if e.Type == "file" {
			info.Siblings = append(info.Siblings, sibling{RFilename: e.Path})
		}
	}
	writeJSON(w, r, http.StatusOK, info)
}

// parseBool accepts the spellings clients send: httpx renders booleans as
// true/false, requests as True/False, some scripts use 1/0.
func parseBool(s string) (bool, error) {
	switch s {
	case "", "false", "False", "0":
		return false, nil
	case "true", "True", "1":
		return true, nil
	}
	return false, fmt.Errorf("invalid boolean %q", s)
}

// cursor encoding: opaque to clients, an entry offset to the fake.
func encodeCursor(offset int) string {
	return base64.RawURLEncoding.EncodeToString([]byte("offset:" + strconv.Itoa(offset)))
}

func decodeCursor(c string) (int, error) {
	if c == "" {
		return 0, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return 0, fmt.Errorf("decoding cursor: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimPrefix(string(raw), "offset:"))
	if err != nil || n < 0 || !strings.HasPrefix(string(raw), "offset:") {
		return 0, fmt.Errorf("invalid cursor %q", c)
	}
	return n, nil
}

// serveTree answers /api/{type}s/{repo}/tree/{rev}[/{path}] with the Hub's
// cursor pagination: at most PageSize entries and, when more remain, an
// absolute Link rel="next" on the fake's own address.
func (h *Hub) serveTree(w http.ResponseWriter, r *http.Request, rt route, rs *repoState) {
	q := r.URL.Query()
	recursive, err := parseBool(q.Get("recursive"))
	if err != nil {
		writeHubError(w, r, http.StatusBadRequest, "", "recursive: "+err.Error(), "")
		return
	}
	expand, err := parseBool(q.Get("expand"))
	if err != nil {
		writeHubError(w, r, http.StatusBadRequest, "", "expand: "+err.Error(), "")
		return
	}
	offset, err := decodeCursor(q.Get("cursor"))
	if err != nil {
		writeHubError(w, r, http.StatusBadRequest, "", err.Error(), "")
		return
	}
	commit, ok := rs.resolveRev(rt.rev)
	if !ok {
		writeHubError(w, r, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rt.rev, "")
		return
	}

	all := rs.entries[commit]
	prefix := ""
	if rt.path != "" {
		if !hasDirectory(all, rt.path) {
			writeHubError(w, r, http.StatusNotFound, "EntryNotFound", rt.path+` does not exist on "`+rt.rev+`"`, commit)
			return
		}
		prefix = rt.path + "/"
	}
	var matched []treeEntry
	for _, e := range all {
		rel, under := strings.CutPrefix(e.Path, prefix)
		if !under || (!recursive && strings.Contains(rel, "/")) {
			continue
		}
		matched = append(matched, e)
	}

	page := []treeEntry{}
	if offset < len(matched) {
		end := min(offset+h.opts.PageSize, len(matched))
		page = append(page, matched[offset:end]...)
		if end < len(matched) {
			next := h.URL() + "/api/" + rs.Type + "s/" + escapeSegments(rs.ID) + "/tree/" + url.PathEscape(rt.rev)
			if rt.path != "" {
				next += "/" + url.PathEscape(rt.path)
			}
			next += "?recursive=" + url.QueryEscape(strconv.FormatBool(recursive)) +
				"&expand=" + url.QueryEscape(strconv.FormatBool(expand)) +
				"&cursor=" + url.QueryEscape(encodeCursor(end))
			w.Header().Set("Link", "<"+next+`>; rel="next"`)
		}
	}
	if expand {
		page = withLastCommit(page, commit)
	}
	writeJSON(w, r, http.StatusOK, page)
}

func hasDirectory(entries []treeEntry, dir string) bool {
	for _, e := range entries {
		if e.Path == dir {
			return e.Type == "directory"
		}
	}
	return false
}

// withLastCommit adds the expand=true field on copies of the entries.
func withLastCommit(entries []treeEntry, commit string) []treeEntry {
	out := make([]treeEntry, len(entries))
	for i, e := range entries {
		e.LastCommit = &lastCommit{ID: commit, Title: "Upload " + e.Path, Date: lastModified}
		out[i] = e
	}
	return out
}

// servePathsInfo answers POST /api/{type}s/{repo}/paths-info/{rev}. The body
// is form-encoded (paths=a&paths=b&expand=false) as the Python client sends
// it; a JSON body {"paths": [...], "expand": bool} is accepted too.
func (h *Hub) servePathsInfo(w http.ResponseWriter, r *http.Request, rt route, rs *repoState) {
	paths, expand, err := parsePathsInfoBody(r)
	if err != nil {
		writeHubError(w, r, http.StatusBadRequest, "", err.Error(), "")
		return
	}
	commit, ok := rs.resolveRev(rt.rev)
	if !ok {
		writeHubError(w, r, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rt.rev, "")
		return
	}
	byPath := make(map[string]treeEntry, len(rs.entries[commit]))
	for _, e := range rs.entries[commit] {
		byPath[e.Path] = e
	}
	out := []treeEntry{}
	seen := map[string]bool{}
	for _, p := range paths {
		p = strings.Trim(p, "/")
		if e, ok := byPath[p]; ok && !seen[p] {
			seen[p] = true
			out = append(out, e)
		}
	}
	if expand {
		out = withLastCommit(out, commit)
	}
	writeJSON(w, r, http.StatusOK, out)
}

func parsePathsInfoBody(r *http.Request) (paths []string, expand bool, err error) {
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "application/json" {
		var body struct {
			Paths  []string `json:"paths"`
			Expand any      `json:"expand"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, maxRecordedBody)).Decode(&body); err != nil {
			return nil, false, fmt.Errorf("decoding paths-info JSON body: %w", err)
		}
		switch v := body.Expand.(type) {
		case nil:
		case bool:
			expand = v
		case string:
			if expand, err = parseBool(v); err != nil {
				return nil, false, fmt.Errorf("expand: %w", err)
			}
		default:
			return nil, false, fmt.Errorf("expand: unsupported JSON value %v", v)
		}
		return body.Paths, expand, nil
	}
	if err := r.ParseForm(); err != nil {
		return nil, false, fmt.Errorf("parsing paths-info form body: %w", err)
	}
	expand, err = parseBool(r.PostForm.Get("expand"))
	if err != nil {
		return nil, false, fmt.Errorf("expand: %w", err)
	}
	return r.PostForm["paths"], expand, nil
}

// xetToken is the body of /xet-read-token; the same values go into headers
// because older clients read headers and newer ones read the body.
type xetToken struct {
	AccessToken string `json:"accessToken"`
	Exp         int64  `json:"exp"`
	CasURL      string `json:"casUrl"`
}

func (h *Hub) serveXetToken(w http.ResponseWriter, r *http.Request, rt route, rs *repoState) {
	if _, ok := rs.resolveRev(rt.rev); !ok {
		writeHubError(w, r, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rt.rev, "")
		return
	}
	access, exp := h.issueXetToken(rs.Type + "/" + rs.ID)
	tok := xetToken{AccessToken: access, Exp: exp.Unix(), CasURL: h.CASURL()}
	hd := w.Header()
	hd.Set("X-Xet-Access-Token", tok.AccessToken)
	hd.Set("X-Xet-Token-Expiration", strconv.FormatInt(tok.Exp, 10))
	hd.Set("X-Xet-Cas-Url", tok.CasURL)
	writeJSON(w, r, http.StatusOK, tok)
}
