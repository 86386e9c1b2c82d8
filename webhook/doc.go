// Package webhook is podmeta's injection engine: it decides what a Pod gets and renders
// that decision, and it serves the decision to the apiserver as a mutating webhook.
//
// The flow is one way. An operator Config (validated, bound to flags) gives the defaults;
// the namespace's annotations and then the pod's override them, each parsed by the same
// table (annotationSettings) into Settings. The Injector reads only the part of the pod
// JSON it needs (a podView) and plans, feature by feature, the additions for the four
// features: Downward-API env vars, the metadata volume and its mounts, default
// ephemeral-storage requests and limits, and the ambassador sidecar with
// PODMETA_API_URL, plus admission warnings. A Plan renders either as JSON-patch "add"
// operations (Patch, PatchJSON: the webhook and the CLI) or onto a typed corev1.Pod
// (Apply); both walk the same additions, and the golden tests prove they give the
// same pod. The Handler decodes an AdmissionReview into its own small types, asks the
// Injector for a plan and answers with its patch, or a denial.
//
// Every plan obeys the rules of docs/design.md: what the pod already defines wins
// (podmeta skips its own addition and warns); operations only add; our env vars go
// before the pod's own so $(VAR) references resolve; a second pass over the output adds
// nothing, judged from the spec and never from the podmeta.io/status record; excluded
// namespaces, mirror pods and opted-out pods are left alone; the ambassador's image and
// resources come from the operator only, never from an annotation; the engine does no
// I/O of its own. An invalid annotation gives a *DenyError whose message names the
// annotation, the value and the valid choices.
//
// Where things live: consts.go (every name podmeta reads or writes), envkeys.go (the env
// keys), config.go and settings.go (operator flags, annotations, and how they layer),
// injector.go (the entry points), plan*.go (the decisions, one file per feature),
// additions.go (each change as JSON patch and on a typed Pod), objects.go (the Kubernetes
// objects added), patchjson.go (the patch writer), fastjson.go (an optional fast path
// for the writer; deleting it changes speed, not bytes), view.go (the decoded pod),
// status.go (the podmeta.io/status record, its skip-reason codes and VerifyRecord, which
// the reinvocation check, uninject and doctor share), bounds.go (what any request may
// make podmeta compute, hold or send), policy_export.go (the tables package policy
// compiles into CEL), handler.go (HTTP), largebody.go (large bodies one at a time, at a
// bounded byte rate), metrics.go, workloads.go (apply-time validation of workload pod templates,
// served by the same Handler: the template is planned as a pod, never mutated) and
// events.go (Events on the owners of pods injected with warnings or skipped, bounded
// and recorded off the request goroutine; the one I/O the Handler starts, through an
// injected recorder).
package webhook
