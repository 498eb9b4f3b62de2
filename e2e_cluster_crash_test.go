package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/internal/fakehub"
	"github.com/modelgate/modelgate/internal/versity"
)

// kill -9 of the gateway holding a blob's lease mid-fill: another gateway
// takes the lease over once it expired, resumes the upload the dead one
// recorded (two of three parts), fetches only the bytes after them and
// publishes the blob; its client gets the right bytes, and the bucket
// never holds anything but the verified blob under its content id.
func TestClusterKill9HolderIsTakenOver(t *testing.T) {
	skipIfShort(t, "builds and runs the gateway binary")
	srv := versity.Start(t)
	bin := buildGateway(t)
	hub := fakehub.New(t, fakehub.Options{Token: operatorToken})
	commit := fakehub.Commit("crash")
	const part = 5 << 20
	data := fakehub.RandomData(77, 2*part+2<<20+3)
	sha := fakehub.SHA256Hex(data)
	hub.AddRepo(fakehub.Repo{ID: "org/crash", Refs: map[string]string{"main": commit},
		Commits: map[string][]fakehub.File{commit: {{Path: "w.bin", Data: data, LFS: true}}}})
	release := hub.GateBlob(sha, 2*part+1<<20)
	const path = "/org/crash/resolve/main/w.bin"

	// The holder: a real process, credentials from the AWS variables.
	a := startProcess(t, bin, t.TempDir(), hub,
		"MODELGATE_STORAGE_BACKEND=s3", "MODELGATE_STORAGE_S3_ENDPOINT="+srv.Endpoint,
		"MODELGATE_STORAGE_S3_BUCKET="+srv.Bucket, "MODELGATE_STORAGE_S3_PREFIX=mg/",
		"MODELGATE_STORAGE_S3_PATH_STYLE=true", "MODELGATE_CLUSTER_LEASE_TTL=2s", "MODELGATE_CLUSTER_NODE=a",
		"MODELGATE_STORAGE_S3_PART_SIZE=5MiB",
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
	// a uploads the parts its disk has while its fill waits at the gate.
	require.Eventually(t, func() bool { return recordedParts(t, srv, sha) == 2 }, 20*time.Second, 20*time.Millisecond, "a recorded no parts")

	b := startClusterGateway(t, hub, srv, "b")
	bDone := make(chan error, 1)
	var bBody []byte
	go func() {
		resp, body, err := b.do(t, http.MethodGet, path, nil)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = assert.AnError
		}
		bBody = body
		bDone <- err
	}()
	require.Eventually(t, func() bool {
		return b.metric(t, `modelgate_cluster_events_total{event="lease_wait"}`) == 1
	}, 20*time.Second, 20*time.Millisecond, "b is not waiting on a's lease")

	require.NoError(t, a.cmd.Process.Kill())
	_ = a.cmd.Wait()
	killed := time.Now()
	aFetches := len(hub.CDNBodySpans(sha))
	release()

	select {
	case err := <-bDone:
		require.NoError(t, err)
	case <-time.After(60 * time.Second):
		t.Fatal("b never answered")
	}
	require.True(t, bytes.Equal(data, bBody), "b's client got wrong bytes")
	t.Logf("taken over and served %s after the kill (lease_ttl 2s)", time.Since(killed).Round(time.Millisecond))
	assert.Less(t, time.Since(killed), 15*time.Second)
	assert.EqualValues(t, 1, b.metric(t, `modelgate_cluster_events_total{event="lease_takeover"}`))
	assert.EqualValues(t, 1, b.metric(t, `modelgate_cluster_events_total{event="upload_resumed"}`))
	// b asked the upstream only for the bytes after a's recorded parts.
	var bBytes int64
	for _, sp := range hub.CDNBodySpans(sha)[aFetches:] {
		assert.GreaterOrEqual(t, sp[0], int64(2*part), "b fetched bytes a had uploaded: %v", sp)
		bBytes += sp[1] - sp[0]
	}
	assert.EqualValues(t, len(data)-2*part, bBytes, "b's upstream bytes")
	t.Logf("b fetched %d of the blob's %d bytes from the upstream", bBytes, len(data))
	if got := <-aDone; got != nil {
		assert.Less(t, len(got), len(data), "a's client must not get a complete body from a killed gateway")
	}

	// The bucket: the blob, verified, and no lease left.
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
	require.False(t, strings.Contains(a.logs.String(), srv.SecretKey), "the S3 secret in a's logs")
}

// recordedParts is how many parts the upload record of the blob lists.
func recordedParts(t *testing.T, srv *versity.Server, sha string) int {
	obj, err := srv.Client(t).GetObject(context.Background(), srv.Bucket, "mg/uploads/sha256/"+sha, minio.GetObjectOptions{})
	if err != nil {
		return 0
	}
	defer obj.Close()
	var rec struct {
		Parts []json.RawMessage `json:"parts"`
	}
	if json.NewDecoder(obj).Decode(&rec) != nil {
		return 0
	}
	return len(rec.Parts)
}
