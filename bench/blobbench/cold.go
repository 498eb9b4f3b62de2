package main

// The cold section: downloads straight from a throttled fake CDN against the
// same downloads through a gateway that has never seen the blob, and the
// first fill of the whole test file with the CDN uncapped.

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/modelgate/modelgate/internal/fakeserver"
)

// Repos of the fake Hub and the CDN keys they redirect to.
const (
	repo       = "bench/model"  // the whole test file; CDN key "full", never throttled
	cappedRepo = "bench/capped" // its first --cold-size bytes; CDN key "capped", throttled
	keyFull    = "full"
	keyCapped  = "capped"
)

// fakeCDN serves the test file over TLS from memory (the file mapped read-
// only) through the project's fake-upstream fault machinery, whose throttle
// knob caps each response, and counts what it sends.
type fakeCDN struct {
	url      string
	certPath string // PEM of its self-signed certificate: the gateway's upstream.ca_file
	pool     *x509.CertPool
	faults   fakeserver.Faults[string]
	coldSize int64

	mu   sync.RWMutex
	data []byte // nil once unmapped

	bodyBytes atomic.Int64 // body bytes written for GETs
	gets      atomic.Int64
	active    atomic.Int64 // responses being written
}

func (c *fakeCDN) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key, ok := strings.CutPrefix(r.URL.Path, "/cdn/")
	if key, ok = strings.CutSuffix(key, "/"+fileName); !ok || r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.NotFound(w, r)
		return
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	var body []byte
	switch {
	case c.data == nil:
		http.Error(w, "the benchmark's CDN is closed", http.StatusGone)
		return
	case key == keyFull:
		body = c.data
	case key == keyCapped:
		body = c.data[:c.coldSize]
	default:
		http.NotFound(w, r)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Accept-Ranges", "bytes")
	if r.Method == http.MethodGet {
		c.gets.Add(1)
		c.active.Add(1)
		defer c.active.Add(-1)
		w = &countingWriter{ResponseWriter: w, n: &c.bodyBytes}
	}
	c.faults.ServeContent(w, r, key, body, time.Time{})
}

// unmap stops serving and releases the mapped file.
func (c *fakeCDN) unmap() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.data == nil {
		return nil
	}
	err := syscall.Munmap(c.data)
	c.data = nil
	return err
}

// quiet waits until no response is being written (a gateway may still be
// reading ahead after its clients are done), so the byte counter is final.
func (c *fakeCDN) quiet() error {
	return waitFor(60*time.Second, func() error {
		if n := c.active.Load(); n > 0 {
			return fmt.Errorf("the fake CDN is still writing %d responses", n)
		}
		return nil
	})
}

// countingWriter counts body bytes on their way out.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// Unwrap exposes the underlying writer to http.ResponseController (flushes).
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// mapFile maps path read-only into memory.
func mapFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping %s: %w", path, err)
	}
	return data, nil
}

// startFakeHub starts the fake CDN (TLS, HTTP/1.1 only, so every request of
// a client has its own connection, as with the per-connection caps of real
// CDNs) and a fake Hub (plain HTTP) whose /resolve/ answers a 302 to it, for
// both repos: the gateway's metadata HEAD follows same-host redirects and
// stops at the CDN hop, whose headers carry the content identity. It
// returns the Hub's URL.
func (b *bench) startFakeHub() (string, error) {
	cdir := filepath.Join(b.dir, "cdn")
	if err := os.MkdirAll(cdir, 0o755); err != nil {
		return "", err
	}
	certPath, keyPath := filepath.Join(cdir, "tls.crt"), filepath.Join(cdir, "tls.key")
	cert, err := writeSelfSigned(certPath, keyPath)
	if err != nil {
		return "", err
	}
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return "", err
	}
	hubLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	cdnLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		hubLn.Close()
		return "", err
	}
	cdn := &fakeCDN{
		url: "https://" + cdnLn.Addr().String(), certPath: certPath, pool: x509.NewCertPool(),
		coldSize: b.coldSize, data: b.data,
	}
	cdn.pool.AddCert(cert)
	cdn.faults.Throttle(keyCapped, int(b.coldRate))
	b.cdn = cdn

	hub := http.NewServeMux()
	for _, f := range []struct {
		repo, key, sha string
		size           int64
	}{{repo, keyFull, b.sha, b.size}, {cappedRepo, keyCapped, b.coldSHA, b.coldSize}} {
		sum := sha256.Sum256([]byte("blobbench commit " + f.sha))
		commit := hex.EncodeToString(sum[:20])
		hub.HandleFunc("/"+f.repo+"/resolve/{rev}/"+fileName, func(w http.ResponseWriter, r *http.Request) {
			if rev := r.PathValue("rev"); rev != "main" && rev != commit {
				w.Header().Set("X-Error-Code", "RevisionNotFound")
				http.Error(w, "Invalid rev id: "+rev, http.StatusNotFound)
				return
			}
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
				return
			}
			h := w.Header()
			h.Set("X-Repo-Commit", commit)
			h.Set("X-Linked-Etag", `"`+f.sha+`"`)
			h.Set("X-Linked-Size", strconv.FormatInt(f.size, 10))
			h.Set("ETag", `"`+f.sha+`"`)
			h.Set("Location", cdn.url+"/cdn/"+f.key+"/"+fileName)
			w.WriteHeader(http.StatusFound)
		})
	}
	hub.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Error-Code", "EntryNotFound")
		http.NotFound(w, r)
	})
	cdnSrv := &http.Server{
		Handler:      cdn,
		TLSConfig:    &tls.Config{Certificates: []tls.Certificate{pair}},
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){}, // no HTTP/2
	}
	go func() { _ = http.Serve(hubLn, hub) }()
	go func() { _ = cdnSrv.ServeTLS(cdnLn, "", "") }()
	return "http://" + hubLn.Addr().String(), nil
}

// cdnTransport is a direct client of the fake CDN: TLS trusting only its
// certificate, HTTP/1.1, one connection per stream.
func (b *bench) cdnTransport(streams int) *http.Transport {
	return tlsTransport(nil, b.cdn.pool)(streams)
}

// gatewaySettings asks the gateway binary for its effective configuration
// (`modelgate config`) and passes the fill keys given by flags only if its
// configuration has them, so the benchmark runs on builds from before and
// after parallel-range fills.
func (b *bench) gatewaySettings(bin string) error {
	b.gwEnv = []string{
		"MODELGATE_HUGGINGFACE_ENDPOINT=" + b.hubURL,
		"MODELGATE_UPSTREAM_CA_FILE=" + b.cdn.certPath,
		// The fake CDN is on loopback, which the gateway refuses to dial
		// unless the operator names it (the Hub endpoint is exempt).
		"MODELGATE_UPSTREAM_PRIVATE_HOSTS=" + strings.TrimPrefix(b.cdn.url, "https://"),
		"MODELGATE_LOG_LEVEL=warn",
		// Refuse blind tunnels: a CONNECT the gateway does not intercept
		// would reach a real host, and this benchmark never wants that.
		"MODELGATE_PROXY_TUNNEL=deny",
	}
	cwd := filepath.Join(b.dir, "gwcwd") // empty: no ./config.yaml, embedded defaults
	if err := os.MkdirAll(cwd, 0o755); err != nil {
		return err
	}
	cmd := exec.Command(bin, "config")
	cmd.Dir = cwd
	cmd.Env = append(cleanEnv(), b.gwEnv...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%s config: %w: %s", bin, err, bytes.TrimSpace(stderr.Bytes()))
	}
	var cfg struct {
		Upstream map[string]any `yaml:"upstream"`
		Cluster  map[string]any `yaml:"cluster"`
	}
	if err := yaml.Unmarshal(out, &cfg); err != nil {
		return fmt.Errorf("%s config: %w", bin, err)
	}
	_, b.clusterPeers = cfg.Cluster["advertise"]
	for _, key := range []string{"fill_connections", "fill_piece_size", "max_connections_per_host"} {
		cur, known := cfg.Upstream[key]
		val := b.fillKeys[key]
		switch {
		case !known && val != "":
			b.gwNotes = append(b.gwNotes, fmt.Sprintf("upstream.%s: not in this gateway's configuration, --%s ignored", key, strings.ReplaceAll(key, "_", "-")))
		case !known:
			b.gwNotes = append(b.gwNotes, fmt.Sprintf("upstream.%s: not in this gateway's configuration", key))
		case val == "":
			b.gwNotes = append(b.gwNotes, fmt.Sprintf("upstream.%s: %v (the gateway's default)", key, cur))
		default:
			b.gwEnv = append(b.gwEnv, "MODELGATE_UPSTREAM_"+strings.ToUpper(key)+"="+val)
			b.gwNotes = append(b.gwNotes, fmt.Sprintf("upstream.%s: %s (set by the benchmark)", key, val))
		}
	}
	return nil
}

func (b *bench) gwDataDir(n int) string { return filepath.Join(b.dir, fmt.Sprintf("gwdata%d", n)) }

// startGateway starts a gateway with a fresh data dir and returns it, its
// base URL and its CA certificate (PEM), read from the data dir and checked
// against GET /ca.pem.
func (b *bench) startGateway(bin string) (*proc, string, []byte, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", nil, err
	}
	return b.startGatewayOn(bin, port, nil)
}

// startGatewayOn is startGateway on a given port, with extra settings.
func (b *bench) startGatewayOn(bin string, port int, extraEnv []string) (*proc, string, []byte, error) {
	b.nGateway++
	dataDir := b.gwDataDir(b.nGateway)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin)
	cmd.Dir = filepath.Join(b.dir, "gwcwd")
	cmd.Env = append(cleanEnv(), b.gwEnv...)
	cmd.Env = append(cmd.Env, "MODELGATE_LISTEN="+addr, "MODELGATE_DATA_DIR="+dataDir)
	cmd.Env = append(cmd.Env, extraEnv...)
	p, err := b.start("gateway", filepath.Join(b.dir, fmt.Sprintf("gateway%d.log", b.nGateway)), cmd)
	if err != nil {
		return nil, "", nil, err
	}
	base := "http://" + addr
	err = waitFor(20*time.Second, func() error {
		if err := p.alive(); err != nil {
			return err
		}
		return probe(base + "/healthz")
	})
	if err != nil {
		return nil, "", nil, fmt.Errorf("gateway did not become healthy: %w\n%s", err, tail(p.log))
	}

	caPath := filepath.Join(dataDir, "ca", "modelgate-ca.pem")
	caPEM, err := os.ReadFile(caPath)
	if err != nil {
		return nil, "", nil, fmt.Errorf("gateway CA: %w", err)
	}
	served, err := getBody(base + "/ca.pem")
	if err != nil {
		return nil, "", nil, fmt.Errorf("gateway CA: %w", err)
	}
	if !bytes.Equal(bytes.TrimSpace(served), bytes.TrimSpace(caPEM)) {
		return nil, "", nil, fmt.Errorf("GET /ca.pem differs from %s", caPath)
	}
	return p, base, caPEM, nil
}

// coldGateway is one cold measurement through a fresh gateway.
type coldGateway struct {
	mibps    float64 // bytes received by the clients / wall time
	wall     float64 // seconds
	upstream float64 // bytes the CDN sent / file size
	hwmKiB   int64   // the gateway's VmHWM at the end
}

// throughGateway starts a fresh gateway, downloads the file of repo (size
// bytes, sha) through it as spec says, waits for the CDN to go quiet, checks
// that the gateway published the blob, and stops the gateway.
func (b *bench) throughGateway(bin, repoID string, size int64, sha string, spec streamSpec) (coldGateway, error) {
	gw, base, _, err := b.startGateway(bin)
	if err != nil {
		return coldGateway{}, err
	}
	n := b.nGateway
	defer func() {
		stop(gw)
		_ = os.RemoveAll(b.gwDataDir(n))
	}()
	tr := newTransport(spec.n)
	defer tr.CloseIdleConnections()
	if err := b.cdn.quiet(); err != nil {
		return coldGateway{}, err
	}
	up0 := b.cdn.bodyBytes.Load()
	t0 := time.Now()
	got, _, err := download(newClient(tr), base+"/"+repoID+"/resolve/main/"+fileName, size, spec, b.part)
	el := time.Since(t0).Seconds()
	if err != nil {
		return coldGateway{}, fmt.Errorf("through the gateway: %w\n%s", err, tail(gw.log))
	}
	hwm, _ := procStatusKiB(gw.pid(), "VmHWM")
	if err := b.cdn.quiet(); err != nil {
		return coldGateway{}, err
	}
	up := b.cdn.bodyBytes.Load() - up0
	blobPath := filepath.Join(b.gwDataDir(n), "blobs", "sha256", sha[:2], sha)
	if err := waitFor(10*time.Second, func() error { _, err := os.Stat(blobPath); return err }); err != nil {
		return coldGateway{}, fmt.Errorf("the gateway did not publish the blob: %w", err)
	}
	if err := gw.alive(); err != nil {
		return coldGateway{}, err
	}
	return coldGateway{mibps: float64(got) / mib / el, wall: el, upstream: float64(up) / float64(size), hwmKiB: hwm}, nil
}

// direct downloads the file of CDN key straight from the fake CDN.
func (b *bench) direct(key string, size int64, spec streamSpec) (float64, error) {
	tr := b.cdnTransport(spec.n)
	defer tr.CloseIdleConnections()
	t0 := time.Now()
	got, _, err := download(newClient(tr), b.cdn.url+"/cdn/"+key+"/"+fileName, size, spec, b.part)
	if err != nil {
		return 0, fmt.Errorf("direct: %w", err)
	}
	return float64(got) / mib / time.Since(t0).Seconds(), nil
}

// coldResult holds every round of the cold section.
type coldResult struct {
	rounds           int
	direct1, direct8 []float64 // MiB/s, throttled CDN
	gw1, gw8, gwN    []coldGateway
	unDirect         []float64 // MiB/s, uncapped, whole file
	unFill           []coldGateway
	rss              []coldGateway // the rss section: clients on the whole file, uncapped
}

// runRSS measures the gateway's peak RSS while its fill fetches the whole
// test file from the uncapped CDN (with its default 8 connections) and
// --cold-clients single-stream clients read it, each round on a fresh
// gateway.
func (b *bench) runRSS(bin string) ([]coldGateway, error) {
	logf("rss: %s, %d clients, CDN uncapped, %d rounds", fmtSize(b.size), b.coldClients, b.rounds)
	var out []coldGateway
	for r := range b.rounds {
		g, err := b.throughGateway(bin, repo, b.size, b.sha, streamSpec{n: b.coldClients})
		if err != nil {
			return nil, err
		}
		logf("rss round %d: %.2fs, %.3fx upstream, peak RSS %.1f MiB", r+1, g.wall, g.upstream, hwmOf(g))
		out = append(out, g)
	}
	return out, nil
}

func (b *bench) runCold(bin string) (*coldResult, error) {
	res := &coldResult{rounds: b.rounds}
	one, ranges := streamSpec{n: 1}, streamSpec{n: 8, ranged: true}
	logf("cold: %s at %s/s per response, %d rounds; uncapped: %s", fmtSize(b.coldSize), fmtSize(b.coldRate), b.rounds, fmtSize(b.size))
	for r := range b.rounds {
		d1, err := b.direct(keyCapped, b.coldSize, one)
		if err != nil {
			return nil, err
		}
		d8, err := b.direct(keyCapped, b.coldSize, ranges)
		if err != nil {
			return nil, err
		}
		g1, err := b.throughGateway(bin, cappedRepo, b.coldSize, b.coldSHA, one)
		if err != nil {
			return nil, err
		}
		g8, err := b.throughGateway(bin, cappedRepo, b.coldSize, b.coldSHA, ranges)
		if err != nil {
			return nil, err
		}
		gN, err := b.throughGateway(bin, cappedRepo, b.coldSize, b.coldSHA, streamSpec{n: b.coldClients})
		if err != nil {
			return nil, err
		}
		// Uncapped: alternate which goes first.
		var ud float64
		var uf coldGateway
		for i := range 2 {
			if (i+r)%2 == 0 {
				ud, err = b.direct(keyFull, b.size, one)
			} else {
				uf, err = b.throughGateway(bin, repo, b.size, b.sha, one)
			}
			if err != nil {
				return nil, err
			}
		}
		res.direct1 = append(res.direct1, d1)
		res.direct8 = append(res.direct8, d8)
		res.gw1 = append(res.gw1, g1)
		res.gw8 = append(res.gw8, g8)
		res.gwN = append(res.gwN, gN)
		res.unDirect = append(res.unDirect, ud)
		res.unFill = append(res.unFill, uf)
		logf("cold round %d: direct 1 %.0f, 8-way %.0f; gateway 1 %.0f, 8-way %.0f, %d clients %.2fs (%.2fx upstream); uncapped direct %.0f, fill %.0f MiB/s",
			r+1, d1, d8, g1.mibps, g8.mibps, b.coldClients, gN.wall, gN.upstream, ud, uf.mibps)
	}
	return res, nil
}

func medianOf[T any](xs []T, f func(T) float64) float64 { return median(mapf(xs, f)) }

func mibpsOf(g coldGateway) float64    { return g.mibps }
func wallOf(g coldGateway) float64     { return g.wall }
func upstreamOf(g coldGateway) float64 { return g.upstream }
func hwmOf(g coldGateway) float64      { return kib2mib(g.hwmKiB) }

// printCold prints the cold section's table.
func (b *bench) printCold(c *coldResult) {
	if c == nil {
		return
	}
	if len(c.rss) > 0 {
		fmt.Printf("\nRSS: a fresh gateway fills %s from the uncapped CDN while %d single-stream clients read it; %d rounds\n",
			fmtSize(b.size), b.coldClients, len(c.rss))
		fmt.Printf("  wall s: %s; upstream: %s; peak RSS (VmHWM) MiB: %s\n", fmtListPrec(mapf(c.rss, wallOf), 2),
			fmtListPrec(mapf(c.rss, upstreamOf), 3), fmtListPrec(mapf(c.rss, hwmOf), 1))
	}
	if len(c.direct8) == 0 {
		return
	}
	d8 := median(c.direct8)
	fmt.Printf("\nCOLD: fake CDN over TLS, %s at %s/s per response; medians of %d rounds; gateway in mirror mode, a fresh one per measurement\n",
		fmtSize(b.coldSize), fmtSize(b.coldRate), c.rounds)
	for _, n := range b.gwNotes {
		fmt.Printf("  %s\n", n)
	}
	fmt.Printf("%-44s %9s %8s %9s  %s\n", "scenario", "MiB/s", "wall s", "upstream", "ratio")
	line := func(name string, mibps, wall, up float64, ratio string) {
		ups := "-"
		if up > 0 {
			ups = fmt.Sprintf("%.3fx", up)
		}
		fmt.Printf("%-44s %9.0f %8.2f %9s  %s\n", name, mibps, wall, ups, ratio)
	}
	sz := float64(b.coldSize) / mib
	line("direct, 1 stream", median(c.direct1), sz/median(c.direct1), 0, fmt.Sprintf("%.2fx direct 8-way", median(c.direct1)/d8))
	line(fmt.Sprintf("direct, 8-way ranges (%s parts)", fmtSize(b.part)), d8, sz/d8, 0, "1.00 (reference)")
	g1 := medianOf(c.gw1, mibpsOf)
	line("gateway cold, 1 stream", g1, medianOf(c.gw1, wallOf), medianOf(c.gw1, upstreamOf), fmt.Sprintf("%.2fx direct 8-way", g1/d8))
	g8 := medianOf(c.gw8, mibpsOf)
	line("gateway cold, 8-way ranges", g8, medianOf(c.gw8, wallOf), medianOf(c.gw8, upstreamOf), fmt.Sprintf("%.2fx direct 8-way", g8/d8))
	gN := medianOf(c.gwN, mibpsOf)
	line(fmt.Sprintf("gateway cold, %d single-stream clients", b.coldClients), gN, medianOf(c.gwN, wallOf), medianOf(c.gwN, upstreamOf),
		fmt.Sprintf("%.2fx the 1-stream wall time", medianOf(c.gwN, wallOf)/medianOf(c.gw1, wallOf)))
	fmt.Printf("  (MiB/s of the %d clients is their aggregate)\n", b.coldClients)
	fmt.Printf("  gateway peak RSS (VmHWM) with %d clients on the blob being filled: %.1f MiB (max %.1f)\n",
		b.coldClients, medianOf(c.gwN, hwmOf), slicesMax(mapf(c.gwN, hwmOf)))
	fmt.Printf("\nUNCAPPED: fake CDN over TLS, %s, no throttle\n", fmtSize(b.size))
	ud := median(c.unDirect)
	uf := medianOf(c.unFill, mibpsOf)
	line("direct, 1 stream", ud, float64(b.size)/mib/ud, 0, "1.00 (reference)")
	line("gateway first fill, 1 stream", uf, medianOf(c.unFill, wallOf), medianOf(c.unFill, upstreamOf), fmt.Sprintf("%.2fx direct", uf/ud))
	fmt.Printf("  gateway peak RSS during the fill: %.1f MiB\n", medianOf(c.unFill, hwmOf))
	fmt.Println()
	fmt.Printf("per round, MiB/s: direct 1: %s; direct 8-way: %s\n", fmtList(c.direct1), fmtList(c.direct8))
	fmt.Printf("  gateway 1: %s; 8-way: %s; %d clients wall s: %s\n", fmtList(mapf(c.gw1, mibpsOf)), fmtList(mapf(c.gw8, mibpsOf)),
		b.coldClients, fmtListPrec(mapf(c.gwN, wallOf), 2))
	fmt.Printf("  uncapped direct: %s; fill: %s\n", fmtList(c.unDirect), fmtList(mapf(c.unFill, mibpsOf)))
}

// printTargets prints every figure of issue 9 beside its target.
func (b *bench) printTargets(c *coldResult, sections []*section) {
	type tgt struct {
		name, want string
		got        float64
		ok         bool
	}
	var ts []tgt
	if c != nil && len(c.rss) > 0 {
		rss := slicesMax(mapf(c.rss, hwmOf))
		rssMax := 64 + float64(b.coldClients)
		ts = append(ts, tgt{fmt.Sprintf("peak RSS MiB, %s fill, %d clients", fmtSize(b.size), b.coldClients), fmt.Sprintf("<= %.0f", rssMax), rss, rss <= rssMax})
	}
	if c != nil && len(c.direct8) > 0 {
		d8 := median(c.direct8)
		r1 := medianOf(c.gw1, mibpsOf) / d8
		r8 := medianOf(c.gw8, mibpsOf) / d8
		rN := medianOf(c.gwN, wallOf) / medianOf(c.gw1, wallOf)
		uN := medianOf(c.gwN, upstreamOf)
		rss := slicesMax(mapf(c.gwN, hwmOf))
		rssMax := 64 + float64(b.coldClients)
		uf := medianOf(c.unFill, mibpsOf) / median(c.unDirect)
		ts = append(ts,
			tgt{"cold 1 stream / direct 8-way", ">= 0.90", r1, r1 >= 0.9},
			tgt{"cold 8-way ranges / direct 8-way", ">= 0.90", r8, r8 >= 0.9},
			tgt{fmt.Sprintf("cold %d clients wall / 1 client wall", b.coldClients), "<= 1.15", rN, rN <= 1.15},
			tgt{fmt.Sprintf("cold %d clients upstream bytes / file", b.coldClients), "<= 1.02", uN, uN <= 1.02},
			tgt{fmt.Sprintf("peak RSS MiB, %d clients on a filling blob", b.coldClients), fmt.Sprintf("<= %.0f", rssMax), rss, rss <= rssMax},
			tgt{"uncapped first fill / direct", ">= 0.80", uf, uf >= 0.8},
		)
	}
	for _, sec := range sections {
		for _, rw := range sec.rows {
			if rw.streams.ranged && sec.mode == modeHTTP {
				r := rw.mibps[0] / rw.mibps[1]
				ts = append(ts, tgt{fmt.Sprintf("warm %s (http) / nginx", rw.streams), ">= 1.00", r, r >= 1.0})
			}
		}
	}
	if len(ts) == 0 {
		return
	}
	fmt.Printf("\nTARGETS (issue 9)\n%-48s %9s %9s  %s\n", "figure", "measured", "target", "")
	for _, t := range ts {
		mark := "met"
		if !t.ok {
			mark = "MISSED"
		}
		fmt.Printf("%-48s %9.2f %9s  %s\n", t.name, t.got, t.want, mark)
	}
}

func slicesMax(xs []float64) float64 {
	m := 0.0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

func fmtListPrec(xs []float64, prec int) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.FormatFloat(x, 'f', prec, 64)
	}
	return strings.Join(parts, " ")
}
