package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/modelgate/modelgate/cache"
)

// Cluster is the shared bucket of storage.backend s3, for what the admin
// API does cluster-wide: pins every gateway honours, purges that remove
// the bucket's copy, jobs any gateway answers for, and the bucket in the
// inventory. The app adapts *s3tier.Tier to it.
type Cluster interface {
	AddPin(ctx context.Context, spec string) error
	RemovePin(ctx context.Context, spec string) (bool, error)
	// Pins reads the bucket's pins; KnownPins returns them as last read,
	// without waiting on the bucket.
	Pins(ctx context.Context) ([]string, error)
	KnownPins() []string
	// PublishPinned tells the other gateways which blobs this gateway's
	// pins resolve to.
	PublishPinned(ctx context.Context) error
	PutJob(ctx context.Context, id string, doc []byte) error
	// Job returns nil and no error when the bucket holds no such job.
	Job(ctx context.Context, id string) ([]byte, error)
	// Purge removes a blob from the bucket unless a gateway pinned it or
	// is reading it.
	Purge(ctx context.Context, d cache.Digest) (held, removed bool, err error)
	Blobs(ctx context.Context) ([]BucketBlob, error)
}

// BucketBlob is one blob of the shared bucket in the inventory.
type BucketBlob struct {
	Digest     string    `json:"digest"`
	Size       int64     `json:"size"`
	Uploaded   time.Time `json:"uploaded"`
	LastAccess time.Time `json:"last_access"`
	Readers    int       `json:"readers"`
	Pinned     bool      `json:"pinned"`
	// Local says this gateway's hot tier holds it too.
	Local bool `json:"local"`
}

// clusterTimeout bounds the admin API's calls to the bucket.
const clusterTimeout = 30 * time.Second

// saveJobShared copies a job's document to the bucket (best effort: the
// job runs and is recorded here all the same).
func (s *Server) saveJobShared(id string, doc []byte) {
	if s.opts.Cluster == nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, clusterTimeout)
	defer cancel()
	if err := s.opts.Cluster.PutJob(ctx, id, doc); err != nil {
		s.log.Warn("saving a job to the shared bucket failed; other gateways show its last saved state", "job", id, "err", err)
	}
}

// sharedJob reads a job another gateway runs (or ran).
func (s *Server) sharedJob(ctx context.Context, id string) (Job, bool, error) {
	if s.opts.Cluster == nil {
		return Job{}, false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, clusterTimeout)
	defer cancel()
	b, err := s.opts.Cluster.Job(ctx, id)
	if err != nil || b == nil {
		return Job{}, false, err
	}
	var j Job
	if err := json.Unmarshal(b, &j); err != nil || j.ID != id {
		return Job{}, false, nil
	}
	return j, true, nil
}

// bucketInventory lists the bucket's blobs for the inventory.
func (s *Server) bucketInventory(ctx context.Context) ([]BucketBlob, error) {
	ctx, cancel := context.WithTimeout(ctx, clusterTimeout)
	defer cancel()
	blobs, err := s.opts.Cluster.Blobs(ctx)
	if err != nil {
		return nil, err
	}
	for i := range blobs {
		if d, err := cache.ParseDigest(blobs[i].Digest); err == nil {
			blobs[i].Local = s.opts.Store.Has(d)
		}
	}
	return blobs, nil
}

// purgeShared removes blob d, which no record here names any more, from
// the shared bucket too, unless some gateway pinned it or is reading it
// from the bucket.
func (s *Server) purgeShared(ctx context.Context, d cache.Digest, res *PurgeResult) error {
	if s.opts.Cluster == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, clusterTimeout)
	defer cancel()
	held, removed, err := s.opts.Cluster.Purge(ctx, d)
	switch {
	case err != nil:
		return fmt.Errorf("removing %s from the shared bucket: %w", d, err)
	case removed:
		res.BucketBlobsRemoved++
	case held:
		res.BucketBlobsKept++
	}
	return nil
}
