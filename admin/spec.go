package admin

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/hfhub"
)

// Spec names what an operator acts on: a Hub repo (optionally at one
// revision) or a CivitAI model version (its primary file, or all files).
type Spec struct {
	Raw string
	// Hub
	Repo     hfhub.Repo
	Revision string // "" = every cached revision (purge, pin) or main (prefetch)
	// CivitAI
	Version string // model version id
	All     bool   // every file of the version, not just the primary one
}

// IsHub reports whether s names a Hub repo.
func (s Spec) IsHub() bool { return s.Version == "" }

// ParseSpec parses "hf:org/name[@rev]", "hf:datasets/org/name[@rev]",
// "hf:spaces/org/name[@rev]", "civitai:<versionId>" and
// "civitai:<versionId>/all".
func ParseSpec(raw string) (Spec, error) {
	kind, rest, ok := strings.Cut(raw, ":")
	if !ok {
		return Spec{}, fmt.Errorf("spec %q: want hf:org/name[@rev] or civitai:<versionId>[/all]", raw)
	}
	switch kind {
	case "hf":
		// The grammar of cache.pinned, so that a pin set here reads like
		// one in the file.
		p, err := config.ParsePin(raw)
		if err != nil {
			return Spec{}, fmt.Errorf("spec %w", err)
		}
		return Spec{Raw: raw, Repo: hfhub.Repo{Type: hfhub.RepoType(p.RepoType), ID: p.Repo}, Revision: p.Revision}, nil
	case "civitai":
		id, all := strings.CutSuffix(rest, "/all")
		if n, err := strconv.ParseUint(id, 10, 64); err != nil || n == 0 || len(id) > 12 {
			return Spec{}, fmt.Errorf("spec %q: the CivitAI model version id must be a number", raw)
		}
		return Spec{Raw: raw, Version: id, All: all}, nil
	}
	return Spec{}, fmt.Errorf("spec %q: want hf:… or civitai:…", raw)
}

// String is the canonical form of the spec.
func (s Spec) String() string {
	if !s.IsHub() {
		if s.All {
			return "civitai:" + s.Version + "/all"
		}
		return "civitai:" + s.Version
	}
	out := "hf:" + s.Repo.URLPrefix() + s.Repo.ID
	if s.Revision != "" {
		out += "@" + s.Revision
	}
	return out
}

// Glob is an fnmatch-style pattern as huggingface_hub's allow_patterns
// use it: "*" matches any run of characters, "/" included; "?" one
// character; "[...]" a class ("[!...]" negated).
type Glob struct {
	pattern string
	re      *regexp.Regexp
}

// CompileGlob compiles an fnmatch pattern.
func CompileGlob(p string) (Glob, error) {
	if p == "" {
		return Glob{}, fmt.Errorf("empty pattern")
	}
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(p); i++ {
		switch c := p[i]; c {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		case '[':
			j := i + 1
			if j < len(p) && p[j] == '!' {
				j++
			}
			if j < len(p) && p[j] == ']' {
				j++
			}
			for j < len(p) && p[j] != ']' {
				j++
			}
			if j >= len(p) {
				b.WriteString(`\[`) // unclosed: a literal, as fnmatch does
				continue
			}
			class := p[i+1 : j]
			if strings.HasPrefix(class, "!") {
				class = "^" + class[1:]
			}
			b.WriteString("[" + strings.ReplaceAll(class, `\`, `\\`) + "]")
			i = j
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	re, err := regexp.Compile(b.String())
	if err != nil {
		return Glob{}, fmt.Errorf("pattern %q: %w", p, err)
	}
	return Glob{pattern: p, re: re}, nil
}

// Match reports whether name matches.
func (g Glob) Match(name string) bool { return g.re.MatchString(name) }

// Filter selects files by include and exclude patterns: with includes, a
// file must match one; it must match no exclude.
type Filter struct{ include, exclude []Glob }

// NewFilter compiles the patterns.
func NewFilter(include, exclude []string) (Filter, error) {
	var f Filter
	for _, p := range include {
		g, err := CompileGlob(p)
		if err != nil {
			return Filter{}, fmt.Errorf("include: %w", err)
		}
		f.include = append(f.include, g)
	}
	for _, p := range exclude {
		g, err := CompileGlob(p)
		if err != nil {
			return Filter{}, fmt.Errorf("exclude: %w", err)
		}
		f.exclude = append(f.exclude, g)
	}
	return f, nil
}

// Keep reports whether path passes the filter.
func (f Filter) Keep(path string) bool {
	if len(f.include) > 0 {
		ok := false
		for _, g := range f.include {
			ok = ok || g.Match(path)
		}
		if !ok {
			return false
		}
	}
	for _, g := range f.exclude {
		if g.Match(path) {
			return false
		}
	}
	return true
}
