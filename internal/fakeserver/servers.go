// Package fakeserver holds the building blocks for the project's fake
// upstreams: recorded TLS test servers and fault-injecting body writers.
//
// Each fake (fakehub, fakecivitai) keeps its protocol in its own package and
// takes from here what every fake upstream needs in the same way: real TLS
// listeners on 127.0.0.1 that a client can trust through a CA file, a log of
// every request so tests can assert what the code under test sent, per-key
// counters of served bodies to prove caching, and fault knobs (corrupt,
// throttle, gate) that simulate a misbehaving upstream. One copy means a fix
// (say, to how gated bodies end at cleanup) reaches every fake at once.
package fakeserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// errShutdown is the cause of every request context's end when the servers
// are closed; gated and throttled writes return it.
var errShutdown = errors.New("fakeserver: shutting down")

// Server is one listener of a Servers set.
type Server struct {
	// Name identifies the server in Request.Server, Count and URL.
	Name string
	// Handler answers the server's requests once they are recorded.
	Handler http.HandlerFunc
	// Names are public host names the server stands for on port 443
	// (say, a CDN's). The servers then present a certificate for them
	// (and for 127.0.0.1) from a CA made for this set, which CAFile and
	// CertPool hold; Resolve maps each name:443 to the server's address,
	// for a client that dials by such an override (curl --resolve, the
	// gateway's upstream.resolve).
	Names []string
}

// Config configures a Servers set.
type Config struct {
	// Name prefixes failure messages and names the CA file, so a failure
	// points at the fake that caused it (e.g. "fakehub").
	Name string
	// MaxBody is how many bytes of each request body Request.Body keeps; 0
	// keeps none and leaves the body alone. The cap stops tests that upload
	// large bodies from ballooning memory.
	MaxBody int
}

// Servers is a set of named HTTPS test servers sharing one trust root, one
// request log and one shutdown. A fake keeps one as a field and calls Start
// from its constructor. Start fills in the URLs before any server accepts a
// connection, so handlers may call URL without more synchronisation; every
// other method is for use after Start returns, and is then safe for
// concurrent use. A Servers must not be copied.
type Servers struct {
	name    string
	maxBody int
	urls    map[string]string
	resolve map[string]string // "name:443" -> "127.0.0.1:port"
	caFile  string
	pool    *x509.CertPool

	mu   sync.Mutex
	reqs []Request
}

// Start starts one TLS server on 127.0.0.1 per entry of servers, writes a
// PEM file with the certificate(s) they present, and registers t.Cleanup to
// stop them. Each server is real (httptest), so code under test meets the
// same TLS, redirect and header handling it meets in production.
//
// At cleanup every in-flight request's context is cancelled before the
// servers close: httptest's Close waits for running handlers, and a handler
// held by a gate nobody will release would otherwise hang the test.
func (s *Servers) Start(t testing.TB, cfg Config, servers ...Server) {
	t.Helper()
	if s.urls != nil {
		t.Fatalf("%s: servers started twice", cfg.Name)
	}
	for i, sv := range servers {
		if sv.Name == "" || slices.ContainsFunc(servers[:i], func(o Server) bool { return o.Name == sv.Name }) {
			t.Fatalf("%s: server name %q is empty or repeated", cfg.Name, sv.Name)
		}
	}
	s.name, s.maxBody, s.urls = cfg.Name, cfg.MaxBody, make(map[string]string, len(servers))
	s.resolve = map[string]string{}
	var names []string
	for _, sv := range servers {
		names = append(names, sv.Names...)
	}
	var named *namedTLS
	if len(names) > 0 {
		var err error
		if named, err = newNamedTLS(names); err != nil {
			t.Fatalf("%s: making the certificate for %v: %v", cfg.Name, names, err)
		}
	}
	base, stop := context.WithCancelCause(context.Background())
	started := make([]*httptest.Server, len(servers))
	for i, sv := range servers {
		// Unstarted servers already own their listener, so every URL is
		// known before the first request can arrive and handlers read the
		// map race-free.
		ts := httptest.NewUnstartedServer(s.record(sv.Name, sv.Handler))
		ts.Config.BaseContext = func(net.Listener) context.Context { return base }
		s.urls[sv.Name] = "https://" + ts.Listener.Addr().String()
		for _, n := range sv.Names {
			s.resolve[strings.ToLower(n)+":443"] = ts.Listener.Addr().String()
		}
		if named != nil {
			ts.TLS = &tls.Config{Certificates: []tls.Certificate{named.leaf}}
		}
		started[i] = ts
	}
	for _, ts := range started {
		ts.StartTLS()
	}
	t.Cleanup(func() {
		stop(errShutdown)
		for _, ts := range started {
			ts.Close()
		}
	})

	s.pool = x509.NewCertPool()
	var pemData []byte
	var seen []*x509.Certificate
	if named != nil {
		// One CA signed every server's certificate: trusting it is enough.
		s.pool.AddCert(named.ca)
		pemData = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: named.ca.Raw})
	}
	for i, ts := range started {
		if named != nil {
			break
		}
		if ts.URL != s.urls[servers[i].Name] {
			t.Fatalf("%s: server %s moved on start: %s", cfg.Name, servers[i].Name, ts.URL)
		}
		c := ts.Certificate()
		if slices.ContainsFunc(seen, c.Equal) {
			continue // httptest normally uses one certificate for every server
		}
		seen = append(seen, c)
		s.pool.AddCert(c)
		pemData = append(pemData, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	s.caFile = filepath.Join(t.TempDir(), cfg.Name+"-ca.pem")
	if err := os.WriteFile(s.caFile, pemData, 0o600); err != nil {
		t.Fatalf("%s: writing CA file: %v", cfg.Name, err)
	}
}

// URL is the base URL of the named server, "https://127.0.0.1:PORT". An
// unknown name is a bug in the fake and panics.
func (s *Servers) URL(name string) string {
	u, ok := s.urls[name]
	if !ok {
		panic(s.name + ": no server named " + name)
	}
	return u
}

// Resolve maps each server's public names ("name:443", lower case) to
// its listener's address; empty when no server has Names.
func (s *Servers) Resolve() map[string]string { return maps.Clone(s.resolve) }

// CAFile is the path of a PEM file holding the certificate(s) the servers
// present, suitable as an upstream ca_file.
func (s *Servers) CAFile() string { return s.caFile }

// CertPool trusts every server. A new pool is returned each time so callers
// may extend it.
func (s *Servers) CertPool() *x509.CertPool { return s.pool.Clone() }
