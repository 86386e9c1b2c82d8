package test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/webhook"
)

// 1. An opted-in pod gets env, the metadata volume, storage defaults and, when asked,
// the ambassador; the apiserver validates and stores all of it.
func TestInjectsOptedInPod(t *testing.T) {
	ns := namespace(t, nil, nil)
	got := create(t, ns, pod("full", map[string]string{webhook.AnnotationAmbassador: "true"}, corev1.Container{
		Name: "app", Image: "app:1",
		Env: []corev1.EnvVar{{Name: "ADDR", Value: "$(POD_IP):8080"}},
	}))
	app := got.Spec.Containers[0]
	names := envNames(app)
	wantFirst := []string{"POD_NAME", "POD_NAMESPACE", "POD_UID", "POD_IP", "HOST_IP", "NODE_NAME", "SERVICE_ACCOUNT", "CONTAINER_CPU_REQUEST_MILLICORES", "CONTAINER_MEMORY_LIMIT_BYTES", webhook.EnvAPIURL, "ADDR"}
	if !slices.Equal(names, wantFirst) {
		t.Errorf("env = %v\nwant %v", names, wantFirst)
	}
	if !slices.ContainsFunc(got.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == webhook.VolumeName && v.DownwardAPI != nil }) {
		t.Errorf("no metadata volume: %+v", got.Spec.Volumes)
	}
	if !slices.ContainsFunc(app.VolumeMounts, func(m corev1.VolumeMount) bool {
		return m.Name == webhook.VolumeName && m.MountPath == webhook.DefaultVolumePath && m.ReadOnly
	}) {
		t.Errorf("no read-only mount at %s: %+v", webhook.DefaultVolumePath, app.VolumeMounts)
	}
	if q := app.Resources.Requests[corev1.ResourceEphemeralStorage]; q.Cmp(resource.MustParse("64Mi")) != 0 {
		t.Errorf("ephemeral-storage request = %s, want 64Mi", q.String())
	}
	if len(got.Spec.InitContainers) != 1 || got.Spec.InitContainers[0].Name != webhook.AmbassadorContainerName ||
		got.Spec.InitContainers[0].RestartPolicy == nil || *got.Spec.InitContainers[0].RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("ambassador is not a native sidecar at initContainers[0]: %+v", got.Spec.InitContainers)
	}
	var st webhook.Status
	if err := json.Unmarshal([]byte(got.Annotations[webhook.AnnotationStatus]), &st); err != nil || st.Ambassador != "native-sidecar" {
		t.Errorf("status annotation %q (%v)", got.Annotations[webhook.AnnotationStatus], err)
	}
}

// 2. Everything the webhook configuration excludes is untouched.
func TestLeavesOthersAlone(t *testing.T) {
	ctx := t.Context()
	notLabelled := namespace(t, map[string]string{}, nil)
	optedIn := namespace(t, nil, nil)
	// kube-system labelled as if opted in: the namespaceSelector still excludes it.
	if err := cp.EnsureNamespace(ctx, "kube-system", nil, nil); err != nil {
		t.Fatal(err)
	}
	ks, err := cp.Clientset.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ks.Labels[webhook.LabelInject] = "enabled"
	if _, err := cp.Clientset.CoreV1().Namespaces().Update(ctx, ks, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	optOutLabel := pod("opt-out-label", nil)
	optOutLabel.Labels = map[string]string{webhook.LabelInject: "disabled"}
	mirror := pod("mirror", map[string]string{webhook.AnnotationMirrorPod: "abc"})
	mirror.Spec.NodeName = "node-1"
	for _, c := range []struct {
		name, ns string
		pod      *corev1.Pod
	}{
		{"namespace without the label", notLabelled, pod("unlabelled", nil)},
		{"kube-system", "kube-system", pod("system", nil)},
		{"opt-out label", optedIn, optOutLabel},
		{"opt-out annotation", optedIn, pod("opt-out-annotation", map[string]string{webhook.AnnotationInject: " False"})},
		{"mirror pod", optedIn, mirror},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := create(t, c.ns, c.pod)
			if injected(got) || len(got.Spec.Containers[0].Env) > 0 {
				t.Errorf("pod was mutated: %v", got.Annotations)
			}
		})
	}
}

// 3. A user env var with podmeta's name is kept, and the client sees the warning.
func TestUserEnvWinsWithWarning(t *testing.T) {
	ns := namespace(t, nil, nil)
	cs, rec := clientWithWarnings(t)
	p := pod("mine", nil, corev1.Container{Name: "app", Image: "app:1", Env: []corev1.EnvVar{{Name: "POD_IP", Value: "1.2.3.4"}}})
	got, err := cs.CoreV1().Pods(ns).Create(t.Context(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	env := got.Spec.Containers[0].Env
	i := slices.IndexFunc(env, func(e corev1.EnvVar) bool { return e.Name == "POD_IP" })
	if i < 0 || env[i].Value != "1.2.3.4" || env[i].ValueFrom != nil || slices.IndexFunc(env[i+1:], func(e corev1.EnvVar) bool { return e.Name == "POD_IP" }) >= 0 {
		t.Errorf("POD_IP not kept as the user wrote it: %+v", env)
	}
	want := `podmeta: container "app" defines env POD_IP; kept the pod's value`
	if !slices.ContainsFunc(rec.all(), func(w string) bool { return strings.Contains(w, want) }) {
		t.Errorf("warnings %q lack %q", rec.all(), want)
	}
}

// 4. An invalid annotation is denied with the message the user needs.
func TestInvalidAnnotationDenied(t *testing.T) {
	ns := namespace(t, nil, nil)
	_, err := cp.Clientset.CoreV1().Pods(ns).Create(t.Context(), pod("bad", map[string]string{webhook.AnnotationEnv: "POD_NAME,POD_IPZ"}), metav1.CreateOptions{})
	if err == nil {
		t.Fatal("pod with an invalid annotation was admitted")
	}
	for _, want := range []string{`admission webhook "pods.podmeta.io" denied the request`, `podmeta.io/env="POD_NAME,POD_IPZ"`, `unknown key "POD_IPZ"`, "valid values are default, all, none"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// 6. dryRun=All returns the mutated pod and stores nothing.
func TestDryRun(t *testing.T) {
	ns := namespace(t, nil, nil)
	got, err := cp.Clientset.CoreV1().Pods(ns).Create(t.Context(), pod("dry", nil), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		t.Fatal(err)
	}
	if !injected(got) || len(got.Spec.Containers[0].Env) == 0 {
		t.Errorf("dry-run response not mutated: %+v", got.Spec.Containers[0])
	}
	list, err := cp.Clientset.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil || len(list.Items) != 0 {
		t.Errorf("dry run stored %d pods (%v)", len(list.Items), err)
	}
}

// 7. Namespace annotations are defaults, pod annotations override them, and a changed
// namespace annotation takes effect through the cache.
func TestNamespaceDefaults(t *testing.T) {
	ctx := t.Context()
	ns := namespace(t, nil, map[string]string{webhook.AnnotationEnv: "POD_NAME", webhook.AnnotationVolume: "false"})
	got := create(t, ns, pod("ns-default", nil))
	if names := envNames(got.Spec.Containers[0]); !slices.Equal(names, []string{"POD_NAME"}) || len(got.Spec.Volumes) > 1 {
		t.Errorf("namespace defaults not applied: env %v volumes %d", names, len(got.Spec.Volumes))
	}
	got = create(t, ns, pod("pod-override", map[string]string{webhook.AnnotationEnv: "NODE_NAME"}))
	if names := envNames(got.Spec.Containers[0]); !slices.Equal(names, []string{"NODE_NAME"}) {
		t.Errorf("pod annotation did not override: env %v", names)
	}

	nsObj, err := cp.Clientset.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj.Annotations[webhook.AnnotationEnv] = "POD_UID"
	if _, err := cp.Clientset.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	n := 0
	eventually(t, 10*time.Second, func(ctx context.Context) string {
		n++
		got := create(t, ns, pod(fmt.Sprintf("after-change-%d", n), nil))
		if names := envNames(got.Spec.Containers[0]); !slices.Equal(names, []string{"POD_UID"}) {
			return fmt.Sprintf("env %v", names)
		}
		return ""
	})
}

// 8. A namespace enforcing Pod Security "restricted" admits a compliant pod with the
// ambassador injected: the sidecar keeps the pod restricted.
func TestAmbassadorPassesRestricted(t *testing.T) {
	ns := namespace(t, map[string]string{
		webhook.LabelInject:                  "enabled",
		"pod-security.kubernetes.io/enforce": "restricted",
	}, nil)
	p := pod("restricted", map[string]string{webhook.AnnotationAmbassador: "true"}, corev1.Container{
		Name: "app", Image: "app:1",
		SecurityContext: &corev1.SecurityContext{
			AllowPrivilegeEscalation: ptr(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
	})
	p.Spec.SecurityContext = &corev1.PodSecurityContext{
		RunAsNonRoot:   ptr(true),
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
	got := create(t, ns, p)
	if len(got.Spec.InitContainers) == 0 || got.Spec.InitContainers[0].Name != webhook.AmbassadorContainerName {
		t.Fatalf("ambassador missing: %+v", got.Spec.InitContainers)
	}
	// And the same pod without its own restricted settings is rejected by Pod Security,
	// proving the namespace really enforces it.
	p2 := pod("not-restricted", map[string]string{webhook.AnnotationAmbassador: "true"})
	if _, err := cp.Clientset.CoreV1().Pods(ns).Create(t.Context(), p2, metav1.CreateOptions{}); err == nil || !strings.Contains(err.Error(), "restricted") {
		t.Errorf("a non-compliant pod was not rejected by Pod Security: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }
