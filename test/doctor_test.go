package test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/webhook"
)

// podmeta doctor against the real apiserver and the real podmeta behind the shipped
// webhook configuration: each failed check with its verdict and exit status, and the
// happy path, in webhook and in policy mode.

// doctorReport is podmeta doctor -o json.
type doctorReport struct {
	Target    string   `json:"target"`
	Namespace string   `json:"namespace"`
	Modes     []string `json:"modes"`
	Injected  bool     `json:"injected"`
	Checks    []struct {
		Name, Verdict, Message, Fix string
	} `json:"checks"`
	Record   *webhook.Status `json:"record"`
	Changes  []string        `json:"changes"`
	Warnings []string        `json:"warnings"`
	Exit     int             `json:"exit"`
}

// verdict is the verdict of the named check ("" when there is none), and its fix.
func (r *doctorReport) verdict(name string) (string, string) {
	for _, c := range r.Checks {
		if c.Name == name {
			return c.Verdict, c.Fix
		}
	}
	return "", ""
}

var doctorKubeconfig string

// doctorSecret is the serving certificate's Secret doctor reads in these tests (podmeta
// serves envtest's certificate from files here, as in external mode): its own
// namespace, so that the certificate tests' Secret in podmeta-system is not touched.
const doctorSecret = "doctor-certs/serving-tls"

// setUpDoctor writes an admin kubeconfig and the Secret with the certificate podmeta
// serves, once.
func setUpDoctor(t *testing.T) {
	t.Helper()
	if doctorKubeconfig != "" {
		return
	}
	_, path, err := cp.UserConfig("doctor-admin", "system:masters")
	if err != nil {
		t.Fatal(err)
	}
	ns, name, _ := strings.Cut(doctorSecret, "/")
	if err := cp.EnsureNamespace(t.Context(), ns, map[string]string{}, nil); err != nil {
		t.Fatal(err)
	}
	crt, err := os.ReadFile(filepath.Join(cp.Env.WebhookInstallOptions.LocalServingCertDir, "tls.crt"))
	if err != nil {
		t.Fatal(err)
	}
	setSecret(t, ns, name, crt)
	doctorKubeconfig = path
}

// setSecret creates or updates the Secret (in a test or its cleanup).
func setSecret(t *testing.T, ns, name string, crt []byte) {
	t.Helper()
	ctx := context.Background()
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Data: map[string][]byte{"tls.crt": crt}}
	secrets := cp.Clientset.CoreV1().Secrets(ns)
	_, err := secrets.Create(ctx, sec, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		_, err = secrets.Update(ctx, sec, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Error(err)
	}
}

// doctor runs podmeta doctor -o json --cert-secret doctorSecret with args and returns
// its report and exit status.
func doctor(t *testing.T, stdin string, args ...string) (*doctorReport, int) {
	t.Helper()
	return doctorWith(t, stdin, append([]string{"--cert-secret", doctorSecret}, args...)...)
}

// doctorWith runs podmeta doctor -o json with args only.
func doctorWith(t *testing.T, stdin string, args ...string) (*doctorReport, int) {
	t.Helper()
	setUpDoctor(t)
	cmd := exec.CommandContext(t.Context(), binary, append([]string{"doctor", "-o", "json", "--kubeconfig", doctorKubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var r doctorReport
	if code != 2 {
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("exit %d, output %q: %v\nstderr: %s", code, out.String(), err, errOut.String())
		}
		if r.Exit != code {
			t.Errorf("report says exit %d, process exited %d", r.Exit, code)
		}
	}
	return &r, code
}

// doctorUntil runs doctor until cond holds for its report (the apiserver acts on a
// changed webhook configuration after a moment) and returns the last report.
func doctorUntil(t *testing.T, cond func(*doctorReport, int) bool, stdin string, args ...string) (*doctorReport, int) {
	t.Helper()
	var r *doctorReport
	var code int
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if r, code = doctor(t, stdin, args...); cond(r, code) {
			break
		}
	}
	return r, code
}

func podManifest(t *testing.T, p *corev1.Pod) string {
	t.Helper()
	p = p.DeepCopy()
	p.APIVersion, p.Kind = "v1", "Pod"
	b, err := yaml.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// wantVerdicts fails the test unless each named check has its verdict.
func wantVerdicts(t *testing.T, r *doctorReport, want map[string]string) {
	t.Helper()
	for name, v := range want {
		if got, _ := r.verdict(name); got != v {
			t.Errorf("check %q: verdict %q, want %q; report %+v", name, got, v, r.Checks)
		}
	}
}

// The happy path: a manifest, an existing pod and a Deployment in an opted-in namespace
// are injected; every check passes; exit 0.
func TestDoctorInjected(t *testing.T) {
	ns := namespace(t, nil, map[string]string{webhook.AnnotationEnv: "POD_NAME,POD_IP"})
	p := pod("web", nil, corev1.Container{Name: "app", Image: "app:1", Env: []corev1.EnvVar{{Name: "POD_IP", Value: "mine"}}})
	r, code := doctor(t, podManifest(t, p), "-n", ns, "-f", "-")
	if code != 0 || !r.Injected || r.Record == nil || len(r.Record.Env["app"]) != 1 {
		t.Fatalf("manifest: exit %d, %+v", code, r)
	}
	for _, c := range r.Checks {
		if c.Verdict == "fail" {
			t.Errorf("failed check %+v", c)
		}
	}
	// envtest's serving certificate is valid for 7 days: "certificate expiry" warns.
	wantVerdicts(t, r, map[string]string{"installation": "ok", "rules": "ok", "namespace selector": "ok", "object selector": "ok",
		"match conditions": "ok", "ca bundle": "ok", "certificate expiry": "warn", "service endpoints": "ok", "dry-run": "ok"})
	if want := webhook.SkipEnvKept + " app POD_IP"; len(r.Record.Skipped) != 1 || r.Record.Skipped[0] != want {
		t.Errorf("skipped %q, want %q", r.Record.Skipped, want)
	}
	if !strings.Contains(strings.Join(r.Warnings, "\n"), `container "app" defines env POD_IP`) {
		t.Errorf("the dry-run's warnings %q lack podmeta's", r.Warnings)
	}
	if v, fix := r.verdict("skipped"); v != "warn" || !strings.Contains(fix, "own value wins") {
		t.Errorf("skipped: %s, fix %q", v, fix)
	}
	// The changes are the whole admission chain's: the ServiceAccount plugin's token
	// volume, podmeta's env, volume and record.
	if got := strings.Join(r.Changes, "\n"); !strings.Contains(got, "containers[app].env: +POD_NAME\n") || !regexp.MustCompile(`(?m)^volumes: .*\+kube-api-access-.*\+podmeta$`).MatchString(got) {
		t.Errorf("changes %q", r.Changes)
	}
	if _, err := cp.Clientset.CoreV1().Pods(ns).Get(t.Context(), "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the dry-run created the pod: %v", err)
	}

	create(t, ns, p)
	r, code = doctor(t, "", "web", "-n", ns) // flags after the object, as kubectl takes them
	if code != 0 || !r.Injected || r.Target != "pod/web" {
		t.Fatalf("existing pod: exit %d, %+v", code, r)
	}
	wantVerdicts(t, r, map[string]string{"record": "ok", "record matches spec": "ok", "skipped": "warn", "dry-run": ""})
	// The manifest of a pod that exists is dry-run under a generated name.
	r, code = doctor(t, podManifest(t, p), "-n", ns, "-f", "-")
	if code != 0 || !r.Injected {
		t.Errorf("manifest of an existing pod: exit %d, %+v", code, r)
	}

	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Annotations: map[string]string{webhook.AnnotationAmbassador: "true"}},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "api"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "api", Image: "api:1"}}},
			},
		},
	}
	if _, err := cp.Clientset.AppsV1().Deployments(ns).Create(t.Context(), dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r, code = doctor(t, "", "-n", ns, "deploy/api")
	if code != 0 || !r.Injected || r.Record.Ambassador != "" {
		t.Fatalf("deployment: exit %d, %+v", code, r)
	}
	if v, fix := r.verdict("workload annotations"); v != "warn" || !strings.Contains(fix, "spec.template.metadata.annotations") {
		t.Errorf("annotations on the Deployment's metadata: %s, fix %q", v, fix)
	}
}

// No namespace label: the namespace selector fails with the label to add; exit 1.
func TestDoctorNamespaceNotLabelled(t *testing.T) {
	ns := namespace(t, map[string]string{}, nil)
	r, code := doctor(t, podManifest(t, pod("web", nil)), "-n", ns, "-f", "-")
	if code != 1 || r.Injected {
		t.Fatalf("exit %d, %+v", code, r)
	}
	wantVerdicts(t, r, map[string]string{"namespace selector": "fail", "dry-run": "fail", "rules": "ok"})
	if _, fix := r.verdict("namespace selector"); fix != "kubectl label namespace "+ns+" podmeta.io/inject=enabled --overwrite" {
		t.Errorf("fix %q", fix)
	}
	// The kubeconfig of $KUBECONFIG, and the text checklist.
	cmd := exec.CommandContext(t.Context(), binary, "doctor", "--cert-secret", doctorSecret, "-n", ns, "-f", "-")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+doctorKubeconfig)
	cmd.Stdin = strings.NewReader(podManifest(t, pod("web", nil)))
	out, err := cmd.Output()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 ||
		!strings.Contains(string(out), "[fail] namespace selector: namespace "+ns+" does not match podmeta.io/inject in (enabled)\n       fix: kubectl label namespace "+ns) {
		t.Errorf("with $KUBECONFIG: %v\n%s", err, out)
	}
}

// An opted-out pod, by label (the objectSelector) or annotation (a matchCondition,
// evaluated with the apiserver's CEL): exit 1, each with its fix.
func TestDoctorOptedOut(t *testing.T) {
	ns := namespace(t, nil, nil)
	byLabel := pod("by-label", nil)
	byLabel.Labels = map[string]string{webhook.LabelInject: "disabled"}
	r, code := doctor(t, podManifest(t, byLabel), "-n", ns, "-f", "-")
	wantVerdicts(t, r, map[string]string{"object selector": "fail", "match conditions": "ok", "dry-run": "fail"})
	if _, fix := r.verdict("object selector"); code != 1 || !strings.Contains(fix, "remove the label podmeta.io/inject=disabled") {
		t.Errorf("label: exit %d, fix %q", code, fix)
	}
	r, code = doctor(t, podManifest(t, pod("by-annotation", map[string]string{webhook.AnnotationInject: "false"})), "-n", ns, "-f", "-")
	wantVerdicts(t, r, map[string]string{"object selector": "ok", "match conditions": "fail", "dry-run": "fail"})
	if _, fix := r.verdict("match conditions"); code != 1 || !strings.Contains(fix, `remove the annotation podmeta.io/inject: "false"`) {
		t.Errorf("annotation: exit %d, fix %q", code, fix)
	}
	// An existing pod that was never injected.
	create(t, ns, pod("by-annotation", map[string]string{webhook.AnnotationInject: "false"}))
	r, code = doctor(t, "", "-n", ns, "pod/by-annotation")
	wantVerdicts(t, r, map[string]string{"match conditions": "fail", "record": "fail"})
	if code != 1 {
		t.Errorf("existing opted-out pod: exit %d", code)
	}
}

// editWebhook changes podmeta's webhook configuration for one test and restores it
// after, waiting until the apiserver injects again.
func editWebhook(t *testing.T, edit func(*admissionregistrationv1.MutatingWebhook)) {
	t.Helper()
	api := cp.Clientset.AdmissionregistrationV1().MutatingWebhookConfigurations()
	mwc, err := api.Get(t.Context(), "podmeta", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	saved := mwc.DeepCopy().Webhooks
	edit(&mwc.Webhooks[0])
	if _, err := api.Update(t.Context(), mwc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restoreWebhook(t, saved) })
}

// restoreWebhook puts the webhooks back (creating the configuration when a test removed
// it) and waits until a pod is injected again.
func restoreWebhook(t *testing.T, webhooks []admissionregistrationv1.MutatingWebhook) {
	ctx := context.Background()
	api := cp.Clientset.AdmissionregistrationV1().MutatingWebhookConfigurations()
	mwc, err := api.Get(ctx, "podmeta", metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = api.Create(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "podmeta"}, Webhooks: webhooks}, metav1.CreateOptions{})
	case err == nil:
		mwc.Webhooks = webhooks
		_, err = api.Update(ctx, mwc, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Errorf("restore the webhook configuration: %v", err)
		return
	}
	nsCounter++
	ns := "it-" + strconv.Itoa(nsCounter) + "-doctor-restored"
	if err := cp.EnsureNamespace(ctx, ns, map[string]string{webhook.LabelInject: "enabled"}, nil); err != nil {
		t.Error(err)
		return
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		got, err := cp.Clientset.CoreV1().Pods(ns).Create(ctx, pod("probe", nil), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil && injected(got) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("podmeta does not inject after the configuration was restored: %v", err)
			return
		}
	}
}

// A webhook configuration edited by hand so that pod CREATEs no longer match: the rules
// check fails and the dry-run shows the pod is not injected.
func TestDoctorEditedRules(t *testing.T) {
	ns := namespace(t, nil, nil)
	editWebhook(t, func(wh *admissionregistrationv1.MutatingWebhook) {
		wh.Rules[0].Operations = []admissionregistrationv1.OperationType{admissionregistrationv1.Update}
	})
	r, code := doctorUntil(t, func(r *doctorReport, _ int) bool { return !r.Injected }, podManifest(t, pod("web", nil)), "-n", ns, "-f", "-")
	wantVerdicts(t, r, map[string]string{"rules": "fail", "namespace selector": "ok", "dry-run": "fail"})
	if v, fix := r.verdict("rules"); code != 1 || v != "fail" || !strings.Contains(fix, "config/webhook/manifests.yaml") {
		t.Errorf("exit %d, fix %q", code, fix)
	}
}

// newCA makes a CA, and certificates it signs.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "doctor test CA"},
		NotBefore: time.Now().Add(-72 * time.Hour), NotAfter: time.Now().Add(time.Hour * 24 * 365),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{cert: c, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca *testCA) issue(t *testing.T, notBefore, notAfter time.Time) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: notBefore, NotAfter: notAfter, IPAddresses: []net.IP{net.ParseIP(cp.Env.WebhookInstallOptions.LocalServingHost)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// A caBundle that does not verify the serving certificate, and an expired certificate:
// each fails its check, and the apiserver, unable to call podmeta, admits the pod
// uninjected (failurePolicy: Ignore).
func TestDoctorCertificate(t *testing.T) {
	ns := namespace(t, nil, nil)
	setUpDoctor(t)
	ca := newTestCA(t)
	editWebhook(t, func(wh *admissionregistrationv1.MutatingWebhook) { wh.ClientConfig.CABundle = ca.pem })
	manifest := podManifest(t, pod("web", nil))

	t.Run("wrong caBundle", func(t *testing.T) {
		r, code := doctorUntil(t, func(r *doctorReport, _ int) bool { return !r.Injected }, manifest, "-n", ns, "-f", "-")
		wantVerdicts(t, r, map[string]string{"ca bundle": "fail", "certificate expiry": "warn", "dry-run": "fail"})
		if code != 1 {
			t.Errorf("exit %d", code)
		}
	})
	t.Run("expired certificate", func(t *testing.T) {
		secNS, secName, _ := strings.Cut(doctorSecret, "/")
		setSecret(t, secNS, secName, ca.issue(t, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour)))
		t.Cleanup(func() {
			crt, _ := os.ReadFile(filepath.Join(cp.Env.WebhookInstallOptions.LocalServingCertDir, "tls.crt"))
			setSecret(t, secNS, secName, crt)
		})
		r, code := doctor(t, manifest, "-n", ns, "-f", "-")
		wantVerdicts(t, r, map[string]string{"ca bundle": "ok", "certificate expiry": "fail", "dry-run": "fail"})
		if _, fix := r.verdict("certificate expiry"); code != 1 || fix == "" {
			t.Errorf("exit %d, fix %q", code, fix)
		}
		// Near expiry (< 7 days) is a warning, not a failure; later is ok.
		setSecret(t, secNS, secName, ca.issue(t, time.Now().Add(-time.Hour), time.Now().Add(48*time.Hour)))
		r, _ = doctor(t, manifest, "-n", ns, "-f", "-")
		wantVerdicts(t, r, map[string]string{"ca bundle": "ok", "certificate expiry": "warn"})
		setSecret(t, secNS, secName, ca.issue(t, time.Now().Add(-time.Hour), time.Now().Add(30*24*time.Hour)))
		r, _ = doctor(t, manifest, "-n", ns, "-f", "-")
		wantVerdicts(t, r, map[string]string{"ca bundle": "ok", "certificate expiry": "ok"})
	})
}

// The webhook's Service has no ready endpoints: described by a Service and an
// EndpointSlice in the apiserver, as the endpoint-slice controller would write them.
func TestDoctorNoReadyEndpoints(t *testing.T) {
	ns := namespace(t, nil, nil)
	setUpDoctor(t)
	svcNS, _, _ := strings.Cut(doctorSecret, "/")
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "doctor-webhook", Namespace: svcNS},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "podmeta"}, Ports: []corev1.ServicePort{{Name: "https", Port: 443}}},
	}
	if _, err := cp.Clientset.CoreV1().Services(svcNS).Create(t.Context(), svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	notReady := false
	slices := cp.Clientset.DiscoveryV1().EndpointSlices(svcNS)
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "doctor-webhook-1", Namespace: svcNS, Labels: map[string]string{discoveryv1.LabelServiceName: "doctor-webhook"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.7"}, Conditions: discoveryv1.EndpointConditions{Ready: &notReady}}},
	}
	es, err := slices.Create(t.Context(), es, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	editWebhook(t, func(wh *admissionregistrationv1.MutatingWebhook) {
		path := "/mutate-v1-pod"
		wh.ClientConfig.URL = nil
		wh.ClientConfig.Service = &admissionregistrationv1.ServiceReference{Namespace: svcNS, Name: "doctor-webhook", Path: &path}
	})
	manifest := podManifest(t, pod("web", nil))
	r, code := doctor(t, manifest, "-n", ns, "-f", "-")
	wantVerdicts(t, r, map[string]string{"service endpoints": "fail"})
	if _, fix := r.verdict("service endpoints"); code != 1 || !strings.Contains(fix, "-l app=podmeta") {
		t.Errorf("exit %d, fix %q", code, fix)
	}
	ready := true
	es.Endpoints[0].Conditions.Ready = &ready
	if _, err := slices.Update(t.Context(), es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r, _ = doctor(t, manifest, "-n", ns, "-f", "-")
	wantVerdicts(t, r, map[string]string{"service endpoints": "ok"})

	// Without --cert-secret, the Secret is the one podmeta's Deployment (behind the
	// Service's selector) names; the certificate is envtest's, for 127.0.0.1, so it does
	// not verify for the Service's name.
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "podmeta", Namespace: svcNS},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "podmeta"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "podmeta"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "podmeta", Image: "podmeta:test",
					Args: []string{"webhook", "--cert-mode=self-managed", "--cert-secret", "serving-tls"}}}},
			},
		},
	}
	if _, err := cp.Clientset.AppsV1().Deployments(svcNS).Create(t.Context(), dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r, _ = doctorWith(t, manifest, "-n", ns, "-f", "-")
	for _, c := range r.Checks {
		if c.Name == "ca bundle" && (c.Verdict != "fail" || !strings.Contains(c.Message, "Secret "+doctorSecret+" for doctor-webhook."+svcNS+".svc")) {
			t.Errorf("the Deployment's --cert-secret: %+v", c)
		}
	}
	if v, _ := r.verdict("ca bundle"); v == "" {
		t.Errorf("no ca bundle check: %+v", r.Checks)
	}
}

// Policy mode: no webhook configuration, a MutatingAdmissionPolicy and its binding.
// doctor recognises it, checks the policies and their selectors, and dry-runs the pod.
func TestDoctorPolicyMode(t *testing.T) {
	api := cp.Clientset.AdmissionregistrationV1().MutatingWebhookConfigurations()
	mwc, err := api.Get(t.Context(), "podmeta", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := api.Delete(t.Context(), "podmeta", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restoreWebhook(t, mwc.Webhooks) })
	installPolicies(t)
	ns := namespace(t, map[string]string{policyLabel: "enabled"}, nil)
	manifest := podManifest(t, pod("web", nil))
	r, code := doctor(t, manifest, "-n", ns, "-f", "-")
	if code != 0 || !r.Injected || len(r.Modes) != 1 || r.Modes[0] != "policy" {
		t.Fatalf("exit %d, %+v", code, r)
	}
	wantVerdicts(t, r, map[string]string{"installation": "ok", "mutating policy": "ok", "mutating policy binding": "ok", "validating policy": "ok",
		"namespace selector": "ok", "match conditions": "ok", "dry-run": "ok", "ca bundle": ""})

	other := namespace(t, map[string]string{}, nil)
	r, code = doctor(t, manifest, "-n", other, "-f", "-")
	wantVerdicts(t, r, map[string]string{"namespace selector": "fail", "dry-run": "fail"})
	if _, fix := r.verdict("namespace selector"); code != 1 || fix != "kubectl label namespace "+other+" "+policyLabel+"=enabled --overwrite" {
		t.Errorf("exit %d, fix %q", code, fix)
	}
}

// Nothing installed: one failed check naming both modes; exit 1.
func TestDoctorNotInstalled(t *testing.T) {
	ns := namespace(t, nil, nil)
	r, code := doctor(t, podManifest(t, pod("web", nil)), "-n", ns, "--webhook-config-name", "nope", "--policy-name", "nope", "-f", "-")
	wantVerdicts(t, r, map[string]string{"installation": "fail"})
	if code != 1 || len(r.Modes) != 1 || r.Modes[0] != "none" {
		t.Errorf("exit %d, %+v", code, r)
	}
	if _, code := doctor(t, "", "-n", ns, "pod/missing"); code != 2 {
		t.Errorf("a missing pod: exit %d, want 2", code)
	}
}

// Both modes installed on disjoint namespaces, as docs/policy.md advises: a pod the
// webhook injects is exit 0, each check is named after its mode, and the policy's
// namespace selector, which selects other namespaces, is a warning. A namespace neither
// selects still fails.
func TestDoctorBothModes(t *testing.T) {
	installPolicies(t) // selects namespaces labelled policyLabel
	ns := namespace(t, nil, nil)
	manifest := podManifest(t, pod("web", nil))
	r, code := doctor(t, manifest, "-n", ns, "-f", "-")
	if code != 0 || !r.Injected || len(r.Modes) != 2 {
		t.Fatalf("exit %d, %+v", code, r)
	}
	wantVerdicts(t, r, map[string]string{"installation": "warn", "webhook: namespace selector": "ok", "policy: namespace selector": "warn", "dry-run": "ok"})

	neither := namespace(t, map[string]string{}, nil)
	r, code = doctor(t, manifest, "-n", neither, "-f", "-")
	if code != 1 || r.Injected {
		t.Fatalf("neither mode selects the namespace: exit %d, %+v", code, r)
	}
	wantVerdicts(t, r, map[string]string{"webhook: namespace selector": "fail", "policy: namespace selector": "fail", "dry-run": "fail"})
}

// A user who may read everything doctor reads but not create pods gets no verdict on
// injection from the dry-run: exit 2, saying why, not 1 ("not injected"). What the
// apiserver's RBAC answers is what doctor tells apart from an admission denial.
func TestDoctorCannotCreatePods(t *testing.T) {
	ns := namespace(t, nil, nil)
	const user, group = "doctor-viewer", "doctor-viewers"
	ctx := t.Context()
	rbac := cp.Clientset.RbacV1()
	cr := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: group}, Rules: []rbacv1.PolicyRule{{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"get", "list"}}}}
	crb := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: group}, RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: group},
		Subjects: []rbacv1.Subject{{Kind: "Group", APIGroup: "rbac.authorization.k8s.io", Name: group}}}
	if _, err := rbac.ClusterRoles().Create(ctx, cr, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	_, kubeconfig, err := cp.UserConfig(user, group)
	if err != nil {
		t.Fatal(err)
	}
	setUpDoctor(t)
	cmd := exec.CommandContext(ctx, binary, "doctor", "-o", "json", "--kubeconfig", kubeconfig, "--cert-secret", doctorSecret, "-n", ns, "-f", "-")
	cmd.Stdin = strings.NewReader(podManifest(t, pod("web", nil)))
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	err = cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(errOut.String(), `cannot create resource "pods"`) {
		t.Fatalf("%v, stderr %q: want exit 2 naming the missing permission", err, errOut.String())
	}
}

// A namespace that does not exist: doctor cannot tell (exit 2), for a manifest and for a
// pod alike.
func TestDoctorNamespaceMissing(t *testing.T) {
	if _, code := doctor(t, podManifest(t, pod("web", nil)), "-n", "no-such-namespace", "-f", "-"); code != 2 {
		t.Errorf("manifest: exit %d, want 2", code)
	}
	if _, code := doctor(t, "", "-n", "no-such-namespace", "web"); code != 2 {
		t.Errorf("pod: exit %d, want 2", code)
	}
}
