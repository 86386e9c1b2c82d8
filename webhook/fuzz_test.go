package webhook

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	sigsjson "sigs.k8s.io/json"

	"github.com/podmeta/podmeta/internal/golden"
)

// fuzzKeys are the annotation keys the fuzzer sets, by index.
var fuzzKeys = func() []string {
	keys := []string{AnnotationStatus, AnnotationMirrorPod, "podmeta.io/unknown"}
	for k := range annotationSettings {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}()

// FuzzPlan feeds random pods and annotation values to the engine. Whatever it gets, it
// must not panic, and every plan it makes must pass checkPlan: only adds, the patch
// applies and equals the typed rendering, a second pass adds nothing, nothing of the
// pod's own is changed. Denials must be AnnotationErrors or name the annotation.
func FuzzPlan(f *testing.F) {
	inputs, err := golden.Inputs("testdata")
	if err != nil {
		f.Fatal(err)
	}
	for _, in := range inputs {
		if strings.Contains(in, "large-") {
			continue
		}
		c := readCase(&testing.T{}, in)
		f.Add(c.pod, uint8(0), "", "")
	}
	f.Add([]byte(`{"spec":{"containers":[{"name":"a","env":[{"name":"POD_IP","value":"x"}]}]}}`), uint8(5), "all", "true")
	in := testInjector(f)
	f.Fuzz(func(t *testing.T, raw []byte, key uint8, value, nsValue string) {
		// Only inputs the apiserver could send: a JSON object that decodes as a Pod.
		var pod corev1.Pod
		if sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &pod) != nil {
			return
		}
		var obj map[string]any
		if json.Unmarshal(raw, &obj) != nil || obj == nil {
			return
		}
		k := fuzzKeys[int(key)%len(fuzzKeys)]
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		pod.Annotations[k] = value
		meta, _ := obj["metadata"].(map[string]any)
		if meta == nil {
			meta = map[string]any{}
			obj["metadata"] = meta
		}
		meta["annotations"] = pod.Annotations
		raw, _ = json.Marshal(obj)
		nsAnn := map[string]string{fuzzKeys[int(key/2)%len(fuzzKeys)]: nsValue}

		plan, err := in.PlanPod(raw, "fuzz", nsAnn)
		if err != nil {
			if !IsDenied(err) {
				t.Fatalf("a decodable pod was not planned: %v", err)
			}
			if !strings.Contains(err.Error(), Prefix) {
				t.Fatalf("denial does not name the annotation: %v", err)
			}
			return
		}
		checkPlan(t, in, raw, "fuzz", nsAnn, plan)
	})
}

// TestFuzzCorpusCommitted keeps the seed corpus in the repository, as the project
// promises, so a regression found once stays a test.
func TestFuzzCorpusCommitted(t *testing.T) {
	files, _ := os.ReadDir("testdata/fuzz/FuzzPlan")
	if len(files) == 0 {
		t.Fatal("testdata/fuzz/FuzzPlan is empty; commit the seed corpus")
	}
}
