package test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/webhook"
)

// Workload validation (docs/workloads.md) on the real apiserver, behind the shipped
// ValidatingWebhookConfiguration podmeta-workloads: each case is created through
// client-go as `kubectl apply` would, and the test reads the denial or the warnings
// the user sees.

// workloadsPath is what controller-runtime labels the workload webhook's requests with.
const workloadsPath = `controller_runtime_webhook_requests_total{code="200",webhook="/validate-workloads"}`

func testDeployment(name string, templateAnn map[string]string, containers ...corev1.Container) *appsv1.Deployment {
	if len(containers) == 0 {
		containers = []corev1.Container{{Name: "app", Image: "app:1"}}
	}
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: templateAnn},
				Spec:       corev1.PodSpec{Containers: containers},
			},
		},
	}
}

// wantWarning fails unless one of the warnings the client saw contains want.
func wantWarning(t *testing.T, warnings []string, want string) {
	t.Helper()
	for _, w := range warnings {
		if strings.Contains(w, want) {
			return
		}
	}
	t.Errorf("warnings %q lack %q", warnings, want)
}

// podDeniedMessage is what the pod path answers a pod with these annotations, read
// from the apiserver (a dry-run create), to compare the workload's denial with.
func podDeniedMessage(t *testing.T, ns string, ann map[string]string) string {
	t.Helper()
	_, err := cp.Clientset.CoreV1().Pods(ns).Create(t.Context(), pod("probe", ann), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err == nil {
		t.Fatalf("a pod with %v was admitted", ann)
	}
	_, msg, ok := strings.Cut(err.Error(), "denied the request: ")
	if !ok {
		t.Fatalf("pod error %q", err)
	}
	return msg
}

// An invalid annotation in a Deployment's pod template is denied at create, with the
// message its pods would get.
func TestWorkloadInvalidTemplateDenied(t *testing.T) {
	ns := namespace(t, nil, nil)
	bad := map[string]string{webhook.AnnotationEnv: "POD_NAME,POD_IPZ"}
	podMsg := podDeniedMessage(t, ns, bad)
	_, err := cp.Clientset.AppsV1().Deployments(ns).Create(t.Context(), testDeployment("bad", bad), metav1.CreateOptions{})
	if err == nil {
		t.Fatal("Deployment with an invalid template annotation was admitted")
	}
	for _, want := range []string{`admission webhook "workloads.podmeta.io" denied the request`, "podmeta would deny every pod of this Deployment", podMsg, "spec.template.metadata.annotations"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	// The same for a CronJob, whose template is deeper.
	cj := &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Name: "nightly"}, Spec: batchv1.CronJobSpec{Schedule: "@daily",
		JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Annotations: bad},
			Spec:       corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{Name: "job", Image: "job:1"}}},
		}}}}}
	_, err = cp.Clientset.BatchV1().CronJobs(ns).Create(t.Context(), cj, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), podMsg) || !strings.Contains(err.Error(), "spec.jobTemplate.spec.template.metadata.annotations") {
		t.Errorf("CronJob: %v", err)
	}
	// A valid template is admitted without a word.
	cs, rec := clientWithWarnings(t)
	if _, err := cs.AppsV1().Deployments(ns).Create(t.Context(), testDeployment("good", map[string]string{webhook.AnnotationEnv: "POD_NAME"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if w := rec.take(); len(w) != 0 {
		t.Errorf("valid Deployment warned: %q", w)
	}
}

// A ReplicaSet a Deployment controls is only warned: denying it would stick a rollout.
func TestWorkloadControllerOwnedWarned(t *testing.T) {
	ns := namespace(t, nil, nil)
	bad := map[string]string{webhook.AnnotationVolume: "maybe"}
	podMsg := podDeniedMessage(t, ns, bad)
	cs, rec := clientWithWarnings(t)
	owner, err := cs.AppsV1().Deployments(ns).Create(t.Context(), testDeployment("owner", nil), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := testDeployment("owner-abc", bad)
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "owner-abc", OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "apps/v1", Kind: "Deployment", Name: owner.Name, UID: owner.UID, Controller: ptr(true)}}},
		Spec: appsv1.ReplicaSetSpec{Replicas: ptr(int32(1)), Selector: d.Spec.Selector, Template: d.Spec.Template},
	}
	if _, err := cs.AppsV1().ReplicaSets(ns).Create(t.Context(), rs, metav1.CreateOptions{}); err != nil {
		t.Fatalf("a controller-owned ReplicaSet was denied: %v", err)
	}
	w := rec.take()
	wantWarning(t, w, podMsg)
	wantWarning(t, w, "created by Deployment owner: warned, not denied")
}

// A Deployment that was already wrong can still be scaled: an UPDATE that leaves the
// template's podmeta annotations as they were is warned, one that changes them denied.
func TestWorkloadScaleBrokenWarned(t *testing.T) {
	ctx := t.Context()
	ns := namespace(t, map[string]string{}, nil) // not opted in yet: the broken one gets in
	bad := map[string]string{webhook.AnnotationVolume: "maybe"}
	d, err := cp.Clientset.AppsV1().Deployments(ns).Create(ctx, testDeployment("broken", bad), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj, err := cp.Clientset.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj.Labels[webhook.LabelInject] = "enabled"
	if _, err := cp.Clientset.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Once podmeta's namespace cache has the label, a new broken Deployment is denied.
	podMsg := podDeniedMessage(t, ns, bad)
	eventually(t, 10*time.Second, func(ctx context.Context) string {
		_, err := cp.Clientset.AppsV1().Deployments(ns).Create(ctx, testDeployment("probe", bad), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil {
			return "the namespace label has not reached podmeta"
		}
		return ""
	})

	cs, rec := clientWithWarnings(t)
	d.Spec.Replicas = ptr(int32(3))
	if d, err = cs.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("scaling a broken Deployment was denied: %v", err)
	}
	w := rec.take()
	wantWarning(t, w, podMsg)
	wantWarning(t, w, "unchanged by this update: warned, not denied")

	d.Spec.Template.Annotations[webhook.AnnotationVolume] = "perhaps"
	if _, err := cs.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{}); err == nil || !strings.Contains(err.Error(), `podmeta.io/volume="perhaps" is invalid`) {
		t.Errorf("an UPDATE changing the template's podmeta annotations to invalid ones: %v", err)
	}
}

// podmeta annotations on the Deployment's own metadata are warned about, naming the
// path they belong at.
func TestWorkloadMetadataAnnotationsWarned(t *testing.T) {
	ns := namespace(t, nil, nil)
	cs, rec := clientWithWarnings(t)
	d := testDeployment("misplaced", nil)
	d.Annotations = map[string]string{webhook.AnnotationAmbassador: "true"}
	if _, err := cs.AppsV1().Deployments(ns).Create(t.Context(), d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wantWarning(t, rec.take(), "podmeta.io/ambassador on the Deployment's own metadata.annotations is ignored: podmeta reads the pod's annotations; move it to spec.template.metadata.annotations")
}

// A template asking for injection in a namespace that is not opted in is warned about,
// naming the label to add, and not denied even when invalid.
func TestWorkloadNamespaceNotOptedInWarned(t *testing.T) {
	ns := namespace(t, map[string]string{}, nil)
	cs, rec := clientWithWarnings(t)
	if _, err := cs.AppsV1().Deployments(ns).Create(t.Context(), testDeployment("unlabelled", map[string]string{webhook.AnnotationEnv: "bogus"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wantWarning(t, rec.take(), fmt.Sprintf("namespace %s is not opted in", ns))
	// The label it names is the one that opts the namespace in.
	ns2 := namespace(t, map[string]string{}, nil)
	if _, err := cs.AppsV1().StatefulSets(ns2).Create(t.Context(), &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Spec:       appsv1.StatefulSetSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}, Template: testDeployment("db", map[string]string{webhook.AnnotationEnv: "all"}).Spec.Template},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wantWarning(t, rec.take(), "kubectl label namespace "+ns2+" podmeta.io/inject=enabled")
}

// The ambassador next to a kept kubectl proxy (the seeds' luksa/kubectl-proxy, which
// declares no port) is warned about.
func TestWorkloadKubectlProxyWarned(t *testing.T) {
	ns := namespace(t, nil, nil)
	cs, rec := clientWithWarnings(t)
	d := testDeployment("proxied", map[string]string{webhook.AnnotationAmbassador: "true"},
		corev1.Container{Name: "app", Image: "app:1"}, corev1.Container{Name: "ambassador", Image: "luksa/kubectl-proxy:1.6.2"})
	if _, err := cs.AppsV1().Deployments(ns).Create(t.Context(), d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wantWarning(t, rec.take(), `container "ambassador" runs kubectl proxy (image luksa/kubectl-proxy:1.6.2)`)
}

// An object without a podmeta annotation never reaches podmeta (matchConditions): the
// server's request counter does not move for it, and does for one with an annotation.
func TestWorkloadWithoutAnnotationsNeverSent(t *testing.T) {
	ns := namespace(t, nil, nil)
	before := scrape(t)[workloadsPath]
	for i := range 3 {
		d := testDeployment(fmt.Sprintf("plain-%d", i), map[string]string{"example.com/other": "x"})
		d.Annotations = map[string]string{"example.com/owner": "team"}
		if _, err := cp.Clientset.AppsV1().Deployments(ns).Create(t.Context(), d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if got := scrape(t)[workloadsPath] - before; got != 0 {
		t.Errorf("%v workload reviews reached podmeta for Deployments without podmeta annotations", got)
	}
	if _, err := cp.Clientset.AppsV1().Deployments(ns).Create(t.Context(), testDeployment("annotated", map[string]string{webhook.AnnotationEnv: "all"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := scrape(t)[workloadsPath] - before; got != 1 {
		t.Errorf("an annotated Deployment moved the workload requests by %v, want 1 (the control)", got)
	}
}

// --workload-validation=off: the review reaches podmeta, which allows it without a word.
func TestWorkloadValidationOff(t *testing.T) {
	restartPodmeta(t, "--workload-validation=off")
	ns := namespace(t, nil, nil)
	cs, rec := clientWithWarnings(t)
	before := scrape(t)[`podmeta_workload_reviews_total{result="skipped"}`]
	d := testDeployment("bad-but-off", map[string]string{webhook.AnnotationEnv: "bogus"})
	d.Annotations = map[string]string{webhook.AnnotationEnv: "all"}
	if _, err := cs.AppsV1().Deployments(ns).Create(t.Context(), d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("denied with --workload-validation=off: %v", err)
	}
	if w := rec.take(); len(w) != 0 {
		t.Errorf("warnings with --workload-validation=off: %q", w)
	}
	if got := scrape(t)[`podmeta_workload_reviews_total{result="skipped"}`] - before; got != 1 {
		t.Errorf("podmeta_workload_reviews_total{result=\"skipped\"} moved by %v, want 1: the review must have reached podmeta", got)
	}
}

// restartPodmeta restarts the shared podmeta with extra flags for one test, and with
// the usual ones when it ends.
func restartPodmeta(t *testing.T, extra ...string) {
	t.Helper()
	if err := podmeta.Stop(); err != nil {
		t.Fatalf("podmeta did not stop cleanly: %v", err)
	}
	var err error
	if podmeta, err = cp.StartPodmeta(context.Background(), binary, append(append([]string{}, podmetaFlags...), extra...)...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := podmeta.Stop(); err != nil {
			t.Errorf("podmeta did not stop cleanly: %v", err)
		}
		var err error
		if podmeta, err = cp.StartPodmeta(context.Background(), binary, podmetaFlags...); err != nil {
			t.Fatalf("restart podmeta: %v", err)
		}
	})
}

// A denial that needs the ambassador depends on the ServiceAccount, which the template
// cannot show: a Deployment asking for the ambassador next to a container declaring its
// port, with a ServiceAccount that turns automounting off, has pods podmeta admits
// (without the ambassador: no token volume), so the Deployment is admitted with a
// warning, and its pod really is admitted. With automountServiceAccountToken: true on the
// template, every pod gets a token and is denied, and so is the Deployment.
func TestWorkloadDenialThatDependsOnTheServiceAccountWarned(t *testing.T) {
	ns := namespace(t, nil, nil)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "no-automount"}, AutomountServiceAccountToken: ptr(false)}
	if _, err := cp.Clientset.CoreV1().ServiceAccounts(ns).Create(t.Context(), sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ann := map[string]string{webhook.AnnotationAmbassador: "true"}
	d := testDeployment("clash", ann, corev1.Container{Name: "app", Image: "app:1", Ports: []corev1.ContainerPort{{ContainerPort: webhook.DefaultAmbassadorPort}}})
	d.Spec.Template.Spec.ServiceAccountName = sa.Name

	// The pod its ReplicaSet would create is admitted.
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "clash-", Annotations: ann}, Spec: *d.Spec.Template.Spec.DeepCopy()}
	if _, err := cp.Clientset.CoreV1().Pods(ns).Create(t.Context(), p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		t.Fatalf("premise: the pod is admitted when its ServiceAccount turns automounting off: %v", err)
	}
	cs, rec := clientWithWarnings(t)
	if _, err := cs.AppsV1().Deployments(ns).Create(t.Context(), d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("a Deployment whose pods podmeta admits was denied: %v", err)
	}
	w := rec.take()
	wantWarning(t, w, `container "app" already declares port 8001`)
	wantWarning(t, w, "automountServiceAccountToken")

	d = d.DeepCopy()
	d.Name, d.Spec.Template.Spec.AutomountServiceAccountToken = "clash-token", ptr(true)
	_, err := cp.Clientset.AppsV1().Deployments(ns).Create(t.Context(), d, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), `container "app" already declares port 8001`) {
		t.Errorf("automountServiceAccountToken: true on the template: %v, want the pod's denial", err)
	}
}
