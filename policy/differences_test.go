package policy

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/webhook"
)

func demoNamespace() *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo", Labels: map[string]string{webhook.LabelInject: "enabled", "kubernetes.io/metadata.name": "demo"}}}
}

func demoPod(ann map[string]string, cs ...corev1.Container) *corev1.Pod {
	if len(cs) == 0 {
		cs = []corev1.Container{{Name: "app", Image: "app:1"}}
	}
	return admitted(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "demo", Annotations: ann}, Spec: corev1.PodSpec{Containers: cs}})
}

// The documented differences of the status record: storage values as written, and no
// "skipped".
func TestStatusDifferences(t *testing.T) {
	pols := rendered(t, nil)
	p := demoPod(map[string]string{webhook.AnnotationEphemeralStorageRequest: "1024Mi", webhook.AnnotationContainers: "app,nope"})
	got, denied, err := admit(t, pols, p, demoNamespace())
	if err != nil || denied != "" {
		t.Fatalf("admit: %v %s", err, denied)
	}
	st := got.Annotations[webhook.AnnotationStatus]
	if !strings.Contains(st, `"ephemeralStorage":{"app":{"request":"1024Mi"}}`) {
		t.Errorf("record %s: want the request as written, 1024Mi", st)
	}
	if strings.Contains(st, "skipped") {
		t.Errorf("record %s has skipped", st)
	}
	if q := got.Spec.Containers[0].Resources.Requests[corev1.ResourceEphemeralStorage]; q.Cmp(resource.MustParse("1Gi")) != 0 {
		t.Errorf("request %s, want 1Gi", q.String())
	}
	// The webhook's record of the same pod: canonical, with what it skipped.
	in, err := webhook.NewInjector(config(t, nil), true)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := in.PlanPod(mustJSON(p), "demo", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := plan.Status.String(); !strings.Contains(s, `"request":"1Gi"`) {
		t.Errorf("webhook record %s: the difference is gone? update docs/policy.md and Differences", s)
	}
	if len(plan.Warnings) == 0 {
		t.Error("the webhook warns about nothing here: the difference is gone? update docs/policy.md and Differences")
	}
}

// The documented differences of quantities: at most three exponent digits and 64
// characters (denied by the policy, admitted by the webhook), and below 1n (admitted,
// rounded up, by the policy; denied by the webhook).
func TestQuantityDifferences(t *testing.T) {
	pols := rendered(t, nil)
	in, err := webhook.NewInjector(config(t, nil), true)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		v             string
		policyDenies  bool
		webhookDenies bool
	}{
		{"1e0006", true, false},
		{"0000000000000000000000000000000000000000000000000000000000000001Mi", true, false},
		{"0.1n", false, true},
		{"64Mi", false, false},
		{"1e19", true, true},
	} {
		p := demoPod(map[string]string{webhook.AnnotationEphemeralStorageRequest: c.v})
		_, denied, err := admit(t, pols, p, demoNamespace())
		if err != nil {
			t.Fatal(short(err))
		}
		if (denied != "") != c.policyDenies {
			t.Errorf("%q: policy denies=%v, want %v (%s)", c.v, denied != "", c.policyDenies, denied)
		}
		_, werr := in.PlanPod(mustJSON(p), "demo", nil)
		if webhook.IsDenied(werr) != c.webhookDenies {
			t.Errorf("%q: webhook denies=%v, want %v", c.v, werr != nil, c.webhookDenies)
		}
	}
}

// --native-sidecar resolves to always, and --max-patch-bytes changes nothing.
func TestRenderFlags(t *testing.T) {
	a := rendered(t, []string{"--native-sidecar=never"})
	b := rendered(t, []string{"--max-patch-bytes=100"})
	c := rendered(t, nil)
	for _, p := range []*Policies{a, b} {
		x, _ := p.YAML()
		y, _ := c.YAML()
		if string(x) != string(y) {
			t.Error("a flag that does not apply to policy mode changed the policies")
		}
	}
	got, _, err := admit(t, a, demoPod(map[string]string{webhook.AnnotationAmbassador: "true"}), demoNamespace())
	if err != nil {
		t.Fatal(short(err))
	}
	if len(got.Spec.InitContainers) != 1 || got.Spec.InitContainers[0].RestartPolicy == nil {
		t.Errorf("the ambassador is not a native sidecar: %+v", got.Spec.InitContainers)
	}
}
