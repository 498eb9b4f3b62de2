package hfmirror

import (
	"context"
	"errors"
	"io"
	"sync/atomic"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/hfhub"
)

// XetFiles gives a Xet-backed file's bytes from the xorb ranges the
// gateway already holds (xet.Service implements it).
type XetFiles interface {
	// OpenFile returns the file's bytes from off on, assembled from its
	// xorb ranges; an error when they are not all stored and verified
	// against its Xet hash (provisional ranges are never assembled).
	OpenFile(xetHash string, size, off int64) (io.ReadCloser, error)
	// Distrust reports that bytes OpenFile gave failed the file's
	// digest (mismatch), or could not be read.
	Distrust(xetHash string, mismatch bool)
}

// xetAssembly is the source of one plain-HTTP fill of a Xet-backed file:
// the file's verified xorb ranges, assembled, as long as they serve; the
// upstream (CDN) for the rest of the fill once they do not (not verified
// to begin with, a range evicted or unreadable midway). The blob cache
// verifies the whole against the file's sha256 as for any fill; a
// mismatch fails that fill (its readers never get the final byte) and
// the next request's fill comes from the upstream (done).
type xetAssembly struct {
	m        *Mirror
	meta     hfhub.FileMeta
	path     string
	upstream cache.Source

	used   atomic.Bool // some bytes came from the xorb ranges
	off    atomic.Bool // the xorb ranges stopped serving: upstream from now on
	broken atomic.Bool // an assembled body failed midway
}

// xetAssembly returns the assembly for a fill of the file, nil when the
// file is not Xet-backed or the gateway keeps no xorbs.
func (m *Mirror) xetAssembly(route hfhub.Route, meta hfhub.FileMeta, upstream cache.Source) *xetAssembly {
	if m.XetFiles == nil || meta.XetHash == "" {
		return nil
	}
	return &xetAssembly{m: m, meta: meta, path: route.Repo.ID + "/" + route.Path, upstream: upstream}
}

func (a *xetAssembly) source(ctx context.Context, off, end int64) (io.ReadCloser, int64, error) {
	if !a.off.Load() {
		body, err := a.m.XetFiles.OpenFile(a.meta.XetHash, a.meta.Size, off)
		if err == nil {
			if a.used.CompareAndSwap(false, true) {
				a.m.Logger.Debug("assembling a plain-HTTP download from verified Xet xorb ranges",
					"file", a.path, "xet_hash", a.meta.XetHash, "size", a.meta.Size)
			}
			return &assembledBody{ReadCloser: body, a: a}, off, nil
		}
		a.stop(err)
	}
	return a.upstream(ctx, off, end)
}

// stop sends the rest of the fill upstream.
func (a *xetAssembly) stop(err error) {
	if a.off.Swap(true) {
		return
	}
	if a.used.Load() {
		a.m.Logger.Warn("the Xet xorb ranges stopped serving a download; the rest comes from upstream",
			"file", a.path, "xet_hash", a.meta.XetHash, "err", err)
		return
	}
	a.m.Logger.Debug("not assembling from Xet xorb ranges", "file", a.path, "why", err)
}

// done is the fill's outcome (cache.WithFillDone). Assembled bytes that
// the sha256 refused, or an assembly that broke midway (a chunk that does
// not decode, a range gone), make the Xet service check the file again:
// damaged ranges are dropped, and the file is not assembled until it is
// verified again. Runs before the fill leaves the cache's registry, so
// the next request for the file already sees the outcome.
func (a *xetAssembly) done(err error) {
	var dm *cache.DigestMismatchError
	mismatch := errors.As(err, &dm)
	if !a.used.Load() || !mismatch && !a.broken.Load() {
		return
	}
	if mismatch {
		a.m.Logger.Warn("a download assembled from Xet xorb ranges failed its sha256; the next one comes from upstream",
			"file", a.path, "xet_hash", a.meta.XetHash)
	}
	a.m.XetFiles.Distrust(a.meta.XetHash, mismatch)
}

// assembledBody counts the assembled bytes, and sends the rest of the
// fill upstream when the ranges fail midway (the fill resumes from the
// bytes it has, through source).
type assembledBody struct {
	io.ReadCloser
	a *xetAssembly
}

func (b *assembledBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 && b.a.m.Metrics != nil {
		b.a.m.Metrics.XetAssembledBytes.Add(float64(n))
	}
	if err != nil && err != io.EOF {
		b.a.broken.Store(true)
		b.a.stop(err)
	}
	return n, err
}
