package fakehub

import (
	"crypto/hmac"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// serveCDN serves LFS blobs at the signed URLs the Hub hands out, behaving
// like the object store behind the real CDN: signed URLs only, no
// Authorization header, single-range support, and an ETag unrelated to the
// content hash.
func (h *Hub) serveCDN(w http.ResponseWriter, r *http.Request) {
	// Object stores refuse a second auth mechanism next to a signed URL; this
	// is also how tests catch a token leaking across the redirect.
	if len(r.Header.Values("Authorization")) > 0 {
		writeCDNError(w, r, http.StatusBadRequest, "InvalidArgument",
			"Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeCDNError(w, r, http.StatusMethodNotAllowed, "MethodNotAllowed", "The specified method is not allowed against this resource.")
		return
	}
	sha, xetHash, ok := parseCDNPath(r.URL.Path)
	if !ok {
		writeCDNError(w, r, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}
	if !h.validSignature(r) {
		writeCDNError(w, r, http.StatusForbidden, "AccessDenied", "Access denied")
		return
	}
	if xetHash != "" {
		sha = h.xetSHA256(xetHash)
	}
	f := h.blob(sha)
	if f == nil {
		writeCDNError(w, r, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}

	hd := w.Header()
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("ETag", `"`+derivedHex("cdn-etag", sha)+`"`)
	hd.Set("Accept-Ranges", "bytes")
	if cd := r.URL.Query().Get("response-content-disposition"); cd != "" {
		hd.Set("Content-Disposition", cd)
	}

	h.faults.ServeContent(h.cdnFetches.CountGET(w, r, sha), r, sha, f.Data, time.Time{})
}

// parseCDNPath checks an LFS path, /repos/<2hex>/<2hex>/<64hex repo
// key>/<64hex sha256> (the two short segments being the key's prefix), and
// returns the sha256; or a Xet bridge path, /xet-bridge-us/<24hex repo
// id>/<64hex xet hash>, and returns the Xet hash.
func parseCDNPath(p string) (sha, xetHash string, ok bool) {
	segs := strings.Split(strings.TrimPrefix(p, "/"), "/")
	if len(segs) == 3 && segs[0] == "xet-bridge-us" && isHex(segs[1], 24) && isHex(segs[2], 64) {
		return "", segs[2], true
	}
	if len(segs) != 5 || segs[0] != "repos" {
		return "", "", false
	}
	key, sha := segs[3], segs[4]
	if !isHex(key, 64) || !isHex(sha, 64) || segs[1] != key[:2] || segs[2] != key[2:4] {
		return "", "", false
	}
	return sha, "", true
}

// validSignature verifies Expires, Key-Pair-Id and the HMAC the Hub put in
// the Location, so code that edits or replays expired CDN URLs fails.
func (h *Hub) validSignature(r *http.Request) bool {
	q := r.URL.Query()
	expires := q.Get("Expires")
	exp, err := strconv.ParseInt(expires, 10, 64)
	if err != nil || time.Now().Unix() > exp || q.Get("Key-Pair-Id") != "K1" {
		return false
	}
	return hmac.Equal([]byte(q.Get("Signature")), []byte(h.sign(r.URL.Path, expires)))
}

// writeCDNError answers with the object store's XML error document.
func writeCDNError(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/xml")
	body := `<?xml version="1.0" encoding="UTF-8"?>` + "\n<Error><Code>" + code + "</Code><Message>" + msg + "</Message></Error>"
	writeBody(w, r, status, []byte(body))
}
