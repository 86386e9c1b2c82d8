package main

import (
	"context"
	"crypto/x509"
	"errors"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// server is one running ambassador: the proxy, its credentials and its readiness.
type server struct {
	cfg      Config
	log      *slog.Logger
	errorLog *log.Logger // for net/http's own messages
	upstream *url.URL
	allow    string // Allow header of 405 answers, per mode

	token     *credential[string]
	ca        *credential[*x509.CertPool]
	transport *http.Transport
	auth      *authTransport
	proxy     *httputil.ReverseProxy

	upstreamOK   atomic.Bool // the API server answered the readiness check once
	shuttingDown atomic.Bool
}

// newServer checks cfg and builds a server from it.
func newServer(cfg Config, logger *slog.Logger) (*server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	upstream, err := cfg.upstreamURL()
	if err != nil {
		return nil, err
	}
	s := &server{
		cfg:      cfg,
		log:      logger,
		errorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		upstream: upstream,
		allow:    "GET, HEAD",
		token:    newCredential("token", cfg.TokenFile, parseToken, logger),
		ca:       newCredential("CA bundle", cfg.CAFile, parseCA, logger),
	}
	if cfg.Mode == modeReadWrite {
		s.allow = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS" // what Kubernetes uses; only CONNECT is refused
	}
	s.transport = s.newTransport()
	s.auth = &authTransport{base: s.transport, token: s.token, log: logger}
	s.proxy = s.newReverseProxy()
	return s, nil
}

// serve runs the proxy on proxyLn and the probes on healthLn until ctx is done, then
// shuts down gracefully. It returns nil after a requested shutdown, even if
// long-lived requests had to be cut at the shutdown timeout.
func (s *server) serve(ctx context.Context, proxyLn, healthLn net.Listener) error {
	var handler http.Handler = s
	if s.log.Enabled(ctx, slog.LevelDebug) {
		handler = s.logRequests(handler)
	}
	proxySrv := &http.Server{
		Handler: handler,
		// Only the header read is bounded: a ReadTimeout or WriteTimeout would cut
		// watches, log follows and slow uploads.
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		ErrorLog:          s.errorLog,
	}
	healthSrv := &http.Server{
		Handler:           s.healthHandler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       5 * time.Second,
		WriteTimeout:      5 * time.Second,
		IdleTimeout:       s.cfg.IdleTimeout,
		ErrorLog:          s.errorLog,
	}

	// Load the credentials once now, for the start-up log; a failure is logged and
	// leaves the ambassador unready, it is not fatal (the volume may still appear).
	_, _ = s.token.get()
	_, _ = s.ca.get()

	errc := make(chan error, 2)
	serveOn := func(srv *http.Server, ln net.Listener) {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	}
	go serveOn(proxySrv, proxyLn)
	go serveOn(healthSrv, healthLn)
	pending := 2

	var wg sync.WaitGroup
	checkCtx, stopChecks := context.WithCancel(ctx)
	defer stopChecks()
	wg.Go(func() { s.awaitUpstream(checkCtx) })

	var err error
	select {
	case <-ctx.Done():
		s.log.Info("shutting down", "timeout", s.cfg.ShutdownTimeout.String())
	case err = <-errc: // a listener failed
		pending--
		s.log.Error("server failed; shutting down", "error", err)
	}
	s.shuttingDown.Store(true)
	stopChecks()

	// Shutdown closes the listeners at once and waits for in-flight requests. Watches
	// never finish by themselves, so they are cut at the deadline.
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	if e := proxySrv.Shutdown(shutCtx); e != nil {
		s.log.Info("shutdown timeout reached; closing remaining connections")
		_ = proxySrv.Close()
	}
	// The probes stay up while the proxy drains, so the kubelet does not see a dead
	// container before it is one.
	_ = healthSrv.Close()
	for ; pending > 0; pending-- {
		if e := <-errc; err == nil {
			err = e
		}
	}
	wg.Wait()
	s.transport.CloseIdleConnections()
	s.log.Info("stopped")
	return err
}
