package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
)

// optedIn and notOptedIn are the namespaces of the workload tests.
var testNamespaces = map[string]map[string]string{
	"opted-in":     {LabelInject: "enabled"},
	"not-opted-in": {},
}

func testValidator(t testing.TB, mode string) *WorkloadValidator {
	t.Helper()
	return &WorkloadValidator{
		Injector: testInjector(t),
		Mode:     mode,
		Namespaces: func(_ context.Context, ns string) (map[string]string, map[string]string) {
			return testNamespaces[ns], nil
		},
		Metrics: NewWorkloadMetrics(prometheus.NewRegistry()),
	}
}

// deployment is a Deployment whose pod template has annotations ann.
func deployment(ann map[string]string, containers ...corev1.Container) *appsv1.Deployment {
	if len(containers) == 0 {
		containers = []corev1.Container{{Name: "app", Image: "app:1"}}
	}
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Annotations: ann},
			Spec:       corev1.PodSpec{Containers: containers},
		}},
	}
}

// workloadReviewJSON is the AdmissionReview the apiserver sends for obj.
func workloadReviewJSON(t testing.TB, op, ns string, obj, old runtime.Object) []byte {
	t.Helper()
	gvk := obj.GetObjectKind().GroupVersionKind()
	raw := func(o runtime.Object) runtime.RawExtension {
		if o == nil {
			return runtime.RawExtension{}
		}
		b, err := json.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		return runtime.RawExtension{Raw: b}
	}
	rev := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       "uid-1",
			Kind:      metav1.GroupVersionKind{Group: gvk.Group, Version: gvk.Version, Kind: gvk.Kind},
			Namespace: ns, Name: "web", Operation: admissionv1.Operation(op),
			Object: raw(obj), OldObject: raw(old),
		},
	}
	b, err := json.Marshal(rev)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reviewWorkload serves one workload review through the HTTP handler.
func reviewWorkload(t *testing.T, v *WorkloadValidator, body []byte) response {
	t.Helper()
	h := &Handler{Injector: v.Injector, Log: logr.Discard()}
	r := httptest.NewRequest(http.MethodPost, "/validate-workloads", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.Workloads(v).ServeHTTP(w, r)
	if w.Code != http.StatusOK {
		t.Fatalf("HTTP %d: %s", w.Code, w.Body)
	}
	var rr reviewResponse
	if err := json.Unmarshal(w.Body.Bytes(), &rr); err != nil {
		t.Fatal(err)
	}
	if rr.Response.UID != "uid-1" || rr.Response.Patch != nil {
		t.Fatalf("response %+v: want uid-1 and no patch", rr.Response)
	}
	return rr.Response
}

func hasWarning(ws []string, want string) bool {
	for _, w := range ws {
		if strings.Contains(w, want) {
			return true
		}
	}
	return false
}

// The message a pod gets for the same annotations, from the pod path itself.
func podDenial(t *testing.T, ann map[string]string) string {
	t.Helper()
	p := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "p", Annotations: ann},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}}}
	raw, _ := json.Marshal(p)
	_, err := testInjector(t).PlanPod(raw, "opted-in", nil)
	if !IsDenied(err) {
		t.Fatalf("pod with %v not denied: %v", ann, err)
	}
	return err.Error()
}

func TestWorkloadInvalidTemplateDenied(t *testing.T) {
	bad := map[string]string{AnnotationEnv: "POD_NAME,POD_IPZ"}
	want := podDenial(t, bad)
	v := testValidator(t, "")
	r := reviewWorkload(t, v, workloadReviewJSON(t, "CREATE", "opted-in", deployment(bad), nil))
	if r.Allowed || r.Status == nil || !strings.Contains(r.Status.Message, want) || !strings.Contains(r.Status.Message, "spec.template.metadata.annotations") {
		t.Fatalf("got allowed=%v status %+v; want denied with %q", r.Allowed, r.Status, want)
	}
	if got := testutil.ToFloat64(v.Metrics.Reviews.WithLabelValues(WorkloadDenied)); got != 1 {
		t.Errorf("denied counted %v times", got)
	}

	// A CronJob's template is deeper, and its message says where.
	cj := &batchv1.CronJob{
		TypeMeta:   metav1.TypeMeta{APIVersion: "batch/v1", Kind: "CronJob"},
		ObjectMeta: metav1.ObjectMeta{Name: "nightly"},
		Spec: batchv1.CronJobSpec{Schedule: "@daily", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Annotations: bad},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "job", Image: "job:1"}}},
		}}}},
	}
	r = reviewWorkload(t, v, workloadReviewJSON(t, "CREATE", "opted-in", cj, nil))
	if r.Allowed || !strings.Contains(r.Status.Message, want) || !strings.Contains(r.Status.Message, "spec.jobTemplate.spec.template.metadata.annotations") {
		t.Fatalf("CronJob: got allowed=%v status %+v", r.Allowed, r.Status)
	}

	// An ambassador port a container already declares, on a template that mounts a token
	// whatever its ServiceAccount says: the pod's denial too (without
	// automountServiceAccountToken, a warning: TestWorkloadDenialThatDependsOnTheServiceAccountIsAWarning).
	clash := deployment(map[string]string{AnnotationAmbassador: "true"},
		corev1.Container{Name: "app", Image: "app:1", Ports: []corev1.ContainerPort{{ContainerPort: 8001}}})
	clash.Spec.Template.Spec.AutomountServiceAccountToken = ptrTo(true)
	r = reviewWorkload(t, v, workloadReviewJSON(t, "CREATE", "opted-in", clash, nil))
	if r.Allowed || !strings.Contains(r.Status.Message, `container "app" already declares port 8001`) {
		t.Fatalf("port clash: got allowed=%v status %+v", r.Allowed, r.Status)
	}
}

func TestWorkloadValidTemplateAllowed(t *testing.T) {
	v := testValidator(t, "")
	r := reviewWorkload(t, v, workloadReviewJSON(t, "CREATE", "opted-in", deployment(map[string]string{AnnotationEnv: "POD_NAME"}), nil))
	if !r.Allowed || len(r.Warnings) != 0 {
		t.Fatalf("got allowed=%v warnings %q", r.Allowed, r.Warnings)
	}
	if got := testutil.ToFloat64(v.Metrics.Reviews.WithLabelValues(WorkloadAllowed)); got != 1 {
		t.Errorf("allowed counted %v times", got)
	}
}

// Warned, never denied: a controller's object, an UPDATE that leaves the template's
// podmeta annotations as they were, and --workload-validation=warn.
func TestWorkloadWarnedNotDenied(t *testing.T) {
	bad := map[string]string{AnnotationVolume: "maybe"}
	want := podDenial(t, bad)
	rs := &appsv1.ReplicaSet{
		TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "ReplicaSet"},
		ObjectMeta: metav1.ObjectMeta{Name: "web-abc", OwnerReferences: []metav1.OwnerReference{
			{APIVersion: "apps/v1", Kind: "Deployment", Name: "web", UID: "u", Controller: ptrTo(true)}}},
		Spec: appsv1.ReplicaSetSpec{Template: deployment(bad).Spec.Template},
	}
	scaled := deployment(bad)
	scaled.Spec.Replicas = ptrTo(int32(5))
	changed := deployment(map[string]string{AnnotationVolume: "perhaps"})
	for _, c := range []struct {
		name, mode, op string
		obj, old       runtime.Object
		deny           bool
		note           string
	}{
		{"controller-owned", "", "CREATE", rs, nil, false, "created by Deployment web"},
		{"scale only", "", "UPDATE", scaled, deployment(bad), false, "unchanged by this update"},
		{"annotations changed", "", "UPDATE", changed, deployment(bad), true, ""},
		{"warn mode", WorkloadValidationWarn, "CREATE", deployment(bad), nil, false, "--workload-validation=warn"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := reviewWorkload(t, testValidator(t, c.mode), workloadReviewJSON(t, c.op, "opted-in", c.obj, c.old))
			if c.deny {
				if r.Allowed {
					t.Fatalf("allowed with warnings %q, want denied", r.Warnings)
				}
				return
			}
			if !r.Allowed || !hasWarning(r.Warnings, want) || !hasWarning(r.Warnings, c.note) {
				t.Fatalf("got allowed=%v status %+v warnings %q; want allowed, warned %q and %q", r.Allowed, r.Status, r.Warnings, want, c.note)
			}
		})
	}
}

func TestWorkloadMetadataAnnotationsWarned(t *testing.T) {
	d := deployment(nil)
	d.Annotations = map[string]string{AnnotationAmbassador: "true", AnnotationEnv: "all", "other": "x"}
	r := reviewWorkload(t, testValidator(t, ""), workloadReviewJSON(t, "CREATE", "opted-in", d, nil))
	want := "podmeta.io/ambassador, podmeta.io/env on the Deployment's own metadata.annotations are ignored"
	if !r.Allowed || !hasWarning(r.Warnings, want) || !hasWarning(r.Warnings, "move them to spec.template.metadata.annotations") {
		t.Fatalf("got allowed=%v warnings %q", r.Allowed, r.Warnings)
	}
	cj := &batchv1.CronJob{TypeMeta: metav1.TypeMeta{APIVersion: "batch/v1", Kind: "CronJob"},
		ObjectMeta: metav1.ObjectMeta{Name: "c", Annotations: map[string]string{AnnotationEnv: "all"}}}
	r = reviewWorkload(t, testValidator(t, ""), workloadReviewJSON(t, "CREATE", "opted-in", cj, nil))
	if !hasWarning(r.Warnings, "move it to spec.jobTemplate.spec.template.metadata.annotations") {
		t.Fatalf("CronJob: warnings %q", r.Warnings)
	}
}

func TestWorkloadNamespaceNotOptedIn(t *testing.T) {
	// Invalid, but no pod of it reaches podmeta: a warning naming the label, no denial.
	r := reviewWorkload(t, testValidator(t, ""), workloadReviewJSON(t, "CREATE", "not-opted-in", deployment(map[string]string{AnnotationEnv: "bogus"}), nil))
	if !r.Allowed || !hasWarning(r.Warnings, "kubectl label namespace not-opted-in podmeta.io/inject=enabled") {
		t.Fatalf("got allowed=%v warnings %q", r.Allowed, r.Warnings)
	}
	// An opted-out template asks for nothing: no warning.
	r = reviewWorkload(t, testValidator(t, ""), workloadReviewJSON(t, "CREATE", "not-opted-in", deployment(map[string]string{AnnotationInject: "false"}), nil))
	if !r.Allowed || len(r.Warnings) != 0 {
		t.Fatalf("opted out: got allowed=%v warnings %q", r.Allowed, r.Warnings)
	}
}

func TestWorkloadKubectlProxyWarned(t *testing.T) {
	amb := map[string]string{AnnotationAmbassador: "true"}
	for _, c := range []struct {
		container corev1.Container
		warned    bool
	}{
		{corev1.Container{Name: "proxy", Image: "luksa/kubectl-proxy:1.6.2"}, true},
		{corev1.Container{Name: "proxy", Image: "docker.io/luksa/kubectl-proxy@sha256:abc"}, true},
		{corev1.Container{Name: "proxy", Image: "bitnami/kubectl:1.31", Args: []string{"proxy", "--port=8001"}}, true},
		{corev1.Container{Name: "tool", Image: "bitnami/kubectl:1.31", Args: []string{"get", "pods"}}, false},
		{corev1.Container{Name: "app", Image: "registry.example.com:5000/app:1"}, false},
	} {
		t.Run(c.container.Image, func(t *testing.T) {
			d := deployment(amb, corev1.Container{Name: "main", Image: "main:1"}, c.container)
			r := reviewWorkload(t, testValidator(t, ""), workloadReviewJSON(t, "CREATE", "opted-in", d, nil))
			got := hasWarning(r.Warnings, fmt.Sprintf("container %q runs kubectl proxy", c.container.Name))
			if !r.Allowed || got != c.warned {
				t.Fatalf("allowed=%v warnings %q; want warned=%v", r.Allowed, r.Warnings, c.warned)
			}
		})
	}
	// Without the ambassador, a kubectl proxy is the user's business.
	d := deployment(nil, corev1.Container{Name: "proxy", Image: "luksa/kubectl-proxy:1.6.2"})
	d.Spec.Template.Annotations = map[string]string{AnnotationEnv: "all"}
	if r := reviewWorkload(t, testValidator(t, ""), workloadReviewJSON(t, "CREATE", "opted-in", d, nil)); len(r.Warnings) != 0 {
		t.Fatalf("warnings %q without the ambassador", r.Warnings)
	}
}

func TestWorkloadValidationOff(t *testing.T) {
	v := testValidator(t, WorkloadValidationOff)
	d := deployment(map[string]string{AnnotationEnv: "bogus"})
	d.Annotations = map[string]string{AnnotationEnv: "all"}
	r := reviewWorkload(t, v, workloadReviewJSON(t, "CREATE", "not-opted-in", d, nil))
	if !r.Allowed || len(r.Warnings) != 0 {
		t.Fatalf("off: got allowed=%v warnings %q", r.Allowed, r.Warnings)
	}
	if got := testutil.ToFloat64(v.Metrics.Reviews.WithLabelValues(WorkloadSkipped)); got != 1 {
		t.Errorf("skipped counted %v times", got)
	}
}

// Hostile input is bounded: thousands of podmeta keys on the object and proxies in the
// template still give at most MaxWarnings warnings within MaxWarningBytes.
func TestWorkloadWarningsBounded(t *testing.T) {
	d := deployment(map[string]string{AnnotationAmbassador: "true"})
	d.Annotations = map[string]string{}
	for i := range 5000 {
		d.Annotations[fmt.Sprintf("%sk%05d", Prefix, i)] = "x"
	}
	for i := range 100 {
		d.Spec.Template.Spec.Containers = append(d.Spec.Template.Spec.Containers, corev1.Container{Name: fmt.Sprintf("p%d", i), Image: "luksa/kubectl-proxy"})
	}
	r := reviewWorkload(t, testValidator(t, ""), workloadReviewJSON(t, "CREATE", "opted-in", d, nil))
	total := 0
	for _, w := range r.Warnings {
		total += len(w)
	}
	if !r.Allowed || len(r.Warnings) > MaxWarnings+1 || total > MaxWarningBytes+100 || !hasWarning(r.Warnings, "and 4995 more") {
		t.Fatalf("allowed=%v: %d warnings, %d bytes: %q", r.Allowed, len(r.Warnings), total, r.Warnings[:min(3, len(r.Warnings))])
	}
}

// Not a review, or not a workload: the same HTTP answers as the pod path.
func TestWorkloadNotAWorkload(t *testing.T) {
	v := testValidator(t, "")
	p := &corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"}, ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{AnnotationEnv: "x"}}}
	if r := reviewWorkload(t, v, workloadReviewJSON(t, "CREATE", "opted-in", p, nil)); !r.Allowed || len(r.Warnings) != 0 {
		t.Fatalf("ConfigMap: %+v", r)
	}
	h := &Handler{Injector: v.Injector, Log: logr.Discard()}
	req := httptest.NewRequest(http.MethodPost, "/validate-workloads", strings.NewReader(`{"kind":"AdmissionReview"`))
	req.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.Workloads(v).ServeHTTP(w, req)
	if w.Code != http.StatusBadRequest {
		t.Fatalf("truncated review: HTTP %d %s", w.Code, w.Body)
	}
}

func ptrTo[T any](v T) *T { return &v }

// FuzzWorkloadHandler sends arbitrary template annotations, object annotations and
// bytes to /validate-workloads: never a panic (HTTP 500), and never a denial for a
// controller's object.
func FuzzWorkloadHandler(f *testing.F) {
	f.Add(uint8(0), "POD_IPZ", "true", []byte(nil))
	f.Add(uint8(3), "8001", "", []byte(`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"u","kind":{"group":"apps","kind":"Deployment"},"operation":"CREATE","object":{"spec":{"template":7}}}}`))
	v := testValidator(f, "")
	keys := fuzzKeys
	f.Fuzz(func(t *testing.T, key uint8, value, metaValue string, raw []byte) {
		h := &Handler{Injector: v.Injector, Log: logr.Discard()}
		body := raw
		owned := false
		if len(raw) == 0 {
			d := deployment(map[string]string{keys[int(key)%len(keys)]: value})
			d.Annotations = map[string]string{AnnotationEnv: metaValue}
			var obj runtime.Object = d
			if key%2 == 1 {
				owned = true
				obj = &appsv1.ReplicaSet{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "ReplicaSet"},
					ObjectMeta: metav1.ObjectMeta{Name: "rs", OwnerReferences: []metav1.OwnerReference{{Kind: "Deployment", Name: "web", Controller: ptrTo(true)}}},
					Spec:       appsv1.ReplicaSetSpec{Template: d.Spec.Template}}
			}
			body = workloadReviewJSON(t, "CREATE", "opted-in", obj, nil)
		}
		r := httptest.NewRequest(http.MethodPost, "/validate-workloads", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.Workloads(v).ServeHTTP(w, r)
		if w.Code >= 500 {
			t.Fatalf("HTTP %d: %s", w.Code, w.Body)
		}
		if owned && w.Code == http.StatusOK && strings.Contains(w.Body.String(), `"allowed":false`) {
			t.Fatalf("a controller's ReplicaSet was denied: %s", w.Body)
		}
	})
}

// podPathAdmits plans d's template as the pod the apiserver would send podmeta: with a
// ServiceAccount token volume when withToken, without one when the ServiceAccount turns
// automounting off. It reports whether the pod path admits it.
func podPathAdmits(t *testing.T, d *appsv1.Deployment, withToken bool) bool {
	t.Helper()
	pod := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{GenerateName: "web-", Annotations: d.Spec.Template.Annotations},
		Spec:       *d.Spec.Template.Spec.DeepCopy()}
	if withToken {
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: "kube-api-access-x", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}})
	}
	raw, _ := json.Marshal(pod)
	view, err := decodePod(raw)
	if err != nil {
		t.Fatal(err)
	}
	_, err = testInjector(t).plan(view, "opted-in", nil, true)
	return err == nil
}

// A denial that depends on the ServiceAccount is not the template's to get: an
// ambassador asked for next to a container declaring its port is denied on the pod only
// when the pod gets a token volume, which the ServiceAccount admission plugin adds
// unless the ServiceAccount turns automounting off. Without
// automountServiceAccountToken on the template, a deny would refuse a Deployment whose
// pods podmeta admits (without the ambassador): only a warning. With it true, every pod
// is denied, and so is the workload.
func TestWorkloadDenialThatDependsOnTheServiceAccountIsAWarning(t *testing.T) {
	ann := map[string]string{AnnotationAmbassador: "true"}
	d := deployment(ann, corev1.Container{Name: "app", Image: "app:1", Ports: []corev1.ContainerPort{{ContainerPort: DefaultAmbassadorPort}}})
	d.Spec.Template.Spec.ServiceAccountName = "no-automount"
	if !podPathAdmits(t, d, false) || podPathAdmits(t, d, true) {
		t.Fatal("premise: the pod path admits the pod without a token volume and denies it with one")
	}
	r := reviewWorkload(t, testValidator(t, ""), workloadReviewJSON(t, "CREATE", "opted-in", d, nil))
	if !r.Allowed || !hasWarning(r.Warnings, "already declares port 8001") || !hasWarning(r.Warnings, "automountServiceAccountToken") {
		t.Fatalf("no automountServiceAccountToken on the template: allowed=%v %+v warnings %q; want allowed with a warning naming the port and the ServiceAccount", r.Allowed, r.Status, r.Warnings)
	}

	d.Spec.Template.Spec.AutomountServiceAccountToken = ptrTo(true) // the plugin adds the token whatever the ServiceAccount says
	if podPathAdmits(t, d, true) {
		t.Fatal("premise: the pod path denies it")
	}
	r = reviewWorkload(t, testValidator(t, ""), workloadReviewJSON(t, "CREATE", "opted-in", d, nil))
	if r.Allowed || !strings.Contains(r.Status.Message, "already declares port 8001") {
		t.Fatalf("automountServiceAccountToken: true: allowed=%v %+v; want the pod's denial", r.Allowed, r.Status)
	}
}

// Many kubectl proxies next to the ambassador are one warning naming some and counting
// the rest, not a warning built for each (2,000 containers built 2,000 warnings before
// the cap dropped all but 20).
func TestWorkloadKubectlProxiesOneWarning(t *testing.T) {
	d := deployment(map[string]string{AnnotationAmbassador: "true", AnnotationContainers: "p0"})
	d.Spec.Template.Spec.Containers = nil
	for i := range 2000 {
		d.Spec.Template.Spec.Containers = append(d.Spec.Template.Spec.Containers, corev1.Container{Name: fmt.Sprintf("p%d", i), Image: "luksa/kubectl-proxy"})
	}
	r := reviewWorkload(t, testValidator(t, ""), workloadReviewJSON(t, "CREATE", "opted-in", d, nil))
	n := 0
	for _, w := range r.Warnings {
		if strings.Contains(w, "run kubectl proxy") || strings.Contains(w, "runs kubectl proxy") {
			n++
			if !strings.Contains(w, "and 1995 more") {
				t.Errorf("warning %q does not count the other proxies", w)
			}
		}
	}
	if !r.Allowed || n != 1 {
		t.Fatalf("allowed=%v, %d kubectl proxy warnings, want 1: %q", r.Allowed, n, r.Warnings)
	}
}

// What the request names is clipped before it is logged: a denial's log line does not
// carry a megabyte name or namespace.
func TestWorkloadLogBounded(t *testing.T) {
	var lines []string
	log := funcr.New(func(prefix, args string) { lines = append(lines, args) }, funcr.Options{})
	v := testValidator(t, "")
	big := strings.Repeat("n", 1<<20)
	body := workloadReviewJSON(t, "CREATE", "opted-in", deployment(map[string]string{AnnotationEnv: "BOGUS"}), nil)
	body = bytes.Replace(body, []byte(`"name":"web","namespace"`), []byte(`"name":"`+big+`","namespace"`), 1)
	body = bytes.Replace(body, []byte(`"uid":"uid-1"`), []byte(`"uid":"`+big+`"`), 1)
	h := &Handler{Injector: v.Injector, Log: log}
	r := httptest.NewRequest(http.MethodPost, "/validate-workloads", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.Workloads(v).ServeHTTP(w, r)
	if !strings.Contains(w.Body.String(), `"allowed":false`) || len(lines) == 0 {
		t.Fatalf("HTTP %d %.300s; %d log lines", w.Code, w.Body, len(lines))
	}
	for _, l := range lines {
		if len(l) > 4<<10 {
			t.Errorf("log line of %d bytes: %.200s", len(l), l)
		}
	}
}

// A namespace podmeta's cache does not know (yet, or the wait for it was over its
// bound) is not "not opted in": every namespace carries kubernetes.io/metadata.name, so
// no labels at all means unknown. The template is not judged: no denial, and a warning
// that says so instead of telling the user to add a label the namespace may have.
func TestWorkloadNamespaceUnknown(t *testing.T) {
	v := testValidator(t, "")
	v.Namespaces = func(context.Context, string) (map[string]string, map[string]string) { return nil, nil }
	r := reviewWorkload(t, v, workloadReviewJSON(t, "CREATE", "just-created", deployment(map[string]string{AnnotationEnv: "bogus"}), nil))
	if !r.Allowed || hasWarning(r.Warnings, "kubectl label namespace") || !hasWarning(r.Warnings, "namespace just-created is not in podmeta's cache") {
		t.Fatalf("got allowed=%v warnings %q", r.Allowed, r.Warnings)
	}
}

// A template the MutatingWebhookConfiguration's objectSelector does not select (the
// chart's webhook.objectSelectorExpressions) has pods podmeta never sees: it is not
// denied, and the warning names the selector.
func TestWorkloadPodSelector(t *testing.T) {
	sel, err := labels.Parse("tier in (web)")
	if err != nil {
		t.Fatal(err)
	}
	v := testValidator(t, "")
	v.PodSelector = sel
	d := deployment(map[string]string{AnnotationEnv: "bogus"})
	d.Spec.Template.Labels = map[string]string{"tier": "db"}
	r := reviewWorkload(t, v, workloadReviewJSON(t, "CREATE", "opted-in", d, nil))
	if !r.Allowed || !hasWarning(r.Warnings, "tier in (web)") {
		t.Fatalf("not selected: allowed=%v %+v warnings %q", r.Allowed, r.Status, r.Warnings)
	}
	d.Spec.Template.Labels["tier"] = "web"
	if r := reviewWorkload(t, v, workloadReviewJSON(t, "CREATE", "opted-in", d, nil)); r.Allowed {
		t.Fatalf("selected: allowed, warnings %q", r.Warnings)
	}
}
