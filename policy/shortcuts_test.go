package policy

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/podmeta/podmeta/webhook"
)

// A pod and namespace without podmeta annotations skip the annotation checks (the
// operator's defaults are valid), except for the ambassador's port clash when the
// operator turns the ambassador on by default: both modes still deny that pod, and
// agree on the others.
func TestUnannotatedShortcut(t *testing.T) {
	clash := corev1.Container{Name: "app", Image: "app:1", Ports: []corev1.ContainerPort{{ContainerPort: 8002}}}
	plain := corev1.Container{Name: "app", Image: "app:1"}
	for _, c := range []struct {
		flags  []string
		ctr    corev1.Container
		denied bool
	}{
		{[]string{"--ambassador=true"}, clash, true},
		{[]string{"--ambassador=true"}, plain, false},
		{nil, clash, false},
		{nil, plain, false},
	} {
		cfg := config(t, c.flags)
		pols := rendered(t, c.flags)
		p := demoPod(nil, c.ctr)
		gc := goldenCase{name: "unannotated", ns: demoNamespace(), pod: p}
		want, _, werr := viaWebhook(t, cfg, gc, p)
		got, denied, err := admit(t, pols, p, gc.ns)
		if err != nil {
			t.Fatalf("%v %s: %s", c.flags, c.ctr.Name, short(err))
		}
		if (denied != "") != c.denied || (werr != nil) != c.denied {
			t.Fatalf("%v ports %v: policy denial %q, webhook error %v; want denied=%v", c.flags, c.ctr.Ports, denied, werr, c.denied)
		}
		// The VAP on the pod as created (its invalid list, which the MAP's inject reads
		// too): the shortcut keeps the clash, whatever the MAP did before it.
		alone, err := validate(t, pols.Validating, p, gc.ns)
		if err != nil {
			t.Fatalf("%v %s: %s", c.flags, c.ctr.Name, short(err))
		}
		if (alone != "") != c.denied {
			t.Fatalf("%v ports %v: the VAP alone on the unmutated pod says %q; want denied=%v", c.flags, c.ctr.Ports, alone, c.denied)
		}
		if c.denied {
			checkSameDenial(t, werr.Error(), denied)
			continue
		}
		if err := ExpectedRecord(want, p); err != nil {
			t.Fatal(err)
		}
		got.TypeMeta = want.TypeMeta // the apiserver path sets it
		if diff := cmp.Diff(podJSON(t, want), podJSON(t, got)); diff != "" {
			t.Errorf("%v: policy mode differs from the webhook (-webhook +policy):\n%s", c.flags, diff)
		}
	}
}

// What the shortcut is for: on a pod and namespace without podmeta annotations, the
// settings (variables.s) and their checks (variables.invalid) cost the apiserver less
// than a tenth of what they cost once one podmeta annotation is set.
func TestUnannotatedShortcutCost(t *testing.T) {
	pols := rendered(t, nil)
	costs := func(ann map[string]string) map[string]int64 {
		cs, err := RuntimeCosts(pols, demoPod(ann), demoNamespace())
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int64{}
		for _, c := range cs {
			if c.Policy == pols.Validating.Name {
				out[c.Expression] = c.Cost
			}
		}
		return out
	}
	plain, annotated := costs(nil), costs(map[string]string{webhook.AnnotationInject: "true"})
	for _, v := range []string{"variables.s", "variables.invalid"} {
		t.Logf("%s: %d unannotated, %d annotated", v, plain[v], annotated[v])
		if annotated[v] == 0 || plain[v]*10 > annotated[v] {
			t.Errorf("%s costs %d on an unannotated pod, %d on an annotated one: the shortcut does not apply", v, plain[v], annotated[v])
		}
	}
}

// The MAP's matchCondition not-injected-yet skips the apiserver's reinvocation pass on
// a pod whose podmeta.io/injected names every container (the documented difference):
// such a pod is left as it is even where it lacks what podmeta adds, while a container
// not named there (a later mutator's) gets the whole evaluation and is injected.
func TestReinvocationSkip(t *testing.T) {
	pols := rendered(t, nil)
	ns := demoNamespace()
	p := demoPod(nil, corev1.Container{Name: "app", Image: "app:1"}, corev1.Container{Name: "proxy", Image: "proxy:1"})
	once, err := mutate(t, pols.Mutating, p, ns)
	if err != nil {
		t.Fatal(short(err))
	}
	if once.Annotations[webhook.AnnotationInjected] != "app,proxy" {
		t.Fatalf("podmeta.io/injected = %q, want app,proxy", once.Annotations[webhook.AnnotationInjected])
	}
	// Strip what podmeta added to app: the record still names it, so the pass skips.
	stripped := once.DeepCopy()
	stripped.Spec.Containers[0].Env = nil
	got, err := mutate(t, pols.Mutating, stripped, ns)
	if err != nil {
		t.Fatal(short(err))
	}
	if diff := cmp.Diff(stripped, got); diff != "" {
		t.Errorf("a pod whose record names every container was changed (-before +after):\n%s", diff)
	}
	// Without podmeta.io/injected the pass evaluates, and restores app's env.
	delete(stripped.Annotations, webhook.AnnotationInjected)
	got, err = mutate(t, pols.Mutating, stripped, ns)
	if err != nil {
		t.Fatal(short(err))
	}
	if diff := cmp.Diff(once.Spec.Containers[0].Env, got.Spec.Containers[0].Env); diff != "" {
		t.Errorf("without podmeta.io/injected, app's env is not restored (-want +got):\n%s", diff)
	}
	// A container a later mutator adds is not named: it is injected.
	late := once.DeepCopy()
	late.Spec.Containers = append(late.Spec.Containers, corev1.Container{Name: "late", Image: "late:1"})
	got, err = mutate(t, pols.Mutating, late, ns)
	if err != nil {
		t.Fatal(short(err))
	}
	if diff := cmp.Diff(once.Spec.Containers[0].Env, got.Spec.Containers[2].Env); diff != "" {
		t.Errorf("the late container does not get app's env (-app +late):\n%s", diff)
	}
}
