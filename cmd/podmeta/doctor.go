package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podmeta/podmeta/webhook"
)

// podmeta doctor: why is (or isn't) this pod injected, asked of the cluster of the current
// kubeconfig. doctor.go reads the flags and the target and writes the checklist;
// doctor_checks.go has the verdicts and the checks every installation shares; an
// installation (doctor_webhook.go, doctor_policy.go) checks itself.

// Exit statuses of podmeta doctor.
const (
	doctorInjected    = 0 // the pod is (or would be) injected and no check failed
	doctorNotInjected = 1 // it is not, or a check failed
	doctorError       = 2 // doctor could not find out (flags, cluster, object)
)

// exitStatus is an error that sets the process's exit status; main exits with code after
// printing err, if any. Commands whose status means more than "failed" return it.
type exitStatus struct {
	code int
	err  error
}

func (e *exitStatus) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitStatus) Unwrap() error { return e.err }

// doctorFailed is a doctor error: exit status 2.
func doctorFailed(format string, args ...any) error {
	return &exitStatus{code: doctorError, err: fmt.Errorf(format, args...)}
}

// doctorOptions are doctor's flags.
type doctorOptions struct {
	namespace, manifest, output string
	kubeconfig, context         string
	certSecret                  string // override: the serving certificate's Secret (namespace/name or name)
	webhookConfig, policyName   string
}

// target is what doctor looks at: an existing pod, or the pod a manifest or a workload
// would create.
type target struct {
	desc      string // pod/web, deployment/web, or the manifest's object
	namespace string // a manifest object's metadata.namespace
	existing  bool   // a pod in the cluster (no dry-run: its record is read)
	pod       *corev1.Pod
	// ownMeta are the podmeta.io/ annotations on a workload's own metadata (not its
	// template), which podmeta never reads.
	ownMeta  []string
	kind     string
	template string // where the pod's annotations belong, for a workload
}

func runDoctor(ctx context.Context, args []string, s streams) error {
	o := doctorOptions{webhookConfig: "podmeta", policyName: "podmeta"}
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	fs.SetOutput(s.err)
	fs.StringVar(&o.namespace, "n", "", "the namespace (default: the kubeconfig context's)")
	fs.StringVar(&o.namespace, "namespace", "", "the namespace (default: the kubeconfig context's)")
	fs.StringVar(&o.manifest, "f", "", "a manifest with one Pod or workload (- for standard input), dry-run created in the namespace")
	fs.StringVar(&o.output, "o", "text", "output: text or json")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG, then ~/.kube/config)")
	fs.StringVar(&o.context, "context", "", "kubeconfig context (default: the current one)")
	fs.StringVar(&o.certSecret, "cert-secret", "", "the serving certificate's Secret, NAMESPACE/NAME or NAME in the webhook Service's namespace (default: from podmeta's Deployment, else podmeta-webhook-tls)")
	fs.StringVar(&o.webhookConfig, "webhook-config-name", o.webhookConfig, "podmeta's MutatingWebhookConfiguration")
	fs.StringVar(&o.policyName, "policy-name", o.policyName, "policy mode's MutatingAdmissionPolicy (its ValidatingAdmissionPolicy is NAME-annotations)")
	fs.Usage = func() {
		fmt.Fprintf(s.err, "usage: %s doctor [-n NAMESPACE] (POD | KIND/NAME | -f MANIFEST) [-o json] [--kubeconfig FILE] [--context NAME]\n\n"+
			"Checks, against the cluster, why a pod is or is not injected: a checklist of verdicts (ok, warn, fail),\n"+
			"each with a fix. Exit status 0: injected; 1: not injected or a check failed; 2: doctor could not tell.\n\n", programName())
		fs.PrintDefaults()
	}
	// Flags may come before or after the object, as kubectl takes them.
	var objects []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return &exitStatus{code: doctorError}
		}
		if fs.NArg() == 0 {
			break
		}
		objects, rest = append(objects, fs.Arg(0)), fs.Args()[1:]
	}
	if o.output != "text" && o.output != "json" {
		return doctorFailed("-o %q: want text or json", o.output)
	}
	if (len(objects) == 1) == (o.manifest != "") || len(objects) > 1 {
		fs.Usage()
		return doctorFailed("give one of POD, KIND/NAME or -f MANIFEST")
	}
	cfg, ns, err := loadKubeconfig(o)
	if err != nil {
		return doctorFailed("kubeconfig: %w", err)
	}
	if o.namespace != "" {
		ns = o.namespace
	}
	d, err := newDoctor(cfg, o)
	if err != nil {
		return doctorFailed("%w", err)
	}
	var t *target
	if o.manifest != "" {
		t, err = targetFromManifest(o.manifest, s.in)
	} else {
		t, err = d.targetFromCluster(ctx, ns, objects[0])
	}
	if err != nil {
		return doctorFailed("%w", err)
	}
	switch {
	case o.namespace == "" && t.namespace != "":
		ns = t.namespace // a manifest's own, as kubectl apply -f would use it
	case o.namespace != "" && t.namespace != "" && t.namespace != o.namespace:
		return doctorFailed("%s is in namespace %s, not -n %s", t.desc, t.namespace, o.namespace)
	}
	t.pod.Namespace = ns
	r, err := d.diagnose(ctx, t)
	if err != nil {
		return doctorFailed("%w", err)
	}
	if o.output == "json" {
		enc := json.NewEncoder(s.out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else {
		r.writeText(s.out)
	}
	if r.Exit != doctorInjected {
		return &exitStatus{code: r.Exit}
	}
	return nil
}

// loadKubeconfig reads the kubeconfig as kubectl does: --kubeconfig, else $KUBECONFIG,
// else ~/.kube/config; --context, else the current context. It returns the context's
// namespace ("default" when it has none).
func loadKubeconfig(o doctorOptions) (*rest.Config, string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: o.context})
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, "", err
	}
	ns, _, err := cc.Namespace()
	return cfg, ns, err
}

// doctor holds the clients and what the apiserver warned on its dry-run.
type doctor struct {
	opts     doctorOptions
	cs       kubernetes.Interface
	dryRun   kubernetes.Interface // cs, with the warnings recorded
	warnings *warningRecorder

	// podmetaArgs are the flags podmeta's Deployment runs with, and secretMounts the
	// Secrets its container mounts, by path; empty when none was found.
	podmetaArgs  []string
	secretMounts map[string]string
}

// doctorRequestTimeout bounds each request; the dry-run's includes the webhook's own
// timeoutSeconds (at most 30).
const doctorRequestTimeout = 45 * time.Second

func newDoctor(cfg *rest.Config, o doctorOptions) (*doctor, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.Timeout = doctorRequestTimeout
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	rec := &warningRecorder{}
	wcfg := rest.CopyConfig(cfg)
	wcfg.WarningHandler = rec
	dry, err := kubernetes.NewForConfig(wcfg)
	if err != nil {
		return nil, err
	}
	return &doctor{opts: o, cs: cs, dryRun: dry, warnings: rec}, nil
}

// warningRecorder keeps the apiserver's warnings (admission warnings among them).
type warningRecorder struct {
	mu   sync.Mutex
	list []string
}

func (r *warningRecorder) HandleWarningHeader(_ int, _ string, text string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.list) < webhook.MaxWarnings+1 {
		r.list = append(r.list, text)
	}
}

func (r *warningRecorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.list
	r.list = nil
	return out
}

// workloadKinds are the kinds doctor reads from the cluster, by the names kubectl takes.
var workloadKinds = map[string]string{
	"pod": "Pod", "pods": "Pod", "po": "Pod",
	"deployment": "Deployment", "deployments": "Deployment", "deploy": "Deployment",
	"statefulset": "StatefulSet", "statefulsets": "StatefulSet", "sts": "StatefulSet",
	"daemonset": "DaemonSet", "daemonsets": "DaemonSet", "ds": "DaemonSet",
	"replicaset": "ReplicaSet", "replicasets": "ReplicaSet", "rs": "ReplicaSet",
	"job": "Job", "jobs": "Job",
	"cronjob": "CronJob", "cronjobs": "CronJob", "cj": "CronJob",
}

// targetFromCluster reads POD or KIND/NAME in ns.
func (d *doctor) targetFromCluster(ctx context.Context, ns, arg string) (*target, error) {
	kindArg, name, found := strings.Cut(arg, "/")
	if !found {
		kindArg, name = "pod", arg
	}
	kind, ok := workloadKinds[strings.ToLower(strings.SplitN(kindArg, ".", 2)[0])]
	if !ok || name == "" {
		return nil, fmt.Errorf("%q: want POD or KIND/NAME, KIND one of pod, deployment, statefulset, daemonset, replicaset, job, cronjob", arg)
	}
	get := metav1.GetOptions{}
	var obj runtime.Object
	var err error
	switch kind {
	case "Pod":
		var p *corev1.Pod
		if p, err = d.cs.CoreV1().Pods(ns).Get(ctx, name, get); err != nil {
			return nil, err
		}
		return &target{desc: "pod/" + name, existing: true, pod: p, kind: "Pod"}, nil
	case "Deployment":
		obj, err = d.cs.AppsV1().Deployments(ns).Get(ctx, name, get)
	case "StatefulSet":
		obj, err = d.cs.AppsV1().StatefulSets(ns).Get(ctx, name, get)
	case "DaemonSet":
		obj, err = d.cs.AppsV1().DaemonSets(ns).Get(ctx, name, get)
	case "ReplicaSet":
		obj, err = d.cs.AppsV1().ReplicaSets(ns).Get(ctx, name, get)
	case "Job":
		obj, err = d.cs.BatchV1().Jobs(ns).Get(ctx, name, get)
	case "CronJob":
		obj, err = d.cs.BatchV1().CronJobs(ns).Get(ctx, name, get)
	}
	if err != nil {
		return nil, err
	}
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	u["kind"] = kind
	return targetFromObject(u)
}

// targetFromManifest reads the one Pod or workload of a manifest (other objects, such
// as its Namespace, are passed over).
func targetFromManifest(path string, stdin io.Reader) (*target, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer func() { _ = f.Close() }() // read only
		r = f
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	var found []map[string]any
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if k, _ := obj["kind"].(string); templatePaths[k] != "" || k == "Pod" {
			found = append(found, obj)
		}
	}
	if len(found) != 1 {
		var names []string
		for _, o := range found {
			names = append(names, describeObject(o))
		}
		return nil, fmt.Errorf("%s: doctor checks one Pod or workload, the manifest has %d %v", path, len(found), names)
	}
	return targetFromObject(found[0])
}

func describeObject(o map[string]any) string {
	u := unstructured.Unstructured{Object: o}
	return strings.ToLower(u.GetKind()) + "/" + u.GetName()
}

// targetFromObject is the pod an object creates: a Pod itself; for a workload, a Pod of
// its template, named by generateName as a controller's pods are, without an owner.
func targetFromObject(obj map[string]any) (*target, error) {
	u := unstructured.Unstructured{Object: obj}
	kind := u.GetKind()
	t := &target{desc: describeObject(obj), kind: kind, namespace: u.GetNamespace()}
	if kind == "Pod" {
		p := &corev1.Pod{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj, p); err != nil {
			return nil, fmt.Errorf("%s: %w", t.desc, err)
		}
		p.ResourceVersion, p.UID = "", ""
		t.pod = p
		return t, nil
	}
	path := strings.Split(strings.TrimPrefix(templatePaths[kind], "/"), "/")
	t.template = strings.Join(path, ".") + ".metadata.annotations"
	tmpl, found, err := unstructured.NestedMap(obj, path...)
	if err != nil || !found {
		return nil, fmt.Errorf("%s has no pod template at %s", t.desc, strings.Join(path, "."))
	}
	var pt corev1.PodTemplateSpec
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(tmpl, &pt); err != nil {
		return nil, fmt.Errorf("%s: pod template: %w", t.desc, err)
	}
	meta := pt.ObjectMeta
	meta.Name, meta.Namespace, meta.GenerateName = "", "", u.GetName()+"-"
	meta.OwnerReferences, meta.ResourceVersion, meta.UID = nil, "", ""
	t.pod = &corev1.Pod{ObjectMeta: meta, Spec: pt.Spec}
	for k := range u.GetAnnotations() {
		if strings.HasPrefix(k, webhook.Prefix) {
			t.ownMeta = append(t.ownMeta, k)
		}
	}
	return t, nil
}
