// Package blobhttp answers an HTTP request with a cached blob: a full 200,
// one exact byte range (206), 304 for a matching If-None-Match, or 416.
//
// Ranges are handled here rather than by http.ServeContent because a blob
// that is still being filled must be streamed through a reader that holds
// back the final byte of each answer until the blob has verified, and the
// answer must then be aborted, not completed, if it fails. A published blob
// is still copied from its *os.File through an io.LimitedReader, which is
// the shape net/http hands to sendfile.
package blobhttp

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/modelgate/modelgate/cache"
)

// Source says where the body bytes of an answer came from.
type Source int

const (
	// FromCache: a published blob on disk.
	FromCache Source = iota
	// FromFill: a blob being filled from the upstream right now.
	FromFill
)

// ErrIncomplete wraps a failure after the status line was sent: the caller
// must abort the connection (panic(http.ErrAbortHandler)) so that the
// client sees a broken answer rather than a short or wrong one.
var ErrIncomplete = errors.New("answer aborted mid-body")

// Opener returns the blob to send; Serve calls it only when the answer has
// a body (not for HEAD, 304 or 416), and before any header is written, so
// that a refusal can still become a proper error answer.
type Opener func() (*cache.Blob, error)

// Serve answers r with the blob of the given size and entity tag (quoted,
// strong). The caller sets every header other than Content-Length,
// Content-Range, Accept-Ranges and ETag before calling. It returns the
// number of body bytes written and where they came from. An error that
// does not wrap ErrIncomplete came from open, before anything was written.
func Serve(w http.ResponseWriter, r *http.Request, size int64, etag string, open Opener) (int64, Source, error) {
	src := FromCache
	h := w.Header()
	if etag != "" { // "" for content whose hash is not known yet
		h.Set("ETag", etag)
	}
	h.Set("Accept-Ranges", "bytes")
	if h.Get("Content-Type") == "" {
		h.Set("Content-Type", "application/octet-stream")
	}
	if inm := r.Header.Get("If-None-Match"); inm != "" && etag != "" && etagMatches(inm, etag) {
		h.Del("Content-Type")
		w.WriteHeader(http.StatusNotModified)
		return 0, src, nil
	}

	start, end, status := int64(0), size-1, http.StatusOK
	if rng := r.Header.Get("Range"); rng != "" && ifRangeHolds(r.Header.Get("If-Range"), etag) {
		s, e, ok, satisfiable := parseRange(rng, size)
		switch {
		case ok && !satisfiable:
			h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			h.Del("Content-Type")
			http.Error(w, "requested range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
			return 0, src, nil
		case ok:
			start, end, status = s, e, http.StatusPartialContent
			h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", s, e, size))
		}
	}
	n := end - start + 1
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	if r.Method == http.MethodHead || n == 0 {
		w.WriteHeader(status)
		return 0, src, nil
	}
	b, err := open()
	if err != nil {
		h.Del("Content-Length")
		h.Del("Content-Range")
		return 0, src, err
	}
	defer b.Close()
	if b.Size != size {
		return 0, src, fmt.Errorf("blob is %d bytes, answer promised %d", b.Size, size)
	}
	w.WriteHeader(status)

	var written int64
	if f := b.File(); f != nil {
		if _, err := f.Seek(start, io.SeekStart); err != nil {
			return 0, src, fmt.Errorf("%w: seeking blob: %w", ErrIncomplete, err)
		}
		written, err = io.CopyN(w, f, n)
	} else {
		src = FromFill
		rd, rerr := b.NewReader(r.Context(), start, end+1)
		if rerr != nil {
			return 0, src, fmt.Errorf("%w: %w", ErrIncomplete, rerr)
		}
		defer rd.Close()
		// Not CopyN: its LimitReader would hide the reader's WriteTo,
		// which sends the landed bytes from the file with sendfile. The
		// reader ends at end+1 by itself.
		written, err = io.Copy(w, rd)
		if err == nil && written < n {
			err = io.ErrUnexpectedEOF
		}
	}
	if err != nil {
		return written, src, fmt.Errorf("%w: %w", ErrIncomplete, err)
	}
	return written, src, nil
}

// parseRange parses a single byte range against size. ok is false when the
// header is to be ignored (not bytes, several ranges, malformed): the full
// content is then served, as RFC 9110 allows. An end past the last byte is
// clamped (hf_transfer asks one byte past EOF); only a start at or past the
// end is unsatisfiable.
func parseRange(v string, size int64) (start, end int64, ok, satisfiable bool) {
	spec, found := strings.CutPrefix(strings.TrimSpace(v), "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false, false
	}
	first, last, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, 0, false, false
	}
	if first == "" { // suffix: the last N bytes
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n < 0 {
			return 0, 0, false, false
		}
		if n == 0 || size == 0 {
			return 0, 0, true, false
		}
		return max(size-n, 0), size - 1, true, true
	}
	s, err := strconv.ParseInt(first, 10, 64)
	if err != nil || s < 0 {
		return 0, 0, false, false
	}
	e := size - 1
	if last != "" {
		e, err = strconv.ParseInt(last, 10, 64)
		if err != nil || e < s {
			return 0, 0, false, false
		}
	}
	if s >= size {
		return 0, 0, true, false
	}
	return s, min(e, size-1), true, true
}

// etagMatches implements the weak comparison If-None-Match uses.
func etagMatches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == strings.TrimPrefix(etag, "W/") {
			return true
		}
	}
	return false
}

// ifRangeHolds reports whether a Range may be honoured given If-Range: only
// when absent or equal (strongly) to the current entity tag. A date is
// treated as not matching, since blobs carry no modification time.
func ifRangeHolds(ifRange, etag string) bool {
	return ifRange == "" || (etag != "" && ifRange == etag)
}
