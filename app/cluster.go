package app

import (
	"log/slog"
	"net/http"

	"github.com/modelgate/modelgate/config"
	"github.com/modelgate/modelgate/proxy"
	"github.com/modelgate/modelgate/s3tier"
	"github.com/modelgate/modelgate/upstream"
)

// peerEndpoint is the node-to-node endpoint (s3tier.PeerPathPrefix), on
// the workers' port like the probes but behind its own checks: a client in
// cluster.peers with a request signed with cluster.secret. It is
// registered whether cluster mode is on or not, for every method, so that
// no request under its path ever reaches a site; with cluster.secret empty
// it answers 404 to everything.
func peerEndpoint(cfg config.Config, blobs s3tier.LocalBlobs, log *slog.Logger, onEvent func(string), onBytes func(string, int64)) proxy.Endpoint {
	opts := s3tier.PeerServerOptions{
		Peers:   cfg.Cluster.Peers,
		Blobs:   blobs,
		OnEvent: onEvent,
		OnBytes: onBytes,
		Logger:  log.With("component", "cluster"),
	}
	if cfg.Storage.Backend == config.BackendS3 && cfg.Cluster.Secret != "" {
		opts.Secret = []byte(cfg.Cluster.Secret.Reveal())
	}
	return proxy.Endpoint{
		Path: s3tier.PeerPathPrefix,
		Methods: []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
			http.MethodDelete, http.MethodOptions},
		// Not clients.allow: the peers may be outside it, and a worker
		// inside it must get the same 404 as anyone without the secret.
		Access:  proxy.AccessAnyone,
		Handler: s3tier.NewPeerServer(opts),
	}
}

// peerTransport carries requests to the other gateways: its dials reach
// the networks of cluster.peers and nothing else (the addresses come from
// the shared bucket's leases), never this gateway itself, and never
// through upstream.proxy. An https advertise must have a certificate the
// system roots or upstream.ca_file vouch for.
func peerTransport(cfg config.Config, guard *upstream.Guard) (http.RoundTripper, error) {
	return upstream.NewTransport(upstream.Options{
		CAFile:  cfg.Upstream.CAFile,
		Timeout: cfg.Upstream.Timeout.Duration,
		Guard:   guard.Only(cfg.Cluster.Peers),
	})
}
