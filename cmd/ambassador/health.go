package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Readiness policy. /readyz succeeds once the API server has answered the readiness
// check (GET --ready-check-path with our token and CA) one time, and from then on for
// as long as token and CA stay readable and no shutdown has begun.
//
// The API server is deliberately not re-checked after that first success. The
// ambassador's readiness is part of the pod's: flipping it on a transient API-server
// blip would pull every opted-in pod out of its Services at once, for an outage the
// pod can do nothing about and its app sees anyway (as 502s). Not re-checking also
// spares the API server one request per pod per interval. A broken token or CA is
// different: it is local to this pod and will not heal by waiting, so it does flip
// readiness.

// healthHandler serves the kubelet probes.
func (s *server) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		// Alive as long as this process serves HTTP.
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.ready(); err != nil {
			writeText(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
			return
		}
		writeText(w, http.StatusOK, "ok")
	})
	return mux
}

// ready returns why the ambassador is not ready, or nil.
func (s *server) ready() error {
	if s.shuttingDown.Load() {
		return fmt.Errorf("shutting down")
	}
	if _, err := s.token.get(); err != nil {
		return err
	}
	if _, err := s.ca.get(); err != nil {
		return err
	}
	if !s.upstreamOK.Load() {
		return fmt.Errorf("API server has not answered %s yet", s.cfg.ReadyCheckPath)
	}
	return nil
}

func writeText(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, msg+"\n")
}

// awaitUpstream checks the API server until it answers once, backing off from a
// quarter second to --ready-check-interval, so a pod whose network comes up a moment
// after the container becomes ready quickly.
func (s *server) awaitUpstream(ctx context.Context) {
	wait := min(250*time.Millisecond, s.cfg.ReadyCheckInterval)
	for {
		err := s.checkUpstream(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			s.upstreamOK.Store(true)
			s.log.Info("API server answered; ready", "path", s.cfg.ReadyCheckPath)
			return
		}
		s.log.Warn("API server check failed; not ready", "path", s.cfg.ReadyCheckPath, "error", err, "retryIn", wait.String())
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, s.cfg.ReadyCheckInterval)
	}
}

// checkUpstream does one readiness check through the same transport as the proxy,
// so it proves token, CA and network together.
func (s *server) checkUpstream(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ReadyCheckTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.upstream.String()+s.cfg.ReadyCheckPath, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "podmeta-ambassador/"+version)
	resp, err := s.auth.RoundTrip(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("GET %s: %s", s.cfg.ReadyCheckPath, resp.Status)
	}
	return nil
}
