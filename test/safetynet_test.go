package test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/test/harness"
	"github.com/podmeta/podmeta/webhook"
)

const safetyNetMessage = "podmeta did not inject this pod"

// setSafetyNetActions changes the shipped binding's validationActions.
func setSafetyNetActions(ctx context.Context, t *testing.T, actions ...admissionregistrationv1.ValidationAction) {
	t.Helper()
	api := cp.Clientset.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings()
	b, err := api.Get(ctx, "podmeta-safety-net", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b.Spec.ValidationActions = actions
	if _, err := api.Update(ctx, b, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// installSafetyNet applies config/safety-net as shipped and removes it when the test ends.
func installSafetyNet(t *testing.T) {
	t.Helper()
	if err := cp.Apply(t.Context(), filepath.Join(harness.Root(), "config", "safety-net", "policy.yaml")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		bg := context.Background() // t.Context() is already cancelled when cleanups run
		_ = cp.Clientset.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(bg, "podmeta-safety-net", metav1.DeleteOptions{})
		_ = cp.Clientset.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(bg, "podmeta-safety-net", metav1.DeleteOptions{})
	})
}

// The safety net, installed from config/safety-net as shipped: with podmeta up nobody
// hears from it; with podmeta down and failurePolicy Ignore the client gets its warning;
// with the Deny action the pod is rejected.
func TestSafetyNet(t *testing.T) {
	ctx := t.Context()
	installSafetyNet(t)
	ns := namespace(t, nil, nil)
	cs, rec := clientWithWarnings(t)
	hasWarning := func() bool {
		return slices.ContainsFunc(rec.all(), func(w string) bool { return strings.Contains(w, safetyNetMessage) })
	}

	// The policy reaches the apiserver's cache asynchronously, so each step polls.
	if err := podmeta.Stop(); err != nil {
		t.Fatalf("stop podmeta: %v", err)
	}
	restarted := false
	restart := func() {
		if restarted {
			return
		}
		restarted = true
		var err error
		if podmeta, err = cp.StartPodmeta(context.Background(), binary, podmetaFlags...); err != nil {
			t.Fatalf("restart podmeta: %v", err)
		}
	}
	t.Cleanup(restart)

	n := 0
	eventually(t, 15*time.Second, func(ctx context.Context) string {
		n++
		got, err := cs.CoreV1().Pods(ns).Create(ctx, pod(podName("down", n), nil), metav1.CreateOptions{})
		if err != nil {
			return err.Error()
		}
		if injected(got) {
			return "injected while podmeta is down?"
		}
		if !hasWarning() {
			return "no safety-net warning yet"
		}
		return ""
	})

	setSafetyNetActions(ctx, t, admissionregistrationv1.Deny)
	eventually(t, 15*time.Second, func(ctx context.Context) string {
		n++
		_, err := cs.CoreV1().Pods(ns).Create(ctx, pod(podName("deny", n), nil), metav1.CreateOptions{})
		if err == nil {
			return "uninjected pod admitted with the Deny action"
		}
		if !strings.Contains(err.Error(), safetyNetMessage) {
			return "unexpected error: " + err.Error()
		}
		return ""
	})
	// Pods podmeta is told to leave alone are not caught by the net, even with Deny.
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod("opted-out", map[string]string{webhook.AnnotationInject: "false"}), metav1.CreateOptions{}); err != nil {
		t.Errorf("opted-out pod rejected by the safety net: %v", err)
	}
	nsOptOut := namespace(t, nil, map[string]string{webhook.AnnotationInject: "false"})
	if _, err := cs.CoreV1().Pods(nsOptOut).Create(ctx, pod("ns-opted-out", nil), metav1.CreateOptions{}); err != nil {
		t.Errorf("pod in a namespace that opts out rejected by the safety net: %v", err)
	}

	// Finding 8: a record written by the pod author to get past the check is compared
	// with the spec. One that claims what the pod lacks is caught; one that claims
	// nothing passes, which equals opting out (documented in docs/security.md).
	const forgedMessage = "podmeta did not write them for this pod"
	for name, ann := range map[string]map[string]string{
		"forged-ambassador": {webhook.AnnotationStatus: `{"ambassador":"native-sidecar"}`},
		"forged-volume":     {webhook.AnnotationStatus: `{"volume":"/etc/podinfo"}`, webhook.AnnotationInjected: ""},
		"forged-injected":   {webhook.AnnotationStatus: `{"env":{"app":["POD_NAME"]}}`, webhook.AnnotationInjected: "app"},
	} {
		_, err := cs.CoreV1().Pods(ns).Create(ctx, pod(name, ann), metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), forgedMessage) {
			t.Errorf("%s %v: admitted or denied for another reason: %v", name, ann, err)
		}
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod("forged-nothing", map[string]string{webhook.AnnotationStatus: `{}`}), metav1.CreateOptions{}); err != nil {
		t.Errorf("a record claiming nothing (the documented residual, like opting out): %v", err)
	}

	restart()
	rec.take()
	// With podmeta up, a forged record is rewritten to describe the pod, which then
	// passes the net.
	forged, err := cs.CoreV1().Pods(ns).Create(ctx, pod("forged-up", map[string]string{
		webhook.AnnotationStatus: `{"ambassador":"native-sidecar","env":{"ghost":["POD_NAME"]}}`, webhook.AnnotationInjected: "ghost"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("forged record with podmeta up: %v", err)
	}
	if st, inj := forged.Annotations[webhook.AnnotationStatus], forged.Annotations[webhook.AnnotationInjected]; strings.Contains(st, "ambassador") || strings.Contains(st, "ghost") || inj != "app" {
		t.Errorf("forged record kept: status %s, injected %q", st, inj)
	}
	got, err := cs.CoreV1().Pods(ns).Create(ctx, pod("up", nil), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("pod rejected with podmeta up: %v", err)
	}
	if !injected(got) || hasWarning() {
		t.Errorf("with podmeta up: injected=%v, warnings %q", injected(got), rec.all())
	}
	setSafetyNetActions(ctx, t, admissionregistrationv1.Warn, admissionregistrationv1.Audit)
}

func podName(prefix string, n int) string { return fmt.Sprintf("%s-%d", prefix, n) }
