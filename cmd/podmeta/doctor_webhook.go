package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"path"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/podmeta/podmeta/certs"
	"github.com/podmeta/podmeta/webhook"
)

// webhookInstallation is podmeta installed as a server behind its
// MutatingWebhookConfiguration: the configuration, the serving certificate it trusts and
// the Service it calls are checked.
type webhookInstallation struct {
	mwc *admissionregistrationv1.MutatingWebhookConfiguration
}

func (w *webhookInstallation) mode() string { return "webhook" }

// reinstallFix restores the shipped configuration.
const reinstallFix = "restore the shipped configuration: helm upgrade podmeta, or kubectl apply -k config/default (config/webhook/manifests.yaml)"

// certExpiryWarning: a serving certificate that expires sooner is a warning.
const certExpiryWarning = 7 * 24 * time.Hour

func (w *webhookInstallation) check(ctx context.Context, d *doctor, t *target, ns *corev1.Namespace) []check {
	if len(w.mwc.Webhooks) == 0 {
		return []check{fail("webhook configuration", reinstallFix, "MutatingWebhookConfiguration %s has no webhooks", w.mwc.Name)}
	}
	out := []check{ok("webhook configuration", "MutatingWebhookConfiguration %s", w.mwc.Name)}
	attr := createAttributes(t.pod)
	for i := range w.mwc.Webhooks {
		wh := &w.mwc.Webhooks[i]
		prefix := ""
		if len(w.mwc.Webhooks) > 1 {
			prefix = wh.Name + " "
		}
		out = append(out,
			rulesCheck(prefix+"rules", wh.Rules, attr, reinstallFix),
			selectorCheck(prefix+"namespace selector", "namespace "+ns.Name, wh.NamespaceSelector, ns.Labels, namespaceFix(ns.Name)),
			selectorCheck(prefix+"object selector", "the pod", wh.ObjectSelector, t.pod.Labels, podFix(t)),
			matchConditionsCheck(prefix+"match conditions", wh.MatchConditions, wh.FailurePolicy, t.pod))
		out = append(out, d.servingChecks(ctx, wh)...)
	}
	return out
}

// servingChecks check what the apiserver needs to call the webhook: its caBundle
// verifies the serving certificate podmeta keeps in its Secret, the certificate is not
// near expiry, and the Service has ready endpoints. That the apiserver reaches podmeta
// is proven by the dry-run, never assumed from the caller's network.
func (d *doctor) servingChecks(ctx context.Context, wh *admissionregistrationv1.MutatingWebhook) []check {
	cc := wh.ClientConfig
	var host, svcNS string
	var out []check
	switch {
	case cc.Service != nil:
		svcNS = cc.Service.Namespace
		host = cc.Service.Name + "." + cc.Service.Namespace + ".svc"
		svc, c := d.endpointsCheck(ctx, cc.Service)
		out = append(out, c)
		if svc != nil {
			d.findPodmetaArgs(ctx, svc)
		}
	case cc.URL != nil:
		u, err := url.Parse(*cc.URL)
		if err != nil {
			return []check{fail("service endpoints", reinstallFix, "clientConfig.url %q: %v", *cc.URL, err)}
		}
		host, svcNS = u.Hostname(), "podmeta-system"
		out = append(out, ok("service endpoints", "clientConfig.url %s: no Service to check (the dry-run shows whether the apiserver reaches it)", u.Host))
	default:
		return []check{fail("service endpoints", reinstallFix, "clientConfig has neither service nor url")}
	}
	secretNS, secretName := svcNS, d.certSecretName()
	if ns, name, found := strings.Cut(d.opts.certSecret, "/"); found {
		secretNS, secretName = ns, name
	}
	where := "Secret " + secretNS + "/" + secretName
	sec, err := d.cs.CoreV1().Secrets(secretNS).Get(ctx, secretName, metav1.GetOptions{})
	if err != nil {
		return append(out, warn("ca bundle", "pass --cert-secret NAMESPACE/NAME (the Secret of --cert-secret, or cert-manager's Certificate's secretName)",
			"cannot read the serving certificate's %s: %v", where, reason(err)))
	}
	return append(out, certChecks(wh.ClientConfig.CABundle, sec.Data[certs.KeyCert], where, host, time.Now())...)
}

// reason is an API error's message without its wrapping.
func reason(err error) string {
	var s apierrors.APIStatus
	if errors.As(err, &s) {
		return s.Status().Message
	}
	return err.Error()
}

// certChecks verify the serving certificate (PEM, leaf first) with the caBundle for host,
// and its expiry, at now.
func certChecks(caBundle, certPEM []byte, where, host string, now time.Time) []check {
	const caFix = "self-managed: podmeta rewrites the caBundle within --cert-check-interval (check its log for \"caBundle\"); cert-manager: check the cainjector and the annotation cert-manager.io/inject-ca-from; external: set caBundle to the CA that signed the certificate"
	var chain []*x509.Certificate
	for rest := certPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil && b.Type == "CERTIFICATE" {
			chain = append(chain, c)
		}
	}
	if len(chain) == 0 {
		return []check{fail("ca bundle", "reissue the certificate (self-managed: empty the Secret and podmeta makes a new one)", "%s has no certificate in tls.crt", where)}
	}
	leaf := chain[0]
	roots := x509.NewCertPool()
	var out []check
	switch {
	case len(caBundle) == 0:
		out = append(out, fail("ca bundle", caFix, "the webhook's caBundle is empty: the apiserver cannot verify podmeta"))
	case !roots.AppendCertsFromPEM(caBundle):
		out = append(out, fail("ca bundle", caFix, "the webhook's caBundle holds no PEM certificate"))
	default:
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		// Verified now, as the apiserver does; a certificate out of its validity is
		// verified within it, so that expiry is its own check.
		at := now
		if now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
			at = leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: host, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		if err != nil {
			out = append(out, fail("ca bundle", caFix, "the webhook's caBundle does not verify the certificate in %s for %s: %v", where, host, err))
		} else {
			out = append(out, ok("ca bundle", "verifies the certificate in %s for %s", where, host))
		}
	}
	const renewFix = "self-managed: podmeta renews it --cert-renew-before its expiry (is podmeta running?); cert-manager: kubectl describe certificate; external: issue a new one"
	switch left := leaf.NotAfter.Sub(now); {
	case left <= 0:
		out = append(out, fail("certificate expiry", renewFix, "the serving certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339)))
	case left < certExpiryWarning:
		out = append(out, warn("certificate expiry", renewFix, "the serving certificate expires in %s, at %s", left.Round(time.Minute), leaf.NotAfter.UTC().Format(time.RFC3339)))
	case now.Before(leaf.NotBefore):
		out = append(out, fail("certificate expiry", renewFix, "the serving certificate is not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339)))
	default:
		out = append(out, ok("certificate expiry", "valid until %s", leaf.NotAfter.UTC().Format(time.RFC3339)))
	}
	return out
}

// endpointsCheck reads the webhook's Service and counts the ready endpoints of its
// EndpointSlices.
func (d *doctor) endpointsCheck(ctx context.Context, ref *admissionregistrationv1.ServiceReference) (*corev1.Service, check) {
	name := ref.Namespace + "/" + ref.Name
	svc, err := d.cs.CoreV1().Services(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fail("service endpoints", reinstallFix, "cannot read Service %s: %v", name, reason(err))
	}
	slices, err := d.cs.DiscoveryV1().EndpointSlices(ref.Namespace).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + ref.Name})
	if err != nil {
		return svc, fail("service endpoints", "", "cannot list the EndpointSlices of Service %s: %v", name, reason(err))
	}
	ready := readyEndpoints(slices.Items)
	if ready == 0 {
		return svc, fail("service endpoints", fmt.Sprintf("kubectl -n %s get pods -l %s; kubectl -n %s logs -l %s (a replica is ready once it serves a certificate the caBundle holds)",
			ref.Namespace, labels.Set(svc.Spec.Selector), ref.Namespace, labels.Set(svc.Spec.Selector)),
			"Service %s has no ready endpoints: no podmeta replica is ready", name)
	}
	return svc, ok("service endpoints", "Service %s has %d ready endpoints", name, ready)
}

// readyEndpoints counts the ready addresses of EndpointSlices (an endpoint with no
// ready condition is ready, as the API documents).
func readyEndpoints(slices []discoveryv1.EndpointSlice) int {
	n := 0
	for _, s := range slices {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				n += len(e.Addresses)
			}
		}
	}
	return n
}

// findPodmetaArgs keeps the arguments of the podmeta Deployment behind svc (its pod
// template matches the Service's selector), for the certificate Secret's name and the
// injection flags.
func (d *doctor) findPodmetaArgs(ctx context.Context, svc *corev1.Service) {
	if len(svc.Spec.Selector) == 0 {
		return
	}
	deps, err := d.cs.AppsV1().Deployments(svc.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	sel := labels.SelectorFromSet(svc.Spec.Selector)
	for _, dep := range deps.Items {
		if !sel.Matches(labels.Set(dep.Spec.Template.Labels)) {
			continue
		}
		secrets := map[string]string{} // volume name: Secret
		for _, v := range dep.Spec.Template.Spec.Volumes {
			if v.Secret != nil {
				secrets[v.Name] = v.Secret.SecretName
			}
		}
		for _, c := range dep.Spec.Template.Spec.Containers {
			args := append(append([]string{}, c.Command...), c.Args...)
			for i, a := range args {
				if a != "webhook" {
					continue
				}
				d.podmetaArgs = args[i+1:]
				d.secretMounts = map[string]string{}
				for _, m := range c.VolumeMounts {
					if s, isSecret := secrets[m.Name]; isSecret {
						d.secretMounts[path.Clean(m.MountPath)] = s
					}
				}
				return
			}
		}
	}
}

// podmetaFlags parses the flags podmeta's Deployment runs with that a FlagSet knows;
// the others are passed over.
func podmetaFlags(args []string, fs *flag.FlagSet) {
	for i := 0; i < len(args); i++ {
		name, _, hasValue := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		f := fs.Lookup(name)
		if f == nil || !strings.HasPrefix(args[i], "-") {
			continue
		}
		one := []string{args[i]}
		if b, isBool := f.Value.(interface{ IsBoolFlag() bool }); !hasValue && (!isBool || !b.IsBoolFlag()) && i+1 < len(args) {
			one = append(one, args[i+1])
			i++
		}
		_ = fs.Parse(one)
	}
}

// certSecretName is the serving certificate's Secret: --cert-secret of doctor, else of
// podmeta's Deployment, else the default. In cert-manager and external modes the chart
// and config/default mount a Secret of the same name.
func (d *doctor) certSecretName() string {
	if d.opts.certSecret != "" {
		_, name, found := strings.Cut(d.opts.certSecret, "/")
		if found {
			return name
		}
		return d.opts.certSecret
	}
	cfg := certs.DefaultConfig()
	fs := flag.NewFlagSet("podmeta", flag.ContinueOnError)
	cfg.AddFlags(fs)
	podmetaFlags(d.podmetaArgs, fs)
	if cfg.EffectiveMode() != certs.ModeSelfManaged {
		// The file modes serve the Secret mounted at --cert-dir.
		if s, found := d.secretMounts[path.Dir(cfg.CertPath())]; found {
			return s
		}
	}
	return cfg.Secret
}

// injectionFlags applies the injection flags of podmeta's Deployment to cfg.
func (d *doctor) injectionFlags(cfg *webhook.Config) {
	fs := flag.NewFlagSet("podmeta", flag.ContinueOnError)
	cfg.AddFlags(fs)
	podmetaFlags(d.podmetaArgs, fs)
}
