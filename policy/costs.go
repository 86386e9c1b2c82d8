package policy

import (
	"context"
	"fmt"

	celgo "github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/interpreter"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission"
	plugincel "k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/admission/plugin/policy/mutating/patch"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/cel/common"
	"k8s.io/apiserver/pkg/cel/environment"

	"github.com/podmeta/podmeta/webhook"
)

// The apiserver's CEL cost limits (k8s.io/apiserver/pkg/apis/cel): each variable,
// condition, mutation and validation of an admission policy is one program evaluated
// with PerExpressionLimit; one policy's evaluation on one object shares
// PerEvaluationBudget.
const (
	PerExpressionLimit  = celconfig.PerCallLimit
	PerEvaluationBudget = celconfig.RuntimeCELCostBudget
)

// Cost is the runtime CEL cost the apiserver's cost tracking charges one expression of
// the policies on one pod.
type Cost struct {
	Policy     string
	Expression string // variables.NAME, matchConditions.NAME, mutations[0], validations[0], validations[0].messageExpression
	Cost       int64
}

// RuntimeCosts evaluates every expression of the policies on pod in ns as the
// apiserver does (k8s.io/apiserver: its compiler, environment, activation and cost
// tracking) and reports what each costs: every variable eagerly, in order, with the
// ones before it as its inputs, so that a variable's cost is its own (the apiserver
// evaluates variables lazily, once, and charges each to the expression that reads it
// first). The apiserver's static estimator cannot bound these expressions (the object is
// dyn, and even typed from the Pod's schema optional chains and bindings carry no
// sizes), and it enforces PerExpressionLimit and PerEvaluationBudget at runtime: these
// are the figures it checks.
func RuntimeCosts(p *Policies, pod *corev1.Pod, ns *corev1.Namespace) ([]Cost, error) {
	m, v := p.Mutating, p.Validating
	var conds []expression
	for _, c := range m.Spec.MatchConditions {
		conds = append(conds, expression{"matchConditions." + c.Name, c.Expression, celgo.BoolType, false})
	}
	jp := &patch.JSONPatchCondition{Expression: m.Spec.Mutations[0].JSONPatch.Expression}
	conds = append(conds, expression{"mutations[0]", jp.Expression, jp.ReturnTypes()[0], true})
	out, err := runtimeCosts(m.Name, m.Spec.Variables, conds, pod, ns)
	if err != nil {
		return nil, err
	}
	conds = nil
	for _, c := range v.Spec.MatchConditions {
		conds = append(conds, expression{"matchConditions." + c.Name, c.Expression, celgo.BoolType, false})
	}
	conds = append(conds,
		expression{"validations[0]", v.Spec.Validations[0].Expression, celgo.BoolType, false},
		expression{"validations[0].messageExpression", v.Spec.Validations[0].MessageExpression, celgo.StringType, false})
	vc, err := runtimeCosts(v.Name, v.Spec.Variables, conds, pod, ns)
	return append(out, vc...), err
}

type expression struct {
	name, text string
	ret        *celgo.Type
	patch      bool // a JSONPatch mutation: compiled with the patch types
}

func (e expression) GetExpression() string      { return e.text }
func (e expression) ReturnTypes() []*celgo.Type { return []*celgo.Type{e.ret} }
func (e expression) GetName() string            { return e.name }

// variable is v as the apiserver compiles a policy's variable.
func variable(v admissionregistrationv1.Variable) expression {
	return expression{v.Name, v.Expression, celgo.AnyType, false}
}

// newCompiler is the apiserver's compiler of admission policies, with the variables a
// policy's expressions declare (policyDecls).
func newCompiler() (*plugincel.CompositedCompiler, error) {
	return plugincel.NewCompositedCompiler(environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion()))
}

var policyDecls = plugincel.OptionalVariableDeclarations{HasAuthorizer: true}

var (
	podGVK = schema.GroupVersionKind{Version: "v1", Kind: "Pod"}
	podGVR = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
)

// podCreate is a pod CREATE as the apiserver's admission policies see it.
func podCreate(pod *corev1.Pod) *admission.VersionedAttributes {
	pod = pod.DeepCopy()
	pod.SetGroupVersionKind(podGVK)
	attr := admission.NewAttributesRecord(pod, nil, podGVK, pod.Namespace, pod.Name, podGVR, "", admission.Create, &metav1.CreateOptions{}, false, &user.DefaultInfo{Name: "podmeta"})
	return &admission.VersionedAttributes{Attributes: attr, VersionedObject: admission.NewLazyObject(pod), VersionedKind: podGVK}
}

func runtimeCosts(policy string, vars []admissionregistrationv1.Variable, exprs []expression, pod *corev1.Pod, ns *corev1.Namespace) ([]Cost, error) {
	compiler, err := newCompiler()
	if err != nil {
		return nil, err
	}
	opts := policyDecls
	act, err := newActivation(pod, ns)
	if err != nil {
		return nil, err
	}
	var out []Cost
	eval := func(e expression, res plugincel.CompilationResult) (ref.Val, error) {
		if res.Error != nil {
			return nil, fmt.Errorf("%s %s: %w", policy, e.name, res.Error)
		}
		val, details, err := res.Program.ContextEval(context.Background(), act)
		if details == nil || details.ActualCost() == nil {
			return nil, fmt.Errorf("%s %s: no cost: %w", policy, e.name, err)
		}
		out = append(out, Cost{Policy: policy, Expression: e.name, Cost: int64(*details.ActualCost())})
		if err != nil {
			return types.WrapErr(err), nil // the apiserver reports it where the value is read
		}
		return val, nil
	}
	// As the apiserver compiles a policy: every variable first, then the expressions.
	var compiled []plugincel.CompilationResult
	for _, v := range vars {
		compiled = append(compiled, compiler.CompileAndStoreVariable(variable(v), opts, environment.StoredExpressions))
	}
	for i, v := range vars {
		val, err := eval(expression{name: "variables." + v.Name}, compiled[i])
		if err != nil {
			return nil, err
		}
		act.variables[v.Name] = val
	}
	for _, e := range exprs {
		o := opts
		o.HasPatchTypes = e.patch
		if _, err := eval(e, compiler.CompileCELExpression(e, o, environment.StoredExpressions)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// activation is the apiserver's activation of an admission policy (plugincel's
// newActivation) for a pod CREATE, with the variables already evaluated.
type activation struct {
	object, request, namespace any
	variables                  map[string]ref.Val
}

func newActivation(pod *corev1.Pod, ns *corev1.Namespace) (*activation, error) {
	va := podCreate(pod)
	obj, err := va.VersionedObject.CELValue()
	if err != nil {
		return nil, err
	}
	req := plugincel.CreateAdmissionRequest(va.Attributes, metav1.GroupVersionResource(podGVR), metav1.GroupVersionKind(podGVK))
	return &activation{object: obj, request: common.SchemalessTypedToVal(req), namespace: common.SchemalessTypedToVal(ns), variables: map[string]ref.Val{}}, nil
}

func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case plugincel.ObjectVarName:
		return a.object, true
	case plugincel.OldObjectVarName:
		return nil, true
	case plugincel.RequestVarName:
		return a.request, true
	case plugincel.NamespaceVarName:
		return a.namespace, true
	case plugincel.VariableVarName:
		return types.NewStringInterfaceMap(types.DefaultTypeAdapter, toAny(a.variables)), true
	}
	return nil, false
}

func (a *activation) Parent() interpreter.Activation { return nil }

func toAny(m map[string]ref.Val) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// ReferencePod is a pod podmeta policy --costs reports the costs on.
type ReferencePod struct {
	Name string
	Pod  *corev1.Pod
}

// ReferenceNamespace is the opted-in namespace of the reference pods.
func ReferenceNamespace() *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo", Labels: map[string]string{"kubernetes.io/metadata.name": "demo"}}}
}

// ReferencePods are a typical pod and the largest podmeta is proven on (200 containers,
// every env key), both with the ambassador, as admission sees them (with their
// ServiceAccount token volume).
func ReferencePods() []ReferencePod {
	pod := func(ann map[string]string, cs ...corev1.Container) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "demo", Annotations: ann}, Spec: corev1.PodSpec{
			Containers: cs,
			Volumes:    []corev1.Volume{{Name: "kube-api-access-abcde", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}}},
		}}
	}
	var many []corev1.Container
	for i := range 200 {
		many = append(many, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: "app:1", Env: []corev1.EnvVar{{Name: "OWN", Value: "x"}}})
	}
	return []ReferencePod{
		{"typical (2 containers, ambassador)", pod(map[string]string{webhook.AnnotationAmbassador: "true"},
			corev1.Container{Name: "app", Image: "app:1"}, corev1.Container{Name: "proxy", Image: "proxy:1"})},
		{"200 containers, every env key, ambassador", pod(map[string]string{webhook.AnnotationAmbassador: "true", webhook.AnnotationEnv: "all"}, many...)},
	}
}
