package certs

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// testConfig rotates in seconds: the serving certificate every 3s, the CA every 10s.
func testConfig() Config {
	c := DefaultConfig()
	c.ExtraSANs = []string{"127.0.0.1", "podmeta.example"}
	c.CAValidity, c.CARenewBefore = 20*time.Second, 10*time.Second
	c.CertValidity, c.CertRenewBefore = 6*time.Second, 3*time.Second
	c.CheckInterval = time.Second
	return c
}

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func mustApply(t *testing.T, now time.Time, a Action, m *Material, c *Config) *Material {
	t.Helper()
	next, err := apply(now, Plan{Action: a}, m, c)
	if err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	return next
}

func TestCertPlan(t *testing.T) {
	c := testConfig()
	tm := c.timing()
	fresh := mustApply(t, t0, ActionBootstrap, nil, &c)
	renewed := mustApply(t, t0.Add(8*time.Second), ActionIssueCert, fresh, &c) // valid until t0+14s
	rotating := mustApply(t, t0.Add(10*time.Second), ActionRotateCA, renewed, &c)
	switched := mustApply(t, t0.Add(11*time.Second), ActionIssueCert, rotating, &c)
	other := c
	other.ServiceName = "renamed"
	for _, tc := range []struct {
		name        string
		now         time.Time
		m           *Material
		bundleHasCA bool
		timing      timing
		want        Action
	}{
		{"empty Secret", t0, nil, false, tm, ActionBootstrap},
		{"fresh", t0.Add(time.Second), fresh, true, tm, ActionNone},
		{"fresh, caBundle not written yet", t0.Add(time.Second), fresh, false, tm, ActionNone},
		{"cert due", t0.Add(3 * time.Second), fresh, true, tm, ActionIssueCert},
		{"cert expired", t0.Add(7 * time.Second), fresh, true, tm, ActionIssueCert},
		{"SANs changed", t0.Add(time.Second), fresh, true, other.timing(), ActionIssueCert},
		{"CA due", t0.Add(10 * time.Second), fresh, true, tm, ActionRotateCA},
		{"CA expired", t0.Add(20 * time.Second), fresh, true, tm, ActionBootstrap},
		{"new CA not in caBundle", t0.Add(12 * time.Second), rotating, false, tm, ActionNone},
		{"new CA in caBundle, not for an interval", t0.Add(10*time.Second + 500*time.Millisecond), rotating, true, tm, ActionNone},
		{"new CA in caBundle for an interval", t0.Add(11 * time.Second), rotating, true, tm, ActionIssueCert},
		{"old cert expired mid-rotation", t0.Add(14 * time.Second), rotating, false, tm, ActionIssueCert},
		{"new cert, replicas may still serve the old", t0.Add(12 * time.Second), switched, true, tm, ActionNone},
		{"new cert served everywhere", t0.Add(13 * time.Second), switched, true, tm, ActionDropPreviousCA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := plan(tc.now, tc.m, tc.bundleHasCA, tc.timing); got.Action != tc.want {
				t.Errorf("plan = %s (%s), want %s", got.Action, got.Reason, tc.want)
			}
		})
	}
}

func TestCertApply(t *testing.T) {
	c := testConfig()
	m := mustApply(t, t0, ActionBootstrap, nil, &c)
	if m.Cert.CheckSignatureFrom(m.CA) != nil || m.PreviousCA != nil {
		t.Fatal("bootstrap: serving certificate not signed by the CA, or a previous CA")
	}
	wantDNS := []string{"podmeta-webhook", "podmeta-webhook.podmeta-system", "podmeta-webhook.podmeta-system.svc", "podmeta-webhook.podmeta-system.svc.cluster.local", "podmeta.example"}
	if fmt.Sprint(m.Cert.DNSNames) != fmt.Sprint(wantDNS) || len(m.Cert.IPAddresses) != 1 || m.Cert.IPAddresses[0].String() != "127.0.0.1" {
		t.Errorf("SANs = %v %v, want %v [127.0.0.1]", m.Cert.DNSNames, m.Cert.IPAddresses, wantDNS)
	}
	if !m.CA.IsCA || m.Cert.IsCA || m.Cert.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Error("wrong basic constraints or key usage")
	}

	renewed := mustApply(t, t0.Add(3*time.Second), ActionIssueCert, m, &c)
	if !renewed.CA.Equal(m.CA) || renewed.Cert.Equal(m.Cert) || string(renewed.Bundle()) != string(m.Bundle()) {
		t.Error("a serving-certificate renewal must keep the CA and the caBundle")
	}

	// The serving certificate never outlives its CA.
	late := mustApply(t, t0.Add(17*time.Second), ActionIssueCert, m, &c)
	if !late.Cert.NotAfter.Equal(m.CA.NotAfter) {
		t.Errorf("NotAfter %s, want the CA's %s", late.Cert.NotAfter, m.CA.NotAfter)
	}

	rotated := mustApply(t, t0.Add(10*time.Second), ActionRotateCA, m, &c)
	if !rotated.PreviousCA.Equal(m.CA) || rotated.CA.Equal(m.CA) || !rotated.Cert.Equal(m.Cert) {
		t.Error("CA rotation must keep the serving certificate and retire the old CA to previous")
	}
	if got := len(parsePEMCerts(rotated.Bundle())); got != 2 {
		t.Errorf("caBundle during a CA rotation holds %d CAs, want 2", got)
	}
	dropped := mustApply(t, t0.Add(14*time.Second), ActionDropPreviousCA, mustApply(t, t0.Add(11*time.Second), ActionIssueCert, rotated, &c), &c)
	if dropped.PreviousCA != nil || len(parsePEMCerts(dropped.Bundle())) != 1 || dropped.Cert.CheckSignatureFrom(rotated.CA) != nil {
		t.Error("after the overlap the caBundle holds only the new CA, which signed the certificate")
	}

	// Round trip through the Secret.
	back, err := ParseSecret(dropped.Data(), dropped.Annotations())
	if err != nil || !back.CertIssuedAt.Equal(dropped.CertIssuedAt) || !back.CARotatedAt.Equal(dropped.CARotatedAt) {
		t.Errorf("round trip: %v", err)
	}
}

func TestCertParseSecretRejects(t *testing.T) {
	c := testConfig()
	m := mustApply(t, t0, ActionBootstrap, nil, &c)
	other := mustApply(t, t0, ActionBootstrap, nil, &c)
	for name, mutate := range map[string]func(d map[string][]byte){
		"garbage cert":         func(d map[string][]byte) { d[KeyCert] = []byte("garbage") },
		"key of another cert":  func(d map[string][]byte) { d[KeyKey] = other.KeyPEM },
		"CA key of another CA": func(d map[string][]byte) { d[KeyCAKey] = other.CAKeyPEM },
		"cert of another CA":   func(d map[string][]byte) { d[KeyCert], d[KeyKey] = other.CertPEM, other.KeyPEM },
	} {
		t.Run(name, func(t *testing.T) {
			d := m.Data()
			mutate(d)
			if _, err := ParseSecret(d, nil); err == nil {
				t.Error("accepted")
			}
		})
	}
	if _, err := ParseSecret(map[string][]byte{}, nil); !errors.Is(err, ErrEmpty) {
		t.Errorf("empty Secret: %v, want ErrEmpty", err)
	}
}

func TestCertConfigValidate(t *testing.T) {
	ok := testConfig()
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(c *Config){
		"mode":               func(c *Config) { c.Mode = "magic" },
		"renew >= validity":  func(c *Config) { c.CertRenewBefore = c.CertValidity },
		"renew < 3 checks":   func(c *Config) { c.CARenewBefore = 2 * time.Second },
		"bad SAN":            func(c *Config) { c.ExtraSANs = []string{"not a name"} },
		"bad service name":   func(c *Config) { c.ServiceName = "Podmeta.Webhook" },
		"no check interval":  func(c *Config) { c.CheckInterval = 0 },
		"file mode, no name": func(c *Config) { c.Mode, c.CertName = ModeExternal, "" },
	} {
		t.Run(name, func(t *testing.T) {
			c := testConfig()
			mutate(&c)
			if c.Validate() == nil {
				t.Error("accepted")
			}
		})
	}
	c := DefaultConfig()
	if c.EffectiveMode() != ModeSelfManaged {
		t.Error("default mode is not self-managed")
	}
	c.CertDir = "/certs"
	if c.EffectiveMode() != ModeExternal {
		t.Error("--cert-dir without --cert-mode is not external")
	}
}

// TestCertSelfManagedRotation drives SelfManaged on a fake clock and a fake clientset
// through bootstraps, renewals and CA rotations, and checks the invariant that matters
// to the apiserver after every check: the served certificate's CA is in every caBundle.
func TestCertSelfManagedRotation(t *testing.T) {
	c := testConfig()
	webhooks := []admissionregistrationv1.MutatingWebhook{{Name: "a.podmeta.io"}, {Name: "b.podmeta.io", ClientConfig: admissionregistrationv1.WebhookClientConfig{CABundle: []byte("garbage")}}}
	cs := fake.NewClientset(
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: c.Secret, Namespace: c.Namespace}},
		&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: c.WebhookConfigName}, Webhooks: webhooks},
		&admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: c.ValidatingName()}, Webhooks: []admissionregistrationv1.ValidatingWebhook{{Name: "workloads.podmeta.io"}}},
	)
	s := NewSelfManaged(c, cs, NewExpiryGauge(nil), logr.Discard())
	now := t0
	s.Now = func() time.Time { return now }
	ctx := context.Background()
	certs, cas := map[string]bool{}, map[string]bool{}
	maxCAs := 0
	for step := range 60 { // 60 checks, one a second
		if err := s.Check(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.Ready(nil); err != nil {
			t.Fatalf("step %d: not ready: %v", step, err)
		}
		cert, _ := s.GetCertificate(nil)
		whc, _ := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, c.WebhookConfigName, metav1.GetOptions{})
		vwc, _ := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, c.ValidatingName(), metav1.GetOptions{})
		bundles := map[string][]byte{}
		for _, wh := range whc.Webhooks {
			bundles[wh.Name] = wh.ClientConfig.CABundle
		}
		for _, wh := range vwc.Webhooks { // the workload validation's, kept current too
			bundles[wh.Name] = wh.ClientConfig.CABundle
		}
		if len(bundles) != 3 {
			t.Fatalf("step %d: %d webhooks, want 3", step, len(bundles))
		}
		for name, bundle := range bundles {
			maxCAs = max(maxCAs, len(parsePEMCerts(bundle)))
			p := x509.NewCertPool()
			if !p.AppendCertsFromPEM(bundle) {
				t.Fatalf("step %d: webhook %s has no CA", step, name)
			}
			if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: p, CurrentTime: now, DNSName: "podmeta-webhook.podmeta-system.svc"}); err != nil {
				t.Fatalf("step %d: served certificate does not verify against %s's caBundle: %v", step, name, err)
			}
		}
		certs[cert.Leaf.SerialNumber.String()] = true
		cas[string(cert.Leaf.AuthorityKeyId)] = true
		now = now.Add(time.Second)
	}
	if len(certs) < 10 || len(cas) < 3 || maxCAs != 2 {
		t.Errorf("%d serving certificates from %d CAs, at most %d CAs in a caBundle; want >= 10, >= 3 and 2", len(certs), len(cas), maxCAs)
	}
}

// Finding 9 of security issue 16: the overlap of a CA rotation was timed from the
// Secret's annotations, so a Secret that lost them mid-rotation switched to the new CA
// and dropped the previous one at the next check, skipping the documented overlap.
// The times now come from the certificates. Here the annotations are deleted after
// every check of a rotation, and the previous CA is still kept for the full overlap:
// the new CA is served only after the caBundle held it for a check interval, and the
// previous CA leaves the caBundle only two intervals after that.
func TestCertOverlapWithoutAnnotations(t *testing.T) {
	c := testConfig()
	cs := fake.NewClientset(
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: c.Secret, Namespace: c.Namespace}},
		&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: c.WebhookConfigName}, Webhooks: []admissionregistrationv1.MutatingWebhook{{Name: "a.podmeta.io"}}},
	)
	s := NewSelfManaged(c, cs, NewExpiryGauge(nil), logr.Discard())
	now := t0
	s.Now = func() time.Time { return now }
	ctx := context.Background()
	secrets := cs.CoreV1().Secrets(c.Namespace)
	read := func() *corev1.Secret {
		sec, err := secrets.Get(ctx, c.Secret, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return sec
	}
	bundleCAs := func() int {
		whc, _ := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, c.WebhookConfigName, metav1.GetOptions{})
		return len(parsePEMCerts(whc.Webhooks[0].ClientConfig.CABundle))
	}
	var rotatedAt, switchedAt, droppedAt time.Time
	var newCA []byte
	// Checks every 100 ms (the interval is 1 s) from bootstrap through one CA rotation.
	for ; now.Before(t0.Add(16 * time.Second)); now = now.Add(100 * time.Millisecond) {
		if err := s.Check(ctx); err != nil {
			t.Fatal(err)
		}
		sec := read()
		hasPrevious := len(sec.Data[KeyPreviousCACert]) > 0
		switch {
		case rotatedAt.IsZero() && hasPrevious:
			rotatedAt, newCA = now, sec.Data[KeyCACert]
		case !rotatedAt.IsZero() && switchedAt.IsZero():
			m, err := ParseSecret(sec.Data, nil)
			if err != nil {
				t.Fatal(err)
			}
			if m.Cert.CheckSignatureFrom(m.CA) == nil {
				switchedAt = now
			}
		case !switchedAt.IsZero() && droppedAt.IsZero() && !hasPrevious:
			droppedAt = now
			if n := bundleCAs(); n != 1 {
				t.Errorf("caBundle holds %d CAs after the drop", n)
			}
		}
		if !rotatedAt.IsZero() && droppedAt.IsZero() && bundleCAs() != 2 {
			t.Fatalf("%s after the rotation began: the caBundle lost a CA before the overlap ended", now.Sub(rotatedAt))
		}
		if len(sec.Annotations) > 0 { // a user, or a tool, removes them
			sec.Annotations = nil
			if _, err := secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("rotation began %s after bootstrap; new CA served %s later; previous CA dropped %s after that",
		rotatedAt.Sub(t0), switchedAt.Sub(rotatedAt), droppedAt.Sub(switchedAt))
	switch {
	case rotatedAt.IsZero() || switchedAt.IsZero() || droppedAt.IsZero():
		t.Fatalf("rotation incomplete: began %v, switched %v, dropped %v", rotatedAt, switchedAt, droppedAt)
	case switchedAt.Sub(rotatedAt) < c.CheckInterval:
		t.Errorf("the new CA was served %s after it entered the caBundle, want at least one check interval (%s)", switchedAt.Sub(rotatedAt), c.CheckInterval)
	case droppedAt.Sub(switchedAt) < 2*c.CheckInterval:
		t.Errorf("the previous CA was dropped %s after the switch, want at least two check intervals (%s)", droppedAt.Sub(switchedAt), 2*c.CheckInterval)
	}
	if string(read().Data[KeyCACert]) != string(newCA) {
		t.Error("the CA changed again")
	}
}

// The workload validation's configuration is optional, and one podmeta may not update
// must not stop the mutating webhook's caBundle (which pods need) from being kept: a
// missing one is no error, and a forbidden update is logged while the rotation goes on.
func TestCertValidatingConfigOptional(t *testing.T) {
	c := testConfig()
	for _, tc := range []struct {
		name      string
		objects   bool // the ValidatingWebhookConfiguration exists
		forbidden bool // updating it is forbidden
	}{{"missing", false, false}, {"forbidden", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			objs := []runtime.Object{
				&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: c.Secret, Namespace: c.Namespace}},
				&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: c.WebhookConfigName}, Webhooks: []admissionregistrationv1.MutatingWebhook{{Name: "a.podmeta.io"}}},
			}
			if tc.objects {
				objs = append(objs, &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: c.ValidatingName()}, Webhooks: []admissionregistrationv1.ValidatingWebhook{{Name: "workloads.podmeta.io"}}})
			}
			cs := fake.NewClientset(objs...)
			if tc.forbidden {
				cs.PrependReactor("update", "validatingwebhookconfigurations", func(k8stesting.Action) (bool, runtime.Object, error) {
					return true, nil, apierrors.NewForbidden(admissionregistrationv1.Resource("validatingwebhookconfigurations"), c.ValidatingName(), errors.New("RBAC"))
				})
			}
			s := NewSelfManaged(c, cs, NewExpiryGauge(nil), logr.Discard())
			now := t0
			s.Now = func() time.Time { return now }
			serials := map[string]bool{}
			var switched time.Duration // when a certificate of a second CA was first served
			for ; now.Before(t0.Add(25 * time.Second)); now = now.Add(time.Second) {
				if err := s.Check(context.Background()); err != nil {
					t.Fatal(err)
				}
				if err := s.Ready(nil); err != nil {
					t.Fatalf("%s: not ready: %v", now.Sub(t0), err)
				}
				cert, _ := s.GetCertificate(nil)
				serials[string(cert.Leaf.AuthorityKeyId)] = true
				if len(serials) == 2 && switched == 0 {
					switched = now.Sub(t0)
				}
			}
			// The CA rotation begins at 10 s (CA validity 20 s, renewed 10 s before) and the
			// new CA is served once the mutating caBundle held it for a check interval: not
			// held up until the old serving certificate expires (15 s).
			if len(serials) < 2 || switched > 13*time.Second {
				t.Errorf("served certificates of %d CAs in 25 s, the second from %s; want a CA rotation served by 13 s", len(serials), switched)
			}
		})
	}
}

// A workload validation configuration podmeta may write counts like the mutating one:
// while its caBundle lacks the new CA (here, every update of it is acknowledged but
// lost), the new CA is not served, since the apiserver would reject podmeta's
// certificate on /validate-workloads.
func TestCertValidatingConfigHoldsRotation(t *testing.T) {
	c := testConfig()
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: c.ValidatingName()}, Webhooks: []admissionregistrationv1.ValidatingWebhook{{Name: "workloads.podmeta.io"}}}
	cs := fake.NewClientset(
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: c.Secret, Namespace: c.Namespace}},
		&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: c.WebhookConfigName}, Webhooks: []admissionregistrationv1.MutatingWebhook{{Name: "a.podmeta.io"}}},
		vwc,
	)
	first := true
	cs.PrependReactor("update", "validatingwebhookconfigurations", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if first { // the bootstrap CA gets in; nothing after it does
			first = false
			return false, nil, nil
		}
		return true, a.(k8stesting.UpdateAction).GetObject(), nil
	})
	s := NewSelfManaged(c, cs, NewExpiryGauge(nil), logr.Discard())
	now := t0
	s.Now = func() time.Time { return now }
	cas := map[string]bool{}
	for ; now.Before(t0.Add(14 * time.Second)); now = now.Add(time.Second) {
		if err := s.Check(context.Background()); err != nil {
			t.Fatal(err)
		}
		cert, _ := s.GetCertificate(nil)
		cas[string(cert.Leaf.AuthorityKeyId)] = true
	}
	// TestCertValidatingConfigOptional serves the second CA by 13 s when the update
	// persists (or is forbidden); here it must not be served at all.
	if len(cas) != 1 {
		t.Errorf("served certificates of %d CAs while the workload caBundle lacked the new one; want 1", len(cas))
	}
}
