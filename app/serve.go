package app

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"

	"github.com/modelgate/modelgate/proxy"
)

// Serve listens on listen (and listen_tls) and serves the gateway until ctx
// ends, then drains: /readyz answers 503, the listeners close, and the
// answers in flight get shutdown_timeout to finish before they are cut.
// When ready is not nil it receives each bound address once its listener
// is up (tests use port 0). It returns an error only when a listener could
// not be opened or stopped serving on its own.
func (a *App) Serve(ctx context.Context, ready chan<- string) error {
	cfg, log := a.cfg, a.log
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	ln = a.listen(ln)
	srv := proxy.NewServer(cfg.Listen, a.handler, log)
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("modelgate listening", "addr", ln.Addr().String(), "data_dir", cfg.DataDir,
		"huggingface", cfg.HuggingFace.Endpoint.String(), "hf_token", cfg.HuggingFace.Token != "",
		"civitai", cfg.CivitAI.Endpoint.String(), "civitai_key", cfg.CivitAI.APIKey != "", "offline", cfg.Offline)
	if ready != nil {
		ready <- ln.Addr().String()
	}
	// listen_tls serves the very same handler over TLS: mirror mode, the
	// admin API, and CONNECT inside TLS (HTTPS_PROXY=https://...).
	servers := []*http.Server{srv}
	if a.tls != nil {
		tln, err := net.Listen("tcp", cfg.ListenTLS)
		if err != nil {
			srv.Close()
			return fmt.Errorf("listen_tls: %w", err)
		}
		tln = a.listen(tln)
		tlsSrv := proxy.NewServer(cfg.ListenTLS, a.handler, log)
		servers = append(servers, tlsSrv)
		go func() { errc <- tlsSrv.Serve(tls.NewListener(tln, a.tls)) }()
		log.Info("modelgate listening with TLS", "addr", tln.Addr().String())
		if ready != nil {
			ready <- tln.Addr().String()
		}
	}

wait:
	for {
		select {
		case err := <-errc:
			return fmt.Errorf("serving: %w", err)
		case <-ctx.Done():
			break wait
		}
	}
	// Draining: /readyz says 503 (for a balancer that still asks on a
	// kept-alive connection), the listener closes so new connections are
	// refused, and the answers in flight, plain and intercepted, get
	// shutdown_timeout to finish.
	a.drain()
	log.Info("shutting down: draining the downloads in flight", "timeout", cfg.ShutdownTimeout.String())
	shutCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout.Duration)
	defer cancel()
	// Every listener and the interceptions drain at once, within one
	// shutdown_timeout.
	done := make(chan error, len(servers)+1)
	go func() { done <- a.shutdown(shutCtx) }()
	for _, s := range servers {
		go func() { done <- s.Shutdown(shutCtx) }()
	}
	var cut bool
	for range len(servers) + 1 {
		if err := <-done; err != nil {
			cut = true
		}
	}
	if cut {
		// Long downloads are still running; cut them.
		for _, s := range servers {
			s.Close()
		}
		log.Warn("shutdown_timeout passed; cut the downloads still running")
		return nil
	}
	log.Info("drained; exiting")
	return nil
}
