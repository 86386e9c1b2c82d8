package webhook

import (
	"bytes"
	"encoding/json"
	"flag"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
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
//   - PatchJSON, with the fast path of fastjson.go, is byte for byte encoding/json's
//     rendering of the same values;
//   - the patch applies to the input with evanphx/json-patch (as the apiserver does) and
//     gives exactly the Pod the typed rendering gives;
//   - planning the output again adds nothing (idempotence);
//   - nothing the pod had is changed or lost (only podmeta's own status and injected annotations may be updated).
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
	if err := plan.writePatchJSON(&plain, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(opsJSON, plain.Bytes()) {
		t.Fatalf("PatchJSON differs from encoding/json's rendering of the same values:\n%s\n%s", opsJSON, plain.Bytes())
	}
	// bounds.go decides from minPatchBytes without rendering when it is far from the
	// bound: it must be a lower bound, and not too far below.
	if n, min := len(opsJSON), plan.minPatchBytes(); n < min || n > renderExpansion*min {
		t.Fatalf("patch of %d bytes, minPatchBytes %d: want min <= size <= %d × min", n, min, renderExpansion)
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

	checkNoNewDuplicates(t, raw, patched)

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

// checkNoNewDuplicates proves that nothing podmeta added repeats a name in its list, or
// a name the pod had: container names (init and regular together), volume names, and
// per container env var names and volume mount names and paths. (A name the pod itself
// repeats is the pod's, which the apiserver rejects after admission.)
func checkNoNewDuplicates(t testing.TB, raw, patched []byte) {
	t.Helper()
	var before, after corev1.Pod
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &before); err != nil {
		t.Fatal(err)
	}
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(patched, &after); err != nil {
		t.Fatal(err)
	}
	check := func(what string, had, has []string) {
		count := map[string]int{}
		for _, n := range had {
			count[n]--
		}
		for _, n := range has {
			if count[n]++; count[n] > 0 && (count[n] > 1 || slices.Contains(had, n)) {
				t.Fatalf("%s %q added twice, or over the pod's own", what, n)
			}
		}
	}
	names := func(n int, name func(int) string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = name(i)
		}
		return out
	}
	containers := func(p *corev1.Pod) []corev1.Container {
		return slices.Concat(p.Spec.InitContainers, p.Spec.Containers)
	}
	cb, ca := containers(&before), containers(&after)
	check("container", names(len(cb), func(i int) string { return cb[i].Name }), names(len(ca), func(i int) string { return ca[i].Name }))
	check("volume", names(len(before.Spec.Volumes), func(i int) string { return before.Spec.Volumes[i].Name }),
		names(len(after.Spec.Volumes), func(i int) string { return after.Spec.Volumes[i].Name }))
	for _, list := range [][2][]corev1.Container{{before.Spec.InitContainers, after.Spec.InitContainers}, {before.Spec.Containers, after.Spec.Containers}} {
		for i := range list[1] {
			var b corev1.Container
			if j := i; len(list[1]) > len(list[0]) && list[1][0].Name == AmbassadorContainerName && (len(list[0]) == 0 || list[0][0].Name != AmbassadorContainerName) {
				if i == 0 {
					continue // the ambassador, inserted first: all new
				}
				b = list[0][j-1]
			} else if i < len(list[0]) {
				b = list[0][i]
			}
			a := list[1][i]
			what := "container " + a.Name + ": "
			check(what+"env", names(len(b.Env), func(i int) string { return b.Env[i].Name }), names(len(a.Env), func(i int) string { return a.Env[i].Name }))
			check(what+"mount", names(len(b.VolumeMounts), func(i int) string { return b.VolumeMounts[i].Name }),
				names(len(a.VolumeMounts), func(i int) string { return a.VolumeMounts[i].Name }))
			check(what+"mount path", names(len(b.VolumeMounts), func(i int) string { return b.VolumeMounts[i].MountPath }),
				names(len(a.VolumeMounts), func(i int) string { return a.VolumeMounts[i].MountPath }))
		}
	}
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
			if path == "/metadata/annotations" && (k == AnnotationStatus || k == AnnotationInjected) {
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

// TestPatchJSONOddStrings feeds the fast path strings it must not write verbatim: a
// container name or mount path with a quote, a backslash, a control character, non-ASCII
// or HTML characters, and an empty container name (an omitempty field). The apiserver rejects such a pod only after admission, so the
// patch must still be exactly what encoding/json writes (checkPlan compares the bytes).
func TestPatchJSONOddStrings(t *testing.T) {
	in := testInjector(t)
	for _, name := range []string{"", `q"uote`, `back\slash`, "ctl\u0001", "ünïcode", "line\u2028sep", "<b>&amp;", `lit\u0000`} {
		t.Run(name, func(t *testing.T) {
			pod := map[string]any{
				"metadata": map[string]any{"name": "p", "annotations": map[string]string{
					AnnotationAmbassador: "true", AnnotationVolumePath: "/etc/x" + name, AnnotationEnvPrefix: "X_",
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

// TestInjectorConcurrent plans, renders and applies pods from several goroutines on one
// Injector, as the handler does, then mutates the applied pods. make test runs it with
// -race: the Injector's env vars, shared ambassador, fast-path encoder and storage defaults may only be
// read. Without -race it still checks that nothing a request did changed what the next
// one gets.
func TestInjectorConcurrent(t *testing.T) {
	flags := []string{"--ephemeral-storage-limit=1024Mi", "--env=all"} // 1024Mi: not canonical text
	pod := func(ann map[string]string, container map[string]any) []byte {
		b, _ := json.Marshal(map[string]any{
			"metadata": map[string]any{"name": "p", "annotations": ann},
			"spec":     map[string]any{"containers": []any{container}},
		})
		return b
	}
	pods := [][]byte{
		// requests more than the default limit: warned about with the limit's text
		pod(map[string]string{AnnotationAmbassador: "true"}, map[string]any{"name": "a", "resources": map[string]any{"requests": map[string]any{"ephemeral-storage": "2Gi"}}}),
		// the ambassador on the operator's port (the cached one) and on another
		pod(map[string]string{AnnotationAmbassador: "true"}, map[string]any{"name": "b", "env": []any{map[string]any{"name": "X", "value": "1"}}}),
		pod(map[string]string{AnnotationAmbassador: "true", AnnotationAmbassadorPort: "9000"}, map[string]any{"name": "c"}),
		// a request above the limit: denied, naming both quantities
		pod(map[string]string{AnnotationEphemeralStorageRequest: "2Gi"}, map[string]any{"name": "d"}),
	}
	render := func(in *Injector, raw []byte) string {
		plan, err := in.PlanPod(raw, "ns", nil)
		if err != nil {
			return err.Error()
		}
		js, err := plan.PatchJSON()
		var plain bytes.Buffer // from the typed values, which Apply and explain use too
		if err == nil {
			err = plan.writePatchJSON(&plain, nil)
		}
		if err != nil {
			t.Error(err)
		}
		return string(js) + "\n" + plain.String() + "\n" + strings.Join(plan.Warnings, "\n")
	}
	in := testInjector(t, flags...)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				for _, raw := range pods {
					render(in, raw)
					plan, err := in.PlanPod(raw, "ns", nil)
					if err != nil {
						continue
					}
					var typed corev1.Pod
					if err := json.Unmarshal(raw, &typed); err != nil {
						t.Error(err)
						return
					}
					plan.Apply(&typed)
					for _, list := range [][]corev1.Container{typed.Spec.InitContainers, typed.Spec.Containers} {
						for i := range list {
							c := &list[i]
							c.Args = append(c.Args[:min(1, len(c.Args))], "--mutated")
							for j := range c.Env {
								c.Env[j].Name += "_MUTATED"
								if f := c.Env[j].ValueFrom; f != nil && f.FieldRef != nil {
									f.FieldRef.FieldPath = "mutated"
								}
							}
						}
					}
				}
			}
		})
	}
	wg.Wait()
	fresh := testInjector(t, flags...)
	for i, raw := range pods {
		if got, want := render(in, raw), render(fresh, raw); got != want {
			t.Errorf("pod %d: after concurrent use the Injector gives\n%s\nwant\n%s", i, got, want)
		}
	}
}
