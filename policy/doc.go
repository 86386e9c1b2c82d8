// Package policy compiles podmeta's injection, as configured by the flags podmeta
// webhook takes (webhook.Config), into admission policies the apiserver runs itself
// (Kubernetes >= 1.36): a MutatingAdmissionPolicy whose one JSONPatch mutation adds what
// the webhook adds, and a ValidatingAdmissionPolicy that denies the pods the webhook
// denies for their podmeta annotations.
//
// The CEL is generated from the engine's own tables and object builders
// (webhook/policy_export.go): the env keys and their divisors, the metadata volume's
// items, the mount, the ambassador container and its token volume, the annotation
// names and the operator's defaults. The tests run the rendered policies through the
// apiserver's own CEL code (k8s.io/apiserver) against every golden input of the
// engine and compare the pods; docs/policy.md lists what policy mode does differently.
//
// RuntimeCosts (costs.go) charges every expression of the policies on a pod as the
// apiserver's cost tracking does, against its per-expression limit and per-evaluation
// budget (podmeta policy --costs). HelmTemplate (helm.go) turns Render's output into
// the Helm chart's template of policy mode, each chart value written as a Helm
// expression where Render put it; chartgen writes it into the chart (make
// chart-policy).
package policy
