package policy

import (
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"github.com/podmeta/podmeta/webhook"
)

// Difference is one thing policy mode does differently from the webhook, because CEL
// in an admission policy cannot do it, and the test that pins it.
type Difference struct {
	What string
	Test string
}

// Differences lists what policy mode does not do as the webhook does. docs/policy.md
// and podmeta policy --explain print it; nothing else is dropped.
func Differences() []Difference {
	return []Difference{
		{"No admission warnings: a MutatingAdmissionPolicy cannot return any, so what the pod kept of its own (an env var it defines, a mount path in use), what was not added and why (hostNetwork, automountServiceAccountToken: false, unknown container names), and unknown podmeta.io/ keys or repeated list items pass silently.",
			"policy: TestGoldenDifferential (every golden with warnings: same pod, no warnings)"},
		{`The status record has no "skipped" list (the webhook's skip reasons).`,
			"policy: TestGoldenDifferential (ExpectedRecord), TestStatusDifferences"},
		{"A pod that already has podmeta.io/status keeps it as it is: CEL has no JSON parser to verify the record against the spec and merge this pass into it. On a reinvocation (a later mutator added a container) the new container is injected, but the record does not list it; a forged record is not rewritten (the safety net still checks it).",
			"policy: TestGoldenDifferential/forged-status, TestGoldenDifferential/reinvocation-new-container"},
		{"The apiserver reinvokes the MutatingAdmissionPolicy after its own change; its matchCondition not-injected-yet skips that pass on a pod whose podmeta.io/status is set and whose podmeta.io/injected names every container but the ambassador, without checking that each still has what podmeta adds. A container a later mutator adds is not named there, and is injected; but what a later mutator removes from a container podmeta injected, or a pod created with a record that names all its containers, is left as it is (the webhook checks the record against the spec).",
			"policy: TestReinvocationSkip"},
		{`The record's ephemeralStorage values are the text the annotation or the pod gave (e.g. "1024Mi"); the webhook writes the canonical form ("1Gi"). The spec is the same: the apiserver stores canonical quantities. Names in the record are JSON-escaped for " and \ only.`,
			"policy: TestStatusDifferences"},
		{"Quantities: text longer than 64 characters or with more than three exponent digits is denied before quantity() (the webhook reads any exponent it can bound); a positive quantity below 1n is rounded up to 1n instead of denied.",
			"policy: TestQuantityDifferences"},
		{"--max-patch-bytes does not apply: the apiserver's CEL cost budget and etcd's request limit bound a pod's additions instead.",
			"policy: TestRenderFlags"},
		{"The ambassador is always a native sidecar (--native-sidecar=always): MutatingAdmissionPolicy needs Kubernetes >= 1.36.",
			"policy: TestRenderFlags"},
		{"The VAP's message joins the invalid annotations with \"; \" on one line; each names the source, key and value the webhook's names, a few with a more general reason.",
			"policy: TestGoldenDifferential (every invalid-* golden)"},
	}
}

// ExpectedRecord turns the record the webhook wrote on webhookPod into the one policy
// mode writes, for tests that compare the two modes (two of the differences above): no
// "skipped" list, and a record the pod came with (input's) kept as it was, with its
// podmeta.io/injected.
func ExpectedRecord(webhookPod, input *corev1.Pod) error {
	if text, ok := input.Annotations[webhook.AnnotationStatus]; ok {
		webhookPod.Annotations[webhook.AnnotationStatus] = text
		if inj, ok := input.Annotations[webhook.AnnotationInjected]; ok {
			webhookPod.Annotations[webhook.AnnotationInjected] = inj
		} else {
			delete(webhookPod.Annotations, webhook.AnnotationInjected)
		}
		return nil
	}
	text, ok := webhookPod.Annotations[webhook.AnnotationStatus]
	if !ok {
		return nil
	}
	var st webhook.Status
	if err := json.Unmarshal([]byte(text), &st); err != nil {
		return fmt.Errorf("%s: %w", webhook.AnnotationStatus, err)
	}
	st.Skipped = nil
	webhookPod.Annotations[webhook.AnnotationStatus] = st.String()
	return nil
}
