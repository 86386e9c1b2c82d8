package policy

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/webhook"
)

// Quantities whose text would make ParseQuantity or its arithmetic expensive (bounds.go)
// never reach quantity(): the VAP denies the pod as the webhook does, and quickly, and
// the MAP leaves it alone.
func TestHostileQuantities(t *testing.T) {
	pols := rendered(t, nil)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo", Labels: map[string]string{webhook.LabelInject: "enabled", "kubernetes.io/metadata.name": "demo"}}}
	in, err := webhook.NewInjector(config(t, nil), true)
	if err != nil {
		t.Fatal(err)
	}
	// Compile once (a denied pod: the message too), outside the timed admissions.
	if _, _, err := admit(t, pols, admitted(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "demo", Annotations: map[string]string{webhook.AnnotationEnv: "bogus"}}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}}), ns); err != nil {
		t.Fatal(short(err))
	}
	for _, v := range []string{"1e2147483647", "1e-2147483647", "1e2147483648", "1e1000", strings.Repeat("9", 10000), "1" + strings.Repeat("0", 20), "-1", "0", "1Zi"} {
		for _, key := range []string{webhook.AnnotationEphemeralStorageRequest, webhook.AnnotationEphemeralStorageLimit} {
			p := admitted(&corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "demo", Annotations: map[string]string{key: v}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
			})
			raw := mustJSON(p)
			if _, err := in.PlanPod(raw, "demo", nil); !webhook.IsDenied(err) {
				t.Fatalf("%s=%.20q: the webhook admits it (%v); pick another hostile value", key, v, err)
			}
			start := time.Now()
			got, denied, err := admit(t, pols, p, ns)
			if err != nil {
				t.Fatalf("%s=%.20q: %s", key, v, short(err))
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("%s=%.20q: admission took %s", key, v, d)
			}
			if !strings.Contains(denied, key+"=") {
				t.Errorf("%s=%.20q: not denied by the VAP: %q", key, v, denied)
			}
			if _, ok := got.Annotations[webhook.AnnotationStatus]; ok || len(got.Spec.Containers[0].Env) > 0 {
				t.Errorf("%s=%.20q: the MAP injected an invalid pod", key, v)
			}
		}
	}
}
