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
