package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Source serves the webhook's certificate. The manager runs it (Start); the TLS server
// asks it for the certificate of every handshake; /readyz asks Ready.
type Source interface {
	// Start keeps the certificate current until ctx ends.
	Start(ctx context.Context) error
	// NeedLeaderElection is false: every replica serves.
	NeedLeaderElection() bool
	// GetCertificate is tls.Config.GetCertificate.
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Ready is a healthz.Checker: nil once the certificate is served (and, in
	// self-managed mode, trusted by the caBundle).
	Ready(*http.Request) error
}

// ErrNotLoaded is returned before the first certificate is loaded.
var ErrNotLoaded = errors.New("no serving certificate loaded yet")

// MetricExpiry is the gauge of the served certificate's NotAfter.
const MetricExpiry = "podmeta_serving_certificate_expiry_timestamp_seconds"

// NewExpiryGauge creates the expiry gauge and registers it with reg (nil: not
// registered; already registered: the registered one is reused).
func NewExpiryGauge(reg prometheus.Registerer) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: MetricExpiry,
		Help: "NotAfter of the serving certificate podmeta presents, as a Unix timestamp.",
	})
	if reg == nil {
		return g
	}
	if err := reg.Register(g); err != nil {
		if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
			return are.ExistingCollector.(prometheus.Gauge)
		}
	}
	return g
}

// New returns the Source cfg's mode calls for. restCfg is used only in self-managed
// mode.
func New(cfg Config, restCfg *rest.Config, reg prometheus.Registerer, log logr.Logger) (Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	expiry := NewExpiryGauge(reg)
	mode := cfg.EffectiveMode()
	log = log.WithValues("mode", mode)
	if mode != ModeSelfManaged {
		return newFileSource(cfg, expiry, log), nil
	}
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("client for self-managed certificates: %w", err)
	}
	return NewSelfManaged(cfg, cs, expiry, log), nil
}

// leafOf returns the parsed leaf of a tls.Certificate.
func leafOf(c *tls.Certificate) (*x509.Certificate, error) {
	if c.Leaf != nil {
		return c.Leaf, nil
	}
	if len(c.Certificate) == 0 {
		return nil, errors.New("empty certificate chain")
	}
	return x509.ParseCertificate(c.Certificate[0])
}
