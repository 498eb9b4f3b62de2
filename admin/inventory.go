package admin

import (
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/indexkeys"
)

// Index key layouts read here: indexkeys owns them.
const (
	keyHFFile     = indexkeys.HFFile
	keyHFRev      = indexkeys.HFRev
	keyHFLastRev  = indexkeys.HFLastRev
	keyCivitAI    = indexkeys.CivitAIDownload
	keyCivitAIAPI = indexkeys.CivitAIAPI
	civitaiLast   = indexkeys.LastKnownSuffix
)

// scanAll calls fn for every entry under prefix, unscoped and in every
// principal's scope, with the key unscoped (and the raw key).
func (s *Server) scanAll(prefix string, fn func(key, raw string, val []byte)) error {
	return indexkeys.ScanEverywhere(s.opts.Index, prefix, func(k, raw string, v []byte) error {
		fn(k, raw, v)
		return nil
	})
}

// hfFile is one file record: repo, commit, path and content.
type hfFile struct {
	repo   hfhub.Repo
	commit string
	path   string
	meta   hfhub.FileMeta
	raw    string // the index key
}

func parseHFFileKey(key string) (hfhub.Repo, string, string, bool) {
	typ, id, commit, path, ok := indexkeys.ParseHFFile(key)
	if !ok {
		return hfhub.Repo{}, "", "", false
	}
	return hfhub.Repo{Type: hfhub.RepoType(typ), ID: id}, commit, path, true
}

// hfFiles returns every Hub file record, optionally of one repo.
func (s *Server) hfFiles(repo *hfhub.Repo) ([]hfFile, error) {
	prefix := keyHFFile
	if repo != nil {
		prefix = hfhub.FileKeyPrefix(*repo, "")
	}
	var out []hfFile
	err := s.scanAll(prefix, func(key, raw string, val []byte) {
		r, commit, path, ok := parseHFFileKey(key)
		if !ok {
			return
		}
		m, err := hfhub.UnmarshalMeta(val)
		if err != nil {
			return
		}
		out = append(out, hfFile{repo: r, commit: commit, path: path, meta: m, raw: raw})
	})
	return out, err
}

// revisions maps "type\x00id\x00commit" to the revision names last seen
// at that commit.
func (s *Server) revisions() (map[string][]string, error) {
	out := map[string][]string{}
	err := s.scanAll(keyHFLastRev, func(key, _ string, val []byte) {
		parts := strings.SplitN(strings.TrimPrefix(key, keyHFLastRev), "\x00", 3)
		if len(parts) != 3 {
			return
		}
		k := parts[0] + "\x00" + parts[1] + "\x00" + string(val)
		for _, r := range out[k] {
			if r == parts[2] {
				return
			}
		}
		out[k] = append(out[k], parts[2])
	})
	return out, err
}

// civitaiRef is a download mapping as civitai keeps it.
type civitaiRef struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	Name   string `json:"name"`
}

type civitaiFile struct {
	version string
	params  string
	ref     civitaiRef
	raw     string
}

// civitaiFiles returns every CivitAI download mapping (and last-known
// copy), optionally of one version.
func (s *Server) civitaiFiles(version string) ([]civitaiFile, error) {
	prefix := keyCivitAI
	if version != "" {
		prefix += version + "\x00"
	}
	var out []civitaiFile
	err := s.scanAll(prefix, func(key, raw string, val []byte) {
		rest := strings.TrimPrefix(key, keyCivitAI)
		v, params, _ := strings.Cut(rest, "\x00")
		params = strings.TrimSuffix(params, civitaiLast)
		var ref civitaiRef
		if json.Unmarshal(val, &ref) != nil || ref.SHA256 == "" {
			return
		}
		out = append(out, civitaiFile{version: v, params: params, ref: ref, raw: raw})
	})
	return out, err
}

// InventoryFile is one cached file.
type InventoryFile struct {
	Path       string    `json:"path"`
	Size       int64     `json:"size"`
	Digest     string    `json:"digest"`
	Cached     bool      `json:"cached"`
	LastAccess time.Time `json:"last_access,omitzero"`
}

// InventoryRepo is one repo (or CivitAI version) at one revision.
type InventoryRepo struct {
	Spec       string          `json:"spec"`
	Repo       string          `json:"repo"`
	Commit     string          `json:"commit,omitempty"`
	Revisions  []string        `json:"revisions,omitempty"`
	Files      int             `json:"files"`
	Cached     int             `json:"cached_files"`
	Bytes      int64           `json:"bytes"`
	LastAccess time.Time       `json:"last_access,omitzero"`
	Pinned     bool            `json:"pinned"`
	FileList   []InventoryFile `json:"file_list,omitempty"`
}

// Inventory is GET /admin/v1/inventory.
type Inventory struct {
	Repos  []InventoryRepo `json:"repos"`
	Totals CacheStatus     `json:"totals"`
	// Bucket lists the shared bucket's blobs (storage.backend s3), least
	// recently used first; BucketError says why it is missing.
	Bucket      []BucketBlob `json:"bucket,omitempty"`
	BucketError string       `json:"bucket_error,omitempty"`
}

func (s *Server) inventory(filter *Spec, withFiles bool) (Inventory, error) {
	pins := s.pinSet()
	groups := map[string]*InventoryRepo{}
	seenFile := map[string]bool{}
	var order []string
	add := func(key string, mk func() *InventoryRepo, f InventoryFile) {
		g := groups[key]
		if g == nil {
			g = mk()
			groups[key] = g
			order = append(order, key)
		}
		if seenFile[key+"\x00"+f.Path] {
			return // the same record under another principal's scope
		}
		seenFile[key+"\x00"+f.Path] = true
		g.Files++
		if f.Cached {
			g.Cached++
			g.Bytes += f.Size
			if f.LastAccess.After(g.LastAccess) {
				g.LastAccess = f.LastAccess
			}
		}
		if withFiles {
			g.FileList = append(g.FileList, f)
		}
	}
	blobInfo := func(d cache.Digest) (cache.BlobInfo, bool) {
		bi, err := s.opts.Store.Blob(d)
		return bi, err == nil
	}
	if filter == nil || filter.IsHub() {
		var repo *hfhub.Repo
		if filter != nil {
			repo = &filter.Repo
		}
		files, err := s.hfFiles(repo)
		if err != nil {
			return Inventory{}, err
		}
		revs, err := s.revisions()
		if err != nil {
			return Inventory{}, err
		}
		for _, f := range files {
			rk := string(f.repo.Type) + "\x00" + f.repo.ID + "\x00" + f.commit
			if filter != nil && filter.Revision != "" && f.commit != filter.Revision && !contains(revs[rk], filter.Revision) {
				continue
			}
			bi, ok := blobInfo(f.meta.Digest)
			name := f.repo.URLPrefix() + f.repo.ID
			add("hf\x00"+rk, func() *InventoryRepo {
				return &InventoryRepo{Spec: "hf:" + name, Repo: name, Commit: f.commit, Revisions: revs[rk],
					Pinned: pins["hf:"+name] || anyPinned(pins, "hf:"+name, f.commit, revs[rk])}
			}, InventoryFile{Path: f.path, Size: f.meta.Size, Digest: f.meta.Digest.String(), Cached: ok, LastAccess: bi.LastAccess})
		}
	}
	if filter == nil || !filter.IsHub() {
		version := ""
		if filter != nil {
			version = filter.Version
		}
		files, err := s.civitaiFiles(version)
		if err != nil {
			return Inventory{}, err
		}
		for _, f := range files {
			d, err := cache.NewDigest(cache.SHA256, f.ref.SHA256)
			if err != nil {
				continue
			}
			bi, ok := blobInfo(d)
			add("civitai\x00"+f.version, func() *InventoryRepo {
				return &InventoryRepo{Spec: "civitai:" + f.version, Repo: "civitai:" + f.version, Pinned: pins["civitai:"+f.version]}
			}, InventoryFile{Path: f.ref.Name, Size: f.ref.Size, Digest: d.String(), Cached: ok, LastAccess: bi.LastAccess})
		}
	}
	inv := Inventory{Repos: []InventoryRepo{}}
	for _, k := range order {
		inv.Repos = append(inv.Repos, *groups[k])
	}
	sort.SliceStable(inv.Repos, func(i, j int) bool {
		if inv.Repos[i].Repo != inv.Repos[j].Repo {
			return inv.Repos[i].Repo < inv.Repos[j].Repo
		}
		return inv.Repos[i].LastAccess.After(inv.Repos[j].LastAccess)
	})
	st := s.opts.Store.Stats()
	inv.Totals = CacheStatus{Blobs: st.Blobs, Bytes: st.Bytes, IndexBytes: s.opts.Index.DiskSize(), MaxSize: s.opts.MaxSize, DiskFree: st.DiskFree, Fills: st.FillsInFlight}
	return inv, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func anyPinned(pins map[string]bool, base, commit string, revs []string) bool {
	if pins[base+"@"+commit] {
		return true
	}
	for _, r := range revs {
		if pins[base+"@"+r] {
			return true
		}
	}
	return false
}

func (s *Server) serveInventory(w http.ResponseWriter, r *http.Request) {
	var filter *Spec
	if raw := r.URL.Query().Get("spec"); raw != "" {
		spec, err := ParseSpec(raw)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		filter = &spec
	}
	inv, err := s.inventory(filter, r.URL.Query().Get("files") == "true")
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if s.opts.Cluster != nil {
		if inv.Bucket, err = s.bucketInventory(r.Context()); err != nil {
			inv.BucketError = err.Error()
		} else if inv.Bucket == nil {
			inv.Bucket = []BucketBlob{}
		}
	}
	writeJSON(w, http.StatusOK, inv)
}

// BlobReport is GET /admin/v1/blobs/{digest}.
type BlobReport struct {
	Digest     string    `json:"digest"`
	Size       int64     `json:"size"`
	Published  time.Time `json:"published"`
	LastAccess time.Time `json:"last_access"`
	References []string  `json:"references"`
}

func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request) {
	d, err := cache.ParseDigest(r.PathValue("digest"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "digest must be sha256:<64 hex> or git-sha1:<40 hex>")
		return
	}
	bi, err := s.opts.Store.Blob(d)
	if err != nil {
		writeError(w, http.StatusNotFound, "this blob is not cached")
		return
	}
	refs, err := s.references(d)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, BlobReport{Digest: d.String(), Size: bi.Size, Published: bi.Published.UTC(), LastAccess: bi.LastAccess.UTC(), References: refs})
}

// references lists the repos (at commit, with path) and CivitAI versions
// whose records name d.
func (s *Server) references(d cache.Digest) ([]string, error) {
	set := map[string]bool{}
	files, err := s.hfFiles(nil)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		if f.meta.Digest == d {
			set["hf:"+f.repo.URLPrefix()+f.repo.ID+"@"+f.commit+"/"+f.path] = true
		}
	}
	civ, err := s.civitaiFiles("")
	if err != nil {
		return nil, err
	}
	for _, f := range civ {
		if f.ref.SHA256 == d.Hex && d.Algo == cache.SHA256 {
			set["civitai:"+f.version+"/"+f.ref.Name] = true
		}
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}
