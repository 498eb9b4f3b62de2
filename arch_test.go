package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// credentialPackages may name the Authorization header: authinject, the
// only code that attaches a credential upstream, and the edge, which takes
// worker keys and a worker's own credential off requests (proxy, and
// clientauth for how a worker presents its key); redact names it only to
// mask it in logs. Every other package gets whose credential to use from
// the request's principal. Three more name it on their own side of things:
// admin checks admin keys (the admin API's edge), admincli is a client of
// the gateway sending one, and xet checks the tokens the gateway issues and
// sends the Hub-minted CAS token to the CAS host (moving that attachment
// into authinject is still open).
var credentialPackages = map[string]bool{"authinject": true, "proxy": true, "clientauth": true, "redact": true,
	"admin": true, "admincli": true, "xet": true}

func TestOnlyAuthinjectAndTheEdgeTouchTheAuthorizationHeader(t *testing.T) {
	var offenders []string
	fset := token.NewFileSet()
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			// The fakes play the upstreams, which read credentials.
			if path == "internal" || strings.HasPrefix(d.Name(), ".") && path != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		pkg := filepath.ToSlash(filepath.Dir(path))
		if credentialPackages[pkg] {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			if v, err := strconv.Unquote(lit.Value); err == nil && strings.EqualFold(v, "Authorization") {
				offenders = append(offenders, fset.Position(lit.Pos()).String())
			}
			return true
		})
		return nil
	})
	require.NoError(t, err)
	assert.Empty(t, offenders, "only authinject and the edge may read or write Authorization; "+
		"pass a credential in the request's authinject.Principal instead")
}
