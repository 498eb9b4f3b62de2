package main

// The cluster section (issue 13): gateways on one S3 bucket (a real
// versitygw on loopback). It measures, in one run:
//   - --cold-clients cold clients on one gateway against the same clients
//     spread over three gateways that share the bucket (throttled CDN):
//     wall time and the bytes the CDN sent;
//   - a warm hit from the bucket (a gateway with an empty hot tier) against
//     a hit from the hot tier against nginx serving the same file.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/modelgate/modelgate/internal/versity"
)

const (
	s3Bucket = "models"
	s3Access = "benchaccess"
	s3Secret = "benchsecret-not-a-real-one"
	// clusterSecret authenticates the gateways to each other (peer
	// streams), when the gateway has cluster.secret.
	clusterSecret = "bench-cluster-secret-0123456789abcdef"
)

// startVersity starts versitygw on loopback over a directory of the run
// and creates the bucket; it returns the endpoint URL.
func (b *bench) startVersity() (string, error) {
	bin := versity.Binary()
	if bin == "" {
		return "", fmt.Errorf("versitygw not installed (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)")
	}
	port, err := freePort()
	if err != nil {
		return "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	root := filepath.Join(b.dir, "s3")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", err
	}
	cmd := exec.Command(bin, "--port", addr, "posix", root)
	cmd.Env = append(cleanEnv(), "ROOT_ACCESS_KEY="+s3Access, "ROOT_SECRET_KEY="+s3Secret)
	if _, err := b.start("versitygw", filepath.Join(b.dir, "versitygw.log"), cmd); err != nil {
		return "", err
	}
	c, err := minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(s3Access, s3Secret, "")})
	if err != nil {
		return "", err
	}
	err = waitFor(20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return c.MakeBucket(ctx, s3Bucket, minio.MakeBucketOptions{})
	})
	if err != nil {
		return "", fmt.Errorf("versitygw: creating the bucket: %w", err)
	}
	b.s3 = c
	return "http://" + addr, nil
}

// clusterEnv is the configuration of a gateway of the cluster under prefix.
func (b *bench) clusterEnv(endpoint, prefix string, port int) []string {
	env := []string{
		"MODELGATE_STORAGE_BACKEND=s3",
		"MODELGATE_STORAGE_S3_ENDPOINT=" + endpoint,
		"MODELGATE_STORAGE_S3_BUCKET=" + s3Bucket,
		"MODELGATE_STORAGE_S3_PREFIX=" + prefix,
		"MODELGATE_STORAGE_S3_PATH_STYLE=true",
		"MODELGATE_STORAGE_S3_ACCESS_KEY_ID=" + s3Access,
		"MODELGATE_STORAGE_S3_SECRET_ACCESS_KEY=" + s3Secret,
		"MODELGATE_CLUSTER_LEASE_TTL=10s",
	}
	if b.clusterPeers {
		env = append(env,
			"MODELGATE_CLUSTER_SECRET="+clusterSecret,
			"MODELGATE_CLUSTER_ADVERTISE=http://127.0.0.1:"+strconv.Itoa(port),
			"MODELGATE_CLUSTER_PEERS=127.0.0.0/8",
		)
	}
	return env
}

// clusterCold is one cold fan-out measurement.
type clusterCold struct {
	wall     float64 // seconds until the last client had the whole file
	upstream float64 // bytes the CDN sent / file size
}

// coldFanOut starts nodes fresh gateways on a fresh prefix, has the
// --cold-clients clients download the throttled file spread over them
// (client i on node i mod nodes), and stops the gateways.
func (b *bench) coldFanOut(bin, endpoint, prefix string, nodes int) (clusterCold, error) {
	var gws []*proc
	var bases []string
	var dirs []string
	defer func() {
		for _, p := range gws {
			stop(p)
		}
		for _, d := range dirs {
			_ = os.RemoveAll(d)
		}
	}()
	for range nodes {
		port, err := freePort()
		if err != nil {
			return clusterCold{}, err
		}
		p, base, _, err := b.startGatewayOn(bin, port, b.clusterEnv(endpoint, prefix, port))
		if err != nil {
			return clusterCold{}, err
		}
		gws, bases, dirs = append(gws, p), append(bases, base), append(dirs, b.gwDataDir(b.nGateway))
	}
	if err := b.cdn.quiet(); err != nil {
		return clusterCold{}, err
	}
	up0 := b.cdn.bodyBytes.Load()
	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, b.coldClients)
	for i := range b.coldClients {
		wg.Go(func() {
			tr := newTransport(1)
			defer tr.CloseIdleConnections()
			url := bases[i%nodes] + "/" + cappedRepo + "/resolve/main/" + fileName
			sum, err := fetchSHA(newClient(tr), url, b.coldSize)
			if err == nil && sum != b.coldSHA {
				err = fmt.Errorf("client %d: sha256 %s, want %s", i, sum, b.coldSHA)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	el := time.Since(t0).Seconds()
	for i, err := range errs {
		if err != nil {
			return clusterCold{}, fmt.Errorf("cluster of %d, client %d: %w\n%s", nodes, i, err, tail(gws[i%nodes].log))
		}
	}
	if err := b.cdn.quiet(); err != nil {
		return clusterCold{}, err
	}
	up := b.cdn.bodyBytes.Load() - up0
	return clusterCold{wall: el, upstream: float64(up) / float64(b.coldSize)}, nil
}

// clusterResult holds every round of the cluster section.
type clusterResult struct {
	single, spread []clusterCold
	// MiB/s of one whole-file stream: a gateway with an empty hot tier
	// (from the bucket), the same gateway again (hot tier), nginx.
	fromBucket, fromHot, fromNginx []float64
}

func (b *bench) runCluster(bin, nginxBin string) (*clusterResult, error) {
	endpoint, err := b.startVersity()
	if err != nil {
		return nil, err
	}
	res := &clusterResult{}
	logf("cluster: versitygw at %s; %d cold clients on %s at %s/s per response; warm: %s; peer streaming %v",
		endpoint, b.coldClients, fmtSize(b.coldSize), fmtSize(b.coldRate), fmtSize(b.size), b.clusterPeers)
	for r := range b.rounds {
		one, err := b.coldFanOut(bin, endpoint, fmt.Sprintf("cold%d-one/", r), 1)
		if err != nil {
			return nil, err
		}
		three, err := b.coldFanOut(bin, endpoint, fmt.Sprintf("cold%d-three/", r), 3)
		if err != nil {
			return nil, err
		}
		res.single, res.spread = append(res.single, one), append(res.spread, three)
		logf("cluster round %d: %d clients on 1 node %.2fs (%.3fx upstream), on 3 nodes %.2fs (%.3fx upstream)",
			r+1, b.coldClients, one.wall, one.upstream, three.wall, three.upstream)
	}

	// Warm: one gateway fills the bucket with the whole file (CDN
	// uncapped); then, per round, a fresh gateway with an empty hot tier
	// reads it from the bucket, then again from its hot tier.
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	filler, base, _, err := b.startGatewayOn(bin, port, b.clusterEnv(endpoint, "warm/", port))
	if err != nil {
		return nil, err
	}
	if _, err := b.coldFill(base + "/" + repo + "/resolve/main/" + fileName); err != nil {
		return nil, err
	}
	err = waitFor(5*time.Minute, func() error {
		_, err := b.s3.StatObject(context.Background(), s3Bucket, "warm/blobs/sha256/"+b.sha, minio.StatObjectOptions{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("the blob never reached the bucket: %w", err)
	}
	hotPath := filepath.Join(b.gwDataDir(b.nGateway), "blobs", "sha256", b.sha[:2], b.sha)
	ng, ngURL, _, _, err := b.startNginx(nginxBin, hotPath)
	if err != nil {
		return nil, err
	}
	defer func() {
		stop(ng)
		stop(filler)
		_ = os.RemoveAll(filepath.Join(b.dir, "nginx"))
	}()
	for r := range b.rounds {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		gw, base, _, err := b.startGatewayOn(bin, port, b.clusterEnv(endpoint, "warm/", port))
		if err != nil {
			return nil, err
		}
		url := base + "/" + repo + "/resolve/main/" + fileName
		up0 := b.cdn.bodyBytes.Load()
		fromBucket, err := timedFetch(url, b.size, b.sha)
		if err != nil {
			stop(gw)
			return nil, fmt.Errorf("warm from the bucket: %w", err)
		}
		if up := b.cdn.bodyBytes.Load() - up0; up != 0 {
			stop(gw)
			return nil, fmt.Errorf("a gateway with an empty hot tier fetched %d bytes from the CDN instead of the bucket", up)
		}
		hotFile := filepath.Join(b.gwDataDir(b.nGateway), "blobs", "sha256", b.sha[:2], b.sha)
		if err := waitFor(time.Minute, func() error { _, err := os.Stat(hotFile); return err }); err != nil {
			stop(gw)
			return nil, fmt.Errorf("the hot tier was not filled from the bucket: %w", err)
		}
		fromHot, err := timedFetch(url, b.size, b.sha)
		if err != nil {
			stop(gw)
			return nil, fmt.Errorf("warm from the hot tier: %w", err)
		}
		stop(gw)
		_ = os.RemoveAll(b.gwDataDir(b.nGateway))
		fromNginx, err := timedFetch(ngURL+"/"+fileName, b.size, b.sha)
		if err != nil {
			return nil, fmt.Errorf("nginx: %w", err)
		}
		res.fromBucket = append(res.fromBucket, fromBucket)
		res.fromHot = append(res.fromHot, fromHot)
		res.fromNginx = append(res.fromNginx, fromNginx)
		logf("cluster warm round %d: from the bucket %.0f, hot tier %.0f, nginx %.0f MiB/s", r+1, fromBucket, fromHot, fromNginx)
	}
	return res, nil
}

// timedFetch downloads url in one stream, checks its sha256, and returns
// MiB/s.
func timedFetch(url string, size int64, sha string) (float64, error) {
	tr := newTransport(1)
	defer tr.CloseIdleConnections()
	t0 := time.Now()
	sum, err := fetchSHA(newClient(tr), url, size)
	if err != nil {
		return 0, err
	}
	if sum != sha {
		return 0, fmt.Errorf("sha256 %s, want %s", sum, sha)
	}
	return float64(size) / mib / time.Since(t0).Seconds(), nil
}

func (b *bench) printCluster(c *clusterResult) {
	if c == nil {
		return
	}
	fmt.Printf("\nCLUSTER: gateways on one versitygw bucket (loopback); medians of %d rounds; peer streaming %v\n", len(c.single), b.clusterPeers)
	one, three := medianOf(c.single, func(x clusterCold) float64 { return x.wall }), medianOf(c.spread, func(x clusterCold) float64 { return x.wall })
	fmt.Printf("%-52s %8s %9s  %s\n", "scenario", "wall s", "upstream", "ratio")
	fmt.Printf("%-52s %8.2f %8.3fx  %s\n", fmt.Sprintf("%d cold clients, 1 gateway", b.coldClients), one,
		medianOf(c.single, func(x clusterCold) float64 { return x.upstream }), "1.00 (reference)")
	fmt.Printf("%-52s %8.2f %8.3fx  %.2fx the 1-gateway wall time\n", fmt.Sprintf("%d cold clients over 3 gateways", b.coldClients), three,
		medianOf(c.spread, func(x clusterCold) float64 { return x.upstream }), three/one)
	fmt.Printf("  per round, wall s: 1 gateway %s; 3 gateways %s\n", fmtListPrec(mapf(c.single, func(x clusterCold) float64 { return x.wall }), 2),
		fmtListPrec(mapf(c.spread, func(x clusterCold) float64 { return x.wall }), 2))
	hot := median(c.fromHot)
	fmt.Printf("%-52s %8s %9s  %s\n", fmt.Sprintf("warm, %s, 1 stream", fmtSize(b.size)), "MiB/s", "", "")
	fmt.Printf("%-52s %8.0f %9s  %.2fx the hot tier\n", "  gateway, empty hot tier (from the bucket)", median(c.fromBucket), "", median(c.fromBucket)/hot)
	fmt.Printf("%-52s %8.0f %9s  %s\n", "  gateway, hot tier", hot, "", "1.00 (reference)")
	fmt.Printf("%-52s %8.0f %9s  %.2fx the hot tier\n", "  nginx, same file", median(c.fromNginx), "", median(c.fromNginx)/hot)
	fmt.Printf("  per round, MiB/s: bucket %s; hot %s; nginx %s\n", fmtList(c.fromBucket), fmtList(c.fromHot), fmtList(c.fromNginx))

	up := slicesMax(mapf(c.spread, func(x clusterCold) float64 { return x.upstream }))
	fmt.Printf("\nTARGETS (issue 13)\n%-48s %9s %9s\n", "figure", "measured", "target")
	row := func(name, want string, got float64, ok bool) {
		mark := "met"
		if !ok {
			mark = "MISSED"
		}
		fmt.Printf("%-48s %9.2f %9s  %s\n", name, got, want, mark)
	}
	row("cluster upstream bytes / file (worst round)", "= 1.00", up, up <= 1.0005)
	row("3-gateway cold wall / 1-gateway cold wall", "<= 1.20", three/one, three/one <= 1.2)
	row("warm from the bucket / hot tier", ">= 0.50", median(c.fromBucket)/hot, median(c.fromBucket)/hot >= 0.5)
}

// fetchSHA downloads url in one stream and returns the body's sha256.
func fetchSHA(client *http.Client, url string, size int64) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, resp.Body, make([]byte, 256<<10))
	if err != nil {
		return "", fmt.Errorf("GET %s: after %d bytes: %w", url, n, err)
	}
	if n != size {
		return "", fmt.Errorf("GET %s: %d bytes, want %d", url, n, size)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
