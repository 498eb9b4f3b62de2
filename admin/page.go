package admin

import (
	"embed"
	"net/http"
	"strings"
)

// ui holds the status page: one HTML file, its script and its style,
// with no external URL (the page must work on an air-gapped LAN).
//
//go:embed ui/index.html ui/app.js ui/style.css
var ui embed.FS

// servePage answers GET / and /admin/ui/*: the page, its assets, and
// the JSON it refreshes itself from (the status, which holds no secret).
func (s *Server) servePage(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "the status page is read-only")
		return
	}
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	var name, ctype string
	switch r.URL.Path {
	case "/":
		name, ctype = "ui/index.html", "text/html; charset=utf-8"
	case "/admin/ui/app.js":
		name, ctype = "ui/app.js", "text/javascript; charset=utf-8"
	case "/admin/ui/style.css":
		name, ctype = "ui/style.css", "text/css; charset=utf-8"
	case "/admin/ui/status.json":
		writeJSON(w, http.StatusOK, s.status())
		return
	default:
		writeError(w, http.StatusNotFound, "no such page")
		return
	}
	b, err := ui.ReadFile(name)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "page asset missing")
		return
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Cache-Control", "no-cache")
	if strings.HasSuffix(name, ".html") {
		w.Header().Set("X-Frame-Options", "DENY")
	}
	w.Write(b)
}
