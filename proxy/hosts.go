package proxy

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// hostPatterns matches host names against mitm.hosts patterns: an exact
// name, or "*.domain" for every name under domain (not domain itself),
// each optionally restricted to one port.
type hostPatterns []hostPattern

type hostPattern struct {
	name     string // lower case, without the "*." of a wildcard
	wildcard bool
	port     string // "" = any port
}

func parseHostPatterns(ps []string) (hostPatterns, error) {
	out := make(hostPatterns, 0, len(ps))
	for _, p := range ps {
		hp := hostPattern{name: lowerASCII(strings.TrimSpace(p))}
		if h, port, err := net.SplitHostPort(hp.name); err == nil {
			if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
				return nil, fmt.Errorf("mitm.hosts: invalid port in %q", p)
			}
			hp.name, hp.port = h, port
		}
		if rest, ok := strings.CutPrefix(hp.name, "*."); ok {
			hp.name, hp.wildcard = rest, true
		}
		if hp.name == "" || strings.Contains(hp.name, "*") {
			return nil, fmt.Errorf("mitm.hosts: %q is not a host name or *.domain pattern", p)
		}
		out = append(out, hp)
	}
	return out, nil
}

// match reports whether host (a bare name, any case) on port is covered.
// Matching is on whole labels: "huggingface.co" does not match
// "evilhuggingface.co.example", and "*.hf.co" does not match "hf.co".
func (hs hostPatterns) match(host, port string) bool {
	host = strings.TrimSuffix(lowerASCII(host), ".")
	for _, p := range hs {
		if p.port != "" && p.port != port {
			continue
		}
		if p.wildcard {
			if strings.HasSuffix(host, "."+p.name) {
				return true
			}
		} else if host == p.name {
			return true
		}
	}
	return false
}

// isUnder reports whether host is a strict subdomain of one of domains.
func isUnder(host string, domains ...string) bool {
	host = strings.TrimSuffix(lowerASCII(host), ".")
	for _, d := range domains {
		if strings.HasSuffix(host, "."+d) {
			return true
		}
	}
	return false
}

// validTarget checks a CONNECT target: host:port with a numeric port from 1
// to 65535 and a host that is an IP literal or a DNS name. It returns the
// host (lower case) and port.
func validTarget(target string) (host, port string, ok bool) {
	h, p, err := net.SplitHostPort(target)
	if err != nil || h == "" {
		return "", "", false
	}
	if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 || strings.HasPrefix(p, "+") {
		return "", "", false
	}
	if net.ParseIP(h) != nil {
		return h, p, true
	}
	h = strings.TrimSuffix(lowerASCII(h), ".")
	if len(h) > 253 {
		return "", "", false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", "", false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", "", false
			}
		}
	}
	return h, p, true
}

// lowerASCII lower-cases the ASCII letters of s and leaves every other
// byte as it is. Host names compare case-insensitively in ASCII only
// (RFC 4343); strings.ToLower would also fold non-ASCII bytes, turning the
// Kelvin sign U+212A into "k" and every invalid UTF-8 byte into U+FFFD, so
// that "\u212a.example" would pass for "k.example" and "\xff" match "\xfe".
func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
