package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
	"github.com/modelgate/modelgate/internal/versity"
	"github.com/modelgate/modelgate/s3tier"
)

// clusterSecret signs the node-to-node requests of the peer tests; the
// leak search looks for it everywhere.
const clusterSecret = "peer-SECRET-0123456789abcdef0123456789abcdef"

// startPeerGateway is startClusterGateway with peer streaming on: it
// listens on a port chosen in advance, so that it can advertise it.
func startPeerGateway(t *testing.T, hub *fakehub.Hub, srv *versity.Server, node string, ttl time.Duration) *gatewayUnderTest {
	t.Helper()
	addr := freePort(t)
	g := startGateway(t, hub, func(c *config.Config) {
		c.Listen = addr
		c.Storage.Backend = "s3"
		c.Storage.S3 = config.S3Config{
			Endpoint: srv.Endpoint, Bucket: srv.Bucket, Prefix: "mg/", PathStyle: true,
			AccessKeyID: config.Secret(srv.AccessKey), SecretAccessKey: config.Secret(srv.SecretKey),
			EvictInterval: c.Storage.S3.EvictInterval, PartSize: c.Storage.S3.PartSize, // the defaults
		}
		c.Cluster.LeaseTTL = config.Duration{Duration: ttl}
		c.Cluster.Node = node
		c.Cluster.Secret = clusterSecret
		c.Cluster.Advertise = "http://" + addr
		c.Cluster.Peers = config.MustNetworks("127.0.0.0/8")
	})
	g.addSecrets(srv.SecretKey, clusterSecret)
	return g
}

// streamFirst starts a GET on g and returns the response once its first n
// body bytes arrived (in first), with the rest of the body still to read.
func streamFirst(t *testing.T, ctx context.Context, g *gatewayUnderTest, path string, n int) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.URL+path, nil)
	require.NoError(t, err)
	resp, err := g.Client.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	require.Equal(t, http.StatusOK, resp.StatusCode)
	first := make([]byte, n)
	_, err = io.ReadFull(resp.Body, first)
	require.NoError(t, err, "no first bytes")
	return resp, first
}

// The holder's upstream is held back after 1 MiB: clients on the two
// other gateways get their first bytes from the holder's fill in progress
// — before the holder could have finished its download, let alone its
// upload — then the whole blob, right; the CDN sends the blob once.
func TestClusterPeerStreaming(t *testing.T) {
	srv := versity.Start(t)
	tr := newTestHub(t, 4<<20+3)
	sha := fakehub.SHA256Hex(tr.big)
	release := tr.hub.GateBlob(sha, 1<<20)
	defer release()
	const path = "/org/model/resolve/main/model.safetensors"
	var gs []*gatewayUnderTest
	for i := range 3 {
		gs = append(gs, startPeerGateway(t, tr.hub, srv, fmt.Sprintf("node-%d", i), 5*time.Second))
	}
	a, b, c := gs[0], gs[1], gs[2]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	respA, firstA := streamFirst(t, ctx, a, path, 64<<10)
	require.EqualValues(t, 1, a.metric(t, `modelgate_cluster_events_total{event="lease_taken"}`))
	respB, firstB := streamFirst(t, ctx, b, path, 512<<10)
	respC, firstC := streamFirst(t, ctx, c, path, 64<<10)

	// Everything so far happened with the upstream held back.
	assert.EqualValues(t, 1, b.metric(t, `modelgate_cluster_events_total{event="peer_stream"}`))
	assert.EqualValues(t, 1, c.metric(t, `modelgate_cluster_events_total{event="peer_stream"}`))
	assert.Zero(t, a.metric(t, `modelgate_cluster_events_total{event="upload"}`))
	assert.Equal(t, []string{"mg/leases/sha256/" + sha}, fillKeys(t, srv), "the bucket holds the lease and no blob yet")

	release()
	for i, r := range []struct {
		resp  *http.Response
		first []byte
	}{{respA, firstA}, {respB, firstB}, {respC, firstC}} {
		rest, err := io.ReadAll(r.resp.Body)
		require.NoError(t, err, "client %d", i)
		require.True(t, bytes.Equal(tr.big, append(r.first, rest...)), "client %d got wrong bytes", i)
	}

	assert.EqualValues(t, len(tr.big), tr.hub.CDNBodyBytes(sha), "CDN bytes for the whole cluster")
	assert.EqualValues(t, 1, clusterEvent(t, gs, "lease_taken"))
	assert.Zero(t, clusterEvent(t, gs, "lease_takeover")+clusterEvent(t, gs, "peer_fallback"))
	for _, g := range []*gatewayUnderTest{b, c} {
		assert.GreaterOrEqual(t, g.metric(t, `modelgate_cluster_bytes_total{source="peer"}`), float64(len(tr.big)))
		assert.Zero(t, g.metric(t, `modelgate_cluster_bytes_total{source="upstream"}`))
		require.Eventually(t, func() bool { return g.hasBlob(t, sha) }, 10*time.Second, 20*time.Millisecond, "verified and kept")
	}
	assert.GreaterOrEqual(t, a.metric(t, `modelgate_cluster_bytes_total{source="peer_sent"}`), float64(2*len(tr.big)))
	assert.EqualValues(t, len(tr.big), a.metric(t, `modelgate_cluster_bytes_total{source="upstream"}`))
	assert.Greater(t, a.metric(t, `modelgate_s3_request_duration_seconds_count{op="put"}`), 0.0)
	require.Eventually(t, func() bool {
		keys := fillKeys(t, srv)
		return len(keys) == 1 && keys[0] == "mg/blobs/sha256/"+sha
	}, 10*time.Second, 20*time.Millisecond, "the bucket holds the blob and no lease")
}

// The node-to-node endpoint, reached on the workers' port: a worker
// without the secret gets a bare 404 (keys or not), as it does on a
// gateway with cluster mode off; a request signed with the secret gets
// the blob.
func TestClusterPeerEndpointRefusesWorkers(t *testing.T) {
	srv := versity.Start(t)
	tr := newTestHub(t, 1<<20+1)
	sha := fakehub.SHA256Hex(tr.big)
	on := startPeerGateway(t, tr.hub, srv, "on", 5*time.Second)
	off := startGateway(t, tr.hub, nil)
	for _, g := range []*gatewayUnderTest{on, off} {
		resp, body := g.mustDo(t, http.MethodGet, "/org/model/resolve/main/model.safetensors", nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.True(t, bytes.Equal(tr.big, body))
	}
	path := s3tier.PeerPathPrefix + "sha256/" + sha
	for name, g := range map[string]*gatewayUnderTest{"cluster mode on": on, "cluster mode off": off} {
		for _, h := range []http.Header{
			{"Range": {"bytes=0-99"}},
			{"Range": {"bytes=0-99"}, "Authorization": {"Bearer " + workerToken}},
			{"Range": {"bytes=0-99"}, s3tier.PeerAuthHeader: {fmt.Sprintf("t=%d,s=%s", time.Now().Unix(), clusterSecret)}},
		} {
			for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodPost} {
				resp, body := g.mustDo(t, method, path, h)
				assert.Equal(t, http.StatusNotFound, resp.StatusCode, "%s: %s %v", name, method, h)
				assert.NotContains(t, string(body), "secret", name)
				assert.Empty(t, resp.Header.Get("Content-Range"), name)
			}
		}
	}
	req, err := http.NewRequest(http.MethodGet, "http://"+on.Addr+path, nil)
	require.NoError(t, err)
	req.Header.Set("Range", "bytes=10-99")
	s3tier.SignPeerRequest(req, []byte(clusterSecret), time.Now())
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	require.True(t, bytes.Equal(tr.big[10:100], body))
	assert.GreaterOrEqual(t, on.metric(t, `modelgate_cluster_events_total{event="peer_refused"}`), 9.0)
}

// kill -9 of the holder while another gateway's client streams from it:
// that gateway falls back to the lease, takes it over once it expired,
// fetches the rest and serves the right bytes; the bucket ends with the
// verified blob only.
func TestClusterPeerHolderKilledMidStream(t *testing.T) {
	skipIfShort(t, "builds and runs the gateway binary")
	srv := versity.Start(t)
	bin := buildGateway(t)
	hub := fakehub.New(t, fakehub.Options{Token: operatorToken})
	commit := fakehub.Commit("peer-crash")
	data := fakehub.RandomData(78, 4<<20+3)
	sha := fakehub.SHA256Hex(data)
	hub.AddRepo(fakehub.Repo{ID: "org/crash", Refs: map[string]string{"main": commit},
		Commits: map[string][]fakehub.File{commit: {{Path: "w.bin", Data: data, LFS: true}}}})
	release := hub.GateBlob(sha, 1<<20)
	defer release()
	const path = "/org/crash/resolve/main/w.bin"

	addr := freePort(t)
	a := startProcess(t, bin, t.TempDir(), hub,
		"MODELGATE_LISTEN="+addr,
		"MODELGATE_STORAGE_BACKEND=s3", "MODELGATE_STORAGE_S3_ENDPOINT="+srv.Endpoint,
		"MODELGATE_STORAGE_S3_BUCKET="+srv.Bucket, "MODELGATE_STORAGE_S3_PREFIX=mg/",
		"MODELGATE_STORAGE_S3_PATH_STYLE=true", "MODELGATE_CLUSTER_LEASE_TTL=2s", "MODELGATE_CLUSTER_NODE=a",
		"MODELGATE_CLUSTER_SECRET="+clusterSecret, "MODELGATE_CLUSTER_ADVERTISE=http://"+addr,
		"MODELGATE_CLUSTER_PEERS=127.0.0.0/8",
		"AWS_ACCESS_KEY_ID="+srv.AccessKey, "AWS_SECRET_ACCESS_KEY="+srv.SecretKey)
	aDone := make(chan []byte, 1)
	go func() {
		resp, err := http.Get(a.url + path)
		if err != nil {
			aDone <- nil
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		aDone <- b
	}()
	require.Eventually(t, func() bool { return len(srv.Keys(t, "mg/leases/")) == 1 }, 20*time.Second, 20*time.Millisecond, "a took no lease")

	b := startPeerGateway(t, hub, srv, "b", 2*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, first := streamFirst(t, ctx, b, path, 256<<10)
	require.EqualValues(t, 1, b.metric(t, `modelgate_cluster_events_total{event="peer_stream"}`))

	require.NoError(t, a.cmd.Process.Kill())
	_ = a.cmd.Wait()
	release()

	rest, err := io.ReadAll(resp.Body)
	require.NoError(t, err, "b's client got a broken body")
	require.True(t, bytes.Equal(data, append(first, rest...)), "b's client got wrong bytes")
	assert.EqualValues(t, 1, b.metric(t, `modelgate_cluster_events_total{event="peer_fallback"}`))
	assert.EqualValues(t, 1, b.metric(t, `modelgate_cluster_events_total{event="lease_takeover"}`))
	if got := <-aDone; got != nil {
		assert.Less(t, len(got), len(data), "a's client must not get a complete body from a killed gateway")
	}
	require.Eventually(t, func() bool {
		keys := fillKeys(t, srv)
		return len(keys) == 1 && keys[0] == "mg/blobs/sha256/"+sha
	}, 10*time.Second, 20*time.Millisecond)
	obj, err := srv.Client(t).GetObject(context.Background(), srv.Bucket, "mg/blobs/sha256/"+sha, minio.GetObjectOptions{})
	require.NoError(t, err)
	defer obj.Close()
	h := sha256.New()
	_, err = io.Copy(h, obj)
	require.NoError(t, err)
	require.Equal(t, sha, hex.EncodeToString(h.Sum(nil)))
	for _, s := range []string{srv.SecretKey, clusterSecret} {
		require.NotContains(t, a.logs.String(), s, "a secret in a's logs")
	}
}
