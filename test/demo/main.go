// Command demo is `make demo`: a real local control plane (etcd + kube-apiserver built
// from source), podmeta's real binary behind its shipped webhook configuration, an
// opted-in namespace, and sample pods with a readable account of what each one got, a
// Deployment with a typo denied at apply time and `podmeta doctor` on a pod left alone;
// then the same sample pods in policy mode (docs/policy.md): the webhook gone, the
// policies podmeta policy renders doing the injection inside the apiserver.
// -mode=webhook or -mode=policy runs one mode only. DEMO_KEEP=1 leaves everything
// running (in the last mode shown) and prints a kubeconfig for kubectl.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podmeta/podmeta/policy"
	"github.com/podmeta/podmeta/test/harness"
	"github.com/podmeta/podmeta/webhook"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// warnings records what the apiserver tells the client, as kubectl would print it.
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.list
	w.list = nil
	return out
}

func run(ctx context.Context, out io.Writer) error {
	binary := flag.String("podmeta", filepath.Join(harness.Root(), "bin", "podmeta"), "podmeta binary (make build)")
	mode := flag.String("mode", "both", "webhook, policy or both: which modes inject the sample pods")
	flag.Parse()
	switch *mode {
	case "webhook", "policy", "both":
	default:
		return fmt.Errorf("-mode=%s: want webhook, policy or both", *mode)
	}

	fmt.Fprintln(out, "» starting etcd + kube-apiserver", os.Getenv("KUBEBUILDER_ASSETS"))
	cp, err := harness.Start()
	if err != nil {
		return err
	}
	defer cp.Stop()
	fmt.Fprintln(out, "» starting podmeta webhook (certificates from envtest, failurePolicy Ignore)")
	pm, err := cp.StartPodmeta(ctx, *binary, "--ambassador-image="+demoImage)
	if err != nil {
		return err
	}
	defer pm.Stop()

	ns := "demo"
	fmt.Fprintf(out, "» kubectl label namespace %s %s=enabled\n\n", ns, webhook.LabelInject)
	if err := cp.EnsureNamespace(ctx, ns, map[string]string{webhook.LabelInject: "enabled"}, nil); err != nil {
		return err
	}
	rec := &warnings{}
	cfg := rest.CopyConfig(cp.Config)
	cfg.WarningHandler = rec
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}

	if *mode != "policy" {
		runSamples(ctx, out, cs, rec, ns)
		if err := workloadAndDoctor(ctx, out, cp, cs, rec, *binary, ns); err != nil {
			return err
		}
	}
	if *mode != "webhook" {
		ns = "demo-policy"
		if err := policyMode(ctx, out, cp, pm, ns); err != nil {
			return err
		}
		runSamples(ctx, out, cs, rec, ns)
	}

	if os.Getenv("DEMO_KEEP") == "" {
		fmt.Fprintln(out, "» stopping podmeta and the control plane (DEMO_KEEP=1 keeps them running)")
		return pm.Stop()
	}
	_, kubeconfig, err := cp.UserConfig("demo-admin", "system:masters")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "» running; try:\n    export KUBECONFIG=%s\n    kubectl get pods -n %s -o yaml\n", kubeconfig, ns)
	if *mode == "webhook" {
		fmt.Fprintf(out, "  podmeta metrics: http://%s/metrics\n", pm.MetricsAddr)
	}
	fmt.Fprintln(out, "  Ctrl-C stops everything.")
	<-ctx.Done()
	if err := pm.Stop(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// runSamples creates the sample pods in ns and prints what each got.
func runSamples(ctx context.Context, out io.Writer, cs kubernetes.Interface, rec *warnings, ns string) {
	for _, s := range samples() {
		fmt.Fprintf(out, "━━ %s\n   %s\n", s.pod.Name, s.about)
		for _, k := range slices.Sorted(maps.Keys(s.pod.Annotations)) {
			fmt.Fprintf(out, "   annotation %s: %q\n", k, s.pod.Annotations[k])
		}
		got, err := cs.CoreV1().Pods(ns).Create(ctx, s.pod, metav1.CreateOptions{})
		for _, w := range rec.take() {
			fmt.Fprintf(out, "   Warning: %s\n", w)
		}
		if err != nil {
			fmt.Fprintf(out, "   ✗ rejected: %v\n\n", err)
			continue
		}
		summarize(out, got)
		fmt.Fprintln(out)
	}
}

// policyMode replaces the webhook with the policies podmeta policy renders from the
// same flags, and opts ns in.
func policyMode(ctx context.Context, out io.Writer, cp *harness.ControlPlane, pm *harness.Podmeta, ns string) error {
	fmt.Fprintln(out, "» policy mode: stopping podmeta webhook, kubectl delete mutatingwebhookconfiguration podmeta")
	if err := pm.Stop(); err != nil {
		return err
	}
	api := cp.Clientset.AdmissionregistrationV1()
	if err := api.MutatingWebhookConfigurations().Delete(ctx, "podmeta", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if err := api.ValidatingWebhookConfigurations().Delete(ctx, "podmeta-workloads", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	fmt.Fprintln(out, "» podmeta policy --ambassador-image=ghcr.io/podmeta/ambassador:demo | kubectl apply -f -")
	cfg := webhook.DefaultConfig()
	cfg.AmbassadorImage = demoImage
	pols, err := policy.Render(cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "» kubectl label namespace %s %s=enabled   (no warnings in policy mode: docs/policy.md)\n\n", ns, webhook.LabelInject)
	if err := cp.EnsureNamespace(ctx, ns, map[string]string{webhook.LabelInject: "enabled"}, nil); err != nil {
		return err
	}
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	probe := func(ann map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "probe", Annotations: ann}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "c"}}}}
	}
	return harness.CreatePolicies(ctx, cp, pols.Objects(), func(ctx context.Context) error {
		got, err := cp.Clientset.CoreV1().Pods(ns).Create(ctx, probe(nil), dry)
		if err == nil && got.Annotations[webhook.AnnotationStatus] == "" {
			return errors.New("the MutatingAdmissionPolicy does not inject yet")
		}
		if _, denyErr := cp.Clientset.CoreV1().Pods(ns).Create(ctx, probe(map[string]string{webhook.AnnotationEnv: "NOPE"}), dry); err == nil && denyErr == nil {
			return errors.New("the ValidatingAdmissionPolicy does not deny yet")
		}
		return err
	})
}

// workloadAndDoctor shows what users meet outside the happy path: a Deployment with a
// typo denied at `kubectl apply` (not later, as a FailedCreate on its ReplicaSet), and
// `podmeta doctor` saying why a pod in a namespace that is not opted in got nothing.
func workloadAndDoctor(ctx context.Context, out io.Writer, cp *harness.ControlPlane, cs kubernetes.Interface, rec *warnings, binary, ns string) error {
	typo := map[string]string{webhook.AnnotationEnv: "POD_NAME,POD_IPP"}
	labels := map[string]string{"app": "web"}
	fmt.Fprintf(out, "━━ deployment/web\n   A Deployment with the same typo in its pod template: denied at kubectl apply, where the user looks.\n   template annotation %s: %q\n", webhook.AnnotationEnv, typo[webhook.AnnotationEnv])
	_, err := cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: typo},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/busybox:1.36"}}},
		}},
	}, metav1.CreateOptions{})
	for _, w := range rec.take() {
		fmt.Fprintf(out, "   Warning: %s\n", w)
	}
	if err == nil {
		return errors.New("the Deployment with a typo was accepted: workload validation did not answer")
	}
	fmt.Fprintf(out, "   ✗ rejected: %v\n\n", err)

	const forgotten = "demo-forgotten"
	fmt.Fprintf(out, "━━ pod/web in namespace %s\n   Annotated for injection in a namespace nobody opted in: created untouched. Why? podmeta doctor asks the cluster.\n", forgotten)
	if err := cp.EnsureNamespace(ctx, forgotten, nil, nil); err != nil {
		return err
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Annotations: map[string]string{webhook.AnnotationEnv: "all"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/busybox:1.36"}}}}
	if _, err := cs.CoreV1().Pods(forgotten).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return err
	}
	_, kubeconfig, err := cp.UserConfig("demo-doctor", "system:masters")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "» podmeta doctor -n %s web\n", forgotten)
	doctor := exec.CommandContext(ctx, binary, "doctor", "--kubeconfig", kubeconfig, "-n", forgotten, "web")
	report, err := doctor.CombinedOutput()
	for line := range strings.Lines(string(report)) {
		fmt.Fprint(out, "   ", line)
	}
	if code := doctor.ProcessState.ExitCode(); code != 1 {
		return fmt.Errorf("podmeta doctor on an un-injected pod: exit status %d, want 1 (%w)", code, err)
	}
	fmt.Fprintln(out)
	return nil
}

// demoImage is the ambassador image of both modes.
const demoImage = "ghcr.io/podmeta/ambassador:demo"

type sample struct {
	about string
	pod   *corev1.Pod
}

func samples() []sample {
	app := func(name string, env ...corev1.EnvVar) corev1.Container {
		return corev1.Container{Name: name, Image: "registry.k8s.io/busybox:1.36", Command: []string{"sleep", "3600"}, Env: env}
	}
	withResources := app("client-container", corev1.EnvVar{Name: "ADDR", Value: "$(POD_IP):8080"})
	withResources.Resources = corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("15m"), corev1.ResourceMemory: resource.MustParse("100Ki")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("4Mi")},
	}
	pod := func(name string, ann map[string]string, c ...corev1.Container) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann, Labels: map[string]string{"app": name}}, Spec: corev1.PodSpec{Containers: c}}
	}
	return []sample{
		{"The Downward-API docs example, opted in by its namespace only: the default env vars, the metadata volume, a storage request.",
			pod("downward-api-env", nil, withResources)},
		{"Two env vars and the metadata volume at a path of the pod's choosing; the pod's own POD_IP is kept, with a warning.",
			pod("metadata-volume", map[string]string{webhook.AnnotationEnv: "POD_NAME,POD_IP", webhook.AnnotationVolumePath: "/podinfo"},
				app("app", corev1.EnvVar{Name: "POD_IP", Value: "fixed"}))},
		{"The ambassador sidecar: plain HTTP to the API server on 127.0.0.1:8001, read-only.",
			pod("ambassador", map[string]string{webhook.AnnotationAmbassador: "true", webhook.AnnotationEnv: "POD_NAME,POD_NAMESPACE"}, app("app"))},
		{"Opted out with an annotation: never sent to podmeta (matchConditions).",
			pod("opted-out", map[string]string{webhook.AnnotationInject: "false"}, app("app"))},
		{"A typo in an annotation: denied with a message that says what is valid.",
			pod("invalid", map[string]string{webhook.AnnotationEnv: "POD_NAME,POD_IPP"}, app("app"))},
	}
}

// summarize prints what the stored pod got, read back from the apiserver.
func summarize(out io.Writer, p *corev1.Pod) {
	raw := p.Annotations[webhook.AnnotationStatus]
	if raw == "" {
		fmt.Fprintln(out, "   ✓ created, untouched by podmeta")
		return
	}
	var st webhook.Status
	_ = json.Unmarshal([]byte(raw), &st)
	fmt.Fprintln(out, "   ✓ created; podmeta injected:")
	all := append(slices.Clone(p.Spec.InitContainers), p.Spec.Containers...)
	for _, c := range all {
		if names := st.Env[c.Name]; len(names) > 0 {
			fmt.Fprintf(out, "     env     %-20s %s\n", c.Name, strings.Join(names, " "))
		}
		if q, ok := c.Resources.Requests[corev1.ResourceEphemeralStorage]; ok && st.EphemeralStorage[c.Name] != nil {
			fmt.Fprintf(out, "     storage %-20s ephemeral-storage request %s\n", c.Name, q.String())
		}
	}
	for _, v := range p.Spec.Volumes {
		if v.Name == webhook.VolumeName && st.Volume != "" {
			var files []string
			for _, item := range v.DownwardAPI.Items {
				if !strings.HasPrefix(item.Path, "containers/") {
					files = append(files, item.Path)
				}
			}
			fmt.Fprintf(out, "     volume  %-20s read-only at %s in %s: %s + %d resource files\n",
				v.Name, st.Volume, strings.Join(st.Mounts, ", "), strings.Join(files, " "), len(v.DownwardAPI.Items)-len(files))
		}
	}
	if st.Ambassador != "" {
		c := p.Spec.InitContainers[0]
		fmt.Fprintf(out, "     sidecar %-20s %s (%s), args %s\n", c.Name, st.Ambassador, c.Image, strings.Join(c.Args, " "))
	}
}
