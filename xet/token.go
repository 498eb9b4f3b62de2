// Package xet serves the Xet data plane from the gateway: its own
// short-lived Xet tokens (never the upstream's), reconstructions fetched
// upstream with the operator's Xet token and answered with xorb URLs on the
// gateway, and xorb byte ranges cached on disk by xorb hash and range,
// shared across files and repos, verified at the file level.
package xet

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// TokenPrefix starts every gateway-issued Xet token, so it is never taken
// for a worker key (mgw_) or a Hub token (hf_).
const TokenPrefix = "mgx1."

// Claims is what a gateway Xet token grants: reading the Xet files of one
// repo at one revision, for one worker key (Principal, "" without keys),
// until Exp.
type Claims struct {
	RepoType  string `json:"t"`
	Repo      string `json:"r"`
	Rev       string `json:"v"`
	Principal string `json:"p,omitempty"`
	Exp       int64  `json:"e"`
}

// Signer issues and checks tokens and xorb URL signatures with a secret
// private to one data_dir.
type Signer struct{ secret []byte }

// LoadSigner reads dir/xet-secret, creating it (0600, 32 random bytes) the
// first time, so tokens survive restarts but never another data_dir.
func LoadSigner(dir string) (*Signer, error) {
	p := filepath.Join(dir, "xet-secret")
	b, err := os.ReadFile(p)
	if err == nil && len(b) == 32 {
		return &Signer{secret: b}, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("reading the Xet secret: %w", err)
	}
	b = make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("generating the Xet secret: %w", err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		return nil, fmt.Errorf("writing the Xet secret: %w", err)
	}
	return &Signer{secret: b}, nil
}

func (s *Signer) mac(domain, msg string) []byte {
	m := hmac.New(sha256.New, s.secret)
	m.Write([]byte(domain + "\x00" + msg))
	return m.Sum(nil)
}

// Issue returns a signed token for c.
func (s *Signer) Issue(c Claims) string {
	body, _ := json.Marshal(c) // plain struct: cannot fail
	p := base64.RawURLEncoding.EncodeToString(body)
	return TokenPrefix + p + "." + base64.RawURLEncoding.EncodeToString(s.mac("token", p))
}

// Check verifies tok's signature and expiry and returns its claims.
func (s *Signer) Check(tok string, now time.Time) (Claims, error) {
	rest, ok := strings.CutPrefix(tok, TokenPrefix)
	p, sig, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 {
		return Claims{}, errors.New("not a gateway Xet token")
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, s.mac("token", p)) {
		return Claims{}, errors.New("bad Xet token signature")
	}
	body, err := base64.RawURLEncoding.DecodeString(p)
	var c Claims
	if err != nil || json.Unmarshal(body, &c) != nil {
		return Claims{}, errors.New("malformed Xet token")
	}
	if now.Unix() >= c.Exp {
		return Claims{}, errors.New("expired Xet token")
	}
	return c, nil
}

// SignURL signs a xorb URL's parameters.
func (s *Signer) SignURL(msg string) string {
	return base64.RawURLEncoding.EncodeToString(s.mac("xorb-url", msg))
}

// CheckURL verifies a signature made by SignURL.
func (s *Signer) CheckURL(msg, sig string) bool {
	got, err := base64.RawURLEncoding.DecodeString(sig)
	return err == nil && hmac.Equal(got, s.mac("xorb-url", msg))
}
