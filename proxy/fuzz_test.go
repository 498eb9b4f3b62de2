package proxy

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// FuzzValidTarget feeds validTarget arbitrary CONNECT targets and checks
// that what it accepts is a plain host and a canonical-range port that
// survive being joined and parsed again.
func FuzzValidTarget(f *testing.F) {
	label63 := strings.Repeat("a", 63)
	for _, s := range []string{
		"huggingface.co:443",
		"HuggingFace.CO.:443",
		"cdn-lfs.hf.co:443",
		"127.0.0.1:8443",
		"[::1]:443",
		"[::ffff:1.2.3.4]:443",
		"[fe80::1%25eth0]:443",
		"[a.b]:443",
		"::1:443",
		"[::1]",
		"[]:443",
		"garbage",
		"host:",
		"host:https",
		"host:0",
		"host:0443",
		"host:65535",
		"host:65536",
		"host:99999",
		"host:+80",
		"host:-1",
		"host:443:443",
		":443",
		".:443",
		"a..b:443",
		"-a.example:443",
		"a-.example:443",
		"_a.example:443",
		"bad host:443",
		"user@host:443",
		"a/b:443",
		"ex%41mple.com:443",
		"a\x00b:443",
		label63 + ".example:443",
		label63 + "a.example:443",
		strings.Repeat(label63+".", 3) + strings.Repeat("a", 61) + ":443", // 253 bytes
		strings.Repeat(label63+".", 3) + strings.Repeat("a", 62) + ":443", // 254 bytes
		"\u212a.example:443",
		"\xff.example:443",
	} {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, target string) {
		host, port, ok := validTarget(target)
		if !ok {
			if host != "" || port != "" {
				t.Fatalf("validTarget(%q) refused but returned (%q, %q)", target, host, port)
			}
			return
		}

		if port == "" || port[0] == '+' || port[0] == '-' {
			t.Fatalf("validTarget(%q): port %q", target, port)
		}
		for i := 0; i < len(port); i++ {
			if port[i] < '0' || port[i] > '9' {
				t.Fatalf("validTarget(%q): port %q is not numeric", target, port)
			}
		}
		if n, err := strconv.ParseUint(port, 10, 64); err != nil || n < 1 || n > 65535 {
			t.Fatalf("validTarget(%q): port %q out of range", target, port)
		}

		if host == "" {
			t.Fatalf("validTarget(%q): empty host", target)
		}
		for i := 0; i < len(host); i++ {
			c := host[i]
			if c <= ' ' || c >= 0x7f || c == '/' || c == '@' || c == '%' {
				t.Fatalf("validTarget(%q): host %q has byte %q", target, host, c)
			}
		}
		// A name is the one asked for, only lower-cased and without its
		// trailing dot: no other byte may turn into an ASCII letter.
		if net.ParseIP(host) == nil {
			asked, _, _ := net.SplitHostPort(target)
			if !equalFoldASCII(host, strings.TrimSuffix(asked, ".")) || host != lowerASCIIRef(host) {
				t.Fatalf("validTarget(%q): host %q is not the name asked for (%q), lower-cased", target, host, asked)
			}
		}

		joined := net.JoinHostPort(host, port)
		h2, p2, ok2 := validTarget(joined)
		if !ok2 || h2 != host || p2 != port {
			t.Fatalf("validTarget(%q) = (%q, %q), but validTarget(%q) = (%q, %q, %v)", target, host, port, joined, h2, p2, ok2)
		}
	})
}

// The test's own ASCII case folding, independent of the code under test.

func lowerASCIIRef(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func equalFoldASCII(a, b string) bool {
	return len(a) == len(b) && lowerASCIIRef(a) == lowerASCIIRef(b)
}

func hasSuffixFoldASCII(s, suffix string) bool {
	return len(s) >= len(suffix) && equalFoldASCII(s[len(s)-len(suffix):], suffix)
}
