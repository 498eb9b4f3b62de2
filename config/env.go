package config

import (
	"encoding"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// envPrefix starts the name of every environment variable that overrides a
// configuration key.
const envPrefix = "MODELGATE_"

var (
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	yamlUnmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
)

// envName is the environment variable for a key path: MODELGATE_ followed by
// the upper-case path joined with "_".
func envName(path []string) string {
	return envPrefix + strings.ToUpper(strings.Join(path, "_"))
}

// applyEnv overrides every key whose MODELGATE_* variable is set to a
// non-empty value. Names come from the yaml tags, so a new field gets its
// variable automatically.
func applyEnv(cfg *Config, getenv func(string) string) error {
	return walkLeaves(reflect.ValueOf(cfg).Elem(), nil, func(path []string, f reflect.Value) error {
		name := envName(path)
		s := getenv(name)
		if s == "" {
			return nil
		}
		if err := setFromString(f, s); err != nil {
			return fmt.Errorf("env %s: %s: %w", name, strings.Join(path, "."), err)
		}
		return nil
	})
}

// walkLeaves calls fn for every settable leaf field under the struct v, with
// its key path. Nested structs are sections, except types that parse
// themselves (such as Duration), which are leaves.
func walkLeaves(v reflect.Value, path []string, fn func(path []string, f reflect.Value) error) error {
	t := v.Type()
	for i := range t.NumField() {
		key, ok := yamlKey(t.Field(i))
		if !ok {
			continue
		}
		p := append(path[:len(path):len(path)], key)
		f := v.Field(i)
		var err error
		if isLeaf(f.Type()) {
			err = fn(p, f)
		} else {
			err = walkLeaves(f, p, fn)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// yamlKey returns the YAML key of a struct field, or false if the field is
// not part of the configuration.
func yamlKey(sf reflect.StructField) (string, bool) {
	if !sf.IsExported() {
		return "", false
	}
	name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
	switch name {
	case "-":
		return "", false
	case "":
		return strings.ToLower(sf.Name), true
	}
	return name, true
}

// isLeaf reports whether t is a single value rather than a section of keys.
func isLeaf(t reflect.Type) bool {
	if t.Kind() != reflect.Struct {
		return true
	}
	pt := reflect.PointerTo(t)
	return pt.Implements(textUnmarshalerType) || pt.Implements(yamlUnmarshalerType)
}

// setFromString parses s into f the way the YAML loader reads a scalar:
// types with UnmarshalText parse themselves; strings, booleans and numbers
// use strconv; a slice is a comma-separated list of its elements.
func setFromString(f reflect.Value, s string) error {
	if u, ok := f.Addr().Interface().(encoding.TextUnmarshaler); ok {
		return u.UnmarshalText([]byte(s))
	}
	switch f.Kind() {
	case reflect.String:
		f.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("invalid boolean %q: use true or false", s)
		}
		f.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, f.Type().Bits())
		if err != nil {
			return fmt.Errorf("invalid integer %q", s)
		}
		f.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(strings.TrimSpace(s), 10, f.Type().Bits())
		if err != nil {
			return fmt.Errorf("invalid non-negative integer %q", s)
		}
		f.SetUint(n)
	case reflect.Float32, reflect.Float64:
		n, err := strconv.ParseFloat(strings.TrimSpace(s), f.Type().Bits())
		if err != nil {
			return fmt.Errorf("invalid number %q", s)
		}
		f.SetFloat(n)
	case reflect.Slice:
		list := reflect.MakeSlice(f.Type(), 0, strings.Count(s, ",")+1)
		for item := range strings.SplitSeq(s, ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			elem := reflect.New(f.Type().Elem()).Elem()
			if err := setFromString(elem, item); err != nil {
				return fmt.Errorf("list item %d: %w", list.Len()+1, err)
			}
			list = reflect.Append(list, elem)
		}
		f.Set(list)
	default:
		return fmt.Errorf("unsupported type %s", f.Type())
	}
	return nil
}

// EnvNotAKey is a MODELGATE_* variable that names no configuration key.
type EnvNotAKey struct {
	Name    string // the variable, e.g. MODELGATE_CACHE_MAXSIZE
	Nearest string // the closest known variable, e.g. MODELGATE_CACHE_MAX_SIZE
}

// nonConfigEnv are MODELGATE_* variables with another reader: the CLI's
// own settings, which are not configuration keys.
var nonConfigEnv = map[string]bool{
	envPrefix + "GATEWAY":   true,
	envPrefix + "ADMIN_KEY": true,
}

// UnknownEnv lists the MODELGATE_* variables in environ ("NAME=value"
// entries, as os.Environ returns) that name no configuration key, each with
// the nearest known name. They are for a warning, not an error: a typo such
// as MODELGATE_CACHE_MAXSIZE would otherwise leave the default silently in
// force, but Kubernetes injects MODELGATE_PORT-style service variables into
// every pod of a service called modelgate, and those must not stop it.
func UnknownEnv(environ []string) []EnvNotAKey {
	var known []string
	isKnown := map[string]bool{}
	var c Config
	_ = walkLeaves(reflect.ValueOf(&c).Elem(), nil, func(path []string, _ reflect.Value) error {
		n := envName(path)
		known = append(known, n)
		isKnown[n] = true
		return nil
	})
	var out []EnvNotAKey
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, envPrefix) || isKnown[name] || nonConfigEnv[name] {
			continue
		}
		best, bestD := "", -1
		for _, k := range known {
			if d := editDistance(name, k); bestD < 0 || d < bestD {
				best, bestD = k, d
			}
		}
		out = append(out, EnvNotAKey{Name: name, Nearest: best})
	}
	return out
}

// editDistance is the Levenshtein distance between a and b (byte-wise; the
// names are ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
