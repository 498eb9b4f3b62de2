package main

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/internal/fakehub"
)

// progressBarRe is one frame of the CLI's progress bar: percentage, bar,
// bytes done/total, rate, elapsed:ETA.
var progressBarRe = regexp.MustCompile(`\d+% \|[█ ]+\| \(\d[\d.]*/\d[\d.]* [kMG]?B, \d[\d.]* [kMG]?B/s\) \[\d+s:\d+s\]`)

// The CLI is run as an operator runs it: the real binary, once under a
// pseudo-terminal (script from util-linux) and once into a pipe, against a
// gateway whose big file fills slowly enough for the bar to be drawn.
func TestPrefetchCLIProgressBarsOnATerminalPlainLinesOtherwise(t *testing.T) {
	skipIfShort(t, "builds the gateway binary")
	bin := buildGateway(t)
	env := []string{"PATH=" + os.Getenv("PATH"), "SHELL=/bin/sh", "TERM=xterm", "COLUMNS=120", "LINES=40"}

	t.Run("terminal", func(t *testing.T) {
		script, err := exec.LookPath("script")
		if err != nil {
			t.Skip("script (util-linux) is missing: it runs the CLI under a pseudo-terminal")
		}
		tr := newTestHub(t, 4<<20)
		tr.hub.ThrottleBlob(fakehub.SHA256Hex(tr.big), 1<<20)
		g := startGateway(t, tr.hub, nil)
		// -e: script exits with the CLI's status.
		cmd := exec.Command(script, "-qfec", bin+" prefetch --gateway "+g.URL+" hf:org/model", "/dev/null")
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "the CLI must exit 0 once every file is cached: %q", out)
		frames := progressBarRe.FindAll(out, -1)
		assert.GreaterOrEqual(t, len(frames), 2, "a progress bar with bytes, rate and ETA, redrawn as the fill goes: %q", out)
		assert.Contains(t, string(out), "\r", "the bar is redrawn in place")
		assert.Contains(t, string(out), "done   model.safetensors (4.0 MiB)")
		assert.Contains(t, string(out), "hf:org/model: done, 4/4 files")
	})

	t.Run("not a terminal", func(t *testing.T) {
		tr := newTestHub(t, 4<<20)
		tr.hub.ThrottleBlob(fakehub.SHA256Hex(tr.big), 1<<20)
		g := startGateway(t, tr.hub, nil)
		cmd := exec.Command(bin, "prefetch", "--gateway", g.URL, "hf:org/model")
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Empty(t, progressBarRe.FindAll(out, -1), "no progress bar into a pipe: %q", out)
		assert.NotContains(t, string(out), "\r")
		assert.NotContains(t, string(out), "█")
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		assert.Contains(t, lines, "done   model.safetensors (4.0 MiB)")
		assert.Equal(t, "hf:org/model: done, 4/4 files, 5.0 MiB", lines[len(lines)-1])
	})
}
