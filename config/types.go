package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/big"
	"net"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration that reads from YAML and environment variables
// as a Go duration string ("30s", "5m", "1h30m"). A bare integer ("60") means
// seconds. It writes back as a Go duration string ("1m0s").
type Duration struct{ time.Duration }

// UnmarshalYAML parses a duration scalar; see [Duration].
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("must be a duration such as \"30s\", got %s", nodeKind(n))
	}
	return d.UnmarshalText([]byte(n.Value))
}

// UnmarshalText parses a duration string; see [Duration].
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := parseDuration(string(text))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalYAML writes the duration as a Go duration string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func parseDuration(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	if n, err := strconv.ParseInt(t, 10, 64); err == nil {
		if n > math.MaxInt64/int64(time.Second) || n < math.MinInt64/int64(time.Second) {
			return 0, fmt.Errorf("invalid duration %q: out of range", s)
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(t)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: use a number with a unit such as \"30s\", \"5m\" or \"1h30m\", or whole seconds", s)
	}
	return d, nil
}

// ByteSize is a size in bytes. In YAML and environment variables it is
// either an integer number of bytes ("1073741824") or a number with a unit
// ("500GiB", "10MB", "1.5GiB"). Units are case-insensitive; the trailing "B"
// is optional. KiB, MiB, GiB, TiB, PiB are powers of 1024; KB, MB, GB, TB, PB
// are powers of 1000. Fractions are rounded down to whole bytes.
type ByteSize int64

var byteUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1e3, "kb": 1e3, "ki": 1 << 10, "kib": 1 << 10,
	"m": 1e6, "mb": 1e6, "mi": 1 << 20, "mib": 1 << 20,
	"g": 1e9, "gb": 1e9, "gi": 1 << 30, "gib": 1 << 30,
	"t": 1e12, "tb": 1e12, "ti": 1 << 40, "tib": 1 << 40,
	"p": 1e15, "pb": 1e15, "pi": 1 << 50, "pib": 1 << 50,
}

// byteSizeFormats lists the units String prefers, largest first, IEC first.
var byteSizeFormats = []struct {
	unit string
	size int64
}{
	{"PiB", 1 << 50}, {"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"PB", 1e15}, {"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3},
}

var byteSizeRE = regexp.MustCompile(`^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))\s*([A-Za-z]*)$`)

func parseByteSize(s string) (ByteSize, error) {
	m := byteSizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf("invalid size %q: use a number of bytes or a number with a unit such as \"500GiB\" or \"10MB\"", s)
	}
	mult, ok := byteUnits[strings.ToLower(m[2])]
	if !ok {
		return 0, fmt.Errorf("invalid size %q: unknown unit %q (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)", s, m[2])
	}
	r, ok := new(big.Rat).SetString(m[1])
	if !ok {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	if !r.IsInt() && mult == 1 {
		return 0, fmt.Errorf("invalid size %q: bytes must be a whole number", s)
	}
	n := new(big.Int).Quo(r.Num(), r.Denom()) // rounds toward zero
	if !n.IsInt64() {
		return 0, fmt.Errorf("invalid size %q: out of range", s)
	}
	return ByteSize(n.Int64()), nil
}

// String formats the size with the largest unit that divides it exactly
// ("500GiB", "10MB"), or as a plain number of bytes ("1234", "0").
func (b ByteSize) String() string {
	if s, ok := b.withUnit(); ok {
		return s
	}
	return strconv.FormatInt(int64(b), 10)
}

// withUnit formats b with the largest unit that divides it exactly.
func (b ByteSize) withUnit() (string, bool) {
	if b == 0 {
		return "", false
	}
	for _, f := range byteSizeFormats {
		if b%ByteSize(f.size) == 0 {
			return strconv.FormatInt(int64(b)/f.size, 10) + f.unit, true
		}
	}
	return "", false
}

// UnmarshalYAML parses an integer or a size with a unit; see [ByteSize].
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("must be a size such as \"500GiB\", got %s", nodeKind(n))
	}
	return b.UnmarshalText([]byte(n.Value))
}

// UnmarshalText parses an integer or a size with a unit; see [ByteSize].
func (b *ByteSize) UnmarshalText(text []byte) error {
	v, err := parseByteSize(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// MarshalYAML writes the size as a string with a unit when one divides it
// exactly, otherwise as an integer number of bytes.
func (b ByteSize) MarshalYAML() (any, error) {
	if s, ok := b.withUnit(); ok {
		return s, nil
	}
	return int64(b), nil
}

// MarshalText writes the size as [ByteSize.String] does.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// redacted is what a non-empty Secret prints as.
const redacted = "***"

// Secret is a credential (token, API key). Every way of printing or
// serialising it (fmt verbs, slog, YAML, JSON/text marshalling) yields "***"
// when it is set and "" when it is empty, so a secret cannot reach a log or a
// config dump by accident. Use [Secret.Reveal] where the real value is needed.
type Secret string

// Reveal returns the secret's actual value. Call it only where the value is
// sent upstream, never to log it.
func (s Secret) Reveal() string { return string(s) }

// String returns "***" for a set secret and "" for an empty one.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString returns the same as [Secret.String], so %#v does not leak.
func (s Secret) GoString() string { return s.String() }

// Format makes every fmt verb print the redacted form: %v, %s and %#v give
// "***" (or ""), and even a mismatched verb such as %d shows no value.
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		io.WriteString(f, s.GoString())
		return
	}
	fmt.Fprintf(f, fmt.FormatString(f, verb), s.String())
}

// MarshalYAML writes "***" or "".
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// MarshalText writes "***" or "".
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// LogValue makes slog print "***" or "".
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// UnmarshalYAML reads a string scalar. Its errors never contain the value.
func (s *Secret) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("must be a string, got %s", nodeKind(n))
	}
	var v string
	if err := n.Decode(&v); err != nil {
		return errors.New("must be a string")
	}
	*s = Secret(v)
	return nil
}

// nodeKind describes a YAML node for error messages.
func nodeKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return "a single value"
	default:
		return "an unexpected YAML node"
	}
}

// Networks is a list of client networks (clients.allow): each a CIDR or a
// single address, parsed once when the config loads. It is a
// []netip.Prefix, so it can be handed to code that matches addresses as
// it is.
type Networks []netip.Prefix

// ParseNetworks parses every entry of list.
func ParseNetworks(list ...string) (Networks, error) {
	out := make(Networks, 0, len(list))
	for _, s := range list {
		p, err := parseNetwork(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// MustNetworks is ParseNetworks for lists written in the code; it panics on
// a bad entry.
func MustNetworks(list ...string) Networks {
	ns, err := ParseNetworks(list...)
	if err != nil {
		panic("config: " + err.Error())
	}
	return ns
}

// parseNetwork parses one entry: a CIDR (its host bits cleared), or one
// address (a /32 or /128).
func parseNetwork(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR or an IP address", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// UnmarshalYAML reads a list of networks.
func (ns *Networks) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.SequenceNode {
		return fmt.Errorf("must be a list of CIDRs or addresses, got %s", nodeKind(n))
	}
	var items []string
	if err := n.Decode(&items); err != nil {
		return errors.New("must be a list of CIDRs or addresses")
	}
	v, err := ParseNetworks(items...)
	if err != nil {
		return err
	}
	*ns = v
	return nil
}

// UnmarshalText reads a comma-separated list (an environment variable).
func (ns *Networks) UnmarshalText(text []byte) error {
	var items []string
	for item := range strings.SplitSeq(string(text), ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	v, err := ParseNetworks(items...)
	if err != nil {
		return err
	}
	*ns = v
	return nil
}

// Resolve maps host:port names the gateway dials to the host:port it dials
// instead (upstream.resolve), like curl's --resolve or Docker's
// extra_hosts: TLS still verifies, and Host still names, the original
// name. Names match case-insensitively. In a MODELGATE_* variable it is a
// comma-separated list of name:port=address:port entries.
type Resolve map[string]string

// UnmarshalText reads the environment form:
// "cdn-lfs.hf.co:443=10.0.0.7:443,other:443=10.0.0.8:8443".
func (r *Resolve) UnmarshalText(text []byte) error {
	out := Resolve{}
	for item := range strings.SplitSeq(string(text), ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		from, to, ok := strings.Cut(item, "=")
		if !ok {
			return fmt.Errorf("%q is not name:port=address:port", item)
		}
		out[strings.TrimSpace(from)] = strings.TrimSpace(to)
	}
	*r = out
	return nil
}

// checkResolve validates upstream.resolve: each name is a host name (not
// an address, not a pattern) with a port, each target a host:port.
func checkResolve(r Resolve) []string {
	var msgs []string
	for from, to := range r {
		host, port, err := net.SplitHostPort(from)
		if err != nil || !validPort(port) || host == "" || strings.ContainsAny(host, "*/ @[]") {
			msgs = append(msgs, fmt.Sprintf("%q is not name:port", from))
			continue
		}
		if _, err := netip.ParseAddr(host); err == nil {
			msgs = append(msgs, fmt.Sprintf("%q names an address, not a host name", from))
			continue
		}
		thost, tport, err := net.SplitHostPort(to)
		if err != nil || !validPort(tport) || thost == "" || strings.ContainsAny(thost, "*/ @") {
			msgs = append(msgs, fmt.Sprintf("%q: target %q is not host:port", from, to))
		}
	}
	sort.Strings(msgs)
	return msgs
}

func validPort(p string) bool {
	n, err := strconv.ParseUint(p, 10, 16)
	return err == nil && n > 0
}
