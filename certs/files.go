package certs

import (
	"context"
	"crypto/tls"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
)

// fileSource serves --cert-dir's files (cert-manager and external modes) through
// controller-runtime's certwatcher, which reloads them on change (fsnotify, plus a poll
// every check interval for the symlink swaps of a mounted Secret).
type fileSource struct {
	certPath, keyPath string
	interval          time.Duration
	expiry            prometheus.Gauge
	log               logr.Logger
	watcher           atomic.Pointer[certwatcher.CertWatcher]
}

func newFileSource(cfg Config, expiry prometheus.Gauge, log logr.Logger) *fileSource {
	return &fileSource{certPath: cfg.CertPath(), keyPath: cfg.KeyPath(), interval: cfg.CheckInterval, expiry: expiry, log: log}
}

// Start waits for the files (a Secret not yet issued is not an error, just not ready),
// then watches them until ctx ends.
func (s *fileSource) Start(ctx context.Context) error {
	var logged string
	for {
		w, err := certwatcher.New(s.certPath, s.keyPath)
		if err == nil {
			w = w.WithWatchInterval(s.interval)
			w.RegisterCallback(s.loaded)
			s.watcher.Store(w)
			s.log.Info("serving certificate files loaded", "cert", s.certPath, "key", s.keyPath)
			return w.Start(ctx)
		}
		if err.Error() != logged {
			logged = err.Error()
			s.log.Error(err, "serving certificate files not loadable yet; retrying", "cert", s.certPath, "key", s.keyPath)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.interval):
		}
	}
}

func (s *fileSource) loaded(c tls.Certificate) {
	leaf, err := leafOf(&c)
	if err != nil {
		s.log.Error(err, "parse loaded serving certificate")
		return
	}
	s.expiry.Set(float64(leaf.NotAfter.Unix()))
	s.log.Info("serving certificate", "serial", leaf.SerialNumber.String(), "notAfter", leaf.NotAfter, "dnsNames", leaf.DNSNames)
}

func (s *fileSource) NeedLeaderElection() bool { return false }

func (s *fileSource) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if w := s.watcher.Load(); w != nil {
		if c, _ := w.GetCertificate(hello); c != nil {
			return c, nil
		}
	}
	return nil, ErrNotLoaded
}

func (s *fileSource) Ready(*http.Request) error {
	_, err := s.GetCertificate(nil)
	return err
}
