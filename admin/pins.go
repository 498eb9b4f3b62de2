package admin

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/indexkeys"
)

// pinPrefix keys the pins set at runtime; they apply with cache.pinned.
const pinPrefix = indexkeys.AdminPin

// PinSpecs returns the pins set through the API, in the cache.pinned
// form ("hf:org/name[@rev]", "civitai:<id>"), for the eviction's pin
// resolver.
func (s *Server) PinSpecs() []string {
	pins := RuntimePins(s.opts.Index)
	if s.opts.Cluster != nil {
		pins = mergePins(pins, s.opts.Cluster.KnownPins())
	}
	return pins
}

// mergePins returns the sorted union of two pin lists.
func mergePins(a, b []string) []string {
	out := append([]string{}, a...)
	for _, p := range b {
		if !contains(out, p) {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// RuntimePins reads the pins set through the API from the index.
func RuntimePins(idx interface {
	Scan(prefix string, fn func(key string, val []byte) error) error
}) []string {
	var out []string
	idx.Scan(pinPrefix, func(k string, _ []byte) error {
		out = append(out, strings.TrimPrefix(k, pinPrefix))
		return nil
	})
	sort.Strings(out)
	return out
}

func (s *Server) pinSet() map[string]bool {
	m := map[string]bool{}
	for _, p := range s.PinSpecs() {
		m[p] = true
	}
	return m
}

type specBody struct {
	Spec string `json:"spec"`
}

func (s *Server) pinSpec(r *http.Request) (Spec, error) {
	var b specBody
	if err := decodeBody(r, &b); err != nil {
		return Spec{}, err
	}
	spec, err := ParseSpec(b.Spec)
	if err != nil {
		return Spec{}, err
	}
	if spec.All {
		return Spec{}, fmt.Errorf("pin a CivitAI version as civitai:<id> (all its cached files are kept)")
	}
	return spec, nil
}

func (s *Server) listPins(w http.ResponseWriter, r *http.Request) {
	if s.opts.Cluster != nil {
		ctx, cancel := context.WithTimeout(r.Context(), clusterTimeout)
		_, err := s.opts.Cluster.Pins(ctx) // refresh what KnownPins returns
		cancel()
		if err != nil {
			writeError(w, http.StatusBadGateway, "reading the pins from the shared bucket: "+err.Error())
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"pins": append([]string{}, s.PinSpecs()...)})
}

func (s *Server) addPin(w http.ResponseWriter, r *http.Request) {
	spec, err := s.pinSpec(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if s.opts.Cluster != nil {
		// In a cluster the bucket holds the pins, so that an unpin on any
		// gateway unpins everywhere.
		if err := s.opts.Cluster.AddPin(r.Context(), spec.String()); err != nil {
			writeError(w, http.StatusBadGateway, "recording the pin in the shared bucket: "+err.Error())
			return
		}
	} else if err := s.opts.Index.Set(pinPrefix+spec.String(), nil, 0); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	s.publishPinned(r.Context())
	s.log.Info("pinned", "spec", spec.String())
	writeJSON(w, http.StatusOK, map[string]any{"pinned": spec.String(), "pins": s.PinSpecs()})
}

func (s *Server) removePin(w http.ResponseWriter, r *http.Request) {
	spec, err := s.pinSpec(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	shared := false
	if s.opts.Cluster != nil {
		var err error
		if shared, err = s.opts.Cluster.RemovePin(r.Context(), spec.String()); err != nil {
			writeError(w, http.StatusBadGateway, "removing the pin from the shared bucket: "+err.Error())
			return
		}
	}
	if _, err := s.opts.Index.Get(pinPrefix + spec.String()); err != nil {
		if !shared {
			writeError(w, http.StatusNotFound, spec.String()+" is not pinned at runtime (pins in cache.pinned change with the config)")
			return
		}
	} else if err := s.opts.Index.Delete(pinPrefix + spec.String()); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	s.publishPinned(r.Context())
	s.log.Info("unpinned", "spec", spec.String())
	writeJSON(w, http.StatusOK, map[string]any{"unpinned": spec.String(), "pins": append([]string{}, s.PinSpecs()...)})
}

// publishPinned tells the other gateways at once what this gateway's pins
// now resolve to (the maintenance does it too, every evict_interval).
func (s *Server) publishPinned(ctx context.Context) {
	if s.opts.Cluster == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, clusterTimeout)
	defer cancel()
	if err := s.opts.Cluster.PublishPinned(ctx); err != nil {
		s.log.Warn("publishing the pinned blobs to the shared bucket failed; the next maintenance run retries", "err", err)
	}
}

// PurgeResult is the answer of POST /admin/v1/purge.
type PurgeResult struct {
	Spec         string `json:"spec"`
	Records      int    `json:"records"`
	BlobsRemoved int    `json:"blobs_removed"`
	BytesFreed   int64  `json:"bytes_freed"`
	BlobsShared  int    `json:"blobs_kept_shared"`
	// With a shared bucket: blobs removed from it, and blobs kept in it
	// because a gateway pinned them or was reading them.
	BucketBlobsRemoved int `json:"bucket_blobs_removed,omitempty"`
	BucketBlobsKept    int `json:"bucket_blobs_kept,omitempty"`
}

func (s *Server) purge(w http.ResponseWriter, r *http.Request) {
	var b specBody
	if err := decodeBody(r, &b); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	spec, err := ParseSpec(b.Spec)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	res, err := s.purgeSpec(r.Context(), spec)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	s.log.Info("purged", "spec", res.Spec, "records", res.Records, "blobs", res.BlobsRemoved, "bytes", res.BytesFreed, "kept_shared", res.BlobsShared)
	writeJSON(w, http.StatusOK, res)
}

// purgeSpec drops the spec's index records, then removes each blob they
// named that no other record names (waiting for its readers).
func (s *Server) purgeSpec(ctx context.Context, spec Spec) (PurgeResult, error) {
	res := PurgeResult{Spec: spec.String()}
	var keys []string
	cand := map[cache.Digest]bool{}
	if spec.IsHub() {
		files, err := s.hfFiles(&spec.Repo)
		if err != nil {
			return res, err
		}
		commit := ""
		if spec.Revision != "" {
			commit = spec.Revision
			if !hfhub.IsCommit(commit) {
				// Never resolved here: no file is cached under it (commit
				// stays "", matching no file), but API answers may be.
				if v, err := s.opts.Index.Get(hfhub.LastRevisionKey(spec.Repo, spec.Revision)); err == nil {
					commit = string(v)
				}
			}
		}
		for _, f := range files {
			if spec.Revision == "" || (commit != "" && f.commit == commit) {
				keys = append(keys, f.raw)
				cand[f.meta.Digest] = true
			}
		}
		// Revision mappings: the one purged, or all of the repo.
		for _, p := range []string{keyHFRev, keyHFLastRev} {
			prefix := p + string(spec.Repo.Type) + "\x00" + spec.Repo.ID + "\x00"
			s.scanAll(prefix, func(key, raw string, val []byte) {
				rev := strings.TrimPrefix(key, prefix)
				if spec.Revision == "" || rev == spec.Revision || (commit != "" && string(val) == commit) {
					keys = append(keys, raw)
				}
			})
		}
		// Cached API answers (repo info, trees, paths-info, and their
		// last-known copies), under any principal: of the revision purged
		// (by name or at its commit), or all of the repo's.
		apiPrefix := hfhub.APIKeyPrefix(spec.Repo)
		s.scanAll(apiPrefix, func(key, raw string, _ []byte) {
			rev, _, _ := strings.Cut(strings.TrimPrefix(key, apiPrefix), "\x00")
			if spec.Revision == "" || rev == spec.Revision || (commit != "" && rev == commit) {
				keys = append(keys, raw)
			}
		})
		for d := range cand {
			seen := hfhub.SeenKey(d, spec.Repo)
			s.scanAll(seen, func(key, raw string, _ []byte) {
				if key == seen {
					keys = append(keys, raw)
				}
			})
		}
	} else {
		files, err := s.civitaiFiles(spec.Version)
		if err != nil {
			return res, err
		}
		for _, f := range files {
			keys = append(keys, f.raw)
			if d, err := cache.NewDigest(cache.SHA256, f.ref.SHA256); err == nil {
				cand[d] = true
			}
		}
		// The version's cached metadata (and its last-known copy), under
		// any principal.
		s.scanAll(keyCivitAIAPI+"/api/v1/model-versions/"+spec.Version+"?", func(_, raw string, _ []byte) {
			keys = append(keys, raw)
		})
	}
	for _, k := range keys {
		if err := s.opts.Index.Delete(k); err != nil {
			return res, err
		}
		res.Records++
	}
	if len(cand) == 0 {
		return res, nil
	}
	still, err := s.referenced()
	if err != nil {
		return res, err
	}
	if s.opts.Cluster != nil {
		// What this gateway's pins resolve to without the records just
		// dropped, before the bucket's copies are weighed against every
		// gateway's pinned list.
		ctx, cancel := context.WithTimeout(ctx, clusterTimeout)
		_, err := s.opts.Cluster.Pins(ctx)
		if err == nil {
			err = s.opts.Cluster.PublishPinned(ctx)
		}
		cancel()
		if err != nil {
			return res, fmt.Errorf("the shared bucket: %w", err)
		}
	}
	for d := range cand {
		if still[d] {
			res.BlobsShared++
			continue
		}
		if err := s.purgeShared(ctx, d, &res); err != nil {
			return res, err
		}
		bi, err := s.opts.Store.Blob(d)
		if err != nil {
			continue
		}
		removed, err := s.opts.Store.Remove(ctx, d)
		if err != nil {
			return res, fmt.Errorf("removing %s: %w", d, err)
		}
		if removed {
			res.BlobsRemoved++
			res.BytesFreed += bi.Size
		}
	}
	return res, nil
}

// referenced returns every blob some Hub file record or CivitAI mapping
// names.
func (s *Server) referenced() (map[cache.Digest]bool, error) {
	out := map[cache.Digest]bool{}
	files, err := s.hfFiles(nil)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		out[f.meta.Digest] = true
	}
	civ, err := s.civitaiFiles("")
	if err != nil {
		return nil, err
	}
	for _, f := range civ {
		if d, err := cache.NewDigest(cache.SHA256, f.ref.SHA256); err == nil {
			out[d] = true
		}
	}
	return out, nil
}
