package policy

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	corev1 "k8s.io/api/core/v1"

	"github.com/podmeta/podmeta/webhook"
)

// A 200-container pod (the ambassador on, every env key) is injected within the
// apiserver's runtime CEL cost budget, as the engine injects it.
func TestLargePodWithinBudget(t *testing.T) {
	pols := rendered(t, nil)
	var cs []corev1.Container
	for i := range 200 {
		cs = append(cs, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: "app:1", Env: []corev1.EnvVar{{Name: "OWN", Value: "x"}}})
	}
	p := demoPod(map[string]string{webhook.AnnotationEnv: "all", webhook.AnnotationAmbassador: "true"}, cs...)
	got, denied, err := admit(t, pols, p, demoNamespace())
	if err != nil {
		t.Fatalf("200 containers: %s", short(err))
	}
	if denied != "" {
		t.Fatal(denied)
	}
	in, err := webhook.NewInjector(config(t, nil), true)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := in.PlanPod(mustJSON(p), "demo", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := p.DeepCopy()
	plan.Apply(want)
	normalizeStatus(t, want, p)
	got.TypeMeta = want.TypeMeta // the apiserver path sets it
	if diff := cmp.Diff(podJSON(t, want), podJSON(t, got)); diff != "" {
		t.Errorf("the 200-container pod differs from the engine's (-webhook +policy):\n%.3000s", diff)
	}
	if n := len(got.Spec.Containers[199].Env); n != 17 {
		t.Errorf("last container has %d env vars, want 15 keys + PODMETA_API_URL + its own", n)
	}
}
