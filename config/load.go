package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Load builds the configuration:
//
//  1. start from [Default];
//  2. if path is not empty, read it with readFile and apply its YAML keys over
//     the defaults (an unknown key is an error naming it);
//  3. apply MODELGATE_* environment variables read with getenv;
//  4. fill empty credentials: huggingface.token from token_file, then
//     HF_TOKEN, then HF_AUTH_TOKEN; civitai.api_key from CIVITAI_API_KEY, then
//     CA_AUTH_TOKEN, then CA_API_KEY; with storage.backend s3, the bucket's
//     keys from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN
//     when neither key is configured;
//  5. [Config.Validate].
//
// A nil getenv or readFile means os.Getenv or os.ReadFile. Errors start with
// "config: " and name the offending key; they never contain a secret.
func Load(path string, getenv func(string) string, readFile func(string) ([]byte, error)) (Config, error) {
	if readFile == nil {
		readFile = os.ReadFile
	}
	var data []byte
	if path != "" {
		var err error
		if data, err = readFile(path); err != nil {
			return Config{}, fmt.Errorf("config: reading %s: %w", path, err)
		}
	}
	return load(data, path, getenv, readFile)
}

// Parse is [Load] with the YAML given as bytes, such as an embedded default
// file. Empty data means no file.
func Parse(data []byte, getenv func(string) string, readFile func(string) ([]byte, error)) (Config, error) {
	return load(data, "", getenv, readFile)
}

func load(data []byte, source string, getenv func(string) string, readFile func(string) ([]byte, error)) (Config, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	if readFile == nil {
		readFile = os.ReadFile
	}
	cfg := Default()
	if err := decodeYAML(data, &cfg); err != nil {
		if source != "" {
			err = fmt.Errorf("%s: %w", source, err)
		}
		// What the file got wrong is reported with what Validate finds in
		// the rest (a bad value left its default in place), so that one
		// run lists every problem.
		normalize(&cfg)
		return Config{}, fmt.Errorf("config: %w", errors.Join(err, cfg.Validate()))
	}
	if err := applyEnv(&cfg, getenv); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	normalize(&cfg)
	if err := resolveSecrets(&cfg, getenv, readFile); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return cfg, nil
}

// normalize puts values in canonical form before validation.
func normalize(c *Config) {
	// The enum types normalize what they read; these cover values set in
	// code.
	c.Log.Level = LogLevel(strings.ToLower(strings.TrimSpace(string(c.Log.Level))))
	c.Log.Format = LogFormat(strings.ToLower(strings.TrimSpace(string(c.Log.Format))))
	c.Storage.Backend = StorageBackend(strings.ToLower(strings.TrimSpace(string(c.Storage.Backend))))
	c.Storage.S3.Endpoint = strings.TrimRight(c.Storage.S3.Endpoint, "/")
	c.Cluster.Advertise = strings.TrimRight(c.Cluster.Advertise, "/")
	if p := c.Storage.S3.Prefix; p != "" && !strings.HasSuffix(p, "/") {
		c.Storage.S3.Prefix = p + "/"
	}
}

// resolveSecrets fills empty credentials from their fallbacks.
func resolveSecrets(c *Config, getenv func(string) string, readFile func(string) ([]byte, error)) error {
	hf := &c.HuggingFace
	if hf.TokenFile != "" {
		if hf.Token != "" {
			return errors.New("huggingface.token_file: cannot be combined with huggingface.token; set only one")
		}
		data, err := readFile(hf.TokenFile)
		if err != nil {
			return fmt.Errorf("huggingface.token_file: %w", err)
		}
		tok := strings.TrimSpace(string(data))
		if tok == "" {
			return fmt.Errorf("huggingface.token_file: %s is empty", hf.TokenFile)
		}
		hf.Token, hf.TokenFile = Secret(tok), ""
	}
	if hf.Token == "" {
		hf.Token = firstEnv(getenv, "HF_TOKEN", "HF_AUTH_TOKEN")
	}
	if cl := &c.Cluster; cl.SecretFile != "" {
		if cl.Secret != "" {
			return errors.New("cluster.secret_file: cannot be combined with cluster.secret; set only one")
		}
		data, err := readFile(cl.SecretFile)
		if err != nil {
			return fmt.Errorf("cluster.secret_file: %w", err)
		}
		sec := strings.TrimSpace(string(data))
		if sec == "" {
			return fmt.Errorf("cluster.secret_file: %s is empty", cl.SecretFile)
		}
		cl.Secret, cl.SecretFile = Secret(sec), ""
	}
	if c.Storage.Backend == BackendS3 {
		s3 := &c.Storage.S3
		if s3.AccessKeyID == "" && s3.SecretAccessKey == "" {
			s3.AccessKeyID = firstEnv(getenv, "AWS_ACCESS_KEY_ID")
			s3.SecretAccessKey = firstEnv(getenv, "AWS_SECRET_ACCESS_KEY")
			if s3.SessionToken == "" {
				s3.SessionToken = firstEnv(getenv, "AWS_SESSION_TOKEN")
			}
		}
	}
	if c.CivitAI.APIKey == "" {
		c.CivitAI.APIKey = firstEnv(getenv, "CIVITAI_API_KEY", "CA_AUTH_TOKEN", "CA_API_KEY")
	}
	return nil
}

// firstEnv returns the first of the named variables that is set, trimmed.
func firstEnv(getenv func(string) string, names ...string) Secret {
	for _, name := range names {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			return Secret(v)
		}
	}
	return ""
}

// decodeYAML applies the keys of a YAML document over cfg. It walks the
// document itself rather than decoding it in one go so that every error
// (unknown or duplicate key, bad value) names the full key path and line.
func decodeYAML(data []byte, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty file
		}
		return err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return err
		}
		return fmt.Errorf("line %d: only one YAML document is allowed", extra.Line)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return nil
		}
		root = root.Content[0]
	}
	return decodeSection(root, reflect.ValueOf(cfg).Elem(), nil)
}

// decodeSection applies a YAML mapping to the struct v at key path.
func decodeSection(n *yaml.Node, v reflect.Value, path []string) error {
	n = resolveAlias(n)
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return nil // "section:" with nothing under it keeps the defaults
	}
	if n.Kind != yaml.MappingNode {
		if len(path) == 0 {
			return fmt.Errorf("line %d: the top level must be a mapping of keys, got %s", n.Line, nodeKind(n))
		}
		return fmt.Errorf("line %d: %s: must be a mapping of keys, got %s", n.Line, strings.Join(path, "."), nodeKind(n))
	}
	seen := make(map[string]int)
	var badValues []error
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := resolveAlias(n.Content[i]), n.Content[i+1]
		p := append(path[:len(path):len(path)], k.Value)
		key := strings.Join(p, ".")
		if k.Kind != yaml.ScalarNode {
			return fmt.Errorf("line %d: keys under %s must be plain names, got %s", k.Line, sectionName(path), nodeKind(k))
		}
		if line, dup := seen[k.Value]; dup {
			return fmt.Errorf("line %d: %s: duplicate key (first set on line %d)", k.Line, key, line)
		}
		seen[k.Value] = k.Line
		f, ok := fieldByKey(v, k.Value)
		if !ok {
			return fmt.Errorf("line %d: %s: unknown key (valid keys %s: %s)",
				k.Line, key, sectionName(path), strings.Join(keysOf(v.Type()), ", "))
		}
		if !isLeaf(f.Type()) {
			if err := decodeSection(val, f, p); err != nil {
				badValues = append(badValues, err)
			}
			continue
		}
		// A bad value is reported with the others rather than alone: the
		// enum and pin types refuse their value as they read it.
		if err := decodeLeaf(resolveAlias(val), f); err != nil {
			badValues = append(badValues, fmt.Errorf("line %d: %s: %w", val.Line, key, err))
		}
	}
	return errors.Join(badValues...)
}

var typeErrorLine = regexp.MustCompile(`^line \d+: `)

// decodeLeaf decodes a single value into f with the YAML decoder, so types
// with UnmarshalYAML parse themselves.
func decodeLeaf(n *yaml.Node, f reflect.Value) error {
	switch f.Kind() {
	case reflect.Slice:
		// A list type that also reads a comma-separated string (for its
		// environment variable) must still be a list in the file.
		if n.Kind == yaml.ScalarNode && n.ShortTag() != "!!null" {
			return fmt.Errorf("must be a list, got %s", nodeKind(n))
		}
	case reflect.Array, reflect.Map, reflect.Struct:
		// These check the node shape themselves.
	default:
		if n.Kind != yaml.ScalarNode {
			return fmt.Errorf("must be a single value, got %s", nodeKind(n))
		}
	}
	err := n.Decode(f.Addr().Interface())
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs := make([]string, len(te.Errors))
		for i, m := range te.Errors {
			msgs[i] = typeErrorLine.ReplaceAllString(m, "")
		}
		return errors.New(strings.Join(msgs, "; "))
	}
	return err
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// fieldByKey returns the field of struct v whose YAML key is key.
func fieldByKey(v reflect.Value, key string) (reflect.Value, bool) {
	t := v.Type()
	for i := range t.NumField() {
		if k, ok := yamlKey(t.Field(i)); ok && k == key {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

// keysOf lists the YAML keys of struct type t, in declaration order.
func keysOf(t reflect.Type) []string {
	var keys []string
	for i := range t.NumField() {
		if k, ok := yamlKey(t.Field(i)); ok {
			keys = append(keys, k)
		}
	}
	return keys
}

func sectionName(path []string) string {
	if len(path) == 0 {
		return "at the top level"
	}
	return "under " + strings.Join(path, ".")
}
