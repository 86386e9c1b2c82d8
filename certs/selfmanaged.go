package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// SelfManaged keeps a CA and serving certificate in a Secret and the caBundle of the
// webhook configuration current, and serves the certificate from memory.
type SelfManaged struct {
	cfg    Config
	client kubernetes.Interface
	expiry prometheus.Gauge
	log    logr.Logger
	// Now is the clock; tests replace it.
	Now func() time.Time

	served  atomic.Pointer[served]
	trusted atomic.Bool // the caBundle holds the CA that signed the served certificate
	started bool        // one check succeeded: later permission errors are not fatal

	// validatingOK: the last write (or read) of the ValidatingWebhookConfiguration's
	// caBundle succeeded, so a CA rotation waits for it too; validatingErr is the last
	// error about it, logged once until it changes.
	validatingOK  bool
	validatingErr string
}

type served struct {
	pem  []byte
	cert *tls.Certificate
}

// NewSelfManaged returns a self-managed Source using client.
func NewSelfManaged(cfg Config, client kubernetes.Interface, expiry prometheus.Gauge, log logr.Logger) *SelfManaged {
	return &SelfManaged{cfg: cfg, client: client, expiry: expiry, log: log, Now: time.Now}
}

// maxAttempts bounds the re-reads of one check after conflicting writes.
const maxAttempts = 5

// Start checks at once and then every check interval until ctx ends. It returns an
// error only when podmeta can never work: the Secret is missing and may not be created,
// or RBAC forbids what it needs at start.
func (s *SelfManaged) Start(ctx context.Context) error {
	s.log.Info("self-managed certificates", "secret", s.cfg.Namespace+"/"+s.cfg.Secret, "webhookConfiguration", s.cfg.WebhookConfigName,
		"dnsNames", s.cfg.DNSNames(), "ips", s.cfg.ExtraSANs, "checkInterval", s.cfg.CheckInterval)
	for {
		if err := s.Check(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.cfg.CheckInterval):
		}
	}
}

// errConflict means another replica wrote first: re-read and adopt what it wrote.
var errConflict = errors.New("conflict")

// Check runs one round: read, plan, write the Secret if needed, write the caBundle if
// needed, serve. Transient errors are logged and retried at the next check.
func (s *SelfManaged) Check(ctx context.Context) error {
	for range maxAttempts {
		err := s.check(ctx)
		switch {
		case errors.Is(err, errConflict):
			continue
		case err == nil:
			s.started = true
			return nil
		case apierrors.IsForbidden(err) && !s.started:
			return err
		default:
			s.log.Error(err, "certificate check failed; retrying at the next check")
			return nil
		}
	}
	s.log.Info("certificate check kept conflicting with other replicas; retrying at the next check")
	return nil
}

func (s *SelfManaged) check(ctx context.Context) error {
	// The webhook configuration is read before the Secret: a replica whose Secret is
	// stale then also holds a stale configuration, and its caBundle update conflicts
	// instead of removing a CA another replica just added.
	whc, err := s.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, s.cfg.WebhookConfigName, metav1.GetOptions{})
	if err != nil {
		s.trusted.Store(false)
		return s.explain(err, "read MutatingWebhookConfiguration "+s.cfg.WebhookConfigName)
	}
	vwc := s.readValidating(ctx)
	secrets := s.client.CoreV1().Secrets(s.cfg.Namespace)
	secret, err := secrets.Get(ctx, s.cfg.Secret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		secret = nil
	} else if err != nil {
		return s.explain(err, "read Secret "+s.cfg.Namespace+"/"+s.cfg.Secret)
	}

	var m *Material
	if secret != nil {
		if m, err = ParseSecret(secret.Data, secret.Annotations); err != nil && !errors.Is(err, ErrEmpty) {
			s.log.Error(err, "certificate Secret unusable; replacing it", "secret", s.cfg.Secret)
		}
	}
	now := s.Now()
	// The workload validation's bundle counts once podmeta could write it: a
	// configuration it may not update must not hold up a rotation (its failurePolicy
	// is Ignore: a stale bundle skips validation, it blocks nothing).
	mutating, validating := mutatingClientConfigs(whc), validatingClientConfigs(vwc)
	hasCA := m != nil && bundlesContain(mutating, m.CA) &&
		(len(validating) == 0 || !s.validatingOK || bundlesContain(validating, m.CA))
	p := plan(now, m, hasCA, s.cfg.timing())
	if p.Action != ActionNone {
		next, err := apply(now, p, m, &s.cfg)
		if err != nil {
			return fmt.Errorf("%s: %w", p.Action, err)
		}
		if err := s.writeSecret(ctx, secret, next); err != nil {
			return err
		}
		s.log.Info("certificate Secret updated", "action", p.Action.String(), "reason", p.Reason,
			"caSerial", next.CA.SerialNumber.String(), "caNotAfter", next.CA.NotAfter,
			"certSerial", next.Cert.SerialNumber.String(), "certNotAfter", next.Cert.NotAfter,
			"previousCA", next.PreviousCA != nil)
		m = next
	}

	if err := s.syncBundle(ctx, whc, mutating, m); err != nil {
		return err
	}
	if vwc != nil {
		if err := s.syncValidatingBundle(ctx, vwc, validating, m); errors.Is(err, errConflict) {
			return err
		} else if err != nil {
			s.validatingProblem(err)
		}
	}
	s.serve(m)
	s.trusted.Store(bundlesContain(mutatingClientConfigs(whc), m.Issuer()))
	return nil
}

// writeSecret creates or updates the Secret with the resourceVersion read; a conflict
// means another replica wrote first.
func (s *SelfManaged) writeSecret(ctx context.Context, old *corev1.Secret, m *Material) error {
	secrets := s.client.CoreV1().Secrets(s.cfg.Namespace)
	var err error
	if old == nil {
		sec := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: s.cfg.Secret, Namespace: s.cfg.Namespace, Annotations: m.Annotations()},
			Type:       corev1.SecretTypeOpaque,
			Data:       m.Data(),
		}
		_, err = secrets.Create(ctx, sec, metav1.CreateOptions{})
		if apierrors.IsForbidden(err) {
			// Not retried: RBAC cannot grant create for one name only, so the Secret is
			// meant to exist already.
			return fmt.Errorf("the Secret %s/%s does not exist and podmeta may not create it (RBAC cannot restrict create to one name, so it is pre-created: apply config/rbac/certs_role.yaml, or create an empty Opaque Secret with that name): %w",
				s.cfg.Namespace, s.cfg.Secret, err)
		}
	} else {
		sec := old.DeepCopy()
		sec.Data = m.Data()
		if sec.Annotations == nil {
			sec.Annotations = map[string]string{}
		}
		for k, v := range m.Annotations() {
			sec.Annotations[k] = v
		}
		_, err = secrets.Update(ctx, sec, metav1.UpdateOptions{})
	}
	if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
		s.log.V(1).Info("certificate Secret changed by another replica; adopting it")
		return errConflict
	}
	if err != nil {
		return s.explain(err, "write Secret "+s.cfg.Namespace+"/"+s.cfg.Secret)
	}
	return nil
}

// syncBundle makes every webhook's caBundle exactly m's CAs. whc (whose clientConfigs
// are configs) is updated in place.
func (s *SelfManaged) syncBundle(ctx context.Context, whc *admissionregistrationv1.MutatingWebhookConfiguration, configs []*admissionregistrationv1.WebhookClientConfig, m *Material) error {
	want := m.Bundle()
	if !setBundle(want, configs) {
		return nil
	}
	updated, err := s.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Update(ctx, whc, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		s.log.V(1).Info("webhook configuration changed meanwhile; checking again")
		return errConflict
	}
	if err != nil {
		return s.explain(err, "update caBundle of MutatingWebhookConfiguration "+s.cfg.WebhookConfigName)
	}
	*whc = *updated
	s.log.Info("caBundle updated", "webhookConfiguration", s.cfg.WebhookConfigName, "webhooks", len(whc.Webhooks), "cas", len(parsePEMCerts(want)))
	return nil
}

// readValidating reads the workload validation's configuration: nil when it does not
// exist (it is optional) or cannot be read (logged; the mutating webhook, which pods
// need, is kept current regardless).
func (s *SelfManaged) readValidating(ctx context.Context) *admissionregistrationv1.ValidatingWebhookConfiguration {
	name := s.cfg.ValidatingName()
	vwc, err := s.client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		s.validatingOK = false
		if s.validatingErr != "not found" {
			s.validatingErr = "not found"
			s.log.Info("no ValidatingWebhookConfiguration for workload validation; nothing to keep current until it exists", "validatingWebhookConfiguration", name)
		}
		return nil
	case err != nil:
		s.validatingProblem(s.explain(err, "read ValidatingWebhookConfiguration "+name))
		return nil
	}
	return vwc
}

// validatingProblem logs an error about the workload validation's caBundle, once until
// it changes.
func (s *SelfManaged) validatingProblem(err error) {
	s.validatingOK = false
	if msg := err.Error(); msg != s.validatingErr {
		s.validatingErr = msg
		s.log.Error(err, "caBundle of the workload validation not kept current; pods are not affected (its failurePolicy is Ignore)")
	}
}

// setBundle sets every clientConfig's caBundle to want where it does not hold the same
// certificates already, and says whether it changed any.
func setBundle(want []byte, configs []*admissionregistrationv1.WebhookClientConfig) bool {
	changed := false
	for _, c := range configs {
		if !sameCerts(c.CABundle, want) {
			c.CABundle = want
			changed = true
		}
	}
	return changed
}

// syncValidatingBundle makes every workload webhook's caBundle exactly m's CAs.
func (s *SelfManaged) syncValidatingBundle(ctx context.Context, vwc *admissionregistrationv1.ValidatingWebhookConfiguration, configs []*admissionregistrationv1.WebhookClientConfig, m *Material) error {
	want := m.Bundle()
	if setBundle(want, configs) {
		_, err := s.client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Update(ctx, vwc, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			return errConflict
		}
		if err != nil {
			return s.explain(err, "update caBundle of ValidatingWebhookConfiguration "+vwc.Name)
		}
		s.log.Info("caBundle updated", "validatingWebhookConfiguration", vwc.Name, "webhooks", len(vwc.Webhooks), "cas", len(parsePEMCerts(want)))
	}
	if !s.validatingOK || s.validatingErr != "" {
		s.validatingOK, s.validatingErr = true, ""
	}
	return nil
}

// serve switches to m's serving certificate if it is new.
func (s *SelfManaged) serve(m *Material) {
	if cur := s.served.Load(); cur != nil && string(cur.pem) == string(m.CertPEM) {
		return
	}
	c, err := tls.X509KeyPair(m.CertPEM, m.KeyPEM)
	if err != nil { // ParseSecret checked the pair; unreachable short of a bug
		s.log.Error(err, "load serving certificate")
		return
	}
	c.Leaf = m.Cert
	s.served.Store(&served{pem: m.CertPEM, cert: &c})
	s.expiry.Set(float64(m.Cert.NotAfter.Unix()))
	s.log.Info("serving certificate", "serial", m.Cert.SerialNumber.String(), "notAfter", m.Cert.NotAfter, "issuer", m.Cert.Issuer.CommonName)
}

// explain adds what to do to a permission error.
func (s *SelfManaged) explain(err error, what string) error {
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("%s: forbidden; podmeta's ServiceAccount needs config/rbac/certs_role.yaml (get and update on this one object): %w", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// bundlesContain reports whether there is a clientConfig and every one's caBundle holds ca.
func bundlesContain(configs []*admissionregistrationv1.WebhookClientConfig, ca *x509.Certificate) bool {
	if ca == nil || len(configs) == 0 {
		return false
	}
	for _, c := range configs {
		if !bundleContains(c.CABundle, ca) {
			return false
		}
	}
	return true
}

// mutatingClientConfigs and validatingClientConfigs point at the clientConfig of each
// webhook of a configuration (none for nil): the caBundles podmeta keeps.
func mutatingClientConfigs(whc *admissionregistrationv1.MutatingWebhookConfiguration) []*admissionregistrationv1.WebhookClientConfig {
	var out []*admissionregistrationv1.WebhookClientConfig
	for i := range whc.Webhooks {
		out = append(out, &whc.Webhooks[i].ClientConfig)
	}
	return out
}

func validatingClientConfigs(vwc *admissionregistrationv1.ValidatingWebhookConfiguration) []*admissionregistrationv1.WebhookClientConfig {
	if vwc == nil {
		return nil
	}
	var out []*admissionregistrationv1.WebhookClientConfig
	for i := range vwc.Webhooks {
		out = append(out, &vwc.Webhooks[i].ClientConfig)
	}
	return out
}

func (s *SelfManaged) NeedLeaderElection() bool { return false }

func (s *SelfManaged) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if cur := s.served.Load(); cur != nil {
		return cur.cert, nil
	}
	return nil, ErrNotLoaded
}

func (s *SelfManaged) Ready(*http.Request) error {
	switch {
	case s.served.Load() == nil:
		return ErrNotLoaded
	case !s.trusted.Load():
		return fmt.Errorf("the caBundle of MutatingWebhookConfiguration %s does not hold the CA of the served certificate yet", s.cfg.WebhookConfigName)
	}
	return nil
}
