package s3tier

// The upload of a blob too large for one part runs beside its fill, so that
// a holder that dies leaves its successor everything it had already sent:
//
//   - the holder starts a multipart upload under the blob's key (invisible
//     until completed) and records it in uploads/<algo>/<hex>;
//   - each time the contiguous bytes on its disk pass a part boundary, it
//     uploads that part from its disk, adds the part to the blob's hash (the
//     hash over parts 1..n, in order; the fill's own hash runs apart, over
//     the local file), then rewrites the record with the part's etag and the
//     hash's marshalled state, If-Match the record's previous version: the
//     record always describes parts that are in the bucket, and a holder
//     whose write is refused has been replaced and stops;
//   - a successor (an expired lease taken over, or a lease released after a
//     failed fill) reads the record, checks the parts against the upload,
//     restores the hash, claims the record (its own If-Match write, so the
//     old holder's next write fails), and asks the cache to fetch only the
//     bytes after the last recorded part from the upstream. Once those are
//     on its disk it uploads the remaining parts and completes; then it
//     reads the first bytes for its own disk from the completed blob in the
//     bucket. S3 cannot read the parts of an incomplete upload, and
//     fetching them from the upstream again is what this is to avoid, so
//     the successor's clients wait for those first bytes until the blob is
//     complete; its upstream bytes are size - (recorded parts × part size);
//   - completion happens only after the hash over all parts equals the
//     blob's digest, and is fenced twice: the lease is renewed (If-Match)
//     immediately before, so a holder that lost it (a partition, a long
//     stall) finds out and does not complete; and the completion itself is
//     conditional (If-None-Match: *, which versitygw ≥ 1.8, AWS S3, MinIO,
//     R2 and Ceph honour on CompleteMultipartUpload), so even a holder that
//     stalls between the renewal and the completion cannot replace a blob
//     its successor published. Whatever completes was verified, so the
//     bucket never holds an unverified blob under its content id;
//   - a fill that fails on content (digest or size mismatch) aborts the
//     upload and deletes the record: which part was wrong is unknown. Any
//     other failure (the upstream gone, shutdown) leaves both for the next
//     holder. An upload nobody resumes stays incomplete in the bucket; a
//     lifecycle rule AbortIncompleteMultipartUpload removes it.

import (
	"bytes"
	"context"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/modelgate/modelgate/cache"
)

// minPartSize is S3's smallest part (but the last); versitygw enforces it.
const minPartSize = 5 << 20

// maxParts is S3's most parts of one upload.
const maxParts = 10000

// errLeaseLost: another node took the lease over; this one must neither
// write the upload's record nor complete the upload.
var errLeaseLost = errors.New("the fill lease was taken over by another gateway")

// errClaimRace: the record changed between reading and claiming it.
var errClaimRace = errors.New("the upload record changed while claiming it")

// errStopped: the fill ended before the uploader had every part.
var errStopped = errors.New("fill ended before the upload")

// uploadState is the record at uploads/<algo>/<hex>.
type uploadState struct {
	UploadID string      `json:"upload_id"`
	Size     int64       `json:"size"`
	PartSize int64       `json:"part_size"`
	Parts    []statePart `json:"parts"`
	// Hash is the marshalled state of the blob's hash (Digest.NewHash)
	// after the bytes of Parts.
	Hash []byte `json:"hash_state"`
	// For an operator reading the bucket.
	Node    string    `json:"node"`
	Written time.Time `json:"written"`
}

type statePart struct {
	N    int    `json:"n"`
	ETag string `json:"etag"`
}

// done is how many bytes from the blob's start the recorded parts hold.
func (st *uploadState) done() int64 { return min(int64(len(st.Parts))*st.PartSize, st.Size) }

func (st *uploadState) numParts() int { return int((st.Size + st.PartSize - 1) / st.PartSize) }

func (t *Tier) uploadKey(d cache.Digest) string {
	return t.prefix + "uploads/" + string(d.Algo) + "/" + d.Hex
}

// partSizeFor is the configured part size, raised for a blob that would
// need more parts than S3 allows (to a whole MiB).
func (t *Tier) partSizeFor(size int64) int64 {
	ps := int64(t.partSize)
	if need := (size + maxParts - 1) / maxParts; need > ps {
		ps = (need + 1<<20 - 1) &^ (1<<20 - 1)
	}
	return ps
}

// getState reads the upload record of d; nil when there is none.
func (t *Tier) getState(ctx context.Context, d cache.Digest) (*uploadState, string, error) {
	body, info, _, err := t.core.GetObject(ctx, t.bucket, t.uploadKey(d), minio.GetObjectOptions{})
	if isNotFound(err) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("s3tier: reading upload record of %s: %w", d, err)
	}
	defer body.Close()
	var st uploadState
	if err := json.NewDecoder(body).Decode(&st); err != nil {
		// Unreadable: replaced like an unusable one.
		return &uploadState{}, trimETag(info.ETag), nil
	}
	return &st, trimETag(info.ETag), nil
}

// putState writes the upload record: create-only when match is "", else
// only over the version with etag match. It returns the new etag.
func (t *Tier) putState(ctx context.Context, d cache.Digest, st *uploadState, match string) (string, error) {
	st.Node, st.Written = t.node, time.Now().UTC()
	body, err := json.Marshal(st)
	if err != nil {
		return "", err
	}
	opts := minio.PutObjectOptions{ContentType: "application/json", DisableMultipart: true}
	if match == "" {
		opts.SetMatchETagExcept("*")
	} else {
		opts.SetMatchETag(match)
	}
	info, err := t.c.PutObject(ctx, t.bucket, t.uploadKey(d), bytes.NewReader(body), int64(len(body)), opts)
	if err != nil {
		return "", err
	}
	return trimETag(info.ETag), nil
}

// deleteState removes the upload record if it is still the version with
// etag (S3 has no conditional DELETE everywhere: look first).
func (t *Tier) deleteState(ctx context.Context, d cache.Digest, etag string) {
	info, err := t.c.StatObject(ctx, t.bucket, t.uploadKey(d), minio.StatObjectOptions{})
	if err != nil || trimETag(info.ETag) != etag {
		return
	}
	_ = t.c.RemoveObject(ctx, t.bucket, t.uploadKey(d), minio.RemoveObjectOptions{})
}

// upload is the multipart upload of one blob by the lease holder.
type upload struct {
	t    *Tier
	l    *lease
	d    cache.Digest
	size int64

	st        uploadState
	stateETag string    // of our last write of the record
	h         hash.Hash // over the parts in st.Parts
	resumed   bool
	skip      int64 // the bytes the recorded parts held when this holder began

	ctx     context.Context // the uploader's requests
	cancel  context.CancelFunc
	partial chan cache.Partial
	stop    chan struct{} // the fill failed: no more bytes will come
	stopped sync.Once
	ended   chan struct{} // closed when run returned, with err set
	err     error

	mu        sync.Mutex
	completed bool
}

// startUpload resumes the upload another holder recorded for d, or
// starts one. The caller holds the lease of d.
func (t *Tier) startUpload(ctx context.Context, l *lease, d cache.Digest, size int64) (*upload, error) {
	u := &upload{t: t, l: l, d: d, size: size, partial: make(chan cache.Partial, 1), stop: make(chan struct{}), ended: make(chan struct{})}
	var (
		st   *uploadState
		etag string
		ok   bool
		err  error
	)
	for range 3 {
		if st, etag, err = t.getState(ctx, d); err != nil || st == nil {
			break
		}
		if ok, err = u.resume(ctx, st, etag); !errors.Is(err, errClaimRace) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	if st != nil {
		if !ok {
			// Unusable (another size, its upload gone, parts missing):
			// its upload is ours to clean up, and the record is replaced.
			if st.UploadID != "" {
				_ = t.core.AbortMultipartUpload(ctx, t.bucket, t.blobKey(d), st.UploadID)
			}
			t.log.Info("replacing an unusable upload record", "blob", d.String())
		}
	}
	if !u.resumed {
		if err := u.begin(ctx, etag); err != nil {
			return nil, err
		}
	}
	u.skip = u.st.done()
	u.ctx, u.cancel = context.WithCancel(context.Background())
	go u.run()
	return u, nil
}

// begin starts a new multipart upload and records it, over the record
// version match ("" when there is none).
func (u *upload) begin(ctx context.Context, match string) error {
	t := u.t
	id, err := t.core.NewMultipartUpload(ctx, t.bucket, t.blobKey(u.d), minio.PutObjectOptions{ContentType: "application/octet-stream"})
	if err != nil {
		return fmt.Errorf("s3tier: starting upload of %s: %w", u.d, err)
	}
	u.h = u.d.NewHash(u.size)
	hs, err := u.h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return err
	}
	u.st = uploadState{UploadID: id, Size: u.size, PartSize: t.partSizeFor(u.size), Hash: hs}
	if u.stateETag, err = t.putState(ctx, u.d, &u.st, match); err != nil {
		_ = t.core.AbortMultipartUpload(ctx, t.bucket, t.blobKey(u.d), id)
		return fmt.Errorf("s3tier: recording upload of %s: %w", u.d, err)
	}
	return nil
}

// resume takes over the recorded upload st (record version etag) if it is
// usable: the same blob, its parts in the upload with the recorded etags,
// a hash state that restores. It claims the record with an If-Match write.
func (u *upload) resume(ctx context.Context, st *uploadState, etag string) (bool, error) {
	t := u.t
	if st.UploadID == "" || st.Size != u.size || st.PartSize < minPartSize || len(st.Parts) > st.numParts() || st.numParts() > maxParts {
		return false, nil
	}
	for i, p := range st.Parts {
		if p.N != i+1 {
			return false, nil
		}
	}
	h := u.d.NewHash(u.size)
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(st.Hash); err != nil {
		return false, nil
	}
	have, err := t.listParts(ctx, u.d, st.UploadID)
	if isNoSuchUpload(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, p := range st.Parts {
		got, ok := have[p.N]
		if !ok || trimETag(got.ETag) != trimETag(p.ETag) || got.Size != min(st.PartSize, st.Size-int64(p.N-1)*st.PartSize) {
			return false, nil
		}
	}
	newETag, err := t.putState(ctx, u.d, st, etag)
	if isPreconditionFailed(err) {
		// The old holder wrote in between; it is still alive but no
		// longer holds the lease. Take what it wrote.
		return false, errClaimRace
	}
	if err != nil {
		return false, fmt.Errorf("s3tier: claiming upload record of %s: %w", u.d, err)
	}
	u.st, u.stateETag, u.h, u.resumed = *st, newETag, h, true
	t.log.Info("resuming another gateway's upload", "blob", u.d.String(), "bytes_done", st.done(), "size", st.Size)
	t.onEvent("upload_resumed")
	return true, nil
}

func isNoSuchUpload(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.Code == "NoSuchUpload" || r.StatusCode == 404
}

func (t *Tier) listParts(ctx context.Context, d cache.Digest, id string) (map[int]minio.ObjectPart, error) {
	out := map[int]minio.ObjectPart{}
	marker := 0
	for {
		res, err := t.core.ListObjectParts(ctx, t.bucket, t.blobKey(d), id, marker, 1000)
		if err != nil {
			return nil, err
		}
		for _, p := range res.ObjectParts {
			out[p.PartNumber] = p
		}
		if !res.IsTruncated || res.NextPartNumberMarker <= marker {
			return out, nil
		}
		marker = res.NextPartNumberMarker
	}
}

// watch is the cache's view of the fill's temp file.
func (u *upload) watch(p cache.Partial) { u.partial <- p }

// halt stops the uploader (the fill failed) and waits for it.
func (u *upload) halt() {
	u.stopped.Do(func() {
		close(u.stop)
		u.cancel()
	})
	<-u.ended
}

// run uploads each part once the fill's contiguous bytes cover it.
func (u *upload) run() {
	defer close(u.ended)
	var p cache.Partial
	select {
	case p = <-u.partial:
	case <-u.stop:
		u.err = errStopped
		return
	}
	ps := u.st.PartSize
	buf := make([]byte, min(ps, u.size))
	for i := len(u.st.Parts); i < u.st.numParts(); i++ {
		start := int64(i) * ps
		end := min(start+ps, u.size)
		for {
			avail, changed := p.Available(start)
			if avail >= end {
				break
			}
			select {
			case <-changed:
			case <-u.stop:
				u.err = errStopped
				return
			}
		}
		if u.err = u.part(p, i+1, buf[:end-start], start); u.err != nil {
			return
		}
	}
}

// part uploads part n (the blob's bytes at off), then records it.
func (u *upload) part(p cache.Partial, n int, buf []byte, off int64) error {
	t := u.t
	if u.l.isLost() {
		return errLeaseLost
	}
	if _, err := p.ReadAt(buf, off); err != nil {
		return fmt.Errorf("reading part %d from disk: %w", n, err)
	}
	u.h.Write(buf)
	var (
		info minio.ObjectPart
		err  error
	)
	for attempt := range 3 {
		if attempt > 0 {
			select {
			case <-time.After(time.Duration(attempt) * time.Second):
			case <-u.ctx.Done():
				return u.ctx.Err()
			}
		}
		// Counted as it is read: a part that takes long to upload is
		// progress that keeps the lease.
		body := &countingBody{ReadCloser: io.NopCloser(bytes.NewReader(buf)), n: &u.l.moved}
		info, err = t.core.PutObjectPart(u.ctx, t.bucket, t.blobKey(u.d), u.st.UploadID, n, body, int64(len(buf)), minio.PutObjectPartOptions{})
		if err == nil || u.ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("s3tier: uploading part %d of %s: %w", n, u.d, err)
	}
	hs, err := u.h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return err
	}
	u.st.Parts = append(u.st.Parts, statePart{N: n, ETag: trimETag(info.ETag)})
	u.st.Hash = hs
	etag, err := t.putState(u.ctx, u.d, &u.st, u.stateETag)
	if isPreconditionFailed(err) || isNotFound(err) {
		u.l.markLost()
		return errLeaseLost
	}
	if err != nil {
		return fmt.Errorf("s3tier: recording part %d of %s: %w", n, u.d, err)
	}
	u.stateETag = etag
	t.onEvent("upload_part")
	return nil
}

// complete waits for the last part, checks the hash over all parts, and
// completes the upload, fenced by a lease renewal and If-None-Match.
func (u *upload) complete(ctx context.Context) error {
	t := u.t
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.completed {
		return nil
	}
	select {
	case <-u.ended:
	case <-ctx.Done():
		// A bucket that stopped answering must not hold the fill (and
		// its lease) forever.
		u.cancel()
		<-u.ended
		return fmt.Errorf("s3tier: waiting for the last parts of %s: %w", u.d, context.Cause(ctx))
	}
	if u.err != nil {
		return u.err
	}
	if got := hex.EncodeToString(u.h.Sum(nil)); got != u.d.Hex {
		u.abandon(ctx)
		return &cache.DigestMismatchError{Want: u.d, Got: got}
	}
	if err := u.l.renew(ctx); err != nil {
		return fmt.Errorf("s3tier: renewing the lease before completing %s: %w", u.d, err)
	}
	parts := make([]minio.CompletePart, len(u.st.Parts))
	for i, p := range u.st.Parts {
		parts[i] = minio.CompletePart{PartNumber: p.N, ETag: p.ETag}
	}
	opts := minio.PutObjectOptions{}
	opts.SetMatchETagExcept("*")
	_, err := t.core.CompleteMultipartUpload(ctx, t.bucket, t.blobKey(u.d), u.st.UploadID, parts, opts)
	if isPreconditionFailed(err) {
		// The blob is there already (a verified copy, like ours).
		t.log.Info("the blob was published by another gateway first", "blob", u.d.String())
		u.abandon(ctx)
		u.completed = true
		return nil
	}
	if err != nil {
		return fmt.Errorf("s3tier: completing upload of %s: %w", u.d, err)
	}
	t.deleteState(ctx, u.d, u.stateETag)
	u.completed = true
	t.published(u.d)
	return nil
}

// abandon aborts the upload and removes its record (the lease holder's
// cleanup after a content error).
func (u *upload) abandon(ctx context.Context) {
	if u.l.isLost() {
		return // the successor's now
	}
	if err := u.t.core.AbortMultipartUpload(ctx, u.t.bucket, u.t.blobKey(u.d), u.st.UploadID); err != nil && !isNoSuchUpload(err) {
		u.t.log.Warn("aborting an upload failed", "blob", u.d.String(), "err", err)
	}
	u.t.deleteState(ctx, u.d, u.stateETag)
}

// rest is the cache's Rest: the successor completes the upload once the
// bytes after the recorded parts are on its disk, and reads the start
// from the completed blob.
func (u *upload) rest(ctx context.Context) (cache.Source, error) {
	if err := u.complete(ctx); err != nil {
		return nil, err
	}
	return u.t.Source(u.d), nil
}

// done is the cache's Done: complete after a verified fill; after a failed
// one, abort on a content error, else leave the upload to the next holder.
func (u *upload) done(_ string, err error) {
	defer u.l.release()
	ctx, cancel := context.WithTimeout(context.Background(), 10*u.t.ttl)
	defer cancel()
	if err != nil {
		u.halt()
		var dm *cache.DigestMismatchError
		var sm *cache.SizeMismatchError
		if errors.As(err, &dm) || errors.As(err, &sm) {
			u.abandon(ctx)
			u.t.onEvent("upload_aborted")
		}
		return
	}
	cerr := u.complete(ctx)
	u.cancel()
	switch {
	case errors.Is(cerr, errLeaseLost):
		u.t.log.Warn("not completing the upload: another gateway took the fill lease over", "blob", u.d.String())
		u.t.onEvent("upload_refused")
	case cerr != nil:
		u.t.log.Warn("uploading a verified blob to the shared bucket failed", "blob", u.d.String(), "err", cerr)
		u.t.onEvent("upload_failed")
	}
}
