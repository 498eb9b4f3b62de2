package config

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Pin is one cache.pinned entry, parsed when the config loads: a Hub
// repository ("hf:org/name", "hf:datasets/org/name", "hf:spaces/org/name",
// each optionally "@revision"), or a CivitAI model version
// ("civitai:<versionId>"). Pins set through the admin API use the same
// grammar ([ParsePin]).
type Pin struct {
	// RepoType is "model", "dataset" or "space" for a Hub pin; "" for a
	// CivitAI pin.
	RepoType string
	// Repo is the Hub repository id, "org/name" (or a legacy bare "name").
	Repo string
	// Revision is the pinned branch, tag or commit; "" pins every cached
	// revision.
	Revision string
	// Version is the CivitAI model version id.
	Version string
}

// IsHub reports whether p pins a Hub repository.
func (p Pin) IsHub() bool { return p.RepoType != "" }

// The Hub's limits on a repo id segment and a revision (huggingface_hub
// and the Hub's own routes).
const (
	maxRepoSegmentLen = 96
	maxRevisionLen    = 256
	maxVersionDigits  = 12
)

var (
	repoSegment   = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$`)
	revisionChars = regexp.MustCompile(`^[A-Za-z0-9._/-]+$`)
)

const pinForms = `"hf:org/repo[@rev]", "hf:datasets/org/name[@rev]", "hf:spaces/org/name[@rev]" or "civitai:<versionId>"`

// ParsePin parses a pin; the error names the entry and the forms it may
// take.
func ParsePin(s string) (Pin, error) {
	p, err := parsePin(s)
	if err != nil {
		return Pin{}, fmt.Errorf("%q is not %s: %w", s, pinForms, err)
	}
	return p, nil
}

func parsePin(s string) (Pin, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Pin{}, errors.New("no hf: or civitai: prefix")
	}
	switch kind {
	case "civitai":
		if n, err := strconv.ParseUint(rest, 10, 64); err != nil || n == 0 || len(rest) > maxVersionDigits {
			return Pin{}, errors.New("the model version id must be a number")
		}
		return Pin{Version: rest}, nil
	case "hf":
		return parseHubPin(rest)
	}
	return Pin{}, fmt.Errorf("unknown prefix %q", kind+":")
}

func parseHubPin(s string) (Pin, error) {
	repo, rev, hasRev := strings.Cut(s, "@")
	segs := strings.Split(repo, "/")
	p := Pin{RepoType: "model"}
	switch segs[0] {
	case "datasets":
		p.RepoType, segs = "dataset", segs[1:]
	case "spaces":
		p.RepoType, segs = "space", segs[1:]
	}
	if len(segs) < 1 || len(segs) > 2 {
		return Pin{}, errors.New("the repo is not [datasets/|spaces/]org/name")
	}
	for _, seg := range segs {
		if len(seg) > maxRepoSegmentLen || !repoSegment.MatchString(seg) ||
			strings.Contains(seg, "..") || strings.Contains(seg, "--") {
			return Pin{}, fmt.Errorf("invalid repo id %q", strings.Join(segs, "/"))
		}
	}
	p.Repo = strings.Join(segs, "/")
	if hasRev {
		// Git's ref-name rules, as the Hub applies them.
		if rev == "" || len(rev) > maxRevisionLen || !revisionChars.MatchString(rev) ||
			strings.Contains(rev, "..") || strings.Contains(rev, "//") ||
			strings.HasPrefix(rev, "/") || strings.HasSuffix(rev, "/") ||
			strings.HasPrefix(rev, ".") || strings.HasSuffix(rev, ".lock") || strings.Contains(rev, "/.") {
			return Pin{}, fmt.Errorf("invalid revision %q", rev)
		}
		p.Revision = rev
	}
	return p, nil
}

// String is the pin's canonical form, which ParsePin reads back.
func (p Pin) String() string {
	if !p.IsHub() {
		return "civitai:" + p.Version
	}
	out := "hf:"
	switch p.RepoType {
	case "dataset":
		out += "datasets/"
	case "space":
		out += "spaces/"
	}
	out += p.Repo
	if p.Revision != "" {
		out += "@" + p.Revision
	}
	return out
}

// UnmarshalText parses a pin (one list item of the file or of
// MODELGATE_CACHE_PINNED).
func (p *Pin) UnmarshalText(text []byte) error {
	v, err := ParsePin(strings.TrimSpace(string(text)))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// MarshalText writes the canonical form.
func (p Pin) MarshalText() ([]byte, error) { return []byte(p.String()), nil }
