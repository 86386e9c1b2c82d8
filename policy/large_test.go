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
	if err := ExpectedRecord(want, p); err != nil {
		t.Fatal(err)
	}
	got.TypeMeta = want.TypeMeta // the apiserver path sets it
	if diff := cmp.Diff(podJSON(t, want), podJSON(t, got)); diff != "" {
		t.Errorf("the 200-container pod differs from the engine's (-webhook +policy):\n%.3000s", diff)
	}
	if n := len(got.Spec.Containers[199].Env); n != 17 {
		t.Errorf("last container has %d env vars, want 15 keys + PODMETA_API_URL + its own", n)
	}
}

// runtimeCost is the smallest runtime CEL cost budget within which the MAP injects p:
// what the apiserver's cost tracking charges it.
func runtimeCost(t *testing.T, pols *Policies, p *corev1.Pod) int64 {
	t.Helper()
	defer func(b int64) { mutationBudget = b }(mutationBudget)
	lo, hi := int64(0), mutationBudget
	for lo+1 < hi {
		mutationBudget = (lo + hi) / 2
		if _, err := mutate(t, pols.Mutating, p, demoNamespace()); err != nil {
			lo = mutationBudget
		} else {
			hi = mutationBudget
		}
	}
	return hi
}

// The runtime cost of the mutation, against the apiserver's budget (10,000,000 per
// mutation, celconfig.RuntimeCELCostBudget): a typical pod and a 200-container one.
func TestRuntimeCost(t *testing.T) {
	pols := rendered(t, nil)
	refs := ReferencePods() // the typical pod and the 200-container one
	typical, large := refs[0].Pod, refs[len(refs)-1].Pod
	small, big := runtimeCost(t, pols, typical), runtimeCost(t, pols, large)
	t.Logf("runtime CEL cost of the mutation: typical pod %d, 200 containers with every env key %d, budget %d", small, big, mutationBudget)
	if big > mutationBudget/2 {
		t.Errorf("a 200-container pod costs %d, more than half the budget %d", big, mutationBudget)
	}
	if small >= big {
		t.Errorf("the cost does not grow with the pod (%d, %d): is it measured?", small, big)
	}
}
