package webhook

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/labels"
)

// Workload validation (docs/workloads.md): a validating webhook on the same server
// answers the CREATE and UPDATE of Deployments, StatefulSets, DaemonSets, ReplicaSets,
// Jobs and CronJobs that carry a podmeta.io/ annotation, so that what podmeta would say
// to their pods is said at `kubectl apply`, where the user is looking. It never mutates.
// It plans the pod template with the same Injector as the pod path (the same settings
// table, the same denials), not a copy of its checks.

// Modes of --workload-validation.
const (
	// WorkloadValidationDeny denies a workload whose pods podmeta would deny, on CREATE
	// and on an UPDATE that changes the template's podmeta annotations (default).
	WorkloadValidationDeny = "deny"
	// WorkloadValidationWarn only warns.
	WorkloadValidationWarn = "warn"
	// WorkloadValidationOff answers every review allowed, without a look.
	WorkloadValidationOff = "off"
)

// WorkloadValidationModes lists the valid values of --workload-validation.
var WorkloadValidationModes = []string{WorkloadValidationDeny, WorkloadValidationWarn, WorkloadValidationOff}

// Results of podmeta_workload_reviews_total.
const (
	WorkloadAllowed = "allowed" // looked at, nothing to say
	WorkloadWarned  = "warned"  // allowed with warnings
	WorkloadDenied  = "denied"  // its pods would be denied
	WorkloadSkipped = "skipped" // not looked at: off, excluded namespace, not a workload
)

// NamespaceMetadata returns a namespace's labels and annotations from a local cache (nil
// for a namespace it does not know): the handler does no network I/O per request.
type NamespaceMetadata func(ctx context.Context, namespace string) (labels, annotations map[string]string)

// WorkloadValidator answers workload reviews. Serve it with Handler.Workloads, which
// reads the body under the same bounds as pods.
type WorkloadValidator struct {
	Injector   *Injector
	Mode       string            // a WorkloadValidation* mode; "" is deny
	Namespaces NamespaceMetadata // nil: every namespace is unknown (templates are not checked)
	Metrics    *WorkloadMetrics  // nil: not counted
	// PodSelector is what the MutatingWebhookConfiguration's objectSelector asks of a
	// pod's labels beyond the opt-out label (the chart's webhook.objectSelectorExpressions):
	// a template it does not select has pods podmeta never sees. nil: every template.
	PodSelector labels.Selector
}

// Workloads returns the HTTP handler of workload validation: v's decisions, behind h's
// body limits, read timeout, byte budget, in-flight slots and panic recovery (shared
// with the pod path, so the two together stay within them).
func (h *Handler) Workloads(v *WorkloadValidator) http.Handler { return workloadHTTP{h, v} }

type workloadHTTP struct {
	h *Handler
	v *WorkloadValidator
}

func (x workloadHTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) { x.h.serve(w, r, x.v) }

// templatePaths says where each kind keeps its pod template.
var templatePaths = map[string]string{
	"apps/Deployment":  "spec.template",
	"apps/StatefulSet": "spec.template",
	"apps/DaemonSet":   "spec.template",
	"apps/ReplicaSet":  "spec.template",
	"batch/Job":        "spec.template",
	"batch/CronJob":    "spec.jobTemplate.spec.template",
}

// workloadView is the part of a workload the validator reads; the template is kept
// as JSON and decoded as a pod (podView), as the pod path decodes one.
type workloadView struct {
	Metadata struct {
		Name            string            `json:"name"`
		GenerateName    string            `json:"generateName"`
		Annotations     map[string]string `json:"annotations"`
		OwnerReferences []struct {
			Kind       string `json:"kind"`
			Name       string `json:"name"`
			Controller *bool  `json:"controller"`
		} `json:"ownerReferences"`
	} `json:"metadata"`
	Spec struct {
		Template    jsontext.Value `json:"template"`
		JobTemplate struct {
			Spec struct {
				Template jsontext.Value `json:"template"`
			} `json:"spec"`
		} `json:"jobTemplate"`
	} `json:"spec"`
}

func (o *workloadView) template(cronJob bool) jsontext.Value {
	if cronJob {
		return o.Spec.JobTemplate.Spec.Template
	}
	return o.Spec.Template
}

// controller is the kind and name of the object's controller, "" without one.
func (o *workloadView) controller() string {
	for _, ref := range o.Metadata.OwnerReferences {
		if ref.Controller != nil && *ref.Controller {
			return ref.Kind + " " + clip(ref.Name)
		}
	}
	return ""
}

// templateExtras is what the workload checks read of a template beyond the podView.
type templateExtras struct {
	Metadata struct {
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		InitContainers []proxyView `json:"initContainers"`
		Containers     []proxyView `json:"containers"`
	} `json:"spec"`
}

type proxyView struct {
	Name    string   `json:"name"`
	Image   string   `json:"image"`
	Command []string `json:"command"`
	Args    []string `json:"args"`
}

// admitWorkload decides on a workload review in body.
func (v *WorkloadValidator) admitWorkload(ctx context.Context, body []byte, log *logr.Logger) (*reviewResponse, error) {
	m := v.Metrics
	var rev review[workloadView]
	if err := unmarshal(body, &rev); err != nil {
		return nil, &httpError{http.StatusBadRequest, "not a workload AdmissionReview: " + err.Error()}
	}
	if err := checkReview(rev.APIVersion, rev.Kind, rev.Request != nil, rev.Request != nil && rev.Request.UID != ""); err != nil {
		return nil, err
	}
	req := rev.Request
	resp := &reviewResponse{APIVersion: rev.APIVersion, Kind: rev.Kind, Response: response{UID: req.UID, Allowed: true}}
	kindKey := req.Kind.Group + "/" + req.Kind.Kind
	_, known := templatePaths[kindKey]
	if v.Mode == WorkloadValidationOff || !known || req.SubResource != "" || (req.Operation != "CREATE" && req.Operation != "UPDATE") ||
		v.Injector.excludedNS[req.Namespace] {
		m.count(WorkloadSkipped)
		return resp, nil
	}
	if req.Object == nil {
		return nil, &httpError{http.StatusBadRequest, fmt.Sprintf("a %s %s review has no request.object", req.Kind.Kind, req.Operation)}
	}
	// Clipped: a direct caller may send megabytes in each (the kind is a known one).
	name := req.Object.Metadata.Name
	if name == "" {
		name = req.Object.Metadata.GenerateName + "*"
	}
	*log = log.WithValues("uid", clip(req.UID), "namespace", clip(req.Namespace), "kind", req.Kind.Kind, "name", clip(name))
	var nsLabels, nsAnn map[string]string
	if v.Namespaces != nil {
		nsLabels, nsAnn = v.Namespaces(ctx, req.Namespace)
	}
	w := workload{
		kind: req.Kind.Kind, namespace: req.Namespace, operation: req.Operation,
		object: req.Object, old: req.OldObject, cronJob: kindKey == "batch/CronJob",
		nsLabels: nsLabels, nsAnnotations: nsAnn,
	}
	deny, warnings := v.check(&w)
	resp.Response.Warnings = capWarnings(warnings)
	switch {
	case deny != "":
		log.Info("workload denied", "reason", deny)
		m.count(WorkloadDenied)
		resp.Response.Allowed = false
		resp.Response.Status = &status{Code: http.StatusForbidden, Reason: "Forbidden", Message: deny}
	case len(warnings) > 0:
		log.V(1).Info("workload warned", "warnings", len(warnings))
		m.count(WorkloadWarned)
	default:
		m.count(WorkloadAllowed)
	}
	return resp, nil
}

// workload is one review's object, in the terms of check.
type workload struct {
	kind, namespace, operation string
	object                     *workloadView
	old                        *jsontext.Value // an UPDATE's old object (review.OldObject)
	cronJob                    bool
	nsLabels, nsAnnotations    map[string]string
}

// check returns a denial ("" for none) and warnings for w; see docs/workloads.md.
func (v *WorkloadValidator) check(w *workload) (deny string, warnings []string) {
	path := "spec.template"
	if w.cronJob {
		path = "spec.jobTemplate.spec.template"
	}
	// 1. podmeta annotations on the workload's own metadata do nothing.
	if keys := podmetaKeys(w.object.Metadata.Annotations); len(keys) > 0 {
		warnings = append(warnings, fmt.Sprintf("podmeta: %s on the %s's own metadata.annotations %s ignored: podmeta reads the pod's annotations; move %s to %s.metadata.annotations",
			nameSome(keys), w.kind, isAre(len(keys)), itThem(len(keys)), path))
	}

	raw := w.object.template(w.cronJob)
	var pod podView
	if len(raw) > 0 && string(raw) != "null" {
		if err := unmarshal(raw, &pod); err != nil {
			return "", append(warnings, "podmeta: "+path+" is not a pod template: "+clip(err.Error()))
		}
	}
	tmplKeys := podmetaKeys(pod.Metadata.Annotations)
	if len(tmplKeys) == 0 && len(podmetaKeys(w.object.Metadata.Annotations)) == 0 {
		return "", warnings
	}
	var extras templateExtras
	if len(raw) > 0 {
		_ = unmarshal(raw, &extras) // the same JSON just decoded as a podView
	}
	// Opted out the ways the MutatingWebhookConfiguration honours (objectSelector,
	// matchConditions): its pods never reach podmeta, so nothing more applies.
	if extras.Metadata.Labels[LabelInject] == "disabled" || norm(pod.Metadata.Annotations[AnnotationInject]) == "false" {
		return "", warnings
	}
	if v.PodSelector != nil && !v.PodSelector.Matches(labels.Set(extras.Metadata.Labels)) {
		return "", append(warnings, fmt.Sprintf("podmeta: the labels of %s.metadata do not match podmeta's objectSelector (%s), so podmeta never sees this %s's pods and ignores their podmeta.io/ annotations",
			path, clip(v.PodSelector.String()), w.kind))
	}

	// 2. A namespace not opted in: no pod of it reaches podmeta. Every namespace carries
	// kubernetes.io/metadata.name: none at all is one the cache does not know (yet, or
	// its wait was over --max-namespace-waits), which is neither opted in nor out.
	if w.nsLabels == nil {
		return "", append(warnings, fmt.Sprintf("podmeta: namespace %s is not in podmeta's cache yet, so this %s's pod template was not checked; its pods are checked when they are created",
			clip(w.namespace), w.kind))
	}
	if w.nsLabels[LabelInject] != "enabled" {
		return "", append(warnings, fmt.Sprintf("podmeta: namespace %s is not opted in, so podmeta ignores the podmeta.io/ annotations of this %s's pods and injects nothing; to inject them, label the namespace: kubectl label namespace %s %s=enabled",
			w.namespace, w.kind, w.namespace, LabelInject))
	}
	if len(tmplKeys) == 0 {
		return "", warnings
	}

	// 3. What each pod would get: the pod path's own plan, offline (admitted false: the
	// ServiceAccount plugin and later webhooks have not run on a template).
	pod.Metadata.Namespace = w.namespace
	plan, err := v.Injector.plan(&pod, w.namespace, w.nsAnnotations, false)
	if err != nil {
		msg := fmt.Sprintf("podmeta would deny every pod of this %s: %s", w.kind, err.Error())
		switch owner := w.object.controller(); {
		case pod.Spec.AutomountServiceAccountToken == nil && v.admitsWithoutToken(&pod, w):
			// The denial needs the ambassador, which a pod gets only with a token volume:
			// the ServiceAccount admission plugin adds none when the ServiceAccount turns
			// automounting off, and the template cannot tell (docs/workloads.md).
			msg = fmt.Sprintf("podmeta would deny every pod of this %s whose ServiceAccount mounts a token (the default): %s", w.kind, err.Error())
			warnings = append(warnings, "podmeta: "+msg+" (warned, not denied: with automountServiceAccountToken: false on the ServiceAccount its pods get no ambassador and are admitted; set automountServiceAccountToken on the template to have this checked here)")
		case v.Mode == WorkloadValidationWarn:
			warnings = append(warnings, "podmeta: "+msg+" (--workload-validation=warn)")
		case owner != "":
			// A controller's object (a Deployment's ReplicaSet, a CronJob's Job): denying
			// it would stick a rollout; its owner was judged when it was applied.
			warnings = append(warnings, "podmeta: "+msg+" (created by "+owner+": warned, not denied)")
		case w.operation == "UPDATE" && samePodmetaAnnotations(w.oldTemplate(), pod.Metadata.Annotations):
			// Already wrong before this change: let it be scaled, patched or deleted.
			warnings = append(warnings, "podmeta: "+msg+" (the template's podmeta annotations are unchanged by this update: warned, not denied)")
		default:
			return msg + "; fix " + path + ".metadata.annotations", warnings
		}
		return "", warnings
	}
	warnings = append(warnings, plan.Warnings...)

	// 4. A kubectl proxy already in the pod next to the ambassador.
	s := v.Injector.base
	_, _ = s.overlay(sourceNamespace, w.nsAnnotations) // valid: plan just succeeded
	_, _ = s.overlay(sourcePod, pod.Metadata.Annotations)
	if s.Inject && s.Ambassador {
		// One warning for all of them: a template may have thousands.
		var proxies []proxyView
		for _, list := range [][]proxyView{extras.Spec.InitContainers, extras.Spec.Containers} {
			for _, c := range list {
				if c.Name != AmbassadorContainerName && runsKubectlProxy(c) {
					proxies = append(proxies, c)
				}
			}
		}
		if len(proxies) > 0 {
			warnings = append(warnings, fmt.Sprintf("podmeta: %s kubectl proxy (image %s), and %s adds podmeta's API ambassador on 127.0.0.1:%d: two API proxies in one pod, and two listeners if both use port %d; remove %s, or set %s: \"false\"",
				namedContainers(proxies), clip(proxies[0].Image), AnnotationAmbassador, s.AmbassadorPort, s.AmbassadorPort, itThem(len(proxies)), AnnotationAmbassador))
		}
	}
	return "", warnings
}

// admitsWithoutToken reports whether pod (a template whose plan failed) would be
// admitted by the pod path when the ServiceAccount plugin adds no token volume: planned
// as admitted, without the ambassador.
func (v *WorkloadValidator) admitsWithoutToken(pod *podView, w *workload) bool {
	if slices.ContainsFunc(pod.Spec.Volumes, isServiceAccountTokenVolume) {
		return false // the template brings its own
	}
	_, err := v.Injector.plan(pod, w.namespace, w.nsAnnotations, true)
	return err == nil
}

// namedContainers is `container "a" runs`, or `containers "a", "b" and 3 more run`.
func namedContainers(cs []proxyView) string {
	if len(cs) == 1 {
		return fmt.Sprintf("container %q runs", clip(cs[0].Name))
	}
	var b strings.Builder
	b.WriteString("containers ")
	for i, c := range cs {
		if i == maxNamedItems {
			fmt.Fprintf(&b, " and %d more", len(cs)-i)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", clip(c.Name))
	}
	b.WriteString(" run")
	return b.String()
}

// podmetaKeys lists the podmeta annotations a user sets (not the ones podmeta writes),
// sorted.
func podmetaKeys(ann map[string]string) []string {
	var keys []string
	for k := range ann {
		if strings.HasPrefix(k, Prefix) && k != AnnotationStatus && k != AnnotationInjected {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// oldTemplate is the pod template of an UPDATE's old object: nil without one, or when
// it does not decode (then the update is judged as new).
func (w *workload) oldTemplate() jsontext.Value {
	var old workloadView
	if w.old == nil || unmarshal(*w.old, &old) != nil {
		return nil
	}
	return old.template(w.cronJob)
}

// samePodmetaAnnotations reports whether the old template (JSON) has exactly the
// podmeta annotations ann has.
func samePodmetaAnnotations(oldTemplate jsontext.Value, ann map[string]string) bool {
	var old struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	if len(oldTemplate) > 0 {
		if err := unmarshal(oldTemplate, &old); err != nil {
			return false
		}
	}
	return maps.Equal(podmetaOnly(old.Metadata.Annotations), podmetaOnly(ann))
}

func podmetaOnly(ann map[string]string) map[string]string {
	out := map[string]string{}
	for _, k := range podmetaKeys(ann) {
		out[k] = ann[k]
	}
	return out
}

// kubectlProxyImages are images known to run `kubectl proxy`, the ambassador podmeta
// replaces (docs/workloads.md): always, or when the container's command or args say
// "proxy". An image matches by its repository, whatever its registry, tag or digest.
var kubectlProxyImages = []struct {
	repository string
	always     bool
}{
	{"luksa/kubectl-proxy", true}, // the ambassador of "Kubernetes in Action"
	{"bitnami/kubectl", false},
	{"rancher/kubectl", false},
	{"alpine/k8s", false},
	{"lachlanevenson/k8s-kubectl", false},
	{"registry.k8s.io/kubectl", false},
}

// runsKubectlProxy reports whether c is a known kubectl proxy image running as one.
func runsKubectlProxy(c proxyView) bool {
	repo := imageRepository(c.Image)
	for _, k := range kubectlProxyImages {
		if repo != k.repository && !strings.HasSuffix(repo, "/"+k.repository) {
			continue
		}
		return k.always || slices.Contains(c.Command, "proxy") || slices.Contains(c.Args, "proxy")
	}
	return false
}

// imageRepository is an image reference without its tag or digest.
func imageRepository(image string) string {
	if i := strings.IndexByte(image, '@'); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndexByte(image, ':'); i > strings.LastIndexByte(image, '/') {
		image = image[:i]
	}
	return image
}

func isAre(n int) string {
	if n == 1 {
		return "is"
	}
	return "are"
}

func itThem(n int) string {
	if n == 1 {
		return "it"
	}
	return "them"
}
