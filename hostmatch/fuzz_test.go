package hostmatch

import (
	"net"
	"strings"
	"testing"
)

// FuzzHostMatching parses one mitm.hosts pattern and matches one host and
// port against it: an exact pattern covers only its own name (any ASCII
// case, one trailing dot ignored), "*.d" only names that end in ".d", and a
// pinned port only that port.
func FuzzHostMatching(f *testing.F) {
	for _, s := range [][3]string{
		{"huggingface.co", "huggingface.co", "443"},
		{"huggingface.co", "HuggingFace.CO.", "443"},
		{"huggingface.co", "evilhuggingface.co", "443"},
		{"huggingface.co", "huggingface.co.evil", "443"},
		{"*.hf.co", "cdn-lfs.hf.co", "443"},
		{"*.hf.co", "a.b.hf.co", "443"},
		{"*.hf.co", "hf.co", "443"},
		{"*.hf.co", "hf.co.", "443"},
		{"*.hf.co", "evilhf.co", "443"},
		{"hub.example:8443", "hub.example", "8443"},
		{"hub.example:8443", "hub.example", "443"},
		{"*.cdn.example:443", "x.cdn.example", "443"},
		{"[::1]:443", "::1", "443"},
		{"::1", "::1", "443"},
		{"  Hub.Example  ", "hub.example", "80"},
		{"hub.example.", "hub.example..", "443"},
		{"hub.example:0", "hub.example", "0"},
		{"hub.example:", "hub.example", ""},
		{"a.*.example", "a.x.example", "443"},
		{"*.", "x.", "443"},
		{"*", "x", "443"},
		{"", "", ""},
		{"k.example", "\u212a.example", "443"},
		{"*.k.example", "x.\u212a.example", "443"},
		{"\xff.example", "\xfe.example", "443"},
	} {
		f.Add(s[0], s[1], s[2])
	}

	f.Fuzz(func(t *testing.T, pattern, host, port string) {
		hs, err := ParseList(pattern)
		if err != nil {
			return
		}
		if len(hs) != 1 {
			t.Fatalf("ParseList(%q) gave %d patterns", pattern, len(hs))
		}
		p := hs[0]
		if p.Host() == "" || strings.Contains(p.Host(), "*") {
			t.Fatalf("ParseList(%q) kept name %q", pattern, p.Host())
		}

		// The name the operator wrote, before the parser's case folding.
		name := strings.TrimSpace(pattern)
		if p.Port() != "" {
			h, pp, err := net.SplitHostPort(name)
			if err != nil || pp != p.Port() {
				t.Fatalf("ParseList(%q) kept port %q", pattern, p.Port())
			}
			name = h
		}
		if p.Wildcard() {
			var cut bool
			if name, cut = strings.CutPrefix(name, "*."); !cut {
				t.Fatalf("ParseList(%q) made a wildcard", pattern)
			}
		}

		got := hs.Match(host, port)
		portOK := p.Port() == "" || p.Port() == port
		h := strings.TrimSuffix(host, ".")
		var want bool
		if p.Wildcard() {
			want = portOK && hasSuffixFoldASCII(h, "."+name)
			if got && equalFoldASCII(h, name) {
				t.Fatalf("pattern %q matches its own domain %q", pattern, host)
			}
		} else {
			want = portOK && equalFoldASCII(h, name)
		}
		if got != want {
			t.Fatalf("pattern %q, host %q, port %q: match = %v, want %v", pattern, host, port, got, want)
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
