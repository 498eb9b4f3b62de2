package xet

import (
	"errors"
	"fmt"
	"io"

	"github.com/modelgate/modelgate/indexkeys"
	"github.com/modelgate/modelgate/xet/xetchunk"
	"github.com/modelgate/modelgate/xet/xethash"
)

// ErrNotVerified refuses to assemble a file whose ranges are not all
// stored and checked against its Xet hash.
var ErrNotVerified = errors.New("xet: the file's xorb ranges are not all stored and verified")

// OpenFile returns the bytes of the file fileHash from off on, assembled
// from its xorb ranges in the store as a Xet client assembles them: the
// terms of its reconstruction in order, each term's chunks decoded
// (uncompressed, LZ4, byte-grouped LZ4) behind their headers. Only a file
// Verified now, whose terms add up to size: provisional ranges (not yet
// checked against the file hash) are never assembled (ErrNotVerified).
//
// The reader opens one range at a time. A range gone meanwhile (evicted),
// or a chunk that does not decode or a term whose length differs from the
// reconstruction's, ends it with an error: the bytes it gave until then
// are the ones the stored ranges hold. The Xet hash covers every chunk, so
// a verified file assembles to its content; the caller still checks the
// whole against the file's own digest (the blob cache's sha256), which
// also catches a range damaged on disk after it was verified (Distrust).
func (s *Service) OpenFile(fileHash string, size, off int64) (io.ReadCloser, error) {
	if s.untrusted(fileHash) || !s.Verified(fileHash) {
		return nil, ErrNotVerified
	}
	rec := s.knownRecon(fileHash)
	if rec == nil {
		return nil, ErrNotVerified
	}
	var total int64
	for _, t := range rec.terms {
		total += t.UnpackedLength
	}
	if total != size {
		return nil, fmt.Errorf("xet: the reconstruction of %s is %d bytes, not %d", fileHash, total, size)
	}
	if off < 0 || off > size {
		return nil, fmt.Errorf("xet: offset %d outside a file of %d bytes", off, size)
	}
	fr := &fileReader{s: s, rec: rec}
	// The first term that holds off (or none, at the very end).
	var pos int64
	for fr.next = 0; fr.next < len(rec.terms) && pos+rec.terms[fr.next].UnpackedLength <= off; fr.next++ {
		pos += rec.terms[fr.next].UnpackedLength
	}
	fr.skip = off - pos
	return fr, nil
}

// fileReader streams a verified file's bytes from its stored ranges.
type fileReader struct {
	s    *Service
	rec  *recon
	next int   // the next term to open
	skip int64 // bytes of the next term's start to leave out (the first one only)

	// The current term: its range open in the store, the chunks still to
	// read of it, the bytes it gave so far and must give in all.
	cur       part
	open      bool
	chunks    *chunkCursor
	left      int64
	got, want int64
	term      int
	buf       []byte // the rest of the current chunk
	err       error
	verified  map[string]chunkRecord // xorb -> its verified chunks, loaded once per reader
}

func (fr *fileReader) Read(p []byte) (int, error) {
	for len(fr.buf) == 0 {
		if fr.err != nil {
			return 0, fr.err
		}
		fr.err = fr.advance()
	}
	n := copy(p, fr.buf)
	fr.buf = fr.buf[n:]
	return n, nil
}

// advance fills buf with the next chunk's bytes (what is left of it after
// the skip), moving to the next term when the current one is done, or
// returns io.EOF after the last term.
func (fr *fileReader) advance() error {
	if fr.open && fr.left == 0 {
		if fr.got != fr.want {
			return fmt.Errorf("xet: term %d gave %d bytes, not %d", fr.term, fr.got, fr.want)
		}
		fr.closeTerm()
	}
	if !fr.open {
		if fr.next >= len(fr.rec.terms) {
			return io.EOF
		}
		if err := fr.openTerm(fr.next); err != nil {
			return err
		}
		fr.next++
	}
	// Whole chunks before the offset are skipped by their headers, not
	// decoded.
	for fr.skip > 0 && fr.left > 0 {
		h, err := fr.chunks.header()
		if err != nil {
			return err
		}
		if int64(h.Uncompressed) > fr.skip {
			break
		}
		if err := fr.chunks.skipBody(h); err != nil {
			return err
		}
		fr.skip -= int64(h.Uncompressed)
		fr.got += int64(h.Uncompressed)
		fr.left--
	}
	if fr.left == 0 {
		return nil // the term ended within the skip: checked on the next call
	}
	c, err := fr.chunks.next()
	if err != nil {
		return err
	}
	t := fr.rec.terms[fr.term]
	if err := fr.check(t.Hash, t.Range.End-fr.left, c); err != nil {
		return err
	}
	fr.left--
	fr.got += int64(len(c))
	if fr.skip > 0 {
		c = c[fr.skip:]
		fr.skip = 0
	}
	fr.buf = c
	return nil
}

// openTerm opens the stored range that holds term i's chunks and moves to
// the first of them.
func (fr *fileReader) openTerm(i int) error {
	t := fr.rec.terms[i]
	rg, ok := fr.rangeOf(t)
	if !ok {
		return fmt.Errorf("xet: no range of the reconstruction holds term %d (xorb %s, chunks %d-%d)", i, t.Hash, t.Range.Start, t.Range.End)
	}
	p, ok := fr.s.locate(t.Hash, byteRange{rg.Bytes.Start, rg.Bytes.End})
	if !ok {
		return fmt.Errorf("xet: the range %d-%d of xorb %s is no longer stored", rg.Bytes.Start, rg.Bytes.End, t.Hash)
	}

	fr.cur, fr.open = p, true
	fr.chunks = &chunkCursor{r: io.NewSectionReader(p.blob.File(), p.off, p.n)}
	fr.term, fr.got, fr.want = i, 0, t.UnpackedLength
	fr.left = t.Range.End - t.Range.Start
	for range t.Range.Start - rg.Chunks.Start {
		h, err := fr.chunks.header()
		if err != nil {
			return err
		}
		if err := fr.chunks.skipBody(h); err != nil {
			return err
		}
	}
	return nil
}

// rangeOf is the reconstruction's range of t's xorb whose chunks hold t's.
func (fr *fileReader) rangeOf(t wireTerm) (wireV2Range, bool) {
	for _, f := range fr.rec.fetches[t.Hash] {
		for _, rg := range f.Ranges {
			if rg.Chunks.Start <= t.Range.Start && rg.Chunks.End >= t.Range.End {
				return rg, true
			}
		}
	}
	return wireV2Range{}, false
}

func (fr *fileReader) closeTerm() {
	if fr.open {
		fr.cur.blob.Close()
		fr.open = false
	}
}

func (fr *fileReader) Close() error {
	fr.closeTerm()
	if fr.err == nil {
		fr.err = errors.New("xet: file reader closed")
	}
	return nil
}

// chunkCursor walks the chunks of stored xorb bytes: a header read ahead
// can be skipped past (seeking over the chunk's stored bytes) or decoded.
type chunkCursor struct {
	r      io.ReadSeeker
	hdr    [xetchunk.HeaderSize]byte
	have   bool // hdr holds the next chunk's header, already read
	parsed xetchunk.Header
	stored []byte
}

func (c *chunkCursor) header() (xetchunk.Header, error) {
	if c.have {
		return c.parsed, nil
	}
	if _, err := io.ReadFull(c.r, c.hdr[:]); err != nil {
		return xetchunk.Header{}, fmt.Errorf("xet chunk: header: %w", noEOF(err))
	}
	h, err := xetchunk.ParseHeader(c.hdr[:])
	if err != nil {
		return xetchunk.Header{}, err
	}
	c.parsed, c.have = h, true
	return h, nil
}

func (c *chunkCursor) skipBody(h xetchunk.Header) error {
	c.have = false
	if _, err := c.r.Seek(int64(h.Stored), io.SeekCurrent); err != nil {
		return fmt.Errorf("xet chunk: %w", err)
	}
	return nil
}

// next decodes the next chunk (its bytes are valid until the next call).
func (c *chunkCursor) next() ([]byte, error) {
	h, err := c.header()
	if err != nil {
		return nil, err
	}
	c.have = false
	if cap(c.stored) < h.Stored {
		c.stored = make([]byte, h.Stored)
	}
	stored := c.stored[:h.Stored]
	if _, err := io.ReadFull(c.r, stored); err != nil {
		return nil, fmt.Errorf("xet chunk: body: %w", noEOF(err))
	}
	return xetchunk.Decode(h, stored)
}

// noEOF turns an early end of the stored bytes into an error that no
// reader takes for the end of the file.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Distrust is what a caller reports when bytes assembled from the file's
// ranges (OpenFile) failed the file's own digest (mismatch), or could not
// be read (a range gone, a chunk that does not decode or differs from the
// one verified, a chunk without a recorded hash): the file is no longer
// taken as verified and is checked against its Xet hash again from the
// stored ranges, which records its chunks' hashes again. Damaged ranges
// fail it and are dropped, so Xet clients and later assemblies get them
// fetched and checked again; ranges merely gone (evicted) leave it
// unverified until they are back and checked. After a digest mismatch,
// ranges that all pass again leave a disagreement between the Xet hash and
// the digest that nothing here explains: this process then never
// assembles that file again (its downloads come from upstream). It may
// wait for the readers of dropped ranges (up to a minute).
func (s *Service) Distrust(fileHash string, mismatch bool) {
	s.mu.Lock()
	s.distrusted[fileHash] = true // no assembly while the check runs
	s.mu.Unlock()
	_ = s.opts.Index.Delete(indexkeys.XetVerifiedKey(fileHash))
	// A check of this file already in flight may have seen the mark and
	// passed without reading a range: this one must start afresh.
	s.checks.Forget(fileHash)
	dropped := s.verify(fileHash)
	if mismatch && !dropped && s.Verified(fileHash) {
		s.opts.Logger.Warn("xet: a file assembled from its xorb ranges failed its digest although its ranges match its Xet hash; it is no longer assembled", "file", fileHash)
		return
	}
	if dropped {
		s.opts.Logger.Warn("xet: a file assembled from its xorb ranges failed; its damaged ranges were dropped", "file", fileHash)
	}
	s.mu.Lock()
	delete(s.distrusted, fileHash) // once fetched and verified again, assembled again
	s.mu.Unlock()
}

// untrusted reports whether Distrust ruled the file out of assembly.
func (s *Service) untrusted(fileHash string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.distrusted[fileHash]
}

// check holds chunk ci of xorb, decoded, against the hash and size a
// verified file recorded for it (chunks.go), before any of it is sent: a
// range damaged or replaced since, or fetched for a file never checked,
// stops the reader here. A chunk without a record is not assembled.
func (fr *fileReader) check(xorb string, ci int64, c []byte) error {
	rec, ok := fr.verified[xorb]
	if !ok {
		rec = fr.s.verifiedChunks(xorb)
		if fr.verified == nil {
			fr.verified = map[string]chunkRecord{}
		}
		fr.verified[xorb] = rec
	}
	want, ok := rec[ci]
	if !ok {
		return fmt.Errorf("xet: chunk %d of xorb %s has no verified hash: %w", ci, xorb, ErrNotVerified)
	}
	if uint64(len(c)) != want.Size || xethash.Chunk(c) != want.Hash {
		return fmt.Errorf("xet: chunk %d of xorb %s differs from the chunk that was verified", ci, xorb)
	}
	return nil
}
