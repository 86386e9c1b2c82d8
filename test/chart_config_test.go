package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/podmeta/podmeta/test/harness"
	"github.com/podmeta/podmeta/webhook"
)

// config/default (kustomize, cert-manager) installs what the chart installs with
// certs.mode=certManager as release "podmeta" in podmeta-system.
func TestChartKustomizeDefault(t *testing.T) {
	for _, dir := range []string{"webhook", "rbac", "certmanager"} {
		if _, err := os.Stat(filepath.Join(harness.Root(), "config", dir, "kustomization.yaml")); err != nil {
			t.Fatalf("config/default builds on config/%s, which has no kustomization.yaml: %v", dir, err)
		}
	}
	kubectl := filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
	out, err := exec.CommandContext(t.Context(), kubectl, "kustomize", filepath.Join(harness.Root(), "config", "default")).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize config/default: %v\n%s", err, out)
	}
	kust, err := decodeObjects(out)
	if err != nil {
		t.Fatal(err)
	}
	_, chart := render(t, "podmeta", "podmeta-system", "certs.mode=certManager")

	var kd, cd appsv1.Deployment
	find(t, kust, "Deployment", "podmeta", &kd)
	find(t, chart, "Deployment", "podmeta", &cd)
	// kustomize's common labels are not the chart's; the pod template and the rest are.
	kd.Spec.Template.Labels, cd.Spec.Template.Labels = nil, nil
	if diff := cmp.Diff(cd.Spec, kd.Spec); diff != "" {
		t.Errorf("Deployment differs (-chart +kustomize):\n%s", diff)
	}
	var kw, cw admissionregistrationv1.MutatingWebhookConfiguration
	find(t, kust, "MutatingWebhookConfiguration", "podmeta", &kw)
	find(t, chart, "MutatingWebhookConfiguration", "podmeta", &cw)
	if diff := cmp.Diff(cw.Webhooks, kw.Webhooks); diff != "" {
		t.Errorf("webhook differs (-chart +kustomize):\n%s", diff)
	}
	ref := kw.Annotations["cert-manager.io/inject-ca-from"]
	if ref != cw.Annotations["cert-manager.io/inject-ca-from"] {
		t.Errorf("inject-ca-from %q, chart's %q", ref, cw.Annotations["cert-manager.io/inject-ca-from"])
	}
	// The Certificate the cainjector reads must exist and write the Secret podmeta mounts.
	_, certName, _ := strings.Cut(ref, "/")
	cert := find(t, kust, "Certificate", certName, nil)
	secretName, _, _ := unstructured.NestedString(cert.Object, "spec", "secretName")
	var mounted string
	for _, v := range kd.Spec.Template.Spec.Volumes {
		if v.Secret != nil {
			mounted = v.Secret.SecretName
		}
	}
	if secretName == "" || secretName != mounted {
		t.Errorf("Certificate %s writes Secret %q, the Deployment mounts %q", certName, secretName, mounted)
	}
	for _, kind := range []string{"ServiceAccount", "PodDisruptionBudget", "ClusterRole", "ClusterRoleBinding"} {
		find(t, kust, kind, "podmeta", nil)
	}
	var kp, cpdb policyv1.PodDisruptionBudget
	find(t, kust, "PodDisruptionBudget", "podmeta", &kp)
	find(t, chart, "PodDisruptionBudget", "podmeta", &cpdb)
	if diff := cmp.Diff(cpdb.Spec, kp.Spec); diff != "" {
		t.Errorf("PodDisruptionBudget differs (-chart +kustomize):\n%s", diff)
	}
	for _, o := range kust {
		if o.GetNamespace() != "" && o.GetNamespace() != "podmeta-system" {
			t.Errorf("%s %s in namespace %s", o.GetKind(), o.GetName(), o.GetNamespace())
		}
	}
}

// config/samples: every example pod, created on the apiserver behind podmeta, gets
// what its comment promises.
func TestChartSamples(t *testing.T) {
	kubectl := filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
	out, err := exec.CommandContext(t.Context(), kubectl, "kustomize", filepath.Join(harness.Root(), "config", "samples")).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize config/samples: %v\n%s", err, out)
	}
	objs, err := decodeObjects(out)
	if err != nil {
		t.Fatal(err)
	}
	nsObj := find(t, objs, "Namespace", "podmeta-demo", nil)
	ns := namespace(t, nsObj.GetLabels(), nsObj.GetAnnotations())
	pods := map[string]*corev1.Pod{}
	for _, o := range objs {
		switch o.GetKind() {
		case "Namespace", "RoleBinding":
			continue
		case "ServiceAccount":
			if _, err := cp.Clientset.CoreV1().ServiceAccounts(ns).Create(t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: o.GetName()}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		case "Pod":
			var p corev1.Pod
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &p); err != nil {
				t.Fatal(err)
			}
			p.Namespace = ""
			pods[p.Name] = create(t, ns, &p)
		default:
			t.Errorf("unexpected sample %s %s", o.GetKind(), o.GetName())
		}
	}
	app := func(p *corev1.Pod) corev1.Container { return p.Spec.Containers[0] }
	check := func(name string, ok bool, what string) {
		t.Helper()
		if !ok {
			t.Errorf("sample %s: %s", name, what)
		}
	}
	p := pods["defaults"]
	check("defaults", injected(p) && len(envNames(app(p))) == 9, "want the nine default env vars")
	check("defaults", qty(app(p).Resources.Requests) == "32Mi", "want the namespace's 32Mi ephemeral-storage request")
	p = pods["env"]
	check("env", slices.Contains(envNames(app(p)), "K8S_POD_NAME") && len(envNames(p.Spec.Containers[1])) == 0, "want K8S_ env in app only")
	p = pods["volume"]
	check("volume", len(envNames(app(p))) == 0 && slices.ContainsFunc(app(p).VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/etc/meta" }), "want the volume at /etc/meta and no env")
	p = pods["ephemeral-storage"]
	check("ephemeral-storage", qty(app(p).Resources.Requests) == "128Mi" && qty(app(p).Resources.Limits) == "1Gi", "want 128Mi / 1Gi")
	p = pods["ambassador"]
	all := append(slices.Clone(p.Spec.InitContainers), p.Spec.Containers...)
	check("ambassador", slices.ContainsFunc(all, func(c corev1.Container) bool { return c.Name == "podmeta-ambassador" }) &&
		slices.ContainsFunc(app(p).Env, func(e corev1.EnvVar) bool { return e.Name == webhook.EnvAPIURL }), "want the ambassador and PODMETA_API_URL")
	check("opt-out-label", !injected(pods["opt-out-label"]), "injected")
	check("opt-out-annotation", !injected(pods["opt-out-annotation"]), "injected")
}

func qty(l corev1.ResourceList) string {
	q := l[corev1.ResourceEphemeralStorage]
	return q.String()
}
