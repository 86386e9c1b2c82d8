package test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/podmeta/podmeta/policy"
	"github.com/podmeta/podmeta/test/harness"
	"github.com/podmeta/podmeta/webhook"
)

// policyKinds are the objects of policy mode (templates/policy-mode.yaml).
var policyKinds = []string{"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"}

// With mode=policy, helm template gives exactly the policies `podmeta policy` renders
// from the flags the same values give `podmeta webhook` in mode webhook (the
// Deployment's args), for the chart's defaults and for every value policy mode reads
// set otherwise, apart from the chart's labels and its extra selector expressions.
func TestChartPolicyMatchesRender(t *testing.T) {
	hex := strings.Repeat("ab", 32)
	for _, c := range []struct {
		name   string
		values []string
	}{
		{"defaults", nil},
		{"every-value", []string{
			"defaults.env=all", "defaults.envPrefix=K8S_", "defaults.volumePath=/meta", "defaults.ephemeralStorageRequest=128Mi",
			"defaults.ephemeralStorageLimit=1Gi", "defaults.ambassador=true", "defaults.ambassadorMode=read-write", "defaults.ambassadorPort=9001",
			"defaults.inject=false", "defaults.volume=false", "ambassador.image.repository=registry.example.com/amb", "ambassador.image.tag=v9",
			"ambassador.image.pullPolicy=Always", "ambassador.resources.requests.cpu=10m", "ambassador.resources.limits.cpu=100m",
			"ambassador.allowPrivilegedPaths=true", "webhook.excludedNamespaces={team-a,team-b}",
		}},
		{"digest-no-limits", []string{"ambassador.image.digest=sha256:" + hex, "ambassador.resources.limits=null", "defaults.env=POD_NAME\\,NODE_NAME"}},
		{"selector-expressions", []string{
			"webhook.namespaceSelectorExpressions[0].key=team", "webhook.namespaceSelectorExpressions[0].operator=In", "webhook.namespaceSelectorExpressions[0].values={payments}",
			"webhook.objectSelectorExpressions[0].key=tier", "webhook.objectSelectorExpressions[0].operator=Exists",
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, web := render(t, "podmeta", "podmeta-system", c.values...)
			pols, err := policy.Render(chartConfig(t, web))
			if err != nil {
				t.Fatal(err)
			}
			_, pol := render(t, "podmeta", "podmeta-system", append(slices.Clone(c.values), "mode=policy")...)
			for _, o := range pol {
				if slices.Contains([]string{"Deployment", "Service", "MutatingWebhookConfiguration", "Secret", "PodDisruptionBudget", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}, o.GetKind()) {
					t.Errorf("mode=policy renders %s %s", o.GetKind(), o.GetName())
				}
			}
			nsExtra, objExtra := selectorExtras(t, web)
			for _, want := range pols.Objects() {
				got := find(t, pol, want.GetObjectKind().GroupVersionKind().Kind, want.GetName(), nil)
				if got.GetLabels()["app.kubernetes.io/part-of"] != "podmeta" {
					t.Errorf("%s %s lacks the chart's labels: %v", got.GetKind(), got.GetName(), got.GetLabels())
				}
				got = got.DeepCopy()
				got.SetLabels(nil)
				w := toMap(t, want)
				for _, path := range [][]string{{"spec", "matchConstraints", "namespaceSelector", "matchExpressions"}, {"spec", "matchConstraints", "objectSelector", "matchExpressions"}} {
					exprs, ok, _ := unstructured.NestedSlice(w, path...)
					if !ok {
						continue
					}
					extra := nsExtra
					if path[2] == "objectSelector" {
						extra = objExtra
					}
					if err := unstructured.SetNestedSlice(w, append(exprs, extra...), path...); err != nil {
						t.Fatal(err)
					}
				}
				if diff := cmp.Diff(w, got.Object); diff != "" {
					t.Errorf("%s %s: helm template differs from podmeta policy (-podmeta policy +helm):\n%.3000s", got.GetKind(), got.GetName(), diff)
				}
			}
		})
	}
}

// selectorExtras are the chart's extra namespace and object selector expressions, as its
// webhook configuration has them after the shipped ones.
func selectorExtras(t *testing.T, objs []*unstructured.Unstructured) (ns, obj []any) {
	t.Helper()
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	find(t, objs, "MutatingWebhookConfiguration", "", &mwc)
	for _, e := range mwc.Webhooks[0].NamespaceSelector.MatchExpressions[2:] {
		ns = append(ns, toMap(t, e))
	}
	for _, e := range mwc.Webhooks[0].ObjectSelector.MatchExpressions[1:] {
		obj = append(obj, toMap(t, e))
	}
	return ns, obj
}

func toMap(t *testing.T, v any) map[string]any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// The schema refuses, in policy mode, what the policies cannot honour or carry.
func TestChartPolicySchema(t *testing.T) {
	for _, values := range [][]string{
		{"mode=sidecar"},
		{"mode=policy", "webhook.failurePolicy=Fail"},
		{"mode=policy", "webhook.reinvocationPolicy=Never"},
		{"mode=policy", "webhook.maxPatchBytes=2000000"},
		{"mode=policy", "ambassador.nativeSidecar=never"},
		{"mode=policy", `defaults.volumePath=/a"b`},
		{"mode=policy", "ambassador.image.tag=v1'x"},
	} {
		if _, err := helmOffline(t).Template(t.Context(), "podmeta", "podmeta-system", values...); err == nil {
			t.Errorf("helm template %v: accepted", values)
		}
	}
	for _, values := range [][]string{{"webhook.failurePolicy=Fail"}, {"mode=webhook", `defaults.volumePath=/a"b`}} {
		if _, err := helmOffline(t).Template(t.Context(), "podmeta", "podmeta-system", values...); err != nil {
			t.Errorf("helm template %v (webhook mode): %v", values, err)
		}
	}
}

// helm install with mode=policy on the real apiserver: the release holds the policies
// (and the safety net) and nothing of the webhook server, and a pod in an opted-in
// namespace is injected by them. The pod goes to podmeta-system, which the suite's own
// webhook never serves (its shipped configuration excludes it), so only the chart's
// policies can inject it.
func TestChartPolicyInstall(t *testing.T) {
	h, err := cp.Helm()
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	const release = "chart-policy"
	args := []string{"install", release, harness.ChartDir(), "--namespace", release, "--create-namespace",
		"--set", "mode=policy",
		"--set", "webhook.namespaceSelectorExpressions[0].key=" + chartTestLabel,
		"--set", "webhook.namespaceSelectorExpressions[0].operator=In",
		"--set", "webhook.namespaceSelectorExpressions[0].values={" + release + "}",
		"--set", "defaults.env=POD_NAME\\,NODE_NAME",
	}
	if _, err := h.Run(ctx, args...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Run(context.Background(), "uninstall", release, "--namespace", release) })

	objs := releaseObjects(ctx, t, h, release, release)
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.GetKind()]++
	}
	for _, k := range policyKinds {
		if kinds[k] == 0 {
			t.Errorf("the release has no %s", k)
		}
	}
	for k := range kinds {
		if !slices.Contains(policyKinds, k) {
			t.Errorf("mode=policy installs a %s", k)
		}
	}
	// Nothing of the server exists.
	api := cp.Clientset
	if ds, err := api.AppsV1().Deployments(release).List(ctx, metav1.ListOptions{}); err != nil || len(ds.Items) > 0 {
		t.Errorf("deployments in %s: %v %v", release, ds, err)
	}
	if ss, err := api.CoreV1().Services(release).List(ctx, metav1.ListOptions{}); err != nil || len(ss.Items) > 0 {
		t.Errorf("services in %s: %v", release, err)
	}
	if _, err := api.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, release+"-podmeta", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("MutatingWebhookConfiguration %s-podmeta: %v", release, err)
	}

	// podmeta-system, opted in for this release only.
	const ns = "podmeta-system"
	if err := cp.EnsureNamespace(ctx, ns, nil, nil); err != nil {
		t.Fatal(err)
	}
	setLabels := func(labels map[string]any) {
		b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
		if _, err := api.CoreV1().Namespaces().Patch(context.Background(), ns, "application/merge-patch+json", b, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setLabels(map[string]any{webhook.LabelInject: "enabled", chartTestLabel: release})
	t.Cleanup(func() { setLabels(map[string]any{webhook.LabelInject: nil, chartTestLabel: nil}) })

	var got *corev1.Pod
	eventually(t, 30*time.Second, func(ctx context.Context) string {
		name := "policy-chart-" + strings.ReplaceAll(time.Now().Format("150405.000000"), ".", "")
		got, err = api.CoreV1().Pods(ns).Create(ctx, pod(name, nil), metav1.CreateOptions{})
		if err != nil {
			return err.Error()
		}
		defer api.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
		if !injected(got) {
			return "the chart's MutatingAdmissionPolicy does not inject yet"
		}
		return ""
	})
	if names := envNames(got.Spec.Containers[0]); !slices.Equal(names, []string{"POD_NAME", "NODE_NAME"}) {
		t.Errorf("env %v, want defaults.env's POD_NAME, NODE_NAME", names)
	}
	if !slices.ContainsFunc(got.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == webhook.VolumeName }) {
		t.Error("no metadata volume")
	}
	// An invalid annotation is denied by the chart's ValidatingAdmissionPolicy.
	eventually(t, 30*time.Second, func(ctx context.Context) string {
		_, err := api.CoreV1().Pods(ns).Create(ctx, pod("invalid", map[string]string{webhook.AnnotationEnv: "NOPE"}), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil || !strings.Contains(err.Error(), "NOPE") {
			return "not denied yet: " + errString(err)
		}
		return ""
	})
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
