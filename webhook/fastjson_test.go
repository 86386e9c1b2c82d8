package webhook

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// TestPatchJSONUsesTemplates keeps the fast path in use: with every feature on, an
// ordinary pod's paths and values must all be written by fastjson.go, but for the storage
// quantities (left to encoding/json: a few µs). The other tests cannot tell, since the
// fallback gives the same bytes (checkPlan proves that on every golden and fuzzed plan).
// Deleting fastjson.go deletes this test with it.
func TestPatchJSONUsesTemplates(t *testing.T) {
	in := testInjector(t)
	if in.patch.fast == nil { // the encoder itself is always the patch bound
		t.Fatal("the Injector has no fast encoder: every patch is written by encoding/json")
	}
	for _, initContainers := range []bool{false, true} { // the ambassador as a new list, or first in one
		spec := map[string]any{"containers": []any{
			map[string]any{"name": "web", "env": []any{map[string]any{"name": "A", "value": "1"}}, "volumeMounts": []any{map[string]any{"name": "data", "mountPath": "/data"}}},
			map[string]any{"name": "sidecar"},
		}, "volumes": []any{map[string]any{"name": "data", "emptyDir": map[string]any{}}}}
		if initContainers {
			spec["initContainers"] = []any{map[string]any{"name": "init"}}
			delete(spec, "volumes")
		}
		raw, _ := json.Marshal(map[string]any{"metadata": map[string]any{"name": "p", "annotations": map[string]string{AnnotationAmbassador: "true"}}, "spec": spec})
		plan, err := in.PlanPod(raw, "ns", nil)
		if err != nil {
			t.Fatal(err)
		}
		if plan.encoder != in.encoder {
			t.Fatal("the plan does not carry the Injector's fast encoder")
		}
		ops := plan.Patch()
		if len(ops) < 8 {
			t.Fatalf("only %d operations: the pod no longer exercises every feature", len(ops))
		}
		for _, op := range ops {
			var buf bytes.Buffer
			if !plan.encoder.encodeString(&buf, op.Path) {
				t.Errorf("path %s is written by encoding/json, not the fast path", op.Path)
			}
			if strings.HasSuffix(op.Path, "/ephemeral-storage") || strings.HasSuffix(op.Path, "/resources") {
				continue
			}
			buf.Reset()
			if !plan.encoder.encode(&buf, op.Value) {
				t.Errorf("%s (%T) is written by encoding/json, not the fast path", op.Path, op.Value)
			}
		}
	}
}
