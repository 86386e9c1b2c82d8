package test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/webhook"
)

// ownedPod is a pod created as a ReplicaSet's controller creates one: generateName and a
// controller ownerReference.
func ownedPod(rs *appsv1.ReplicaSet, container corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: rs.Name + "-", OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs.Name, UID: rs.UID, Controller: ptr(true)}}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{container}},
	}
}

func replicaSet(t *testing.T, ns, name string) *appsv1.ReplicaSet {
	t.Helper()
	labels := map[string]string{"app": name}
	rs, err := cp.Clientset.AppsV1().ReplicaSets(ns).Create(t.Context(), &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.ReplicaSetSpec{Replicas: ptr(int32(0)), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// ownerEvents lists the events.k8s.io/v1 Events regarding the ReplicaSet, by reason,
// once for each time it was recorded: client-go's recorder folds a repeat into the
// first Event's series (count 2 at once, the rest later), so an Event with a series is
// listed series.count times.
func ownerEvents(ctx context.Context, t *testing.T, ns string, rs *appsv1.ReplicaSet) map[string][]string {
	t.Helper()
	list, err := cp.Clientset.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, e := range list.Items {
		if e.Regarding.UID == rs.UID && e.Regarding.Kind == "ReplicaSet" {
			times := int32(1)
			if e.Series != nil {
				times = max(times, e.Series.Count)
			}
			for range times {
				out[e.Reason] = append(out[e.Reason], e.Type+": "+e.Note)
			}
		}
	}
	return out
}

// A controller-created pod injected with a warning leads to an Event on its owner,
// where `kubectl describe replicaset` shows it, recorded by podmeta (with only the RBAC
// config/rbac grants); more pods of the same owner add none; a dry run records none.
func TestOwnerEventOnWarnedPod(t *testing.T) {
	ns := namespace(t, nil, nil)
	rs := replicaSet(t, ns, "web")
	dry := replicaSet(t, ns, "dry")
	warned := corev1.Container{Name: "app", Image: "app:1", Env: []corev1.EnvVar{{Name: "POD_IP", Value: "1.2.3.4"}}}

	// Dry runs first: had they recorded anything, it would be there by the end.
	for range 3 {
		if _, err := cp.Clientset.CoreV1().Pods(ns).Create(t.Context(), ownedPod(dry, warned), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
			t.Fatal(err)
		}
	}
	for range 20 {
		if got := create(t, ns, ownedPod(rs, warned)); !injected(got) {
			t.Fatal("pod not injected")
		}
	}
	want := `podmeta: container "app" defines env POD_IP; kept the pod's value`
	eventually(t, 15*time.Second, func(ctx context.Context) string {
		evs := ownerEvents(ctx, t, ns, rs)[webhook.EventReasonWarnings]
		if len(evs) == 0 {
			return "no PodmetaWarnings Event on ReplicaSet web"
		}
		if !strings.HasPrefix(evs[0], "Warning: podmeta injected pod web-*") || !strings.Contains(evs[0], want) {
			return fmt.Sprintf("event %q lacks %q", evs[0], want)
		}
		return ""
	})
	// Give a wrongly recorded second event, or a dry run's, time to arrive.
	time.Sleep(2 * time.Second)
	if evs := ownerEvents(t.Context(), t, ns, rs); len(evs[webhook.EventReasonWarnings]) != 1 || len(evs) != 1 {
		t.Errorf("20 warned pods of one ReplicaSet gave Events %q, want one", evs)
	}
	if evs := ownerEvents(t.Context(), t, ns, dry); len(evs) != 0 {
		t.Errorf("dry-run pods gave Events %q", evs)
	}
}

// A skipped controller-created pod says why, on its owner.
func TestOwnerEventOnSkippedPod(t *testing.T) {
	ns := namespace(t, nil, map[string]string{webhook.AnnotationInject: "false"})
	rs := replicaSet(t, ns, "skipped")
	if got := create(t, ns, ownedPod(rs, corev1.Container{Name: "app", Image: "app:1"})); injected(got) {
		t.Fatal("pod injected in a namespace annotated inject=false")
	}
	eventually(t, 15*time.Second, func(ctx context.Context) string {
		evs := ownerEvents(ctx, t, ns, rs)[webhook.EventReasonSkipped]
		if len(evs) != 1 || !strings.Contains(evs[0], "Normal: podmeta left pod skipped-* alone: podmeta.io/inject is false") {
			return fmt.Sprintf("events %q", evs)
		}
		return ""
	})
	// The README's third line: `kubectl get events -n NS --field-selector
	// reason=PodmetaSkipped` (kubectl reads core/v1 Events) finds it on the owner.
	core, err := cp.Clientset.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{FieldSelector: "reason=" + webhook.EventReasonSkipped})
	if err != nil {
		t.Fatal(err)
	}
	if len(core.Items) != 1 || core.Items[0].InvolvedObject.Kind != "ReplicaSet" || core.Items[0].InvolvedObject.Name != rs.Name {
		t.Fatalf("core/v1 events with reason=%s: %+v", webhook.EventReasonSkipped, core.Items)
	}
}
