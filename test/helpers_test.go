package test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podmeta/podmeta/webhook"
)

var nsCounter int

// namespace creates a fresh namespace; opted in unless labels say otherwise.
func namespace(t *testing.T, labels, annotations map[string]string) string {
	t.Helper()
	nsCounter++
	name := fmt.Sprintf("it-%d-%s", nsCounter, strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())))
	if len(name) > 63 {
		name = strings.TrimRight(name[:63], "-")
	}
	if labels == nil {
		labels = map[string]string{webhook.LabelInject: "enabled"}
	}
	if err := cp.EnsureNamespace(t.Context(), name, labels, annotations); err != nil {
		t.Fatal(err)
	}
	return name
}

// recorder collects the warnings the apiserver returns to the client.
type recorder struct {
	mu       sync.Mutex
	warnings []string
}

func (r *recorder) HandleWarningHeader(_ int, _ string, text string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.warnings = append(r.warnings, text)
}

// take returns the warnings so far and forgets them.
func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.warnings
	r.warnings = nil
	return out
}

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.warnings...)
}

// clientWithWarnings is an admin clientset whose warnings are recorded.
func clientWithWarnings(t *testing.T) (kubernetes.Interface, *recorder) {
	t.Helper()
	rec := &recorder{}
	cfg := rest.CopyConfig(cp.Config)
	cfg.WarningHandler = rec
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs, rec
}

// pod is a minimal valid pod.
func pod(name string, annotations map[string]string, containers ...corev1.Container) *corev1.Pod {
	if len(containers) == 0 {
		containers = []corev1.Container{{Name: "app", Image: "app:1"}}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations},
		Spec:       corev1.PodSpec{Containers: containers},
	}
}

// create creates p in ns and returns the pod as stored.
func create(t *testing.T, ns string, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	got, err := cp.Clientset.CoreV1().Pods(ns).Create(t.Context(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, p.Name, err)
	}
	return got
}

func envNames(c corev1.Container) []string {
	var out []string
	for _, e := range c.Env {
		out = append(out, e.Name)
	}
	return out
}

func injected(p *corev1.Pod) bool { return p.Annotations[webhook.AnnotationStatus] != "" }

// eventually polls cond until it returns "" or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, cond func(ctx context.Context) string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if last = cond(t.Context()); last == "" {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("condition not met within %s: %s", timeout, last)
}
