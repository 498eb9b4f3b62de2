package admin

import (
	"context"
	"errors"
	"sort"
	"sync/atomic"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/hfhub"
)

// specDigests returns the cached blobs a spec names (every cached blob
// for a nil spec), with a display name each.
func (s *Server) specDigests(spec *Spec) (map[cache.Digest]string, error) {
	out := map[cache.Digest]string{}
	if spec == nil {
		err := s.opts.Store.Blobs(func(b cache.BlobInfo) error {
			out[b.Digest] = b.Digest.String()
			return nil
		})
		return out, err
	}
	if spec.IsHub() {
		files, err := s.hfFiles(&spec.Repo)
		if err != nil {
			return nil, err
		}
		commit := spec.Revision
		if commit != "" && !hfhub.IsCommit(commit) {
			v, err := s.opts.Index.Get(hfhub.LastRevisionKey(spec.Repo, spec.Revision))
			if err != nil {
				return out, nil
			}
			commit = string(v)
		}
		for _, f := range files {
			if (commit == "" || f.commit == commit) && s.opts.Store.Has(f.meta.Digest) {
				out[f.meta.Digest] = f.path
			}
		}
		return out, nil
	}
	civ, err := s.civitaiFiles(spec.Version)
	if err != nil {
		return nil, err
	}
	for _, f := range civ {
		if d, err := cache.NewDigest(cache.SHA256, f.ref.SHA256); err == nil && s.opts.Store.Has(d) {
			out[d] = f.ref.Name
		}
	}
	return out, nil
}

// runVerify re-hashes the blobs of the job's spec (all when none) and
// moves any that no longer match into the quarantine directory, dropping
// its record, so that the next request fills it again.
func (s *Server) runVerify(ctx context.Context, r *jobRun, save func()) error {
	var spec *Spec
	if r.job.Spec != "" {
		sp, err := ParseSpec(r.job.Spec)
		if err != nil {
			return err
		}
		spec = &sp
	}
	digests, err := s.specDigests(spec)
	if err != nil {
		return err
	}
	ds := make([]cache.Digest, 0, len(digests))
	for d := range digests {
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].String() < ds[j].String() })
	r.mu.Lock()
	r.job.Files = make([]JobFile, len(ds))
	r.live = make([]*atomic.Int64, len(ds))
	r.job.FilesTotal, r.job.FilesDone, r.job.FilesFailed, r.job.BytesTotal = len(ds), 0, 0, 0
	r.job.Quarantined = nil
	for i, d := range ds {
		size := int64(0)
		if bi, err := s.opts.Store.Blob(d); err == nil {
			size = bi.Size
		}
		r.job.Files[i] = JobFile{Path: digests[d], Size: size, State: "pending", Digest: d.String()}
		r.job.BytesTotal += size
		r.live[i] = new(atomic.Int64)
	}
	r.changedLocked()
	r.mu.Unlock()
	save()
	for i, d := range ds {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		verr := s.opts.Store.Verify(ctx, d)
		var dm *cache.DigestMismatchError
		var sm *cache.SizeMismatchError
		bad := errors.As(verr, &dm) || errors.As(verr, &sm)
		quarantined := false
		if bad {
			s.log.Error("verify: cached blob does not match its digest; quarantined", "digest", d.String(), "err", verr)
			if _, qerr := s.opts.Store.Quarantine(ctx, d, s.opts.QuarantineDir); qerr != nil {
				verr = qerr
			} else {
				quarantined = true
			}
		}
		r.mu.Lock()
		f := &r.job.Files[i]
		switch {
		case verr == nil:
			f.State, f.Bytes = "done", f.Size
			r.job.FilesDone++
		case errors.Is(verr, cache.ErrNotFound):
			f.State = "done" // evicted meanwhile: nothing to check
			r.job.FilesDone++
		default:
			f.State, f.Error = "failed", verr.Error()
			r.job.FilesFailed++
			if quarantined {
				r.job.Quarantined = append(r.job.Quarantined, d.String())
			}
		}
		r.changedLocked()
		r.mu.Unlock()
		if i%50 == 0 || verr != nil {
			save()
		}
	}
	return nil
}
