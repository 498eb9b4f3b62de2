package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/admin"
	"github.com/modelgate/modelgate/internal/fakehub"
)

// findChromium returns the path of a Chromium to drive, or "".
func findChromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

var figures = regexp.MustCompile(`^([0-9.]+) (B|KiB|MiB|GiB) / ([0-9.]+) (B|KiB|MiB|GiB) · ([0-9.]+) (B|KiB|MiB|GiB)/s`)

func toBytes(n, unit string) float64 {
	f, _ := strconv.ParseFloat(n, 64)
	return f * map[string]float64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]
}

// TestStatusPageShowsTheLiveFillInARealBrowser loads the status page in
// headless Chromium while a throttled fill runs, and checks that the page
// shows that fill's bytes and rate (moving), the prefetch job, and the
// cache figures the JSON reports.
func TestStatusPageShowsTheLiveFillInARealBrowser(t *testing.T) {
	chromium := findChromium()
	if chromium == "" {
		t.Skip("Chromium is not installed (Debian: apt-get install chromium); the status page browser test needs it")
	}
	tr := newTestHub(t, 24<<20)
	sha := fakehub.SHA256Hex(tr.big)
	g := startGateway(t, tr.hub, nil)

	// Something cached and a hit, for the figures.
	out, err := g.cli(t, "", "prefetch", "hf:org/gated")
	require.NoError(t, err, out)
	g.mustDo(t, http.MethodGet, "/org/gated/resolve/main/weights.bin", nil)

	// A prefetch whose big file fills slowly.
	tr.hub.ThrottleBlob(sha, 1<<20)
	t.Cleanup(func() { tr.hub.ThrottleBlob(sha, 0) })
	code, b := g.adminDo(t, http.MethodPost, "/admin/v1/jobs", "", map[string]any{"spec": "hf:org/model"})
	require.Equal(t, http.StatusAccepted, code, string(b))
	var job admin.Job
	require.NoError(t, json.Unmarshal(b, &job))
	require.Eventually(t, func() bool {
		_, b := g.adminDo(t, http.MethodGet, "/admin/v1/status", "", nil)
		return strings.Contains(string(b), sha)
	}, 10*time.Second, 20*time.Millisecond, "the fill must be in flight")

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancelCtx := chromedp.NewContext(actx)
	defer cancelCtx()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	// What the page shows: the text the user sees in an element (read by
	// script, since the page re-renders its rows on every refresh).
	read := func(sel string) (string, error) {
		b, _ := json.Marshal(sel)
		return chromedp.Run(ctx, chromedp.Evaluate[string](`(function(){const e=document.querySelector(`+string(b)+`);return e?e.innerText:""})()`))
	}
	text := func(sel string) string {
		t.Helper()
		s, err := read(sel)
		require.NoError(t, err, sel)
		return s
	}
	_, err = chromedp.Run(ctx, chromedp.Navigate(g.URL+"/"))
	require.NoError(t, err)
	_, err = chromedp.Run(ctx, chromedp.WaitVisible(chromedp.CSS(`#fills .fill .figures`)))
	require.NoError(t, err)
	assert.Equal(t, "sha256:"+sha, text(`#fills .fill .name`))

	// The figures move: the landed bytes grow and a rate shows.
	var first, later float64
	require.Eventually(t, func() bool {
		txt, err := read(`#fills .fill .figures`)
		if err != nil {
			t.Logf("reading the fill row: %v", err)
			return false
		}
		m := figures.FindStringSubmatch(txt)
		if m == nil {
			t.Logf("fill figures shown: %q", txt)
			return false
		}
		landed, total, rate := toBytes(m[1], m[2]), toBytes(m[3], m[4]), toBytes(m[5], m[6])
		if total != float64(len(tr.big)) {
			t.Logf("fill total shown %q", txt)
			return false
		}
		if first == 0 {
			first = landed
			return false
		}
		later = landed
		return later > first && rate > 0
	}, 20*time.Second, 250*time.Millisecond, "the page must show the fill's bytes growing and its rate")
	assert.Less(t, later, float64(len(tr.big)))

	// The job row, the hit ratio, the cache figures.
	jobs, hitRatio, blobs, repos := text(`#jobs`), text(`#hit-ratio`), text(`#cache-blobs`), text(`#repos`)
	assert.Contains(t, jobs, "prefetch hf:org/model — running")
	assert.Contains(t, jobs, "prefetch hf:org/gated — done")
	_, b = g.adminDo(t, http.MethodGet, "/admin/v1/status", "", nil)
	var st admin.Status
	require.NoError(t, json.Unmarshal(b, &st))
	assert.Equal(t, strconv.FormatInt(st.Cache.Blobs, 10), blobs)
	assert.Equal(t, strconv.FormatFloat(100*st.Traffic.HitRatio, 'f', 1, 64)+"%", hitRatio)
	assert.Contains(t, repos, "hf:org/gated")

	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	shot := screenshotPath(t)
	require.NoError(t, os.WriteFile(shot, png, 0o644))
	t.Logf("status page screenshot: %s", shot)

	// The page holds no secret.
	html, err := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("html")))
	require.NoError(t, err)
	assertNoLeak(t, "status page", []byte(html), operatorToken, workerToken)

	g.adminDo(t, http.MethodDelete, "/admin/v1/jobs/"+job.ID, "", nil)
}

// screenshotPath is where the status page's screenshot goes: the README's
// copy under docs/ only when MODELGATE_UPDATE_SCREENSHOT=1 (so an ordinary
// test run leaves the developer's tree clean), a temporary file otherwise.
func screenshotPath(t *testing.T) string {
	if os.Getenv("MODELGATE_UPDATE_SCREENSHOT") == "1" {
		return filepath.Join("docs", "status-page.png")
	}
	return filepath.Join(t.TempDir(), "status-page.png")
}
