package webhook

import (
	"encoding/json"
	"os"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// benchPods are the pods of the recorded AdmissionReviews in testdata/admission-reviews
// (the same bodies every performance figure of the project uses), with the ambassador
// turned on so every feature is planned.
func benchPods(b *testing.B) map[string][]byte {
	b.Helper()
	out := map[string][]byte{}
	for _, name := range []string{"typical", "large", "initsidecar"} {
		data, err := os.ReadFile(recordedPath(name))
		if err != nil {
			b.Fatal(err)
		}
		var review struct {
			Request struct {
				Object map[string]any `json:"object"`
			} `json:"request"`
		}
		if err := json.Unmarshal(data, &review); err != nil {
			b.Fatal(err)
		}
		meta := review.Request.Object["metadata"].(map[string]any)
		ann, _ := meta["annotations"].(map[string]any)
		if ann == nil {
			ann = map[string]any{}
			meta["annotations"] = ann
		}
		ann[AnnotationAmbassador] = "true"
		out[name], _ = json.Marshal(review.Request.Object)
	}
	return out
}

// BenchmarkPlan measures decoding a pod and planning its injection.
func BenchmarkPlan(b *testing.B) {
	in := testInjector(b)
	for _, name := range []string{"typical", "large", "initsidecar"} {
		raw := benchPods(b)[name]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if _, err := in.PlanPod(raw, "bench", nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPatch measures the webhook's whole mutation, pod JSON in, patch JSON out, in
// two ways on the same pods: podmeta's (decode a view, plan, render "add" operations)
// and the usual one (decode a typed Pod, mutate it, marshal it, and let controller-
// runtime's PatchResponseFromRaw diff the two documents). Both produce the same pod.
func BenchmarkPatch(b *testing.B) {
	in := testInjector(b)
	for _, name := range []string{"typical", "large", "initsidecar"} {
		raw := benchPods(b)[name]
		b.Run(name+"/podmeta", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				plan, err := in.PlanPod(raw, "bench", nil)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := plan.PatchJSON(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/baseline-typed-diff", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				var pod corev1.Pod
				if err := json.Unmarshal(raw, &pod); err != nil {
					b.Fatal(err)
				}
				plan, err := in.PlanPod(raw, "bench", nil)
				if err != nil {
					b.Fatal(err)
				}
				plan.Apply(&pod)
				mutated, err := json.Marshal(&pod)
				if err != nil {
					b.Fatal(err)
				}
				resp := admission.PatchResponseFromRaw(raw, mutated)
				if _, err := json.Marshal(resp.Patches); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
