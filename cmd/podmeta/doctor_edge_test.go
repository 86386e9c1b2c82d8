package main

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/podmeta/podmeta/policy"
	"github.com/podmeta/podmeta/webhook"
)

// fakeDoctor is a doctor on a fake clientset holding objs.
func fakeDoctor(objs ...runtime.Object) (*doctor, *fake.Clientset) {
	cs := fake.NewClientset(objs...)
	return &doctor{opts: doctorOptions{webhookConfig: "podmeta", policyName: "podmeta"}, cs: cs, dryRun: cs, warnings: &warningRecorder{}}, cs
}

func labelledNamespace(name string, ann map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/metadata.name": name, webhook.LabelInject: "enabled"}, Annotations: ann}}
}

// A dry-run the apiserver refused for a reason that is not about the pod (the caller may
// not create pods; the apiserver could not be reached) says nothing about injection:
// doctor could not tell (exit 2), not "not injected" (exit 1). A denial by admission (a
// webhook's, podmeta's among them) is the answer: exit 1.
func TestDoctorDryRunErrorsThatSayNothing(t *testing.T) {
	podsGR := schema.GroupResource{Resource: "pods"}
	for _, c := range []struct {
		name      string
		err       error
		wantError bool
	}{
		{"RBAC", apierrors.NewForbidden(podsGR, "", errors.New(`User "dev" cannot create resource "pods" in API group "" in the namespace "demo"`)), true},
		{"unreachable", errors.New("dial tcp 10.0.0.1:6443: connect: connection refused"), true},
		{"denied by podmeta", &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: 403, Reason: metav1.StatusReasonForbidden,
			Message: `admission webhook "pods.podmeta.io" denied the request: pod annotation podmeta.io/env="X" is invalid`}}, false},
		{"invalid pod", apierrors.NewInvalid(schema.GroupKind{Kind: "Pod"}, "web", nil), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, cs := fakeDoctor(labelledNamespace("demo", nil))
			cs.PrependReactor("create", "pods", func(k8stesting.Action) (bool, runtime.Object, error) { return true, nil, c.err })
			tg := &target{desc: "pod/web", kind: "Pod", pod: doctorPod(nil, nil)}
			r, err := d.diagnose(context.Background(), tg)
			if c.wantError {
				if err == nil {
					t.Fatalf("no error (exit 2): report exit %d, checks %+v", r.Exit, r.Checks)
				}
				return
			}
			if err != nil || r.Exit != doctorNotInjected {
				t.Fatalf("err %v, report %+v: want exit 1", err, r)
			}
		})
	}
}

// An existing pod with a record is injected even when its annotations (or its
// namespace's) are invalid now: the verdict is "injected, but a check failed", and
// -o json says injected: true.
func TestDoctorRecordInjectedWhenAnnotationsInvalidNow(t *testing.T) {
	d, _ := fakeDoctor()
	r := &report{}
	checks := d.recordCheck(&target{pod: injectedPod(t), existing: true}, labelledNamespace("demo", map[string]string{webhook.AnnotationEnv: "BOGUS"}), r)
	if !r.Injected || r.Record == nil || exitCode(r.Injected, checks) != doctorNotInjected || checks[0].Verdict != verdictFail || !strings.Contains(checks[0].Message, "invalid now") {
		t.Fatalf("injected=%v record=%v checks %+v", r.Injected, r.Record, checks)
	}
}

// Odd cluster objects give verdicts, not panics: a webhook without selectors,
// matchConditions or failurePolicy, a clientConfig with neither service nor url, a
// Secret without tls.crt, a malformed caBundle, a Service without a selector or ready
// endpoints.
func TestDoctorOddClusterObjects(t *testing.T) {
	sideEffects := admissionregistrationv1.SideEffectClassNone
	rules := []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{"CREATE"},
		Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}}
	svc := &admissionregistrationv1.ServiceReference{Namespace: "podmeta-system", Name: "podmeta-webhook"}
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "podmeta"}, Webhooks: []admissionregistrationv1.MutatingWebhook{
		{Name: "bare.podmeta.io", SideEffects: &sideEffects, Rules: rules, ClientConfig: admissionregistrationv1.WebhookClientConfig{Service: svc, CABundle: []byte("not PEM")}},
		{Name: "nowhere.podmeta.io", SideEffects: &sideEffects, Rules: rules},
		{Name: "url.podmeta.io", SideEffects: &sideEffects, Rules: rules, ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: ptr("https://[::1]:bad/")}},
	}}
	objs := []runtime.Object{
		labelledNamespace("demo", nil), mwc,
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "podmeta-system", Name: "podmeta-webhook"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "podmeta-system", Name: "podmeta-webhook-tls"}, Data: map[string][]byte{"ca.crt": []byte("x")}},
	}
	d, _ := fakeDoctor(objs...)
	for _, tg := range []*target{
		{desc: "pod/web", kind: "Pod", pod: doctorPod(nil, nil)},
		{desc: "pod/web", kind: "Pod", existing: true, pod: doctorPod(nil, map[string]string{webhook.AnnotationStatus: "{not json"})},
	} {
		r, err := d.diagnose(context.Background(), tg)
		if err != nil {
			t.Fatal(err)
		}
		text, _ := json.Marshal(r.Checks)
		for _, want := range []string{"has no certificate in tls.crt", "clientConfig has neither service nor url", "clientConfig.url", "none: namespace demo is selected",
			"Service podmeta-system/podmeta-webhook has no ready endpoints"} {
			if !strings.Contains(string(text), want) {
				t.Errorf("existing=%v: checks lack %q: %s", tg.existing, want, text)
			}
		}
		if r.Exit != doctorNotInjected {
			t.Errorf("existing=%v: exit %d, want 1", tg.existing, r.Exit)
		}
	}
	// A caBundle whose PEM block holds no certificate, next to a real one.
	now := time.Now()
	crt, _, _ := certFor(t, "h", now.Add(-time.Hour), now.Add(time.Hour), nil, nil)
	if c := certChecks([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), crt, "Secret s", "h", now); c[0].Verdict != verdictFail {
		t.Errorf("malformed caBundle: %+v", c)
	}
}

func ptr[T any](v T) *T { return &v }

// injectedPod is doctorPod as podmeta injects it, in namespace demo, with the injection
// config doctor assumes when it finds no podmeta Deployment.
func injectedPod(t *testing.T) *corev1.Pod {
	t.Helper()
	in, err := webhook.NewInjector((&doctor{}).injectionConfig(), true)
	if err != nil {
		t.Fatal(err)
	}
	pod := doctorPod(nil, nil)
	raw, _ := json.Marshal(pod)
	plan, err := in.PlanPod(raw, "demo", nil)
	if err != nil {
		t.Fatal(err)
	}
	plan.Apply(pod)
	return pod
}

// servedWebhook is the shipped MutatingWebhookConfiguration with a working Service,
// ready endpoint and serving certificate.
func servedWebhook(t *testing.T) []runtime.Object {
	t.Helper()
	now := time.Now()
	const host = "podmeta-webhook.podmeta-system.svc"
	caPEM, ca, caKey := certFor(t, "ca", now.Add(-time.Hour), now.Add(365*24*time.Hour), nil, nil)
	crt, _, _ := certFor(t, host, now.Add(-time.Hour), now.Add(90*24*time.Hour), ca, caKey)
	wh := shippedWebhook(t)
	wh.ClientConfig.CABundle = caPEM
	return []runtime.Object{
		&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "podmeta"}, Webhooks: []admissionregistrationv1.MutatingWebhook{wh}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "podmeta-system", Name: "podmeta-webhook"}},
		&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "podmeta-system", Name: "podmeta-webhook-1", Labels: map[string]string{discoveryv1.LabelServiceName: "podmeta-webhook"}},
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.1"}}}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "podmeta-system", Name: "podmeta-webhook-tls"}, Data: map[string][]byte{"tls.crt": crt}},
	}
}

// Both modes installed on disjoint namespaces, as docs/policy.md advises: the mode that
// does not select the pod is not a failure when the other one does. An injected pod in
// a namespace only the webhook selects is exit 0 (it was 1: the policy's namespace
// selector "failed"), the policy's selector says it selects other namespaces; a pod
// that neither selects still fails.
func TestDoctorBothModesOnDisjointNamespaces(t *testing.T) {
	pols, err := policy.Render(webhook.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	pols.Mutating.Spec.MatchConstraints.NamespaceSelector.MatchExpressions[0].Key = "policy.example/inject"
	objs := append(servedWebhook(t), labelledNamespace("demo", nil),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "other", Labels: map[string]string{"kubernetes.io/metadata.name": "other"}}})
	for _, o := range pols.Objects() {
		objs = append(objs, o.(runtime.Object))
	}
	d, _ := fakeDoctor(objs...)
	pod := injectedPod(t)
	r, err := d.diagnose(context.Background(), &target{desc: "pod/p", kind: "Pod", existing: true, pod: pod})
	if err != nil {
		t.Fatal(err)
	}
	if r.Exit != doctorInjected || len(r.Modes) != 2 {
		t.Fatalf("exit %d, modes %v, checks %+v", r.Exit, r.Modes, r.Checks)
	}
	var sawPolicy bool
	for _, c := range r.Checks {
		if strings.HasPrefix(c.Name, "policy: namespace selector") {
			sawPolicy = c.Verdict == verdictWarn && strings.Contains(c.Fix, "webhook")
		}
	}
	if !sawPolicy {
		t.Errorf("no warning naming the policy's namespace selector and the webhook that selects the pod: %+v", r.Checks)
	}

	// Selected by neither: the selectors still fail.
	pod.Namespace = "other"
	r, err = d.diagnose(context.Background(), &target{desc: "pod/p", kind: "Pod", existing: true, pod: pod})
	if err != nil {
		t.Fatal(err)
	}
	if r.Exit != doctorNotInjected || !slices.ContainsFunc(r.Checks, func(c check) bool { return c.Name == "webhook: namespace selector" && c.Verdict == verdictFail }) {
		t.Fatalf("selected by neither: exit %d, checks %+v", r.Exit, r.Checks)
	}
}

// A pod changed after admission: its record claims what the spec no longer shows, and
// "record matches spec" says so (a warning: the pod is still injected).
func TestDoctorRecordNoLongerMatchesSpec(t *testing.T) {
	pod := injectedPod(t)
	pod.Spec.Containers[0].Env = pod.Spec.Containers[0].Env[1:] // one of podmeta's env vars removed
	d, _ := fakeDoctor()
	r := &report{}
	checks := d.recordCheck(&target{pod: pod, existing: true}, labelledNamespace("demo", nil), r)
	i := slices.IndexFunc(checks, func(c check) bool { return c.Name == "record matches spec" })
	if !r.Injected || i < 0 || checks[i].Verdict != verdictWarn || !strings.Contains(checks[i].Message, "no longer shows") {
		t.Fatalf("injected=%v checks %+v", r.Injected, checks)
	}
}

// A manifest that already carries podmeta's record (injected offline) comes back with it
// from any dry-run: doctor warns that the record may not be this admission's.
func TestDoctorManifestWithItsOwnRecord(t *testing.T) {
	d, _ := fakeDoctor(labelledNamespace("demo", nil))
	r, err := d.diagnose(context.Background(), &target{desc: "pod/p", kind: "Pod", pod: injectedPod(t)})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Injected || !slices.ContainsFunc(r.Checks, func(c check) bool { return c.Name == "dry-run record" && c.Verdict == verdictWarn }) {
		t.Fatalf("injected=%v checks %+v", r.Injected, r.Checks)
	}
}
