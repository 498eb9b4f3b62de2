package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/modelgate/modelgate/config"
)

// The deploy/ files are checked with the real tools: promtool lints the
// rules and the gateway's exposition, and a real Prometheus scrapes a real
// gateway under traffic and evaluates every alert and every dashboard
// query, so that a typo in a metric name or in PromQL fails here rather
// than on an operator's dashboard.

const (
	alertsFile    = "deploy/prometheus/alerts.yml"
	alertTests    = "deploy/prometheus/alerts_test.yml"
	dashboardFile = "deploy/grafana/modelgate.json"
)

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed (Debian: apt-get install prometheus); .ci/run installs it", name)
	}
	return p
}

func TestPromtoolChecksTheAlertRulesAndTheirTests(t *testing.T) {
	promtool := needTool(t, "promtool")
	out, err := exec.Command(promtool, "check", "rules", alertsFile).CombinedOutput()
	require.NoError(t, err, string(out))
	out, err = exec.Command(promtool, "test", "rules", alertTests).CombinedOutput()
	require.NoError(t, err, string(out))
	out, err = exec.Command(promtool, "check", "config", "deploy/prometheus/prometheus.yml").CombinedOutput()
	require.NoError(t, err, string(out))
}

// promQLNames returns the metric names an expression selects: what is left
// once strings, label matchers, ranges, grouping label lists, numbers,
// function names and keywords are taken out.
func promQLNames(expr string) []string {
	s := regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`").ReplaceAllString(expr, " ")
	s = regexp.MustCompile(`\{[^}]*\}`).ReplaceAllString(s, " ")
	s = regexp.MustCompile(`\[[^\]]*\]`).ReplaceAllString(s, " ")
	s = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`).ReplaceAllString(s, " ")
	s = regexp.MustCompile(`\boffset\s+-?[0-9a-z]+`).ReplaceAllString(s, " ")
	s = regexp.MustCompile(`(?i)(^|[^A-Za-z0-9_:])(0x[0-9a-f]+|[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)`).ReplaceAllString(s, "$1 ")
	keywords := map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"offset": true, "bool": true, "and": true, "or": true, "unless": true, "atan2": true, "inf": true, "nan": true}
	var names []string
	ident := regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?`)
	for _, m := range ident.FindAllString(s, -1) {
		if strings.HasSuffix(m, "(") { // a function or an aggregation
			continue
		}
		if !keywords[strings.ToLower(m)] && !slices.Contains(names, m) {
			names = append(names, m)
		}
	}
	return names
}

func TestPromQLNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`up{job="modelgate"} == 0`: {"up"},
		`sum by (instance, host) (rate(a_total{code=~"error|5xx",x='}'}[5m])) / sum by (instance) (rate(b_total[5m])) > 0.5`: {"a_total", "b_total"},
		`histogram_quantile(0.99, sum by (le) (rate(h_bucket{route!~"healthz|metrics"}[1m])))`:                               {"h_bucket"},
		`x > 0 and on (instance) sum(increase(y[15m] offset 30m)) == 0`:                                                      {"x", "y"},
		`sum(rate(a[1m])) without (le) < 1e3 * b unless ignoring(z) c offset 1h`:                                             {"a", "b", "c"},
		`max(m) > 0`:          {"m"},
		`sum(a) or vector(0)`: {"a"},
		`a_b:c_total{x="y"} + on(x) group_left(z) d2`: {"a_b:c_total", "d2"},
	} {
		assert.Equal(t, want, promQLNames(expr), expr)
	}
}

// query is one PromQL expression taken from the deploy files, with where
// it came from.
type query struct {
	where, expr string
	// mustHaveData: a dashboard query must select series of the running
	// gateway (an alert is expected to be quiet).
	mustHaveData bool
}

func alertQueries(t *testing.T) []query {
	t.Helper()
	b, err := os.ReadFile(alertsFile)
	require.NoError(t, err)
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert, Record, Expr string
			}
		}
	}
	require.NoError(t, yaml.Unmarshal(b, &rules))
	var qs []query
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			require.NotEmpty(t, r.Expr, r.Alert)
			qs = append(qs, query{where: "alert " + r.Alert, expr: r.Expr})
		}
	}
	require.NotEmpty(t, qs)
	return qs
}

// grafanaVars replaces the dashboard's variables with what Grafana would
// send: every instance, and a rate interval that covers several scrapes.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "15s", "$__range", "5m", "${instance}", ".*", "$instance", ".*")

func dashboardQueries(t *testing.T) []query {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	require.NoError(t, err)
	type panel struct {
		Title   string
		Type    string
		Targets []struct{ Expr string }
		Panels  []json.RawMessage
	}
	var dash struct {
		Panels     []json.RawMessage
		Templating struct {
			List []struct {
				Name  string
				Type  string
				Query any
			}
		}
	}
	require.NoError(t, json.Unmarshal(b, &dash))
	var qs []query
	var walk func([]json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			require.NoError(t, json.Unmarshal(r, &p))
			walk(p.Panels)
			if p.Type != "row" {
				require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				require.NotEmpty(t, tg.Expr, "panel %q", p.Title)
				qs = append(qs, query{where: "panel " + p.Title, expr: tg.Expr, mustHaveData: true})
			}
		}
	}
	walk(dash.Panels)
	// A query variable's label_values(metric, label) is a series selection.
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*([A-Za-z_]+)\)$`)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(string)
		if m, ok := v.Query.(map[string]any); ok {
			q, _ = m["query"].(string)
		}
		m := labelValues.FindStringSubmatch(q)
		require.NotNil(t, m, "variable %s: %q is not label_values(metric, label)", v.Name, q)
		qs = append(qs, query{where: "variable " + v.Name, expr: m[1], mustHaveData: true})
	}
	require.Greater(t, len(qs), 10)
	return qs
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

// promResult is the part of an /api/v1/query answer the test reads.
type promResult struct {
	Status    string `json:"status"`
	ErrorType string `json:"errorType"`
	Error     string `json:"error"`
	Data      struct {
		ResultType string            `json:"resultType"`
		Result     []json.RawMessage `json:"result"`
	} `json:"data"`
}

func promQuery(t *testing.T, base, expr string) promResult {
	t.Helper()
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(expr))
	require.NoError(t, err)
	defer resp.Body.Close()
	var r promResult
	body, _ := io.ReadAll(resp.Body)
	require.NoError(t, json.Unmarshal(body, &r), string(body))
	return r
}

func TestPrometheusEvaluatesEveryAlertAndDashboardQueryAgainstALiveGateway(t *testing.T) {
	prom := needTool(t, "prometheus")
	promtool := needTool(t, "promtool")

	tr := newTestHub(t, 2<<20)
	g := startGateway(t, tr.hub, func(c *config.Config) { c.Cache.MaxSize = 1 << 30 })
	traffic := func() {
		for _, path := range []string{
			"/org/model/resolve/main/model.safetensors", "/org/model/resolve/main/model.safetensors",
			"/org/model/resolve/main/config.json", "/api/models/org/model", "/org/model/resolve/main/missing.bin",
		} {
			g.mustDo(t, http.MethodGet, path, nil)
		}
	}
	traffic()
	tr.hub.RateLimitHub(1, 2*time.Second)
	g.mustDo(t, http.MethodGet, "/api/models/org/model?after=429", nil)

	// The exposition passes promtool's lint, and its metric names are the
	// set the deploy files may use.
	exposition := g.metrics(t)
	lint := exec.Command(promtool, "check", "metrics")
	lint.Stdin = strings.NewReader(exposition)
	out, err := lint.CombinedOutput()
	require.NoError(t, err, "promtool check metrics: %s", out)
	exported := map[string]bool{"up": true} // Prometheus' own per-target series
	for _, line := range strings.Split(exposition, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		exported[regexp.MustCompile(`^[A-Za-z_:][A-Za-z0-9_:]*`).FindString(line)] = true
	}

	dir := t.TempDir()
	rules, err := os.ReadFile(alertsFile)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "alerts.yml"), rules, 0o644))
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [alerts.yml]
scrape_configs:
  - job_name: modelgate
    static_configs:
      - targets: [%q]
`, strings.TrimPrefix(g.URL, "http://"))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644))
	addr := freePort(t)
	logs := &syncBuffer{}
	cmd := exec.Command(prom, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	cmd.Stdout, cmd.Stderr = logs, logs
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	base := "http://" + addr
	require.Eventually(t, func() bool {
		resp, err := http.Get(base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 100*time.Millisecond, "prometheus did not get ready: %s", logs)
	// Enough scrapes for rate() over a minute to have points on both sides
	// of a second round of traffic.
	scrapes := func() int {
		r := promQuery(t, base, `count_over_time(modelgate_build_info[1m])`)
		if r.Status != "success" || len(r.Data.Result) == 0 {
			return 0
		}
		var v struct{ Value [2]any }
		json.Unmarshal(r.Data.Result[0], &v)
		var n int
		fmt.Sscan(fmt.Sprint(v.Value[1]), &n)
		return n
	}
	require.Eventually(t, func() bool { return scrapes() >= 2 }, 30*time.Second, 200*time.Millisecond, "no scrapes: %s", logs)
	traffic()
	n := scrapes()
	require.Eventually(t, func() bool { return scrapes() >= n+2 }, 30*time.Second, 200*time.Millisecond)
	up := promQuery(t, base, `up{job="modelgate"}`)
	require.Len(t, up.Data.Result, 1)
	assert.Contains(t, string(up.Data.Result[0]), `"1"`, "the gateway's scrape failed")

	queries := append(alertQueries(t), dashboardQueries(t)...)
	for _, q := range queries {
		expr := grafanaVars.Replace(q.expr)
		require.NotContains(t, expr, "$", "%s: a variable the test does not know: %s", q.where, q.expr)
		names := promQLNames(expr)
		assert.NotEmpty(t, names, "%s selects no metric: %s", q.where, expr)
		for _, name := range names {
			assert.True(t, exported[name], "%s uses %q, which the gateway does not export: %s", q.where, name, q.expr)
		}
		r := promQuery(t, base, expr)
		if !assert.Equal(t, "success", r.Status, "%s: %s: %s %s", q.where, expr, r.ErrorType, r.Error) {
			continue
		}
		if q.mustHaveData {
			assert.NotEmpty(t, r.Data.Result, "%s selects nothing from a gateway under traffic: %s", q.where, expr)
		}
	}
	t.Logf("evaluated %d expressions", len(queries))

	// The rules loaded and are being evaluated, none of them broken.
	resp, err := http.Get(base + "/api/v1/rules")
	require.NoError(t, err)
	defer resp.Body.Close()
	var rulesAnswer struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&rulesAnswer))
	require.Len(t, rulesAnswer.Data.Groups, 1)
	assert.Len(t, rulesAnswer.Data.Groups[0].Rules, len(alertQueries(t)))
	require.Eventually(t, func() bool {
		resp, err := http.Get(base + "/api/v1/rules")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		json.NewDecoder(resp.Body).Decode(&rulesAnswer)
		for _, r := range rulesAnswer.Data.Groups[0].Rules {
			if r.Health != "ok" {
				return false
			}
		}
		return true
	}, 10*time.Second, 200*time.Millisecond, "rules unhealthy: %+v", rulesAnswer)
}
