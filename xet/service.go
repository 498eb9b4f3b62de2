package xet

import (
	"bytes"
	"context"
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

	"github.com/modelgate/modelgate/xet/xetchunk"
	"github.com/modelgate/modelgate/xet/xethash"
)

// Options configures a Service.
type Options struct {
	Hub      *url.URL      // the Hub endpoint (token route)
	Client   *http.Client  // upstream client for the Hub and the CAS
	HubToken func() string // the operator's Hub token
	Dir      string        // where the secret and the xorb ranges live
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
	Logger   *slog.Logger
}

// Service serves the gateway's Xet routes.
type Service struct {
	opts   Options
	signer *Signer
	up     *upstream

	mu     sync.Mutex
	recons map[string]*recon  // file hash -> reconstruction (terms immutable)
	scope  map[string]Claims  // file hash -> a scope to refresh it with
	group  singleflight.Group // one upstream fetch per xorb range set
}

// CASPrefix is where the gateway's CAS lives, relative to its base URL.
const CASPrefix = "/xet/cas"

// New opens the service's secret and store under opts.Dir.
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
	if err := os.MkdirAll(filepath.Join(opts.Dir, "xorbs"), 0o700); err != nil {
		return nil, fmt.Errorf("xet store: %w", err)
	}
	s, err := LoadSigner(opts.Dir)
	if err != nil {
		return nil, err
	}
	return &Service{opts: opts, signer: s, recons: map[string]*recon{}, scope: map[string]Claims{},
		up: &upstream{hub: opts.Hub, client: opts.Client, token: opts.HubToken, tokens: map[string]upstreamToken{}}}, nil
}

// ServeToken answers the xet-read-token route with a gateway token for
// repo at rev (a commit) and the worker key principal; base is the
// gateway's scheme://host as the client reached it.
func (s *Service) ServeToken(w http.ResponseWriter, typ, repo, rev, principal, base string) {
	exp := time.Now().Add(s.opts.TokenTTL)
	tok := s.signer.Issue(Claims{RepoType: typ, Repo: repo, Rev: rev, Principal: principal, Exp: exp.Unix()})
	cas := base + CASPrefix
	w.Header().Set("X-Xet-Access-Token", tok)
	w.Header().Set("X-Xet-Token-Expiration", strconv.FormatInt(exp.Unix(), 10))
	w.Header().Set("X-Xet-Cas-Url", cas)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string]any{"accessToken": tok, "exp": exp.Unix(), "casUrl": cas})
}

// ServeCAS answers the routes under CASPrefix (path is the rest):
// /v1|v2/reconstructions/{hash} and /xorbs/{xorb}.
func (s *Service) ServeCAS(w http.ResponseWriter, r *http.Request, path, base string) {
	segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
	switch {
	case r.Method != http.MethodGet:
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "GET only"})
	case len(segs) == 3 && (segs[0] == "v1" || segs[0] == "v2") && segs[1] == "reconstructions" && validHash(segs[2]):
		s.serveReconstruction(w, r, segs[0], segs[2], base)
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

func (s *Service) serveReconstruction(w http.ResponseWriter, r *http.Request, version, fileHash, base string) {
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
	rec, err := s.reconstruction(r.Context(), c, fileHash, false)
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
			u := s.xorbURL(base, xorb, fileHash, c, f.Ranges, exp)
			v2[xorb] = append(v2[xorb], wireV2Fetch{URL: u, Ranges: f.Ranges})
			for _, rg := range f.Ranges {
				v1[xorb] = append(v1[xorb], wireV1Fetch{Range: rg.Chunks, URL: s.xorbURL(base, xorb, fileHash, c, []wireV2Range{rg}, exp), URLRange: rg.Bytes})
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
// repo and the worker key name (principal) the reconstruction was asked
// with: a revoked key's URLs, or those of a repo its key no longer
// reaches, stop working at once, not when they expire.
func (s *Service) xorbURL(base, xorb, fileHash string, c Claims, rs []wireV2Range, exp string) string {
	rp := rangesParam(rs)
	sig := s.signer.SignURL(xorbURLMessage(xorb, fileHash, c.Principal, c.RepoType, c.Repo, rp, exp))
	return base + CASPrefix + "/xorbs/" + xorb + "?f=" + fileHash + "&p=" + url.QueryEscape(c.Principal) +
		"&t=" + url.QueryEscape(c.RepoType) + "&repo=" + url.QueryEscape(c.Repo) +
		"&r=" + url.QueryEscape(rp) + "&exp=" + exp + "&sig=" + sig
}

func xorbURLMessage(xorb, fileHash, principal, typ, repo, rp, exp string) string {
	return xorb + "\n" + fileHash + "\n" + principal + "\n" + typ + "\n" + repo + "\n" + rp + "\n" + exp
}

// keyDenied reports whether principal names a worker key that is no
// longer configured, or no longer reaches repo.
func (s *Service) keyDenied(principal, typ, repo string) bool {
	return principal != "" && (s.opts.KeyAllows == nil || !s.opts.KeyAllows(principal, typ, repo))
}

// reconstruction returns the file's reconstruction, from memory unless
// fresh is set (new upstream URLs after a 403).
func (s *Service) reconstruction(ctx context.Context, c Claims, fileHash string, fresh bool) (*recon, error) {
	s.mu.Lock()
	rec := s.recons[fileHash]
	s.scope[fileHash] = c
	s.mu.Unlock()
	if rec != nil && !fresh {
		return rec, nil
	}
	rec, err := s.up.reconstruct(ctx, c.RepoType, c.Repo, c.Rev, fileHash)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.recons[fileHash] = rec
	s.mu.Unlock()
	return rec, nil
}

func (s *Service) serveXorb(w http.ResponseWriter, r *http.Request, xorb string) {
	q := r.URL.Query()
	fileHash, principal, rp, exp, sig := q.Get("f"), q.Get("p"), q.Get("r"), q.Get("exp"), q.Get("sig")
	typ, repo := q.Get("t"), q.Get("repo")
	e, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || time.Now().Unix() > e || !s.signer.CheckURL(xorbURLMessage(xorb, fileHash, principal, typ, repo, rp, exp), sig) {
		writeJSON(w, http.StatusForbidden, map[string]string{"error": "invalid or expired xorb URL"})
		return
	}
	if s.keyDenied(principal, typ, repo) {
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
	parts, err := s.ranges(r.Context(), xorb, fileHash, rp, ranges)
	if err != nil {
		s.opts.Logger.Warn("xet xorb", "xorb", xorb, "err", err)
		writeJSON(w, http.StatusBadGateway, map[string]string{"error": "the xorb could not be fetched upstream"})
		return
	}
	writeRanges(w, ranges, parts)
}

type byteRange struct{ start, end int64 } // inclusive

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

func (s *Service) rangePath(xorb string, r byteRange) string {
	return filepath.Join(s.opts.Dir, "xorbs", xorb[:2], xorb, fmt.Sprintf("%d-%d", r.start, r.end))
}

// ranges returns each range's bytes, from the store or fetched upstream
// (once per range set, however many clients ask at the same time).
func (s *Service) ranges(ctx context.Context, xorb, fileHash, rp string, rs []byteRange) ([][]byte, error) {
	if parts, ok := s.stored(xorb, rs); ok {
		return parts, nil
	}
	v, err, _ := s.group.Do(xorb+"|"+rp, func() (any, error) {
		if parts, ok := s.stored(xorb, rs); ok {
			return parts, nil
		}
		parts, err := s.fetch(context.WithoutCancel(ctx), xorb, fileHash, rp, rs)
		if err != nil {
			return nil, err
		}
		for i, r := range rs {
			if err := writeAtomic(s.rangePath(xorb, r), parts[i]); err != nil {
				return nil, err
			}
		}
		s.verify(fileHash)
		return parts, nil
	})
	if err != nil {
		return nil, err
	}
	return v.([][]byte), nil
}

func (s *Service) stored(xorb string, rs []byteRange) ([][]byte, bool) {
	var parts [][]byte
	for _, r := range rs {
		b, _, err := s.readRange(xorb, r)
		if err != nil {
			return nil, false
		}
		parts = append(parts, b)
	}
	return parts, true
}

// readRange returns r of xorb from the store and the file it came from:
// the range stored as such, or a slice of a stored range that covers it.
// Xorb byte offsets are absolute and xorbs immutable, so another file's
// wider range of a shared xorb (a base model's, for its fine-tune) serves
// a narrower one without an upstream fetch.
func (s *Service) readRange(xorb string, r byteRange) ([]byte, string, error) {
	want := r.end - r.start + 1
	p := s.rangePath(xorb, r)
	if b, err := os.ReadFile(p); err == nil && int64(len(b)) == want {
		return b, p, nil
	}
	dir := filepath.Dir(p)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, "", err
	}
	for _, e := range ents {
		a, b, ok := strings.Cut(e.Name(), "-")
		st, err1 := strconv.ParseInt(a, 10, 64)
		en, err2 := strconv.ParseInt(b, 10, 64)
		if !ok || err1 != nil || err2 != nil || st > r.start || en < r.end {
			continue
		}
		cp := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(cp)
		if err != nil || int64(len(data)) != en-st+1 {
			continue
		}
		return data[r.start-st : r.end-st+1], cp, nil
	}
	return nil, "", os.ErrNotExist
}

// fetch gets rs of xorb upstream with the signed URL of the file's
// reconstruction entry for exactly that range set; on a 403 (expired
// URL) it asks the upstream for a fresh reconstruction and tries once more.
func (s *Service) fetch(ctx context.Context, xorb, fileHash, rp string, rs []byteRange) ([][]byte, error) {
	s.mu.Lock()
	c, known := s.scope[fileHash]
	s.mu.Unlock()
	if !known {
		return nil, errors.New("no reconstruction known for this file")
	}
	for attempt := 0; ; attempt++ {
		rec, err := s.reconstruction(ctx, c, fileHash, attempt > 0)
		if err != nil {
			return nil, err
		}
		var target string
		for _, f := range rec.fetches[xorb] {
			if rangesParam(f.Ranges) == rp {
				target = f.URL
			}
		}
		if target == "" {
			return nil, errors.New("no upstream entry for these ranges")
		}
		parts, err := getRanges(ctx, s.opts.Client, target, rp, rs)
		var se *statusError
		if errors.As(err, &se) && se.status == http.StatusForbidden && attempt == 0 {
			continue
		}
		return parts, err
	}
}

// getRanges GETs target with Range: bytes=rp, without Authorization, and
// splits a multipart answer into its parts.
func getRanges(ctx context.Context, client *http.Client, target, rp string, rs []byteRange) ([][]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", "bytes="+rp)
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("upstream xorb: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		return nil, &statusError{status: resp.StatusCode, what: "upstream xorb"}
	}
	if len(rs) == 1 {
		b, err := io.ReadAll(io.LimitReader(resp.Body, rs[0].end-rs[0].start+2))
		if err != nil {
			return nil, fmt.Errorf("upstream xorb: %w", err)
		}
		if int64(len(b)) != rs[0].end-rs[0].start+1 {
			return nil, errors.New("upstream xorb: short range")
		}
		return [][]byte{b}, nil
	}
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/byteranges" {
		return nil, errors.New("upstream xorb: multi-range answer is not multipart/byteranges")
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	out := make([][]byte, 0, len(rs))
	for i := range rs {
		p, err := mr.NextPart()
		if err != nil {
			return nil, fmt.Errorf("upstream xorb part %d: %w", i, err)
		}
		if !strings.HasPrefix(p.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-%d/", rs[i].start, rs[i].end)) {
			return nil, fmt.Errorf("upstream xorb part %d is %q", i, p.Header.Get("Content-Range"))
		}
		b, err := io.ReadAll(io.LimitReader(p, rs[i].end-rs[i].start+2))
		if err != nil || int64(len(b)) != rs[i].end-rs[i].start+1 {
			return nil, fmt.Errorf("upstream xorb part %d: short", i)
		}
		out = append(out, b)
	}
	return out, nil
}

// writeRanges answers 206: one range plainly, several as
// multipart/byteranges with the parts in order.
func writeRanges(w http.ResponseWriter, rs []byteRange, parts [][]byte) {
	if len(rs) == 1 {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/*", rs[0].start, rs[0].end))
		w.Header().Set("Content-Length", strconv.Itoa(len(parts[0])))
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write(parts[0])
		return
	}
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for i, r := range rs {
		pw, _ := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":  {"application/octet-stream"},
			"Content-Range": {fmt.Sprintf("bytes %d-%d/*", r.start, r.end)},
		})
		_, _ = pw.Write(parts[i])
	}
	_ = mw.Close()
	w.Header().Set("Content-Type", "multipart/byteranges; boundary="+mw.Boundary())
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(http.StatusPartialContent)
	_, _ = w.Write(buf.Bytes())
}

// verify checks a file once every range its reconstruction needs is
// stored: the chunks' hashes must give the file hash (xet-core's
// definition). A match records the file as verified; a mismatch drops the
// file's ranges, so the next request fetches them again. Until then the
// ranges are provisional: served to Xet clients as the upstream would have,
// and never used for anything else.
func (s *Service) verify(fileHash string) {
	s.mu.Lock()
	rec := s.recons[fileHash]
	s.mu.Unlock()
	if rec == nil || s.Verified(fileHash) {
		return
	}
	// First only whether every range is there (a stat each): verify runs
	// after every range fetch, and must not read a file's ranges again and
	// again while they arrive.
	for xorb, fetches := range rec.fetches {
		for _, f := range fetches {
			for _, rg := range f.Ranges {
				if !s.hasRange(xorb, byteRange{rg.Bytes.Start, rg.Bytes.End}) {
					return // not all there yet
				}
			}
		}
	}
	// Then one range in memory at a time, keeping only its chunks' hashes:
	// a file of many GB is verified in the memory of one range.
	type span struct {
		first int64
		nodes []xethash.Node
	}
	spans := map[string][]span{}
	var paths []string
	for xorb, fetches := range rec.fetches {
		for _, f := range fetches {
			for _, rg := range f.Ranges {
				b, p, err := s.readRange(xorb, byteRange{rg.Bytes.Start, rg.Bytes.End})
				if err != nil {
					return
				}
				paths = append(paths, p)
				chunks, err := xetchunk.DecodeAll(b)
				if err != nil || int64(len(chunks)) != rg.Chunks.End-rg.Chunks.Start {
					s.drop(fileHash, paths)
					return
				}
				nodes := make([]xethash.Node, len(chunks))
				for i, c := range chunks {
					nodes[i] = xethash.Node{Hash: xethash.Chunk(c), Size: uint64(len(c))}
				}
				spans[xorb] = append(spans[xorb], span{rg.Chunks.Start, nodes})
			}
		}
	}
	var nodes []xethash.Node
	for _, t := range rec.terms {
		for ci := t.Range.Start; ci < t.Range.End; ci++ {
			found := false
			for _, sp := range spans[t.Hash] {
				if ci >= sp.first && ci < sp.first+int64(len(sp.nodes)) {
					nodes, found = append(nodes, sp.nodes[ci-sp.first]), true
					break
				}
			}
			if !found {
				return
			}
		}
	}
	if xethash.File(nodes).String() != fileHash {
		s.drop(fileHash, paths)
		return
	}
	_ = writeAtomic(filepath.Join(s.opts.Dir, "verified", fileHash), nil)
}

// hasRange reports whether readRange would find r of xorb, by the sizes
// of the stored files alone.
func (s *Service) hasRange(xorb string, r byteRange) bool {
	p := s.rangePath(xorb, r)
	if fi, err := os.Stat(p); err == nil && fi.Size() == r.end-r.start+1 {
		return true
	}
	ents, err := os.ReadDir(filepath.Dir(p))
	if err != nil {
		return false
	}
	for _, e := range ents {
		a, b, ok := strings.Cut(e.Name(), "-")
		st, err1 := strconv.ParseInt(a, 10, 64)
		en, err2 := strconv.ParseInt(b, 10, 64)
		if !ok || err1 != nil || err2 != nil || st > r.start || en < r.end {
			continue
		}
		if fi, err := e.Info(); err == nil && fi.Size() == en-st+1 {
			return true
		}
	}
	return false
}

func (s *Service) drop(fileHash string, paths []string) {
	s.opts.Logger.Warn("xet file failed verification: dropping its xorb ranges", "file", fileHash)
	for _, p := range paths {
		_ = os.Remove(p)
	}
}

// Verified reports whether every range of the file was checked against
// its Xet hash.
func (s *Service) Verified(fileHash string) bool {
	_, err := os.Stat(filepath.Join(s.opts.Dir, "verified", fileHash))
	return err == nil
}

func writeAtomic(p string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), p)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
