// Package hostmatch is the one grammar of host patterns (mitm.hosts,
// proxy.tunnel_allow, the hosts a site answers): an exact name, or "*."
// and a domain for every name under it but not the domain itself, each
// optionally restricted to one port ("hub.example:8443"). The config
// parses patterns with it once, at load; the edge and the sites match
// with the same values.
package hostmatch

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Pattern is one parsed host pattern. The zero Pattern matches nothing.
type Pattern struct {
	name     string // lower case, without the "*." of a wildcard
	wildcard bool
	port     string // "" = any port
}

// Parse parses one pattern. Names compare in ASCII lower case; anything
// that is not a plain name, IPv4 address or "*.domain" (an inner "*", a
// path, user info, a space, a leading or trailing dot, an IPv6 literal) is
// refused, as is a port outside 1-65535.
func Parse(s string) (Pattern, error) {
	p := Pattern{name: LowerASCII(strings.TrimSpace(s))}
	if h, port, err := net.SplitHostPort(p.name); err == nil {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return Pattern{}, fmt.Errorf("invalid port in %q", s)
		}
		p.name, p.port = h, port
	}
	if rest, ok := strings.CutPrefix(p.name, "*."); ok {
		p.name, p.wildcard = rest, true
	}
	if p.name == "" || strings.ContainsAny(p.name, "*/ :@") || strings.HasPrefix(p.name, ".") || strings.HasSuffix(p.name, ".") {
		return Pattern{}, fmt.Errorf("%q is not a host name or *.domain pattern", s)
	}
	return p, nil
}

// Match reports whether host (a bare name, any ASCII case, one trailing
// dot ignored) on port is covered. Matching is on whole labels:
// "huggingface.co" does not match "evilhuggingface.co.example", and
// "*.hf.co" does not match "hf.co". An empty port matches only a pattern
// without one.
func (p Pattern) Match(host, port string) bool {
	if p.name == "" || (p.port != "" && p.port != port) {
		return false
	}
	host = strings.TrimSuffix(LowerASCII(host), ".")
	if p.wildcard {
		return strings.HasSuffix(host, "."+p.name)
	}
	return host == p.name
}

// Host is the name (the domain of a wildcard), without port.
func (p Pattern) Host() string { return p.name }

// Wildcard reports whether p is a "*.domain" pattern.
func (p Pattern) Wildcard() bool { return p.wildcard }

// Port is the one port p is restricted to, or "".
func (p Pattern) Port() string { return p.port }

// String is the pattern in its canonical written form.
func (p Pattern) String() string {
	s := p.name
	if p.wildcard {
		s = "*." + s
	}
	if p.port != "" {
		s = net.JoinHostPort(s, p.port)
	}
	return s
}

// UnmarshalText parses one pattern (a YAML list item).
func (p *Pattern) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// MarshalText writes the canonical form.
func (p Pattern) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// Patterns is a list of patterns; it matches when one of them does.
type Patterns []Pattern

// ParseList parses every pattern in ss.
func ParseList(ss ...string) (Patterns, error) {
	out := make(Patterns, 0, len(ss))
	for _, s := range ss {
		p, err := Parse(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// MustParse is ParseList for patterns written in the code; it panics on a
// bad one.
func MustParse(ss ...string) Patterns {
	ps, err := ParseList(ss...)
	if err != nil {
		panic("hostmatch: " + err.Error())
	}
	return ps
}

// Match reports whether one of the patterns covers host on port.
func (ps Patterns) Match(host, port string) bool {
	for _, p := range ps {
		if p.Match(host, port) {
			return true
		}
	}
	return false
}

// Strings returns the canonical written form of every pattern.
func (ps Patterns) Strings() []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// UnmarshalText parses a comma-separated list (an environment variable);
// a YAML sequence is parsed item by item through Pattern.
func (ps *Patterns) UnmarshalText(b []byte) error {
	var items []string
	for item := range strings.SplitSeq(string(b), ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	v, err := ParseList(items...)
	if err != nil {
		return err
	}
	*ps = v
	return nil
}

// LowerASCII lower-cases the ASCII letters of s and leaves every other
// byte as it is. Host names compare case-insensitively in ASCII only
// (RFC 4343); strings.ToLower would also fold non-ASCII bytes, turning the
// Kelvin sign U+212A into "k" and every invalid UTF-8 byte into U+FFFD, so
// that "\u212a.example" would pass for "k.example" and "\xff" match "\xfe".
func LowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
