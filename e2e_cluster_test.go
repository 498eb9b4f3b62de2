package main

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
	"github.com/modelgate/modelgate/internal/versity"
)

// startClusterGateway starts a gateway with storage.backend s3 on the
// versitygw bucket, its own data_dir, named node.
func startClusterGateway(t *testing.T, hub *fakehub.Hub, srv *versity.Server, node string, edits ...func(*config.Config)) *gatewayUnderTest {
	t.Helper()
	g := startGateway(t, hub, func(c *config.Config) {
		c.Storage.Backend = "s3"
		c.Storage.S3 = config.S3Config{
			Endpoint: srv.Endpoint, Bucket: srv.Bucket, Prefix: "mg/", PathStyle: true,
			AccessKeyID: config.Secret(srv.AccessKey), SecretAccessKey: config.Secret(srv.SecretKey),
			EvictInterval: c.Storage.S3.EvictInterval, // the default
			PartSize:      5 << 20,                    // S3's smallest: multipart uploads of small test blobs
		}
		c.Cluster.LeaseTTL = config.Duration{Duration: 2 * time.Second}
		c.Cluster.Node = node
		c.Upstream.FillPieceSize = 1 << 20 // parallel ranged fills, from the CDN and from the bucket
		for _, edit := range edits {
			edit(c)
		}
	})
	g.addSecrets(srv.SecretKey)
	return g
}

func clusterEvent(t *testing.T, gs []*gatewayUnderTest, event string) float64 {
	var n float64
	for _, g := range gs {
		n += g.metric(t, fmt.Sprintf(`modelgate_cluster_events_total{event=%q}`, event))
	}
	return n
}

// Three gateways on one bucket; 30 concurrent cold clients spread over
// them all get the right bytes, and the CDN sends the blob once in all.
func TestClusterColdClientsFetchUpstreamOnce(t *testing.T) {
	srv := versity.Start(t)
	tr := newTestHub(t, 6<<20+17)
	sha := fakehub.SHA256Hex(tr.big)
	var gs []*gatewayUnderTest
	for i := range 3 {
		gs = append(gs, startClusterGateway(t, tr.hub, srv, fmt.Sprintf("node-%d", i)))
	}
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			resp, body, err := gs[i%3].do(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
			if !assert.NoError(t, err, "client %d", i) {
				return
			}
			assert.Equal(t, http.StatusOK, resp.StatusCode, "client %d", i)
			assert.True(t, bytes.Equal(tr.big, body), "client %d got wrong bytes", i)
		})
	}
	wg.Wait()
	assert.EqualValues(t, len(tr.big), tr.hub.CDNBodyBytes(sha), "CDN bytes for the whole cluster")
	assert.EqualValues(t, 1, clusterEvent(t, gs, "lease_taken"))
	assert.Zero(t, clusterEvent(t, gs, "lease_takeover"))
	require.Eventually(t, func() bool {
		keys := fillKeys(t, srv)
		return len(keys) == 1 && keys[0] == "mg/blobs/sha256/"+sha
	}, 10*time.Second, 20*time.Millisecond, "the bucket holds the blob and no lease")
}

// A gateway that never saw a blob serves it (Range included) from the
// bucket with no blob byte from upstream; so does a gateway started with
// an empty data_dir after the first one is gone.
func TestClusterNewNodeServesFromBucket(t *testing.T) {
	srv := versity.Start(t)
	tr := newTestHub(t, 3<<20+5)
	sha := fakehub.SHA256Hex(tr.big)
	const path = "/org/model/resolve/main/model.safetensors"

	a := startClusterGateway(t, tr.hub, srv, "a")
	resp, body := a.mustDo(t, http.MethodGet, path, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.True(t, bytes.Equal(tr.big, body))
	require.Eventually(t, func() bool { return clusterEvent(t, []*gatewayUnderTest{a}, "upload") == 1 }, 10*time.Second, 20*time.Millisecond)
	cdn := tr.hub.CDNBodyBytes(sha)
	require.EqualValues(t, len(tr.big), cdn)
	a.Stop()

	for _, node := range []string{"b", "c"} {
		g := startClusterGateway(t, tr.hub, srv, node)
		start, end := int64(2<<20+100), int64(2<<20+5000)
		resp, body = g.mustDo(t, http.MethodGet, path, http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", start, end)}})
		require.Equal(t, http.StatusPartialContent, resp.StatusCode, node)
		require.True(t, bytes.Equal(tr.big[start:end+1], body), "%s: range from the bucket", node)
		resp, body = g.mustDo(t, http.MethodGet, path, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.True(t, bytes.Equal(tr.big, body), node)
		require.EqualValues(t, cdn, tr.hub.CDNBodyBytes(sha), "%s fetched blob bytes from upstream", node)
		require.GreaterOrEqual(t, g.metric(t, `modelgate_cluster_events_total{event="bucket_hit"}`), 1.0)
		require.Eventually(t, func() bool { return g.hasBlob(t, sha) }, 10*time.Second, 20*time.Millisecond, "%s: hot tier filled", node)
		g.Stop()
	}
}

// The bucket unreachable: what the hot tier holds is served, a cold blob
// is fetched from upstream by this gateway alone.
func TestClusterBucketUnreachable(t *testing.T) {
	srv := versity.Start(t)
	tr := newTestHub(t, 1<<20+9)
	g := startClusterGateway(t, tr.hub, srv, "a")
	resp, body := g.mustDo(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.True(t, bytes.Equal(tr.big, body))
	srv.Stop()

	resp, body = g.mustDo(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "hot hit")
	require.True(t, bytes.Equal(tr.big, body))
	resp, body = g.mustDo(t, http.MethodGet, "/org/model/resolve/main/xet.bin", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "cold, local-only fill")
	require.True(t, bytes.Equal(tr.xet, body))
	require.EqualValues(t, 1, g.metric(t, `modelgate_cluster_events_total{event="unreachable"}`))
}

// fillKeys lists the bucket's blobs and fill leases: what the fill
// protocol writes, without the access records and pin lists of eviction.
func fillKeys(t *testing.T, srv *versity.Server) []string {
	var out []string
	for _, k := range srv.Keys(t, "mg/") {
		if strings.HasPrefix(k, "mg/blobs/") || strings.HasPrefix(k, "mg/leases/") || strings.HasPrefix(k, "mg/uploads/") {
			out = append(out, k)
		}
	}
	return out
}
