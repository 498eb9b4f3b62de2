// Package mitmca loads or creates the certificate authority that signs the
// gateway's certificates for the hosts it intercepts in forward-proxy mode.
//
// The CA is modelgate's own (ECDSA P-256: a leaf costs ~0.3 ms to sign, an
// RSA one ~60 ms), never goproxy's built-in one, whose private key is public.
// Workers trust it by installing its certificate (GET /ca.pem, or
// `modelgate ca`).
package mitmca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// Options says how a CA is created and used.
type Options struct{}

// CA is a loaded certificate authority.
type CA struct {
	// TLS is the CA as a tls.Certificate with Leaf set, as goproxy's signer
	// wants it.
	TLS tls.Certificate
	// PEM is the certificate alone (never the key), for workers to trust.
	PEM []byte
}

// File names used when the CA lives in the data directory.
const (
	certName = "modelgate-ca.pem"
	keyName  = "modelgate-ca-key.pem"
)

// Load returns the CA from certFile and keyFile when both are set;
// otherwise the CA in dir, created there on first use (key mode 0600).
func Load(certFile, keyFile, dir string, opts Options) (*CA, error) {
	switch {
	case certFile != "" && keyFile != "":
		if err := checkKeyMode(keyFile); err != nil {
			return nil, err
		}
		return loadFiles(certFile, keyFile)
	case certFile != "" || keyFile != "":
		return nil, errors.New("mitm.ca_cert and mitm.ca_key must be set together")
	}
	certFile, keyFile = filepath.Join(dir, certName), filepath.Join(dir, keyName)
	ca, err := loadFiles(certFile, keyFile)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return ca, err
	}
	if _, cerr := os.Stat(certFile); errors.Is(cerr, os.ErrNotExist) {
		// A crash between writing the key and the certificate left a key
		// alone: nothing was ever signed with it, so start over.
		os.Remove(keyFile)
	}
	if err := create(certFile, keyFile); err != nil {
		return nil, err
	}
	return loadFiles(certFile, keyFile)
}

// checkKeyMode refuses a configured CA key that other local users may
// read: whoever reads it can impersonate the model hosts to every worker.
func checkKeyMode(keyFile string) error {
	fi, err := os.Stat(keyFile)
	if err != nil {
		return fmt.Errorf("reading CA key: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("mitm.ca_key %s has mode %#o: other users can read it; run chmod 600 on it", keyFile, perm)
	}
	return nil
}

func loadFiles(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("reading CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("reading CA key: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// The error text of X509KeyPair never contains key material.
		return nil, fmt.Errorf("loading CA key pair %s: %w", certFile, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	if !leaf.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", certFile)
	}
	pair.Leaf = leaf
	block := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: pair.Certificate[0]})
	return &CA{TLS: pair, PEM: block}, nil
}

// create generates a new CA into certFile and keyFile. The key file is
// created exclusively with mode 0600, so an existing key is never
// overwritten and never readable by others.
func create(certFile, keyFile string) error {
	if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
		return fmt.Errorf("creating CA directory: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating CA key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return fmt.Errorf("generating CA serial: %w", err)
	}
	host, _ := os.Hostname()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "modelgate CA (" + host + ")", Organization: []string{"modelgate"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("signing CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding CA key: %w", err)
	}
	kf, err := os.OpenFile(keyFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating CA key file: %w", err)
	}
	if err := pem.Encode(kf, &pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}); err != nil {
		kf.Close()
		return fmt.Errorf("writing CA key: %w", err)
	}
	if err := kf.Close(); err != nil {
		return fmt.Errorf("writing CA key: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		return fmt.Errorf("writing CA certificate: %w", err)
	}
	return nil
}
