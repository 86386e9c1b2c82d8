package policy

import (
	"context"
	"fmt"
	"strings"
	"testing"

	celgo "github.com/google/cel-go/cel"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/admission"
	plugincel "k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/admission/plugin/policy/mutating/patch"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"k8s.io/apiserver/pkg/cel/environment"
)

// The apiserver's own CEL machinery (k8s.io/apiserver, the version our kube-apiserver
// is built from) run in-process: the same compiler environment, variable composition
// and JSON-patch application the MutatingAdmissionPolicy plugin uses, without its
// matcher (selectors are matched by the integration test on a real apiserver).

var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}()

// mutate runs the MAP's matchConditions and mutations on p as the apiserver would,
// once. It returns the pod unchanged when a matchCondition is false.
func mutate(t *testing.T, mp *admissionregistrationv1.MutatingAdmissionPolicy, p *corev1.Pod, ns *corev1.Namespace) (*corev1.Pod, error) {
	t.Helper()
	ctx := context.Background()
	c := compiledFor(t, mp)
	compiler := c.compiler
	ctx = compiler.CreateContext(ctx)
	o := admission.NewObjectInterfacesFromScheme(scheme)
	va := podCreate(p)
	req := plugincel.CreateAdmissionRequest(va.Attributes, metav1.GroupVersionResource(podGVR), metav1.GroupVersionKind(podGVK))
	if len(mp.Spec.MatchConditions) > 0 {
		ev := c.conditions
		if errs := ev.CompilationErrors(); len(errs) > 0 {
			return nil, fmt.Errorf("matchConditions: %v", errs)
		}
		res, _, err := ev.ForInput(ctx, va, req, plugincel.OptionalVariableBindings{}, ns, celconfig.RuntimeCELCostBudget)
		if err != nil {
			return nil, err
		}
		for i, r := range res {
			if r.Error != nil {
				return nil, fmt.Errorf("matchCondition %d: %w", i, r.Error)
			}
			if r.EvalResult.Value() != true {
				return p, nil
			}
		}
	}
	for i, ev := range c.mutations {
		if errs := ev.CompilationErrors(); len(errs) > 0 {
			return nil, fmt.Errorf("mutation %d: %v", i, errs)
		}
		out, err := patch.NewJSONPatcher(ev).Patch(ctx, patch.Request{
			MatchedResource: podGVR, VersionedAttributes: va, ObjectInterfaces: o, Namespace: ns,
		}, mutationBudget)
		if err != nil {
			return nil, fmt.Errorf("mutation %d: %w", i, err)
		}
		va.UpdateObject(out)
	}
	return va.VersionedObject.Object().(*corev1.Pod), nil
}

// matches is the policy's matchConstraints for a pod CREATE in ns: its namespace and
// object selectors (its resource rules are pods CREATE, which every case is).
func matches(t *testing.T, m *admissionregistrationv1.MatchResources, ns *corev1.Namespace, p *corev1.Pod) bool {
	t.Helper()
	for _, s := range []struct {
		sel    *metav1.LabelSelector
		labels map[string]string
	}{{m.NamespaceSelector, ns.Labels}, {m.ObjectSelector, p.Labels}} {
		sel, err := metav1.LabelSelectorAsSelector(s.sel)
		if err != nil {
			t.Fatal(err)
		}
		if !sel.Matches(labels.Set(s.labels)) {
			return false
		}
	}
	return true
}

// conditions evaluates expressions (of type ret) with the policy's variables.
func conditions(t *testing.T, vars []admissionregistrationv1.Variable, exprs []string, ret *celgo.Type, p *corev1.Pod, ns *corev1.Namespace) ([]any, error) {
	t.Helper()
	key := fmt.Sprintf("%p %v %q", vars, ret, exprs)
	ev, ok := compiledConditions[key]
	if !ok {
		compiler, err := newCompiler()
		if err != nil {
			t.Fatal(err)
		}
		opts := policyDecls
		var named []plugincel.NamedExpressionAccessor
		for _, v := range vars {
			named = append(named, variable(v))
		}
		compiler.CompileAndStoreVariables(named, opts, environment.StoredExpressions)
		var acc []plugincel.ExpressionAccessor
		for _, e := range exprs {
			acc = append(acc, expression{text: e, ret: ret})
		}
		ev = compiler.CompileCondition(acc, opts, environment.StoredExpressions)
		compiledConditions[key] = ev
	}
	if errs := ev.CompilationErrors(); len(errs) > 0 {
		return nil, fmt.Errorf("compile: %v", errs)
	}
	va := podCreate(p)
	req := plugincel.CreateAdmissionRequest(va.Attributes, metav1.GroupVersionResource(podGVR), metav1.GroupVersionKind(podGVK))
	res, _, err := ev.ForInput(context.Background(), va, req, plugincel.OptionalVariableBindings{}, ns, celconfig.RuntimeCELCostBudget)
	if err != nil {
		return nil, err
	}
	var out []any
	for i, r := range res {
		if r.Error != nil {
			return nil, fmt.Errorf("expression %d: %w", i, r.Error)
		}
		out = append(out, r.EvalResult.Value())
	}
	return out, nil
}

var compiledConditions = map[string]plugincel.ConditionEvaluator{}

// validate runs the VAP: "" when it admits the pod, else its message.
func validate(t *testing.T, vp *admissionregistrationv1.ValidatingAdmissionPolicy, p *corev1.Pod, ns *corev1.Namespace) (string, error) {
	t.Helper()
	if !matches(t, vp.Spec.MatchConstraints, ns, p) {
		return "", nil
	}
	var conds []string
	for _, c := range vp.Spec.MatchConditions {
		conds = append(conds, c.Expression)
	}
	res, err := conditions(t, nil, conds, celgo.BoolType, p, ns)
	if err != nil {
		return "", err
	}
	for _, r := range res {
		if r != true {
			return "", nil
		}
	}
	var msgs []string
	for _, v := range vp.Spec.Validations {
		ok, err := conditions(t, vp.Spec.Variables, []string{v.Expression}, celgo.BoolType, p, ns)
		if err != nil {
			return "", err
		}
		if ok[0] == true {
			continue
		}
		msg, err := conditions(t, vp.Spec.Variables, []string{v.MessageExpression}, celgo.StringType, p, ns)
		if err != nil {
			return "", err
		}
		msgs = append(msgs, msg[0].(string))
	}
	return strings.Join(msgs, "; "), nil
}

// admit is the apiserver's admission of a pod CREATE under the policies: the MAP (if it
// matches), then the VAP. It returns the pod to be stored, or the VAP's denial.
func admit(t *testing.T, pols *Policies, p *corev1.Pod, ns *corev1.Namespace) (*corev1.Pod, string, error) {
	t.Helper()
	if matches(t, pols.Mutating.Spec.MatchConstraints, ns, p) {
		var err error
		if p, err = mutate(t, pols.Mutating, p, ns); err != nil {
			return nil, "", err
		}
	}
	msg, err := validate(t, pols.Validating, p, ns)
	return p, msg, err
}

// mutationBudget is the runtime CEL cost budget of one mutation: the apiserver's.
var mutationBudget int64 = celconfig.RuntimeCELCostBudget

// compiledMAP is a MAP compiled as the apiserver compiles it, once per policy.
type compiledMAP struct {
	compiler   *plugincel.CompositedCompiler
	opts       plugincel.OptionalVariableDeclarations
	conditions plugincel.ConditionEvaluator
	mutations  []plugincel.MutatingEvaluator
}

var compiled = map[*admissionregistrationv1.MutatingAdmissionPolicy]*compiledMAP{}

func compiledFor(t *testing.T, mp *admissionregistrationv1.MutatingAdmissionPolicy) *compiledMAP {
	t.Helper()
	if c, ok := compiled[mp]; ok {
		return c
	}
	compiler, err := newCompiler()
	if err != nil {
		t.Fatal(err)
	}
	c := &compiledMAP{compiler: compiler, opts: policyDecls}
	var vars []plugincel.NamedExpressionAccessor
	for _, v := range mp.Spec.Variables {
		vars = append(vars, variable(v))
	}
	compiler.CompileAndStoreVariables(vars, c.opts, environment.StoredExpressions)
	var conds []plugincel.ExpressionAccessor
	for _, m := range mp.Spec.MatchConditions {
		conds = append(conds, expression{text: m.Expression, ret: celgo.BoolType})
	}
	c.conditions = compiler.CompileCondition(conds, c.opts, environment.StoredExpressions)
	popts := c.opts
	popts.HasPatchTypes = true
	for _, m := range mp.Spec.Mutations {
		c.mutations = append(c.mutations, compiler.CompileMutatingEvaluator(&patch.JSONPatchCondition{Expression: m.JSONPatch.Expression}, popts, environment.StoredExpressions))
	}
	compiled[mp] = c
	return c
}
