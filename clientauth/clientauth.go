// Package clientauth knows the worker keys: which ones exist, how a worker
// presents its key, and what each key may do. A worker key stands in for
// the operator's real credentials on the worker, so that one worker can be
// revoked without rotating the Hugging Face token or the CivitAI key.
//
// Keys carry the prefix "mgw_", which tells them apart from a worker's own
// Hub token (hf_...) or CivitAI key. Only their sha256 is configured, and
// a presented key is compared in constant time against every known one.
package clientauth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
)

// Prefix starts every worker key.
const Prefix = "mgw_"

// Scopes a key may have.
const (
	ScopeHuggingFace = "huggingface"
	ScopeCivitAI     = "civitai"
)

// Key is one known worker key (its hash, never the key).
type Key struct {
	Name   string
	hash   [32]byte
	scopes map[string]bool // empty: every scope
	repos  []string        // empty: every repo
}

// Allows reports whether the key may use scope.
func (k *Key) Allows(scope string) bool { return len(k.scopes) == 0 || k.scopes[scope] }

// AllowsRepo reports whether the key may fetch the Hugging Face repo
// (as written in URLs: "org/name", "datasets/org/name").
func (k *Key) AllowsRepo(repo string) bool { return len(k.repos) == 0 || MatchRepo(k.repos, repo) }

// HasRepoLimits reports whether the key is limited to some repos.
func (k *Key) HasRepoLimits() bool { return len(k.repos) > 0 }

// MatchRepo reports whether repo matches one of the patterns ("org/*",
// exact ids, "datasets/org/*").
func MatchRepo(patterns []string, repo string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, repo); ok {
			return true
		}
	}
	return false
}

// Keys is the set of known worker keys.
type Keys struct {
	keys []Key
}

// Spec describes one key as the operator configured it (clients.keys):
// its name, the hex sha256 of the key or a file holding the key itself,
// and its limits.
type Spec struct {
	Name      string
	KeySHA256 string
	KeyFile   string
	Scopes    []string // empty: every scope
	Repos     []string // empty: every repo
}

// Load builds the key set from specs, reading key files with readFile (at
// start, and again on SIGHUP).
func Load(cfg []Spec, readFile func(string) ([]byte, error)) (*Keys, error) {
	ks := &Keys{}
	for _, c := range cfg {
		k := Key{Name: c.Name, repos: c.Repos, scopes: map[string]bool{}}
		for _, s := range c.Scopes {
			k.scopes[s] = true
		}
		switch {
		case c.KeyFile != "":
			b, err := readFile(c.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("clients.keys %s: reading key_file: %w", c.Name, err)
			}
			secret := strings.TrimSpace(string(b))
			if !strings.HasPrefix(secret, Prefix) {
				return nil, fmt.Errorf("clients.keys %s: the key in key_file must start with %s", c.Name, Prefix)
			}
			k.hash = sha256.Sum256([]byte(secret))
		default:
			h, err := hex.DecodeString(c.KeySHA256)
			if err != nil || len(h) != 32 {
				return nil, fmt.Errorf("clients.keys %s: key_sha256 must be 64 hex digits", c.Name)
			}
			copy(k.hash[:], h)
		}
		ks.keys = append(ks.keys, k)
	}
	return ks, nil
}

// Lookup returns the key whose secret this is. Every known key is compared
// (in constant time), so the time taken says nothing about which matched.
func (ks *Keys) Lookup(secret string) (*Key, bool) {
	return ks.LookupFingerprint(FingerprintOf(secret))
}

// Fingerprint is a presented key's sha256: what the edge keeps of a key
// it must look up again later (an intercepted connection's CONNECT key,
// re-checked per request after a reload), so that the raw key is dropped
// as soon as it is read.
type Fingerprint [32]byte

// FingerprintOf returns secret's fingerprint ("": the zero one).
func FingerprintOf(secret string) Fingerprint {
	if secret == "" {
		return Fingerprint{}
	}
	return sha256.Sum256([]byte(secret))
}

// IsZero reports whether no key was presented.
func (f Fingerprint) IsZero() bool { return f == Fingerprint{} }

// LookupFingerprint returns the key with this fingerprint, comparing every
// known key in constant time.
func (ks *Keys) LookupFingerprint(h Fingerprint) (*Key, bool) {
	var found *Key
	for i := range ks.keys {
		if subtle.ConstantTimeCompare(h[:], ks.keys[i].hash[:]) == 1 {
			found = &ks.keys[i]
		}
	}
	return found, found != nil
}

// Known reports whether a key named name is in the set: what a credential
// the gateway issued for that key's holder (a Xet token) is checked
// against, so that revoking the key revokes it too.
func (ks *Keys) Known(name string) bool {
	for i := range ks.keys {
		if ks.keys[i].Name == name {
			return true
		}
	}
	return false
}

// AllowsHubRepo reports whether a key named name is in the set and may,
// as configured now, fetch the Hugging Face repo (as written in URLs):
// what a credential the gateway issued for that key's holder (a Xet token,
// a xorb URL) is re-checked against at each use, so that a reload that
// removes the key, or narrows its scopes or repos, takes effect at once.
func (ks *Keys) AllowsHubRepo(name, urlRepo string) bool {
	for i := range ks.keys {
		if k := &ks.keys[i]; k.Name == name {
			return k.Allows(ScopeHuggingFace) && k.AllowsRepo(urlRepo)
		}
	}
	return false
}

// Generate returns a new random worker key and its sha256 (hex).
func Generate() (key, sha string, err error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("generating a key: %w", err)
	}
	key = Prefix + hex.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(key))
	return key, hex.EncodeToString(sum[:]), nil
}

// FromBearer returns the worker key in an Authorization header value
// ("Bearer mgw_..."), if it holds one.
func FromBearer(v string) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, strings.HasPrefix(tok, Prefix)
}

// FromProxyAuthorization returns the password of a Proxy-Authorization
// Basic value (HTTPS_PROXY=http://name:key@gate:8080), when it is a worker
// key.
func FromProxyAuthorization(v string) (string, bool) {
	scheme, enc, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
	if err != nil {
		return "", false
	}
	_, pass, _ := strings.Cut(string(raw), ":")
	return pass, strings.HasPrefix(pass, Prefix)
}

// Take finds a worker key in r — Authorization: Bearer mgw_..., or a
// token=mgw_... query parameter (CivitAI style) — and removes every
// presentation of one from r, so that none can travel further. It
// returns the key and whether one was there. An Authorization header that
// holds a worker key in any other form is removed too, and reported as a
// presented (unusable) key so the caller refuses it.
func Take(r *http.Request) (string, bool) {
	var key string
	found := false
	if v := r.Header.Get("Authorization"); strings.Contains(v, Prefix) {
		r.Header.Del("Authorization")
		key, found = FromBearer(v)
		if !found {
			key, found = v, true // not Bearer: cannot match any key
		}
	}
	q := r.URL.Query()
	changed := false
	for name, vals := range q {
		if !strings.EqualFold(name, "token") {
			continue
		}
		for _, v := range vals {
			if strings.HasPrefix(v, Prefix) {
				if !found {
					key, found = v, true
				}
				q.Del(name)
				changed = true
				break
			}
		}
	}
	if changed {
		r.URL.RawQuery = q.Encode()
		r.RequestURI = ""
	}
	return key, found
}

type ctxKey struct{}

// WithKey returns ctx carrying the request's worker key.
func WithKey(ctx context.Context, k *Key) context.Context { return context.WithValue(ctx, ctxKey{}, k) }

// FromContext returns the worker key the request was made with, or nil.
func FromContext(ctx context.Context) *Key {
	k, _ := ctx.Value(ctxKey{}).(*Key)
	return k
}

// PathKeyPrefix starts a path carrying a worker key. Visionatrix reads
// its models catalog from a URL and downloads from the URLs in it, and
// can send no header to the gateway; under clients.require_key the key
// travels in the catalog URL instead
// (MODELS_CATALOG_URL=http://gate:8080/visionatrix/key/mgw_.../), and the
// catalog's rewritten URLs carry the same prefix.
const PathKeyPrefix = "/visionatrix/key/"

// TakePath removes a key prefix (PathKeyPrefix, the key, "/") from r's
// path and returns the key and the prefix, which the answers that hand
// out URLs put before them. What follows is the path served: a single
// name (/visionatrix/key/K/models_catalog.json) is the catalog,
// /visionatrix/models_catalog.json; anything longer is a gateway path
// (/visionatrix/key/K/org/model/resolve/main/f is /org/model/resolve/main/f).
// ok is false when the path has no such prefix; r is changed only when it
// has one.
func TakePath(r *http.Request) (key, prefix string, ok bool) {
	ep := r.URL.EscapedPath()
	after, found := strings.CutPrefix(ep, PathKeyPrefix)
	if !found {
		return "", "", false
	}
	key, rest, _ := strings.Cut(after, "/")
	rest = "/" + rest
	if !strings.Contains(rest[1:], "/") {
		rest = "/visionatrix" + rest
	}
	u, err := url.Parse(rest)
	if err != nil || u.Path == "" {
		u = &url.URL{Path: "/"}
	}
	r.URL.Path, r.URL.RawPath = u.Path, u.RawPath
	r.RequestURI = ""
	return key, PathKeyPrefix + key, true
}

type pathPrefixKey struct{}

// WithPathPrefix returns ctx recording the key prefix r's URL had.
func WithPathPrefix(ctx context.Context, prefix string) context.Context {
	return context.WithValue(ctx, pathPrefixKey{}, prefix)
}

// PathPrefix returns the key prefix the request's URL had, or "".
func PathPrefix(ctx context.Context) string {
	p, _ := ctx.Value(pathPrefixKey{}).(string)
	return p
}

// Presents reports whether r carries something that looks like a worker
// or admin key, in any of the places a key is read from: Authorization,
// Proxy-Authorization, a token= parameter, or a key path. It decides
// whether clients.require_tls_for_keys applies, so it looks at the
// prefixes only, known key or not: a key sent in the clear is exposed
// whether or not it is valid.
func Presents(r *http.Request) bool {
	isKey := func(s string) bool { return strings.Contains(s, Prefix) || strings.Contains(s, AdminPrefix) }
	if isKey(r.Header.Get("Authorization")) || strings.HasPrefix(r.URL.EscapedPath(), PathKeyPrefix) {
		return true
	}
	if v := r.Header.Get("Proxy-Authorization"); v != "" {
		_, enc, _ := strings.Cut(strings.TrimSpace(v), " ")
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
		if isKey(v) || err == nil && isKey(string(raw)) {
			return true
		}
	}
	for name, vals := range r.URL.Query() {
		if strings.EqualFold(name, "token") && slices.ContainsFunc(vals, isKey) {
			return true
		}
	}
	return false
}
