package main

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
)

// Issue 9: a parallel fill resolves the signed CDN URL with the Hub once
// and shares it among its pieces; when the URL expires mid-fill, it is
// resolved again once for all the pieces still to come, not once each.
func TestParallelFillSharesOneSignedCDNURL(t *testing.T) {
	const path = "/org/model/resolve/main/model.safetensors"
	const resolves = "/org/model/resolve/"
	t.Run("one resolve for every piece", func(t *testing.T) {
		tr := newTestHub(t, 40<<20)
		g := startGateway(t, tr.hub, func(c *config.Config) { c.Upstream.FillPieceSize = 4 << 20 })
		sha := fakehub.SHA256Hex(tr.big)
		resp, body := g.mustDo(t, http.MethodGet, path, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.True(t, bytes.Equal(tr.big, body))
		assert.Equal(t, 10, tr.hub.CDNBodyFetches(sha), "ten 4 MiB pieces")
		assert.Equal(t, 2, tr.hub.Count("hub", "", resolves), "Hub resolves: the metadata HEAD, and one for the fill")
	})
	t.Run("an expired URL is resolved again once", func(t *testing.T) {
		tr := newTestHub(t, 40<<20)
		g := startGateway(t, tr.hub, func(c *config.Config) {
			c.Upstream.FillPieceSize = 4 << 20
			c.Upstream.FillConnections = 4
		})
		sha := fakehub.SHA256Hex(tr.big)
		// Slow enough that the first four pieces are still in flight
		// when the URL they used expires; the other six start after.
		tr.hub.ThrottleBlob(sha, 4<<20)
		done := make(chan []byte, 1)
		go func() {
			_, body, err := g.do(t, http.MethodGet, path, nil)
			assert.NoError(t, err)
			done <- body
		}()
		require.Eventually(t, func() bool { return tr.hub.CDNBodyFetches(sha) >= 4 }, 10*time.Second, 5*time.Millisecond)
		tr.hub.ExpireCDNURLs()
		tr.hub.ThrottleBlob(sha, 0)
		body := <-done
		require.True(t, bytes.Equal(tr.big, body))
		assert.Equal(t, 10, tr.hub.CDNBodyFetches(sha))
		assert.Equal(t, 3, tr.hub.Count("hub", "", resolves), "Hub resolves: the metadata HEAD, one for the fill, one after the expiry")
		assertFetchedOnce(t, tr.hub.CDNBodySpans(sha), int64(len(tr.big)))
	})
}
