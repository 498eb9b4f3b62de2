// Command blobbench compares how fast the gateway serves a cached blob with
// how fast nginx serves the same file, on loopback, in one run.
//
// It writes a pseudo-random test file, serves it from a minimal fake Hub
// (a 302 from /resolve/ to a fake CDN on a second port, as the real Hub
// does), starts the gateway binary against that Hub with a fresh data
// directory, fills the cache with one GET, then starts nginx on a hard link
// to the gateway's published blob, so both serve the same inode from the
// same page cache. For 1 and 8 parallel streams it downloads the whole file
// from each server, alternating which goes first, and prints the median
// throughput, the ratio gateway/nginx, the CPU time each server spent per
// GiB served and the gateway's peak RSS.
//
// It does so in up to two sections (--modes):
//
//   - http: the gateway in mirror mode (plain HTTP, sendfile) against nginx
//     over plain HTTP (sendfile);
//   - https: the gateway as a forward proxy, the client asking it to CONNECT
//     to huggingface.co:443, which the gateway intercepts (TLS terminated
//     with a leaf signed by its own CA, answered from the same cache),
//     against nginx over TLS with a self-signed certificate. Neither side
//     can use sendfile: both encrypt in user space.
//
// Only loopback addresses are ever dialled: the https client reaches
// huggingface.co only through the gateway's CONNECT, never by resolving it.
//
// Run it through bench/run.sh, which installs nginx if needed and builds
// the gateway. Linux only: it reads /proc.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"github.com/minio/minio-go/v7"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	mib = 1 << 20
	gib = 1 << 30

	fileName = "blob.bin"

	// hubHost is the Hub's public name. The https section asks the gateway
	// to CONNECT to it; the gateway intercepts it and answers from its
	// cache (and would send any upstream request to the fake Hub).
	hubHost = "huggingface.co"

	// clockTicks is USER_HZ, the unit of utime/stime in /proc/<pid>/stat.
	// The standard library cannot ask sysconf(_SC_CLK_TCK); it is 100 on
	// every mainstream Linux architecture.
	clockTicks = 100
)

// Sections of a run.
const (
	modeHTTP  = "http"
	modeHTTPS = "https"
	modeCold  = "cold"
	// modeRSS: the gateway's peak RSS while 8 connections fill the whole
	// test file (run with --size 4GiB) and --cold-clients clients read it.
	modeRSS = "rss"
	// modeCluster: gateways on one S3 bucket (versitygw), issue 13.
	modeCluster = "cluster"
)

func main() {
	var (
		sizeFlag    = flag.String("size", "1GiB", "test file size: bytes or a number with B, KiB, MiB, GiB (or KB, MB, GB)")
		rounds      = flag.Int("rounds", 5, "measurements per target and stream count; the median is reported")
		httpsRounds = flag.Int("https-rounds", 0, "rounds for the https section (default: --rounds)")
		modesFl     = flag.String("modes", "cold,http,https", "comma-separated sections: cold (cold gateway vs direct to a throttled fake CDN, and the uncapped first fill), rss (peak RSS while the whole test file is filled with --cold-clients clients reading it; use --size 4GiB), cluster (gateways on one versitygw bucket: cold clients over 3 gateways vs 1, warm hits from the bucket vs the hot tier vs nginx), http (warm, mirror mode vs nginx over HTTP), https (warm, CONNECT interception vs nginx over TLS)")
		gateway     = flag.String("gateway", "/tmp/mg", "path of the gateway binary")
		nginxBin    = flag.String("nginx", "", "path of the nginx binary (default: nginx on PATH, else /usr/sbin/nginx)")
		tmpBase     = flag.String("tmp", os.TempDir(), "base directory for the test file, the gateway's data dir and nginx's files")
		keep        = flag.Bool("keep", false, "keep the temporary directory (and print its path)")
		streamsFl   = flag.String("streams", "1,8,8r", "comma-separated warm measurements: N parallel whole-file streams, or Nr for N-way ranges (--range-part parts, N in flight)")
		coldSizeFl  = flag.String("cold-size", "256MiB", "file size of the throttled cold scenarios (at most --size)")
		coldRateFl  = flag.String("cold-rate", "50MiB", "the fake CDN's throttle per response in the throttled cold scenarios, per second")
		coldClients = flag.Int("cold-clients", 32, "concurrent single-stream clients on one cold blob")
		partFl      = flag.String("range-part", "10MiB", "part size of the N-way ranged downloads (hf_transfer uses 10 MiB)")
		fillConns   = flag.String("fill-connections", "", "upstream.fill_connections for the gateway (default: the gateway's own default; ignored with a note if its config has no such key)")
		fillPiece   = flag.String("fill-piece-size", "", "upstream.fill_piece_size for the gateway (as above)")
		maxPerHost  = flag.String("max-connections-per-host", "", "upstream.max_connections_per_host for the gateway (as above)")
		ngWorkers   = flag.Int("nginx-workers", 1, "nginx worker processes; 1 runs nginx as one process (master_process off), more adds a master")
	)
	flag.Parse()

	size, err := parseSize(*sizeFlag)
	if err != nil {
		fatalf("--size: %v", err)
	}
	if *rounds < 1 {
		fatalf("--rounds must be at least 1")
	}
	if *httpsRounds < 0 {
		fatalf("--https-rounds must be at least 1 (or 0 for --rounds)")
	}
	if *httpsRounds == 0 {
		*httpsRounds = *rounds
	}
	var streamCounts []streamSpec
	for _, s := range strings.Split(*streamsFl, ",") {
		s = strings.TrimSpace(s)
		num, ranged := strings.CutSuffix(s, "r")
		n, err := strconv.Atoi(num)
		if err != nil || n < 1 {
			fatalf("--streams: bad count %q", s)
		}
		streamCounts = append(streamCounts, streamSpec{n: n, ranged: ranged})
	}
	coldSize, err := parseSize(*coldSizeFl)
	if err != nil {
		fatalf("--cold-size: %v", err)
	}
	coldRate, err := parseSize(strings.TrimSuffix(*coldRateFl, "/s"))
	if err != nil {
		fatalf("--cold-rate: %v", err)
	}
	part, err := parseSize(*partFl)
	if err != nil {
		fatalf("--range-part: %v", err)
	}
	if *coldClients < 1 {
		fatalf("--cold-clients must be at least 1")
	}
	var modes []string
	for _, m := range strings.Split(*modesFl, ",") {
		m = strings.ToLower(strings.TrimSpace(m))
		if m != modeHTTP && m != modeHTTPS && m != modeCold && m != modeRSS && m != modeCluster {
			fatalf("--modes: unknown section %q (want cold, rss, cluster, http, https)", m)
		}
		if !slices.Contains(modes, m) {
			modes = append(modes, m)
		}
	}
	if *nginxBin == "" {
		if p, err := exec.LookPath("nginx"); err == nil {
			*nginxBin = p
		} else if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
			*nginxBin = "/usr/sbin/nginx"
		} else {
			fatalf("nginx not found on PATH; install it (bench/run.sh does) or pass --nginx")
		}
	}
	if _, err := os.Stat(*gateway); err != nil {
		fatalf("gateway binary: %v (build it with `go build -o %s .` or use bench/run.sh)", err, *gateway)
	}

	if *ngWorkers < 1 {
		fatalf("--nginx-workers must be at least 1")
	}
	b := &bench{
		size: size, rounds: *rounds, httpsRounds: *httpsRounds, modes: modes,
		keep: *keep, nginxWorkers: *ngWorkers,
		coldSize: min(coldSize, size), coldRate: coldRate, coldClients: *coldClients, part: part,
		fillKeys: map[string]string{
			"fill_connections": *fillConns, "fill_piece_size": *fillPiece,
			"max_connections_per_host": *maxPerHost,
		},
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		logf("\n%v: stopping", s)
		b.cleanup()
		os.Exit(130)
	}()

	err = b.run(*gateway, *nginxBin, *tmpBase, streamCounts)
	b.cleanup()
	if err != nil {
		fatalf("%v", err)
	}
}

// bench holds the state of one run and what cleanup must undo.
type bench struct {
	size         int64
	rounds       int
	httpsRounds  int
	modes        []string
	keep         bool
	nginxWorkers int

	coldSize    int64 // size of the throttled cold scenarios' file (a prefix of the test file)
	coldRate    int64 // the fake CDN's throttle per response there, bytes/s
	coldClients int
	part        int64 // part size of ranged downloads
	// fillKeys are upstream.* keys to pass to the gateway (empty: its
	// default), if its configuration has them.
	fillKeys map[string]string
	gwEnv    []string // MODELGATE_* settings every gateway start gets
	gwNotes  []string // what was (not) passed, for the report

	dir      string
	srcPath  string
	sha      string // of the whole test file
	coldSHA  string // of its first coldSize bytes
	data     []byte // the test file, mapped read-only; the fake CDN serves it
	cdn      *fakeCDN
	hubURL   string
	nGateway int // gateways started so far (each gets its own data dir)

	// The cluster section: the bucket's client, and whether the gateway
	// has cluster.advertise (peer streaming).
	s3           *minio.Client
	clusterPeers bool

	mu    sync.Mutex
	procs []*proc
	done  bool
}

func (b *bench) hasMode(m string) bool { return slices.Contains(b.modes, m) }

// proc is a server subprocess.
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // valid once exited is closed
	log    string
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) alive() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%s exited: %v; see %s", p.name, p.err, p.log)
	default:
		return nil
	}
}

func (b *bench) cleanup() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return
	}
	b.done = true
	for _, p := range b.procs {
		stop(p)
	}
	if b.dir == "" {
		return
	}
	if b.keep {
		logf("kept %s", b.dir)
		return
	}
	if err := os.RemoveAll(b.dir); err != nil {
		logf("removing %s: %v", b.dir, err)
	}
}

// stop ends a subprocess: SIGTERM, then SIGKILL after 5 s.
func stop(p *proc) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// start runs a server subprocess in its own process group (so a terminal's
// SIGINT reaches only blobbench, which then stops it), killed by the kernel
// if blobbench dies without cleaning up.
func (b *bench) start(name, logPath string, cmd *exec.Cmd) (*proc, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		lf.Close()
		return nil, errors.New("interrupted")
	}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, exited: make(chan struct{}), log: logPath}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.exited)
	}()
	b.procs = append(b.procs, p)
	return p, nil
}

// streamSpec is one warm measurement: n whole-file streams in parallel,
// or with ranged, the file in --range-part parts, n of them in flight.
type streamSpec struct {
	n      int
	ranged bool
}

func (s streamSpec) String() string {
	if s.ranged {
		return fmt.Sprintf("%d ranges", s.n)
	}
	return strconv.Itoa(s.n)
}

// row is one stream count's result in a section.
type row struct {
	streams  streamSpec
	mibps    [2]float64 // median per target
	cpuPerG  [2]float64 // median server CPU s per GiB
	cliPerG  [2]float64 // median client CPU s per GiB
	allMiBps [2][]float64
}

// section is the result of one mode (http or https).
type section struct {
	mode   string
	rounds int
	rows   []row
	// conns counts the measured connections of each target by what they
	// negotiated (TLS version, cipher suite, key exchange, leaf key,
	// protocol).
	conns [2]map[string]int
	// servedGiB is what the measurements downloaded from the gateway;
	// cacheGiB and otherGiB are what the gateway's served_bytes_total says
	// it sent from its cache and from anything else (fill, upstream).
	servedGiB, cacheGiB, otherGiB float64
	metricsErr                    error
	// hwmKiB is the gateway's VmHWM during this section alone (when the
	// high-water mark could be reset before it).
	hwmKiB int64
}

func (s *section) title() string {
	if s.mode == modeHTTPS {
		return "HTTPS (gateway: CONNECT + interception; nginx: TLS)"
	}
	return "HTTP (gateway: mirror mode; nginx: plain HTTP, sendfile)"
}

func (s *section) target() string {
	if s.mode == modeHTTPS {
		return "0.8"
	}
	return "1.0"
}

func (b *bench) run(gatewayBin, nginxBin, tmpBase string, streamCounts []streamSpec) error {
	dir, err := os.MkdirTemp(tmpBase, "blobbench-")
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.dir = dir
	b.mu.Unlock()

	// 1. The test file.
	b.srcPath = filepath.Join(dir, "src", fileName)
	t0 := time.Now()
	logf("writing %s test file %s", fmtSize(b.size), b.srcPath)
	if b.sha, b.coldSHA, err = writeTestFile(b.srcPath, b.size, b.coldSize); err != nil {
		return err
	}
	logf("  done in %v, sha256 %s (first %s: %s)", time.Since(t0).Round(time.Millisecond), b.sha,
		fmtSize(b.coldSize), b.coldSHA)
	if b.data, err = mapFile(b.srcPath); err != nil {
		return err
	}

	// 2. The fake Hub and its CDN.
	if b.hubURL, err = b.startFakeHub(); err != nil {
		return err
	}
	if err := b.gatewaySettings(gatewayBin); err != nil {
		return err
	}

	// 3. The cold scenarios, each round on a fresh gateway.
	var cold *coldResult
	if b.hasMode(modeCold) {
		if cold, err = b.runCold(gatewayBin); err != nil {
			return err
		}
	}
	if b.hasMode(modeRSS) {
		if cold == nil {
			cold = &coldResult{}
		}
		if cold.rss, err = b.runRSS(gatewayBin); err != nil {
			return err
		}
	}
	var cluster *clusterResult
	if b.hasMode(modeCluster) {
		if cluster, err = b.runCluster(gatewayBin, nginxBin); err != nil {
			return err
		}
	}
	if !b.hasMode(modeHTTP) && !b.hasMode(modeHTTPS) {
		b.printCold(cold)
		b.printTargets(cold, nil)
		b.printCluster(cluster)
		return nil
	}

	// 4. The gateway for the warm sections, filled with one GET (CDN
	// uncapped), checked end to end.
	gw, gwURL, caPEM, err := b.startGateway(gatewayBin)
	if err != nil {
		return err
	}
	fileURL := gwURL + "/" + repo + "/resolve/main/" + fileName
	logf("cold fill through the gateway")
	coldMiBps, err := b.coldFill(fileURL)
	if err != nil {
		return err
	}
	blobPath := filepath.Join(b.gwDataDir(b.nGateway), "blobs", "sha256", b.sha[:2], b.sha)
	if err := waitFor(5*time.Second, func() error { _, err := os.Stat(blobPath); return err }); err != nil {
		return fmt.Errorf("published blob missing after the fill: %w", err)
	}
	logf("  %.0f MiB/s, sha256 matches, published blob %s", coldMiBps, blobPath)
	coldHWM, _ := procStatusKiB(gw.pid(), "VmHWM")
	// Reset the high-water mark so that the warm peak is known apart from
	// the fill's (needs Linux >= 4.0 and permission to write clear_refs).
	resetHWM := func() bool {
		return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", gw.pid()), []byte("5"), 0) == nil
	}
	hwmReset := resetHWM()
	splitPeaks := hwmReset

	// 5. nginx on a hard link to the gateway's blob: same inode, same
	// pages in the page cache; over TLS too for the https section.
	ng, ngURL, ngTLSURL, ngCert, err := b.startNginx(nginxBin, blobPath)
	if err != nil {
		return err
	}

	// The source file is no longer needed; drop it so that only the one
	// served inode occupies the page cache.
	if err := b.cdn.unmap(); err != nil {
		return err
	}
	if err := os.Remove(b.srcPath); err != nil {
		return err
	}

	// 6. Warm measurements, one section per mode.
	var sections []*section
	for _, mode := range b.modes {
		if mode == modeCold || mode == modeRSS || mode == modeCluster {
			continue
		}
		sec := &section{mode: mode, rounds: b.rounds}
		var targets [2]target
		switch mode {
		case modeHTTP:
			targets = [2]target{
				{name: "gateway", url: fileURL, p: gw, transport: newTransport},
				{name: "nginx", url: ngURL + "/" + fileName, p: ng, transport: newTransport},
			}
		case modeHTTPS:
			sec.rounds = b.httpsRounds
			gwProxy, err := url.Parse(gwURL)
			if err != nil {
				return err
			}
			gwRoots := x509.NewCertPool()
			if !gwRoots.AppendCertsFromPEM(caPEM) {
				return errors.New("the gateway's CA file holds no certificate")
			}
			ngRoots := x509.NewCertPool()
			ngRoots.AddCert(ngCert)
			targets = [2]target{
				{name: "gateway", url: "https://" + hubHost + "/" + repo + "/resolve/main/" + fileName, p: gw,
					transport: tlsTransport(gwProxy, gwRoots)},
				{name: "nginx", url: ngTLSURL + "/" + fileName, p: ng,
					transport: tlsTransport(nil, ngRoots)},
			}
			// One HEAD per target before measuring: checks the TLS setup
			// and lets the gateway sign its leaf for huggingface.co
			// outside the measurements.
			logf("https: gateway via CONNECT %s through %s; nginx at %s", hubHost+":443", gwURL, ngTLSURL)
			for _, t := range targets {
				desc, err := probeTLS(t)
				if err != nil {
					return fmt.Errorf("https %s: %w", t.name, err)
				}
				logf("  %s negotiates %s", t.name, desc)
			}
		}
		before, errBefore := gatewayServed(gwURL)
		if err := b.measureSection(sec, targets, streamCounts); err != nil {
			return err
		}
		after, errAfter := gatewayServed(gwURL)
		if sec.metricsErr = errors.Join(errBefore, errAfter); sec.metricsErr == nil {
			for src, v := range after {
				d := (v - before[src]) / gib
				if src == "cache" {
					sec.cacheGiB += d
				} else {
					sec.otherGiB += d
				}
			}
		}
		if hwmReset {
			sec.hwmKiB, _ = procStatusKiB(gw.pid(), "VmHWM")
			hwmReset = resetHWM()
		}
		sections = append(sections, sec)
	}
	for _, p := range []*proc{gw, ng} {
		if err := p.alive(); err != nil {
			return err
		}
	}

	// 7. Memory.
	warmHWM, _ := procStatusKiB(gw.pid(), "VmHWM")
	for _, sec := range sections {
		warmHWM = max(warmHWM, sec.hwmKiB)
	}
	gwRSS, _ := procStatusKiB(gw.pid(), "VmRSS")
	var ngHWM int64
	for _, pid := range procTree(ng.pid()) {
		h, _ := procStatusKiB(pid, "VmHWM")
		ngHWM += h
	}

	// 8. Report.
	b.printCold(cold)
	fmt.Printf("\nWARM: file %s, %d CPUs, nginx %s with %d worker process(es)\n",
		fmtSize(b.size), numCPU(), nginxVersion(nginxBin), b.nginxWorkers)
	for _, sec := range sections {
		fmt.Printf("\n%s, rounds %d, target ratio >= %s\n", sec.title(), sec.rounds, sec.target())
		fmt.Printf("%-9s %14s %12s %6s %13s %16s %17s\n",
			"streams", "gateway MiB/s", "nginx MiB/s", "ratio", "gw CPU s/GiB", "nginx CPU s/GiB", "client CPU s/GiB")
		for _, rw := range sec.rows {
			fmt.Printf("%-9s %14.0f %12.0f %6.2f %13.3f %16.3f %8.3f / %.3f\n",
				rw.streams, rw.mibps[0], rw.mibps[1], rw.mibps[0]/rw.mibps[1],
				rw.cpuPerG[0], rw.cpuPerG[1], rw.cliPerG[0], rw.cliPerG[1])
		}
		fmt.Println()
		for _, rw := range sec.rows {
			fmt.Printf("streams %s, MiB/s per round: gateway %s; nginx %s\n",
				rw.streams, fmtList(rw.allMiBps[0]), fmtList(rw.allMiBps[1]))
		}
		if sec.mode == modeHTTPS {
			for i, name := range []string{"gateway", "nginx"} {
				fmt.Printf("%-7s connections: %s\n", name, fmtConns(sec.conns[i]))
			}
		}
		if sec.metricsErr != nil {
			fmt.Printf("gateway /metrics: %v\n", sec.metricsErr)
		} else {
			fmt.Printf("gateway served %.2f GiB from its cache in this section (measured: %.2f GiB), %.2f GiB from elsewhere\n",
				sec.cacheGiB, sec.servedGiB, sec.otherGiB)
		}
	}
	fmt.Println()
	// Without a reset VmHWM only grows, and max is the last reading.
	peak := max(coldHWM, warmHWM)
	fmt.Printf("gateway peak RSS (VmHWM): %.1f MiB for a %s file; VmRSS at end: %.1f MiB; cold fill: %.0f MiB/s\n",
		kib2mib(peak), fmtSize(b.size), kib2mib(gwRSS), coldMiBps)
	if splitPeaks {
		fmt.Printf("  peak during cold fill: %.1f MiB", kib2mib(coldHWM))
		for _, sec := range sections {
			if sec.hwmKiB > 0 {
				fmt.Printf("; during warm %s only: %.1f MiB", sec.mode, kib2mib(sec.hwmKiB))
			}
		}
		fmt.Println()
	}
	fmt.Printf("nginx peak RSS (VmHWM, summed over its processes): %.1f MiB\n", kib2mib(ngHWM))
	fmt.Println("client CPU s/GiB is the benchmark's own download loop (gateway / nginx measurements).")
	b.printTargets(cold, sections)
	b.printCluster(cluster)
	return nil
}

// measureSection measures both targets for each stream count, sec.rounds
// times, alternating which goes first, and fills sec.rows and sec.conns.
func (b *bench) measureSection(sec *section, targets [2]target, streamCounts []streamSpec) error {
	sec.conns = [2]map[string]int{{}, {}}
	for _, streams := range streamCounts {
		var samples [2][]sample
		for r := 0; r < sec.rounds; r++ {
			order := []int{0, 1}
			if r%2 == 1 {
				order = []int{1, 0}
			}
			for _, i := range order {
				if err := targets[i].p.alive(); err != nil {
					return err
				}
				s, err := measure(targets[i], streams, b.size, b.part)
				if err != nil {
					return fmt.Errorf("%s: %s, %s streams: %w", sec.mode, targets[i].name, streams, err)
				}
				samples[i] = append(samples[i], s)
				for k, n := range s.conns {
					sec.conns[i][k] += n
				}
				if i == 0 {
					sec.servedGiB += s.gib
				}
			}
			logf("%s streams %s round %d: gateway %.0f MiB/s, nginx %.0f MiB/s", sec.mode,
				streams, r+1, samples[0][len(samples[0])-1].mibps, samples[1][len(samples[1])-1].mibps)
		}
		rw := row{streams: streams}
		for i := range 2 {
			for _, s := range samples[i] {
				rw.allMiBps[i] = append(rw.allMiBps[i], s.mibps)
			}
			rw.mibps[i] = median(rw.allMiBps[i])
			rw.cpuPerG[i] = median(mapf(samples[i], func(s sample) float64 { return s.serverCPU / s.gib }))
			rw.cliPerG[i] = median(mapf(samples[i], func(s sample) float64 { return s.clientCPU / s.gib }))
		}
		sec.rows = append(sec.rows, rw)
	}
	return nil
}

// gatewayServed reads the gateway's modelgate_served_bytes_total by source.
func gatewayServed(gwURL string) (map[string]float64, error) {
	tr := newTransport(1)
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(gwURL + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	const prefix = `modelgate_served_bytes_total{source="`
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), prefix)
		if !ok {
			continue
		}
		src, val, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			return nil, fmt.Errorf("/metrics: %q: %w", sc.Text(), err)
		}
		out[src] = v
	}
	return out, sc.Err()
}

func fmtConns(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s (%d)", k, m[k])
	}
	return strings.Join(parts, "; ")
}

// drain reads r to its end in large reads (the client's syscall count
// should not be what limits a measurement) and returns the byte count.
func drain(r io.Reader) (int64, error) {
	buf := make([]byte, 256<<10)
	var n int64
	for {
		m, err := r.Read(buf)
		n += int64(m)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// writeTestFile streams size pseudo-random bytes (ChaCha8, fixed seed) to
// path and returns their sha256 and that of their first prefix bytes.
func writeTestFile(path string, size, prefix int64) (string, string, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", "", err
	}
	f, err := os.Create(path)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	var seed [32]byte
	copy(seed[:], "modelgate blobbench test file!!!")
	rng := mrand.NewChaCha8(seed)
	h := sha256.New()
	bw := bufio.NewWriterSize(f, 1*mib)
	buf := make([]byte, 1*mib)
	prefixSHA := ""
	for done := int64(0); done < size; {
		// Chunks end at prefix, so the prefix's hash can be taken there.
		limit := size
		if done < prefix {
			limit = prefix
		}
		chunk := buf[:min(limit-done, int64(len(buf)))]
		_, _ = rng.Read(chunk) // never fails
		h.Write(chunk)
		if _, err := bw.Write(chunk); err != nil {
			return "", "", err
		}
		done += int64(len(chunk))
		if done == prefix {
			prefixSHA = hex.EncodeToString(h.Sum(nil))
		}
	}
	if err := bw.Flush(); err != nil {
		return "", "", err
	}
	if err := f.Close(); err != nil {
		return "", "", err
	}
	return hex.EncodeToString(h.Sum(nil)), prefixSHA, nil
}

// coldFill downloads the file once through the gateway (a miss: the gateway
// fills the blob from the fake CDN while answering) and checks its sha256.
func (b *bench) coldFill(url string) (float64, error) {
	client := &http.Client{Transport: newTransport(1)}
	defer client.CloseIdleConnections()
	t0 := time.Now()
	resp, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, fmt.Errorf("cold GET answered %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, resp.Body, make([]byte, 256<<10))
	if err != nil {
		return 0, fmt.Errorf("cold GET body: %w", err)
	}
	el := time.Since(t0)
	if n != b.size {
		return 0, fmt.Errorf("cold GET returned %d bytes, want %d", n, b.size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != b.sha {
		return 0, fmt.Errorf("cold GET body sha256 %s, want %s", got, b.sha)
	}
	return float64(n) / mib / el.Seconds(), nil
}

// startNginx starts nginx on a hard link to the gateway's blob and returns
// it with its plain HTTP base URL and, when the https section runs, its TLS
// base URL and the self-signed certificate that server presents.
func (b *bench) startNginx(bin, blobPath string) (*proc, string, string, *x509.Certificate, error) {
	fail := func(err error) (*proc, string, string, *x509.Certificate, error) { return nil, "", "", nil, err }
	port, err := freePort()
	if err != nil {
		return fail(err)
	}
	ndir := filepath.Join(b.dir, "nginx")
	root := filepath.Join(ndir, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fail(err)
	}
	link := filepath.Join(root, fileName)
	if err := os.Link(blobPath, link); err != nil {
		// Another file system: a symlink still reaches the same inode.
		if err := os.Symlink(blobPath, link); err != nil {
			return fail(err)
		}
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)

	// Temp path directives exist only for compiled-in modules.
	v, _ := exec.Command(bin, "-V").CombinedOutput()
	var temps strings.Builder
	for _, m := range []struct{ directive, module string }{
		{"client_body_temp_path", ""},
		{"proxy_temp_path", "http_proxy_module"},
		{"fastcgi_temp_path", "http_fastcgi_module"},
		{"uwsgi_temp_path", "http_uwsgi_module"},
		{"scgi_temp_path", "http_scgi_module"},
	} {
		if m.module != "" && bytes.Contains(v, []byte("--without-"+m.module)) {
			continue
		}
		fmt.Fprintf(&temps, "    %s %s;\n", m.directive, filepath.Join(ndir, strings.TrimSuffix(m.directive, "_path")))
	}
	// One worker: a single process, as the gateway is one process. More:
	// a master and its workers (which, as root, must stay root to read the
	// blob under the 0700 temp dir).
	head := "master_process off;\nworker_processes 1;\n"
	listenOpts := ""
	if b.nginxWorkers > 1 {
		head = fmt.Sprintf("master_process on;\nworker_processes %d;\n", b.nginxWorkers)
		listenOpts = " reuseport" // one socket per worker: the kernel spreads connections
	}
	if os.Geteuid() == 0 {
		head += "user root;\n"
	}

	// The TLS server: same root, a self-signed ECDSA P-256 certificate for
	// 127.0.0.1 (the gateway's leaves are ECDSA P-256 too), TLS 1.2 and
	// 1.3, everything else at nginx's and OpenSSL's defaults. No
	// "ssl_conf_command Options KTLS": TLS is done in user space, as the
	// gateway does it, so nginx reads the file into buffers and encrypts
	// them (sendfile does not apply to an SSL connection).
	var tlsServer, tlsURL string
	var cert *x509.Certificate
	if b.hasMode(modeHTTPS) {
		tlsPort, err := freePort()
		if err != nil {
			return fail(err)
		}
		certPath, keyPath := filepath.Join(ndir, "tls.crt"), filepath.Join(ndir, "tls.key")
		if cert, err = writeSelfSigned(certPath, keyPath); err != nil {
			return fail(err)
		}
		tlsAddr := "127.0.0.1:" + strconv.Itoa(tlsPort)
		tlsURL = "https://" + tlsAddr
		tlsServer = fmt.Sprintf(`
    server {
        listen %s ssl%s;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            root %s;
        }
    }
`, tlsAddr, listenOpts, certPath, keyPath, root)
	}

	conf := fmt.Sprintf(`daemon off;
%serror_log %[2]s/error.log warn;
pid %[2]s/nginx.pid;

events {
    worker_connections 256;
}

http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
%[3]s
    server {
        listen %[4]s;
        location / {
            root %[5]s;
        }
    }
%[6]s}
`, head, ndir, temps.String(), addr+listenOpts, root, tlsServer)
	confPath := filepath.Join(ndir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return fail(err)
	}
	// -e: the error log before the config is read (else the compiled-in
	// /var/log/nginx/error.log); -p: the prefix for relative paths.
	cmd := exec.Command(bin, "-p", ndir+"/", "-c", confPath, "-e", filepath.Join(ndir, "error.log"))
	cmd.Env = cleanEnv()
	p, err := b.start("nginx", filepath.Join(ndir, "stderr.log"), cmd)
	if err != nil {
		return fail(err)
	}
	base := "http://" + addr
	err = waitFor(10*time.Second, func() error {
		if err := p.alive(); err != nil {
			return err
		}
		return probe(base + "/" + fileName)
	})
	if err != nil {
		return fail(fmt.Errorf("nginx did not start: %w\n%s\n%s", err, tail(p.log), tail(filepath.Join(ndir, "error.log"))))
	}
	if tlsURL != "" {
		logf("nginx pid %d on %s and %s", p.pid(), base, tlsURL)
	} else {
		logf("nginx pid %d on %s", p.pid(), base)
	}
	return p, base, tlsURL, cert, nil
}

// writeSelfSigned writes a self-signed ECDSA P-256 certificate for the IP
// address 127.0.0.1, valid for a day, and its key (PKCS #8), as PEM.
func writeSelfSigned(certPath, keyPath string) (*x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "blobbench nginx", Organization: []string{"modelgate blobbench"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	return cert, nil
}

// target is one server as the client reaches it.
type target struct {
	name string
	url  string
	p    *proc
	// transport makes a fresh Transport for a measurement with that many
	// streams.
	transport func(streams int) *http.Transport
}

type sample struct {
	mibps     float64
	gib       float64 // GiB served
	serverCPU float64 // seconds of the server process
	clientCPU float64 // seconds of this process
	conns     map[string]int
}

// measure downloads the file as spec says (a fresh Transport each time:
// every stream opens its own connection, and over https its own CONNECT and
// TLS handshake) and returns the aggregate throughput.
func measure(t target, spec streamSpec, size, part int64) (sample, error) {
	tr := t.transport(spec.n)
	defer tr.CloseIdleConnections()
	client := newClient(tr)

	srv0, err := procTreeCPU(t.p.pid())
	if err != nil {
		return sample{}, err
	}
	cli0, _ := procCPU(os.Getpid())
	t0 := time.Now()
	total, conns, err := download(client, t.url, size, spec, part)
	el := time.Since(t0)
	if err != nil {
		return sample{}, err
	}
	srv1, err := procTreeCPU(t.p.pid())
	if err != nil {
		return sample{}, err
	}
	cli1, _ := procCPU(os.Getpid())
	return sample{
		mibps:     float64(total) / mib / el.Seconds(),
		gib:       float64(total) / gib,
		serverCPU: srv1 - srv0,
		clientCPU: cli1 - cli0,
		conns:     conns,
	}, nil
}

// download fetches url (a file of size bytes) as spec says: spec.n whole-
// file GETs in parallel, or with spec.ranged the file once in part-sized
// ranges, spec.n of them in flight (as hf_transfer and aria2c do). It
// returns the bytes received and what the responses' connections
// negotiated.
func download(client *http.Client, url string, size int64, spec streamSpec, part int64) (int64, map[string]int, error) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[string]int{}
		total int64
		next  int64 // next part's offset (ranged)
		errs  = make([]error, spec.n)
	)
	for i := range spec.n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !spec.ranged {
				d, err := fetch(client, url, size)
				errs[i] = err
				mu.Lock()
				conns[d]++
				total += size
				mu.Unlock()
				return
			}
			for {
				mu.Lock()
				off := next
				next += part
				mu.Unlock()
				if off >= size {
					return
				}
				end := min(off+part, size) - 1
				d, err := fetchRange(client, url, off, end, size)
				if err != nil {
					errs[i] = err
					return
				}
				mu.Lock()
				conns[d]++
				total += end - off + 1
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return total, conns, errors.Join(errs...)
}

// fetchRange GETs bytes off..end of url and checks the 206 answer.
func fetchRange(client *http.Client, url string, off, end, size int64) (string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, end))
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	want := fmt.Sprintf("bytes %d-%d/%d", off, end, size)
	if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") != want {
		return "", fmt.Errorf("GET %s range %d-%d: %s, Content-Range %q", url, off, end, resp.Status, resp.Header.Get("Content-Range"))
	}
	n, err := drain(resp.Body)
	if err != nil {
		return "", fmt.Errorf("GET %s range %d-%d: after %d bytes: %w", url, off, end, n, err)
	}
	if n != end-off+1 {
		return "", fmt.Errorf("GET %s range %d-%d: %d bytes", url, off, end, n)
	}
	return describeConn(resp), nil
}

// fetch GETs url and discards the body with large reads (the client's
// syscall count should not be what limits the measurement). It returns
// what the connection negotiated.
func fetch(client *http.Client, url string, size int64) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	n, err := drain(resp.Body)
	if err != nil {
		return "", fmt.Errorf("GET %s: after %d bytes: %w", url, n, err)
	}
	if n != size {
		return "", fmt.Errorf("GET %s: %d bytes, want %d", url, n, size)
	}
	return describeConn(resp), nil
}

// describeConn names what a response's connection negotiated, e.g.
// "TLS 1.3, TLS_AES_128_GCM_SHA256, X25519, ECDSA P-256 leaf, HTTP/1.1".
func describeConn(resp *http.Response) string {
	cs := resp.TLS
	if cs == nil {
		return "no TLS, " + resp.Proto
	}
	leaf := "no certificate"
	if len(cs.PeerCertificates) > 0 {
		switch k := cs.PeerCertificates[0].PublicKey.(type) {
		case *ecdsa.PublicKey:
			leaf = "ECDSA " + k.Curve.Params().Name + " leaf"
		case *rsa.PublicKey:
			leaf = fmt.Sprintf("RSA-%d leaf", k.N.BitLen())
		default:
			leaf = cs.PeerCertificates[0].PublicKeyAlgorithm.String() + " leaf"
		}
	}
	return fmt.Sprintf("%s, %s, %s, %s, %s",
		tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite), cs.CurveID, leaf, resp.Proto)
}

// newClient follows no redirect that leaves the requested host (none is
// expected: both servers answer the file directly).
func newClient(tr *http.Transport) *http.Client {
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Host != via[0].URL.Host {
				return fmt.Errorf("unexpected redirect from %s to %s", via[0].URL.Host, req.URL.Host)
			}
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			return nil
		},
	}
}

// newTransport is the plain HTTP client transport: no proxy, no
// compression, loopback only.
func newTransport(streams int) *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DisableCompression:  true,
		MaxIdleConnsPerHost: streams,
		DialContext:         dialLoopback,
	}
}

// tlsTransport returns a transport maker for https targets: TLS with Go's
// default settings (TLS 1.3 first; cipher suite order by the hardware, AES-
// GCM with AES-NI), trusting roots only, HTTP/1.1 (no HTTP/2 attempt). A
// non-nil proxy is asked to CONNECT to the URL's host: the client never
// resolves that name, the proxy is the only address it dials.
func tlsTransport(proxy *url.URL, roots *x509.CertPool) func(streams int) *http.Transport {
	return func(streams int) *http.Transport {
		tr := newTransport(streams)
		if proxy != nil {
			tr.Proxy = http.ProxyURL(proxy)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: roots}
		tr.ForceAttemptHTTP2 = false
		return tr
	}
}

var dialer = &net.Dialer{Timeout: 5 * time.Second}

// dialLoopback dials loopback IP addresses only: a host name here would
// mean the proxy was bypassed (and a DNS lookup), which must not happen.
func dialLoopback(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("blobbench dials loopback addresses only, not %q", addr)
	}
	return dialer.DialContext(ctx, network, addr)
}

// probe answers nil when url answers 200 to a HEAD.
func probe(url string) error {
	_, err := head(newTransport(1), url)
	return err
}

// probeTLS sends one HEAD to an https target and describes what its
// connection negotiated.
func probeTLS(t target) (string, error) {
	resp, err := head(t.transport(1), t.url)
	if err != nil {
		return "", err
	}
	return describeConn(resp), nil
}

func head(tr *http.Transport, url string) (*http.Response, error) {
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HEAD %s: %s", url, resp.Status)
	}
	return resp, nil
}

// getBody GETs a small body (at most 1 MiB).
func getBody(url string) ([]byte, error) {
	tr := newTransport(1)
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}

func waitFor(limit time.Duration, f func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// cleanEnv is this process's environment without anything that could
// reconfigure the gateway or send traffic through a proxy.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "MODELGATE_"), strings.HasPrefix(k, "HF_"),
			strings.HasPrefix(k, "CIVITAI_"), strings.HasPrefix(k, "CA_"),
			strings.HasSuffix(strings.ToLower(k), "_proxy"):
			continue
		}
		env = append(env, kv)
	}
	return env
}

// procCPU returns utime+stime of pid in seconds.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after it start
	// with the state (field 3). utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return float64(ut+st) / clockTicks, nil
}

// procTreeCPU returns utime+stime in seconds of pid and its children (an
// nginx master and its workers).
func procTreeCPU(pid int) (float64, error) {
	var sum float64
	for _, p := range procTree(pid) {
		c, err := procCPU(p)
		if err != nil {
			return 0, err
		}
		sum += c
	}
	return sum, nil
}

// procTree returns pid and the pids of its direct children.
func procTree(pid int) []int {
	pids := []int{pid}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil || child == pid {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			pids = append(pids, child)
		}
	}
	return pids
}

// procStatusKiB returns a "kB" field of /proc/<pid>/status.
func procStatusKiB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

func numCPU() int {
	// The CPUs this process may run on, which the servers share with it.
	n := 0
	b, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
				for _, r := range strings.Split(strings.TrimSpace(v), ",") {
					lo, hi, found := strings.Cut(r, "-")
					a, _ := strconv.Atoi(lo)
					z := a
					if found {
						z, _ = strconv.Atoi(hi)
					}
					n += z - a + 1
				}
			}
		}
	}
	return n
}

func nginxVersion(bin string) string {
	out, err := exec.Command(bin, "-v").CombinedOutput()
	if err != nil {
		return "?"
	}
	s := strings.TrimSpace(string(out))
	if _, v, ok := strings.Cut(s, "nginx/"); ok {
		return strings.Fields(v)[0]
	}
	return s
}

// parseSize reads "1073741824", "256MiB", "1GiB", "1.5GB".
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.ToLower(strings.TrimSpace(s[i:]))
	}
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30,
		"kb": 1e3, "mb": 1e6, "gb": 1e9,
	}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("unknown unit %q in %q", unit, s)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return int64(v * mult), nil
}

func fmtSize(n int64) string {
	if n%mib == 0 {
		return fmt.Sprintf("%d MiB", n/mib)
	}
	return fmt.Sprintf("%d bytes", n)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func mapf[T any](xs []T, f func(T) float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

func fmtList(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.FormatFloat(x, 'f', 0, 64)
	}
	return strings.Join(parts, " ")
}

func kib2mib(k int64) float64 { return float64(k) / 1024 }

func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "blobbench: "+format+"\n", args...)
	os.Exit(1)
}
