package xet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/indexkeys"
	"github.com/modelgate/modelgate/xet/xetchunk"
	"github.com/modelgate/modelgate/xet/xethash"
)

// RangeStore is where xorb ranges live: the gateway's blob store
// (cache.Store), as blobs of the kind cache.XetRange, so that they are
// counted against cache.max_size, evicted and pinned like any blob.
type RangeStore interface {
	Ingest(ctx context.Context, fetch func(ctx context.Context, put cache.PutFunc) error) error
	Open(d cache.Digest) (*cache.Blob, error)
	Has(d cache.Digest) bool
	PublishedWithPrefix(algo cache.Algo, hexPrefix string, fn func(d cache.Digest, size int64) error) error
	Remove(ctx context.Context, d cache.Digest) (bool, error)
}

// Index keeps the reconstructions (their terms and ranges, not their
// URLs), the files verified, and which file each range was fetched for
// (cache.Index).
type Index interface {
	Get(key string) ([]byte, error)
	Set(key string, val []byte, ttl time.Duration) error
	Delete(key string) error
}

// Metrics receives what the service counts; nil fields are skipped.
type Metrics struct {
	// XorbBytes: bytes of xorb ranges served, from the store without an
	// upstream fetch (hit) or after one (miss).
	XorbBytes func(hit bool, n int64)
	// SharedBytes: hit bytes of a range first fetched for another file
	// (a fine-tune served from its base model's xorbs).
	SharedBytes func(n int64)
	// Reconstruction: a reconstruction answered from the gateway's own
	// copy (hit) or asked upstream (miss).
	Reconstruction func(hit bool)
}

// Options configures a Service.
type Options struct {
	Hub      *url.URL      // the Hub endpoint (token route)
	Client   *http.Client  // upstream client for the Hub and the CAS
	HubToken func() string // the operator's Hub token
	Dir      string        // where the token secret lives
	Store    RangeStore    // the xorb ranges
	Index    Index         // reconstructions, verified files, range origins
	// KeyAllows reports whether the worker key named name is still
	// configured and, as configured now, may read repo (type, id): checked
	// at every use of a token or xorb URL issued for that key, so that a
	// reload that removes the key or narrows its scope takes effect at once.
	KeyAllows func(name, repoType, repo string) bool
	// HasFile reports whether the gateway's own metadata shows fileHash as
	// a file of repo at rev.
	HasFile  func(ctx context.Context, typ, repo, rev, fileHash string) bool
	TokenTTL time.Duration // default 10m
	URLTTL   time.Duration // gateway xorb URLs, default 10m
	Metrics  Metrics
	Logger   *slog.Logger
}

// Service serves the gateway's Xet routes.
type Service struct {
	opts   Options
	signer *Signer
	up     *upstream

	mu     sync.Mutex
	recons map[string]*recon  // file hash -> reconstruction with its latest upstream URLs
	group  singleflight.Group // one upstream fetch per xorb range set
	checks singleflight.Group // one verification per file at a time

	chunksMu sync.Mutex // one update of the verified chunk records at a time
	// distrusted are files whose assembled bytes failed their digest
	// (Distrust): never assembled while listed.
	distrusted map[string]bool
}

// maxMemRecons bounds the reconstructions (with their upstream URLs) held
// in memory; the index keeps every one's terms.
const maxMemRecons = 1024

// dropTimeout bounds the wait for readers of a range that failed
// verification before it is removed.
const dropTimeout = time.Minute

// CASPrefix is where the gateway's CAS lives, relative to its base URL.
const CASPrefix = "/xet/cas"

// New opens the service's secret under opts.Dir. Ranges that an earlier
// release kept as plain files there (xorbs/, verified/) are a cache the
// blob store now holds instead: they are removed, and fetched again when
// asked.
func New(opts Options) (*Service, error) {
	if opts.TokenTTL == 0 {
		opts.TokenTTL = 10 * time.Minute
	}
	if opts.URLTTL == 0 {
		opts.URLTTL = 10 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Store == nil || opts.Index == nil {
		return nil, errors.New("xet: Options.Store and Options.Index are required")
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("xet: %w", err)
	}
	for _, old := range []string{"xorbs", "verified"} {
		p := filepath.Join(opts.Dir, old)
		if _, err := os.Stat(p); err == nil {
			opts.Logger.Info("removing Xet ranges an earlier release kept outside the blob store", "dir", p)
			if err := os.RemoveAll(p); err != nil {
				return nil, fmt.Errorf("xet: removing %s: %w", p, err)
			}
		}
	}
	s, err := LoadSigner(opts.Dir)
	if err != nil {
		return nil, err
	}
	return &Service{opts: opts, signer: s, recons: map[string]*recon{}, distrusted: map[string]bool{},
		up: &upstream{hub: opts.Hub, client: opts.Client, token: opts.HubToken, tokens: map[string]upstreamToken{}}}, nil
}

// ServeToken answers the xet-read-token route with a gateway token for
// repo at rev (a commit) and the worker key principal; base is the
// gateway's scheme://host as the client reached it.
func (s *Service) ServeToken(w http.ResponseWriter, typ, repo, rev, principal, base string) {
	s.ServeTokenFor(w, typ, repo, rev, principal, base+CASPrefix)
}

// ServeTokenFor is ServeToken with the casUrl given whole: in proxy mode
// the CAS is the Hub's own CAS host, which the gateway intercepts.
func (s *Service) ServeTokenFor(w http.ResponseWriter, typ, repo, rev, principal, cas string) {
	exp := time.Now().Add(s.opts.TokenTTL)
	tok := s.signer.Issue(Claims{RepoType: typ, Repo: repo, Rev: rev, Principal: principal, Exp: exp.Unix()})
	w.Header().Set("X-Xet-Access-Token", tok)
	w.Header().Set("X-Xet-Token-Expiration", strconv.FormatInt(exp.Unix(), 10))
	w.Header().Set("X-Xet-Cas-Url", cas)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string]any{"accessToken": tok, "exp": exp.Unix(), "casUrl": cas})
}

// ServeCAS answers the routes under CASPrefix (path is the rest):
// /v1|v2/reconstructions/{hash} and /xorbs/{xorb}.
func (s *Service) ServeCAS(w http.ResponseWriter, r *http.Request, path, base string) {
	s.ServeCASAt(w, r, path, base+CASPrefix+"/xorbs")
}

// ServeCASAt is ServeCAS with the base of the xorb URLs a reconstruction
// names given whole (the xorb URL is xorbBase/{xorb}?…): in proxy mode the
// Hub's own transfer host, "https://transfer.xethub.hf.co/xorbs/default".
// The xorb route answers /xorbs/{xorb} and /xorbs/default/{xorb}.
func (s *Service) ServeCASAt(w http.ResponseWriter, r *http.Request, path, xorbBase string) {
	segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
	if len(segs) == 3 && segs[0] == "xorbs" && segs[1] == "default" {
		segs = []string{"xorbs", segs[2]}
	}
	switch {
	case r.Method != http.MethodGet:
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "GET only"})
	case len(segs) == 3 && (segs[0] == "v1" || segs[0] == "v2") && segs[1] == "reconstructions" && validHash(segs[2]):
		s.serveReconstruction(w, r, segs[0], segs[2], xorbBase)
	case len(segs) == 2 && segs[0] == "xorbs" && validHash(segs[1]):
		s.serveXorb(w, r, segs[1])
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such Xet route"})
	}
}

func validHash(h string) bool {
	_, err := xethash.Parse(h)
	return err == nil && strings.ToLower(h) == h
}

func (s *Service) serveReconstruction(w http.ResponseWriter, r *http.Request, version, fileHash, xorbBase string) {
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	c, err := s.signer.Check(tok, time.Now())
	if err == nil && s.keyDenied(c.Principal, c.RepoType, c.Repo) {
		err = errors.New("the worker key of this Xet token was revoked or no longer reaches this repo")
	}
	if err != nil {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": err.Error()})
		return
	}
	if s.opts.HasFile == nil || !s.opts.HasFile(r.Context(), c.RepoType, c.Repo, c.Rev, fileHash) {
		writeJSON(w, http.StatusForbidden, map[string]string{"error": "this Xet token does not open that file"})
		return
	}
	rec, hit, err := s.reconstruction(r.Context(), c, fileHash)
	if err == nil && s.opts.Metrics.Reconstruction != nil {
		s.opts.Metrics.Reconstruction(hit)
	}
	if err != nil {
		s.opts.Logger.Warn("xet reconstruction", "file", fileHash, "err", err)
		status := http.StatusBadGateway
		var se *statusError
		if errors.As(err, &se) && se.status == http.StatusNotFound {
			status = http.StatusNotFound
		}
		writeJSON(w, status, map[string]string{"error": "the upstream CAS did not give the reconstruction"})
		return
	}
	terms, offset, ok := sliceTerms(rec.terms, r.Header.Get("Range"))
	if !ok {
		writeJSON(w, http.StatusRequestedRangeNotSatisfiable, map[string]string{"error": "range not satisfiable"})
		return
	}
	used := map[string]bool{}
	for _, t := range terms {
		used[t.Hash] = true
	}
	out := wireRecon{OffsetIntoFirstRange: offset, Terms: terms}
	exp := strconv.FormatInt(time.Now().Add(s.opts.URLTTL).Unix(), 10)
	v2 := map[string][]wireV2Fetch{}
	v1 := map[string][]wireV1Fetch{}
	for xorb, fetches := range rec.fetches {
		if !used[xorb] {
			continue
		}
		for _, f := range fetches {
			u := s.xorbURL(xorbBase, xorb, fileHash, c, f.Ranges, exp)
			v2[xorb] = append(v2[xorb], wireV2Fetch{URL: u, Ranges: f.Ranges})
			for _, rg := range f.Ranges {
				v1[xorb] = append(v1[xorb], wireV1Fetch{Range: rg.Chunks, URL: s.xorbURL(xorbBase, xorb, fileHash, c, []wireV2Range{rg}, exp), URLRange: rg.Bytes})
			}
		}
	}
	if version == "v1" {
		out.FetchInfo = v1
	} else {
		out.Xorbs = v2
	}
	writeJSON(w, http.StatusOK, out)
}

// sliceTerms selects the whole terms overlapping a file Range ("" = all).
func sliceTerms(terms []wireTerm, rg string) ([]wireTerm, int64, bool) {
	if rg == "" {
		return terms, 0, true
	}
	spec, ok := strings.CutPrefix(rg, "bytes=")
	a, b, ok2 := strings.Cut(spec, "-")
	first, err := strconv.ParseInt(a, 10, 64)
	if !ok || !ok2 || err != nil || first < 0 {
		return nil, 0, false
	}
	last := int64(1<<62 - 1)
	if b != "" {
		if last, err = strconv.ParseInt(b, 10, 64); err != nil || last < first {
			return nil, 0, false
		}
	}
	var out []wireTerm
	var offset, pos int64
	for _, t := range terms {
		end := pos + t.UnpackedLength
		if end > first && pos <= last {
			if len(out) == 0 {
				offset = first - pos
			}
			out = append(out, t)
		}
		pos = end
	}
	return out, offset, len(out) > 0
}

func rangesParam(rs []wireV2Range) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%d-%d", r.Bytes.Start, r.Bytes.End)
	}
	return strings.Join(parts, ",")
}

// xorbURL is a gateway xorb URL for rs of xorb, signed for the file, the
// repo, revision and the worker key name (principal) the reconstruction
// was asked with: a revoked key's URLs, or those of a repo its key no
// longer reaches, stop working at once, not when they expire; and the
// gateway can ask the upstream for the file again (after a restart, or
// once its upstream URLs expired) from the URL alone.
func (s *Service) xorbURL(xorbBase, xorb, fileHash string, c Claims, rs []wireV2Range, exp string) string {
	rp := rangesParam(rs)
	sig := s.signer.SignURL(xorbURLMessage(xorb, fileHash, c, rp, exp))
	return xorbBase + "/" + xorb + "?f=" + fileHash + "&p=" + url.QueryEscape(c.Principal) +
		"&t=" + url.QueryEscape(c.RepoType) + "&repo=" + url.QueryEscape(c.Repo) + "&v=" + url.QueryEscape(c.Rev) +
		"&r=" + url.QueryEscape(rp) + "&exp=" + exp + "&sig=" + sig
}

func xorbURLMessage(xorb, fileHash string, c Claims, rp, exp string) string {
	return strings.Join([]string{xorb, fileHash, c.Principal, c.RepoType, c.Repo, c.Rev, rp, exp}, "\n")
}

// keyDenied reports whether principal names a worker key that is no
// longer configured, or no longer reaches repo.
func (s *Service) keyDenied(principal, typ, repo string) bool {
	return principal != "" && (s.opts.KeyAllows == nil || !s.opts.KeyAllows(principal, typ, repo))
}

// storedRecon is what the index keeps of a reconstruction: its terms and,
// per xorb, the range sets of its fetch entries. Both are immutable for a
// file hash; the signed URLs are not, and are never kept.
type storedRecon struct {
	Terms   []wireTerm                 `json:"terms"`
	Fetches map[string][][]wireV2Range `json:"fetches"`
}

func (r *recon) stored() storedRecon {
	sr := storedRecon{Terms: r.terms, Fetches: map[string][][]wireV2Range{}}
	for x, fs := range r.fetches {
		for _, f := range fs {
			sr.Fetches[x] = append(sr.Fetches[x], f.Ranges)
		}
	}
	return sr
}

func (sr storedRecon) recon() *recon {
	r := &recon{terms: sr.Terms, fetches: map[string][]wireV2Fetch{}}
	for x, sets := range sr.Fetches {
		for _, rs := range sets {
			r.fetches[x] = append(r.fetches[x], wireV2Fetch{Ranges: rs})
		}
	}
	return r
}

// reconstruction returns the file's reconstruction: the gateway's own copy
// (memory, then the index: hit) or the upstream's (miss).
func (s *Service) reconstruction(ctx context.Context, c Claims, fileHash string) (*recon, bool, error) {
	if rec := s.knownRecon(fileHash); rec != nil {
		return rec, true, nil
	}
	rec, err := s.freshRecon(ctx, c, fileHash)
	return rec, false, err
}

// knownRecon is the reconstruction from memory or the index, nil if
// neither has it. From the index it has no upstream URLs.
func (s *Service) knownRecon(fileHash string) *recon {
	s.mu.Lock()
	rec := s.recons[fileHash]
	s.mu.Unlock()
	if rec != nil {
		return rec
	}
	b, err := s.opts.Index.Get(indexkeys.XetReconKey(fileHash))
	if err != nil {
		return nil
	}
	var sr storedRecon
	if err := json.Unmarshal(b, &sr); err != nil || len(sr.Terms) == 0 {
		return nil
	}
	rec = sr.recon()
	s.remember(fileHash, rec)
	return rec
}

// freshRecon asks the upstream (new signed URLs) and keeps the answer.
func (s *Service) freshRecon(ctx context.Context, c Claims, fileHash string) (*recon, error) {
	rec, err := s.up.reconstruct(ctx, c.RepoType, c.Repo, c.Rev, fileHash)
	if err != nil {
		return nil, err
	}
	s.remember(fileHash, rec)
	if b, err := json.Marshal(rec.stored()); err == nil {
		if err := s.opts.Index.Set(indexkeys.XetReconKey(fileHash), b, 0); err != nil {
			s.opts.Logger.Warn("xet: keeping a reconstruction", "file", fileHash, "err", err)
		}
	}
	return rec, nil
}

// remember keeps rec in memory, forgetting an arbitrary other one when
// the bound is reached (the index still has its terms).
func (s *Service) remember(fileHash string, rec *recon) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.recons[fileHash]; !ok && len(s.recons) >= maxMemRecons {
		for k := range s.recons {
			delete(s.recons, k)
			break
		}
	}
	s.recons[fileHash] = rec
}

func (s *Service) serveXorb(w http.ResponseWriter, r *http.Request, xorb string) {
	q := r.URL.Query()
	fileHash, rp, exp, sig := q.Get("f"), q.Get("r"), q.Get("exp"), q.Get("sig")
	c := Claims{Principal: q.Get("p"), RepoType: q.Get("t"), Repo: q.Get("repo"), Rev: q.Get("v")}
	e, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || time.Now().Unix() > e || !s.signer.CheckURL(xorbURLMessage(xorb, fileHash, c, rp, exp), sig) {
		writeJSON(w, http.StatusForbidden, map[string]string{"error": "invalid or expired xorb URL"})
		return
	}
	if s.keyDenied(c.Principal, c.RepoType, c.Repo) {
		// 401, not 403: a 403 makes clients ask the reconstruction again,
		// which is refused the same way.
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "the worker key of this xorb URL was revoked or no longer reaches its repo"})
		return
	}
	if strings.ReplaceAll(r.Header.Get("Range"), " ", "") != "bytes="+rp {
		writeJSON(w, http.StatusForbidden, map[string]string{"error": "Range must equal the signed ranges"})
		return
	}
	ranges, err := parseRanges(rp)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	parts, hit, err := s.ranges(r, xorb, fileHash, c, rp, ranges)
	if err != nil {
		s.opts.Logger.Warn("xet xorb", "xorb", xorb, "err", err)
		writeJSON(w, http.StatusBadGateway, map[string]string{"error": "the xorb could not be fetched upstream, or failed verification"})
		return
	}
	defer closeParts(parts)
	s.count(fileHash, parts, hit)
	writeRanges(w, ranges, parts)
}

// count reports the bytes served to the metrics: hit or miss, and for a
// hit the bytes of ranges fetched for another file.
func (s *Service) count(fileHash string, parts []part, hit bool) {
	m := s.opts.Metrics
	var n, shared int64
	for _, p := range parts {
		n += p.n
		if hit && m.SharedBytes != nil {
			if origin, err := s.opts.Index.Get(indexkeys.XetOriginKey(p.d.Hex)); err == nil && string(origin) != fileHash {
				shared += p.n
			}
		}
	}
	if m.XorbBytes != nil {
		m.XorbBytes(hit, n)
	}
	if shared > 0 {
		m.SharedBytes(shared)
	}
}

type byteRange struct{ start, end int64 } // inclusive

func (r byteRange) size() int64 { return r.end - r.start + 1 }

func parseRanges(rp string) ([]byteRange, error) {
	var out []byteRange
	for _, p := range strings.Split(rp, ",") {
		a, b, ok := strings.Cut(p, "-")
		s, err1 := strconv.ParseInt(a, 10, 64)
		e, err2 := strconv.ParseInt(b, 10, 64)
		if !ok || err1 != nil || err2 != nil || s < 0 || e < s {
			return nil, fmt.Errorf("bad range %q", p)
		}
		out = append(out, byteRange{s, e})
	}
	return out, nil
}

func rangeDigest(xorb string, r byteRange) (cache.Digest, error) {
	return cache.NewXetRangeDigest(xorb, r.start, r.end)
}

// part is one requested range, open in the store: n bytes of blob from
// off (a narrower range served from a stored wider one).
type part struct {
	blob   *cache.Blob
	d      cache.Digest
	off, n int64
}

func (p part) reader() io.Reader { return io.NewSectionReader(p.blob.File(), p.off, p.n) }

func closeParts(parts []part) {
	for _, p := range parts {
		p.blob.Close()
	}
}

// ranges opens each range in the store, fetching the range set upstream
// first if one is missing (once however many clients ask at the same
// time). hit reports that no fetch was needed.
func (s *Service) ranges(r *http.Request, xorb, fileHash string, c Claims, rp string, rs []byteRange) ([]part, bool, error) {
	if parts, ok := s.stored(xorb, rs); ok {
		return parts, true, nil
	}
	// Twice at most: a range published and evicted at once (a cache
	// smaller than what is being read) is fetched once more.
	for attempt := 0; ; attempt++ {
		v, err, _ := s.group.Do(xorb+"|"+rp, func() (any, error) {
			if s.present(xorb, rs) {
				return false, nil
			}
			// Detached from this client, which other clients may be
			// waiting with; the store's fill limits (slot, deadline,
			// stall) bound it.
			ctx := cache.WithClient(context.WithoutCancel(r.Context()), r.RemoteAddr)
			if err := s.fetch(ctx, xorb, fileHash, c, rs); err != nil {
				return false, err
			}
			// New bytes for this file: it is checked again once complete.
			_ = s.opts.Index.Delete(indexkeys.XetVerifiedKey(fileHash))
			return s.verify(fileHash), nil
		})
		if err != nil {
			return nil, false, err
		}
		if dropped := v.(bool); dropped {
			return nil, false, errors.New("the file failed verification: its ranges were dropped")
		}
		if parts, ok := s.stored(xorb, rs); ok {
			return parts, false, nil
		}
		if attempt == 1 {
			return nil, false, errors.New("the ranges were evicted as soon as they were stored")
		}
	}
}

// stored opens every range of rs, or none.
func (s *Service) stored(xorb string, rs []byteRange) ([]part, bool) {
	var parts []part
	for _, r := range rs {
		p, ok := s.locate(xorb, r)
		if !ok {
			closeParts(parts)
			return nil, false
		}
		parts = append(parts, p)
	}
	return parts, true
}

// locate opens r of xorb from the store: the range stored as such, or a
// stored range that covers it. Xorb byte offsets are absolute and xorbs
// immutable, so another file's wider range of a shared xorb (a base
// model's, for its fine-tune) serves a narrower one without a fetch.
func (s *Service) locate(xorb string, r byteRange) (part, bool) {
	d, err := rangeDigest(xorb, r)
	if err != nil {
		return part{}, false
	}
	if b, err := s.opts.Store.Open(d); err == nil {
		if b.Size == r.size() && b.File() != nil {
			return part{blob: b, d: d, n: r.size()}, true
		}
		b.Close()
	}
	var found part
	ok := false
	_ = s.opts.Store.PublishedWithPrefix(cache.XetRange, xorb, func(cd cache.Digest, size int64) error {
		_, first, last, valid := cd.XetRangeParts()
		if !valid || first > r.start || last < r.end || size != last-first+1 {
			return nil
		}
		b, err := s.opts.Store.Open(cd)
		if err != nil {
			return nil
		}
		if b.Size != size || b.File() == nil {
			b.Close()
			return nil
		}
		found, ok = part{blob: b, d: cd, off: r.start - first, n: r.size()}, true
		return errFound
	})
	return found, ok
}

var errFound = errors.New("found")

// present reports whether every range of rs is in the store (by the
// index alone: nothing is opened or touched).
func (s *Service) present(xorb string, rs []byteRange) bool {
	for _, r := range rs {
		d, err := rangeDigest(xorb, r)
		if err != nil {
			return false
		}
		if s.opts.Store.Has(d) {
			continue
		}
		covered := false
		_ = s.opts.Store.PublishedWithPrefix(cache.XetRange, xorb, func(cd cache.Digest, _ int64) error {
			if _, first, last, ok := cd.XetRangeParts(); ok && first <= r.start && last >= r.end && s.opts.Store.Has(cd) {
				covered = true
				return errFound
			}
			return nil
		})
		if !covered {
			return false
		}
	}
	return true
}

// fetch gets rs of xorb upstream, streamed into the store, with the
// signed URL of the file's reconstruction entry that holds them (the
// entry's whole range set: a signed URL serves no other); on a 403
// (expired URL), or without a URL (a reconstruction from the index), it
// asks the upstream for a fresh reconstruction and tries once more.
func (s *Service) fetch(ctx context.Context, xorb, fileHash string, c Claims, rs []byteRange) error {
	for attempt := 0; ; attempt++ {
		var rec *recon
		if attempt == 0 {
			rec = s.knownRecon(fileHash)
		}
		if rec == nil {
			var err error
			if rec, err = s.freshRecon(ctx, c, fileHash); err != nil {
				return err
			}
		}
		entry, ok := fetchEntry(rec.fetches[xorb], rs)
		if !ok {
			return errors.New("no upstream entry holds these ranges")
		}
		if entry.URL == "" && attempt == 0 {
			continue
		}
		err := s.getRanges(ctx, xorb, fileHash, entry)
		var se *statusError
		if errors.As(err, &se) && se.status == http.StatusForbidden && attempt == 0 {
			continue
		}
		return err
	}
}

// fetchEntry is the entry whose ranges are exactly rs, or else one that
// holds each range of rs.
func fetchEntry(entries []wireV2Fetch, rs []byteRange) (wireV2Fetch, bool) {
	want := make([]wireV2Range, len(rs))
	for i, r := range rs {
		want[i] = wireV2Range{Bytes: wireRange{r.start, r.end}}
	}
	for _, f := range entries {
		if rangesParam(f.Ranges) == rangesParam(want) {
			return f, true
		}
	}
	for _, f := range entries {
		all := true
		for _, r := range rs {
			in := false
			for _, fr := range f.Ranges {
				in = in || fr.Bytes.Start <= r.start && fr.Bytes.End >= r.end
			}
			all = all && in
		}
		if all {
			return f, true
		}
	}
	return wireV2Fetch{}, false
}

// getRanges GETs the entry's URL with its ranges, without Authorization,
// and streams each range (the parts of a multipart answer) into the store
// under the store's fill limits; each range records the file it was
// fetched for.
func (s *Service) getRanges(ctx context.Context, xorb, fileHash string, entry wireV2Fetch) error {
	rp := rangesParam(entry.Ranges)
	rs := make([]byteRange, len(entry.Ranges))
	ds := make([]cache.Digest, len(entry.Ranges))
	for i, r := range entry.Ranges {
		rs[i] = byteRange{r.Bytes.Start, r.Bytes.End}
		d, err := rangeDigest(xorb, rs[i])
		if err != nil {
			return err
		}
		ds[i] = d
	}
	err := s.opts.Store.Ingest(ctx, func(ctx context.Context, put cache.PutFunc) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, entry.URL, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Range", "bytes="+rp)
		resp, err := s.opts.Client.Do(req)
		if err != nil {
			return fmt.Errorf("upstream xorb: %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusPartialContent {
			return &statusError{status: resp.StatusCode, what: "upstream xorb"}
		}
		if len(rs) == 1 {
			if cr := resp.Header.Get("Content-Range"); cr != "" && !strings.HasPrefix(cr, fmt.Sprintf("bytes %d-%d/", rs[0].start, rs[0].end)) {
				return fmt.Errorf("upstream xorb range is %q", cr)
			}
			return put(ds[0], rs[0].size(), resp.Body)
		}
		mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		if err != nil || mt != "multipart/byteranges" {
			return errors.New("upstream xorb: multi-range answer is not multipart/byteranges")
		}
		mr := multipart.NewReader(resp.Body, params["boundary"])
		for i := range rs {
			p, err := mr.NextPart()
			if err != nil {
				return fmt.Errorf("upstream xorb part %d: %w", i, err)
			}
			if !strings.HasPrefix(p.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-%d/", rs[i].start, rs[i].end)) {
				return fmt.Errorf("upstream xorb part %d is %q", i, p.Header.Get("Content-Range"))
			}
			if err := put(ds[i], rs[i].size(), p); err != nil {
				return fmt.Errorf("upstream xorb part %d: %w", i, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, d := range ds {
		_ = s.opts.Index.Set(indexkeys.XetOriginKey(d.Hex), []byte(fileHash), 0) // metrics only
	}
	return nil
}

// writeRanges answers 206 from the store: one range plainly, several as
// multipart/byteranges with the parts in order, streamed.
func writeRanges(w http.ResponseWriter, rs []byteRange, parts []part) {
	if len(rs) == 1 {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/*", rs[0].start, rs[0].end))
		w.Header().Set("Content-Length", strconv.FormatInt(parts[0].n, 10))
		w.WriteHeader(http.StatusPartialContent)
		// The part's blob was opened for this answer alone, so its offset
		// is ours to move: a LimitedReader over the *os.File lets net/http
		// send it with sendfile (ReadAt-based readers cannot).
		p := parts[0]
		if _, err := p.blob.File().Seek(p.off, io.SeekStart); err == nil {
			_, _ = io.Copy(w, io.LimitReader(p.blob.File(), p.n))
			return
		}
		_, _ = io.Copy(w, p.reader())
		return
	}
	header := func(r byteRange) textproto.MIMEHeader {
		return textproto.MIMEHeader{
			"Content-Type":  {"application/octet-stream"},
			"Content-Range": {fmt.Sprintf("bytes %d-%d/*", r.start, r.end)},
		}
	}
	// The length first, from the same multipart framing without the bodies.
	cw := &countWriter{}
	mw := multipart.NewWriter(cw)
	for i, r := range rs {
		_, _ = mw.CreatePart(header(r))
		cw.n += parts[i].n
	}
	_ = mw.Close()
	boundary := mw.Boundary()
	w.Header().Set("Content-Type", "multipart/byteranges; boundary="+boundary)
	w.Header().Set("Content-Length", strconv.FormatInt(cw.n, 10))
	w.WriteHeader(http.StatusPartialContent)
	mw = multipart.NewWriter(w)
	_ = mw.SetBoundary(boundary)
	for i, r := range rs {
		pw, err := mw.CreatePart(header(r))
		if err != nil {
			return
		}
		if _, err := io.Copy(pw, parts[i].reader()); err != nil {
			return
		}
	}
	_ = mw.Close()
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

// verify checks a file once every range its reconstruction needs is
// stored: the chunks' hashes must give the file hash (xet-core's
// definition), chunks of every compression scheme decoded one at a time.
// A match records the file as verified; a mismatch drops the file's
// ranges, so the next request fetches them again. Until then the ranges
// are provisional: served to Xet clients as the upstream would have, and
// never used for anything else.
// It reports whether the ranges were dropped.
func (s *Service) verify(fileHash string) bool {
	v, _, _ := s.checks.Do(fileHash, func() (any, error) {
		return s.check(fileHash), nil
	})
	return v.(bool)
}

func (s *Service) check(fileHash string) (dropped bool) {
	rec := s.knownRecon(fileHash)
	if rec == nil || s.Verified(fileHash) {
		return false
	}
	// First only whether every range is there (the index alone): verify
	// runs after every range fetch, and must not read a file's ranges
	// again and again while they arrive.
	for xorb, fetches := range rec.fetches {
		for _, f := range fetches {
			for _, rg := range f.Ranges {
				if !s.present(xorb, []byteRange{{rg.Bytes.Start, rg.Bytes.End}}) {
					return false
				}
			}
		}
	}
	// Then one chunk in memory at a time, keeping only the chunks' hashes.
	type span struct {
		first int64
		nodes []xethash.Node
	}
	spans := map[string][]span{}
	var used []cache.Digest
	for xorb, fetches := range rec.fetches {
		for _, f := range fetches {
			for _, rg := range f.Ranges {
				p, ok := s.locate(xorb, byteRange{rg.Bytes.Start, rg.Bytes.End})
				if !ok {
					return false // evicted meanwhile: fetched again when asked
				}
				used = append(used, p.d)
				nodes, err := chunkNodes(p.reader())
				p.blob.Close()
				if err != nil || int64(len(nodes)) != rg.Chunks.End-rg.Chunks.Start {
					s.drop(fileHash, used)
					return true
				}
				spans[xorb] = append(spans[xorb], span{rg.Chunks.Start, nodes})
			}
		}
	}
	var nodes []xethash.Node
	for i, t := range rec.terms {
		var n uint64
		for ci := t.Range.Start; ci < t.Range.End; ci++ {
			found := false
			for _, sp := range spans[t.Hash] {
				if ci >= sp.first && ci < sp.first+int64(len(sp.nodes)) {
					nodes, found = append(nodes, sp.nodes[ci-sp.first]), true
					n += sp.nodes[ci-sp.first].Size
					break
				}
			}
			if !found {
				return false
			}
		}
		// The Xet hash covers the chunks, not the terms' lengths, which
		// place every byte of an assembled file: they are checked here.
		if t.UnpackedLength < 0 || n != uint64(t.UnpackedLength) {
			s.opts.Logger.Warn("xet: the reconstruction's term length differs from its chunks; the file is not verified",
				"file", fileHash, "term", i, "claimed", t.UnpackedLength, "chunks", n)
			return false
		}
	}
	if xethash.File(nodes).String() != fileHash {
		s.drop(fileHash, used)
		return true
	}
	for xorb, sps := range spans {
		for _, sp := range sps {
			if err := s.recordChunks(xorb, sp.first, sp.nodes); err != nil {
				s.opts.Logger.Warn("xet: the file is verified but not all its chunks are recorded; those are not assembled", "file", fileHash, "err", err)
			}
		}
	}
	if err := s.opts.Index.Set(indexkeys.XetVerifiedKey(fileHash), verifiedMark(rec), 0); err != nil {
		s.opts.Logger.Warn("xet: recording a verified file", "file", fileHash, "err", err)
	}
	return false
}

// verifiedMark is the value of a file's verified mark: when, and a digest
// of the terms that were checked. A reconstruction of the same file hash
// with other terms (an upstream that answers differently later) is not
// covered by the mark.
func verifiedMark(rec *recon) []byte {
	return []byte(strconv.FormatInt(time.Now().Unix(), 10) + " " + termsDigest(rec.terms))
}

func termsDigest(terms []wireTerm) string {
	b, _ := json.Marshal(terms)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// markedVerified returns the file's reconstruction when the file carries a
// verified mark for that very reconstruction (nil otherwise): its chunks
// hashed to the file hash and its terms' lengths matched them. Whether
// its ranges are still stored is the caller's question.
func (s *Service) markedVerified(fileHash string) *recon {
	v, err := s.opts.Index.Get(indexkeys.XetVerifiedKey(fileHash))
	if err != nil {
		return nil
	}
	rec := s.knownRecon(fileHash)
	if rec == nil {
		return nil
	}
	_, digest, ok := strings.Cut(string(v), " ")
	if !ok || digest != termsDigest(rec.terms) {
		return nil
	}
	return rec
}

// chunkNodes hashes the chunks of xorb bytes, decoding one at a time.
func chunkNodes(r io.Reader) ([]xethash.Node, error) {
	cr := xetchunk.NewReader(r)
	var nodes []xethash.Node
	for {
		c, err := cr.Next()
		if err == io.EOF {
			return nodes, nil
		}
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, xethash.Node{Hash: xethash.Chunk(c), Size: uint64(len(c))})
	}
}

// drop removes a file's ranges that failed verification (once their
// readers are done), so that the next request fetches them again.
func (s *Service) drop(fileHash string, ds []cache.Digest) {
	s.opts.Logger.Warn("xet file failed verification: dropping its xorb ranges", "file", fileHash)
	ctx, cancel := context.WithTimeout(context.Background(), dropTimeout)
	defer cancel()
	for _, d := range ds {
		if _, err := s.opts.Store.Remove(ctx, d); err != nil {
			s.opts.Logger.Warn("xet: dropping a range that failed verification", "range", d.String(), "err", err)
		}
		_ = s.opts.Index.Delete(indexkeys.XetOriginKey(d.Hex))
	}
	_ = s.opts.Index.Delete(indexkeys.XetVerifiedKey(fileHash))
}

// Verified reports whether the file's ranges were checked against its Xet
// hash and are all still in the store: once one is evicted the file is
// no longer verified, and the range fetched again is checked again.
func (s *Service) Verified(fileHash string) bool {
	rec := s.markedVerified(fileHash)
	if rec == nil {
		return false
	}
	for xorb, fetches := range rec.fetches {
		for _, f := range fetches {
			for _, rg := range f.Ranges {
				if !s.present(xorb, []byteRange{{rg.Bytes.Start, rg.Bytes.End}}) {
					return false
				}
			}
		}
	}
	return true
}

// RangesOf returns the stored ranges that hold the files' bytes (each
// range of their reconstructions as stored, or the wider range covering
// it), from the index alone: what pinning those files keeps from
// eviction. A file whose reconstruction the gateway does not have pins
// nothing yet.
func (s *Service) RangesOf(fileHashes map[string]bool) map[cache.Digest]bool {
	out := map[cache.Digest]bool{}
	for fh := range fileHashes {
		rec := s.knownRecon(fh)
		if rec == nil {
			continue
		}
		for xorb, fetches := range rec.fetches {
			for _, f := range fetches {
				for _, rg := range f.Ranges {
					r := byteRange{rg.Bytes.Start, rg.Bytes.End}
					if d, err := rangeDigest(xorb, r); err == nil && s.opts.Store.Has(d) {
						out[d] = true
						continue
					}
					_ = s.opts.Store.PublishedWithPrefix(cache.XetRange, xorb, func(cd cache.Digest, _ int64) error {
						if _, first, last, ok := cd.XetRangeParts(); ok && first <= r.start && last >= r.end {
							out[cd] = true
						}
						return nil
					})
				}
			}
		}
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
