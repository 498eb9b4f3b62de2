package hfhub

import (
	"encoding/json"
	"errors"
	"mime"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// The gateway caches API answers keyed by the request, so a parameter it
// does not understand must neither reach the Hub nor split the cache:
// anyone on the LAN could otherwise fill the index with one copy per junk
// parameter. These functions keep the parameters each cached route
// accepts, in one canonical form, which is both what is sent upstream and
// what the cache key is made of.

var (
	// expandField is a field name for ?expand= (downloads, likes, ...).
	expandField = regexp.MustCompile(`^[A-Za-z0-9_.]{1,64}$`)
	// cursorValue is the Hub's opaque pagination cursor.
	cursorValue = regexp.MustCompile(`^[A-Za-z0-9_.=~+/-]{1,512}$`)
)

const (
	maxExpandFields = 32
	maxTreeLimit    = 10000
	// MaxPathsInfoPaths bounds the paths of one paths-info request.
	MaxPathsInfoPaths = 10000
)

// APIQuery returns the parameters of a repo info or tree request that the
// gateway understands, canonical: booleans as "true"/"false" (a value that
// is not a boolean is dropped), repeated expand fields sorted and unique,
// anything else dropped.
func APIQuery(kind Kind, q url.Values) url.Values {
	out := url.Values{}
	setBool := func(k string) {
		if b, ok := parseBool(q.Get(k)); ok {
			out.Set(k, strconv.FormatBool(b))
		}
	}
	switch kind {
	case RepoInfo:
		setBool("blobs")
		setBool("securityStatus")
		setBool("files_metadata")
		var fields []string
		for _, v := range q["expand"] {
			if expandField.MatchString(v) {
				fields = append(fields, v)
			}
		}
		slices.Sort(fields)
		fields = slices.Compact(fields)
		if len(fields) > maxExpandFields {
			fields = fields[:maxExpandFields]
		}
		if len(fields) > 0 {
			out["expand"] = fields
		}
	case Tree:
		setBool("recursive")
		setBool("expand")
		if c := q.Get("cursor"); cursorValue.MatchString(c) {
			out.Set("cursor", c)
		}
		if n, err := strconv.Atoi(q.Get("limit")); err == nil && n > 0 && n <= maxTreeLimit {
			out.Set("limit", strconv.Itoa(n))
		}
	}
	return out
}

func parseBool(s string) (bool, bool) {
	switch strings.ToLower(s) {
	case "true", "1":
		return true, true
	case "false", "0":
		return false, true
	}
	return false, false
}

// PathsInfoBody returns the canonical form-encoded body of a paths-info
// request ("expand=…&paths=…"): the paths sorted and unique, expand a
// boolean. The Python client sends a form (paths=a&paths=b&expand=false),
// huggingface.js sends JSON ({"paths": [...], "expand": false}); both
// become the same request.
func PathsInfoBody(contentType string, body []byte) ([]byte, error) {
	var paths []string
	expand := false
	mt, _, _ := mime.ParseMediaType(contentType)
	if mt == "application/json" {
		var b struct {
			Paths  []string `json:"paths"`
			Expand any      `json:"expand"`
		}
		if err := json.Unmarshal(body, &b); err != nil {
			return nil, errors.New("paths-info body is not the expected JSON")
		}
		paths = b.Paths
		switch v := b.Expand.(type) {
		case nil:
		case bool:
			expand = v
		case string:
			expand, _ = parseBool(v)
		default:
			return nil, errors.New("paths-info expand must be a boolean")
		}
	} else {
		q, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, errors.New("paths-info body is not a form")
		}
		paths = q["paths"]
		expand, _ = parseBool(q.Get("expand"))
	}
	for _, p := range paths {
		if p == "" || len(p) > 4096 || strings.ContainsAny(p, "\x00\r\n") {
			return nil, errors.New("invalid path in paths-info body")
		}
	}
	slices.Sort(paths)
	paths = slices.Compact(paths)
	if len(paths) > MaxPathsInfoPaths {
		return nil, errors.New("too many paths in paths-info body")
	}
	out := url.Values{"paths": paths}
	out.Set("expand", strconv.FormatBool(expand))
	return []byte(out.Encode()), nil
}
