package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const module = "github.com/modelgate/modelgate"

// pkgInfo is what `go list -deps -json` says about one package.
type pkgInfo struct {
	ImportPath string
	Imports    []string
	Standard   bool
}

// depsOf lists pattern's packages and everything they import,
// transitively, as the go tool sees them (test files excluded).
func depsOf(t *testing.T, pattern string) []pkgInfo {
	t.Helper()
	gotool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go tool is not on PATH")
	}
	cmd := exec.Command(gotool, "list", "-deps", "-json", pattern)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "go list %s: %s", pattern, stderr.String())
	var pkgs []pkgInfo
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkgInfo
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else {
			require.NoError(t, err)
		}
		pkgs = append(pkgs, p)
	}
	require.NotEmpty(t, pkgs)
	return pkgs
}

// own reports whether path is one of this module's packages.
func own(path string) bool { return path == module || strings.HasPrefix(path, module+"/") }

// The layers of issue 11: the cache knows nothing of any hub or of HTTP,
// and the edge knows no site. Third-party dependencies (badger pulls in
// net/http for its own tooling) are not the module's layering.
func TestLayering(t *testing.T) {
	hubs := []string{module + "/hfmirror", module + "/civitai", module + "/hfhub"}
	tests := []struct {
		name    string
		pattern string
		// forbidden are packages none of the module's packages in
		// pattern's dependencies may import (a trailing "/" forbids a
		// whole tree).
		forbidden []string
	}{
		{"cache imports no hub and no HTTP", "./cache/...",
			append([]string{"net/http", "net/http/", module + "/proxy"}, hubs...)},
		{"the edge imports no site package", "./proxy/...", hubs},
		{"the Hub's protocol package needs no cache (digest is a leaf)", "./hfhub/...", []string{module + "/cache"}},
		{"digest is a leaf", "./digest", []string{module + "/"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var checked int
			for _, p := range depsOf(t, tt.pattern) {
				if !own(p.ImportPath) {
					continue
				}
				checked++
				for _, imp := range p.Imports {
					for _, f := range tt.forbidden {
						if imp == f || (strings.HasSuffix(f, "/") && strings.HasPrefix(imp, f)) {
							t.Errorf("%s imports %s", p.ImportPath, imp)
						}
					}
				}
			}
			require.Positive(t, checked, "no package of the module checked")
		})
	}
}

// indexkeys owns the index layout for every layer, from cache up: it is a
// leaf, importing nothing of the module.
func TestIndexKeysIsALeaf(t *testing.T) {
	for _, p := range depsOf(t, "./indexkeys") {
		if p.ImportPath == module+"/indexkeys" {
			for _, imp := range p.Imports {
				assert.False(t, own(imp), "indexkeys imports %s", imp)
			}
			return
		}
	}
	t.Fatal("indexkeys not listed")
}
