package fakehub

import (
	"compress/gzip"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"
)

// cdnURLLifetime is how long a signed CDN URL stays valid, like the Hub's.
const cdnURLLifetime = time.Hour

// serveResolve answers /resolve/ and /api/resolve-cache/: LFS files redirect
// to the CDN from both, small files redirect (relative 307) from /resolve/ to
// /api/resolve-cache/, which serves their bytes.
func (h *Hub) serveResolve(w http.ResponseWriter, r *http.Request, rt route, rs *repoState) {
	commit, ok := rs.resolveRev(rt.rev)
	if !ok {
		writeHubError(w, r, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rt.rev, "")
		return
	}
	f := rs.files[commit][rt.path]
	if f == nil {
		writeHubError(w, r, http.StatusNotFound, "EntryNotFound", rt.path+` does not exist on "`+rt.rev+`"`, commit)
		return
	}
	switch {
	case f.LFS:
		h.redirectLFS(w, r, rs, commit, f)
	case rt.kind == routeResolveCache:
		h.serveSmall(w, r, commit, f)
	default:
		redirectSmall(w, r, rs, commit, f)
	}
}

// redirectLFS is the Hub's answer for an LFS (or Xet) file: 302 to a signed,
// expiring CDN URL, with the content identity in X-Linked-Etag/X-Linked-Size
// because the CDN's own ETag is unrelated to the content hash.
func (h *Hub) redirectLFS(w http.ResponseWriter, r *http.Request, rs *repoState, commit string, f *fileState) {
	hd := w.Header()
	hd.Set("X-Repo-Commit", commit)
	hd.Set("ETag", `"`+f.sha256+`"`)
	hd.Set("X-Linked-Etag", `"`+f.sha256+`"`)
	hd.Set("X-Linked-Size", strconv.FormatInt(f.size, 10))
	if f.Xet {
		hd.Set("X-Xet-Hash", f.xetHash)
		hd.Set("Link", "<"+h.URL()+"/api/"+rs.Type+"s/"+escapeSegments(rs.ID)+"/xet-read-token/"+commit+`>; rel="xet-auth", <`+
			h.CASURL()+"/v1/reconstructions/"+f.xetHash+`>; rel="xet-reconstruction-info"`)
	}
	if etagMatches(r, f.sha256) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	loc := h.signedCDNURL(rs, f)
	if f.Xet {
		loc = h.signedXetBridgeURL(rs, f)
	}
	hd.Set("Location", loc)
	writeText(w, r, http.StatusFound, "Found. Redirecting to "+loc)
}

// redirectSmall is the Hub's answer for a small git file on /resolve/: a
// relative 307 whose query carries the original path and the etag, exactly
// as observed on the Hub. Clients drop the query and re-request the path.
func redirectSmall(w http.ResponseWriter, r *http.Request, rs *repoState, commit string, f *fileState) {
	hd := w.Header()
	hd.Set("X-Repo-Commit", commit)
	hd.Set("ETag", `"`+f.etag+`"`)
	if etagMatches(r, f.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	loc := "/api/resolve-cache/" + rs.Type + "s/" + escapeSegments(rs.ID) + "/" + commit + "/" + escapeSegments(f.Path) +
		"?" + url.QueryEscape(r.URL.EscapedPath()) + "=&etag=%22" + f.etag + "%22"
	hd.Set("Location", loc)
	writeText(w, r, http.StatusTemporaryRedirect, "Temporary Redirect. Redirecting to "+loc)
}

// serveSmall serves a small file's bytes from /api/resolve-cache/ with Range
// and conditional support, counting 2xx GETs for SmallBodyFetches.
func (h *Hub) serveSmall(w http.ResponseWriter, r *http.Request, commit string, f *fileState) {
	hd := w.Header()
	hd.Set("X-Repo-Commit", commit)
	hd.Set("ETag", `"`+f.etag+`"`)
	hd.Set("Accept-Ranges", "bytes")
	hd.Set("Content-Type", contentTypeFor(f.Path))
	out := h.smallFetches.CountGET(w, r, smallKey{commit, f.Path})
	if wantsGzip(r, f.Path) {
		// Like the Hub's CDN, small text files are compressed for clients
		// that accept it (whole answers only); the ETag stays the git blob
		// id of the uncompressed content.
		gz := &gzipWriter{ResponseWriter: out}
		defer gz.close()
		out = gz
	}
	h.small.ServeContent(out, r, f.etag, f.Data, time.Time{})
}

// wantsGzip reports whether the answer for p is gzip-compressed: a text
// file, a whole-file GET or HEAD, and a client that accepts gzip.
func wantsGzip(r *http.Request, p string) bool {
	if r.Header.Get("Range") != "" || strings.HasPrefix(contentTypeFor(p), "application/octet-stream") {
		return false
	}
	for _, enc := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		name, q, _ := strings.Cut(strings.TrimSpace(enc), ";")
		if strings.EqualFold(strings.TrimSpace(name), "gzip") && strings.TrimSpace(q) != "q=0" {
			return true
		}
	}
	return false
}

// gzipWriter compresses a 200 answer's body on the fly; other answers
// (304, 416, errors) pass unchanged.
type gzipWriter struct {
	http.ResponseWriter
	zw      *gzip.Writer
	decided bool
}

func (g *gzipWriter) WriteHeader(code int) {
	if !g.decided {
		g.decided = true
		g.Header().Add("Vary", "Accept-Encoding")
		if code == http.StatusOK {
			g.Header().Del("Content-Length")
			g.Header().Set("Content-Encoding", "gzip")
			g.zw = gzip.NewWriter(g.ResponseWriter)
		}
	}
	g.ResponseWriter.WriteHeader(code)
}

func (g *gzipWriter) Write(p []byte) (int, error) {
	if !g.decided {
		g.WriteHeader(http.StatusOK)
	}
	if g.zw == nil {
		return g.ResponseWriter.Write(p)
	}
	return g.zw.Write(p)
}

func (g *gzipWriter) close() {
	if g.zw != nil {
		_ = g.zw.Close()
	}
}

// Unwrap exposes the underlying writer to http.ResponseController.
func (g *gzipWriter) Unwrap() http.ResponseWriter { return g.ResponseWriter }

func contentTypeFor(p string) string {
	switch strings.ToLower(path.Ext(p)) {
	case ".json", ".txt", ".md":
		return "text/plain; charset=utf-8"
	}
	return "application/octet-stream"
}

// signedCDNURL builds the CDN location for an LFS blob, shaped like the
// Hub's: /repos/<2hex>/<2hex>/<repo key>/<sha256> plus a disposition, an
// expiry and a signature the CDN verifies.
func (h *Hub) signedCDNURL(rs *repoState, f *fileState) string {
	p := "/repos/" + rs.key[:2] + "/" + rs.key[2:4] + "/" + rs.key + "/" + f.sha256
	expires := strconv.FormatInt(time.Now().Add(cdnURLLifetime).Unix(), 10)
	return h.CDNURL() + p +
		"?response-content-disposition=" + url.QueryEscape(contentDisposition(path.Base(f.Path))) +
		"&Expires=" + expires +
		"&Signature=" + h.sign(p, expires) +
		"&Key-Pair-Id=K1"
}

// signedXetBridgeURL is where the Hub sends a plain-HTTP download of a Xet
// file: the Xet bridge, /xet-bridge-us/<24-hex repo id>/<xet hash>, which
// names the file by its Xet hash, not its sha256. It is signed like the
// LFS URLs and served by the same CDN listener.
func (h *Hub) signedXetBridgeURL(rs *repoState, f *fileState) string {
	p := "/xet-bridge-us/" + rs.key[:24] + "/" + f.xetHash
	expires := strconv.FormatInt(time.Now().Add(cdnURLLifetime).Unix(), 10)
	return h.xetBridgeURL() + p +
		"?response-content-disposition=" + url.QueryEscape(contentDisposition(path.Base(f.Path))) +
		"&Expires=" + expires +
		"&Signature=" + h.sign(p, expires) +
		"&Key-Pair-Id=K1"
}

// sign is the CDN URL signature: HMAC-SHA256 over path and expiry with a key
// only this fake knows, so tests catch code that forges or edits CDN URLs.
func (h *Hub) sign(p, expires string) string {
	m := hmac.New(sha256.New, *h.signKey.Load())
	m.Write([]byte(p + "\n" + expires))
	return hex.EncodeToString(m.Sum(nil))
}

// contentDisposition mirrors the Hub's value, with the RFC 5987 form first.
func contentDisposition(name string) string {
	plain := strings.Map(func(c rune) rune {
		if c == '"' || c == '\\' || c < 0x20 || c > 0x7e {
			return '_'
		}
		return c
	}, name)
	return "inline; filename*=UTF-8''" + url.PathEscape(name) + `; filename="` + plain + `";`
}

// newSignKey starts signing CDN URLs with a fresh random key.
func (h *Hub) newSignKey() error {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	h.signKey.Store(&key)
	return nil
}
