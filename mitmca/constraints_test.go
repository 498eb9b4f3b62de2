package mitmca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// verify checks a leaf for host against roots (PEM) the way a worker's
// TLS stack does.
func verify(t *testing.T, roots []byte, ca *CA, host string, now time.Time) error {
	t.Helper()
	leaf, err := ca.SignLeaf(host, now)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(roots))
	_, err = leaf.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host, CurrentTime: now})
	return err
}

// Issue 10, item 12: the CA was an unconstrained root; a leaked key could
// impersonate any site to every worker.
func TestNewCAOnlySignsForTheModelDomainsAndMITMHosts(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	ca, err := Load("", "", t.TempDir(), Options{Hosts: []string{"huggingface.co", "*.hf.co", "*.models.example:8443"}, Now: func() time.Time { return now }})
	require.NoError(t, err)
	for _, host := range []string{"huggingface.co", "cdn-lfs.huggingface.co", "hf.co", "cas-bridge.xethub.hf.co", "civitai.com", "a.models.example"} {
		assert.NoError(t, verify(t, ca.PEM, ca, host, now), host)
	}
	for _, host := range []string{"example.com", "evilhuggingface.co", "huggingface.co.evil.example", "10.0.0.1"} {
		err := verify(t, ca.PEM, ca, host, now)
		var invalid x509.CertificateInvalidError
		if assert.ErrorAs(t, err, &invalid, host) {
			assert.Contains(t, []x509.InvalidReason{x509.CANotAuthorizedForThisName, x509.CANotAuthorizedForExtKeyUsage}, invalid.Reason, host)
		}
	}
}

func TestLeavesLiveAWeek(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	ca, err := Load("", "", t.TempDir(), Options{Now: func() time.Time { return now }})
	require.NoError(t, err)
	leaf, err := ca.SignLeaf("huggingface.co", now)
	require.NoError(t, err)
	assert.Equal(t, now.Add(7*24*time.Hour), leaf.Leaf.NotAfter)
	assert.NoError(t, verify(t, ca.PEM, ca, "huggingface.co", now.Add(6*24*time.Hour)))
	_, err = leaf.Leaf.Verify(x509.VerifyOptions{Roots: pool(t, ca.PEM), DNSName: "huggingface.co", CurrentTime: now.Add(8 * 24 * time.Hour)})
	assert.Error(t, err, "a week later the leaf is expired")
}

func pool(t *testing.T, pemData []byte) *x509.CertPool {
	p := x509.NewCertPool()
	require.True(t, p.AppendCertsFromPEM(pemData))
	return p
}

func TestRotationAnnouncesTheNewCABeforeItSigns(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	opts := Options{Overlap: 14 * 24 * time.Hour, Now: func() time.Time { return now }}
	old, err := Load("", "", dir, opts)
	require.NoError(t, err)

	now = now.Add(24 * time.Hour)
	ca, err := Rotate(dir, opts)
	require.NoError(t, err)
	bundle := ca.Bundle(now)
	assert.Len(t, pemCerts(t, bundle), 2, "during the overlap /ca.pem serves both")
	assert.Equal(t, old.PEM, pemCerts(t, bundle)[0])
	nextPEM := pemCerts(t, bundle)[1]
	// Still the old CA signs: a worker that trusts only it keeps working.
	assert.NoError(t, verify(t, old.PEM, ca, "huggingface.co", now))
	assert.Error(t, verify(t, nextPEM, ca, "huggingface.co", now))
	_, err = Rotate(dir, opts)
	assert.ErrorContains(t, err, "already waiting")

	// A restart during the overlap keeps both.
	again, err := Load("", "", dir, opts)
	require.NoError(t, err)
	assert.Equal(t, bundle, again.Bundle(now))

	// After the overlap, the new one signs and is all /ca.pem serves.
	now = now.Add(14*24*time.Hour + 2*time.Hour)
	assert.NoError(t, verify(t, nextPEM, ca, "huggingface.co", now))
	assert.Equal(t, nextPEM, ca.Bundle(now))
	// The next start makes it the CA on disk.
	promoted, err := Load("", "", dir, opts)
	require.NoError(t, err)
	assert.Equal(t, nextPEM, promoted.PEM)
	assert.Equal(t, nextPEM, promoted.Bundle(now))
	_, err = os.Stat(filepath.Join(dir, nextCertName))
	assert.ErrorIs(t, err, os.ErrNotExist)
	fi, err := os.Stat(filepath.Join(dir, keyName))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

func pemCerts(t *testing.T, b []byte) [][]byte {
	var out [][]byte
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return out
		}
		out = append(out, pem.EncodeToMemory(block))
	}
}

// A CA made by an earlier version has no name constraints; it keeps
// loading and signing until the operator rotates it.
func TestAnUnconstrainedCAFromAnEarlierVersionStillWorks(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "modelgate CA (old)"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(10, 0, 0),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, keyName), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600))
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	require.NoError(t, os.WriteFile(filepath.Join(dir, certName), certPEM, 0o644))

	ca, err := Load("", "", dir, Options{})
	require.NoError(t, err)
	assert.Equal(t, certPEM, ca.PEM, "the existing CA is kept")
	assert.NoError(t, verify(t, ca.PEM, ca, "huggingface.co", time.Now()))
}

// Issue 12, section 7: the TLS listener's certificate comes from this CA,
// so a new CA must be allowed to sign for the gateway's own names and
// addresses (IP SANs need IP constraints), and for nothing more.
func TestNewCACoversTheGatewaysOwnNames(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	names := []string{"gate.lan", "127.0.0.1", "::1"}
	ca, err := Load("", "", t.TempDir(), Options{Hosts: []string{"huggingface.co"}, Names: names, Now: func() time.Time { return now }})
	require.NoError(t, err)
	cert, err := ca.SignServer(names, now)
	require.NoError(t, err)
	assert.Equal(t, []string{"gate.lan"}, cert.Leaf.DNSNames)
	assert.Len(t, cert.Leaf.IPAddresses, 2)
	for _, n := range names {
		_, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool(t, ca.PEM), DNSName: n, CurrentTime: now})
		assert.NoError(t, err, n)
	}
	assert.Empty(t, ca.Uncovered(names, now))
	get := ca.ServerCertificates(names, func() time.Time { return now })
	first, err := get(nil)
	require.NoError(t, err)
	again, err := get(nil)
	require.NoError(t, err)
	assert.Same(t, first, again, "kept while it is fresh")

	// A CA created before these names were configured cannot cover them:
	// the gateway says so (it needs modelgate ca --new).
	old, err := Load("", "", t.TempDir(), Options{Hosts: []string{"huggingface.co"}, Now: func() time.Time { return now }})
	require.NoError(t, err)
	assert.Equal(t, names, old.Uncovered(names, now))

	// Still nothing else: not another address, not another name.
	for _, host := range []string{"10.0.0.1", "127.0.0.2", "other.lan", "example.com"} {
		err := verify(t, ca.PEM, ca, host, now)
		var invalid x509.CertificateInvalidError
		if assert.ErrorAs(t, err, &invalid, host) {
			assert.Equal(t, x509.CANotAuthorizedForThisName, invalid.Reason, host)
		}
	}
}
