package policy

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/webhook"
)

// Name names the four objects Render returns.
const Name = "podmeta"

// Policies are podmeta's injection compiled for the apiserver: a MutatingAdmissionPolicy
// that performs it and a ValidatingAdmissionPolicy that denies what the webhook denies,
// each with its binding.
type Policies struct {
	Mutating          *admissionregistrationv1.MutatingAdmissionPolicy
	MutatingBinding   *admissionregistrationv1.MutatingAdmissionPolicyBinding
	Validating        *admissionregistrationv1.ValidatingAdmissionPolicy
	ValidatingBinding *admissionregistrationv1.ValidatingAdmissionPolicyBinding
}

// Object is a Kubernetes object, as clients create it (controller-runtime's
// client.Object is the same interface).
type Object interface {
	metav1.Object
	runtime.Object
}

// Objects lists the four objects in the order they are applied: each policy before its
// binding, the validating one first so that no pod is mutated without being checked.
func (p *Policies) Objects() []Object {
	return []Object{p.Validating, p.ValidatingBinding, p.Mutating, p.MutatingBinding}
}

// YAML renders the four objects as one multi-document YAML stream.
func (p *Policies) YAML() ([]byte, error) {
	var out []byte
	for i, o := range p.Objects() {
		b, err := yaml.Marshal(o)
		if err != nil {
			return nil, err
		}
		if i > 0 {
			out = append(out, "---\n"...)
		}
		out = append(out, b...)
	}
	return out, nil
}

// Sentinels the engine's objects are built with where the pod decides; template
// replaces them with CEL.
const (
	sentName   = "PODMETA-SENTINEL-NAME"
	sentPath   = "/PODMETA-SENTINEL-PATH"
	sentMode   = "PODMETA-SENTINEL-MODE"
	sentPrefix = "PODMETA-SENTINEL-PREFIX"
	sentPort   = 4000001 // never a port: the engine builds the container without checking
)

// quantityRE is the text podmeta lets reach quantity(): the grammar of
// resource.ParseQuantity with at most three exponent digits, so that no huge exponent
// reaches the apiserver's arithmetic (webhook/bounds.go checkQuantityText is the
// engine's rule; the policy's is stricter on the exponent's digits, and its text is
// bounded to maxQuantityText characters).
const (
	quantityRE      = `^[+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([numkMGTPE]|[KMGTPE]i|[eE][+-]?[0-9]{1,3})?$`
	maxQuantityText = 64
	maxQuantity     = "9223372036854775807"
)

// Render compiles cfg (the flags podmeta webhook takes) into Policies. The ambassador is
// always a native sidecar: MutatingAdmissionPolicy needs Kubernetes >= 1.36.
func Render(cfg webhook.Config) (*Policies, error) {
	cfg.NativeSidecar = webhook.NativeSidecarAlways
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &renderer{cfg: cfg, defaults: webhook.PolicyAnnotationDefaults(&cfg)}
	return r.render()
}

type renderer struct {
	cfg      webhook.Config
	defaults map[string]string
}

func (r *renderer) render() (*Policies, error) {
	rules := []admissionregistrationv1.NamedRuleWithOperations{{
		RuleWithOperations: admissionregistrationv1.RuleWithOperations{
			Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
			Rule: admissionregistrationv1.Rule{
				APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"},
			},
		},
	}}
	match := &admissionregistrationv1.MatchResources{
		ResourceRules: rules,
		NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: webhook.LabelInject, Operator: metav1.LabelSelectorOpIn, Values: []string{"enabled"}},
			{Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: slices.Clone(r.cfg.ExcludedNamespaces)},
		}},
		ObjectSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: webhook.LabelInject, Operator: metav1.LabelSelectorOpNotIn, Values: []string{"disabled"}},
		}},
	}
	if len(r.cfg.ExcludedNamespaces) == 0 {
		match.NamespaceSelector.MatchExpressions = match.NamespaceSelector.MatchExpressions[:1]
	}
	conditions := []admissionregistrationv1.MatchCondition{
		{Name: "not-a-mirror-pod", Expression: `!has(object.metadata.annotations) || !(` + lit(webhook.AnnotationMirrorPod) + ` in object.metadata.annotations)`},
		{Name: "not-opted-out", Expression: `!has(object.metadata.annotations) || !(` + lit(webhook.AnnotationInject) + ` in object.metadata.annotations) || object.metadata.annotations[` + lit(webhook.AnnotationInject) + `].trim().lowerAscii() != 'false'`},
	}
	// The MAP's own condition, for the apiserver's reinvocation pass: it reinvokes a
	// policy after that policy's own change, and the pass would compute the whole plan
	// again to add nothing. A pod with podmeta's record whose podmeta.io/injected names
	// every container but the ambassador is taken as injected; a container a later
	// mutator added is not named there, and the pass injects it.
	injectedAll := admissionregistrationv1.MatchCondition{Name: "not-injected-yet", Expression: unbind(
		`!has(object.metadata.annotations) || !(` + lit(webhook.AnnotationStatus) + ` in object.metadata.annotations) || !(` + lit(webhook.AnnotationInjected) + ` in object.metadata.annotations) || ` +
			`cel.bind(inj, object.metadata.annotations[` + lit(webhook.AnnotationInjected) + `].split(','), ` +
			`(dyn(object.spec.?initContainers.orValue([])) + object.spec.containers).exists(c, c.name != ` + lit(webhook.AmbassadorContainerName) + ` && !(c.name in inj)))`)}
	ignore := admissionregistrationv1.Ignore
	fail := admissionregistrationv1.Fail
	shared := r.sharedVariables()
	mutate, err := r.mutation()
	if err != nil {
		return nil, err
	}
	injection := r.injectionVariables()
	for _, vs := range [][]admissionregistrationv1.Variable{shared, injection} {
		for i := range vs {
			vs[i].Expression = unbind(vs[i].Expression)
		}
	}
	mutate = unbind(mutate)
	p := &Policies{
		Mutating: &admissionregistrationv1.MutatingAdmissionPolicy{
			TypeMeta:   metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "MutatingAdmissionPolicy"},
			ObjectMeta: metav1.ObjectMeta{Name: Name},
			Spec: admissionregistrationv1.MutatingAdmissionPolicySpec{
				MatchConstraints: match.DeepCopy(),
				MatchConditions:  append(slices.Clone(conditions), injectedAll),
				Variables:        append(slices.Clone(shared), injection...),
				Mutations: []admissionregistrationv1.Mutation{{
					PatchType: admissionregistrationv1.PatchTypeJSONPatch,
					JSONPatch: &admissionregistrationv1.JSONPatch{Expression: mutate},
				}},
				// The webhook's reinvocationPolicy: podmeta runs again after a later
				// mutator adds a container, and injects it.
				ReinvocationPolicy: admissionregistrationv1.IfNeededReinvocationPolicy,
				// The webhook's failurePolicy: a pod the policy cannot evaluate is created
				// without injection rather than refused.
				FailurePolicy: &ignore,
			},
		},
		MutatingBinding: &admissionregistrationv1.MutatingAdmissionPolicyBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "MutatingAdmissionPolicyBinding"},
			ObjectMeta: metav1.ObjectMeta{Name: Name},
			Spec:       admissionregistrationv1.MutatingAdmissionPolicyBindingSpec{PolicyName: Name},
		},
		Validating: &admissionregistrationv1.ValidatingAdmissionPolicy{
			TypeMeta:   metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "ValidatingAdmissionPolicy"},
			ObjectMeta: metav1.ObjectMeta{Name: Name + "-annotations"},
			Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
				MatchConstraints: match.DeepCopy(),
				MatchConditions:  slices.Clone(conditions),
				Variables:        append(slices.Clone(shared), r.validatingVariables()...),
				Validations: []admissionregistrationv1.Validation{{
					Expression:        `size(variables.invalid) == 0`,
					MessageExpression: `variables.invalid.join('; ')`,
					Reason:            ptr(metav1.StatusReasonForbidden),
				}},
				FailurePolicy: &fail,
			},
		},
		ValidatingBinding: &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "ValidatingAdmissionPolicyBinding"},
			ObjectMeta: metav1.ObjectMeta{Name: Name + "-annotations"},
			Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
				PolicyName:        Name + "-annotations",
				ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
			},
		},
	}
	return p, nil
}

func ptr[T any](v T) *T { return &v }

// items is a comma list's items, trimmed, without empty ones (webhook splitList).
func items(v string) string {
	return "(" + v + ").split(',').map(x, x.trim()).filter(x, x != '')"
}

// norm is the engine's norm: trimmed, lower case.
func norm(v string) string { return "(" + v + ").trim().lowerAscii()" }

// setting is the effective text of an annotation: the pod's, else the namespace's, else
// the operator's default.
func setting(key string) string { return "variables.s[" + lit(key) + "]" }

// sharedVariables are the MAP's and VAP's common variables: the annotations, the
// effective settings, and the list of invalid ones with the webhook's messages.
func (r *renderer) sharedVariables() []admissionregistrationv1.Variable {
	keys := webhook.PolicyAnnotationKeys()
	var s []string
	for _, k := range keys {
		s = append(s, fmt.Sprintf("%s: %s in variables.pa ? variables.pa[%s] : (%s in variables.na ? variables.na[%s] : %s)",
			lit(k), lit(k), lit(k), lit(k), lit(k), lit(r.defaults[k])))
	}
	var entries []string
	for _, src := range []struct{ name, m string }{{"pod", "variables.pa"}, {"namespace", "variables.na"}} {
		for _, k := range keys {
			entries = append(entries, fmt.Sprintf(
				"%[2]s in %[1]s ? cel.bind(v, %[1]s[%[2]s], cel.bind(r, %[3]s, r == '' ? '' : %[4]s + ' annotation ' + %[5]s + '=' + strings.quote(size(v) <= 80 ? v : v.substring(0, 80) + '…(' + string(size(bytes(v))) + ' bytes)') + ' is invalid: ' + r)) : ''",
				src.m, lit(k), r.reason(k, "v"), lit(src.name), lit(k)))
		}
	}
	entries = append(entries, r.crossChecks()...)
	return []admissionregistrationv1.Variable{
		{Name: "pa", Expression: `object.metadata.?annotations.orValue({})`},
		{Name: "na", Expression: `namespaceObject.metadata.?annotations.orValue({})`},
		// Whether the pod or its namespace has any podmeta.io/ annotation: without one,
		// every setting is the operator's default, which Render validated.
		{Name: "annotated", Expression: "variables.pa.exists(k, k.startsWith(" + lit(webhook.Prefix) + ")) || variables.na.exists(k, k.startsWith(" + lit(webhook.Prefix) + "))"},
		{Name: "s", Expression: "!variables.annotated ? " + r.defaultsLiteral(keys) + " : {" + strings.Join(s, ", ") + "}"},
		{Name: "ambassadorAllowed", Expression: ambassadorAllowed},
		{Name: "invalid", Expression: r.noDefaultClash() + "[\n" + strings.Join(entries, ",\n") + "\n].filter(x, x != '').sort()"},
	}
}

// defaultsLiteral is the settings map of a pod and namespace without podmeta
// annotations: the operator's defaults.
func (r *renderer) defaultsLiteral(keys []string) string {
	var s []string
	for _, k := range keys {
		s = append(s, lit(k)+": "+lit(r.defaults[k]))
	}
	return "{" + strings.Join(s, ", ") + "}"
}

// noDefaultClash is the start of the invalid variable: a pod and namespace without
// podmeta annotations have nothing invalid, unless the operator turned the ambassador on
// by default (its port may clash with the pod's own ports). The defaults themselves pass
// Settings.check (webhook.Config.Validate, which Render calls). The operator's default
// is written as a CEL literal, as every default is, so that a template can set it.
func (r *renderer) noDefaultClash() string {
	return "!variables.annotated && " + norm(lit(r.defaults[webhook.AnnotationAmbassador])) + " != 'true' ? [] : "
}

// ambassadorAllowed is checkAmbassador's first four cases: the pod may have API
// credentials on its loopback. The ServiceAccount admission plugin has run (the
// apiserver runs admission policies after it), so a pod without a kube-api-access
// volume is one whose ServiceAccount opted out.
var ambassadorAllowed = `!object.spec.?hostNetwork.orValue(false) && object.spec.?automountServiceAccountToken.orValue(true) && ` +
	`object.spec.?volumes.orValue([]).exists(v, v.name.startsWith('kube-api-access-') && has(v.projected)) && ` +
	`object.spec.?os.?name.orValue('') != 'windows'`

// quantityOK is the regex every quantity's text passes before quantity().
func quantityOK(v string) string {
	return fmt.Sprintf("(size(%[1]s) <= %[2]d && %[1]s.matches(%[3]s))", v, maxQuantityText, lit(quantityRE))
}

// reason is a CEL expression of the engine's reason why v is invalid for key, or ”.
func (r *renderer) reason(key, v string) string {
	tooLong := fmt.Sprintf("size(bytes(%s)) > %d ? string(size(bytes(%s))) + ' bytes, above the %d podmeta accepts' : ", v, webhook.MaxAnnotationValueBytes, v, webhook.MaxAnnotationValueBytes)
	tooMany := func(max int) string {
		return fmt.Sprintf("size(%s) > %d ? string(size(%s)) + ' items, above the %d podmeta accepts' : ", items(v), max, items(v), max)
	}
	var body string
	switch key {
	case webhook.AnnotationInject, webhook.AnnotationVolume, webhook.AnnotationAmbassador:
		body = fmt.Sprintf("%s in ['true', 'false'] ? '' : 'valid values are true, false'", norm(v))
	case webhook.AnnotationEnv:
		var names []string
		for _, k := range webhook.PolicyEnvKeys() {
			names = append(names, k.Var.Name)
		}
		valid := "valid values are default, all, none, or a comma list of " + strings.Join(names, ", ")
		allowed := []string{webhook.EnvSetDefault, webhook.EnvSetAll}
		for _, n := range names {
			allowed = append(allowed, strings.ToLower(n))
		}
		body = tooMany(webhook.MaxEnvListItems) + fmt.Sprintf(
			"%s == 'none' || (size(%s) >= 2 && %s.all(i, i.lowerAscii() == 'none')) ? '' : "+
				"size(%s) == 0 ? %s : "+
				"cel.bind(bad, %s.filter(i, !(i.lowerAscii() in %s)), size(bad) == 0 ? '' : 'unknown key ' + strings.quote(bad[0]) + %s)",
			norm(v), items(v), items(v), items(v), lit("empty; "+valid), items(v), litList(allowed), lit("; "+valid))
	case webhook.AnnotationEnvPrefix:
		body = fmt.Sprintf("cel.bind(t, (%s).trim(), t == '' || (size(t) <= 64 && t.matches('^[A-Za-z_][A-Za-z0-9_]*$')) ? '' : %s)",
			v, lit("must be empty or a C identifier prefix of at most 64 characters (letters, digits and _, not starting with a digit), e.g. K8S_"))
	case webhook.AnnotationContainers:
		regex := validation.IsDNS1123Label("-")[0]
		long := validation.IsDNS1123Label(strings.Repeat("a", 64))[0]
		body = tooMany(webhook.MaxContainersListItems) + fmt.Sprintf(
			"cel.bind(bad, %s.filter(n, size(n) > 63 || !n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')), size(bad) == 0 ? '' : "+
				"'container name ' + strings.quote(bad[0]) + ': ' + (size(bad[0]) > 63 ? (bad[0].matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') ? %s : %s) : %s) + '; want a comma list of container names')",
			items(v), lit(long), lit(long+" "+regex), lit(regex))
	case webhook.AnnotationVolumePath:
		body = fmt.Sprintf("cel.bind(t, (%s).trim(), t.startsWith('/') && t != '/' && !t.contains(':') && size(bytes(t)) <= 1024 && !t.matches('//|/[.][.]?(/|$)|/$') ? '' : %s)",
			v, lit("must be a clean absolute path other than / without ':', e.g. "+webhook.DefaultVolumePath))
	case webhook.AnnotationEphemeralStorageRequest, webhook.AnnotationEphemeralStorageLimit:
		want := "must be a positive quantity such as 64Mi or 1Gi, or none"
		body = fmt.Sprintf("cel.bind(t, (%s).trim(), t.lowerAscii() == 'none' ? '' : !%s ? %s : !quantity(t).isGreaterThan(quantity('0')) ? %s : quantity(t).compareTo(quantity(%s)) > 0 ? %s : '')",
			v, quantityOK("t"), lit(want), lit(want), lit(maxQuantity), lit(webhook.PolicyCheckQuantity("1e30")+"; want a positive quantity such as 64Mi or 1Gi, or none"))
	case webhook.AnnotationAmbassadorMode:
		body = fmt.Sprintf("%s in [%s, %s] ? '' : 'valid values are read-only, read-write'", norm(v), lit(webhook.ModeReadOnly), lit(webhook.ModeReadWrite))
	case webhook.AnnotationAmbassadorPort:
		body = fmt.Sprintf("cel.bind(t, (%s).trim(), t.matches('^[+-]?0*[0-9]{1,9}$') && int(t) >= 1024 && int(t) <= 65535 ? '' : 'must be a port number from 1024 to 65535')", v)
	default:
		panic("policy: no CEL rule for annotation " + key + " (add one in reason)")
	}
	return "(" + tooLong + "(" + body + "))"
}

// crossChecks are Settings.check and checkAmbassador's port clash, on the effective
// settings, each evaluated only when the settings they read are valid.
func (r *renderer) crossChecks() []string {
	req, lim := setting(webhook.AnnotationEphemeralStorageRequest), setting(webhook.AnnotationEphemeralStorageLimit)
	valid := func(key string) string { return r.reason(key, setting(key)) + " == ''" }
	storage := fmt.Sprintf("%s && %s && %s != 'none' && %s != 'none' && quantity(%s.trim()).compareTo(quantity(%s.trim())) > 0 ? %s + '=' + %s.trim() + ' is above ' + %s + '=' + %s.trim() + ': a request can never exceed its limit' : ''",
		valid(webhook.AnnotationEphemeralStorageRequest), valid(webhook.AnnotationEphemeralStorageLimit), norm(req), norm(lim), req, lim,
		lit(webhook.AnnotationEphemeralStorageRequest), req, lit(webhook.AnnotationEphemeralStorageLimit), lim)
	port := setting(webhook.AnnotationAmbassadorPort)
	clash := fmt.Sprintf("%s && %s == 'true' && variables.ambassadorAllowed && %s ? "+
		"cel.bind(p, int(%s.trim()), cel.bind(h, p == 65535 ? 65534 : p + 1, "+
		"cel.bind(cs, (dyn(object.spec.?initContainers.orValue([])) + object.spec.?containers.orValue([])).filter(c, c.name != %s && c.?ports.orValue([]).exists(x, x.containerPort == p || x.containerPort == h)), "+
		"size(cs) == 0 ? '' : cel.bind(x, cs[0].ports.filter(x, x.containerPort == p || x.containerPort == h)[0].containerPort, "+
		"%s + '=' + string(p) + ': container ' + strings.quote(cs[0].name) + ' already declares port ' + string(x) + ', and the ambassador needs ports ' + string(p) + ' and ' + string(h) + '; choose another port from 1024 to 65535')))) : ''",
		valid(webhook.AnnotationAmbassador), norm(setting(webhook.AnnotationAmbassador)), valid(webhook.AnnotationAmbassadorPort), port,
		lit(webhook.AmbassadorContainerName), lit(webhook.AnnotationAmbassadorPort))
	return []string{storage, clash}
}

// validatingVariables are the VAP's own: none beyond the shared ones.
func (r *renderer) validatingVariables() []admissionregistrationv1.Variable { return nil }

// injectionVariables decide, from the pod as it is now, what the mutation adds: the
// same decisions the engine's planner makes (webhook/plan*.go), step by step.
func (r *renderer) injectionVariables() []admissionregistrationv1.Variable {
	keys := webhook.PolicyEnvKeys()
	var names, defaults []string
	var defaultIdx, allIdx []int
	for i, k := range keys {
		names = append(names, k.Var.Name)
		allIdx = append(allIdx, i)
		if k.InDefault {
			defaults = append(defaults, k.Var.Name)
			defaultIdx = append(defaultIdx, i)
		}
	}
	env := setting(webhook.AnnotationEnv)
	envItems := items(env) + ".map(i, i.lowerAscii())"
	podFiles := webhook.PolicyMetadataVolume(nil).DownwardAPI.Items
	var podPaths []string
	for _, f := range podFiles {
		podPaths = append(podPaths, f.Path)
	}
	tp := template{holes: map[string]string{sentName: "n"}}
	var filePaths []string
	for _, f := range webhook.PolicyContainerMetadataFiles(sentName) {
		filePaths = append(filePaths, tp.str(f.Path))
	}
	req, lim := setting(webhook.AnnotationEphemeralStorageRequest), setting(webhook.AnnotationEphemeralStorageLimit)
	cmp := func(have, want string) string {
		return fmt.Sprintf("(!%s ? 1 : quantity(%s).compareTo(quantity(%s)))", quantityOK(have), have, want)
	}
	v := []admissionregistrationv1.Variable{
		{Name: "inject", Expression: "size(variables.invalid) == 0 && " + norm(setting(webhook.AnnotationInject)) + " == 'true'"},
		{Name: "nInit", Expression: "size(object.spec.?initContainers.orValue([]))"},
		// Every container, init containers first: a global index g is initContainers[g]
		// below nInit, containers[g - nInit] from it.
		// dyn: in the Pod's schema, as the apiserver type-checks, an init container and a
		// container are two types.
		{Name: "ctrs", Expression: "dyn(object.spec.?initContainers.orValue([])) + object.spec.?containers.orValue([])"},
		{Name: "all", Expression: "lists.range(size(variables.ctrs)).filter(g, variables.ctrs[g].name != " + lit(webhook.AmbassadorContainerName) + ")"},
		{Name: "names", Expression: items(setting(webhook.AnnotationContainers)) + ".distinct()"},
		{Name: "targets", Expression: "size(variables.names) == 0 ? variables.all : " +
			"variables.names.filter(n, variables.all.exists(g, variables.ctrs[g].name == n)).map(n, variables.all.filter(g, variables.ctrs[g].name == n)[0])"},
		// The ambassador is (or will be) in the pod.
		{Name: "amb", Expression: norm(setting(webhook.AnnotationAmbassador)) + " == 'true' && variables.ambassadorAllowed && " +
			"!object.spec.?volumes.orValue([]).exists(v, v.name == " + lit(webhook.AmbassadorTokenVolumeName) + " && !has(v.projected))"},
		{Name: "ambAdd", Expression: "variables.inject && variables.amb && !variables.ctrs.exists(c, c.name == " + lit(webhook.AmbassadorContainerName) + ")"},
		{Name: "port", Expression: "variables.inject ? int(" + setting(webhook.AnnotationAmbassadorPort) + ".trim()) : 0"},
		{Name: "healthPort", Expression: "variables.port == 65535 ? 65534 : variables.port + 1"},
		{Name: "mode", Expression: norm(setting(webhook.AnnotationAmbassadorMode))},
		{Name: "prefix", Expression: setting(webhook.AnnotationEnvPrefix) + ".trim()"},
		// The selected env keys, as indices of the engine's table.
		// The two common settings, default and all, are lists written out here.
		{Name: "envIdx", Expression: fmt.Sprintf("cel.bind(items, %s, items == ['default'] ? %s : items == ['all'] ? %s : "+
			"%s == 'none' || (size(items) >= 2 && items.all(i, i == 'none')) ? [] : "+
			"lists.range(%d).filter(k, items.exists(i, i == 'all' || (i == 'default' && %s[k] in %s) || i == %s[k].lowerAscii())))",
			envItems, intList(defaultIdx), intList(allIdx), norm(env), len(names), litList(names), litList(defaults), litList(names))},
		{Name: "want", Expression: "variables.envIdx.map(k, variables.prefix + " + litList(names) + "[k]) + (variables.amb ? [" + lit(webhook.EnvAPIURL) + "] : [])"},
		// want's names as JSON strings, for the record: a valid prefix and the keys'
		// names are letters, digits and _, which JSON does not escape.
		{Name: "wantQ", Expression: `variables.want.map(w, '"' + w + '"')`},
		// want's values, for the mutation.
		{Name: "envVals", Expression: envValues()},
		// Per target, the indices in want of the vars it lacks.
		{Name: "missing", Expression: "variables.targets.map(g, lists.range(size(variables.want)).filter(j, !variables.ctrs[g].?env.orValue([]).exists(e, e.name == variables.want[j])))"},
		{Name: "volIdx", Expression: "cel.bind(vs, object.spec.?volumes.orValue([]), cel.bind(i, lists.range(size(vs)).filter(i, vs[i].name == " + lit(webhook.VolumeName) + "), size(i) == 0 ? -1 : i[0]))"},
		{Name: "volOurs", Expression: norm(setting(webhook.AnnotationVolume)) + " == 'true' && (variables.volIdx < 0 || has(object.spec.volumes[variables.volIdx].downwardAPI))"},
		{Name: "path", Expression: setting(webhook.AnnotationVolumePath) + ".trim()"},
		{Name: "wantPaths", Expression: litList(podPaths) + " + variables.targets.map(g, cel.bind(n, variables.ctrs[g].name, [" + strings.Join(filePaths, ", ") + "])).flatten()"},
		{Name: "newItems", Expression: "variables.volIdx < 0 || !variables.volOurs ? [] : cel.bind(have, object.spec.volumes[variables.volIdx].downwardAPI.?items.orValue([]).map(x, x.path), " +
			"lists.range(size(variables.wantPaths)).filter(j, !(variables.wantPaths[j] in have)))"},
		{Name: "volAdd", Expression: "variables.volOurs && variables.volIdx < 0"},
		{Name: "mountT", Expression: "!variables.volOurs ? [] : variables.targets.filter(g, !variables.ctrs[g].?volumeMounts.orValue([]).exists(m, m.name == " + lit(webhook.VolumeName) + " || m.mountPath == variables.path))"},
		{Name: "req", Expression: fmt.Sprintf("%s == 'none' ? '' : %s.trim()", norm(req), req)},
		{Name: "lim", Expression: fmt.Sprintf("%s == 'none' ? '' : %s.trim()", norm(lim), lim)},
		// Per container of all: [request, limit] podmeta sets, '' for none.
		{Name: "storage", Expression: fmt.Sprintf("variables.all.map(g, cel.bind(c, variables.ctrs[g], "+
			"cel.bind(hr, c.?resources.?requests[?'ephemeral-storage'].orValue(''), cel.bind(hl, c.?resources.?limits[?'ephemeral-storage'].orValue(''), ["+
			"variables.req != '' && hr == '' ? (hl != '' && %s < 0 ? hl : variables.req) : '', "+
			"variables.lim != '' && hl == '' && !(hr != '' && %s > 0) ? variables.lim : '']))))",
			cmp("hl", "variables.req"), cmp("hr", "variables.lim"))},
		{Name: "tokenAdd", Expression: "variables.ambAdd && !object.spec.?volumes.orValue([]).exists(v, v.name == " + lit(webhook.AmbassadorTokenVolumeName) + ")"},
	}
	return append(v, r.statusVariables()...)
}

// esc escapes a CEL string expression's value for a JSON string.
func esc(v string) string { return "(" + v + ").replace('\\\\', '\\\\\\\\').replace('\"', '\\\\\"')" }

// statusVariables build podmeta.io/status and podmeta.io/injected (webhook/status.go)
// from this pass's additions.
func (r *renderer) statusVariables() []admissionregistrationv1.Variable {
	q := func(v string) string { return `'"' + ` + esc(v) + ` + '"'` }
	return []admissionregistrationv1.Variable{
		{Name: "stEnv", Expression: "lists.range(size(variables.targets)).filter(t, size(variables.missing[t]) > 0).map(t, " +
			q("variables.ctrs[variables.targets[t]].name") + " + ':[' + variables.missing[t].map(j, variables.wantQ[j]).join(',') + ']').sort()"},
		{Name: "stStorage", Expression: "lists.range(size(variables.all)).filter(a, variables.storage[a][0] != '' || variables.storage[a][1] != '').map(a, cel.bind(s, variables.storage[a], " +
			q("variables.ctrs[variables.all[a]].name") + " + ':{' + ((s[1] != '' ? ['\"limit\":\"' + s[1] + '\"'] : []) + (s[0] != '' ? ['\"request\":\"' + s[0] + '\"'] : [])).join(',') + '}')).sort()"},
		{Name: "stCreated", Expression: "lists.range(size(variables.all)).map(a, cel.bind(g, variables.all[a], cel.bind(c, variables.ctrs[g], cel.bind(t, size(variables.names) == 0 ? a : variables.targets.exists(x, x == g) ? lists.range(size(variables.targets)).filter(t, variables.targets[t] == g)[0] : -1, cel.bind(s, variables.storage[a], " +
			"cel.bind(w, (t >= 0 && size(variables.missing[t]) > 0 && !has(c.env) ? ['env'] : []) + (variables.mountT.exists(x, x == g) && !has(c.volumeMounts) ? ['volumeMounts'] : []) + " +
			"(s[0] == '' && s[1] == '' ? [] : !has(c.resources) ? ['resources'] : (s[0] != '' && !has(c.resources.requests) ? ['resources.requests'] : []) + (s[1] != '' && !has(c.resources.limits) ? ['resources.limits'] : [])), " +
			"size(w) == 0 ? '' : " + q("c.name") + " + ':[' + w.map(x, '\"' + x + '\"').join(',') + ']')))))).filter(x, x != '').sort()"},
		{Name: "stCreatedPod", Expression: "(!has(object.spec.volumes) && (variables.volAdd || variables.tokenAdd) ? ['volumes'] : []) + " +
			"(variables.ambAdd && !has(object.spec.initContainers) ? ['initContainers'] : []) + (!has(object.metadata.annotations) ? ['annotations'] : [])"},
		{Name: "status", Expression: "((size(variables.stEnv) > 0 ? ['\"env\":{' + variables.stEnv.join(',') + '}'] : []) + " +
			"(variables.volAdd || size(variables.newItems) > 0 ? ['\"volume\":' + " + q("variables.path") + "] : []) + " +
			"(size(variables.mountT) > 0 ? ['\"mounts\":[' + variables.mountT.map(g, " + q("variables.ctrs[g].name") + ").join(',') + ']'] : []) + " +
			"(size(variables.stStorage) > 0 ? ['\"ephemeralStorage\":{' + variables.stStorage.join(',') + '}'] : []) + " +
			"(variables.ambAdd ? ['\"ambassador\":\"native-sidecar\"'] : []) + " +
			"(size(variables.stCreated) + size(variables.stCreatedPod) > 0 ? ['\"created\":{' + ((size(variables.stCreatedPod) > 0 ? ['\"pod\":[' + variables.stCreatedPod.map(x, '\"' + x + '\"').join(',') + ']'] : []) + " +
			"(size(variables.stCreated) > 0 ? ['\"containers\":{' + variables.stCreated.join(',') + '}'] : [])).join(',') + '}'] : [])" +
			").join(',')"},
		{Name: "injected", Expression: "variables.all.filter(g, variables.mountT.exists(x, x == g) || lists.range(size(variables.targets)).exists(t, variables.targets[t] == g && size(variables.missing[t]) > 0)).map(g, variables.ctrs[g].name).distinct().join(',')"},
	}
}

// mutationTemplate renders the engine's objects with the pod's values: a container's
// name (n, bound where it is used), the mount path, the ambassador's mode and ports,
// and the env prefix.
var mutationTemplate = template{holes: map[string]string{sentName: "n", sentPath: "variables.path", sentMode: "variables.mode", sentPrefix: "variables.prefix",
	strconv.Itoa(sentPort): "string(variables.port)", strconv.Itoa(sentPort + 1): "string(variables.healthPort)"},
	ints: map[int64]string{sentPort: "variables.port", sentPort + 1: "variables.healthPort"}}

// envValues is the env vars podmeta adds to a target container lacking them all, in the
// order of want: each selected key's literal, built once.
func envValues() string {
	var sel []string
	for k, key := range webhook.PolicyEnvKeys() {
		v := key.Var
		v.Name = sentPrefix + v.Name
		sel = append(sel, fmt.Sprintf("(%d in variables.envIdx ? [%s] : [])", k, mutationTemplate.literal(v)))
	}
	return strings.Join(sel, " + ") + " + (variables.amb ? [" + mutationTemplate.literal(webhook.PolicyAPIURL(sentPort)) + "] : [])"
}

// mutation is the one JSONPatch expression: one, so that every step reads the pod as it
// was before this pass (as the engine's plan does), in the engine's order (env and
// mounts per container, then storage, the ambassador at initContainers[0] last among
// the spec's additions, the status record).
func (r *renderer) mutation() (string, error) {
	tpl := mutationTemplate
	amb, err := webhook.PolicyAmbassador(r.cfg, true, sentPort, sentMode)
	if err != nil {
		return "", err
	}
	if got := webhook.PolicyAPIURL(sentPort); got.Value == "" || got.ValueFrom != nil {
		return "", fmt.Errorf("policy: PODMETA_API_URL is not a plain value")
	}
	metaVol := webhook.PolicyMetadataVolume(nil)
	if shell, _ := json.Marshal(corev1.Volume{Name: webhook.VolumeName, VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: metaVol.DownwardAPI.Items}}}); string(shell) != string(mustJSON(metaVol)) {
		return "", fmt.Errorf("policy: the metadata volume has fields the policy does not render: %s", mustJSON(metaVol))
	}
	items := tpl.literal(metaVol.DownwardAPI.Items) + " + variables.targets.map(g, cel.bind(n, variables.ctrs[g].name, " +
		tpl.literal(webhook.PolicyContainerMetadataFiles(sentName)) + ")).flatten()"
	volume := "{'name': dyn(" + lit(webhook.VolumeName) + "), 'downwardAPI': dyn({'items': items})}"

	var ops []string
	for _, list := range []struct {
		name string
		init bool
	}{{"initContainers", true}, {"containers", false}} {
		inList := "variables.targets[t] < variables.nInit"
		idx := "variables.targets[t]"
		gIdx := "g"
		if !list.init {
			inList = "variables.targets[t] >= variables.nInit"
			idx = "variables.targets[t] - variables.nInit"
			gIdx = "g - variables.nInit"
		}
		inListG := strings.ReplaceAll(inList, "variables.targets[t]", "g")
		base := "'/spec/" + list.name + "/' + string(i)"
		ops = append(ops,
			// env: before the container's own, so its $(VAR) references resolve.
			fmt.Sprintf("lists.range(size(variables.targets)).filter(t, %s && size(variables.missing[t]) > 0).map(t, cel.bind(i, %s, cel.bind(vals, variables.missing[t].map(j, variables.envVals[j]), "+
				"!has(object.spec.%s[i].env) ? [JSONPatch{op: 'add', path: %s + '/env', value: vals}] : "+
				"lists.range(size(vals)).map(j, JSONPatch{op: 'add', path: %s + '/env/' + string(j), value: vals[j]})))).flatten()",
				inList, idx, list.name, base, base),
			// the metadata mount
			fmt.Sprintf("variables.mountT.filter(g, %s).map(g, cel.bind(i, %s, cel.bind(m, %s, has(object.spec.%s[i].volumeMounts) ? "+
				"JSONPatch{op: 'add', path: %s + '/volumeMounts/-', value: m} : JSONPatch{op: 'add', path: %s + '/volumeMounts', value: [m]})))",
				inListG, gIdx, tpl.literal(webhook.PolicyMetadataMount(sentPath)), list.name, base, base),
		)
		// ephemeral-storage defaults
		storage := fmt.Sprintf("lists.range(size(variables.all)).filter(a, cel.bind(g, variables.all[a], %s) && (variables.storage[a][0] != '' || variables.storage[a][1] != '')).map(a, cel.bind(g, variables.all[a], cel.bind(i, %s, cel.bind(s, variables.storage[a], cel.bind(c, object.spec.%s[i], "+
			"!has(c.resources) ? [JSONPatch{op: 'add', path: %s + '/resources', value: {?'requests': s[0] != '' ? optional.of({'ephemeral-storage': s[0]}) : optional.none(), ?'limits': s[1] != '' ? optional.of({'ephemeral-storage': s[1]}) : optional.none()}}] : "+
			"(s[0] == '' ? [] : has(c.resources.requests) ? [JSONPatch{op: 'add', path: %s + '/resources/requests/ephemeral-storage', value: s[0]}] : [JSONPatch{op: 'add', path: %s + '/resources/requests', value: {'ephemeral-storage': s[0]}}]) + "+
			"(s[1] == '' ? [] : has(c.resources.limits) ? [JSONPatch{op: 'add', path: %s + '/resources/limits/ephemeral-storage', value: s[1]}] : [JSONPatch{op: 'add', path: %s + '/resources/limits', value: {'ephemeral-storage': s[1]}}])))))).flatten()",
			inListG, gIdx, list.name, base, base, base, base, base)
		ops = append(ops, storage)
	}
	// The metadata volume: a new one, or the items podmeta's existing one lacks.
	ops = slices.Insert(ops, 0, fmt.Sprintf("!variables.volAdd && size(variables.newItems) == 0 ? [] : cel.bind(items, %s, variables.volAdd ? [has(object.spec.volumes) ? JSONPatch{op: 'add', path: '/spec/volumes/-', value: %s} : JSONPatch{op: 'add', path: '/spec/volumes', value: [%s]}] : "+
		"size(variables.newItems) == 0 ? [] : cel.bind(p, '/spec/volumes/' + string(variables.volIdx) + '/downwardAPI/items', cel.bind(add, variables.newItems.map(j, items[j]), "+
		"has(object.spec.volumes[variables.volIdx].downwardAPI.items) ? add.map(x, JSONPatch{op: 'add', path: p + '/-', value: x}) : [JSONPatch{op: 'add', path: p, value: add}])))",
		items, volume, volume))
	// The ambassador: its token volume, then the sidecar first among init containers.
	ops = append(ops,
		fmt.Sprintf("!variables.tokenAdd ? [] : cel.bind(v, %s, has(object.spec.volumes) || variables.volAdd ? [JSONPatch{op: 'add', path: '/spec/volumes/-', value: v}] : [JSONPatch{op: 'add', path: '/spec/volumes', value: [v]}])",
			tpl.literal(webhook.PolicyTokenVolume())),
		fmt.Sprintf("!variables.ambAdd ? [] : cel.bind(c, %s, has(object.spec.initContainers) ? [JSONPatch{op: 'add', path: '/spec/initContainers/0', value: c}] : [JSONPatch{op: 'add', path: '/spec/initContainers', value: [c]}])",
			tpl.literal(amb)),
		// The status record, on a pod without one (status.go; docs/policy.md says what
		// differs from the webhook's).
		"has(object.metadata.annotations) && "+lit(webhook.AnnotationStatus)+" in object.metadata.annotations ? [] : "+
			"!has(object.metadata.annotations) ? [JSONPatch{op: 'add', path: '/metadata/annotations', value: {"+lit(webhook.AnnotationStatus)+": '{' + variables.status + '}', "+lit(webhook.AnnotationInjected)+": variables.injected}}] : "+
			"[JSONPatch{op: 'add', path: '/metadata/annotations/"+jsonPointer(webhook.AnnotationStatus)+"', value: '{' + variables.status + '}'}, "+
			"JSONPatch{op: 'add', path: '/metadata/annotations/"+jsonPointer(webhook.AnnotationInjected)+"', value: variables.injected}]",
	)
	return "!variables.inject ? [] :\n(" + strings.Join(ops, ")\n+ (") + ")", nil
}

func jsonPointer(s string) string { return strings.NewReplacer("~", "~0", "/", "~1").Replace(s) }

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
