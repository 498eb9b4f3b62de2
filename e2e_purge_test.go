package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/admin"
	"github.com/modelgate/modelgate/internal/fakehub"
)

// slowReaderClient reaches the gateway's own listener (no relay whose
// buffers would soak up the answer) with a tiny receive buffer, so that a
// client that stops reading keeps the gateway's handler, and its open
// blob, waiting.
func slowReaderClient() *http.Client {
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableCompression: true}}
}

func TestPurgeOfABlobBeingServedWaitsForItsReader(t *testing.T) {
	tr := newTestHub(t, 24<<20)
	g := startGateway(t, tr.hub, nil)
	out, err := g.cli(t, "", "prefetch", "hf:org/model")
	require.NoError(t, err, out)
	sha := fakehub.SHA256Hex(tr.big)

	// A slow client starts reading the cached blob, then stops.
	resp, err := slowReaderClient().Get("http://" + g.Addr + "/org/model/resolve/" + tr.main + "/model.safetensors")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	got := make([]byte, 1<<20)
	_, err = io.ReadFull(resp.Body, got)
	require.NoError(t, err)

	purged := make(chan admin.PurgeResult, 1)
	go func() {
		code, b := g.adminDo(t, http.MethodPost, "/admin/v1/purge", "", map[string]any{"spec": "hf:org/model"})
		var res admin.PurgeResult
		if code == http.StatusOK {
			json.Unmarshal(b, &res)
		}
		purged <- res
	}()
	// The purge has dropped the repo's records (it is out of the
	// inventory) and is now at the blob, whose reader is not done.
	require.Eventually(t, func() bool {
		_, b := g.adminDo(t, http.MethodGet, "/admin/v1/inventory", "", nil)
		return !strings.Contains(string(b), `"org/model"`)
	}, 10*time.Second, 10*time.Millisecond)
	assert.Never(t, func() bool { return len(purged) > 0 }, 500*time.Millisecond, 10*time.Millisecond,
		"the purge must wait for the blob's reader")
	assert.True(t, g.hasBlob(t, sha), "the blob must stay while it is being read")

	// The reader finishes, with the right bytes; then the purge does.
	rest, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(tr.big, append(got, rest...)), "the reader must receive the blob intact")
	var res admin.PurgeResult
	select {
	case res = <-purged:
	case <-time.After(20 * time.Second):
		t.Fatal("the purge did not finish after the reader did")
	}
	assert.Equal(t, 4, res.BlobsRemoved)
	assert.False(t, g.hasBlob(t, sha))
}
