package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
)

// clientCAInterval is how often --client-ca-file is checked for a change. A mounted
// Secret or ConfigMap changes by a symlink swap, which a stat-free re-read sees.
const clientCAInterval = 10 * time.Second

// clientCAs is --client-ca-file: the CAs whose client certificates the webhook server
// requires of every caller (the kube-apiserver, configured with an
// AdmissionConfiguration kubeconfig; docs/security.md). It is re-read while the
// server runs; a file that becomes unreadable or holds no certificate keeps the CAs
// last loaded.
type clientCAs struct {
	path     string
	log      logr.Logger
	interval time.Duration

	pem  atomic.Pointer[[]byte]
	pool atomic.Pointer[x509.CertPool]
	// config is the server's tls.Config with the current pool, made at the first
	// handshake after each change.
	config atomic.Pointer[tls.Config]
}

func loadClientCAs(path string, log logr.Logger) (*clientCAs, error) {
	c := &clientCAs{path: path, log: log, interval: clientCAInterval}
	if _, err := c.reload(); err != nil {
		return nil, fmt.Errorf("--client-ca-file: %w", err)
	}
	return c, nil
}

// reload reads the file and reports whether its CAs changed.
func (c *clientCAs) reload() (bool, error) {
	b, err := os.ReadFile(c.path)
	if err != nil {
		return false, err
	}
	if cur := c.pem.Load(); cur != nil && bytes.Equal(*cur, b) {
		return false, nil
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return false, fmt.Errorf("%s holds no PEM certificate", c.path)
	}
	c.pem.Store(&b)
	c.pool.Store(pool)
	return true, nil
}

// Start re-reads the file every interval until ctx ends.
func (c *clientCAs) Start(ctx context.Context) error {
	c.log.Info("client certificates required", "caFile", c.path, "checkInterval", c.interval)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(c.interval):
		}
		switch changed, err := c.reload(); {
		case err != nil:
			c.log.Error(err, "re-read client CA file; keeping the CAs loaded before")
		case changed:
			c.log.Info("client CAs reloaded", "caFile", c.path)
		}
	}
}

func (c *clientCAs) NeedLeaderElection() bool { return false }

// tlsOption makes the server require and verify a client certificate against the
// current CAs. A nil clientCAs (no --client-ca-file) changes nothing.
func (c *clientCAs) tlsOption(cfg *tls.Config) {
	if c == nil {
		return
	}
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	cfg.ClientCAs = c.pool.Load()
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		pool := c.pool.Load()
		if cur := c.config.Load(); cur != nil && cur.ClientCAs == pool {
			return cur, nil
		}
		// A copy of the finished server configuration (every other TLS option applied)
		// with the CAs of now.
		next := cfg.Clone()
		next.GetConfigForClient = nil
		next.ClientCAs = pool
		c.config.Store(next)
		return next, nil
	}
}
