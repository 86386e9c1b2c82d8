// Package webhook is podmeta's injection engine: it decides what a Pod gets and renders
// that decision. It has no HTTP server code.
//
// The flow is one way. An operator Config (validated, bound to flags) gives the
// defaults; namespace annotations and then pod annotations override them (Resolve). The
// Injector reads only the part of the pod JSON it needs (a podView) and builds a Plan:
// the list of additions for the four features — Downward-API env vars, the metadata
// volume and its mounts, default ephemeral-storage requests and limits, and the
// ambassador sidecar with PODMETA_API_URL — plus admission warnings. A Plan renders
// either as JSON-patch "add" operations (Patch, PatchJSON: the webhook) or onto a typed
// corev1.Pod (Apply); both walk the same additions, and the golden tests prove they give
// the same pod. PatchJSON writes what is constant in those additions from templates that
// encoding/json rendered once; the tests prove its bytes equal encoding/json's own.
//
// Every plan obeys the rules of DESIGN.md: what the pod already defines wins (podmeta
// skips its own addition and warns); operations only add; our env vars go before the
// pod's own so $(VAR) references resolve; a second pass over the output adds nothing,
// judged from the spec and never from the podmeta.io/status record; excluded namespaces,
// mirror pods and opted-out pods are left alone; the ambassador's image and resources
// come from the operator only, never from an annotation. An invalid annotation gives a
// *DenyError whose message names the annotation, the value and the valid choices.
//
// The Handler adapts the engine to admission.Request/Response.
package webhook
