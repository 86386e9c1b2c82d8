package policy

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// BenchmarkMutateTypical is the MAP's evaluation, as the apiserver runs it, for a
// two-container pod with the defaults.
func BenchmarkMutateTypical(b *testing.B) {
	t := &testing.T{}
	pols := rendered(t, nil)
	p := demoPod(nil, corev1.Container{Name: "app", Image: "app:1"}, corev1.Container{Name: "proxy", Image: "proxy:1"})
	ns := demoNamespace()
	if _, err := mutate(t, pols.Mutating, p, ns); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := mutate(t, pols.Mutating, p, ns); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkValidateTypical is the VAP's evaluation for the same pod.
func BenchmarkValidateTypical(b *testing.B) {
	t := &testing.T{}
	pols := rendered(t, nil)
	p := demoPod(nil, corev1.Container{Name: "app", Image: "app:1"}, corev1.Container{Name: "proxy", Image: "proxy:1"})
	ns := demoNamespace()
	for b.Loop() {
		if _, err := validate(t, pols.Validating, p, ns); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMutateReinvoked is the MAP's second evaluation of the same pod: the apiserver
// reinvokes a MutatingAdmissionPolicy that changed the pod (reinvocationPolicy
// IfNeeded), and the second pass adds nothing.
func BenchmarkMutateReinvoked(b *testing.B) {
	t := &testing.T{}
	pols := rendered(t, nil)
	p := demoPod(nil, corev1.Container{Name: "app", Image: "app:1"}, corev1.Container{Name: "proxy", Image: "proxy:1"})
	ns := demoNamespace()
	once, err := mutate(t, pols.Mutating, p, ns)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := mutate(t, pols.Mutating, once, ns); err != nil {
			b.Fatal(err)
		}
	}
}
