package webhook

import (
	"bytes"
	"encoding/json"
	"flag"
	"reflect"
	"strconv"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	sigsjson "sigs.k8s.io/json"
)

// testImage is the ambassador image every engine test configures.
const testImage = "registry.example.com/podmeta/ambassador:test"

// testInjector builds an Injector from the defaults plus command-line style flags, the
// same binding the server and CLI use.
func testInjector(t testing.TB, args ...string) *Injector {
	t.Helper()
	cfg := DefaultConfig()
	cfg.AmbassadorImage = testImage
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	cfg.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("flags %q: %v", args, err)
	}
	in, err := NewInjector(cfg, cfg.UseNativeSidecar(true))
	if err != nil {
		t.Fatalf("NewInjector: %v", err)
	}
	return in
}

// checkPlan proves the properties every plan must have, and returns the patched pod JSON:
//   - every operation is an "add";
//   - PatchJSON, with its templates, is byte for byte encoding/json's rendering;
//   - the patch applies to the input with evanphx/json-patch (as the apiserver does) and
//     gives exactly the Pod the typed rendering gives;
//   - planning the output again adds nothing (idempotence);
//   - nothing the pod had is changed or lost (only podmeta's own status may be updated).
func checkPlan(t testing.TB, in *Injector, raw []byte, namespace string, nsAnn map[string]string, plan *Plan) []byte {
	t.Helper()
	ops := plan.Patch()
	for _, op := range ops {
		if op.Operation != "add" {
			t.Fatalf("operation %s %s: podmeta only adds", op.Operation, op.Path)
		}
	}
	opsJSON, err := plan.PatchJSON()
	if err != nil {
		t.Fatalf("marshal patch: %v", err)
	}
	if viaLib, _ := json.Marshal(ops); !jsonpatch.Equal(opsJSON, viaLib) {
		t.Fatalf("PatchJSON differs from json.Marshal(Patch()):\n%s\n%s", opsJSON, viaLib)
	}
	var plain bytes.Buffer
	if err := plan.writePatchJSON(&plain, false); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(opsJSON, plain.Bytes()) {
		t.Fatalf("PatchJSON differs from encoding/json's rendering of the same values:\n%s\n%s", opsJSON, plain.Bytes())
	}
	patch, err := jsonpatch.DecodePatch(opsJSON)
	if err != nil {
		t.Fatalf("decode patch: %v", err)
	}
	patched, err := patch.Apply(raw)
	if err != nil {
		t.Fatalf("apply patch %s: %v", opsJSON, err)
	}

	var typed, fromPatch corev1.Pod
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &typed); err != nil {
		t.Fatalf("typed input: %v", err)
	}
	plan.Apply(&typed)
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(patched, &fromPatch); err != nil {
		t.Fatalf("typed patched: %v", err)
	}
	if diff := cmp.Diff(mustJSON(t, &typed), mustJSON(t, &fromPatch)); diff != "" {
		t.Fatalf("typed rendering and JSON patch disagree (-typed +patch):\n%s", diff)
	}

	again, err := in.PlanPod(patched, namespace, nsAnn)
	if err != nil {
		t.Fatalf("second pass: %v", err)
	}
	if !again.Empty() {
		b, _ := json.Marshal(again.Patch())
		t.Fatalf("second pass is not empty: %s", b)
	}

	var before, after any
	if err := json.Unmarshal(raw, &before); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(patched, &after); err != nil {
		t.Fatal(err)
	}
	if p := subsetPath(before, after, ""); p != "" {
		t.Fatalf("the pod's own field %s was changed or lost", p)
	}
	return patched
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// subsetPath returns "" when everything in a is still in b, with arrays compared as
// ordered subsequences (podmeta inserts into arrays but never reorders or drops), and
// otherwise the path of the first thing that changed.
func subsetPath(a, b any, path string) string {
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok {
			return path
		}
		for k, x := range av {
			if path == "/metadata/annotations" && k == AnnotationStatus {
				continue // podmeta's own record, which it keeps current
			}
			y, ok := bv[k]
			if !ok {
				return path + "/" + k
			}
			if p := subsetPath(x, y, path+"/"+k); p != "" {
				return p
			}
		}
		return ""
	case []any:
		bv, ok := b.([]any)
		if !ok {
			return path
		}
		j := 0
		for i, x := range av {
			for j < len(bv) && subsetPath(x, bv[j], "") != "" {
				j++
			}
			if j == len(bv) {
				return path + "/" + strconv.Itoa(i)
			}
			j++
		}
		return ""
	default:
		if !reflect.DeepEqual(a, b) {
			return path
		}
		return ""
	}
}

// TestPatchJSONOddStrings feeds the templates strings they must not hold verbatim: a
// container name or mount path with a quote, a backslash, a control character, non-ASCII
// or HTML characters. The apiserver rejects such a pod only after admission, so the
// patch must still be exactly what encoding/json writes (checkPlan compares the bytes).
func TestPatchJSONOddStrings(t *testing.T) {
	in := testInjector(t)
	for _, name := range []string{`q"uote`, `back\slash`, "ctl\u0001", "ünïcode", "line\u2028sep", "<b>&amp;"} {
		t.Run(name, func(t *testing.T) {
			pod := map[string]any{
				"metadata": map[string]any{"name": "p", "annotations": map[string]string{
					AnnotationAmbassador: "true", AnnotationVolumePath: "/etc/" + name, AnnotationEnvPrefix: "X_",
				}},
				"spec": map[string]any{"containers": []any{map[string]any{"name": name}, map[string]any{"name": "plain"}}},
			}
			raw, _ := json.Marshal(pod)
			plan, err := in.PlanPod(raw, "odd", nil)
			if err != nil {
				t.Fatal(err)
			}
			patch := checkPlan(t, in, raw, "odd", nil, plan)
			if !bytes.Contains(patch, []byte(`"X_POD_NAME"`)) {
				t.Fatalf("planned nothing: %s", patch)
			}
		})
	}
}
