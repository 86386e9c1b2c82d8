package certs

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Modes of --cert-mode.
const (
	// ModeSelfManaged: podmeta makes and rotates its CA and serving certificate and
	// writes the caBundle itself.
	ModeSelfManaged = "self-managed"
	// ModeCertManager: cert-manager issues the certificate into a mounted Secret and its
	// cainjector writes the caBundle; podmeta serves the files and reloads them.
	ModeCertManager = "cert-manager"
	// ModeExternal: the operator provides the Secret and the caBundle (GitOps); podmeta
	// serves the files and reloads them.
	ModeExternal = "external"
)

// DefaultCertDir is where the chart mounts the serving Secret in the file modes; it is
// controller-runtime's default too.
const DefaultCertDir = "/tmp/k8s-webhook-server/serving-certs"

// Config chooses where the serving certificate comes from and, for self-managed
// certificates, how they are made and rotated. Durations are flags so tests rotate in
// seconds.
type Config struct {
	// Mode is self-managed, cert-manager or external. Empty: self-managed, unless
	// CertDir was given, in which case external (what a deployment that mounts its own
	// certificate, written before --cert-mode existed, expects).
	Mode string

	// CertDir, CertName and KeyName locate the served files in the file modes.
	CertDir, CertName, KeyName string

	// Namespace holds the Secret; the server sets it from its own --namespace.
	Namespace string
	// Secret is the self-managed CA and serving certificate's Secret.
	Secret string
	// WebhookConfigName is the MutatingWebhookConfiguration whose caBundle is kept
	// current (every webhook in it).
	WebhookConfigName string
	// ValidatingWebhookConfigName is the ValidatingWebhookConfiguration (workload
	// validation) whose caBundle is kept current too; empty: WebhookConfigName +
	// "-workloads". It is optional: while it does not exist there is nothing to keep.
	ValidatingWebhookConfigName string
	// ServiceName is the webhook Service; its DNS names are the certificate's SANs.
	ServiceName string
	// ExtraSANs are more DNS names or IP addresses for the serving certificate.
	ExtraSANs []string
	// ClusterDomain completes the Service's fully qualified name.
	ClusterDomain string

	CAValidity      time.Duration // lifetime of a CA
	CertValidity    time.Duration // lifetime of a serving certificate (never past its CA)
	CARenewBefore   time.Duration // start a CA rotation this long before the CA expires
	CertRenewBefore time.Duration // renew the serving certificate this long before it expires
	// CheckInterval is how often the Secret, the caBundle (self-managed) or the files
	// (file modes) are checked. It is also the overlap unit of a CA rotation.
	CheckInterval time.Duration
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		CertName:          "tls.crt",
		KeyName:           "tls.key",
		Namespace:         "podmeta-system",
		Secret:            "podmeta-webhook-tls",
		WebhookConfigName: "podmeta",
		ServiceName:       "podmeta-webhook",
		ClusterDomain:     "cluster.local",
		CAValidity:        8760 * time.Hour,
		CertValidity:      2160 * time.Hour,
		CARenewBefore:     720 * time.Hour,
		CertRenewBefore:   360 * time.Hour,
		CheckInterval:     time.Minute,
	}
}

// AddFlags binds the fields onto fs; the current values are the flag defaults.
// Namespace is not bound: it is the server's own --namespace.
func (c *Config) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Mode, "cert-mode", c.Mode, "where the serving certificate comes from: self-managed, cert-manager or external (default: self-managed, or external when --cert-dir is set)")
	fs.StringVar(&c.CertDir, "cert-dir", c.CertDir, "cert-manager and external modes: directory with the serving certificate and key, reloaded when they change (default "+DefaultCertDir+")")
	fs.StringVar(&c.CertName, "cert-name", c.CertName, "serving certificate file in --cert-dir")
	fs.StringVar(&c.KeyName, "key-name", c.KeyName, "serving key file in --cert-dir")
	fs.StringVar(&c.Secret, "cert-secret", c.Secret, "self-managed: Secret in --namespace holding the CA and serving certificate")
	fs.StringVar(&c.WebhookConfigName, "webhook-config-name", c.WebhookConfigName, "self-managed: MutatingWebhookConfiguration whose caBundle podmeta keeps current")
	fs.StringVar(&c.ValidatingWebhookConfigName, "validating-webhook-config-name", c.ValidatingWebhookConfigName, "self-managed: ValidatingWebhookConfiguration (workload validation) whose caBundle podmeta keeps current, when it exists (default: --webhook-config-name + \"-workloads\")")
	fs.StringVar(&c.ServiceName, "service-name", c.ServiceName, "self-managed: webhook Service; its DNS names are the certificate's SANs")
	fs.Func("extra-sans", "self-managed: comma list of more DNS names or IPs for the serving certificate", func(s string) error {
		c.ExtraSANs = nil
		for _, v := range strings.Split(s, ",") {
			if v = strings.TrimSpace(v); v != "" {
				c.ExtraSANs = append(c.ExtraSANs, v)
			}
		}
		return nil
	})
	fs.StringVar(&c.ClusterDomain, "cluster-domain", c.ClusterDomain, "self-managed: cluster DNS domain for the Service's fully qualified name")
	fs.DurationVar(&c.CAValidity, "ca-validity", c.CAValidity, "self-managed: lifetime of the CA")
	fs.DurationVar(&c.CertValidity, "cert-validity", c.CertValidity, "self-managed: lifetime of a serving certificate")
	fs.DurationVar(&c.CARenewBefore, "ca-renew-before", c.CARenewBefore, "self-managed: rotate the CA this long before it expires")
	fs.DurationVar(&c.CertRenewBefore, "cert-renew-before", c.CertRenewBefore, "self-managed: renew the serving certificate this long before it expires")
	fs.DurationVar(&c.CheckInterval, "cert-check-interval", c.CheckInterval, "how often the certificate Secret, caBundle or files are checked")
}

// ValidatingName resolves an empty ValidatingWebhookConfigName.
func (c *Config) ValidatingName() string {
	if c.ValidatingWebhookConfigName != "" {
		return c.ValidatingWebhookConfigName
	}
	return c.WebhookConfigName + "-workloads"
}

// EffectiveMode resolves an empty Mode.
func (c *Config) EffectiveMode() string {
	switch {
	case c.Mode != "":
		return c.Mode
	case c.CertDir != "":
		return ModeExternal
	default:
		return ModeSelfManaged
	}
}

// CertPath and KeyPath are the served files in the file modes.
func (c *Config) CertPath() string { return filepath.Join(c.certDir(), c.CertName) }

// KeyPath is the served key file in the file modes.
func (c *Config) KeyPath() string { return filepath.Join(c.certDir(), c.KeyName) }

func (c *Config) certDir() string {
	if c.CertDir == "" {
		return DefaultCertDir
	}
	return c.CertDir
}

// DNSNames are the serving certificate's DNS SANs: the Service's names, then ExtraSANs
// that are not IPs.
func (c *Config) DNSNames() []string {
	svc, ns := c.ServiceName, c.Namespace
	names := []string{svc, svc + "." + ns, svc + "." + ns + ".svc", svc + "." + ns + ".svc." + c.ClusterDomain}
	for _, s := range c.ExtraSANs {
		if net.ParseIP(s) == nil {
			names = append(names, s)
		}
	}
	return names
}

// IPAddresses are the ExtraSANs that are IPs.
func (c *Config) IPAddresses() []net.IP {
	var ips []net.IP
	for _, s := range c.ExtraSANs {
		if ip := net.ParseIP(s); ip != nil {
			ips = append(ips, ip)
		}
	}
	return ips
}

// Validate reports every invalid field at once.
func (c *Config) Validate() error {
	var errs []error
	if c.CheckInterval <= 0 {
		errs = append(errs, fmt.Errorf("--cert-check-interval %s: must be positive", c.CheckInterval))
	}
	switch c.EffectiveMode() {
	case ModeCertManager, ModeExternal:
		if c.CertName == "" || c.KeyName == "" {
			errs = append(errs, errors.New("--cert-name and --key-name must not be empty"))
		}
		return errors.Join(errs...)
	case ModeSelfManaged:
	default:
		return fmt.Errorf("--cert-mode %q: valid values are %s, %s, %s", c.Mode, ModeSelfManaged, ModeCertManager, ModeExternal)
	}
	for flagName, v := range map[string]string{"--namespace": c.Namespace, "--cert-secret": c.Secret, "--webhook-config-name": c.WebhookConfigName, "--validating-webhook-config-name": c.ValidatingName()} {
		for _, msg := range validation.IsDNS1123Subdomain(v) {
			errs = append(errs, fmt.Errorf("%s %q: %s", flagName, v, msg))
		}
	}
	for _, msg := range validation.IsDNS1035Label(c.ServiceName) {
		errs = append(errs, fmt.Errorf("--service-name %q: %s", c.ServiceName, msg))
	}
	for _, s := range c.ExtraSANs {
		if net.ParseIP(s) != nil {
			continue
		}
		for _, msg := range validation.IsDNS1123Subdomain(s) {
			errs = append(errs, fmt.Errorf("--extra-sans %q: not an IP address or DNS name: %s", s, msg))
		}
	}
	// A renewal must complete (including a CA rotation's two-interval overlap) before
	// the old certificate expires.
	for _, d := range []struct {
		validity, before      time.Duration
		validityFlag, befFlag string
	}{
		{c.CAValidity, c.CARenewBefore, "--ca-validity", "--ca-renew-before"},
		{c.CertValidity, c.CertRenewBefore, "--cert-validity", "--cert-renew-before"},
	} {
		if d.before >= d.validity {
			errs = append(errs, fmt.Errorf("%s %s must be shorter than %s %s", d.befFlag, d.before, d.validityFlag, d.validity))
		}
		if c.CheckInterval > 0 && d.before < 3*c.CheckInterval {
			errs = append(errs, fmt.Errorf("%s %s must be at least three --cert-check-interval (%s): a rotation takes up to three checks", d.befFlag, d.before, 3*c.CheckInterval))
		}
	}
	return errors.Join(errs...)
}
