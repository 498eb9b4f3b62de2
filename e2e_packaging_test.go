package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSystemdUnitVerifies runs systemd-analyze verify on the unit inside a
// scratch root holding what it names (the binary, kill, the stock units),
// so a misspelt directive or a bad hardening value fails here.
func TestSystemdUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	units := "/usr/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(units, "multi-user.target")); err != nil {
		t.Skip("no stock systemd units to verify against")
	}
	root := t.TempDir()
	self, err := os.Executable()
	require.NoError(t, err)
	for _, f := range []struct {
		src, dst string
		mode     os.FileMode
	}{
		{self, "usr/local/bin/modelgate", 0o755},
		{"/bin/kill", "bin/kill", 0o755},
		{"deploy/systemd/modelgate.service", "etc/systemd/system/modelgate.service", 0o644},
	} {
		b, err := os.ReadFile(f.src)
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(root, f.dst)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(root, f.dst), b, f.mode))
	}
	require.NoError(t, os.MkdirAll(filepath.Join(root, "usr/lib/systemd"), 0o755))
	out, err := exec.Command("cp", "-r", units, filepath.Join(root, "usr/lib/systemd/")).CombinedOutput()
	require.NoError(t, err, string(out))
	out, err = exec.Command(analyze, "verify", "--root="+root, "/etc/systemd/system/modelgate.service").CombinedOutput()
	require.NoError(t, err, "systemd-analyze verify: %s", out)
	require.Empty(t, string(out))
}
