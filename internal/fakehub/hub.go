// Package fakehub is a faithful, in-process fake of the model Hub (API and
// resolve routes) and of the CDN its LFS redirects point to, for tests that
// must never touch the real Hub.
//
// Both servers are real TLS listeners on 127.0.0.1 (httptest), so the code
// under test exercises the same redirect, TLS and header handling it meets in
// production. Behaviour follows /work/shared/UPSTREAMS.md sections 1, 2 and
// 6.4: LFS files answer a 302 with X-Linked-* headers to a signed CDN URL
// (Xet files to the Xet bridge, /xet-bridge-us/..., named by their Xet hash),
// small files a relative 307 to /api/resolve-cache/..., errors carry
// X-Error-Code/X-Error-Message, and the status matrix for auth is:
//
//	                    anonymous            OtherTokens          Token
//	unknown repo        401 RepoNotFound     404 RepoNotFound     404 RepoNotFound
//	private repo        401 RepoNotFound     404 RepoNotFound     ok
//	gated repo          401 GatedRepo        403 GatedRepo        ok
//	unknown bearer      401 "Invalid credentials in Authorization header" (any route)
//
// Every request to both servers is recorded (Requests, Count, ...) so tests
// can assert what the code under test sent, e.g. that no Authorization header
// ever reached the CDN. Fault knobs (CorruptBlob, CorruptSmallFile,
// ThrottleBlob, GateBlob, FailHub, SetDown) simulate misbehaving upstreams.
//
// The listeners, the request log and the fault machinery come from
// internal/fakeserver, shared with the other fakes; this package holds what
// is particular to the Hub.
package fakehub

import (
	"crypto/x509"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/modelgate/modelgate/internal/fakeserver"
)

// Server names as recorded in Request.Server and accepted by Count.
const (
	serverHub = "hub"
	serverCDN = "cdn"
)

// Options configures a Hub.
type Options struct {
	// Token is authorised for everything (the operator's token).
	Token string
	// OtherTokens are valid user tokens without access to gated or private repos.
	OtherTokens []string
	// PageSize is the maximum number of tree entries per page (default 1000,
	// the Hub's documented page size).
	PageSize int
	// PublicNames puts the CDN and the CAS under the Hub's real host
	// names, as in production: LFS redirects go to https://CDNHost, Xet
	// bridge redirects to https://XetBridgeHost, the Xet tokens' casUrl
	// and reconstruction links name https://CASHost and xorb URLs
	// https://TransferHost, all on port 443 with certificates for those
	// names (CAFile holds their CA). A client reaches them through a name
	// override (Resolve): the gateway's upstream.resolve, curl --resolve.
	// The Hub itself stays at URL (the gateway's configured endpoint).
	PublicNames bool
	// XetChunkSize and XetXorbChunks override the fake CAS's chunk size
	// and the most chunks it packs into one xorb (defaults: the constants
	// of the same names, small so that tests cross xorb boundaries with
	// small files). Benchmarks set sizes nearer the real ones (chunks of
	// about 64 KiB, xorbs of up to 64 MiB). At most 16 MiB per chunk: its
	// header holds 24-bit lengths.
	XetChunkSize, XetXorbChunks int
}

// The real names the fake stands for with Options.PublicNames
// (UPSTREAMS.md §1, §3).
const (
	CDNHost       = "cdn-lfs-us-1.hf.co"
	XetBridgeHost = "cas-bridge.xethub.hf.co"
	CASHost       = "cas-server.xethub.hf.co"
	TransferHost  = "transfer.xethub.hf.co"
)

// Hub is a running fake Hub plus its CDN. All methods are safe for
// concurrent use, including while requests are in flight.
type Hub struct {
	opts Options
	srv  fakeserver.Servers // the Hub and CDN listeners and their request log
	// signKey is the HMAC key for CDN URL signatures, private to this
	// fake; ExpireCDNURLs replaces it.
	signKey atomic.Pointer[[]byte]
	faults  fakeserver.Faults[string] // sha256 -> CDN fault knobs
	// small holds the fault knobs of small files' bodies on
	// /api/resolve-cache, keyed by their git blob id.
	small fakeserver.Faults[string]

	cdnFetches   fakeserver.Counter[string]   // sha256 -> 2xx GETs on the CDN
	xorbFetches  fakeserver.Counter[string]   // xorb hash -> 2xx GETs on the CAS
	xorbFaults   fakeserver.Faults[string]    // xorb hash -> CAS fault knobs
	smallFetches fakeserver.Counter[smallKey] // 2xx GETs on /api/resolve-cache

	mu      sync.RWMutex
	repos   map[string]*repoState // "type/id" -> repo
	renames map[string]string     // old id -> new id
	blobs   map[string]*fileState // sha256 -> LFS file (content served by the CDN)
	xet     map[string]string     // Xet hash -> sha256, for the Xet bridge
	down    bool
	hubFail hubFault // armed by FailHub / RateLimitHub
	cas     casState // the Xet CAS's chunks, xorbs, files and tokens
}

// New starts the Hub and the CDN and registers t.Cleanup to stop them.
func New(t testing.TB, opts Options) *Hub {
	t.Helper()
	if opts.PageSize <= 0 {
		opts.PageSize = 1000
	}
	if opts.XetChunkSize <= 0 {
		opts.XetChunkSize = XetChunkSize
	}
	if opts.XetXorbChunks <= 0 {
		opts.XetXorbChunks = XetXorbChunks
	}
	h := &Hub{
		opts:    opts,
		repos:   map[string]*repoState{},
		renames: map[string]string{},
		blobs:   map[string]*fileState{},
		xet:     map[string]string{},
		cas:     newCASState(),
	}
	if err := h.newSignKey(); err != nil {
		t.Fatalf("fakehub: generating the CDN signing key: %v", err)
	}
	cdn := fakeserver.Server{Name: serverCDN, Handler: h.serveCDN}
	cas := fakeserver.Server{Name: serverCAS, Handler: h.serveCAS}
	if opts.PublicNames {
		cdn.Names = []string{CDNHost, XetBridgeHost}
		cas.Names = []string{CASHost, TransferHost}
	}
	h.srv.Start(t, fakeserver.Config{Name: "fakehub", MaxBody: maxRecordedBody},
		fakeserver.Server{Name: serverHub, Handler: h.serveHub}, cdn, cas)
	return h
}

// URL is the Hub's base URL, "https://127.0.0.1:PORT".
func (h *Hub) URL() string { return h.srv.URL(serverHub) }

// CDNURL is the CDN's base URL for LFS files: "https://127.0.0.1:PORT",
// or "https://"+CDNHost with PublicNames.
func (h *Hub) CDNURL() string { return h.publicURL(serverCDN, CDNHost) }

// xetBridgeURL is where Xet files' plain-HTTP redirects go.
func (h *Hub) xetBridgeURL() string { return h.publicURL(serverCDN, XetBridgeHost) }

// transferURL is the base of signed xorb URLs.
func (h *Hub) transferURL() string { return h.publicURL(serverCAS, TransferHost) }

func (h *Hub) publicURL(server, name string) string {
	if h.opts.PublicNames {
		return "https://" + name
	}
	return h.srv.URL(server)
}

// Resolve maps the public names ("name:443") to the listeners that serve
// them, for upstream.resolve; empty without PublicNames.
func (h *Hub) Resolve() map[string]string { return h.srv.Resolve() }

// Listeners are the CDN's and the CAS's own addresses (host:port on
// loopback), whatever names stand for them: what a gateway must be let
// reach although they are loopback addresses (upstream.private_hosts).
func (h *Hub) Listeners() []string {
	return []string{strings.TrimPrefix(h.srv.URL(serverCDN), "https://"), strings.TrimPrefix(h.srv.URL(serverCAS), "https://")}
}

// CAFile is the path of a PEM file holding the certificate(s) both servers
// present, suitable as an upstream ca_file.
func (h *Hub) CAFile() string { return h.srv.CAFile() }

// CertPool trusts both servers. A new pool is returned each time so callers
// may extend it.
func (h *Hub) CertPool() *x509.CertPool { return h.srv.CertPool() }

// AddRepo adds or replaces a repository. It panics on an invalid Repo (bad
// type, id, commit id or file path): that is a bug in the test, not a
// condition to handle.
func (h *Hub) AddRepo(r Repo) {
	rs, err := newRepoState(r, h.opts.XetChunkSize)
	if err != nil {
		panic(fmt.Errorf("fakehub: AddRepo: %w", err))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.repos[rs.Type+"/"+rs.ID] = rs
	for _, files := range rs.files {
		for _, f := range files {
			if f.LFS {
				h.blobs[f.sha256] = f
			}
			if f.Xet {
				h.xet[f.xetHash] = f.sha256
				h.casAddFile(rs.Type+"/"+rs.ID, f)
			}
		}
	}
}

// AddRename makes every route of oldID answer a relative 307 to the same
// route under newID, like the Hub does for renamed repos and legacy short
// ids. It applies to all repo types and only while no repo named oldID
// exists.
func (h *Hub) AddRename(oldID, newID string) {
	if !validRepoID(oldID) || !validRepoID(newID) {
		panic(fmt.Errorf("fakehub: AddRename(%q, %q): invalid repo id", oldID, newID))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.renames[oldID] = newID
}

// SetDown makes the Hub (not the CDN) answer every request by closing the
// connection, which clients see as a network failure.
func (h *Hub) SetDown(down bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.down = down
}

func (h *Hub) isDown() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.down
}

// lookupRepo returns the repo snapshot for typ/id, or the rename target.
func (h *Hub) lookupRepo(typ, id string) (rs *repoState, renamedTo string) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if rs := h.repos[typ+"/"+id]; rs != nil {
		return rs, ""
	}
	return nil, h.renames[id]
}

// knownRepoID reports whether typ/id names a repo or a rename, which is how
// ambiguous routes decide between a one- and a two-segment repo id.
func (h *Hub) knownRepoID(typ, id string) bool {
	rs, renamed := h.lookupRepo(typ, id)
	return rs != nil || renamed != ""
}

// xetSHA256 maps a Xet hash to the sha256 of its file ("" if unknown).
func (h *Hub) xetSHA256(xetHash string) string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.xet[xetHash]
}

func (h *Hub) blob(sha string) *fileState {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.blobs[sha]
}

// hijackClose drops the connection without an answer, the way an upstream
// that crashed or a broken middlebox would.
func hijackClose(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// Cannot happen on the HTTP/1.1 servers httptest starts; a panic with
		// ErrAbortHandler still makes the server drop the connection.
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}
