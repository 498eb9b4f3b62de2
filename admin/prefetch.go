package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/hfhub"
)

// runPrefetch lists the files of the job's spec and downloads each one
// through the gateway's own handler, a bounded number at a time. A file
// counts as done only when its whole body came through (the gateway holds
// back the last byte until the blob verified) and the blob is published.
func (s *Server) runPrefetch(ctx context.Context, r *jobRun, save func()) error {
	spec, err := ParseSpec(r.job.Spec)
	if err != nil {
		return err
	}
	filter, err := NewFilter(r.job.Include, r.job.Exclude)
	if err != nil {
		return err
	}
	var files []JobFile
	var commit string
	if spec.IsHub() {
		commit, files, err = s.listHub(ctx, spec, filter)
	} else {
		files, err = s.listCivitAI(ctx, spec)
	}
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.job.Commit = commit
	r.job.Files = files
	r.job.FilesTotal, r.job.FilesDone, r.job.FilesFailed = len(files), 0, 0
	r.job.BytesTotal = 0
	r.live = make([]*atomic.Int64, len(files))
	for i := range files {
		r.job.BytesTotal += files[i].Size
		r.live[i] = new(atomic.Int64)
	}
	r.changedLocked()
	r.mu.Unlock()
	save()

	sem := make(chan struct{}, s.opts.PrefetchFiles)
	var wg sync.WaitGroup
	for i := range files {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return ctx.Err()
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			s.fetchFile(ctx, r, i)
			save()
		}(i)
	}
	wg.Wait()
	return ctx.Err()
}

// fetchFile downloads file i of the job in-process.
func (s *Server) fetchFile(ctx context.Context, r *jobRun, i int) {
	r.mu.Lock()
	f := r.job.Files[i]
	r.job.Files[i].State = "running"
	live := r.live[i]
	r.changedLocked()
	r.mu.Unlock()

	h := s.opts.Hub
	if strings.HasPrefix(f.Target, "/api/download/") {
		h = s.opts.CivitAI
	}
	var ferr error
	var digest cache.Digest
	if h == nil {
		ferr = errors.New("this gateway has no handler for this file")
	} else {
		w := serveInProcess(ctx, h, http.MethodGet, f.Target, false, live)
		size := f.Size
		if cl, err := strconv.ParseInt(w.header.Get("Content-Length"), 10, 64); err == nil {
			size = cl
		}
		etag := strings.Trim(strings.TrimPrefix(w.header.Get("X-Linked-Etag"), "W/"), `"`)
		if etag == "" {
			etag = strings.Trim(strings.TrimPrefix(w.header.Get("ETag"), "W/"), `"`)
		}
		switch {
		case ctx.Err() != nil:
			ferr = ctx.Err()
		case w.aborted:
			ferr = fmt.Errorf("the download was cut after %d bytes (the gateway could not complete or verify it)", live.Load())
		case w.status() != http.StatusOK:
			ferr = fmt.Errorf("the gateway answered %d: %s", w.status(), errorText(w))
		case live.Load() != size:
			ferr = fmt.Errorf("the download ended after %d of %d bytes", live.Load(), size)
		default:
			digest, ferr = digestOfETag(etag)
			if ferr == nil && !s.opts.Store.AwaitPublished(ctx, digest) {
				ferr = fmt.Errorf("the blob %s is not in the cache after its download", digest)
			}
		}
		f.Size = size
	}
	r.mu.Lock()
	cur := &r.job.Files[i]
	if cur.Size != f.Size {
		r.job.BytesTotal += f.Size - cur.Size
		cur.Size = f.Size
	}
	cur.Bytes = live.Load()
	if ferr != nil {
		cur.State, cur.Error = "failed", ferr.Error()
		r.job.FilesFailed++
	} else {
		cur.State, cur.Digest = "done", digest.String()
		r.job.FilesDone++
	}
	r.changedLocked()
	r.mu.Unlock()
}

// digestOfETag reads the content id of a gateway answer's entity tag.
func digestOfETag(etag string) (cache.Digest, error) {
	switch len(etag) {
	case 64:
		return cache.NewDigest(cache.SHA256, etag)
	case 40:
		return cache.NewDigest(cache.GitSHA1, etag)
	}
	return cache.Digest{}, fmt.Errorf("the answer names no content id (ETag %q)", etag)
}

// errorText is the message of an error answer, shortened.
func errorText(w *countingWriter) string {
	if m := w.header.Get("X-Error-Message"); m != "" {
		return m
	}
	var e struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	if json.Unmarshal(w.body, &e) == nil {
		if e.Message != "" {
			return e.Message
		}
		if e.Error != "" {
			return e.Error
		}
	}
	return http.StatusText(w.status())
}

// treeEntry is one entry of the Hub's tree listing.
type treeEntry struct {
	Type string `json:"type"`
	Path string `json:"path"`
	Size int64  `json:"size"`
	LFS  *struct {
		Size int64 `json:"size"`
	} `json:"lfs"`
}

var linkNext = regexp.MustCompile(`<([^>]+)>\s*;\s*rel="?next"?`)

// listHub resolves the spec's revision to a commit (through the gateway's
// revision API) and lists the repo at that commit (tree, recursive,
// following the pages).
func (s *Server) listHub(ctx context.Context, spec Spec, filter Filter) (string, []JobFile, error) {
	if s.opts.Hub == nil {
		return "", nil, errors.New("this gateway serves no Hub")
	}
	rev := spec.Revision
	if rev == "" {
		rev = "main"
	}
	base := "/api/" + spec.Repo.APIType() + "/" + spec.Repo.ID
	w := serveInProcess(ctx, s.opts.Hub, http.MethodGet, base+"/revision/"+url.PathEscape(rev), true, nil)
	if w.status() != http.StatusOK {
		return "", nil, fmt.Errorf("resolving %s: the gateway answered %d: %s", spec, w.status(), errorText(w))
	}
	var info struct {
		SHA string `json:"sha"`
	}
	if err := json.Unmarshal(w.body, &info); err != nil || !hfhub.IsCommit(info.SHA) {
		return "", nil, fmt.Errorf("resolving %s: the revision answer names no commit", spec)
	}
	commit := info.SHA
	next := base + "/tree/" + commit + "?recursive=true"
	var files []JobFile
	for page := 0; next != ""; page++ {
		if page > 100000 {
			return "", nil, errors.New("listing: too many pages")
		}
		w := serveInProcess(ctx, s.opts.Hub, http.MethodGet, next, true, nil)
		if w.status() != http.StatusOK {
			return "", nil, fmt.Errorf("listing %s: the gateway answered %d: %s", spec, w.status(), errorText(w))
		}
		var entries []treeEntry
		if err := json.Unmarshal(w.body, &entries); err != nil {
			return "", nil, fmt.Errorf("listing %s: %w", spec, err)
		}
		for _, e := range entries {
			if e.Type != "file" || !filter.Keep(e.Path) {
				continue
			}
			size := e.Size
			if e.LFS != nil {
				size = e.LFS.Size
			}
			files = append(files, JobFile{Path: e.Path, Size: size, State: "pending",
				Target: "/" + spec.Repo.URLPrefix() + spec.Repo.ID + "/resolve/" + commit + "/" + escapeSegments(e.Path)})
		}
		next = ""
		if m := linkNext.FindStringSubmatch(w.header.Get("Link")); m != nil {
			u, err := url.Parse(m[1])
			if err != nil {
				return "", nil, fmt.Errorf("listing %s: bad next link", spec)
			}
			next = u.EscapedPath() + "?" + u.RawQuery
		}
	}
	if len(files) > 0 && spec.Revision != commit {
		// One HEAD at the revision itself records the revision -> commit
		// mapping the resolve route reads, so workers asking for
		// "main" are answered without an upstream request too (until
		// cache.revision_ttl).
		serveInProcess(ctx, s.opts.Hub, http.MethodHead, "/"+spec.Repo.URLPrefix()+spec.Repo.ID+"/resolve/"+url.PathEscape(rev)+"/"+escapeSegments(files[0].Path), false, nil)
	}
	return commit, files, nil
}

func escapeSegments(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}

// civitaiVersion is what a prefetch reads of a model version.
type civitaiVersion struct {
	Files []struct {
		Name        string  `json:"name"`
		SizeKB      float64 `json:"sizeKB"`
		Primary     bool    `json:"primary"`
		DownloadURL string  `json:"downloadUrl"`
	} `json:"files"`
	DownloadURL string `json:"downloadUrl"`
}

// listCivitAI lists the version's primary file (or all its files) from
// its metadata, as download routes on the gateway.
func (s *Server) listCivitAI(ctx context.Context, spec Spec) ([]JobFile, error) {
	if s.opts.CivitAI == nil {
		return nil, errors.New("this gateway serves no CivitAI")
	}
	w := serveInProcess(ctx, s.opts.CivitAI, http.MethodGet, "/api/v1/model-versions/"+spec.Version, true, nil)
	if w.status() != http.StatusOK {
		return nil, fmt.Errorf("reading %s: the gateway answered %d: %s", spec, w.status(), errorText(w))
	}
	var v civitaiVersion
	if err := json.Unmarshal(w.body, &v); err != nil {
		return nil, fmt.Errorf("reading %s: %w", spec, err)
	}
	var files []JobFile
	for i, f := range v.Files {
		primary := f.Primary || (i == 0 && !anyPrimary(v))
		if !spec.All && !primary {
			continue
		}
		u, err := url.Parse(f.DownloadURL)
		if err != nil || !strings.HasPrefix(u.Path, "/api/download/models/") {
			continue
		}
		target := u.EscapedPath()
		if u.RawQuery != "" {
			target += "?" + u.RawQuery
		}
		files = append(files, JobFile{Path: f.Name, Size: int64(f.SizeKB * 1024), State: "pending", Target: target})
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s has no downloadable file", spec)
	}
	return files, nil
}

func anyPrimary(v civitaiVersion) bool {
	for _, f := range v.Files {
		if f.Primary {
			return true
		}
	}
	return false
}
