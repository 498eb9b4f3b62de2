package fakehub

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// access is who the caller is, as far as repo visibility is concerned.
type access int

const (
	anonymous      access = iota // no Authorization header
	userAccess                   // one of Options.OtherTokens
	operatorAccess               // Options.Token
)

// identify classifies the Authorization header. ok is false for a header
// that is present but carries no known token: the Hub rejects such requests
// even for public repos.
func (h *Hub) identify(r *http.Request) (who access, ok bool) {
	vals := r.Header.Values("Authorization")
	if len(vals) == 0 {
		return anonymous, true
	}
	if len(vals) > 1 {
		return anonymous, false
	}
	scheme, tok, found := strings.Cut(vals[0], " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return anonymous, false
	}
	tok = strings.TrimSpace(tok)
	switch {
	case tok == "":
		return anonymous, false
	case tok == h.opts.Token:
		return operatorAccess, true
	case slices.Contains(h.opts.OtherTokens, tok):
		return userAccess, true
	}
	return anonymous, false
}

// authorize applies the Hub's visibility rules and writes the error answer
// when access is denied. Unknown and private repos are indistinguishable to
// callers without access, as on the real Hub.
func (h *Hub) authorize(w http.ResponseWriter, r *http.Request, rt route, rs *repoState, who access) bool {
	if rs == nil || (rs.Private && who != operatorAccess) {
		status := http.StatusNotFound
		if who == anonymous {
			status = http.StatusUnauthorized
		}
		writeHubError(w, r, status, "RepoNotFound", "Repository Not Found for url: "+h.URL()+r.URL.RequestURI()+".", "")
		return false
	}
	if rs.Gated && who != operatorAccess {
		if who == anonymous {
			writeHubError(w, r, http.StatusUnauthorized, "GatedRepo",
				"Access to "+rt.typ+" "+rs.ID+" is restricted. You must have access to it and be authenticated to access it. Please log in.", "")
		} else {
			writeHubError(w, r, http.StatusForbidden, "GatedRepo",
				"Access to "+rt.typ+" "+rs.ID+" is restricted and you are not in the authorized list. Visit "+
					h.URL()+"/"+repoPrefix(rt.typ)+rs.ID+" to ask for access.", "")
		}
		return false
	}
	return true
}

// writeHubError answers like the Hub: X-Error-Code (when code is set),
// X-Error-Message and a JSON {"error": msg} body. commit, when set, becomes
// X-Repo-Commit, which clients need on EntryNotFound to cache non-existence.
func writeHubError(w http.ResponseWriter, r *http.Request, status int, code, msg, commit string) {
	hd := w.Header()
	if code != "" {
		hd.Set("X-Error-Code", code)
	}
	hd.Set("X-Error-Message", msg)
	if commit != "" {
		hd.Set("X-Repo-Commit", commit)
	}
	writeJSON(w, r, status, map[string]string{"error": msg})
}

// writeJSON writes v with an explicit Content-Length (the Hub never chunks
// or gzips these small answers); HEAD gets the headers only.
func writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Only fake-internal types are marshalled; failing here is a bug.
		panic("fakehub: marshalling JSON answer: " + err.Error())
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	writeBody(w, r, status, body)
}

// writeText writes a text/plain body, as the Hub does for redirect answers.
func writeText(w http.ResponseWriter, r *http.Request, status int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	writeBody(w, r, status, []byte(body))
}

func writeBody(w http.ResponseWriter, r *http.Request, status int, body []byte) {
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body) // the client went away; nothing to do
	}
}

// etagMatches implements If-None-Match for the redirect answers (weak
// comparison, lists and "*").
func etagMatches(r *http.Request, etag string) bool {
	for _, v := range r.Header.Values("If-None-Match") {
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
			if t == "*" || t == `"`+etag+`"` {
				return true
			}
		}
	}
	return false
}
