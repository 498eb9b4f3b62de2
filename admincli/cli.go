package admincli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/modelgate/modelgate/admin"
)

// Commands are the subcommands this package implements.
var Commands = map[string]bool{
	"prefetch": true, "ls": true, "pin": true, "unpin": true, "purge": true,
	"status": true, "jobs": true, "verify": true, "export": true, "import": true,
}

// Usage documents the commands.
const Usage = `admin commands (they talk to a running gateway; no config file needed):
  modelgate prefetch [--include GLOB]... [--exclude GLOB]... [--detach] SPEC...
  modelgate ls [--json] [--files] [SPEC]
  modelgate pin SPEC | unpin SPEC | purge SPEC
  modelgate status [--json]
  modelgate jobs [--json] | jobs watch ID | jobs cancel ID
  modelgate verify [--detach] [SPEC]
  modelgate export SPEC... > f.tar
  modelgate import f.tar
each takes --gateway URL (default $MODELGATE_GATEWAY, else ` + DefaultGateway + `);
the admin key comes from $MODELGATE_ADMIN_KEY.
SPEC: hf:org/name[@rev], hf:datasets/org/name[@rev], hf:spaces/org/name[@rev],
      civitai:<versionId> (primary file), civitai:<versionId>/all
`

// Env is how the commands read the environment and the terminal.
type Env struct {
	Getenv func(string) string
	Stdout io.Writer
	Stderr io.Writer
	Stdin  io.Reader
	// IsTerminal reports whether Stdout is a terminal (progress bars
	// then, plain lines otherwise).
	IsTerminal bool
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

// Run runs one admin command.
func Run(ctx context.Context, cmd string, args []string, env Env) error {
	fs := flag.NewFlagSet("modelgate "+cmd, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() { io.WriteString(env.Stderr, Usage) }
	def := env.Getenv("MODELGATE_GATEWAY")
	if def == "" {
		def = DefaultGateway
	}
	gateway := fs.String("gateway", def, "the gateway's base URL")
	asJSON := fs.Bool("json", false, "print JSON (ls, status, jobs)")
	files := fs.Bool("files", false, "list every file (ls)")
	detach := fs.Bool("detach", false, "start the job(s), print their ids and return (prefetch, verify)")
	var include, exclude multi
	fs.Var(&include, "include", "only files matching this glob (prefetch; repeatable)")
	fs.Var(&exclude, "exclude", "skip files matching this glob (prefetch; repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	u, err := url.Parse(*gateway)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--gateway must be an http(s) URL such as %s", DefaultGateway)
	}
	c := &client{base: strings.TrimRight(u.String(), "/"), key: env.Getenv("MODELGATE_ADMIN_KEY"), http: &http.Client{}}
	rest := fs.Args()
	switch cmd {
	case "prefetch":
		if len(rest) == 0 {
			return errors.New("usage: modelgate prefetch [--include GLOB]... [--exclude GLOB]... SPEC...")
		}
		return prefetch(ctx, c, env, rest, include, exclude, *detach)
	case "verify":
		spec := ""
		if len(rest) > 1 {
			return errors.New("usage: modelgate verify [SPEC]")
		}
		if len(rest) == 1 {
			spec = rest[0]
		}
		var j admin.Job
		if err := c.call(ctx, http.MethodPost, "/admin/v1/jobs", map[string]any{"kind": admin.KindVerify, "spec": spec}, &j); err != nil {
			return err
		}
		if *detach {
			fmt.Fprintln(env.Stdout, j.ID)
			return nil
		}
		return follow(ctx, c, env, []string{j.ID})
	case "ls":
		return list(ctx, c, env, rest, *asJSON, *files)
	case "pin", "unpin", "purge":
		if len(rest) != 1 {
			return fmt.Errorf("usage: modelgate %s SPEC", cmd)
		}
		method, path := http.MethodPost, "/admin/v1/pins"
		switch cmd {
		case "unpin":
			method = http.MethodDelete
		case "purge":
			path = "/admin/v1/purge"
		}
		var out map[string]any
		if err := c.call(ctx, method, path, map[string]string{"spec": rest[0]}, &out); err != nil {
			return err
		}
		return printJSON(env.Stdout, out)
	case "status":
		return status(ctx, c, env, *asJSON)
	case "jobs":
		return jobs(ctx, c, env, rest, *asJSON)
	case "export":
		if len(rest) == 0 {
			return errors.New("usage: modelgate export SPEC... > f.tar")
		}
		b, _ := json.Marshal(map[string]any{"specs": rest})
		resp, err := c.request(ctx, http.MethodPost, "/admin/v1/export", strings.NewReader(string(b)), "application/json")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.Copy(env.Stdout, resp.Body)
		return err
	case "import":
		if len(rest) != 1 {
			return errors.New("usage: modelgate import f.tar (- for standard input)")
		}
		var in io.Reader = env.Stdin
		if rest[0] != "-" {
			f, err := os.Open(rest[0])
			if err != nil {
				return err
			}
			defer f.Close()
			in = f
		}
		resp, err := c.request(ctx, http.MethodPost, "/admin/v1/import", in, "application/x-tar")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			return err
		}
		return printJSON(env.Stdout, out)
	}
	return fmt.Errorf("unknown command %q", cmd)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// prefetch starts one job per spec and follows them.
func prefetch(ctx context.Context, c *client, env Env, specs, include, exclude []string, detach bool) error {
	var ids []string
	for _, spec := range specs {
		var j admin.Job
		err := c.call(ctx, http.MethodPost, "/admin/v1/jobs", map[string]any{
			"kind": admin.KindPrefetch, "spec": spec, "include": include, "exclude": exclude}, &j)
		if err != nil {
			return fmt.Errorf("%s: %w", spec, err)
		}
		ids = append(ids, j.ID)
		if detach {
			fmt.Fprintln(env.Stdout, j.ID)
		}
	}
	if detach {
		return nil
	}
	return follow(ctx, c, env, ids)
}

// follow watches the jobs one after another (they run in parallel on the
// gateway) and fails unless every file of every job is done.
func follow(ctx context.Context, c *client, env Env, ids []string) error {
	var failed []string
	for _, id := range ids {
		j, err := watch(ctx, c, env, id)
		if err != nil {
			return err
		}
		for _, f := range j.Files {
			if f.State == "failed" {
				failed = append(failed, fmt.Sprintf("%s %s: %s", j.Spec, f.Path, f.Error))
			}
		}
		if j.State != admin.StateDone && len(failed) == 0 {
			failed = append(failed, fmt.Sprintf("%s: job %s %s: %s", j.Spec, j.ID, j.State, j.Error))
		}
	}
	if len(failed) > 0 {
		for _, f := range failed {
			fmt.Fprintln(env.Stderr, "failed:", f)
		}
		return fmt.Errorf("%d file(s) not cached", len(failed))
	}
	return nil
}

// watch follows one job's events until it ends, drawing progress.
func watch(ctx context.Context, c *client, env Env, id string) (admin.Job, error) {
	resp, err := c.request(ctx, http.MethodGet, "/admin/v1/jobs/"+url.PathEscape(id)+"/events", nil, "")
	if err != nil {
		return admin.Job{}, err
	}
	defer resp.Body.Close()
	view := newProgressView(env)
	defer view.close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	var last admin.Job
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var j admin.Job
		if err := json.Unmarshal([]byte(data), &j); err != nil {
			return last, fmt.Errorf("reading the job's events: %w", err)
		}
		last = j
		view.update(j)
		if j.State == admin.StateDone || j.State == admin.StateFailed || j.State == admin.StateCancelled {
			view.finish(j)
			return j, nil
		}
	}
	if err := sc.Err(); err != nil {
		return last, fmt.Errorf("watching job %s: %w", id, err)
	}
	return last, fmt.Errorf("the gateway ended job %s's event stream early (state %s)", id, last.State)
}

// progressView draws a job: a bar for the job's total bytes (rate, ETA)
// and one line per finished file; plain lines when not on a terminal.
type progressView struct {
	env      Env
	bar      *progressbar.ProgressBar
	reported map[string]bool
	lastLine time.Time
}

func newProgressView(env Env) *progressView {
	return &progressView{env: env, reported: map[string]bool{}}
}

func (v *progressView) update(j admin.Job) {
	if v.env.IsTerminal && j.BytesTotal > 0 && v.bar == nil {
		v.bar = progressbar.NewOptions64(j.BytesTotal,
			progressbar.OptionSetWriter(v.env.Stdout),
			progressbar.OptionShowBytes(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
			progressbar.OptionSetDescription(j.Spec))
	}
	for _, f := range j.Files {
		if (f.State == "done" || f.State == "failed") && !v.reported[f.Path] {
			v.reported[f.Path] = true
			line := fmt.Sprintf("%-6s %s (%s)", f.State, f.Path, humanBytes(f.Size))
			if f.Error != "" {
				line += ": " + f.Error
			}
			if v.bar != nil {
				v.bar.Clear()
			}
			fmt.Fprintln(v.env.Stdout, line)
		}
	}
	if v.bar != nil {
		if int64(v.bar.GetMax64()) != j.BytesTotal && j.BytesTotal > 0 {
			v.bar.ChangeMax64(j.BytesTotal)
		}
		cur := running(j)
		desc := fmt.Sprintf("%s %d/%d files", j.Spec, j.FilesDone, j.FilesTotal)
		if cur != "" {
			desc += " · " + cur
		}
		v.bar.Describe(desc)
		v.bar.Set64(j.BytesDone)
		return
	}
	if !v.env.IsTerminal && time.Since(v.lastLine) >= 5*time.Second && j.State == admin.StateRunning {
		v.lastLine = time.Now()
		fmt.Fprintf(v.env.Stdout, "%s: %d/%d files, %s/%s, %s/s, ETA %s\n", j.Spec, j.FilesDone, j.FilesTotal,
			humanBytes(j.BytesDone), humanBytes(j.BytesTotal), humanBytes(int64(j.Rate)), eta(j.ETASeconds))
	}
}

// running names the file in flight furthest from done, with its share.
func running(j admin.Job) string {
	var best admin.JobFile
	for _, f := range j.Files {
		if f.State == "running" && f.Size-f.Bytes > best.Size-best.Bytes {
			best = f
		}
	}
	if best.Path == "" || best.Size == 0 {
		return ""
	}
	return fmt.Sprintf("%s %d%%", best.Path, 100*best.Bytes/best.Size)
}

func (v *progressView) finish(j admin.Job) {
	if v.bar != nil {
		v.bar.Set64(j.BytesDone)
		v.bar.Finish()
		v.bar = nil
	}
	fmt.Fprintf(v.env.Stdout, "%s: %s, %d/%d files, %s\n", j.Spec, j.State, j.FilesDone, j.FilesTotal, humanBytes(j.BytesDone))
}

func (v *progressView) close() {
	if v.bar != nil {
		v.bar.Exit()
	}
}

func eta(s float64) string {
	if s <= 0 {
		return "-"
	}
	return (time.Duration(s) * time.Second).String()
}

func humanBytes(n int64) string {
	f := float64(n)
	for _, u := range []string{"B", "KiB", "MiB", "GiB", "TiB"} {
		if f < 1024 || u == "TiB" {
			if u == "B" {
				return fmt.Sprintf("%d B", n)
			}
			return fmt.Sprintf("%.1f %s", f, u)
		}
		f /= 1024
	}
	return ""
}

// list prints the inventory as an aligned table, or JSON.
func list(ctx context.Context, c *client, env Env, rest []string, asJSON, files bool) error {
	q := url.Values{}
	if len(rest) > 1 {
		return errors.New("usage: modelgate ls [--json] [--files] [SPEC]")
	}
	if len(rest) == 1 {
		q.Set("spec", rest[0])
	}
	if files {
		q.Set("files", "true")
	}
	var inv admin.Inventory
	if err := c.call(ctx, http.MethodGet, "/admin/v1/inventory?"+q.Encode(), nil, &inv); err != nil {
		return err
	}
	if asJSON {
		return printJSON(env.Stdout, inv)
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REPO\tREVISION\tFILES\tSIZE\tLAST ACCESS\tPINNED")
	for _, r := range inv.Repos {
		rev := r.Commit
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if len(r.Revisions) > 0 {
			revs := append([]string{}, r.Revisions...)
			sort.Strings(revs)
			rev = strings.Join(revs, ",") + " (" + rev + ")"
		}
		if rev == "" {
			rev = "-"
		}
		access := "-"
		if !r.LastAccess.IsZero() {
			access = r.LastAccess.Local().Format("2006-01-02 15:04")
		}
		pinned := "no"
		if r.Pinned {
			pinned = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\t%s\n", r.Repo, rev, r.Cached, r.Files, humanBytes(r.Bytes), access, pinned)
		for _, f := range r.FileList {
			state := "cached"
			if !f.Cached {
				state = "missing"
			}
			fmt.Fprintf(tw, "  %s\t%s\t\t%s\t\t\n", f.Path, state, humanBytes(f.Size))
		}
	}
	t := inv.Totals
	fmt.Fprintf(tw, "\ntotal: %d blobs, %s (max %s), index %s, disk free %s\n", t.Blobs, humanBytes(t.Bytes), maxSize(t.MaxSize), humanBytes(t.IndexBytes), humanBytes(t.DiskFree))
	return tw.Flush()
}

func maxSize(n int64) string {
	if n <= 0 {
		return "none"
	}
	return humanBytes(n)
}

func status(ctx context.Context, c *client, env Env, asJSON bool) error {
	var st admin.Status
	if err := c.call(ctx, http.MethodGet, "/admin/v1/status", nil, &st); err != nil {
		return err
	}
	if asJSON {
		return printJSON(env.Stdout, st)
	}
	w := env.Stdout
	fmt.Fprintf(w, "cache:     %s in %d blobs (max %s), index %s, disk free %s\n", humanBytes(st.Cache.Bytes), st.Cache.Blobs, maxSize(st.Cache.MaxSize), humanBytes(st.Cache.IndexBytes), humanBytes(st.Cache.DiskFree))
	t := st.Traffic
	ratio := "-"
	if t.Hits+t.Misses+t.Coalesced > 0 {
		ratio = fmt.Sprintf("%.1f%%", 100*t.HitRatio)
	}
	fmt.Fprintf(w, "hit ratio: %s (%d hits, %d misses, %d joined) over %s\n", ratio, t.Hits, t.Misses, t.Coalesced, (time.Duration(t.WindowSeconds) * time.Second).String())
	var src []string
	for k, v := range t.BytesBySource {
		src = append(src, fmt.Sprintf("%s %s", k, humanBytes(int64(v))))
	}
	sort.Strings(src)
	fmt.Fprintf(w, "served:    %s\n", strings.Join(src, ", "))
	for _, u := range st.Upstreams {
		fmt.Fprintf(w, "upstream:  %-12s %s (%d requests, %d errors, %d rate-limited)\n", u.Host, u.State, u.Requests, u.Errors, u.RateLimited)
	}
	fmt.Fprintf(w, "fills:     %d in flight\n", len(st.Fills))
	for _, f := range st.Fills {
		fmt.Fprintf(w, "  %s %s/%s %s/s\n", f.Key, humanBytes(f.Landed), humanBytes(f.Size), humanBytes(int64(f.Rate)))
	}
	running := 0
	for _, j := range st.Jobs {
		if j.State == admin.StateRunning || j.State == admin.StateQueued {
			running++
		}
	}
	fmt.Fprintf(w, "jobs:      %d running\n", running)
	return nil
}

func jobs(ctx context.Context, c *client, env Env, rest []string, asJSON bool) error {
	switch {
	case len(rest) == 0:
		var out struct {
			Jobs []admin.Job `json:"jobs"`
		}
		if err := c.call(ctx, http.MethodGet, "/admin/v1/jobs", nil, &out); err != nil {
			return err
		}
		if asJSON {
			return printJSON(env.Stdout, out)
		}
		tw := tabwriter.NewWriter(env.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tKIND\tSPEC\tSTATE\tFILES\tBYTES\tCREATED")
		for _, j := range out.Jobs {
			spec := j.Spec
			if spec == "" {
				spec = "(all)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s/%s\t%s\n", j.ID, j.Kind, spec, j.State, j.FilesDone, j.FilesTotal,
				humanBytes(j.BytesDone), humanBytes(j.BytesTotal), j.Created.Local().Format("2006-01-02 15:04:05"))
		}
		return tw.Flush()
	case len(rest) == 2 && rest[0] == "watch":
		return follow(ctx, c, env, []string{rest[1]})
	case len(rest) == 2 && rest[0] == "cancel":
		var j admin.Job
		if err := c.call(ctx, http.MethodDelete, "/admin/v1/jobs/"+url.PathEscape(rest[1]), nil, &j); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "job %s: cancelling (%s)\n", j.ID, j.State)
		return nil
	}
	return errors.New("usage: modelgate jobs [--json] | jobs watch ID | jobs cancel ID")
}
