package hfhub

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
)

// XetFileInfoType is the media type huggingface.js asks for to learn a
// file's Xet hash; a client that does not get it downloads over plain HTTP.
const XetFileInfoType = "application/vnd.xet-fileinfo+json"

// StripXetHeaders removes every Xet hint from upstream answer headers:
// X-Xet-* (hash, refresh route, CAS URL, access token) and the xet-auth /
// xet-reconstruction-info parts of Link. Without them, stock clients
// download plain HTTP from the gateway instead of going around it to the
// Xet CAS with a token derived from the operator's.
func StripXetHeaders(h http.Header) {
	for k := range h {
		if strings.HasPrefix(http.CanonicalHeaderKey(k), "X-Xet-") {
			delete(h, k)
		}
	}
	links := h.Values("Link")
	if len(links) == 0 {
		return
	}
	h.Del("Link")
	for _, l := range links {
		var kept []string
		for _, part := range splitLinks(l) {
			if !isXetLink(part) {
				kept = append(kept, part)
			}
		}
		if len(kept) > 0 {
			h.Add("Link", strings.Join(kept, ", "))
		}
	}
}

func isXetLink(part string) bool {
	p := strings.ToLower(part)
	return strings.Contains(p, `rel="xet-`) || strings.Contains(p, "rel=xet-")
}

// splitLinks splits a Link header value into its comma-separated entries,
// ignoring commas inside <...>.
func splitLinks(v string) []string {
	var out []string
	depth, start := 0, 0
	for i, c := range v {
		switch c {
		case '<':
			depth++
		case '>':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, strings.TrimSpace(v[start:i]))
				start = i + 1
			}
		}
	}
	if s := strings.TrimSpace(v[start:]); s != "" {
		out = append(out, s)
	}
	return out
}

// FilterAccept drops the Xet file-info media type from an Accept header
// value; it returns "" when nothing is left.
func FilterAccept(accept string) string {
	var kept []string
	for _, part := range strings.Split(accept, ",") {
		mt := strings.TrimSpace(strings.SplitN(part, ";", 2)[0])
		if strings.EqualFold(mt, XetFileInfoType) || strings.TrimSpace(part) == "" {
			continue
		}
		kept = append(kept, strings.TrimSpace(part))
	}
	return strings.Join(kept, ", ")
}

// StripXetFromEntries removes "xetHash" from a tree or paths-info JSON array,
// so that huggingface_hub 1.22+ (which may skip the HEAD when a cached tree
// names a Xet hash) downloads through the gateway. Anything that is not a
// JSON array of objects is returned unchanged.
func StripXetFromEntries(body []byte) []byte {
	return FilterXetEntries(body, func(int64) bool { return false })
}

// FilterXetEntries removes "xetHash" from the entries of a tree or
// paths-info JSON array whose size keep refuses (the Xet files the gateway
// does not serve over Xet). Anything that is not a JSON array of objects is
// returned unchanged.
func FilterXetEntries(body []byte, keep func(size int64) bool) []byte {
	var entries []map[string]json.RawMessage
	if err := json.Unmarshal(body, &entries); err != nil {
		return body
	}
	changed := false
	for _, e := range entries {
		if _, ok := e["xetHash"]; ok && !keep(entrySize(e)) {
			delete(e, "xetHash")
			changed = true
		}
	}
	if !changed {
		return body
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(entries); err != nil {
		return body
	}
	return bytes.TrimRight(buf.Bytes(), "\n")
}

// XetEntry is a Xet-backed file named in a tree or paths-info answer.
type XetEntry struct {
	Hash string
	Size int64
}

// XetEntries returns the files of a tree or paths-info answer that carry
// a well-formed xetHash (nil for a body that is not such an answer).
func XetEntries(body []byte) []XetEntry {
	var entries []map[string]json.RawMessage
	if err := json.Unmarshal(body, &entries); err != nil {
		return nil
	}
	var out []XetEntry
	for _, e := range entries {
		var h string
		if json.Unmarshal(e["xetHash"], &h) != nil || !sha256Re.MatchString(h) {
			continue
		}
		if size := entrySize(e); size >= 0 {
			out = append(out, XetEntry{Hash: h, Size: size})
		}
	}
	return out
}

// entrySize is a tree entry's file size (lfs.size, else size; -1 if none).
func entrySize(e map[string]json.RawMessage) int64 {
	var lfs struct {
		Size *int64 `json:"size"`
	}
	if json.Unmarshal(e["lfs"], &lfs) == nil && lfs.Size != nil {
		return *lfs.Size
	}
	var size int64
	if json.Unmarshal(e["size"], &size) == nil {
		return size
	}
	return -1
}

// Xet modes (huggingface.xet).
const (
	XetAuto  = "auto"
	XetServe = "serve"
	XetHide  = "hide"
)

// XetPolicy decides which Xet-backed files the gateway serves over Xet:
// none (hide), all (serve), or those of at least MinSize (auto), below
// which plain HTTP through the gateway works for every client.
type XetPolicy struct {
	Mode    string
	MinSize int64
}

// Serves reports whether a Xet-backed file of size bytes is served over Xet.
func (p XetPolicy) Serves(size int64) bool {
	switch p.Mode {
	case XetServe:
		return true
	case XetAuto:
		return size >= 0 && size >= p.MinSize
	}
	return false
}

// Any reports whether the policy may serve any file over Xet.
func (p XetPolicy) Any() bool { return p.Mode == XetServe || p.Mode == XetAuto }

// SetXetHeaders adds the Xet hints of a resolve answer the gateway serves
// over Xet: X-Xet-Hash and a Link whose xet-auth (the token route, on
// base) and xet-reconstruction-info (on cas) URLs both name the gateway:
// in mirror mode its own address, in proxy mode the Hub's and the CAS's
// hosts, which it intercepts. So no client is ever pointed at the
// upstream CAS or handed an upstream token.
func SetXetHeaders(h http.Header, base string, repo Repo, commit, xetHash, cas string) {
	h.Set(HeaderXetHash, xetHash)
	h.Add("Link", "<"+base+"/api/"+repo.APIType()+"/"+repo.ID+"/xet-read-token/"+commit+`>; rel="xet-auth", <`+
		cas+"/v1/reconstructions/"+xetHash+`>; rel="xet-reconstruction-info"`)
}

// The Hub's Xet data-plane hosts (UPSTREAMS.md §3): the CAS API and the
// xorb transfer hosts, US and EU. In proxy mode the gateway intercepts
// them (the default *.hf.co) and answers them itself.
const (
	XetCASHost      = "cas-server.xethub.hf.co"
	xetCASPrefix    = "cas-server."
	xetTransferPrfx = "transfer."
)

// XetHosts are the Xet CAS and transfer hosts the gateway answers in
// proxy mode. cas-bridge.xethub.hf.co is not among them: it serves whole
// files over plain HTTP (the Xet bridge), a CDN like the others.
var XetHosts = []string{
	"cas-server.xethub.hf.co", "cas-server.xethub-eu.hf.co",
	"transfer.xethub.hf.co", "transfer.xethub-eu.hf.co",
}

// XetTransferHost is the transfer host paired with a Xet CAS or transfer
// host (cas-server.xethub-eu.hf.co -> transfer.xethub-eu.hf.co).
func XetTransferHost(host string) string {
	if rest, ok := strings.CutPrefix(host, xetCASPrefix); ok {
		return xetTransferPrfx + rest
	}
	return host
}

// AcceptsXetFileInfo reports whether an Accept header asks for the Xet
// file-info media type (huggingface.js's Xet discovery).
func AcceptsXetFileInfo(accept string) bool {
	for _, part := range strings.Split(accept, ",") {
		if strings.EqualFold(strings.TrimSpace(strings.SplitN(part, ";", 2)[0]), XetFileInfoType) {
			return true
		}
	}
	return false
}

// RewriteNextLink points the rel="next" URL of a paginated answer at the
// gateway: clients do not rewrite it themselves, so without this page 2
// would go straight to the upstream. Only links on the upstream's own
// origin are rewritten; gateway is the scheme://host the client used.
func RewriteNextLink(h http.Header, upstream *url.URL, gateway string) {
	links := h.Values("Link")
	if len(links) == 0 {
		return
	}
	h.Del("Link")
	for _, l := range links {
		parts := splitLinks(l)
		for i, part := range parts {
			lt, gt := strings.Index(part, "<"), strings.Index(part, ">")
			if lt != 0 || gt < 0 {
				continue
			}
			u, err := url.Parse(part[1:gt])
			if err != nil || !strings.EqualFold(u.Host, upstream.Host) || u.Scheme != upstream.Scheme {
				continue
			}
			parts[i] = "<" + gateway + u.RequestURI() + ">" + part[gt+1:]
		}
		h.Add("Link", strings.Join(parts, ", "))
	}
}
