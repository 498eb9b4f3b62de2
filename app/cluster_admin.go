package app

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/modelgate/modelgate/admin"
	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/s3tier"
)

// clusterAdmin adapts the shared tier to what the admin API does
// cluster-wide.
type clusterAdmin struct{ *s3tier.Tier }

var _ admin.Cluster = clusterAdmin{}

func (c clusterAdmin) Job(ctx context.Context, id string) ([]byte, error) {
	b, err := c.Tier.Job(ctx, id)
	if errors.Is(err, s3tier.ErrNoJob) {
		return nil, nil
	}
	return b, err
}

func (c clusterAdmin) Blobs(ctx context.Context) ([]admin.BucketBlob, error) {
	blobs, err := c.Tier.Blobs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]admin.BucketBlob, len(blobs))
	for i, b := range blobs {
		out[i] = admin.BucketBlob{Digest: b.Digest.String(), Size: b.Size, Uploaded: b.Uploaded.UTC(),
			LastAccess: b.LastAccess.UTC(), Readers: b.Readers, Pinned: b.Pinned}
	}
	return out, nil
}

// clusterNode is the name a gateway of a cluster goes by ("" alone).
func clusterNode(t *s3tier.Tier) string {
	if t == nil {
		return ""
	}
	return t.Node()
}

// dropPurged removes this gateway's hot copy of a blob an operator purged
// on another gateway of the cluster, unless a pin here keeps it (the
// removal waits for its readers).
func dropPurged(store *cache.Store, pinned func() map[cache.Digest]bool, d cache.Digest, log *slog.Logger) {
	if pinned()[d] {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	removed, err := store.Remove(ctx, d)
	switch {
	case err != nil:
		log.Warn("dropping the hot copy of a blob purged in the cluster failed", "blob", d.String(), "err", err)
	case removed:
		log.Info("dropped the hot copy of a blob purged in the cluster", "blob", d.String())
	}
}
