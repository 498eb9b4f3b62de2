// Package mitmca loads or creates the certificate authority that signs the
// gateway's certificates for the hosts it intercepts in forward-proxy mode.
//
// The CA is modelgate's own (ECDSA P-256: a leaf costs ~0.3 ms to sign, an
// RSA one ~60 ms), never goproxy's built-in one, whose private key is public.
// Workers trust it by installing its certificate (GET /ca.pem, or
// `modelgate ca`).
//
// A CA it creates is name-constrained to the model domains (and the
// domains of mitm.hosts): a leaked key cannot impersonate any other site
// to the workers that trust it. Leaves live a week and are re-signed
// before they expire. `modelgate ca --new` creates the next CA, which is
// announced alongside the current one for an overlap before it signs.
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
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Options says how a CA is created and used.
type Options struct {
	// Hosts are the mitm.hosts patterns. A CA created now may sign for
	// their domains and the model domains only.
	Hosts []string
	// Names are the gateway's own names (tls.names: DNS names and IP
	// addresses), which a CA created now may also sign for, so that it
	// can issue the TLS listener's certificate.
	Names []string
	// Overlap is how long a CA made by Rotate is only announced (Bundle
	// serves it beside the current one) before it starts signing.
	Overlap time.Duration
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// ModelDomains are the domains (with their subdomains) every CA the
// gateway creates may sign for.
var ModelDomains = []string{"huggingface.co", "hf.co", "civitai.com"}

// LeafLifetime is how long a signed leaf is valid.
const LeafLifetime = 7 * 24 * time.Hour

// clockSkew backdates certificates, for workers whose clocks lag.
const clockSkew = time.Hour

// CA is a loaded certificate authority.
type CA struct {
	// TLS is the current CA as a tls.Certificate with Leaf set.
	TLS tls.Certificate
	// PEM is its certificate alone (never the key), for workers to trust.
	PEM []byte

	// next is the CA made by Rotate, signing from nextFrom on.
	next     *tls.Certificate
	nextPEM  []byte
	nextFrom time.Time
}

// Active returns the CA that signs at now: the next one once its overlap
// is over, else the current one.
func (c *CA) Active(now time.Time) *tls.Certificate {
	if c.next != nil && !now.Before(c.nextFrom) {
		return c.next
	}
	return &c.TLS
}

// Bundle is what workers must trust at now (GET /ca.pem): during an
// overlap both certificates, otherwise the signing one.
func (c *CA) Bundle(now time.Time) []byte {
	switch {
	case c.next == nil:
		return c.PEM
	case now.Before(c.nextFrom):
		return append(append([]byte{}, c.PEM...), c.nextPEM...)
	default:
		return c.nextPEM
	}
}

// NextFrom returns when the next CA starts signing (zero without one).
func (c *CA) NextFrom() time.Time { return c.nextFrom }

// SignLeaf issues a certificate for host from the CA active at now, valid
// for LeafLifetime (never past the CA's own end).
func (c *CA) SignLeaf(host string, now time.Time) (*tls.Certificate, error) {
	return c.SignServer([]string{host}, now)
}

// SignServer issues one certificate for several names (DNS names or IP
// addresses; the first is its common name), as SignLeaf does: the TLS
// listener's own certificate.
func (c *CA) SignServer(names []string, now time.Time) (*tls.Certificate, error) {
	if len(names) == 0 {
		return nil, errors.New("a certificate needs at least one name")
	}
	host := names[0]
	ca := c.Active(now)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating leaf key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating leaf serial: %w", err)
	}
	notAfter := now.Add(LeafLifetime)
	if notAfter.After(ca.Leaf.NotAfter) {
		notAfter = ca.Leaf.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: host, Organization: []string{"modelgate"}},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Leaf, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("signing certificate for %s: %w", host, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing certificate for %s: %w", host, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// File names used when the CA lives in the data directory.
const (
	certName     = "modelgate-ca.pem"
	keyName      = "modelgate-ca-key.pem"
	nextCertName = "modelgate-ca-next.pem"
	nextKeyName  = "modelgate-ca-next-key.pem"
)

// Load returns the CA from certFile and keyFile when both are set;
// otherwise the CA in dir, created there on first use (key mode 0600),
// with the next one Rotate made, if any. A next CA whose overlap is over
// replaces the current one on disk. A CA made by an earlier version
// (without name constraints) keeps working until it is rotated.
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
	nextCert, nextKey := filepath.Join(dir, nextCertName), filepath.Join(dir, nextKeyName)
	if _, err := os.Stat(nextKey); errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(nextCert); err == nil {
			// A promotion was cut between its two renames: the key is
			// already in place, the certificate follows.
			if err := os.Rename(nextCert, certFile); err != nil {
				return nil, fmt.Errorf("finishing CA rotation: %w", err)
			}
		}
	}
	ca, err := loadFiles(certFile, keyFile)
	if errors.Is(err, os.ErrNotExist) {
		if _, cerr := os.Stat(certFile); errors.Is(cerr, os.ErrNotExist) {
			// A crash between writing the key and the certificate left a
			// key alone: nothing was ever signed with it, so start over.
			os.Remove(keyFile)
		}
		if err := create(certFile, keyFile, opts); err != nil {
			return nil, err
		}
		ca, err = loadFiles(certFile, keyFile)
	}
	if err != nil {
		return nil, err
	}
	next, err := loadFiles(nextCert, nextKey)
	if errors.Is(err, os.ErrNotExist) {
		return ca, nil
	}
	if err != nil {
		return nil, fmt.Errorf("next CA: %w", err)
	}
	ca.next, ca.nextPEM = &next.TLS, next.PEM
	ca.nextFrom = next.TLS.Leaf.NotBefore.Add(clockSkew + opts.Overlap)
	if !opts.now().Before(ca.nextFrom) {
		// Its overlap is over: it is the CA now.
		if err := os.Rename(nextKey, keyFile); err != nil {
			return nil, fmt.Errorf("promoting the next CA: %w", err)
		}
		if err := os.Rename(nextCert, certFile); err != nil {
			return nil, fmt.Errorf("promoting the next CA: %w", err)
		}
		return next, nil
	}
	return ca, nil
}

// Rotate creates the next CA in dir (with the constraints opts.Hosts
// gives), to be announced beside the current one for opts.Overlap before
// it signs, and returns the CA with both.
func Rotate(dir string, opts Options) (*CA, error) {
	ca, err := Load("", "", dir, opts)
	if err != nil {
		return nil, err
	}
	if ca.next != nil {
		return nil, fmt.Errorf("a new CA is already waiting; it signs from %s", ca.nextFrom.Format(time.RFC3339))
	}
	if err := create(filepath.Join(dir, nextCertName), filepath.Join(dir, nextKeyName), opts); err != nil {
		return nil, err
	}
	return Load("", "", dir, opts)
}

// Constraints returns the DNS domains a CA created for hosts may sign
// for: the model domains and the domain of every mitm.hosts pattern (a
// constraint covers the domain and its subdomains), and the IP addresses
// among hosts. The gateway's own names (tls.names) are passed in hosts
// too.
func Constraints(hosts []string) (domains []string, ips []net.IP) {
	seen := map[string]bool{}
	add := func(d string) {
		if d = strings.ToLower(strings.TrimSuffix(d, ".")); d != "" && !seen[d] {
			seen[d] = true
			domains = append(domains, d)
		}
	}
	for _, d := range ModelDomains {
		add(d)
	}
	for _, h := range hosts {
		if host, _, err := net.SplitHostPort(h); err == nil {
			h = host
		}
		h = strings.TrimPrefix(h, "*.")
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
			continue
		}
		add(h)
	}
	return domains, ips
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
func create(certFile, keyFile string, opts Options) error {
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
	now := opts.now()
	domains, ips := Constraints(append(append([]string{}, opts.Hosts...), opts.Names...))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "modelgate CA (" + host + ") " + now.UTC().Format("2006-01-02"), Organization: []string{"modelgate"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		// Only the model hosts: whoever got the key could otherwise
		// impersonate any site to every worker that trusts this CA.
		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         domains,
	}
	if len(ips) > 0 {
		for _, ip := range ips {
			bits := 8 * len(ip.To16())
			if ip.To4() != nil {
				ip, bits = ip.To4(), 32
			}
			tmpl.PermittedIPRanges = append(tmpl.PermittedIPRanges, &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)})
		}
	} else {
		// No address at all (a constraint on names leaves addresses free).
		tmpl.ExcludedIPRanges = []*net.IPNet{
			{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
		}
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

// ServerCertificates returns a tls.Config.GetCertificate for a server
// presenting one certificate for names (the TLS listener's), issued from
// the CA and issued again when less than two days of it are left or
// another CA signs now (after a rotation's overlap).
func (c *CA) ServerCertificates(names []string, now func() time.Time) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if now == nil {
		now = time.Now
	}
	var mu sync.Mutex
	var cur *tls.Certificate
	var signer *tls.Certificate
	return func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		t := now()
		active := c.Active(t)
		if cur == nil || signer != active || t.Add(2*24*time.Hour).After(cur.Leaf.NotAfter) {
			cert, err := c.SignServer(names, t)
			if err != nil {
				return nil, err
			}
			cur, signer = cert, active
		}
		return cur, nil
	}
}

// Uncovered returns those of names that a certificate from the CA
// signing at now would not be valid for, because of the CA's name
// constraints (a CA created before they were among tls.names).
func (c *CA) Uncovered(names []string, now time.Time) []string {
	active := c.Active(now)
	roots := x509.NewCertPool()
	roots.AddCert(active.Leaf)
	var out []string
	for _, n := range names {
		leaf, err := c.SignServer([]string{n}, now)
		if err == nil {
			_, err = leaf.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: n, CurrentTime: now})
		}
		if err != nil {
			out = append(out, n)
		}
	}
	return out
}
