package admin

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/indexkeys"
)

// The export format is a tar stream: every blob as
// "blobs/<algo>/<hex>" (its bytes), then "index.json", the index records
// that map the specs' files to those blobs. Import publishes each blob
// through the normal fill path (hashed and verified against its name) and
// writes the records only after every blob verified.

const exportIndexName = "index.json"

// exportRecord is one index record in index.json.
type exportRecord struct {
	Key   string `json:"key"`
	Value []byte `json:"value"`
}

// importedCivitAITTL is how long imported CivitAI mappings are kept as
// last-known copies (what an offline gateway serves from).
const importedCivitAITTL = 30 * 24 * time.Hour

type exportBody struct {
	Specs []string `json:"specs"`
}

// exportSet collects the records and blobs of the specs.
func (s *Server) exportSet(specs []Spec) ([]exportRecord, []cache.Digest, error) {
	var recs []exportRecord
	blobs := map[cache.Digest]bool{}
	for _, spec := range specs {
		if spec.IsHub() {
			files, err := s.hfFiles(&spec.Repo)
			if err != nil {
				return nil, nil, err
			}
			commit := spec.Revision
			if commit != "" && !hfhub.IsCommit(commit) {
				v, err := s.opts.Index.Get(hfhub.LastRevisionKey(spec.Repo, spec.Revision))
				if err != nil {
					return nil, nil, fmt.Errorf("%s: this revision was never resolved here", spec)
				}
				commit = string(v)
			}
			commits := map[string]bool{}
			for _, f := range files {
				if (commit == "" || f.commit == commit) && s.opts.Store.Has(f.meta.Digest) {
					v, err := s.opts.Index.Get(f.raw)
					if err != nil {
						continue
					}
					recs = append(recs, exportRecord{Key: f.raw, Value: v})
					blobs[f.meta.Digest] = true
					commits[f.commit] = true
				}
			}
			prefix := indexkeys.HFLastRevKey(string(spec.Repo.Type), spec.Repo.ID, "")
			s.scanAll(prefix, func(_, raw string, val []byte) {
				if commits[string(val)] {
					recs = append(recs, exportRecord{Key: raw, Value: val})
				}
			})
			continue
		}
		civ, err := s.civitaiFiles(spec.Version)
		if err != nil {
			return nil, nil, err
		}
		for _, f := range civ {
			d, err := cache.NewDigest(cache.SHA256, f.ref.SHA256)
			if err != nil || !s.opts.Store.Has(d) {
				continue
			}
			v, err := s.opts.Index.Get(f.raw)
			if err != nil {
				continue
			}
			recs = append(recs, exportRecord{Key: f.raw, Value: v})
			blobs[d] = true
		}
	}
	ds := make([]cache.Digest, 0, len(blobs))
	for d := range blobs {
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].String() < ds[j].String() })
	return recs, ds, nil
}

func (s *Server) export(w http.ResponseWriter, r *http.Request) {
	var body exportBody
	if err := decodeBody(r, &body); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if len(body.Specs) == 0 {
		writeError(w, http.StatusBadRequest, "name at least one spec to export")
		return
	}
	var specs []Spec
	for _, raw := range body.Specs {
		spec, err := ParseSpec(raw)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		specs = append(specs, spec)
	}
	recs, ds, err := s.exportSet(specs)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if len(recs) == 0 {
		writeError(w, http.StatusNotFound, "nothing of these specs is cached")
		return
	}
	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set("Content-Disposition", `attachment; filename="modelgate-export.tar"`)
	tw := tar.NewWriter(w)
	now := time.Now()
	for _, d := range ds {
		b, err := s.opts.Store.Open(d)
		if err != nil {
			s.log.Warn("export: blob went away", "digest", d.String(), "err", err)
			return // the stream is cut; the importer sees a broken tar
		}
		hdr := &tar.Header{Name: "blobs/" + string(d.Algo) + "/" + d.Hex, Mode: 0o400, Size: b.Size, ModTime: now, Typeflag: tar.TypeReg}
		err = tw.WriteHeader(hdr)
		if err == nil {
			var rd io.ReadCloser
			rd, err = b.NewReader(r.Context(), 0, b.Size)
			if err == nil {
				_, err = io.Copy(tw, rd)
				rd.Close()
			}
		}
		b.Close()
		if err != nil {
			s.log.Warn("export cut", "err", err)
			return
		}
	}
	idx, _ := json.Marshal(recs)
	if err := tw.WriteHeader(&tar.Header{Name: exportIndexName, Mode: 0o400, Size: int64(len(idx)), ModTime: now, Typeflag: tar.TypeReg}); err != nil {
		return
	}
	tw.Write(idx)
	tw.Close()
}

// ImportResult is the answer of POST /admin/v1/import.
type ImportResult struct {
	Blobs        int   `json:"blobs"`
	BlobsPresent int   `json:"blobs_already_cached"`
	Bytes        int64 `json:"bytes"`
	Records      int   `json:"records"`
}

func (s *Server) importTar(w http.ResponseWriter, r *http.Request) {
	res, err := s.importStream(r.Context(), r.Body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "import: "+err.Error())
		return
	}
	s.log.Info("imported", "blobs", res.Blobs, "already_cached", res.BlobsPresent, "bytes", res.Bytes, "records", res.Records)
	writeJSON(w, http.StatusOK, res)
}

// importStream reads an export: each blob is published through
// Store.Get with the tar entry as its source, so its bytes are hashed
// and checked against the digest it is named by; the records are
// written last, only those whose blob is present.
func (s *Server) importStream(ctx context.Context, body io.Reader) (ImportResult, error) {
	var res ImportResult
	tr := tar.NewReader(body)
	var recs []exportRecord
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return res, fmt.Errorf("reading the tar stream: %w", err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		if hdr.Name == exportIndexName {
			if err := json.NewDecoder(io.LimitReader(tr, 1<<30)).Decode(&recs); err != nil {
				return res, fmt.Errorf("%s: %w", exportIndexName, err)
			}
			continue
		}
		rest, ok := strings.CutPrefix(hdr.Name, "blobs/")
		if !ok {
			return res, fmt.Errorf("unexpected entry %q", hdr.Name)
		}
		algo, hexd, _ := strings.Cut(rest, "/")
		d, err := cache.NewDigest(cache.Algo(algo), hexd)
		if err != nil {
			return res, fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		if s.opts.Store.Has(d) {
			res.BlobsPresent++
			continue
		}
		if err := s.importBlob(ctx, d, hdr.Size, tr); err != nil {
			return res, fmt.Errorf("blob %s: %w", d, err)
		}
		res.Blobs++
		res.Bytes += hdr.Size
	}
	if recs == nil {
		return res, errors.New("the stream has no " + exportIndexName + ": not a modelgate export")
	}
	for _, rec := range recs {
		key := indexkeys.Unscoped(rec.Key)
		ttl := time.Duration(0)
		switch {
		case strings.HasPrefix(key, keyHFFile):
			m, err := hfhub.UnmarshalMeta(rec.Value)
			if err != nil || !s.opts.Store.Has(m.Digest) {
				continue
			}
		case strings.HasPrefix(key, keyHFLastRev):
			if !hfhub.IsCommit(string(rec.Value)) {
				continue
			}
		case strings.HasPrefix(key, keyCivitAI):
			var ref civitaiRef
			if json.Unmarshal(rec.Value, &ref) != nil {
				continue
			}
			d, err := cache.NewDigest(cache.SHA256, ref.SHA256)
			if err != nil || !s.opts.Store.Has(d) {
				continue
			}
			ttl = importedCivitAITTL
			if !strings.HasSuffix(key, civitaiLast) {
				rec.Key += civitaiLast // kept as the last-known copy
			}
		default:
			continue // nothing else is imported
		}
		if err := s.opts.Index.Set(rec.Key, rec.Value, ttl); err != nil {
			return res, err
		}
		res.Records++
	}
	return res, nil
}

// importBlob publishes one blob from r (exactly size bytes) through the
// store's fill, and waits until it verified. The tar entry is spooled to a
// private temp file first: a fill may ask for several ranges at once,
// which a stream cannot answer.
func (s *Server) importBlob(ctx context.Context, d cache.Digest, size int64, r io.Reader) error {
	spool, err := os.CreateTemp(filepath.Join(filepath.Dir(s.opts.QuarantineDir), "tmp"), "import-*")
	if err != nil {
		return fmt.Errorf("spooling the blob: %w", err)
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	if n, err := io.Copy(spool, io.LimitReader(r, size)); err != nil || n != size {
		return fmt.Errorf("reading the blob from the archive: %d of %d bytes: %v", n, size, err)
	}
	src := func(_ context.Context, off, end int64) (io.ReadCloser, int64, error) {
		return io.NopCloser(io.NewSectionReader(spool, off, end-off)), off, nil
	}
	b, _, err := s.opts.Store.Get(ctx, d, size, src)
	if err != nil {
		return err
	}
	defer b.Close()
	rd, err := b.NewReader(ctx, 0, size)
	if err != nil {
		return err
	}
	defer rd.Close()
	// The last byte comes only once the blob verified.
	if _, err := io.Copy(io.Discard, rd); err != nil {
		return fmt.Errorf("not imported (its bytes do not match its name?): %w", err)
	}
	if !s.opts.Store.AwaitPublished(ctx, d) {
		return errors.New("not published")
	}
	return nil
}
