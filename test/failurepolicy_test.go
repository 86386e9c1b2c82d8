package test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// setFailurePolicy changes podmeta's registered webhook configuration.
func setFailurePolicy(ctx context.Context, t *testing.T, policy admissionregistrationv1.FailurePolicyType) {
	t.Helper()
	api := cp.Clientset.AdmissionregistrationV1().MutatingWebhookConfigurations()
	cfg, err := api.Get(ctx, "podmeta", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Webhooks[0].FailurePolicy = &policy
	if _, err := api.Update(ctx, cfg, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// 9. With podmeta stopped, the shipped failurePolicy Ignore admits pods unmutated; with
// Fail, pods in opted-in namespaces are rejected while other namespaces are unaffected.
// podmeta also exits 0 on SIGTERM. It is restarted afterwards for the tests that follow.
func TestFailurePolicy(t *testing.T) {
	optedIn := namespace(t, nil, nil)
	other := namespace(t, map[string]string{}, nil)
	if err := podmeta.Stop(); err != nil {
		t.Fatalf("podmeta did not exit cleanly on SIGTERM: %v\n%s", err, podmeta.Logs())
	}
	t.Cleanup(func() {
		// t.Context() is already cancelled when cleanups run.
		setFailurePolicy(context.Background(), t, admissionregistrationv1.Ignore)
		var err error
		if podmeta, err = cp.StartPodmeta(context.Background(), binary, podmetaFlags...); err != nil {
			t.Fatalf("restart podmeta: %v", err)
		}
	})

	if got := create(t, optedIn, pod("ignored", nil)); injected(got) {
		t.Error("pod injected while podmeta was down")
	}

	setFailurePolicy(t.Context(), t, admissionregistrationv1.Fail)
	n := 0
	eventually(t, 10*time.Second, func(ctx context.Context) string {
		n++
		_, err := cp.Clientset.CoreV1().Pods(optedIn).Create(ctx, pod(fmt.Sprintf("fail-%d", n), nil), metav1.CreateOptions{})
		if err == nil {
			return "pod admitted with failurePolicy Fail and no webhook"
		}
		if !strings.Contains(err.Error(), `failed calling webhook "pods.podmeta.io"`) {
			return "unexpected error: " + err.Error()
		}
		return ""
	})
	create(t, other, pod("unaffected", nil))
}
