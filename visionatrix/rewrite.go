package visionatrix

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/url"
	"strings"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/hfhub"
)

// Origins says which download URLs point at the Hub or at CivitAI: scheme
// and host of each (the configured endpoints and the public names).
type Origins struct {
	Hub, CivitAI []*url.URL
}

// mirrorPath returns the gateway path (with query) serving the file raw
// names, or false when raw is not a Hub resolve URL or a CivitAI download
// URL. The path is taken from raw as it is written, so the gateway is asked
// for exactly what the upstream would have been.
func (o Origins) mirrorPath(raw string) (string, bool) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil {
		return "", false
	}
	// Everything after scheme://host, byte for byte.
	_, afterScheme, _ := strings.Cut(raw, "://")
	i := strings.IndexAny(afterScheme, "/?#")
	if i < 0 || afterScheme[i] != '/' {
		return "", false
	}
	rest := afterScheme[i:]
	if j := strings.IndexByte(rest, '#'); j >= 0 {
		rest = rest[:j] // never sent to a server anyway
	}
	switch {
	case matchOrigin(o.Hub, u):
		rt, err := hfhub.ParseRoute("GET", &url.URL{Path: u.Path, RawPath: u.RawPath})
		if err != nil || rt.Kind != hfhub.Resolve {
			return "", false
		}
	case matchOrigin(o.CivitAI, u):
		if !strings.HasPrefix(u.Path, "/api/download/models/") {
			return "", false
		}
	default:
		return "", false
	}
	return rest, true
}

func matchOrigin(list []*url.URL, u *url.URL) bool {
	for _, o := range list {
		if strings.EqualFold(o.Scheme, u.Scheme) && authinject.CanonicalHost(o) == authinject.CanonicalHost(u) {
			return true
		}
	}
	return false
}

// Rewrite returns doc with every "url" member whose value is a Hub resolve
// URL or a CivitAI download URL replaced by base followed by the same path
// and query. Nothing else changes, byte for byte: the document is scanned
// as tokens, never decoded and encoded again, so key order, spacing,
// number formats and the catalog's other fields stay as they were. It
// also returns how many values it replaced. doc must be valid JSON.
func Rewrite(doc []byte, base string, o Origins) ([]byte, int, error) {
	if !json.Valid(doc) {
		return nil, 0, errors.New("the catalog is not valid JSON")
	}
	// One frame per open container: whether it is an object, whether the
	// next string in it is a member name, and the last member name seen.
	type frame struct {
		object, wantKey bool
		key             string
	}
	var stack []frame
	var out bytes.Buffer
	out.Grow(len(doc) + len(doc)/8)
	last, n := 0, 0
	for i := 0; i < len(doc); i++ {
		switch doc[i] {
		case '{':
			stack = append(stack, frame{object: true, wantKey: true})
		case '[':
			stack = append(stack, frame{})
		case '}', ']':
			stack = stack[:len(stack)-1]
		case ',':
			if top := len(stack) - 1; top >= 0 && stack[top].object {
				stack[top].wantKey = true
			}
		case ':':
			stack[len(stack)-1].wantKey = false
		case '"':
			end := stringEnd(doc, i)
			tok := doc[i : end+1]
			top := len(stack) - 1
			switch {
			case top >= 0 && stack[top].object && stack[top].wantKey:
				var k string
				if err := json.Unmarshal(tok, &k); err != nil {
					return nil, 0, err
				}
				stack[top].key = k
			case top >= 0 && stack[top].object && stack[top].key == "url":
				var s string
				if err := json.Unmarshal(tok, &s); err != nil {
					return nil, 0, err
				}
				if p, ok := o.mirrorPath(s); ok {
					out.Write(doc[last:i])
					out.Write(quote(base + p))
					last = end + 1
					n++
				}
			}
			i = end
		}
	}
	out.Write(doc[last:])
	return out.Bytes(), n, nil
}

// stringEnd returns the index of the quote closing the JSON string that
// starts at doc[start].
func stringEnd(doc []byte, start int) int {
	for i := start + 1; i < len(doc); i++ {
		switch doc[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
	return len(doc) - 1 // unreachable for valid JSON
}

// quote encodes s as a JSON string, leaving "<", ">" and "&" as they are
// (URLs carry "&" between parameters).
func quote(s string) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(s) // a string always encodes
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}
