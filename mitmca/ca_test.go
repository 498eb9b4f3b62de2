package mitmca

import (
	"crypto/ecdsa"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestGeneratedCAIsReusedAndItsKeyIsPrivate(t *testing.T) {
	dir := t.TempDir()
	ca, err := Load("", "", dir, Options{})
	require.NoError(t, err)
	assert.True(t, ca.TLS.Leaf.IsCA)
	_, isECDSA := ca.TLS.Leaf.PublicKey.(*ecdsa.PublicKey)
	assert.True(t, isECDSA, "an ECDSA CA keeps leaf signing cheap")
	assert.NotContains(t, string(ca.PEM), "PRIVATE KEY")

	fi, err := os.Stat(filepath.Join(dir, keyName))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	again, err := Load("", "", dir, Options{})
	require.NoError(t, err)
	assert.Equal(t, ca.PEM, again.PEM, "the second start reuses the CA")
}

func TestConfiguredCAFilesAreUsed(t *testing.T) {
	src := t.TempDir()
	ca, err := Load("", "", src, Options{})
	require.NoError(t, err)
	got, err := Load(filepath.Join(src, certName), filepath.Join(src, keyName), t.TempDir(), Options{})
	require.NoError(t, err)
	assert.Equal(t, ca.PEM, got.PEM)

	_, err = Load(filepath.Join(src, certName), "", t.TempDir(), Options{})
	assert.ErrorContains(t, err, "together")
	_, err = Load(filepath.Join(src, "missing.pem"), filepath.Join(src, keyName), t.TempDir(), Options{})
	assert.Error(t, err)
}

func TestANonCACertificateIsRefused(t *testing.T) {
	dir := t.TempDir()
	ca, err := Load("", "", dir, Options{})
	require.NoError(t, err)
	// The CA's own key file in place of a certificate is not a CA.
	_, err = Load(filepath.Join(dir, keyName), filepath.Join(dir, keyName), t.TempDir(), Options{})
	assert.Error(t, err)
	pool := x509.NewCertPool()
	assert.True(t, pool.AppendCertsFromPEM(ca.PEM))
}

func TestAKeyLeftAloneByACrashIsReplaced(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, keyName), []byte("half-written"), 0o600))
	ca, err := Load("", "", dir, Options{})
	require.NoError(t, err)
	assert.True(t, ca.TLS.Leaf.IsCA)
}
