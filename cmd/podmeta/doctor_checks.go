package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/admission/plugin/webhook/matchconditions"
	"k8s.io/apiserver/pkg/admission/plugin/webhook/predicates/rules"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/cel/environment"

	"github.com/podmeta/podmeta/webhook"
)

// Verdicts of a check.
const (
	verdictOK   = "ok"
	verdictWarn = "warn"
	verdictFail = "fail"
)

// check is one line of the checklist.
type check struct {
	Name    string `json:"name"`
	Verdict string `json:"verdict"`
	Message string `json:"message"`
	Fix     string `json:"fix,omitempty"`
}

func ok(name, format string, args ...any) check {
	return check{Name: name, Verdict: verdictOK, Message: fmt.Sprintf(format, args...)}
}

func warn(name, fix, format string, args ...any) check {
	return check{Name: name, Verdict: verdictWarn, Message: fmt.Sprintf(format, args...), Fix: fix}
}

func fail(name, fix, format string, args ...any) check {
	return check{Name: name, Verdict: verdictFail, Message: fmt.Sprintf(format, args...), Fix: fix}
}

// report is what doctor prints (-o json: as is).
type report struct {
	Target    string   `json:"target"`
	Namespace string   `json:"namespace"`
	Modes     []string `json:"modes"`
	// Injected: the existing pod has podmeta's record, or the dry-run pod got one.
	Injected bool    `json:"injected"`
	Checks   []check `json:"checks"`
	// Record is podmeta.io/status of the pod (existing) or of the dry-run's result.
	Record *webhook.Status `json:"record,omitempty"`
	// Changes are what the dry-run's pod has that the pod sent had not, by name.
	Changes []string `json:"changes,omitempty"`
	// Warnings are what the apiserver warned on the dry-run (podmeta's among them).
	Warnings []string `json:"warnings,omitempty"`
	Exit     int      `json:"exit"`
}

// exitCode is 0 when the pod is injected and no check failed, else 1.
func exitCode(injected bool, checks []check) int {
	if injected && !slices.ContainsFunc(checks, func(c check) bool { return c.Verdict == verdictFail }) {
		return doctorInjected
	}
	return doctorNotInjected
}

func (r *report) writeText(w io.Writer) {
	fmt.Fprintf(w, "%s in namespace %s (%s)\n", r.Target, r.Namespace, strings.Join(r.Modes, ", "))
	for _, c := range r.Checks {
		fmt.Fprintf(w, "[%-4s] %s: %s\n", c.Verdict, c.Name, c.Message)
		if c.Fix != "" && c.Verdict != verdictOK {
			fmt.Fprintf(w, "       fix: %s\n", c.Fix)
		}
	}
	for _, c := range r.Changes {
		fmt.Fprintf(w, "changed: %s\n", c)
	}
	for _, wn := range r.Warnings {
		fmt.Fprintf(w, "warning: %s\n", wn)
	}
	verdict := "injected"
	if !r.Injected {
		verdict = "not injected"
	} else if r.Exit != doctorInjected {
		verdict = "injected, but a check failed"
	}
	fmt.Fprintf(w, "result: %s (exit %d)\n", verdict, r.Exit)
}

// installation is one way podmeta can be installed in a cluster. doctor detects which
// are installed (detectInstallations) and runs each one's checks; another mode is one
// more implementation.
type installation interface {
	// mode names it in the report: "webhook" or "policy".
	mode() string
	// check checks the installation itself and whether it selects the pod.
	check(ctx context.Context, d *doctor, t *target, ns *corev1.Namespace) []check
}

// detectInstallations finds podmeta's MutatingWebhookConfiguration and policy mode's
// MutatingAdmissionPolicy; either, both or neither may be installed. A cluster without
// the policy API (before 1.36) has no policy mode; one that forbids reading it gives a
// warning.
func (d *doctor) detectInstallations(ctx context.Context) ([]installation, []check, error) {
	var found []installation
	var notes []check
	api := d.cs.AdmissionregistrationV1()
	mwc, err := api.MutatingWebhookConfigurations().Get(ctx, d.opts.webhookConfig, metav1.GetOptions{})
	switch {
	case err == nil:
		found = append(found, &webhookInstallation{mwc: mwc})
	case !apierrors.IsNotFound(err):
		return nil, nil, fmt.Errorf("read MutatingWebhookConfiguration %s: %w", d.opts.webhookConfig, err)
	}
	mp, err := api.MutatingAdmissionPolicies().Get(ctx, d.opts.policyName, metav1.GetOptions{})
	switch {
	case err == nil:
		found = append(found, &policyInstallation{policy: mp})
	case apierrors.IsForbidden(err):
		notes = append(notes, warn("installation", "ask for get on mutatingadmissionpolicies", "cannot tell whether policy mode is installed: %s", reason(err)))
	case !apierrors.IsNotFound(err):
		return nil, nil, fmt.Errorf("read MutatingAdmissionPolicy %s: %w", d.opts.policyName, err)
	}
	return found, notes, nil
}

// diagnose runs every check on t and, for a manifest or workload, the dry-run.
func (d *doctor) diagnose(ctx context.Context, t *target) (*report, error) {
	r := &report{Target: t.desc, Namespace: t.pod.Namespace}
	ns, err := d.cs.CoreV1().Namespaces().Get(ctx, t.pod.Namespace, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read namespace %s: %w", t.pod.Namespace, err)
	}
	installs, notes, err := d.detectInstallations(ctx)
	if err != nil {
		return nil, err
	}
	r.Checks = append(r.Checks, notes...)
	switch len(installs) {
	case 0:
		r.Checks = append(r.Checks, fail("installation", "install podmeta (docs/operations.md), or render and apply policy mode with `podmeta policy` (docs/policy.md)",
			"podmeta is not installed: no MutatingWebhookConfiguration %s and no MutatingAdmissionPolicy %s", d.opts.webhookConfig, d.opts.policyName))
	case 1:
		r.Checks = append(r.Checks, ok("installation", "%s mode", installs[0].mode()))
	default:
		r.Checks = append(r.Checks, warn("installation", "remove one of them, or make their namespace selectors disjoint (docs/policy.md: do not run both modes on the same namespaces)",
			"both the webhook and policy mode are installed"))
	}
	per := make([][]check, len(installs))
	for i, in := range installs {
		r.Modes = append(r.Modes, in.mode())
		per[i] = in.check(ctx, d, t, ns)
	}
	if len(installs) > 1 {
		bothModes(installs, per)
	}
	for _, cs := range per {
		r.Checks = append(r.Checks, cs...)
	}
	if r.Modes == nil {
		r.Modes = []string{"none"}
	}
	r.Checks = append(r.Checks, namespaceAnnotationsCheck(ns))
	if t.existing {
		r.Checks = append(r.Checks, d.recordCheck(t, ns, r)...)
	} else {
		r.Checks = append(r.Checks, templateChecks(t)...)
		dry, err := d.dryRunCheck(ctx, t, r)
		if err != nil {
			return nil, err
		}
		r.Checks = append(r.Checks, dry...)
	}
	r.Exit = exitCode(r.Injected, r.Checks)
	return r, nil
}

// selectionChecks end the names of the checks that say whether an installation selects
// the pod (a webhook's may start with its name, a binding's with "binding").
var selectionChecks = []string{"rules", "namespace selector", "object selector", "match conditions"}

func isSelectionCheck(c check) bool {
	return slices.ContainsFunc(selectionChecks, func(suffix string) bool { return strings.HasSuffix(c.Name, suffix) })
}

// selects reports whether none of an installation's selection checks failed.
func selects(checks []check) bool {
	return !slices.ContainsFunc(checks, func(c check) bool { return c.Verdict == verdictFail && isSelectionCheck(c) })
}

// bothModes names each installation's checks after its mode and, when one installation
// selects the pod, makes another's failed selection a warning: with both modes
// installed on disjoint namespaces (docs/policy.md), one of them not selecting the pod
// is how it should be, not a failure.
func bothModes(installs []installation, per [][]check) {
	var selecting []string
	for i, cs := range per {
		if selects(cs) {
			selecting = append(selecting, installs[i].mode())
		}
	}
	for i, cs := range per {
		mine := selects(cs)
		for j := range cs {
			if len(selecting) > 0 && !mine && cs[j].Verdict == verdictFail && isSelectionCheck(cs[j]) {
				cs[j].Verdict = verdictWarn
				cs[j].Fix = "none for this pod: " + strings.Join(selecting, " and ") + " mode selects it"
			}
			cs[j].Name = installs[i].mode() + ": " + cs[j].Name
		}
	}
}

// namespaceAnnotationsCheck lists the namespace's podmeta annotations: the defaults its pods
// get.
func namespaceAnnotationsCheck(ns *corev1.Namespace) check {
	var have []string
	for k, v := range ns.Annotations {
		if strings.HasPrefix(k, webhook.Prefix) {
			have = append(have, k+"="+v)
		}
	}
	if len(have) == 0 {
		return ok("namespace annotations", "none: podmeta's defaults apply")
	}
	slices.Sort(have)
	return ok("namespace annotations", "%s (defaults the pod's annotations override)", strings.Join(have, ", "))
}

// templateChecks are about where a workload's annotations are.
func templateChecks(t *target) []check {
	if len(t.ownMeta) == 0 {
		return nil
	}
	slices.Sort(t.ownMeta)
	return []check{warn("workload annotations", "move them to "+t.template+": podmeta reads the pod's annotations, and the pod gets its template's",
		"%s on the %s's own metadata are ignored", strings.Join(t.ownMeta, ", "), t.kind)}
}

// dryRunCheck creates the pod with dryRun=All through the real admission chain: what
// podmeta (or the policy) does to it is the truth, not a simulation. The changes are
// read from the returned pod: its record, and what it has that the pod sent had not. An
// error that says nothing about the pod (the caller may not create pods, the apiserver
// was not reached) is returned: doctor could not tell (exit 2).
func (d *doctor) dryRunCheck(ctx context.Context, t *target, r *report) ([]check, error) {
	d.warnings.take()
	sent := t.pod.DeepCopy()
	pods := d.dryRun.CoreV1().Pods(sent.Namespace)
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	got, err := pods.Create(ctx, sent.DeepCopy(), dry)
	if apierrors.IsAlreadyExists(err) {
		// A pod of the manifest's name exists: the same pod under a generated name.
		sent.GenerateName, sent.Name = sent.Name+"-", ""
		d.warnings.take()
		got, err = pods.Create(ctx, sent.DeepCopy(), dry)
	}
	r.Warnings = d.warnings.take()
	if err != nil {
		if !admissionRejected(err) {
			return nil, fmt.Errorf("dry-run create of the pod: %w", err)
		}
		return []check{fail("dry-run", "correct what the message names (an invalid podmeta annotation names the annotation, the value and the valid choices)",
			"the apiserver rejected the pod: %v", err)}, nil
	}
	r.Changes = podChanges(sent, got)
	st, found, perr := readRecord(got.Annotations)
	if perr != nil {
		return []check{fail("dry-run", "", "the pod came back with %s podmeta cannot read: %v", webhook.AnnotationStatus, perr)}, nil
	}
	if !found {
		return []check{fail("dry-run", "fix the failed checks above; if none failed, the apiserver could not call podmeta (failurePolicy: Ignore admits the pod unchanged): its log says \"failed calling webhook\"",
			"the pod was admitted without podmeta's changes")}, nil
	}
	r.Record, r.Injected = &st, true
	out := []check{ok("dry-run", "podmeta injected the pod: %s", describeRecord(st))}
	if _, had := t.pod.Annotations[webhook.AnnotationStatus]; had {
		out = append(out, warn("dry-run record", "check a manifest without podmeta's additions (podmeta uninject -f) to see what the cluster adds",
			"the manifest came with %s (injected offline?): the record may be its own, not this admission's", webhook.AnnotationStatus))
	}
	return append(out, skippedChecks(st)...), nil
}

// admissionRejected reports whether a dry-run's error is the apiserver's answer about the
// pod (a denial by admission, podmeta's or another's; an invalid pod; a webhook that
// could not be called under failurePolicy: Fail), rather than about the caller or the
// connection: an error without an API status, or RBAC's refusal to let the caller create
// pods ("User … cannot create resource \"pods\"", also 403).
func admissionRejected(err error) bool {
	var s apierrors.APIStatus
	if !errors.As(err, &s) {
		return false
	}
	return !apierrors.IsForbidden(err) || !strings.Contains(s.Status().Message, "cannot create resource")
}

// skipHints say, per skip reason (webhook.Skip*), what to do to get podmeta's addition.
var skipHints = map[string]string{
	webhook.SkipAnnotationsIgnored:        "correct the podmeta.io/ keys the warnings name",
	webhook.SkipNotSelected:               "add the containers to " + webhook.AnnotationContainers + " (or remove the annotation) if they need podmeta's env vars and mount",
	webhook.SkipContainerMissing:          "remove the name from " + webhook.AnnotationContainers + ", or correct it",
	webhook.SkipEnvKept:                   "the container's own value wins: remove it from the pod spec to get podmeta's",
	webhook.SkipVolumeKept:                "rename the pod's volume \"" + webhook.VolumeName + "\" to get the metadata volume",
	webhook.SkipMountKept:                 "mount the metadata volume elsewhere: " + webhook.AnnotationVolumePath,
	webhook.SkipStorageLimit:              "set the container's ephemeral-storage limit yourself",
	webhook.SkipAmbassadorHostNetwork:     "the ambassador is never added to hostNetwork pods (docs/ambassador.md)",
	webhook.SkipAmbassadorAutomountOff:    "the pod opts out of API credentials; remove automountServiceAccountToken: false if it needs the ambassador",
	webhook.SkipAmbassadorNoTokenMount:    "the pod's ServiceAccount sets automountServiceAccountToken: false; set it true on the pod if it needs the ambassador",
	webhook.SkipAmbassadorWindows:         "the ambassador runs on Linux only",
	webhook.SkipAmbassadorTokenVolumeKept: "rename the pod's volume \"" + webhook.AmbassadorTokenVolumeName + "\"",
	webhook.SkipAmbassadorKept:            "remove the pod's own \"" + webhook.AmbassadorContainerName + "\" container to get podmeta's",
}

// skippedChecks are a warning for each skip reason of a record, with its hint.
func skippedChecks(st webhook.Status) []check {
	var out []check
	for _, s := range st.Skipped {
		code, _, _ := strings.Cut(s, " ")
		out = append(out, warn("skipped", skipHints[code], "%s", s))
	}
	return out
}

// podChanges lists what after has that before had not, by name: containers, init
// containers, volumes, each container's env vars and mounts, annotations.
func podChanges(before, after *corev1.Pod) []string {
	var out []string
	added := func(what string, had, have []string) {
		var plus []string
		for _, n := range have {
			if !slices.Contains(had, n) {
				plus = append(plus, n)
			}
		}
		if plus != nil {
			out = append(out, what+": +"+strings.Join(plus, ", +"))
		}
	}
	names := func(n int, name func(int) string) []string {
		s := make([]string, n)
		for i := range s {
			s[i] = name(i)
		}
		return s
	}
	for _, list := range []struct {
		what          string
		before, after []corev1.Container
	}{{"initContainers", before.Spec.InitContainers, after.Spec.InitContainers}, {"containers", before.Spec.Containers, after.Spec.Containers}} {
		added(list.what, names(len(list.before), func(i int) string { return list.before[i].Name }), names(len(list.after), func(i int) string { return list.after[i].Name }))
		for _, c := range list.after {
			var old corev1.Container
			if i := slices.IndexFunc(list.before, func(b corev1.Container) bool { return b.Name == c.Name }); i >= 0 {
				old = list.before[i]
			}
			added(list.what+"["+c.Name+"].env", names(len(old.Env), func(i int) string { return old.Env[i].Name }), names(len(c.Env), func(i int) string { return c.Env[i].Name }))
			added(list.what+"["+c.Name+"].volumeMounts", names(len(old.VolumeMounts), func(i int) string { return old.VolumeMounts[i].Name }), names(len(c.VolumeMounts), func(i int) string { return c.VolumeMounts[i].Name }))
		}
	}
	added("volumes", names(len(before.Spec.Volumes), func(i int) string { return before.Spec.Volumes[i].Name }), names(len(after.Spec.Volumes), func(i int) string { return after.Spec.Volumes[i].Name }))
	var had, have []string
	for k := range before.Annotations {
		had = append(had, k)
	}
	for k := range after.Annotations {
		have = append(have, k)
	}
	slices.Sort(have)
	added("annotations", had, have)
	return out
}

// recordCheck reads an existing pod's record and checks it against its spec, as a
// reinvocation would (webhook.Injector.VerifyRecord).
func (d *doctor) recordCheck(t *target, ns *corev1.Namespace, r *report) []check {
	raw, err := json.Marshal(t.pod)
	if err != nil {
		return []check{fail("record", "", "%v", err)}
	}
	in, err := webhook.NewInjector(d.injectionConfig(), true)
	if err != nil {
		return []check{fail("record", "", "%v", err)}
	}
	recorded, verified, found, err := in.VerifyRecord(raw, ns.Annotations)
	switch {
	case !found:
		return []check{fail("record", "fix the failed checks above, then recreate the pod (kubectl rollout restart, or delete it): podmeta injects pods only when they are created",
			"the pod has no %s: podmeta did not inject it", webhook.AnnotationStatus)}
	case err != nil && webhook.IsDenied(err):
		// The record was read: the pod is injected, but a pod like it would be denied now.
		r.Record, r.Injected = &recorded, true
		return []check{fail("record", "correct the annotation the message names (until then, a pod like this one is denied)", "the pod's podmeta annotations are invalid now: %v", err)}
	case err != nil:
		return []check{fail("record", "", "%v", err)}
	}
	r.Record, r.Injected = &recorded, true
	out := []check{ok("record", "podmeta injected the pod: %s", describeRecord(recorded))}
	out = append(out, skippedChecks(recorded)...)
	recorded.Skipped, verified.Skipped = nil, nil
	if recorded.String() != verified.String() {
		out = append(out, warn("record matches spec", "something changed the pod after admission; recreate it to get podmeta's additions again",
			"the spec no longer shows all the record claims: recorded %s, the spec shows %s", recorded, verified))
	} else {
		out = append(out, ok("record matches spec", "the spec shows everything the record claims"))
	}
	return out
}

// readRecord parses podmeta.io/status from annotations.
func readRecord(ann map[string]string) (webhook.Status, bool, error) {
	text, found := ann[webhook.AnnotationStatus]
	if !found {
		return webhook.Status{}, false, nil
	}
	var st webhook.Status
	return st, true, json.Unmarshal([]byte(text), &st)
}

// describeRecord says in one line what a record says was added (skippedChecks say what
// was skipped).
func describeRecord(st webhook.Status) string {
	var parts []string
	statusRows(func(what, where, result string) { parts = append(parts, what+" "+where+" "+result) }, st, "added", "mounted", "set")
	if len(parts) == 0 {
		parts = append(parts, "nothing added")
	}
	return strings.Join(parts, "; ")
}

// injectionConfig is podmeta's injection config as its Deployment's flags say, else the
// defaults.
func (d *doctor) injectionConfig() webhook.Config {
	cfg := webhook.DefaultConfig()
	d.injectionFlags(&cfg)
	if cfg.AmbassadorImage == "" {
		cfg.AmbassadorImage = "unknown" // required; only the ambassador's name and port are compared
	}
	return cfg
}

// The matching of a pod CREATE against an admission configuration, with the apiserver's
// own code: its rule matcher, label selectors and matchConditions compiled and evaluated
// by its CEL environment.

var (
	podGVK = schema.GroupVersionKind{Version: "v1", Kind: "Pod"}
	podGVR = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
)

// createAttributes are the admission attributes of creating p.
func createAttributes(p *corev1.Pod) *admission.VersionedAttributes {
	p = p.DeepCopy()
	p.SetGroupVersionKind(podGVK)
	attr := admission.NewAttributesRecord(p, nil, podGVK, p.Namespace, p.Name, podGVR, "", admission.Create,
		&metav1.CreateOptions{}, false, &user.DefaultInfo{Name: "podmeta-doctor"})
	return &admission.VersionedAttributes{Attributes: attr, VersionedObject: admission.NewLazyObject(p), VersionedKind: podGVK}
}

// rulesCheck: does any rule match a pod CREATE?
func rulesCheck(name string, rs []admissionregistrationv1.RuleWithOperations, attr admission.Attributes, fix string) check {
	for _, r := range rs {
		if (&rules.Matcher{Rule: r, Attr: attr}).Matches() {
			return ok(name, "match pod CREATE")
		}
	}
	return fail(name, fix, "no rule matches pod CREATE (v1 pods, namespaced): %s", describeRules(rs))
}

func describeRules(rs []admissionregistrationv1.RuleWithOperations) string {
	var out []string
	for _, r := range rs {
		var ops []string
		for _, o := range r.Operations {
			ops = append(ops, string(o))
		}
		out = append(out, fmt.Sprintf("%v %v/%v %v", ops, r.APIGroups, r.APIVersions, r.Resources))
	}
	if out == nil {
		return "none"
	}
	return strings.Join(out, ", ")
}

// selectorCheck matches labels against a selector and, when they do not match, names
// each requirement that fails with a fix for it.
func selectorCheck(name, what string, sel *metav1.LabelSelector, have map[string]string, fixFor func(labels.Requirement) string) check {
	if sel == nil { // the apiserver's default: everything
		return ok(name, "none: %s is selected", what)
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return fail(name, "correct the selector", "%s is invalid: %v", name, err)
	}
	set := labels.Set(have)
	if s.Matches(set) {
		return ok(name, "%s matches %s", what, s)
	}
	reqs, _ := s.Requirements()
	var missed, fixes []string
	for _, r := range reqs {
		if !r.Matches(set) {
			missed = append(missed, r.String())
			fixes = append(fixes, fixFor(r))
		}
	}
	return fail(name, strings.Join(fixes, "; "), "%s does not match %s", what, strings.Join(missed, ", "))
}

// namespaceFix is the fix for a namespace that fails a requirement.
func namespaceFix(ns string) func(labels.Requirement) string {
	return func(r labels.Requirement) string {
		vals := r.ValuesUnsorted()
		switch {
		case r.Key() == corev1.LabelMetadataName:
			return "namespace " + ns + " is excluded by podmeta; deploy the pod into another namespace"
		case r.Operator() == selection.In || r.Operator() == selection.Equals || r.Operator() == selection.DoubleEquals:
			return fmt.Sprintf("kubectl label namespace %s %s=%s --overwrite", ns, r.Key(), vals[0])
		case r.Operator() == selection.Exists:
			return fmt.Sprintf("kubectl label namespace %s %s=<value>", ns, r.Key())
		default:
			return fmt.Sprintf("kubectl label namespace %s %s- (or give it a value the selector allows: %s)", ns, r.Key(), r.String())
		}
	}
}

// podFix is the fix for a pod that fails an object-selector requirement.
func podFix(t *target) func(labels.Requirement) string {
	where := "the pod's labels"
	if t.template != "" {
		where = strings.TrimSuffix(t.template, ".annotations") + ".labels"
	}
	return func(r labels.Requirement) string {
		if r.Key() == webhook.LabelInject {
			return fmt.Sprintf("remove the label %s=%s from %s (it opts the pod out)", r.Key(), t.pod.Labels[r.Key()], where)
		}
		return fmt.Sprintf("change %s so that %s holds", where, r.String())
	}
}

// conditionFixes are the fixes for podmeta's own matchConditions, by name.
var conditionFixes = map[string]string{
	"not-opted-out":    "remove the annotation " + webhook.AnnotationInject + `: "false" (it opts the pod out)`,
	"not-a-mirror-pod": "none: static (mirror) pods are never injected; run the workload as a Deployment or DaemonSet",
}

// matchConditionsCheck evaluates matchConditions on creating p with the apiserver's own
// CEL environment and matcher.
func matchConditionsCheck(name string, conds []admissionregistrationv1.MatchCondition, failurePolicy *admissionregistrationv1.FailurePolicyType, p *corev1.Pod) check {
	if len(conds) == 0 {
		return ok(name, "none")
	}
	exprs := make([]cel.ExpressionAccessor, len(conds))
	for i, c := range conds {
		exprs[i] = &matchconditions.MatchCondition{Name: c.Name, Expression: c.Expression}
	}
	compiler := cel.NewConditionCompiler(environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion()))
	eval := compiler.CompileCondition(exprs, cel.OptionalVariableDeclarations{HasAuthorizer: true}, environment.StoredExpressions)
	res := matchconditions.NewMatcher(eval, failurePolicy, "webhook", "admit", name).Match(context.Background(), createAttributes(p), nil, nil)
	switch {
	case res.Error != nil:
		return fail(name, "correct the expression", "evaluation failed: %v", res.Error)
	case !res.Matches && res.FailedConditionName != "":
		fix := conditionFixes[res.FailedConditionName]
		if fix == "" {
			fix = "change the pod so that the condition holds, or the condition"
		}
		i := slices.IndexFunc(conds, func(c admissionregistrationv1.MatchCondition) bool { return c.Name == res.FailedConditionName })
		return fail(name, fix, "%s is false for this pod: %s", res.FailedConditionName, strings.Join(strings.Fields(conds[i].Expression), " "))
	case !res.Matches:
		return fail(name, "correct the expressions", "the conditions could not be evaluated (failurePolicy Ignore skips the pod)")
	}
	var names []string
	for _, c := range conds {
		names = append(names, c.Name)
	}
	return ok(name, "all true (%s)", strings.Join(names, ", "))
}
