package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/modelgate/modelgate/config"
)

// modelgateEnv collects, from any YAML tree, the MODELGATE_* variables it
// sets: Kubernetes `env:` lists ({name: X, value: …}) and compose
// `environment:` maps (X: value).
func modelgateEnv(n any, out map[string]bool) {
	switch v := n.(type) {
	case map[string]any:
		if name, ok := v["name"].(string); ok && strings.HasPrefix(name, "MODELGATE_") {
			out[name] = true
		}
		for k, child := range v {
			if strings.HasPrefix(k, "MODELGATE_") {
				out[k] = true
			}
			modelgateEnv(child, out)
		}
	case []any:
		for _, child := range v {
			modelgateEnv(child, out)
		}
	}
}

// Every MODELGATE_* variable the deployment files set names a configuration
// key of this gateway: a renamed key, or a typo in a manifest, would
// otherwise leave the default silently in force in every replica.
func TestDeployManifestsSetOnlyKnownKeys(t *testing.T) {
	files, err := filepath.Glob("deploy/kubernetes/*.yaml")
	require.NoError(t, err)
	files = append(files, "deploy/compose.yaml")
	require.GreaterOrEqual(t, len(files), 3)
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		dec := yaml.NewDecoder(bytes.NewReader(data))
		vars := map[string]bool{}
		docs := 0
		for {
			var doc any
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err, "%s is not valid YAML", f)
			docs++
			modelgateEnv(doc, vars)
		}
		require.NotZero(t, docs, f)
		require.NotEmpty(t, vars, "%s sets no MODELGATE_* variable", f)
		var environ []string
		for v := range vars {
			environ = append(environ, v+"=x")
		}
		for _, u := range config.UnknownEnv(environ) {
			t.Errorf("%s sets %s, which is no configuration key (nearest: %s)", f, u.Name, u.Nearest)
		}
	}
}

// The nginx front of a cluster is a valid nginx configuration (nginx -t),
// when nginx is installed.
func TestDeployNginxFrontIsValid(t *testing.T) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr != nil {
			t.Skip("nginx not installed; skipping the check of deploy/nginx")
		}
		bin = "/usr/sbin/nginx"
	}
	conf, err := filepath.Abs("deploy/nginx/modelgate-cluster.conf")
	require.NoError(t, err)
	// -t resolves the upstream addresses and opens the error log; a prefix
	// of our own keeps it away from the system's files.
	prefix := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(prefix, "logs"), 0o755))
	out, err := exec.Command(bin, "-t", "-p", prefix, "-c", conf, "-g", "error_log "+filepath.Join(prefix, "logs", "error.log")+"; pid "+filepath.Join(prefix, "nginx.pid")+";").CombinedOutput()
	assert.NoError(t, err, "nginx -t:\n%s", out)
}
