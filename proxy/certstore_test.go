package proxy

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/mitmca"
)

// Issue 10, item 12: leaves were cached without an expiry check, so
// interception broke once the first leaf expired. A leaf near its end, or
// signed by a CA that no longer signs, is replaced.
func TestCachedLeavesAreReSignedBeforeTheyExpire(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	opts := mitmca.Options{Overlap: 24 * time.Hour, Now: clock}
	ca, err := mitmca.Load("", "", dir, opts)
	require.NoError(t, err)
	s := newCertStore(ca, 16, clock)

	verifies := func(roots []byte, host string) *x509.Certificate {
		t.Helper()
		c, err := s.get(host)
		require.NoError(t, err)
		pool := x509.NewCertPool()
		require.True(t, pool.AppendCertsFromPEM(roots))
		_, err = c.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host, CurrentTime: clock()})
		require.NoError(t, err, "the served leaf verifies at the current time")
		return c.Leaf
	}
	first := verifies(ca.PEM, "huggingface.co")
	advance(4 * 24 * time.Hour)
	assert.Equal(t, first.SerialNumber, verifies(ca.PEM, "huggingface.co").SerialNumber, "a fresh leaf is reused")
	advance(2 * 24 * time.Hour) // one day left
	second := verifies(ca.PEM, "huggingface.co")
	assert.NotEqual(t, first.SerialNumber, second.SerialNumber, "a leaf near its end is replaced")
	// A year of uptime: still valid leaves.
	for range 60 {
		advance(6 * 24 * time.Hour)
		verifies(ca.PEM, "huggingface.co")
	}

	// After a rotation's overlap the new CA signs, and cached leaves of
	// the old one are replaced.
	rotated, err := mitmca.Rotate(dir, opts)
	require.NoError(t, err)
	s = newCertStore(rotated, 16, clock)
	before := verifies(ca.PEM, "hf.co")
	advance(26 * time.Hour)
	next := rotated.Bundle(clock())
	after := verifies(next, "hf.co")
	assert.NotEqual(t, before.SerialNumber, after.SerialNumber)
	_, err = os.Stat(filepath.Join(dir, "modelgate-ca-next.pem"))
	require.NoError(t, err)
}
