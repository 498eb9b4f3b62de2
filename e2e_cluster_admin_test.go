package main

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/admin"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
	"github.com/modelgate/modelgate/internal/versity"
)

func bucketHas(t *testing.T, srv *versity.Server, sha string) bool {
	return slices.Contains(fillKeys(t, srv), "mg/blobs/sha256/"+sha)
}

// Admin in a cluster: a pin made on A keeps its blobs in the bucket when
// B's eviction brings the bucket under storage.s3.max_size; a prefetch job
// started on A is answered for by B; the bucket shows in B's inventory; a
// purge on A removes the bucket's copy.
func TestClusterPinsJobsEvictionAndPurge(t *testing.T) {
	srv := versity.Start(t)
	tr := newTestHub(t, 2<<20+11)
	sha := fakehub.SHA256Hex(tr.big)
	other, later := fakehub.RandomData(9, 1<<20+1), fakehub.RandomData(10, 1<<20+2)
	otherCommit := fakehub.Commit("other")
	tr.hub.AddRepo(fakehub.Repo{
		ID: "org/other", Refs: map[string]string{"main": otherCommit},
		Commits: map[string][]fakehub.File{otherCommit: {
			{Path: "w.bin", Data: other, LFS: true},
			{Path: "later.bin", Data: later, LFS: true},
		}},
	})
	often := func(c *config.Config) { c.Storage.S3.EvictInterval = config.Duration{Duration: time.Second} }
	a := startClusterGateway(t, tr.hub, srv, "a", often)
	// Only B bounds the bucket: what goes, B evicts.
	b := startClusterGateway(t, tr.hub, srv, "b", often, func(c *config.Config) { c.Storage.S3.MaxSize = 1 })

	code, body := a.adminDo(t, http.MethodPost, "/admin/v1/pins", "", map[string]any{"spec": "hf:org/model"})
	require.Equal(t, http.StatusOK, code, string(body))
	code, body = b.adminDo(t, http.MethodGet, "/admin/v1/pins", "", nil)
	require.Equal(t, http.StatusOK, code, string(body))
	assert.Contains(t, string(body), `"hf:org/model"`, "a pin made on A is listed on B")

	// A job started on A, followed on B.
	code, body = a.adminDo(t, http.MethodPost, "/admin/v1/jobs", "", map[string]any{"spec": "hf:org/model"})
	require.Equal(t, http.StatusAccepted, code, string(body))
	var j admin.Job
	require.NoError(t, json.Unmarshal(body, &j))
	require.Eventually(t, func() bool { return b.job(t, j.ID, "").State == admin.StateDone }, 30*time.Second, 50*time.Millisecond,
		"B answers for A's job")
	got := b.job(t, j.ID, "")
	assert.Equal(t, "a", got.Node)
	assert.Equal(t, 4, got.FilesDone)
	require.True(t, bucketHas(t, srv, sha))

	// Unpinned blobs, used after the pinned ones, one after the other: B
	// evicts each once it is no longer fresh (two evict_intervals), so
	// when the second goes, the pinned ones, used before it, were older
	// still, and only their pin kept them.
	for _, f := range []struct {
		path string
		data []byte
	}{{"w.bin", other}, {"later.bin", later}} {
		s := fakehub.SHA256Hex(f.data)
		resp, _ := a.mustDo(t, http.MethodGet, "/org/other/resolve/main/"+f.path, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Eventually(t, func() bool { return bucketHas(t, srv, s) }, 10*time.Second, 20*time.Millisecond)
		require.Eventually(t, func() bool { return !bucketHas(t, srv, s) }, 30*time.Second, 50*time.Millisecond,
			"B evicts the unpinned %s", f.path)
	}
	// Counted just after the blob is gone.
	require.Eventually(t, func() bool {
		return b.metric(t, `modelgate_cluster_events_total{event="evicted"}`) == 2 &&
			b.metric(t, `modelgate_cluster_evicted_bytes_total`) == float64(len(other)+len(later))
	}, 10*time.Second, 20*time.Millisecond)
	assert.True(t, bucketHas(t, srv, sha), "the blob pinned on A stays in the bucket")

	// B's inventory lists the bucket.
	code, body = b.adminDo(t, http.MethodGet, "/admin/v1/inventory", "", nil)
	require.Equal(t, http.StatusOK, code, string(body))
	var inv admin.Inventory
	require.NoError(t, json.Unmarshal(body, &inv))
	require.Empty(t, inv.BucketError)
	i := slices.IndexFunc(inv.Bucket, func(bb admin.BucketBlob) bool { return bb.Digest == "sha256:"+sha })
	require.GreaterOrEqual(t, i, 0, "inventory: %s", body)
	assert.EqualValues(t, len(tr.big), inv.Bucket[i].Size)
	assert.True(t, inv.Bucket[i].Pinned)
	assert.False(t, inv.Bucket[i].LastAccess.IsZero())
	assert.False(t, inv.Bucket[i].Local, "B never served it")

	// B serves the file from the bucket: a hot copy there too.
	resp, body := b.mustDo(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, len(tr.big), len(body))
	require.Eventually(t, func() bool { return b.hasBlob(t, sha) }, 10*time.Second, 20*time.Millisecond)

	// Unpinned on B, for every gateway.
	code, body = b.adminDo(t, http.MethodDelete, "/admin/v1/pins", "", map[string]any{"spec": "hf:org/model"})
	require.Equal(t, http.StatusOK, code, string(body))
	code, body = a.adminDo(t, http.MethodGet, "/admin/v1/pins", "", nil)
	require.Equal(t, http.StatusOK, code, string(body))
	assert.NotContains(t, string(body), `"hf:org/model"`, "unpinned on B, unpinned on A")

	// Purged on A: gone from the bucket, and from B's hot tier.
	code, body = a.adminDo(t, http.MethodPost, "/admin/v1/purge", "", map[string]any{"spec": "hf:org/model"})
	require.Equal(t, http.StatusOK, code, string(body))
	var pr admin.PurgeResult
	require.NoError(t, json.Unmarshal(body, &pr))
	assert.GreaterOrEqual(t, pr.BucketBlobsRemoved, 2, "model.safetensors and xet.bin: %s", body)
	assert.False(t, bucketHas(t, srv, sha))
	assert.False(t, a.hasBlob(t, sha))
	require.Eventually(t, func() bool { return !b.hasBlob(t, sha) }, 10*time.Second, 50*time.Millisecond,
		"B drops its hot copy of a blob purged on A")
}
