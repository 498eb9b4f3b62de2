package app

import (
	"context"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/internal/fakehub"
)

func testConfig(t *testing.T, hub *fakehub.Hub) config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Listen = "127.0.0.1:0"
	cfg.HuggingFace.Endpoint = config.MustEndpoint(hub.URL())
	cfg.Upstream.CAFile = hub.CAFile()
	cfg.Cache.MinFree = 0
	cfg.ShutdownTimeout = config.Duration{Duration: 5 * time.Second}
	require.NoError(t, cfg.Validate())
	return cfg
}

// TestReloadTakesCredentialsAndRefusesEndpoints checks what a reload may
// change: the credentials and keys are taken, a changed endpoint is refused
// (it needs a restart) and the gateway keeps what it had.
func TestReloadTakesCredentialsAndRefusesEndpoints(t *testing.T) {
	hub := fakehub.New(t, fakehub.Options{Token: "hf_operator"})
	cfg := testConfig(t, hub)
	a, err := New(cfg, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	defer a.Close()

	next := cfg
	next.HuggingFace.Token = "hf_rotated"
	require.NoError(t, a.Reload(next))

	moved := cfg
	moved.HuggingFace.Endpoint = config.MustEndpoint("http://127.0.0.1:1")
	err = a.Reload(moved)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "restart")

	loads := 0
	require.NoError(t, a.ReloadFrom(func() (config.Config, error) { loads++; return next, nil }))
	assert.Equal(t, 1, loads)
}

// TestServeAnswersThenDrainsWhenItsContextEnds runs the listeners on a real
// port: /readyz answers, and Serve returns nil once its context ends.
func TestServeAnswersThenDrainsWhenItsContextEnds(t *testing.T) {
	hub := fakehub.New(t, fakehub.Options{})
	a, err := New(testConfig(t, hub), slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	defer a.Close()

	ctx, cancel := context.WithCancel(t.Context())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ready) }()
	addr := <-ready
	resp, err := http.Get("http://" + addr + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	_, err = http.Get("http://" + addr + "/readyz")
	assert.Error(t, err, "the listener is closed after draining")
}
