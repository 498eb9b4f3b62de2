// Package xetclient is a small Xet download client for tests: it follows
// the protocol the way hf_xet and @huggingface/hub do (UPSTREAMS.md §3.3,
// 3.5) — token from the xet-auth URL, reconstruction (v2, falling back to
// v1 on 404/501), xorb ranges fetched from the signed URLs without
// Authorization (several ranges in one multi-range request), chunks decoded
// behind their 8-byte headers, terms reassembled — and re-queries the
// reconstruction once when a xorb URL answers 403, as the real clients do.
// Chunks of every compression scheme are decoded (xet/xetchunk).
package xetclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/modelgate/modelgate/xet/xetchunk"
)

// Token is the xet-read-token answer.
type Token struct {
	AccessToken string `json:"accessToken"`
	Exp         int64  `json:"exp"`
	CasURL      string `json:"casUrl"`
}

// Range is a start/end pair (chunk ranges end-exclusive, byte ranges
// end-inclusive, as on the wire).
type Range struct {
	Start int64 `json:"start"`
	End   int64 `json:"end"`
}

// Term is one reconstruction term.
type Term struct {
	Hash           string `json:"hash"`
	UnpackedLength int64  `json:"unpacked_length"`
	Range          Range  `json:"range"`
}

// Fetch is one signed URL and the ranges it serves (v1 entries become one
// Fetch each).
type Fetch struct {
	URL    string `json:"url"`
	Ranges []struct {
		Chunks Range `json:"chunks"`
		Bytes  Range `json:"bytes"`
	} `json:"ranges"`
}

// Reconstruction is a v2 answer (v1 answers are converted).
type Reconstruction struct {
	OffsetIntoFirstRange int64              `json:"offset_into_first_range"`
	Terms                []Term             `json:"terms"`
	Xorbs                map[string][]Fetch `json:"xorbs"`
	FetchInfo            map[string][]struct {
		Range    Range  `json:"range"`
		URL      string `json:"url"`
		URLRange Range  `json:"url_range"`
	} `json:"fetch_info"`
}

// Client downloads Xet files.
type Client struct {
	HTTP *http.Client
	// Header is added to the token request (e.g. the worker's key).
	Header http.Header
	// V1 asks /v1/ reconstructions only.
	V1 bool
	// Requests counts xorb GETs, Retries the 403-triggered re-queries.
	Requests, Retries int
	// BeforeFetch, if set, runs before each xorb GET with the number of
	// GETs done so far (tests use it to expire URLs mid-download).
	BeforeFetch func(done int)
	// Parallel is how many xorb GETs run at once (default 1), as hf_xet
	// and @huggingface/hub fetch several at a time.
	Parallel int

	mu sync.Mutex // guards Requests and BeforeFetch's order
}

// GetToken fetches the token from the xet-auth URL.
func (c *Client) GetToken(authURL string) (Token, error) {
	req, err := http.NewRequest(http.MethodGet, authURL, nil)
	if err != nil {
		return Token{}, err
	}
	for k, v := range c.Header {
		req.Header[k] = v
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return Token{}, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return Token{}, &StatusError{Status: resp.StatusCode, What: "token", Body: string(body)}
	}
	var t Token
	if err := json.Unmarshal(body, &t); err != nil {
		return Token{}, fmt.Errorf("token: %w", err)
	}
	return t, nil
}

// StatusError is a non-success answer.
type StatusError struct {
	Status int
	What   string
	Body   string
}

func (e *StatusError) Error() string { return fmt.Sprintf("%s: HTTP %d: %s", e.What, e.Status, e.Body) }

// Reconstruct asks casURL for fileHash's reconstruction with token.
func (c *Client) Reconstruct(casURL, token, fileHash string) (*Reconstruction, error) {
	versions := []string{"v2", "v1"}
	if c.V1 {
		versions = []string{"v1"}
	}
	for _, v := range versions {
		req, err := http.NewRequest(http.MethodGet, strings.TrimSuffix(casURL, "/")+"/"+v+"/reconstructions/"+fileHash, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := c.HTTP.Do(req)
		if err != nil {
			return nil, err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if (resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusNotImplemented) && v == "v2" {
			continue
		}
		if resp.StatusCode != http.StatusOK {
			return nil, &StatusError{Status: resp.StatusCode, What: "reconstruction", Body: string(body)}
		}
		var rec Reconstruction
		if err := json.Unmarshal(body, &rec); err != nil {
			return nil, fmt.Errorf("reconstruction: %w", err)
		}
		if rec.Xorbs == nil {
			rec.Xorbs = map[string][]Fetch{}
			for x, fis := range rec.FetchInfo {
				for _, fi := range fis {
					f := Fetch{URL: fi.URL}
					f.Ranges = append(f.Ranges, struct {
						Chunks Range `json:"chunks"`
						Bytes  Range `json:"bytes"`
					}{fi.Range, fi.URLRange})
					rec.Xorbs[x] = append(rec.Xorbs[x], f)
				}
			}
		}
		return &rec, nil
	}
	return nil, errors.New("reconstruction: no version answered")
}

// Download reconstructs fileHash from casURL with token.
func (c *Client) Download(casURL, token, fileHash string) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		rec, err := c.Reconstruct(casURL, token, fileHash)
		if err != nil {
			return nil, err
		}
		out, err := c.assemble(rec)
		var se *StatusError
		if errors.As(err, &se) && se.Status == http.StatusForbidden && attempt == 0 {
			c.Retries++
			continue
		}
		return out, err
	}
}

// chunkSpan is the decoded chunks of one fetched byte range.
type chunkSpan struct {
	first  int64 // chunk index of the first chunk
	chunks [][]byte
}

func (c *Client) assemble(rec *Reconstruction) ([]byte, error) {
	type job struct {
		xorb string
		f    Fetch
	}
	var jobs []job
	for xorb, fetches := range rec.Xorbs {
		for _, f := range fetches {
			jobs = append(jobs, job{xorb, f})
		}
	}
	var mu sync.Mutex
	spans := map[string][]chunkSpan{}
	// Once a GET fails, the ones not started yet are not sent, as a
	// sequential client would stop at the first failure.
	g, stopped := errgroup.WithContext(context.Background())
	g.SetLimit(max(c.Parallel, 1))
	for _, j := range jobs {
		g.Go(func() error {
			if stopped.Err() != nil {
				return nil
			}
			parts, err := c.fetch(j.f)
			if err != nil {
				return fmt.Errorf("xorb %s: %w", j.xorb, err)
			}
			for i, p := range parts {
				chunks, err := DecodeChunks(p)
				if err != nil {
					return fmt.Errorf("xorb %s: %w", j.xorb, err)
				}
				want := j.f.Ranges[i].Chunks.End - j.f.Ranges[i].Chunks.Start
				if int64(len(chunks)) != want {
					return fmt.Errorf("xorb %s: %d chunks in a range of %d", j.xorb, len(chunks), want)
				}
				mu.Lock()
				spans[j.xorb] = append(spans[j.xorb], chunkSpan{first: j.f.Ranges[i].Chunks.Start, chunks: chunks})
				mu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	// The file's size is known from the terms: one allocation, as a real
	// client writes into the file it created at that size.
	total := -rec.OffsetIntoFirstRange
	for _, t := range rec.Terms {
		total += t.UnpackedLength
	}
	out := bytes.NewBuffer(make([]byte, 0, max(total, 0)))
	skip := rec.OffsetIntoFirstRange // of the first term's bytes
	for i, t := range rec.Terms {
		var n int64
		for ci := t.Range.Start; ci < t.Range.End; ci++ {
			ch, ok := findChunk(spans[t.Hash], ci)
			if !ok {
				return nil, fmt.Errorf("term %d: chunk %d of xorb %s not fetched", i, ci, t.Hash)
			}
			n += int64(len(ch))
			if skip >= int64(len(ch)) {
				skip -= int64(len(ch))
				continue
			}
			out.Write(ch[skip:])
			skip = 0
		}
		if n != t.UnpackedLength {
			return nil, fmt.Errorf("term %d: %d bytes, want %d", i, n, t.UnpackedLength)
		}
	}
	return out.Bytes(), nil
}

func findChunk(spans []chunkSpan, idx int64) ([]byte, bool) {
	for _, s := range spans {
		if idx >= s.first && idx < s.first+int64(len(s.chunks)) {
			return s.chunks[idx-s.first], true
		}
	}
	return nil, false
}

// fetch GETs f's URL with its ranges and returns one byte slice per range.
func (c *Client) fetch(f Fetch) ([][]byte, error) {
	specs := make([]string, len(f.Ranges))
	for i, r := range f.Ranges {
		specs[i] = strconv.FormatInt(r.Bytes.Start, 10) + "-" + strconv.FormatInt(r.Bytes.End, 10)
	}
	req, err := http.NewRequest(http.MethodGet, f.URL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", "bytes="+strings.Join(specs, ","))
	c.mu.Lock()
	if c.BeforeFetch != nil {
		c.BeforeFetch(c.Requests)
	}
	c.Requests++
	c.mu.Unlock()
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		body, _ := io.ReadAll(resp.Body)
		return nil, &StatusError{Status: resp.StatusCode, What: "xorb", Body: string(body)}
	}
	if len(f.Ranges) == 1 {
		want := f.Ranges[0].Bytes.End - f.Ranges[0].Bytes.Start + 1
		b := make([]byte, want)
		if _, err := io.ReadFull(resp.Body, b); err != nil {
			return nil, fmt.Errorf("want %d bytes: %w", want, err)
		}
		if n, _ := resp.Body.Read(make([]byte, 1)); n > 0 {
			return nil, fmt.Errorf("more than the %d bytes asked", want)
		}
		return [][]byte{b}, nil
	}
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/byteranges" {
		return nil, fmt.Errorf("multi-range answer is %q, want multipart/byteranges", resp.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	var out [][]byte
	for i := 0; ; i++ {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if i >= len(f.Ranges) {
			return nil, errors.New("more parts than ranges")
		}
		want := fmt.Sprintf("bytes %d-%d/", f.Ranges[i].Bytes.Start, f.Ranges[i].Bytes.End)
		if !strings.HasPrefix(p.Header.Get("Content-Range"), want) {
			return nil, fmt.Errorf("part %d is %q, want %s...", i, p.Header.Get("Content-Range"), want)
		}
		b, err := io.ReadAll(p)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	if len(out) != len(f.Ranges) {
		return nil, fmt.Errorf("%d parts for %d ranges", len(out), len(f.Ranges))
	}
	return out, nil
}

// DecodeChunks splits xorb bytes into their chunks' uncompressed bytes,
// checking each 8-byte header (schemes 0, 1 and 2, as hf_xet decodes them).
func DecodeChunks(b []byte) ([][]byte, error) { return xetchunk.DecodeAll(b) }
