package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/civitai"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/hfmirror"
	"github.com/modelgate/modelgate/hostmatch"
	"github.com/modelgate/modelgate/metrics"
	"github.com/modelgate/modelgate/mitmca"
	"github.com/modelgate/modelgate/s3tier"
	"github.com/modelgate/modelgate/upstream"
	"github.com/modelgate/modelgate/xet"
)

// xetUpstream is the Xet service's way out: requests to the Hub (its
// xet-read-token route) through the injector, which attaches the
// operator's credential; anything else (the CAS, xorb URLs) as is, with the
// operator's Xet token the service set, and never a Hub credential.
type xetUpstream struct {
	hub     *authinject.Injector
	hubHost string
	rest    http.RoundTripper
}

func (x *xetUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	if authinject.CanonicalHost(r.URL) == x.hubHost {
		return x.hub.Do(r, authinject.FollowSameHost)
	}
	return x.rest.RoundTrip(r)
}

// xetRedirect is the Xet client's redirect policy: the CAS calls carry the
// operator's Xet token, and net/http keeps Authorization on a redirect to
// the same host, plain http included; a downgrade is refused, as authinject
// refuses it for every other upstream.
func xetRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if req.URL.Scheme == "http" && via[len(via)-1].URL.Scheme == "https" {
		return authinject.ErrDowngrade
	}
	return nil
}

// interceptsAll reports whether patterns (mitm.hosts) cover every one of
// hosts on port.
func interceptsAll(patterns hostmatch.Patterns, hosts []string, port string) bool {
	for _, h := range hosts {
		if !patterns.Match(h, port) {
			return false
		}
	}
	return true
}

// requestBase is the scheme://host a client reached the gateway at.
func requestBase(r *http.Request) string {
	if r.TLS != nil {
		return "https://" + r.Host
	}
	return "http://" + r.Host
}

// adminKeySpecs converts admin.keys for clientauth.LoadAdmin.
func adminKeySpecs(keys []config.AdminKey) []clientauth.Spec {
	out := make([]clientauth.Spec, len(keys))
	for i, k := range keys {
		out[i] = clientauth.Spec{Name: k.Name, KeySHA256: k.KeySHA256, KeyFile: k.KeyFile}
	}
	return out
}

// keySpecs hands the configured worker keys to clientauth.
func keySpecs(keys []config.ClientKey) []clientauth.Spec {
	out := make([]clientauth.Spec, len(keys))
	for i, k := range keys {
		out[i] = clientauth.Spec{Name: k.Name, KeySHA256: k.KeySHA256, KeyFile: k.KeyFile, Scopes: k.Scopes, Repos: k.Repos}
	}
	return out
}

// upstreamCredentials binds the Hugging Face token and the CivitAI key to
// their endpoints' hosts.
func upstreamCredentials(cfg config.Config) ([]authinject.Credential, error) {
	hf, err := authinject.Bearer(cfg.HuggingFace.Endpoint.String(), cfg.HuggingFace.Token.Reveal())
	if err != nil {
		return nil, err
	}
	civ, err := authinject.Bearer(cfg.CivitAI.Endpoint.String(), cfg.CivitAI.APIKey.Reveal())
	if err != nil {
		return nil, err
	}
	return []authinject.Credential{hf, civ}, nil
}

// pinnedBlobs turns cache.pinned into the function eviction asks for the
// blobs to keep: Hub pins through the Hub's file records, CivitAI pins
// through the download mappings.
func pinnedBlobs(pins []config.Pin, idx *cache.Index, runtime func() []string, xetRanges *atomic.Pointer[func(map[string]bool) map[cache.Digest]bool]) func() map[cache.Digest]bool {
	return func() map[cache.Digest]bool {
		all := pins
		if runtime != nil {
			// Pins set through the admin API were checked when they were
			// set; a bad one is skipped rather than unpinning the rest.
			for _, spec := range runtime() {
				if p, err := config.ParsePin(spec); err == nil {
					all = append(all[:len(all):len(all)], p)
				}
			}
		}
		hf, civ := splitPins(all)
		keep, xetFiles := hfmirror.PinnedContent(idx, hf)
		// A pinned Xet file keeps its xorb ranges too.
		if f := xetRanges.Load(); f != nil && len(xetFiles) > 0 {
			for d := range (*f)(xetFiles) {
				keep[d] = true
			}
		}
		for d := range civitai.PinnedDigests(idx, civ) {
			keep[d] = true
		}
		return keep
	}
}

// splitPins splits pins into Hub pins and CivitAI version ids.
func splitPins(pins []config.Pin) ([]hfhub.Pin, []string) {
	var hf []hfhub.Pin
	var civ []string
	for _, p := range pins {
		if p.IsHub() {
			hf = append(hf, hfhub.Pin{Repo: hfhub.Repo{Type: hfhub.RepoType(p.RepoType), ID: p.Repo}, Revision: p.Revision})
		} else {
			civ = append(civ, p.Version)
		}
	}
	return hf, civ
}

// xetMetrics feeds the Xet service's counts to the gateway's metrics.
func xetMetrics(m *metrics.Metrics) xet.Metrics {
	result := func(hit bool) string {
		if hit {
			return "hit"
		}
		return "miss"
	}
	return xet.Metrics{
		XorbBytes:      func(hit bool, n int64) { m.XetXorbBytes.WithLabelValues(result(hit)).Add(float64(n)) },
		SharedBytes:    func(n int64) { m.XetSharedBytes.Add(float64(n)) },
		Reconstruction: func(hit bool) { m.XetReconstructions.WithLabelValues(result(hit)).Inc() },
	}
}

func fillFailureReason(err error) string {
	var dm *cache.DigestMismatchError
	var sm *cache.SizeMismatchError
	switch {
	case errors.Is(err, cache.ErrOrphaned):
		return "abandoned"
	case errors.Is(err, cache.ErrRetriesExhausted), errors.Is(err, cache.ErrFillTimeout):
		return "upstream"
	case errors.As(err, &dm), errors.As(err, &sm):
		return "verify"
	case errors.Is(err, cache.ErrStorage):
		return "io"
	case errors.Is(err, context.Canceled):
		return "shutdown"
	}
	return "upstream"
}

const (
	// indexMaintenanceEvery is how often the index is trimmed to its
	// limits and its freed space given back.
	indexMaintenanceEvery = 10 * time.Minute
	// maxLastRevisions bounds the branch -> commit mappings kept for
	// offline use (~150 bytes each).
	maxLastRevisions = 100_000
)

// CAOptions is how the interception CA is created and rotated. With
// listen_tls on, a new CA may also sign for the gateway's own names.
func CAOptions(cfg config.Config) mitmca.Options {
	opts := mitmca.Options{Hosts: cfg.MITM.Hosts.Strings(), Overlap: cfg.MITM.CAOverlap.Duration}
	if cfg.ListenTLS != "" && cfg.TLS.CertFile == "" {
		opts.Names = tlsNames(cfg)
	}
	return opts
}

// tlsNames are the names the TLS listener's own certificate covers:
// tls.names, or the host name and the addresses of listen_tls (every
// interface address, link-local ones aside, when it names no host).
func tlsNames(cfg config.Config) []string {
	if len(cfg.TLS.Names) > 0 {
		return cfg.TLS.Names
	}
	var names []string
	if h, err := os.Hostname(); err == nil && h != "" {
		names = append(names, strings.ToLower(h))
	}
	host, _, _ := net.SplitHostPort(cfg.ListenTLS)
	ip, err := netip.ParseAddr(host)
	switch {
	case host != "" && err != nil:
		names = append(names, host) // a name
	case host != "" && !ip.IsUnspecified():
		names = append(names, ip.String())
	default:
		addrs, _ := net.InterfaceAddrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && !p.Addr().IsLinkLocalUnicast() {
				names = append(names, p.Addr().Unmap().String())
			}
		}
	}
	return names
}

// listenerTLS is the TLS listener's configuration: tls.cert_file and
// tls.key_file, or a certificate for tlsNames issued from the gateway's
// CA (which workers trust already) and renewed as it ages.
func listenerTLS(cfg config.Config, ca *mitmca.CA, log *slog.Logger) (*tls.Config, error) {
	conf := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// HTTP/1.1 only: CONNECT (HTTPS_PROXY=https://) is an HTTP/1.1
		// hijack, and downloads are single long streams.
		NextProtos: []string{"http/1.1"},
	}
	if cfg.TLS.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls.cert_file: %w", err)
		}
		conf.Certificates = []tls.Certificate{pair}
		return conf, nil
	}
	names := tlsNames(cfg)
	if len(names) == 0 {
		return nil, errors.New("listen_tls: no name for its certificate; set tls.names")
	}
	if bad := ca.Uncovered(names, time.Now()); len(bad) > 0 {
		// Clients will refuse the certificate for these names.
		log.Error("the CA cannot sign for some of tls.names (it was created before they were configured); run `modelgate ca --new` and have workers trust the new CA, or set tls.cert_file",
			"names", strings.Join(bad, ","))
	}
	conf.GetCertificate = ca.ServerCertificates(names, nil)
	return conf, nil
}

// sharedTier returns the S3 tier of storage.backend s3, or nil for disk.
// Its transport has its own dialer through the outbound guard, exempting
// only the bucket's endpoint (which is usually on a private address).
// pinned resolves this gateway's pins for the bucket's eviction.
func sharedTier(cfg config.Config, guard *upstream.Guard, log *slog.Logger, reg prometheus.Registerer, onEvent func(string), onBytes func(string, int64), pinned func() map[cache.Digest]bool) (*s3tier.Tier, error) {
	if cfg.Storage.Backend != config.BackendS3 {
		return nil, nil
	}
	s3 := cfg.Storage.S3
	u, err := url.Parse(s3.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("storage.s3.endpoint: %w", err)
	}
	transport, err := upstream.NewTransport(upstream.Options{
		CAFile:  s3.CAFile,
		Timeout: cfg.Upstream.Timeout.Duration,
		Guard:   guard.Exempting(authinject.CanonicalHost(u)),
	})
	if err != nil {
		return nil, fmt.Errorf("storage.s3: %w", err)
	}
	var peerSecret []byte
	var peers http.RoundTripper
	if cfg.Cluster.Secret != "" {
		peerSecret = []byte(cfg.Cluster.Secret.Reveal())
		if peers, err = peerTransport(cfg, guard); err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
	}
	tier, err := s3tier.New(s3tier.Options{
		Endpoint:        s3.Endpoint,
		Bucket:          s3.Bucket,
		Prefix:          s3.Prefix,
		Region:          s3.Region,
		PathStyle:       s3.PathStyle,
		AccessKeyID:     s3.AccessKeyID.Reveal(),
		SecretAccessKey: s3.SecretAccessKey.Reveal(),
		SessionToken:    s3.SessionToken.Reveal(),
		PartSize:        uint64(s3.PartSize),
		Transport:       metrics.InstrumentS3(reg, transport),
		LeaseTTL:        cfg.Cluster.LeaseTTL.Duration,
		Node:            cfg.Cluster.Node,
		Logger:          log.With("component", "s3tier"),
		OnEvent:         onEvent,
		OnBytes:         onBytes,
		Advertise:       cfg.Cluster.Advertise,
		PeerSecret:      peerSecret,
		PeerTransport:   peers,
		MaxSize:         int64(s3.MaxSize),
		EvictEvery:      s3.EvictInterval.Duration,
		Pinned:          pinned,
	})
	if err != nil {
		return nil, err
	}
	log.Info("blobs shared through an S3 bucket", "endpoint", s3.Endpoint, "bucket", s3.Bucket, "prefix", s3.Prefix, "lease_ttl", cfg.Cluster.LeaseTTL,
		"max_size", s3.MaxSize, "peer_streaming", len(peerSecret) > 0, "advertise", cfg.Cluster.Advertise)
	return tier, nil
}
