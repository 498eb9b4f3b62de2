package fakecivitai

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// browserUserAgents are the substrings that make the real service treat a
// request as coming from a browser (case-insensitive).
var browserUserAgents = []string{"mozilla", "chrome", "safari", "firefox", "opera", "edge"}

func isBrowser(r *http.Request) bool {
	ua := strings.ToLower(r.Header.Get("User-Agent"))
	for _, b := range browserUserAgents {
		if strings.Contains(ua, b) {
			return true
		}
	}
	return false
}

// apiKey extracts the caller's key the way the real service does: the
// second space-separated word of the Authorization header when that header
// is present (so "Bearer <key>"), otherwise ?token=.
func apiKey(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		parts := strings.Split(h, " ")
		if len(parts) < 2 {
			return ""
		}
		return strings.TrimSpace(parts[1])
	}
	return strings.TrimSpace(r.URL.Query().Get("token"))
}

// LoginPath is the Location (relative) of the download route's login
// redirect for a version: what browser-like anonymous callers of a
// RequireAuth version and every caller under the LoginRedirect knob get.
func LoginPath(versionID int) string {
	return "/login?returnUrl=%2Fmodel-versions%2F" + strconv.Itoa(versionID) + "&reason=download-auth"
}

// EarlyAccessPath is the Location (relative) browser-like callers get for
// an early-access version they may not download.
func EarlyAccessPath(versionID int) string { return "/model-versions/" + strconv.Itoa(versionID) }

// serveAPI routes the API server's requests.
func (c *CivitAI) serveAPI(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if c.serveAPIFault(w, r) {
		return
	}
	switch {
	case p == "/login":
		writeHTML(w, r, "<html>login</html>")
	case strings.HasPrefix(p, "/model-versions/"):
		writeHTML(w, r, "<html>model version</html>")
	case strings.HasPrefix(p, "/api/download/models/"):
		c.serveDownload(w, r, strings.TrimPrefix(p, "/api/download/models/"))
	case strings.HasPrefix(p, "/api/v1/model-versions/by-hash/"):
		c.serveByHash(w, r, strings.TrimPrefix(p, "/api/v1/model-versions/by-hash/"))
	case strings.HasPrefix(p, "/api/v1/model-versions/"):
		c.serveVersion(w, r, strings.TrimPrefix(p, "/api/v1/model-versions/"))
	case strings.HasPrefix(p, "/api/v1/models/"):
		c.serveModel(w, r, strings.TrimPrefix(p, "/api/v1/models/"))
	default:
		writeJSON(w, r, http.StatusNotFound, errorJSON{Error: "Not found"})
	}
}

// publicEndpoint applies the real service's public-endpoint wrapper: CORS
// and public cache headers on every answer, 200 to preflights. It reports
// whether the handler should go on.
func publicEndpoint(w http.ResponseWriter, r *http.Request) bool {
	hd := w.Header()
	hd.Set("Access-Control-Allow-Origin", "*")
	hd.Set("Access-Control-Allow-Headers", "*")
	hd.Set("Access-Control-Allow-Methods", "GET")
	hd.Set("Cache-Control", "public, s-maxage=300, stale-while-revalidate=150")
	if r.Method == http.MethodOptions {
		writeBody(w, r, http.StatusOK, nil)
		return false
	}
	return true
}

// mixedAuthEndpoint applies the wrapper of the metadata routes: GET only
// (HEAD included in the 405), CORS, public cache headers for anonymous
// callers.
func (c *CivitAI) mixedAuthEndpoint(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodGet {
		writeJSON(w, r, http.StatusMethodNotAllowed, errorJSON{Error: "Method not allowed"})
		return false
	}
	hd := w.Header()
	hd.Set("Access-Control-Allow-Origin", "*")
	hd.Set("Access-Control-Allow-Headers", "*")
	hd.Set("Access-Control-Allow-Methods", "GET")
	if !c.validKey(apiKey(r)) {
		hd.Set("Cache-Control", "public, s-maxage=300, stale-while-revalidate=150")
	}
	return true
}

// serveDownload is /api/download/models/{versionId}. The checks run in the
// real service's order: query validation (400), unknown version (404),
// archived (410), auth (401 / login redirect), early access (403 /
// redirect), file selection (404), then the 307 to storage.
func (c *CivitAI) serveDownload(w http.ResponseWriter, r *http.Request, idStr string) {
	if !publicEndpoint(w, r) {
		return
	}
	browser := isBrowser(r)
	errorResponse := func(status int, msg string) {
		if browser {
			writeText(w, r, status, msg)
			return
		}
		writeJSON(w, r, status, errorJSON{Error: msg})
	}
	if strings.Contains(idStr, "/") {
		writeJSON(w, r, http.StatusNotFound, errorJSON{Error: "Not found"})
		return
	}
	q := r.URL.Query()
	vid, err := strconv.Atoi(idStr)
	if err != nil || vid < 0 {
		writeJSON(w, r, http.StatusBadRequest, errorJSON{Error: "✖ Invalid input: expected number, received NaN\n  → at modelVersionId"})
		return
	}
	sel, msg := parseSelection(q)
	if msg != "" {
		writeJSON(w, r, http.StatusBadRequest, errorJSON{Error: msg})
		return
	}
	if vid == 0 {
		errorResponse(http.StatusBadRequest, "Missing modelVersionId")
		return
	}

	vs := c.version(vid)
	if vs == nil {
		errorResponse(http.StatusNotFound, "File not found")
		return
	}
	if c.loginRedirectOn(vid) {
		redirect(w, r, LoginPath(vid))
		return
	}
	if vs.Archived {
		errorResponse(http.StatusGone, "Model archived, not available for download")
		return
	}
	key := apiKey(r)
	if vs.RequireAuth && !c.validKey(key) {
		if browser {
			redirect(w, r, LoginPath(vid))
			return
		}
		writeJSON(w, r, http.StatusUnauthorized, errorJSON{
			Error:   "Unauthorized",
			Message: "The creator of this asset requires you to be logged in to download it",
		})
		return
	}
	if vs.EarlyAccess && !c.earlyAccessKey(key) {
		if browser {
			redirect(w, r, EarlyAccessPath(vid))
			return
		}
		writeJSON(w, r, http.StatusForbidden, earlyAccessJSON{
			Error:    "Early Access",
			Deadline: jsTime(vs.deadline),
			Message:  "This asset is in Early Access. You can use Buzz access it now!",
		})
		return
	}
	f := vs.selectFile(sel)
	if f == nil {
		errorResponse(http.StatusNotFound, "File not found")
		return
	}
	redirect(w, r, c.signedURL(f))
}

// parseSelection validates the download query like the real service (which
// answers 400 for values outside its enums) and extracts the file selection.
// Other parameters, token included, are ignored here.
func parseSelection(q url.Values) (selection, string) {
	get := q.Get
	sel := selection{typ: get("type"), format: get("format"), size: get("size"), fp: get("fp"), quant: get("quantType")}
	invalid := func(field string, allowed []string) string {
		return "✖ Invalid option: expected one of \"" + strings.Join(allowed, "\"|\"") + "\"\n  → at " + field
	}
	switch {
	case sel.typ != "" && !slices.Contains(knownTypes, sel.typ):
		return sel, invalid("type", knownTypes)
	case sel.format != "" && !slices.Contains(knownFormats, sel.format):
		return sel, invalid("format", knownFormats)
	case sel.size != "" && !slices.Contains(knownSizes, sel.size):
		return sel, invalid("size", knownSizes)
	case utf8.RuneCountInString(sel.fp) > 64:
		return sel, "✖ Too big: expected string to have <=64 characters\n  → at fp"
	}
	if s := get("fileId"); s != "" {
		id, err := strconv.Atoi(s)
		if err != nil || id <= 0 {
			return sel, "✖ Invalid input: expected number, received NaN\n  → at fileId"
		}
		sel.fileID = id
	}
	return sel, ""
}

// serveVersion is /api/v1/model-versions/{id}.
func (c *CivitAI) serveVersion(w http.ResponseWriter, r *http.Request, idStr string) {
	if strings.Contains(idStr, "/") {
		writeJSON(w, r, http.StatusNotFound, errorJSON{Error: "Not found"})
		return
	}
	if !c.mixedAuthEndpoint(w, r) {
		return
	}
	id, err := strconv.Atoi(idStr)
	switch {
	case err != nil || id < 0:
		writeJSON(w, r, http.StatusBadRequest, errorJSON{Error: "Invalid id: Expected number, received nan"})
		return
	case id == 0:
		writeJSON(w, r, http.StatusBadRequest, errorJSON{Error: "Missing modelVersionId"})
		return
	}
	vs := c.version(id)
	if vs == nil {
		writeJSON(w, r, http.StatusNotFound, errorJSON{Error: "Model not found"})
		return
	}
	writeJSON(w, r, http.StatusOK, versionBody(vs, origin(r), true))
}

// serveByHash is /api/v1/model-versions/by-hash/{hash}: any published hash,
// case-insensitive; the oldest matching version wins.
func (c *CivitAI) serveByHash(w http.ResponseWriter, r *http.Request, hash string) {
	if strings.Contains(hash, "/") {
		writeJSON(w, r, http.StatusNotFound, errorJSON{Error: "Not found"})
		return
	}
	if !publicEndpoint(w, r) {
		return
	}
	hash = strings.ToUpper(hash)
	if hash == "" {
		writeJSON(w, r, http.StatusBadRequest, errorJSON{Error: "Missing hash"})
		return
	}
	for _, vs := range c.allVersions() {
		for _, f := range vs.files {
			if f.matchesHash(hash) {
				writeJSON(w, r, http.StatusOK, versionBody(vs, origin(r), true))
				return
			}
		}
	}
	writeJSON(w, r, http.StatusNotFound, errorJSON{Error: "Model not found"})
}

// serveModel is /api/v1/models/{modelId}.
func (c *CivitAI) serveModel(w http.ResponseWriter, r *http.Request, idStr string) {
	if strings.Contains(idStr, "/") {
		writeJSON(w, r, http.StatusNotFound, errorJSON{Error: "Not found"})
		return
	}
	if !c.mixedAuthEndpoint(w, r) {
		return
	}
	id, err := strconv.Atoi(idStr)
	if err != nil || id <= 0 {
		writeJSON(w, r, http.StatusBadRequest, errorJSON{Error: "Invalid id: Expected number, received nan"})
		return
	}
	versions := c.versionsOf(id)
	if len(versions) == 0 {
		writeJSON(w, r, http.StatusNotFound, errorJSON{Error: "No model with id " + strconv.Itoa(id)})
		return
	}
	base := origin(r)
	m := modelJSON{
		ID:            id,
		Name:          versions[0].modelName,
		Type:          "Checkpoint",
		NSFW:          false,
		ModelVersions: make([]versionJSON, 0, len(versions)),
	}
	for _, vs := range versions {
		m.ModelVersions = append(m.ModelVersions, versionBody(vs, base, false))
	}
	writeJSON(w, r, http.StatusOK, m)
}

// origin is the downloadUrl origin: https plus the Host the caller used,
// exactly as the real service builds it.
func origin(r *http.Request) string { return "https://" + r.Host }

// redirect answers 307 like the real service's Next.js redirect: Location,
// the target as the body, and no caching.
func redirect(w http.ResponseWriter, r *http.Request, loc string) {
	hd := w.Header()
	hd.Set("Location", loc)
	hd.Set("Cache-Control", "no-store, max-age=0")
	hd["Content-Type"] = nil // Next.js sends none; keep Go from sniffing one
	writeBody(w, r, http.StatusTemporaryRedirect, []byte(loc))
}

// writeJSON writes v with an explicit Content-Length; HEAD gets the headers
// only.
func writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	var buf strings.Builder
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only fake-internal types are marshalled; failing here is a bug.
		panic("fakecivitai: marshalling JSON answer: " + err.Error())
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	writeBody(w, r, status, []byte(strings.TrimSuffix(buf.String(), "\n")))
}

// writeText writes a plain-text error, as the real service does for
// browser-like callers.
func writeText(w http.ResponseWriter, r *http.Request, status int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	writeBody(w, r, status, []byte(body))
}

// writeHTML writes a 200 HTML page (the login and version pages a browser
// lands on).
func writeHTML(w http.ResponseWriter, r *http.Request, body string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	writeBody(w, r, http.StatusOK, []byte(body))
}

func writeBody(w http.ResponseWriter, r *http.Request, status int, body []byte) {
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead && len(body) > 0 {
		_, _ = w.Write(body) // the client went away; nothing to do
	}
}
