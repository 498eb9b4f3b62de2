package clientauth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
)

// AdminPrefix starts every admin key. Admin keys open the admin API and
// nothing else: they never download, and worker keys never open the
// admin API, so the two prefixes keep the roles apart at a glance (and in
// the log redactor).
const AdminPrefix = "mga_"

// LoadAdmin builds the set of admin keys from admin.keys (name and
// key_sha256 or key_file; scopes and repos do not apply).
func LoadAdmin(cfg []Spec, readFile func(string) ([]byte, error)) (*Keys, error) {
	ks := &Keys{}
	for _, c := range cfg {
		k := Key{Name: c.Name}
		switch {
		case c.KeyFile != "":
			b, err := readFile(c.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("admin.keys %s: reading key_file: %w", c.Name, err)
			}
			secret := strings.TrimSpace(string(b))
			if !strings.HasPrefix(secret, AdminPrefix) {
				return nil, fmt.Errorf("admin.keys %s: the key in key_file must start with %s", c.Name, AdminPrefix)
			}
			k.hash = sha256.Sum256([]byte(secret))
		default:
			h, err := hex.DecodeString(c.KeySHA256)
			if err != nil || len(h) != 32 {
				return nil, fmt.Errorf("admin.keys %s: key_sha256 must be 64 hex digits", c.Name)
			}
			copy(k.hash[:], h)
		}
		ks.keys = append(ks.keys, k)
	}
	return ks, nil
}

// Len is the number of keys in the set.
func (ks *Keys) Len() int { return len(ks.keys) }

// GenerateAdmin returns a new random admin key and its sha256 (hex).
func GenerateAdmin() (key, sha string, err error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("generating a key: %w", err)
	}
	key = AdminPrefix + hex.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(key))
	return key, hex.EncodeToString(sum[:]), nil
}

// AdminFromBearer returns the admin key in an Authorization header value
// ("Bearer mga_..."), if it holds one.
func AdminFromBearer(v string) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, strings.HasPrefix(tok, AdminPrefix)
}

// CarriesAdminKey reports whether r presents an admin key anywhere a
// worker would present a credential (Authorization, Proxy-Authorization,
// a token= parameter). Such a request is refused off the admin API: an
// admin key is not a download credential, and it must not travel on as a
// worker's "own" token either.
func CarriesAdminKey(r *http.Request) bool {
	for _, h := range []string{"Authorization", "Proxy-Authorization"} {
		if strings.Contains(r.Header.Get(h), AdminPrefix) {
			return true
		}
		if v := r.Header.Get(h); strings.HasPrefix(strings.ToLower(v), "basic ") {
			if pass, _ := FromProxyAuthorization(v); strings.HasPrefix(pass, AdminPrefix) {
				return true
			}
		}
	}
	for name, vals := range r.URL.Query() {
		if strings.EqualFold(name, "token") {
			for _, v := range vals {
				if strings.HasPrefix(v, AdminPrefix) {
					return true
				}
			}
		}
	}
	return false
}
