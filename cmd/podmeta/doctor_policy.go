package main

import (
	"context"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// policyInstallation is policy mode (docs/policy.md): no server, Service or webhook
// configuration, but a MutatingAdmissionPolicy and its binding that inject, and a
// ValidatingAdmissionPolicy (NAME-annotations) and its binding that deny invalid
// annotations. What they select is matched with the apiserver's own code, as the
// webhook's is.
type policyInstallation struct {
	policy *admissionregistrationv1.MutatingAdmissionPolicy
}

func (p *policyInstallation) mode() string { return "policy" }

// policyFix renders and applies policy mode again.
const policyFix = "render and apply policy mode again: podmeta policy [injection flags] | kubectl apply -f -"

func (p *policyInstallation) check(ctx context.Context, d *doctor, t *target, ns *corev1.Namespace) []check {
	api := d.cs.AdmissionregistrationV1()
	name := p.policy.Name
	out := []check{ok("mutating policy", "MutatingAdmissionPolicy %s", name)}
	var binding *admissionregistrationv1.MutatingAdmissionPolicyBinding
	if list, err := api.MutatingAdmissionPolicyBindings().List(ctx, metav1.ListOptions{}); err != nil {
		out = append(out, fail("mutating policy binding", "", "cannot list MutatingAdmissionPolicyBindings: %v", reason(err)))
	} else {
		for i := range list.Items {
			if list.Items[i].Spec.PolicyName == name {
				binding = &list.Items[i]
				break
			}
		}
		if binding == nil {
			out = append(out, fail("mutating policy binding", policyFix, "no MutatingAdmissionPolicyBinding binds %s: the policy does nothing", name))
		} else {
			out = append(out, ok("mutating policy binding", "MutatingAdmissionPolicyBinding %s", binding.Name))
		}
	}
	vname := name + "-annotations"
	if _, err := api.ValidatingAdmissionPolicies().Get(ctx, vname, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		out = append(out, warn("validating policy", policyFix, "no ValidatingAdmissionPolicy %s: pods with invalid podmeta annotations are admitted uninjected, not denied", vname))
	} else if err != nil {
		out = append(out, warn("validating policy", "", "cannot read ValidatingAdmissionPolicy %s: %v", vname, reason(err)))
	} else {
		out = append(out, ok("validating policy", "ValidatingAdmissionPolicy %s", vname))
	}

	attr := createAttributes(t.pod)
	if m := p.policy.Spec.MatchConstraints; m == nil {
		out = append(out, fail("rules", policyFix, "the policy has no matchConstraints"))
	} else {
		var rs []admissionregistrationv1.RuleWithOperations
		for _, r := range m.ResourceRules {
			rs = append(rs, r.RuleWithOperations)
		}
		out = append(out,
			rulesCheck("rules", rs, attr, policyFix),
			selectorCheck("namespace selector", "namespace "+ns.Name, m.NamespaceSelector, ns.Labels, namespaceFix(ns.Name)),
			selectorCheck("object selector", "the pod", m.ObjectSelector, t.pod.Labels, podFix(t)))
	}
	if binding != nil && binding.Spec.MatchResources != nil {
		m := binding.Spec.MatchResources
		out = append(out,
			selectorCheck("binding namespace selector", "namespace "+ns.Name, m.NamespaceSelector, ns.Labels, namespaceFix(ns.Name)),
			selectorCheck("binding object selector", "the pod", m.ObjectSelector, t.pod.Labels, podFix(t)))
	}
	out = append(out, matchConditionsCheck("match conditions", p.policy.Spec.MatchConditions, p.policy.Spec.FailurePolicy, t.pod))
	return out
}
