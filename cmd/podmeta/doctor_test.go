package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/webhook"
)

// The exit status: 0 only for an injected pod with no failed check; a warning does not
// fail it.
func TestDoctorExitCode(t *testing.T) {
	okc, warnc, failc := check{Verdict: verdictOK}, check{Verdict: verdictWarn}, check{Verdict: verdictFail}
	for _, c := range []struct {
		injected bool
		checks   []check
		want     int
	}{
		{true, []check{okc, warnc}, 0},
		{true, []check{okc, failc}, 1},
		{false, []check{okc}, 1},
		{false, nil, 1},
	} {
		if got := exitCode(c.injected, c.checks); got != c.want {
			t.Errorf("exitCode(%v, %v) = %d, want %d", c.injected, c.checks, got, c.want)
		}
	}
}

// shippedWebhook is the webhook of config/webhook/manifests.yaml.
func shippedWebhook(t *testing.T) admissionregistrationv1.MutatingWebhook {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "config", "webhook", "manifests.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := yaml.Unmarshal([]byte(strings.Split(string(raw), "\n---")[0]), &mwc); err != nil {
		t.Fatal(err)
	}
	if len(mwc.Webhooks) != 1 {
		t.Fatalf("%d webhooks", len(mwc.Webhooks))
	}
	return mwc.Webhooks[0]
}

func doctorPod(labels, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "demo", Labels: labels, Annotations: annotations},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	}
}

// The shipped configuration's rules, selectors and matchConditions, evaluated with the
// apiserver's code, give each failure its verdict and fix.
func TestDoctorMatching(t *testing.T) {
	wh := shippedWebhook(t)
	p := doctorPod(nil, nil)
	tg := &target{pod: p}

	if c := rulesCheck("rules", wh.Rules, createAttributes(p).Attributes, ""); c.Verdict != verdictOK {
		t.Errorf("shipped rules: %+v", c)
	}
	updateOnly := []admissionregistrationv1.RuleWithOperations{wh.Rules[0]}
	updateOnly[0].Operations = []admissionregistrationv1.OperationType{admissionregistrationv1.Update}
	if c := rulesCheck("rules", updateOnly, createAttributes(p).Attributes, ""); c.Verdict != verdictFail || !strings.Contains(c.Message, "UPDATE") {
		t.Errorf("UPDATE-only rules: %+v", c)
	}

	if c := selectorCheck("ns", "namespace demo", wh.NamespaceSelector, labelledNamespace("demo", nil).Labels, namespaceFix("demo")); c.Verdict != verdictOK {
		t.Errorf("opted-in namespace: %+v", c)
	}
	c := selectorCheck("ns", "namespace demo", wh.NamespaceSelector, map[string]string{corev1.LabelMetadataName: "demo"}, namespaceFix("demo"))
	if c.Verdict != verdictFail || c.Fix != "kubectl label namespace demo podmeta.io/inject=enabled --overwrite" {
		t.Errorf("unlabelled namespace: %+v", c)
	}
	c = selectorCheck("ns", "namespace kube-system", wh.NamespaceSelector, map[string]string{webhook.LabelInject: "enabled", corev1.LabelMetadataName: "kube-system"}, namespaceFix("kube-system"))
	if c.Verdict != verdictFail || !strings.Contains(c.Fix, "excluded") {
		t.Errorf("kube-system: %+v", c)
	}
	optedOut := doctorPod(map[string]string{webhook.LabelInject: "disabled"}, nil)
	c = selectorCheck("obj", "the pod", wh.ObjectSelector, optedOut.Labels, podFix(&target{pod: optedOut}))
	if c.Verdict != verdictFail || !strings.Contains(c.Fix, "remove the label podmeta.io/inject=disabled") {
		t.Errorf("opted-out label: %+v", c)
	}
	if c := selectorCheck("obj", "the pod", wh.ObjectSelector, p.Labels, podFix(tg)); c.Verdict != verdictOK {
		t.Errorf("plain pod: %+v", c)
	}

	if c := matchConditionsCheck("mc", wh.MatchConditions, wh.FailurePolicy, p); c.Verdict != verdictOK {
		t.Errorf("plain pod: %+v", c)
	}
	c = matchConditionsCheck("mc", wh.MatchConditions, wh.FailurePolicy, doctorPod(nil, map[string]string{webhook.AnnotationInject: " False"}))
	if c.Verdict != verdictFail || !strings.HasPrefix(c.Message, "not-opted-out is false") || c.Fix != conditionFixes["not-opted-out"] {
		t.Errorf("opted-out annotation: %+v", c)
	}
	c = matchConditionsCheck("mc", wh.MatchConditions, wh.FailurePolicy, doctorPod(nil, map[string]string{webhook.AnnotationMirrorPod: "x"}))
	if c.Verdict != verdictFail || !strings.HasPrefix(c.Message, "not-a-mirror-pod is false") {
		t.Errorf("mirror pod: %+v", c)
	}
	// CEL, not a re-implementation: a condition the apiserver cannot compile is an error.
	bad := []admissionregistrationv1.MatchCondition{{Name: "bad", Expression: "object.metadata.nope("}}
	if c := matchConditionsCheck("mc", bad, nil, p); c.Verdict != verdictFail || !strings.Contains(c.Message, "evaluation failed") {
		t.Errorf("bad expression: %+v", c)
	}
}

// certFor issues a certificate for host, valid from notBefore to notAfter, signed by ca
// (self-signed CA when ca is nil). It returns the certificate's PEM and its key.
func certFor(t *testing.T, host string, notBefore, notAfter time.Time, ca *x509.Certificate, caKey *ecdsa.PrivateKey) ([]byte, *x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: host},
		NotBefore: notBefore, NotAfter: notAfter, DNSNames: []string{host},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	parent, signer := tmpl, key
	if ca == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
		tmpl.DNSNames, tmpl.ExtKeyUsage = nil, nil
	} else {
		parent, signer = ca, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), c, key
}

func TestDoctorCertChecks(t *testing.T) {
	now := time.Now()
	const host = "podmeta-webhook.podmeta-system.svc"
	caPEM, ca, caKey := certFor(t, "ca", now.Add(-72*time.Hour), now.Add(365*24*time.Hour), nil, nil)
	otherPEM, _, _ := certFor(t, "other", now.Add(-time.Hour), now.Add(365*24*time.Hour), nil, nil)
	good, _, _ := certFor(t, host, now.Add(-time.Hour), now.Add(90*24*time.Hour), ca, caKey)
	soon, _, _ := certFor(t, host, now.Add(-time.Hour), now.Add(3*24*time.Hour), ca, caKey)
	expired, _, _ := certFor(t, host, now.Add(-48*time.Hour), now.Add(-time.Hour), ca, caKey)
	notYet, _, _ := certFor(t, host, now.Add(time.Hour), now.Add(90*24*time.Hour), ca, caKey)
	for _, c := range []struct {
		name         string
		bundle, cert []byte
		host         string
		ca, expiry   string
	}{
		{"good", caPEM, good, host, verdictOK, verdictOK},
		{"near expiry", caPEM, soon, host, verdictOK, verdictWarn},
		{"expired", caPEM, expired, host, verdictOK, verdictFail},
		{"not yet valid", caPEM, notYet, host, verdictOK, verdictFail},
		{"wrong caBundle", otherPEM, good, host, verdictFail, verdictOK},
		{"empty caBundle", nil, good, host, verdictFail, verdictOK},
		{"wrong host", caPEM, good, "other.podmeta-system.svc", verdictFail, verdictOK},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := certChecks(c.bundle, c.cert, "Secret podmeta-system/podmeta-webhook-tls", c.host, now)
			if len(got) != 2 || got[0].Verdict != c.ca || got[1].Verdict != c.expiry {
				t.Errorf("got %+v, want ca bundle %s, expiry %s", got, c.ca, c.expiry)
			}
			for _, g := range got {
				if g.Verdict != verdictOK && g.Fix == "" {
					t.Errorf("%s: %s without a fix", g.Name, g.Verdict)
				}
			}
		})
	}
	// An empty caBundle is named as such, not as one without a certificate.
	if got := certChecks(nil, good, "Secret x/y", host, now); !strings.Contains(got[0].Message, "caBundle is empty") {
		t.Errorf("empty caBundle: %+v", got[0])
	}
	if got := certChecks(caPEM, []byte("not a certificate"), "Secret x/y", host, now); len(got) != 1 || got[0].Verdict != verdictFail {
		t.Errorf("no certificate: %+v", got)
	}
}

func TestDoctorReadyEndpoints(t *testing.T) {
	yes, no := true, false
	slices := []discoveryv1.EndpointSlice{
		{Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: &no}}}},
		{Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &yes}}, {Addresses: []string{"10.0.0.3"}}}},
	}
	if got := readyEndpoints(slices); got != 2 {
		t.Errorf("ready = %d, want 2", got)
	}
	if got := readyEndpoints(slices[:1]); got != 0 {
		t.Errorf("ready = %d, want 0", got)
	}
}

// A workload's pod is its template's, named by generateName, without an owner; podmeta
// annotations on the workload's own metadata are noticed.
func TestDoctorTargetFromWorkload(t *testing.T) {
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(`
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
  annotations: {podmeta.io/env: all, other: x}
spec:
  schedule: "@daily"
  jobTemplate:
    spec:
      template:
        metadata:
          labels: {app: nightly}
          annotations: {podmeta.io/ambassador: "true"}
        spec:
          restartPolicy: Never
          containers: [{name: job, image: job:1}]
`), &obj); err != nil {
		t.Fatal(err)
	}
	tg, err := targetFromObject(obj)
	if err != nil {
		t.Fatal(err)
	}
	p := tg.pod
	if p.GenerateName != "nightly-" || p.Name != "" || p.Labels["app"] != "nightly" || p.Annotations[webhook.AnnotationAmbassador] != "true" || p.Spec.Containers[0].Name != "job" {
		t.Errorf("pod %+v", p)
	}
	if len(tg.ownMeta) != 1 || tg.ownMeta[0] != webhook.AnnotationEnv {
		t.Errorf("ownMeta %q", tg.ownMeta)
	}
	c := templateChecks(tg)
	if len(c) != 1 || c[0].Verdict != verdictWarn || !strings.Contains(c[0].Fix, "spec.jobTemplate.spec.template.metadata.annotations") {
		t.Errorf("checks %+v", c)
	}
}

// Doctor's own errors exit 2, before any cluster is asked.
func TestDoctorUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"doctor"},
		{"doctor", "a", "b"},
		{"doctor", "-f", "x.yaml", "pod"},
		{"doctor", "-o", "yaml", "pod"},
		{"doctor", "--kubeconfig", "/nonexistent", "pod"},
		{"doctor", "--kubeconfig", "/nonexistent", "widget/x"},
	} {
		if _, stderr, code := podmeta(t, "", args...); code != doctorError || stderr == "" {
			t.Errorf("%q: exit %d, stderr %q; want 2 and a message", args, code, stderr)
		}
	}
}

// The injection flags of podmeta's Deployment are read, in both spellings; others are
// passed over.
func TestDoctorPodmetaFlags(t *testing.T) {
	d := &doctor{podmetaArgs: []string{"--cert-mode=self-managed", "--cert-secret", "mine", "--unknown=1", "--env-prefix=X_", "--ambassador"}}
	if got := d.certSecretName(); got != "mine" {
		t.Errorf("cert secret %q", got)
	}
	cfg := webhook.DefaultConfig()
	d.injectionFlags(&cfg)
	if cfg.EnvPrefix != "X_" {
		t.Errorf("env prefix %q", cfg.EnvPrefix)
	}
	d = &doctor{podmetaArgs: []string{"--cert-mode=cert-manager"}, secretMounts: map[string]string{"/tmp/k8s-webhook-server/serving-certs": "release-tls"}}
	if got := d.certSecretName(); got != "release-tls" {
		t.Errorf("cert-manager mode: cert secret %q", got)
	}
}

// The text checklist: one line a check, its fix under a warn or fail, the result.
func TestDoctorText(t *testing.T) {
	r := &report{Target: "pod/web", Namespace: "demo", Modes: []string{"webhook"}, Exit: 1, Checks: []check{
		ok("rules", "match pod CREATE"),
		fail("namespace selector", "kubectl label namespace demo podmeta.io/inject=enabled --overwrite", "namespace demo does not match podmeta.io/inject in (enabled)"),
	}}
	var b strings.Builder
	r.writeText(&b)
	want := `pod/web in namespace demo (webhook)
[ok  ] rules: match pod CREATE
[fail] namespace selector: namespace demo does not match podmeta.io/inject in (enabled)
       fix: kubectl label namespace demo podmeta.io/inject=enabled --overwrite
result: not injected (exit 1)
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

// Every skip reason the status record documents (docs/design.md) has a hint, and a
// record's skip reasons become warnings with it.
func TestDoctorSkipHints(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "docs", "design.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, found := strings.Cut(string(raw), "| Code | Meaning |")
	if !found {
		t.Fatal("docs/design.md has no table of skip reasons")
	}
	table, _, _ = strings.Cut(table, "\n\n")
	n := 0
	for _, line := range strings.Split(table, "\n") {
		code, ok := strings.CutPrefix(line, "| `")
		if !ok {
			continue
		}
		code, _, _ = strings.Cut(code, "`")
		code, _, _ = strings.Cut(code, " ")
		n++
		if skipHints[code] == "" {
			t.Errorf("skip reason %q has no hint", code)
		}
	}
	if n != len(skipHints) {
		t.Errorf("docs/design.md lists %d skip reasons, doctor has hints for %d", n, len(skipHints))
	}
	got := skippedChecks(webhook.Status{Skipped: []string{"env-kept app POD_IP", "and 3 more"}})
	if len(got) != 2 || got[0].Verdict != verdictWarn || got[0].Fix != skipHints[webhook.SkipEnvKept] || got[0].Message != "env-kept app POD_IP" {
		t.Errorf("checks %+v", got)
	}
}

// The dry-run's diff: what the returned pod has that the sent one had not, by name.
func TestDoctorPodChanges(t *testing.T) {
	before := doctorPod(nil, map[string]string{"mine": "x"})
	before.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "OWN"}}
	after := before.DeepCopy()
	after.Annotations[webhook.AnnotationStatus] = "{}"
	after.Spec.Containers[0].Env = append([]corev1.EnvVar{{Name: "POD_NAME"}}, after.Spec.Containers[0].Env...)
	after.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: webhook.VolumeName}}
	after.Spec.InitContainers = []corev1.Container{{Name: webhook.AmbassadorContainerName}}
	after.Spec.Volumes = []corev1.Volume{{Name: webhook.VolumeName}}
	want := []string{
		"initContainers: +podmeta-ambassador",
		"containers[app].env: +POD_NAME",
		"containers[app].volumeMounts: +podmeta",
		"volumes: +podmeta",
		"annotations: +podmeta.io/status",
	}
	if got := podChanges(before, after); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got %q\nwant %q", got, want)
	}
	if got := podChanges(before, before); got != nil {
		t.Errorf("no change: %q", got)
	}
}
