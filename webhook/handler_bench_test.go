package webhook

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// benchReviews are the recorded reviews with every podmeta feature turned on.
func benchReviews(b *testing.B) map[string][]byte {
	out := map[string][]byte{}
	for _, name := range []string{"typical", "large", "initsidecar"} {
		out[name] = recorded(b, name, func(r map[string]any) { podAnnotations(r)[AnnotationAmbassador] = "true" })
	}
	return out
}

// floorHandler is the framework's stock path doing no work: controller-runtime's
// admission.Webhook decodes the review and the typed Pod and answers "allowed".
func floorHandler() http.Handler {
	scheme := runtime.NewScheme()
	_ = corev1.AddToScheme(scheme)
	dec := admission.NewDecoder(scheme)
	return &admission.Webhook{Handler: admission.HandlerFunc(func(_ context.Context, req admission.Request) admission.Response {
		var pod corev1.Pod
		if err := dec.Decode(req, &pod); err != nil {
			return admission.Errored(http.StatusBadRequest, err)
		}
		return admission.Allowed("")
	})}
}

// BenchmarkHandler measures a whole admission in-process, body in, response out: podmeta's
// handler beside the framework floor (decode only, no work) on the same bodies.
func BenchmarkHandler(b *testing.B) {
	h, _ := testHandler(b)
	floor := floorHandler()
	for name, body := range benchReviews(b) {
		for _, s := range []struct {
			name string
			h    http.Handler
		}{{"podmeta", h}, {"floor-cr-decode-only", floor}} {
			b.Run(name+"/"+s.name, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(body)))
				for b.Loop() {
					r := httptest.NewRequest(http.MethodPost, "/mutate-v1-pod", bytes.NewReader(body))
					r.Header.Set("Content-Type", "application/json")
					w := httptest.NewRecorder()
					s.h.ServeHTTP(w, r)
					if w.Code != 200 {
						b.Fatal(w.Code, w.Body.String())
					}
				}
			})
		}
	}
}
