// Package fakecivitai is a faithful, in-process fake of the CivitAI API
// (download redirects and the v1 metadata routes) and of the two object
// stores its downloads redirect to (R2-style and B2-style storage), for tests
// that must never touch the real service.
//
// All three servers are real TLS listeners on 127.0.0.1 (httptest), so the
// code under test exercises the same redirect, TLS and header handling it
// meets in production. Behaviour follows /work/shared/UPSTREAMS.md section 4:
//
//   - GET|HEAD /api/download/models/{versionId}[?type=&format=&size=&fp=&quantType=&fileId=&token=]
//     answers 307 with a signed storage URL and "Cache-Control: no-store,
//     max-age=0". Auth is "Authorization: Bearer <key>" (taking precedence) or
//     ?token=<key>; unknown keys are anonymous. Error shapes depend on the
//     User-Agent: JSON for non-browser clients, plain text and 307s to /login
//     or /model-versions/{id} for browser-like ones.
//   - GET /api/v1/model-versions/{id}, /api/v1/model-versions/by-hash/{hash}
//     and /api/v1/models/{id} answer the metadata JSON, with downloadUrl
//     origins built from the request's Host header and upper-case hashes.
//   - The storage servers accept only the signed query (an Authorization
//     header is rejected, as object stores do), check signature and expiry,
//     and serve single ranges with Content-Disposition taken from the signed
//     query.
//
// Every request to every server is recorded (Requests, Count,
// StorageFetches) so tests can assert what the code under test sent, e.g.
// that the API key never reached storage. Fault knobs (CorruptFile, GateFile,
// LoginRedirect) simulate misbehaving upstreams.
//
// The listeners, the request log and the fault machinery come from
// internal/fakeserver, shared with the other fakes; this package holds what
// is particular to CivitAI.
package fakecivitai

import (
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/modelgate/modelgate/internal/fakeserver"
)

// Server names as recorded in Request.Server and accepted by Count.
const (
	ServerAPI = "api"
	ServerR2  = "r2"
	ServerB2  = "b2"
)

// Options configures a CivitAI fake.
type Options struct {
	// Keys are valid API keys. Any other key is treated as anonymous, like
	// the real service does (there is no distinct "bad key" error).
	Keys []string
	// EarlyAccessKeys may download early-access versions. They are valid
	// keys too, whether or not they are also listed in Keys.
	EarlyAccessKeys []string
}

// CivitAI is a running fake of the CivitAI API plus its R2-style and
// B2-style storage. All methods are safe for concurrent use, including while
// requests are in flight.
type CivitAI struct {
	opts    Options
	srv     fakeserver.Servers      // the three listeners and their request log
	signKey []byte                  // HMAC key for storage URLs, private to this fake
	faults  fakeserver.Faults[int]  // file id -> storage fault knobs
	fetches fakeserver.Counter[int] // file id -> 2xx GETs on either storage

	mu            sync.RWMutex
	versions      map[int]*versionState // version id -> version
	files         map[int]*fileState    // file id -> file (the storage's objects)
	loginRedirect map[int]bool          // version id -> LoginRedirect knob
	apiFail       apiFault              // armed by FailAPI
}

// New starts the API and both storage servers and registers t.Cleanup to
// stop them.
func New(t testing.TB, opts Options) *CivitAI {
	t.Helper()
	c := &CivitAI{
		opts:          opts,
		signKey:       make([]byte, 32),
		versions:      map[int]*versionState{},
		files:         map[int]*fileState{},
		loginRedirect: map[int]bool{},
	}
	if _, err := rand.Read(c.signKey); err != nil {
		t.Fatalf("fakecivitai: generating the storage signing key: %v", err)
	}
	c.srv.Start(t, fakeserver.Config{Name: "fakecivitai"},
		fakeserver.Server{Name: ServerAPI, Handler: c.serveAPI},
		fakeserver.Server{Name: ServerR2, Handler: c.serveR2},
		fakeserver.Server{Name: ServerB2, Handler: c.serveB2})
	return c
}

// URL is the API's base URL, "https://127.0.0.1:PORT".
func (c *CivitAI) URL() string { return c.srv.URL(ServerAPI) }

// R2URL is the R2-style storage's base URL, "https://127.0.0.1:PORT".
func (c *CivitAI) R2URL() string { return c.srv.URL(ServerR2) }

// B2URL is the B2-style storage's base URL, "https://127.0.0.1:PORT".
func (c *CivitAI) B2URL() string { return c.srv.URL(ServerB2) }

// CAFile is the path of a PEM file holding the certificate(s) the three
// servers present, suitable as an upstream ca_file.
func (c *CivitAI) CAFile() string { return c.srv.CAFile() }

// CertPool trusts all three servers. A new pool is returned each time so
// callers may extend it.
func (c *CivitAI) CertPool() *x509.CertPool { return c.srv.CertPool() }

// AddVersion adds or replaces a model version (by Version.ID) and makes its
// files available on their storage. It panics on an invalid Version (ids not
// positive, duplicate file ids, empty or "/"-containing file names, unknown
// Storage): that is a bug in the test, not a condition to handle. Files is
// copied, File.Data is not: callers must not mutate it afterwards.
func (c *CivitAI) AddVersion(v Version) {
	vs, err := newVersionState(v)
	if err != nil {
		panic(fmt.Errorf("fakecivitai: AddVersion: %w", err))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.versions[vs.ID]; old != nil {
		for _, f := range old.files {
			if c.files[f.ID] == f {
				delete(c.files, f.ID)
			}
		}
	}
	c.versions[vs.ID] = vs
	for _, f := range vs.files {
		c.files[f.ID] = f
	}
}

func (c *CivitAI) version(id int) *versionState {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.versions[id]
}

// versionsOf returns the versions of a model, newest (highest id) first, as
// the real API lists them.
func (c *CivitAI) versionsOf(modelID int) []*versionState {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []*versionState
	for _, vs := range c.versions {
		if vs.ModelID == modelID {
			out = append(out, vs)
		}
	}
	slices.SortFunc(out, func(a, b *versionState) int { return b.ID - a.ID })
	return out
}

// allVersions returns every version, oldest (lowest id) first.
func (c *CivitAI) allVersions() []*versionState {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]*versionState, 0, len(c.versions))
	for _, vs := range c.versions {
		out = append(out, vs)
	}
	slices.SortFunc(out, func(a, b *versionState) int { return a.ID - b.ID })
	return out
}

func (c *CivitAI) file(id int) *fileState {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.files[id]
}

// validKey reports whether key authenticates a user.
func (c *CivitAI) validKey(key string) bool {
	return key != "" && (slices.Contains(c.opts.Keys, key) || slices.Contains(c.opts.EarlyAccessKeys, key))
}

// earlyAccessKey reports whether key may download early-access versions.
func (c *CivitAI) earlyAccessKey(key string) bool {
	return key != "" && slices.Contains(c.opts.EarlyAccessKeys, key)
}
