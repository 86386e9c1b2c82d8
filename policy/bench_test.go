package policy

import (
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// cpuTime is this process's user+system CPU time: the benchmarks report it per
// operation beside the wall time, which other work on a shared machine inflates.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loop runs f b.N times, reporting CPU time per operation.
func loop(b *testing.B, f func() error) {
	b.Helper()
	if err := f(); err != nil { // compile outside the measurement
		b.Fatal(err)
	}
	b.ResetTimer()
	start := cpuTime()
	for b.Loop() {
		if err := f(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// benchPod is the pod `make bench` creates through the apiserver, as admission sees
// it: one container, defaulted, with the ServiceAccount plugin's token volume and mount.
func benchPod() *corev1.Pod {
	return demoPod(nil, corev1.Container{
		Name: "app", Image: "app:1", ImagePullPolicy: corev1.PullIfNotPresent,
		TerminationMessagePath: "/dev/termination-log", TerminationMessagePolicy: corev1.TerminationMessageReadFile,
		VolumeMounts: []corev1.VolumeMount{{Name: "kube-api-access-abcde", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}},
	})
}

// BenchmarkMutateTypical is the MAP's evaluation, as the apiserver runs it, for a
// two-container pod with the defaults.
func BenchmarkMutateTypical(b *testing.B) {
	t := &testing.T{}
	pols := rendered(t, nil)
	p := demoPod(nil, corev1.Container{Name: "app", Image: "app:1"}, corev1.Container{Name: "proxy", Image: "proxy:1"})
	ns := demoNamespace()
	loop(b, func() error { _, err := mutate(t, pols.Mutating, p, ns); return err })
}

// BenchmarkMutateBenchPod is the MAP's evaluation for the pod of `make bench`.
func BenchmarkMutateBenchPod(b *testing.B) {
	t := &testing.T{}
	pols := rendered(t, nil)
	p, ns := benchPod(), demoNamespace()
	loop(b, func() error { _, err := mutate(t, pols.Mutating, p, ns); return err })
}

// BenchmarkValidateTypical is the VAP's evaluation for the two-container pod.
func BenchmarkValidateTypical(b *testing.B) {
	t := &testing.T{}
	pols := rendered(t, nil)
	p := demoPod(nil, corev1.Container{Name: "app", Image: "app:1"}, corev1.Container{Name: "proxy", Image: "proxy:1"})
	ns := demoNamespace()
	loop(b, func() error { _, err := validate(t, pols.Validating, p, ns); return err })
}

// BenchmarkMutateReinvoked is the MAP's second evaluation of the same pod: the apiserver
// reinvokes a MutatingAdmissionPolicy that changed the pod (reinvocationPolicy
// IfNeeded); its matchCondition not-injected-yet skips the pass.
func BenchmarkMutateReinvoked(b *testing.B) {
	t := &testing.T{}
	pols := rendered(t, nil)
	p := demoPod(nil, corev1.Container{Name: "app", Image: "app:1"}, corev1.Container{Name: "proxy", Image: "proxy:1"})
	ns := demoNamespace()
	once, err := mutate(t, pols.Mutating, p, ns)
	if err != nil {
		b.Fatal(err)
	}
	loop(b, func() error { _, err := mutate(t, pols.Mutating, once, ns); return err })
}
