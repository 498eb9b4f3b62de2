package fakehub

// The fake Xet CAS: the data plane huggingface_hub's hf_xet and
// @huggingface/hub use for Xet files (UPSTREAMS.md §3.2, 3.3, 3.5):
//
//   GET /v2/reconstructions/{file hash}  (and /v1/...)
//       Authorization: Bearer <accessToken from xet-read-token>, optional
//       Range: bytes=a-b of the file. v2 answers {offset_into_first_range,
//       terms, xorbs: {xorb: [{url, ranges: [{chunks, bytes}]}]}}; v1
//       {offset_into_first_range, terms, fetch_info: {xorb: [{range, url,
//       url_range}]}}. 401 for a missing, unknown or expired token, 403 for
//       a token of another repo, 404 for an unknown hash, 416 past the end.
//   GET /xorbs/default/{xorb hash}?X-Xet-Signed-Range=...&Expires=...
//       no Authorization (400 if sent, like the object store), a valid,
//       unexpired signature (403 otherwise), and a Range header equal to the
//       signed range set (403 otherwise); one range is a 206, several a 206
//       multipart/byteranges.
//
// Files are cut into fixed-size chunks of XetChunkSize bytes (the real
// client cuts content-defined chunks of 8-128 KiB; any cut is valid for the
// hashes), chunks are deduplicated across every file the fake holds, and
// new chunks are packed into xorbs of at most XetXorbChunks chunks, so two
// files sharing content share xorbs. Chunks are stored behind xet-core's
// 8-byte chunk header, uncompressed (scheme 0) unless SetXetCompression
// chose LZ4 (1) or byte-grouped LZ4 (2) for the files added after it. Chunk, xorb and file hashes are
// xet-core's (package xethash). Xorbs carry no footer: clients only ever
// fetch chunk ranges.

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/modelgate/modelgate/xet/xetchunk"
	"github.com/modelgate/modelgate/xet/xethash"
)

const (
	// XetChunkSize is the fake's chunk size.
	XetChunkSize = 16 << 10
	// XetXorbChunks is the most chunks the fake packs into one xorb.
	XetXorbChunks = 8
	// XorbURLLifetime is the validity of signed xorb URLs.
	XorbURLLifetime = 10 * time.Minute
	// ChunkHeaderSize is the size of xet-core's per-chunk header.
	ChunkHeaderSize = 8
)

const serverCAS = "cas"

// xetChunk is one chunk of a file, in file order.
type xetChunk struct {
	hash xethash.Hash
	data []byte
}

// xetLayout cuts data into chunks of chunkSize bytes; its file hash is
// xet-core's.
func xetLayout(data []byte, chunkSize int) ([]xetChunk, xethash.Hash) {
	var chunks []xetChunk
	var nodes []xethash.Node
	for off := 0; off < len(data); off += chunkSize {
		c := data[off:min(off+chunkSize, len(data))]
		h := xethash.Chunk(c)
		chunks = append(chunks, xetChunk{hash: h, data: c})
		nodes = append(nodes, xethash.Node{Hash: h, Size: uint64(len(c))})
	}
	return chunks, xethash.File(nodes)
}

// ChunkHeader is xet-core's 8-byte chunk header: version 0, u24 LE
// compressed length, scheme, u24 LE uncompressed length.
func ChunkHeader(compressed, uncompressed int, scheme byte) [ChunkHeaderSize]byte {
	var h [ChunkHeaderSize]byte
	h[0] = 0
	h[1], h[2], h[3] = byte(compressed), byte(compressed>>8), byte(compressed>>16)
	h[4] = scheme
	h[5], h[6], h[7] = byte(uncompressed), byte(uncompressed>>8), byte(uncompressed>>16)
	return h
}

type chunkLoc struct {
	xorb  string
	index int
}

type xorbState struct {
	data    []byte
	offsets []int // byte offset of each chunk's header; len = chunks+1
}

type casTerm struct {
	xorb       string
	start, end int // chunk indexes, end exclusive
	unpacked   int
}

type casFile struct {
	size  int64
	terms []casTerm
	repos map[string]bool // "type/id" that hold the file
}

type casToken struct {
	repo string
	exp  time.Time
}

// casState is guarded by Hub.mu.
type casState struct {
	chunks  map[xethash.Hash]chunkLoc
	xorbs   map[string]*xorbState
	files   map[string]*casFile
	tokens  map[string]casToken
	signGen int
	scheme  xetchunk.Scheme // compression of the chunks packed from now on
}

func newCASState() casState {
	return casState{chunks: map[xethash.Hash]chunkLoc{}, xorbs: map[string]*xorbState{},
		files: map[string]*casFile{}, tokens: map[string]casToken{}}
}

// casAddFile packs the file's new chunks into xorbs and records its terms.
// Called with h.mu held.
func (h *Hub) casAddFile(repo string, f *fileState) {
	if cf := h.cas.files[f.xetHash]; cf != nil {
		cf.repos[repo] = true
		return
	}
	chunks, _ := xetLayout(f.Data, h.opts.XetChunkSize)
	var fresh []xetChunk
	seen := map[xethash.Hash]bool{}
	for _, c := range chunks {
		if _, ok := h.cas.chunks[c.hash]; !ok && !seen[c.hash] {
			seen[c.hash] = true
			fresh = append(fresh, c)
		}
	}
	for i := 0; i < len(fresh); i += h.opts.XetXorbChunks {
		group := fresh[i:min(i+h.opts.XetXorbChunks, len(fresh))]
		x := &xorbState{}
		var nodes []xethash.Node
		for _, c := range group {
			x.offsets = append(x.offsets, len(x.data))
			hd, stored, err := xetchunk.Encode(c.data, h.cas.scheme)
			if err != nil {
				panic("fakehub: " + err.Error()) // chunks of at most 16 MiB: cannot fail
			}
			x.data = xetchunk.AppendHeader(x.data, hd)
			x.data = append(x.data, stored...)
			nodes = append(nodes, xethash.Node{Hash: c.hash, Size: uint64(len(c.data))})
		}
		x.offsets = append(x.offsets, len(x.data))
		name := xethash.Root(nodes).String()
		h.cas.xorbs[name] = x
		for j, c := range group {
			h.cas.chunks[c.hash] = chunkLoc{xorb: name, index: j}
		}
	}
	cf := &casFile{size: f.size, repos: map[string]bool{repo: true}}
	for _, c := range chunks {
		loc := h.cas.chunks[c.hash]
		if n := len(cf.terms); n > 0 && cf.terms[n-1].xorb == loc.xorb && cf.terms[n-1].end == loc.index {
			cf.terms[n-1].end++
			cf.terms[n-1].unpacked += len(c.data)
			continue
		}
		cf.terms = append(cf.terms, casTerm{xorb: loc.xorb, start: loc.index, end: loc.index + 1, unpacked: len(c.data)})
	}
	h.cas.files[f.xetHash] = cf
}

// SetXetCompression makes the chunks of the Xet files added from now on
// stored under scheme (xetchunk.LZ4 or xetchunk.ByteGrouping4LZ4; None is
// the default), as xet-core stores compressible chunks. Chunks already
// packed keep theirs.
func (h *Hub) SetXetCompression(scheme xetchunk.Scheme) {
	h.mu.Lock()
	h.cas.scheme = scheme
	h.mu.Unlock()
}

// CASURL is the fake CAS's base URL (the casUrl of its Xet tokens):
// "https://127.0.0.1:PORT", or "https://"+CASHost with PublicNames.
func (h *Hub) CASURL() string { return h.publicURL(serverCAS, CASHost) }

// XetTokens returns every Xet access token the Hub has issued, for leak
// scans.
func (h *Hub) XetTokens() []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]string, 0, len(h.cas.tokens))
	for t := range h.cas.tokens {
		out = append(out, t)
	}
	return out
}

// XorbHashes returns the hashes of the xorbs holding a Xet file's chunks,
// in term order without repeats.
func (h *Hub) XorbHashes(fileHash string) []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var out []string
	seen := map[string]bool{}
	if cf := h.cas.files[fileHash]; cf != nil {
		for _, t := range cf.terms {
			if !seen[t.xorb] {
				seen[t.xorb] = true
				out = append(out, t.xorb)
			}
		}
	}
	return out
}

// XorbFetches is how many GETs of xorb were answered 2xx.
func (h *Hub) XorbFetches(xorb string) int { return h.xorbFetches.Get(xorb) }

// XorbBodyBytes is how many body bytes the CAS sent for xorb, over all its
// 2xx GETs (a multi-range answer's part headers included).
func (h *Hub) XorbBodyBytes(xorb string) int64 { return h.xorbFetches.Bytes(xorb) }

// ExpireXorbURLs invalidates every signed xorb URL issued so far, as if
// they had all expired: the CAS answers 403 to them.
func (h *Hub) ExpireXorbURLs() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cas.signGen++
}

// ThrottleXorb slows the bodies of xorb's answers to bytesPerSec (0: no
// limit).
func (h *Hub) ThrottleXorb(xorb string, bytesPerSec int) { h.xorbFaults.Throttle(xorb, bytesPerSec) }

// CorruptXorb makes the CAS serve xorb with its tail corrupted.
func (h *Hub) CorruptXorb(xorb string, on bool) { h.xorbFaults.Corrupt(xorb, on) }

// issueXetToken records a new access token for repo ("type/id").
func (h *Hub) issueXetToken(repo string) (string, time.Time) {
	var nonce [16]byte
	_, _ = rand.Read(nonce[:]) // crypto/rand.Read never fails
	tok := "xet-jwt-" + hex.EncodeToString(nonce[:])
	exp := time.Now().Add(xetTokenLifetime)
	h.mu.Lock()
	h.cas.tokens[tok] = casToken{repo: repo, exp: exp}
	h.mu.Unlock()
	return tok, exp
}

func (h *Hub) serveCAS(w http.ResponseWriter, r *http.Request) {
	segs := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
	switch {
	case len(segs) == 3 && (segs[0] == "v1" || segs[0] == "v2") && segs[1] == "reconstructions":
		h.serveReconstruction(w, r, segs[0], segs[2])
	case len(segs) == 3 && segs[0] == "xorbs" && segs[1] == "default":
		h.serveXorb(w, r, segs[2])
	default:
		writeJSON(w, r, http.StatusNotFound, map[string]string{"error": "not found"})
	}
}

type casRange struct {
	Start int `json:"start"`
	End   int `json:"end"`
}

type casTermJSON struct {
	Hash           string   `json:"hash"`
	UnpackedLength int      `json:"unpacked_length"`
	Range          casRange `json:"range"`
}

type v1FetchInfo struct {
	Range    casRange `json:"range"`
	URL      string   `json:"url"`
	URLRange casRange `json:"url_range"`
}

type v2Range struct {
	Chunks casRange `json:"chunks"`
	Bytes  casRange `json:"bytes"`
}

type v2Fetch struct {
	URL    string    `json:"url"`
	Ranges []v2Range `json:"ranges"`
}

func (h *Hub) serveReconstruction(w http.ResponseWriter, r *http.Request, version, fileHash string) {
	if r.Method != http.MethodGet {
		writeJSON(w, r, http.StatusMethodNotAllowed, map[string]string{"error": "method not allowed"})
		return
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	h.mu.RLock()
	ct, known := h.cas.tokens[tok]
	cf := h.cas.files[fileHash]
	h.mu.RUnlock()
	switch {
	case !ok || !known || time.Now().After(ct.exp):
		writeJSON(w, r, http.StatusUnauthorized, map[string]string{"error": "invalid or expired token"})
		return
	case cf == nil:
		writeJSON(w, r, http.StatusNotFound, map[string]string{"error": "file not found"})
		return
	case !cf.repos[ct.repo]:
		writeJSON(w, r, http.StatusForbidden, map[string]string{"error": "token not valid for this file"})
		return
	}
	first, last := int64(0), cf.size-1
	if rg := r.Header.Get("Range"); rg != "" {
		a, b, err := parseOneRange(rg)
		if err != nil || a >= cf.size {
			writeJSON(w, r, http.StatusRequestedRangeNotSatisfiable, map[string]string{"error": "range not satisfiable"})
			return
		}
		first, last = a, min(b, cf.size-1)
	}
	var terms []casTermJSON
	var offset int64
	needed := map[string][]casRange{}
	var pos int64
	for _, t := range cf.terms {
		tEnd := pos + int64(t.unpacked)
		if tEnd > first && pos <= last {
			if len(terms) == 0 {
				offset = first - pos
			}
			terms = append(terms, casTermJSON{Hash: t.xorb, UnpackedLength: t.unpacked, Range: casRange{t.start, t.end}})
			needed[t.xorb] = append(needed[t.xorb], casRange{t.start, t.end})
		}
		pos = tEnd
	}
	body := map[string]any{"offset_into_first_range": offset, "terms": terms}
	v1 := map[string][]v1FetchInfo{}
	v2 := map[string][]v2Fetch{}
	for xorb, rs := range needed {
		rs = mergeRanges(rs)
		h.mu.RLock()
		x := h.cas.xorbs[xorb]
		h.mu.RUnlock()
		var all []v2Range
		for _, cr := range rs {
			br := casRange{x.offsets[cr.Start], x.offsets[cr.End] - 1}
			all = append(all, v2Range{Chunks: cr, Bytes: br})
			v1[xorb] = append(v1[xorb], v1FetchInfo{Range: cr, URL: h.signedXorbURL(xorb, []casRange{br}), URLRange: br})
		}
		var brs []casRange
		for _, a := range all {
			brs = append(brs, a.Bytes)
		}
		v2[xorb] = []v2Fetch{{URL: h.signedXorbURL(xorb, brs), Ranges: all}}
	}
	if version == "v1" {
		body["fetch_info"] = v1
	} else {
		body["xorbs"] = v2
	}
	writeJSON(w, r, http.StatusOK, body)
}

// mergeRanges sorts chunk ranges and merges overlapping or adjacent ones.
func mergeRanges(rs []casRange) []casRange {
	sort.Slice(rs, func(i, j int) bool { return rs[i].Start < rs[j].Start })
	var out []casRange
	for _, r := range rs {
		if n := len(out); n > 0 && r.Start <= out[n-1].End {
			out[n-1].End = max(out[n-1].End, r.End)
			continue
		}
		out = append(out, r)
	}
	return out
}

// rangeHeader is the Range value a signed URL accepts.
func rangeHeader(brs []casRange) string {
	parts := make([]string, len(brs))
	for i, b := range brs {
		parts[i] = strconv.Itoa(b.Start) + "-" + strconv.Itoa(b.End)
	}
	return "bytes=" + strings.Join(parts, ",")
}

func (h *Hub) signedXorbURL(xorb string, brs []casRange) string {
	p := "/xorbs/default/" + xorb
	rg := rangeHeader(brs)
	expires := strconv.FormatInt(time.Now().Add(XorbURLLifetime).Unix(), 10)
	return h.transferURL() + p + "?X-Xet-Signed-Range=" + url.QueryEscape(rg) +
		"&Expires=" + expires + "&Signature=" + h.signXorb(p, rg, expires) + "&Key-Pair-Id=K1"
}

func (h *Hub) signXorb(p, rg, expires string) string {
	h.mu.RLock()
	gen := h.cas.signGen
	h.mu.RUnlock()
	m := hmac.New(sha256.New, *h.signKey.Load())
	m.Write([]byte("xorb\n" + strconv.Itoa(gen) + "\n" + p + "\n" + rg + "\n" + expires))
	return hex.EncodeToString(m.Sum(nil))
}

func (h *Hub) serveXorb(w http.ResponseWriter, r *http.Request, xorb string) {
	if len(r.Header.Values("Authorization")) > 0 {
		writeCDNError(w, r, http.StatusBadRequest, "InvalidArgument", "Only one auth mechanism allowed")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeCDNError(w, r, http.StatusMethodNotAllowed, "MethodNotAllowed", "The specified method is not allowed against this resource.")
		return
	}
	q := r.URL.Query()
	rg, expires := q.Get("X-Xet-Signed-Range"), q.Get("Expires")
	exp, err := strconv.ParseInt(expires, 10, 64)
	if err != nil || time.Now().Unix() > exp || q.Get("Key-Pair-Id") != "K1" ||
		!hmac.Equal([]byte(q.Get("Signature")), []byte(h.signXorb(r.URL.Path, rg, expires))) {
		writeCDNError(w, r, http.StatusForbidden, "AccessDenied", "Access denied")
		return
	}
	if strings.ReplaceAll(r.Header.Get("Range"), " ", "") != rg {
		writeCDNError(w, r, http.StatusForbidden, "AccessDenied", "Range does not match the signed range")
		return
	}
	h.mu.RLock()
	x := h.cas.xorbs[xorb]
	h.mu.RUnlock()
	if x == nil {
		writeCDNError(w, r, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	h.xorbFaults.ServeContent(h.xorbFetches.CountGET(w, r, xorb), r, xorb, x.data, time.Time{})
}

// parseOneRange parses "bytes=a-b" or "bytes=a-".
func parseOneRange(v string) (int64, int64, error) {
	spec, ok := strings.CutPrefix(v, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, 0, errBadRange
	}
	a, b, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, 0, errBadRange
	}
	start, err := strconv.ParseInt(a, 10, 64)
	if err != nil || start < 0 {
		return 0, 0, errBadRange
	}
	end := int64(1<<62 - 1)
	if b != "" {
		if end, err = strconv.ParseInt(b, 10, 64); err != nil || end < start {
			return 0, 0, errBadRange
		}
	}
	return start, end, nil
}

var errBadRange = &rangeError{}

type rangeError struct{}

func (*rangeError) Error() string { return "bad Range" }

// XetHashOf is the Xet file hash the fake gives a file holding data (with
// the default chunk size).
func XetHashOf(data []byte) string {
	_, h := xetLayout(data, XetChunkSize)
	return h.String()
}
