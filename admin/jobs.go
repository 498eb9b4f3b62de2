package admin

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelgate/modelgate/indexkeys"
)

// Job kinds and states.
const (
	KindPrefetch = "prefetch"
	KindVerify   = "verify"

	StateQueued    = "queued"
	StateRunning   = "running"
	StateDone      = "done"
	StateFailed    = "failed"
	StateCancelled = "cancelled"
)

// jobPrefix keys the job records in the index; queued and running ones
// are resumed at start.
const jobPrefix = indexkeys.AdminJob

// finishedJobTTL is how long a finished job stays listed.
const finishedJobTTL = 7 * 24 * time.Hour

// JobFile is one file of a job.
type JobFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	Bytes  int64  `json:"bytes"`
	State  string `json:"state"` // pending, running, done, failed
	Error  string `json:"error,omitempty"`
	Digest string `json:"digest,omitempty"`
	Target string `json:"-"`
}

// Job is a prefetch or verify job as the API shows it.
type Job struct {
	ID          string    `json:"id"`
	Kind        string    `json:"kind"`
	Spec        string    `json:"spec,omitempty"`
	Include     []string  `json:"include,omitempty"`
	Exclude     []string  `json:"exclude,omitempty"`
	State       string    `json:"state"`
	Created     time.Time `json:"created"`
	Started     time.Time `json:"started,omitzero"`
	Finished    time.Time `json:"finished,omitzero"`
	Commit      string    `json:"commit,omitempty"`
	FilesTotal  int       `json:"files_total"`
	FilesDone   int       `json:"files_done"`
	FilesFailed int       `json:"files_failed"`
	BytesTotal  int64     `json:"bytes_total"`
	BytesDone   int64     `json:"bytes_done"`
	Rate        float64   `json:"rate_bytes_per_second"`
	ETASeconds  float64   `json:"eta_seconds"`
	Error       string    `json:"error,omitempty"`
	Files       []JobFile `json:"files,omitempty"`
	Quarantined []string  `json:"quarantined,omitempty"`
	// Node is the gateway running the job (with a shared bucket).
	Node string `json:"node,omitempty"`
}

// terminal reports whether the job has ended.
func (j *Job) terminal() bool {
	return j.State == StateDone || j.State == StateFailed || j.State == StateCancelled
}

type jobRun struct {
	mu        sync.Mutex
	job       Job
	live      []*atomic.Int64 // bytes of each file so far
	cancel    context.CancelFunc
	cancelled bool
	wake      chan struct{} // closed and replaced on every change
	runStart  time.Time
	baseBytes int64 // bytes done before this run started (skipped as already there)
}

// changed wakes the watchers. Caller holds r.mu.
func (r *jobRun) changedLocked() {
	close(r.wake)
	r.wake = make(chan struct{})
}

// snapshot returns the job with its live figures. withFiles includes the
// per-file list.
func (r *jobRun) snapshot(withFiles bool) (Job, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	j := r.job
	var done int64
	files := make([]JobFile, len(r.job.Files))
	copy(files, r.job.Files)
	for i := range files {
		if i < len(r.live) && files[i].State == "running" {
			files[i].Bytes = r.live[i].Load()
		}
		done += files[i].Bytes
	}
	j.BytesDone = done
	if j.State == StateRunning && !r.runStart.IsZero() {
		if el := time.Since(r.runStart).Seconds(); el > 0.2 {
			j.Rate = float64(done-r.baseBytes) / el
		}
		if j.Rate > 0 && j.BytesTotal > done {
			j.ETASeconds = float64(j.BytesTotal-done) / j.Rate
		}
	}
	if withFiles {
		j.Files = files
	} else {
		j.Files = nil
	}
	return j, r.wake
}

type jobs struct {
	s    *Server
	mu   sync.Mutex
	runs map[string]*jobRun
	wg   sync.WaitGroup
}

func newJobs(s *Server) *jobs { return &jobs{s: s, runs: map[string]*jobRun{}} }

func (js *jobs) wait() { js.wg.Wait() }

// resume loads the recorded jobs and restarts those a previous run left
// queued or running.
func (js *jobs) resume() error {
	var again []*jobRun
	err := js.s.opts.Index.Scan(jobPrefix, func(_ string, val []byte) error {
		var j Job
		if json.Unmarshal(val, &j) != nil || j.ID == "" {
			return nil
		}
		r := &jobRun{job: j, wake: make(chan struct{})}
		js.runs[j.ID] = r
		if !j.terminal() {
			again = append(again, r)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("admin: loading jobs: %w", err)
	}
	for _, r := range again {
		js.s.log.Info("resuming job", "job", r.job.ID, "kind", r.job.Kind, "spec", r.job.Spec)
		js.start(r)
	}
	return nil
}

// create records a new job and starts it.
func (js *jobs) create(kind, spec string, include, exclude []string) (*jobRun, error) {
	var b [8]byte
	rand.Read(b[:])
	j := Job{ID: hex.EncodeToString(b[:]), Kind: kind, Spec: spec, Include: include, Exclude: exclude,
		State: StateQueued, Created: time.Now().UTC(), Node: js.s.opts.Node}
	r := &jobRun{job: j, wake: make(chan struct{})}
	if err := js.persist(r); err != nil {
		return nil, err
	}
	js.mu.Lock()
	js.runs[j.ID] = r
	js.mu.Unlock()
	js.start(r)
	return r, nil
}

func (js *jobs) persist(r *jobRun) error {
	j, _ := r.snapshot(true)
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	ttl := time.Duration(0)
	if j.terminal() {
		ttl = finishedJobTTL
	}
	if err := js.s.opts.Index.Set(jobPrefix+j.ID, b, ttl); err != nil {
		return fmt.Errorf("admin: recording job: %w", err)
	}
	js.s.saveJobShared(j.ID, b)
	return nil
}

func (js *jobs) get(id string) (*jobRun, bool) {
	js.mu.Lock()
	defer js.mu.Unlock()
	r, ok := js.runs[id]
	return r, ok
}

func (js *jobs) list() []Job {
	js.mu.Lock()
	runs := make([]*jobRun, 0, len(js.runs))
	for _, r := range js.runs {
		runs = append(runs, r)
	}
	js.mu.Unlock()
	out := make([]Job, 0, len(runs))
	for _, r := range runs {
		j, _ := r.snapshot(false)
		out = append(out, j)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Created.After(out[b].Created) })
	return out
}

// start runs the job in the background.
func (js *jobs) start(r *jobRun) {
	ctx, cancel := context.WithCancel(js.s.ctx)
	r.mu.Lock()
	r.cancel = cancel
	r.mu.Unlock()
	js.wg.Add(1)
	go func() {
		defer js.wg.Done()
		defer cancel()
		r.mu.Lock()
		r.job.State, r.job.Started, r.job.Error = StateRunning, time.Now().UTC(), ""
		r.runStart = time.Now()
		r.changedLocked()
		r.mu.Unlock()
		js.persist(r)
		var err error
		switch r.job.Kind {
		case KindPrefetch:
			err = js.s.runPrefetch(ctx, r, func() { js.persist(r) })
		case KindVerify:
			err = js.s.runVerify(ctx, r, func() { js.persist(r) })
		default:
			err = fmt.Errorf("unknown job kind %q", r.job.Kind)
		}
		r.mu.Lock()
		switch {
		case r.cancelled:
			r.job.State = StateCancelled
		case js.s.ctx.Err() != nil:
			// The gateway is stopping: the job stays "running" in the
			// index and resumes at the next start.
			r.changedLocked()
			r.mu.Unlock()
			return
		case err != nil:
			r.job.State, r.job.Error = StateFailed, err.Error()
		case r.job.FilesFailed > 0:
			r.job.State, r.job.Error = StateFailed, fmt.Sprintf("%d of %d files failed", r.job.FilesFailed, r.job.FilesTotal)
		default:
			r.job.State = StateDone
		}
		r.job.Finished = time.Now().UTC()
		r.changedLocked()
		r.mu.Unlock()
		js.persist(r)
		j, _ := r.snapshot(false)
		js.s.log.Info("job finished", "job", j.ID, "kind", j.Kind, "spec", j.Spec, "state", j.State,
			"files", j.FilesTotal, "failed", j.FilesFailed, "bytes", j.BytesDone)
	}()
}

func (js *jobs) cancel(id string) (Job, error) {
	r, ok := js.get(id)
	if !ok {
		return Job{}, errNoJob
	}
	r.mu.Lock()
	if !r.job.terminal() {
		r.cancelled = true
		if r.cancel != nil {
			r.cancel()
		}
	}
	r.mu.Unlock()
	j, _ := r.snapshot(false)
	return j, nil
}

var errNoJob = errors.New("no such job")

// jobRequest is the body of POST /admin/v1/jobs.
type jobRequest struct {
	Kind    string   `json:"kind"`
	Spec    string   `json:"spec"`
	Include []string `json:"include"`
	Exclude []string `json:"exclude"`
}

func (s *Server) startJob(w http.ResponseWriter, r *http.Request) {
	var req jobRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Kind == "" {
		req.Kind = KindPrefetch
	}
	switch req.Kind {
	case KindPrefetch:
		spec, err := ParseSpec(req.Spec)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		if _, err := NewFilter(req.Include, req.Exclude); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		if !spec.IsHub() && (len(req.Include) > 0 || len(req.Exclude) > 0) {
			writeError(w, http.StatusBadRequest, "include/exclude patterns apply to Hugging Face repos only")
			return
		}
		req.Spec = spec.String()
	case KindVerify:
		if req.Spec != "" {
			spec, err := ParseSpec(req.Spec)
			if err != nil {
				writeError(w, http.StatusBadRequest, err.Error())
				return
			}
			req.Spec = spec.String()
		}
	default:
		writeError(w, http.StatusBadRequest, `kind must be "prefetch" or "verify"`)
		return
	}
	run, err := s.jobs.create(req.Kind, req.Spec, req.Include, req.Exclude)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	j, _ := run.snapshot(false)
	writeJSON(w, http.StatusAccepted, j)
}

func (s *Server) listJobs(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"jobs": s.jobs.list()})
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request) {
	run, ok := s.jobs.get(r.PathValue("id"))
	if !ok {
		// Another gateway's job, as it last saved it to the bucket.
		j, found, err := s.sharedJob(r.Context(), r.PathValue("id"))
		switch {
		case err != nil:
			writeError(w, http.StatusBadGateway, "reading the job from the shared bucket: "+err.Error())
		case !found:
			writeError(w, http.StatusNotFound, errNoJob.Error())
		default:
			writeJSON(w, http.StatusOK, j)
		}
		return
	}
	j, _ := run.snapshot(true)
	writeJSON(w, http.StatusOK, j)
}

func (s *Server) cancelJob(w http.ResponseWriter, r *http.Request) {
	j, err := s.jobs.cancel(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, j)
}

// watchJob streams the job as server-sent events ("event: job", the JSON
// with its files) on every change, at most every 250ms, until it ends.
func (s *Server) watchJob(w http.ResponseWriter, r *http.Request) {
	run, ok := s.jobs.get(r.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, errNoJob.Error())
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		j, wake := run.snapshot(true)
		b, _ := json.Marshal(j)
		if _, err := fmt.Fprintf(w, "event: job\ndata: %s\n\n", b); err != nil {
			return
		}
		rc.Flush()
		if j.terminal() {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-s.ctx.Done():
			return
		case <-wake:
		case <-tick.C: // bytes move without a state change
		}
		// Coalesce bursts of changes.
		select {
		case <-tick.C:
		case <-r.Context().Done():
			return
		}
	}
}
