package fakecivitai

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Storage URL shapes (see UPSTREAMS.md section 4.1, "Redirect targets").
const (
	bucket         = "civitai-modelfiles"
	r2PathPrefix   = "/" + bucket + "/"            // R2-style: /civitai-modelfiles/{fileID}/{name}
	b2PathPrefix   = "/file/" + bucket + "/model/" // B2-style: /file/civitai-modelfiles/model/{fileID}/{name}
	amzDateLayout  = "20060102T150405Z"
	amzCredential  = "fake"
	urlLifetimeSec = 86400 // the real presigned URLs live 24 h
	b2TokenPrefix  = "4_"
)

// signedURL is where the download route redirects for f.
func (c *CivitAI) signedURL(f *fileState) string {
	if f.Storage == ServerB2 {
		return c.signB2(f, time.Now().Add(urlLifetimeSec*time.Second))
	}
	return c.signR2(f, time.Now())
}

// signR2 builds an S3-presigned-style URL dated `date`.
func (c *CivitAI) signR2(f *fileState, date time.Time) string {
	p := r2PathPrefix + strconv.Itoa(f.ID) + "/" + f.Name
	amzDate := date.UTC().Format(amzDateLayout)
	expires := strconv.Itoa(urlLifetimeSec)
	disp := attachmentDisposition(f.Name)
	return c.R2URL() + r2PathPrefix + strconv.Itoa(f.ID) + "/" + url.PathEscape(f.Name) +
		"?X-Amz-Algorithm=AWS4-HMAC-SHA256" +
		"&X-Amz-Credential=" + amzCredential +
		"&X-Amz-Date=" + amzDate +
		"&X-Amz-Expires=" + expires +
		"&X-Amz-SignedHeaders=host" +
		"&response-content-disposition=" + queryEscape(disp) +
		"&X-Amz-Signature=" + c.mac("r2", p, amzDate, expires, disp)
}

// signB2 builds a B2-style download URL whose token expires at exp.
func (c *CivitAI) signB2(f *fileState, exp time.Time) string {
	p := b2PathPrefix + strconv.Itoa(f.ID) + "/" + f.Name
	disp := attachmentDisposition(f.Name)
	return c.B2URL() + b2PathPrefix + strconv.Itoa(f.ID) + "/" + url.PathEscape(f.Name) +
		"?Authorization=" + c.b2Token(p, exp.Unix(), disp) +
		"&b2ContentDisposition=" + queryEscape(disp)
}

// b2Token is a download authorization token: a version prefix, the expiry
// (Unix seconds) and an HMAC over path, expiry and disposition.
func (c *CivitAI) b2Token(p string, exp int64, disp string) string {
	e := strconv.FormatInt(exp, 10)
	return b2TokenPrefix + e + "_" + c.mac("b2", p, e, disp)
}

// mac is HMAC-SHA256 over parts with a key only this fake knows, so tests
// catch code that forges or edits storage URLs.
func (c *CivitAI) mac(parts ...string) string {
	m := hmac.New(sha256.New, c.signKey)
	m.Write([]byte(strings.Join(parts, "\n")))
	return hex.EncodeToString(m.Sum(nil))
}

// attachmentDisposition is the disposition CivitAI signs into storage URLs.
func attachmentDisposition(name string) string {
	safe := strings.Map(func(r rune) rune {
		if r == '"' || r == '\\' || r < 0x20 || r == 0x7f {
			return '_'
		}
		return r
	}, name)
	return `attachment; filename="` + safe + `"`
}

// queryEscape percent-encodes like encodeURIComponent does for these values
// (spaces as %20, not "+").
func queryEscape(s string) string { return strings.ReplaceAll(url.QueryEscape(s), "+", "%20") }

// serveR2 is the R2-style (S3-compatible, presigned URLs) storage.
func (c *CivitAI) serveR2(w http.ResponseWriter, r *http.Request) {
	// S3-compatible stores refuse a second auth mechanism next to a
	// presigned query; this is also how tests catch a key leaking across
	// the redirect.
	if len(r.Header.Values("Authorization")) > 0 {
		writeS3Error(w, r, http.StatusBadRequest, "InvalidArgument", "Only one auth mechanism allowed")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeS3Error(w, r, http.StatusMethodNotAllowed, "MethodNotAllowed", "The specified method is not allowed against this resource.")
		return
	}
	q := r.URL.Query()
	if q.Get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" || q.Get("X-Amz-Credential") != amzCredential ||
		q.Get("X-Amz-SignedHeaders") != "host" {
		writeS3Error(w, r, http.StatusForbidden, "AccessDenied", "Access Denied")
		return
	}
	amzDate, expires := q.Get("X-Amz-Date"), q.Get("X-Amz-Expires")
	date, err1 := time.Parse(amzDateLayout, amzDate)
	secs, err2 := strconv.Atoi(expires)
	if err1 != nil || err2 != nil || secs <= 0 || secs > 7*86400 {
		writeS3Error(w, r, http.StatusForbidden, "AccessDenied", "Access Denied")
		return
	}
	disp := q.Get("response-content-disposition")
	if !hmac.Equal([]byte(q.Get("X-Amz-Signature")), []byte(c.mac("r2", r.URL.Path, amzDate, expires, disp))) {
		writeS3Error(w, r, http.StatusForbidden, "SignatureDoesNotMatch",
			"The request signature we calculated does not match the signature you provided. Check your secret access key and signing method.")
		return
	}
	if time.Now().After(date.Add(time.Duration(secs) * time.Second)) {
		writeS3Error(w, r, http.StatusForbidden, "AccessDenied", "Request has expired")
		return
	}
	f := c.storageFile(ServerR2, r.URL.Path, r2PathPrefix)
	if f == nil {
		writeS3Error(w, r, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}
	c.serveObject(w, r, f, disp)
}

// serveB2 is the B2-style (download authorization token in the query)
// storage.
func (c *CivitAI) serveB2(w http.ResponseWriter, r *http.Request) {
	if len(r.Header.Values("Authorization")) > 0 {
		writeB2Error(w, r, http.StatusUnauthorized, "bad_auth_token", "Invalid authorization token. Server error: auth token valid for a different request")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeB2Error(w, r, http.StatusMethodNotAllowed, "method_not_allowed", "method not allowed: "+r.Method)
		return
	}
	q := r.URL.Query()
	tok, disp := q.Get("Authorization"), q.Get("b2ContentDisposition")
	exp, ok := parseB2Token(tok)
	if !ok || !hmac.Equal([]byte(tok), []byte(c.b2Token(r.URL.Path, exp, disp))) {
		writeB2Error(w, r, http.StatusForbidden, "access_denied", "Authorization token does not match the request")
		return
	}
	if time.Now().Unix() > exp {
		writeB2Error(w, r, http.StatusForbidden, "expired_auth_token", "Authorization token has expired")
		return
	}
	f := c.storageFile(ServerB2, r.URL.Path, b2PathPrefix)
	if f == nil {
		writeB2Error(w, r, http.StatusNotFound, "not_found", "File with such name does not exist.")
		return
	}
	w.Header().Set("X-Bz-File-Name", "model/"+strconv.Itoa(f.ID)+"/"+url.PathEscape(f.Name))
	w.Header().Set("X-Bz-Content-Sha1", f.sha1)
	c.serveObject(w, r, f, disp)
}

// parseB2Token extracts the expiry of a token shaped like b2Token's.
func parseB2Token(tok string) (exp int64, ok bool) {
	rest, found := strings.CutPrefix(tok, b2TokenPrefix)
	if !found {
		return 0, false
	}
	e, _, found := strings.Cut(rest, "_")
	if !found {
		return 0, false
	}
	exp, err := strconv.ParseInt(e, 10, 64)
	return exp, err == nil
}

// storageFile maps an unescaped storage path to the file it names on the
// given storage, or nil.
func (c *CivitAI) storageFile(storage, p, prefix string) *fileState {
	rest, ok := strings.CutPrefix(p, prefix)
	if !ok {
		return nil
	}
	idStr, name, ok := strings.Cut(rest, "/")
	if !ok {
		return nil
	}
	id, err := strconv.Atoi(idStr)
	if err != nil {
		return nil
	}
	f := c.file(id)
	if f == nil || f.Name != name || f.Storage != storage {
		return nil
	}
	return f
}

// serveObject answers GET/HEAD for an authorised object: single ranges via
// http.ServeContent, an ETag unrelated to the content hash, the signed
// disposition, and the fault knobs.
func (c *CivitAI) serveObject(w http.ResponseWriter, r *http.Request, f *fileState, disp string) {
	hd := w.Header()
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("ETag", f.etag)
	hd.Set("Accept-Ranges", "bytes")
	if disp != "" {
		hd.Set("Content-Disposition", disp)
	}

	c.faults.ServeContent(c.fetches.CountGET(w, r, f.ID), r, f.ID, f.Data, f.uploaded)
}

// writeS3Error answers with an S3-style XML error document.
func writeS3Error(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/xml")
	body := `<?xml version="1.0" encoding="UTF-8"?>` + "\n<Error><Code>" + code + "</Code><Message>" + msg + "</Message></Error>"
	writeBody(w, r, status, []byte(body))
}

// writeB2Error answers with a B2-style JSON error.
func writeB2Error(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	w.Header().Set("Cache-Control", "max-age=0, no-cache, no-store")
	writeJSON(w, r, status, b2ErrorJSON{Code: code, Message: msg, Status: status})
}

type b2ErrorJSON struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Status  int    `json:"status"`
}
