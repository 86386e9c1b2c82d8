package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// recorded returns a recorded AdmissionReview from testdata/admission-reviews, with
// edit applied to its decoded form.
// recordedPath is where the AdmissionReviews recorded from a real kube-apiserver live
// (testdata/admission-reviews/README.md says how they were made).
func recordedPath(name string) string {
	return filepath.Join("testdata", "admission-reviews", name+".json")
}

func recorded(t testing.TB, name string, edit func(review map[string]any)) []byte {
	t.Helper()
	data, err := os.ReadFile(recordedPath(name))
	if err != nil {
		t.Fatal(err)
	}
	if edit == nil {
		return data
	}
	var review map[string]any
	if err := json.Unmarshal(data, &review); err != nil {
		t.Fatal(err)
	}
	edit(review)
	out, _ := json.Marshal(review)
	return out
}

func request(review map[string]any) map[string]any { return review["request"].(map[string]any) }

func podAnnotations(review map[string]any) map[string]any {
	return request(review)["object"].(map[string]any)["metadata"].(map[string]any)["annotations"].(map[string]any)
}

type served struct {
	code   int
	body   string
	review reviewResponse
}

func serve(t *testing.T, h *Handler, contentType string, body []byte) served {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/mutate-v1-pod", bytes.NewReader(body))
	if contentType != "" {
		r.Header.Set("Content-Type", contentType)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	s := served{code: w.Code, body: w.Body.String()}
	if w.Code == http.StatusOK {
		if err := json.Unmarshal(w.Body.Bytes(), &s.review); err != nil {
			t.Fatalf("200 with a body that is not a review: %v\n%s", err, w.Body)
		}
	}
	return s
}

func testHandler(t testing.TB) (*Handler, *Metrics) {
	t.Helper()
	m := NewMetrics(prometheus.NewRegistry())
	return &Handler{Injector: testInjector(t), Metrics: m, Log: logr.Discard()}, m
}

func TestHandlerInjectsRecordedReview(t *testing.T) {
	h, m := testHandler(t)
	body := recorded(t, "typical", func(r map[string]any) { podAnnotations(r)[AnnotationAmbassador] = "true" })
	s := serve(t, h, "application/json", body)
	resp := s.review.Response
	if s.code != 200 || !resp.Allowed || resp.UID != "63e1bbb4-16b7-4ab5-9df0-b834330f123b" || resp.PatchType != "JSONPatch" {
		t.Fatalf("code %d response %+v", s.code, resp)
	}
	if s.review.APIVersion != "admission.k8s.io/v1" || s.review.Kind != "AdmissionReview" {
		t.Errorf("response is %s %s", s.review.APIVersion, s.review.Kind)
	}
	// The patch is exactly the engine's for the same pod.
	var review struct {
		Request struct {
			Object json.RawMessage `json:"object"`
		} `json:"request"`
	}
	_ = json.Unmarshal(body, &review)
	plan, err := h.Injector.PlanPod(review.Request.Object, "bench", nil)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := plan.PatchJSON()
	if !bytes.Equal(resp.Patch, want) {
		t.Errorf("patch differs from the engine's:\n%s\n%s", resp.Patch, want)
	}
	checkPlan(t, h.Injector, review.Request.Object, "bench", nil, plan)
	if got := testutil.ToFloat64(m.Admissions.WithLabelValues(ResultInjected)); got != 1 {
		t.Errorf("injected counter %v", got)
	}
	if got := testutil.ToFloat64(m.Injections.WithLabelValues(FeatureAmbassador)); got != 1 {
		t.Errorf("ambassador counter %v", got)
	}
}

func TestHandlerAnswers(t *testing.T) {
	cases := []struct {
		name        string
		contentType string
		body        []byte
		code        int
		allowed     bool
		patched     bool
		inBody      string // in the error body, or the denial message
		result      string
	}{
		{name: "empty body", body: nil, code: 400, inBody: "not an AdmissionReview", result: ResultError},
		{name: "truncated", body: recorded(t, "typical", nil)[:3000], code: 400, result: ResultError},
		{name: "not JSON", body: []byte("<xml/>"), code: 400, result: ResultError},
		{name: "JSON but not a review", body: []byte(`{"kind":"Pod","apiVersion":"v1"}`), code: 400, inBody: "want an admission.k8s.io/v1 AdmissionReview", result: ResultError},
		{name: "wrong content type", contentType: "text/plain", body: recorded(t, "typical", nil), code: 415, inBody: "want application/json", result: ResultError},
		{name: "content type with charset", contentType: "application/json; charset=utf-8", body: recorded(t, "typical", nil), code: 200, allowed: true, patched: true, result: ResultInjected},
		{name: "no request", body: []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), code: 400, inBody: "no request", result: ResultError},
		{name: "no uid", body: recorded(t, "typical", func(r map[string]any) { delete(request(r), "uid") }), code: 400, inBody: "no uid", result: ResultError},
		{name: "no object", body: recorded(t, "typical", func(r map[string]any) { delete(request(r), "object") }), code: 400, inBody: "no request.object", result: ResultError},
		{name: "v1beta1", body: recorded(t, "typical", func(r map[string]any) { r["apiVersion"] = "admission.k8s.io/v1beta1" }), code: 200, allowed: true, patched: true, result: ResultInjected},
		{name: "update", body: recorded(t, "typical", func(r map[string]any) { request(r)["operation"] = "UPDATE" }), code: 200, allowed: true, result: ResultSkipped},
		{name: "delete", body: recorded(t, "typical", func(r map[string]any) { request(r)["operation"] = "DELETE"; request(r)["object"] = nil }), code: 200, allowed: true, result: ResultSkipped},
		{name: "subresource", body: recorded(t, "typical", func(r map[string]any) { request(r)["subResource"] = "ephemeralcontainers" }), code: 200, allowed: true, result: ResultSkipped},
		{name: "not a pod", body: recorded(t, "typical", func(r map[string]any) {
			request(r)["kind"] = map[string]any{"group": "apps", "version": "v1", "kind": "Deployment"}
			request(r)["object"] = map[string]any{"kind": "Deployment", "spec": map[string]any{"volumes": "not-a-list", "containers": 7}}
		}), code: 200, allowed: true, result: ResultSkipped},
		{name: "malformed pod", body: recorded(t, "typical", func(r map[string]any) {
			request(r)["object"].(map[string]any)["spec"] = map[string]any{"containers": "nope"}
		}), code: 400, inBody: "malformed pod", result: ResultError},
		{name: "invalid annotation", body: recorded(t, "typical", func(r map[string]any) { podAnnotations(r)[AnnotationEnvPrefix] = "1x" }), code: 200, inBody: `pod annotation podmeta.io/env-prefix="1x" is invalid`, result: ResultDenied},
		{name: "dry run behaves the same", body: recorded(t, "typical", func(r map[string]any) { request(r)["dryRun"] = true }), code: 200, allowed: true, patched: true, result: ResultInjected},
		{name: "opted out", body: recorded(t, "typical", func(r map[string]any) { podAnnotations(r)[AnnotationInject] = "false" }), code: 200, allowed: true, result: ResultSkipped},
		{name: "too large", body: append(recorded(t, "typical", nil), bytes.Repeat([]byte(" "), DefaultMaxBodyBytes)...), code: 413, inBody: "over the limit", result: ResultError},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, m := testHandler(t)
			ct := c.contentType
			if ct == "" {
				ct = "application/json"
			}
			s := serve(t, h, ct, c.body)
			if s.code != c.code {
				t.Fatalf("HTTP %d, want %d: %s", s.code, c.code, s.body)
			}
			if got := testutil.ToFloat64(m.Admissions.WithLabelValues(c.result)); got != 1 {
				t.Errorf("%s counter = %v, want 1", c.result, got)
			}
			if c.code != 200 {
				if !strings.Contains(s.body, c.inBody) {
					t.Errorf("body %q lacks %q", s.body, c.inBody)
				}
				return
			}
			resp := s.review.Response
			if resp.Allowed != c.allowed || (len(resp.Patch) > 0) != c.patched {
				t.Errorf("allowed=%v patched=%v, want %v %v", resp.Allowed, len(resp.Patch) > 0, c.allowed, c.patched)
			}
			if !c.allowed && (resp.Status == nil || resp.Status.Code != 403 || !strings.Contains(resp.Status.Message, c.inBody)) {
				t.Errorf("denial status %+v lacks %q", resp.Status, c.inBody)
			}
			if resp.UID == "" {
				t.Error("response has no uid")
			}
		})
	}
}

func TestHandlerMethod(t *testing.T) {
	h, _ := testHandler(t)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/mutate-v1-pod", nil))
	if w.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", w.Code)
	}
}

// A panic anywhere below the handler is answered with 500 and counted, never a
// dropped connection.
func TestHandlerRecoversPanic(t *testing.T) {
	h, m := testHandler(t)
	h.Namespaces = func(context.Context, string) map[string]string { panic("boom") }
	s := serve(t, h, "application/json", recorded(t, "typical", nil))
	if s.code != 500 || testutil.ToFloat64(m.Admissions.WithLabelValues(ResultError)) != 1 {
		t.Errorf("code %d, body %q", s.code, s.body)
	}
}

func TestHandlerNamespaceDefaults(t *testing.T) {
	h, _ := testHandler(t)
	h.Namespaces = func(_ context.Context, ns string) map[string]string {
		if ns != "bench" {
			t.Errorf("asked for namespace %q", ns)
		}
		return map[string]string{AnnotationEnv: "none", AnnotationVolume: "false", AnnotationEphemeralStorageRequest: "none"}
	}
	s := serve(t, h, "application/json", recorded(t, "typical", nil))
	// Nothing but the status record (and its list of containers) is left to add.
	patch := s.review.Response.Patch
	if n := strings.Count(string(patch), `"op"`); n != 2 || !strings.Contains(string(patch), "podmeta.io~1status") || !strings.Contains(string(patch), "podmeta.io~1injected") {
		t.Errorf("patch %s: want only the status annotations", patch)
	}
}

// TestHandlerAnswersWithLength checks, through a real net/http server, that an answer
// carries its length: a chunked answer costs the apiserver an extra TLS record and
// wake-up per admission.
func TestHandlerAnswersWithLength(t *testing.T) {
	h, _ := testHandler(t)
	srv := httptest.NewServer(h)
	defer srv.Close()
	body := recorded(t, "typical", func(r map[string]any) { podAnnotations(r)[AnnotationAmbassador] = "true" })
	resp, err := http.Post(srv.URL, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || len(resp.TransferEncoding) != 0 || resp.ContentLength != int64(len(got)) || len(got) < 4096 {
		t.Errorf("status %d, transfer encoding %v, Content-Length %d for a body of %d bytes (want a length and no chunking)",
			resp.StatusCode, resp.TransferEncoding, resp.ContentLength, len(got))
	}
}

// Finding 10 of security issue 16: the fallback decoder (a review of an object that is
// not a pod) matched keys case-insensitively, so "UID" overrode "uid". Both decoders
// now read keys as the apiserver does: exactly.
func TestHandlerKeysCaseSensitive(t *testing.T) {
	const notAPod = `"kind":{"group":"apps","version":"v1","kind":"Deployment"},"operation":"CREATE","object":{"kind":"Deployment","spec":{"containers":7}}`
	const pod = `"kind":{"group":"","version":"v1","kind":"Pod"},"operation":"UPDATE","object":{"kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[]}}`
	for name, object := range map[string]string{"not a pod (fallback decoder)": notAPod, "pod": pod} {
		t.Run(name, func(t *testing.T) {
			h, _ := testHandler(t)
			s := serve(t, h, "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"A","UID":"B",`+object+`}}`))
			if s.code != 200 || s.review.Response.UID != "A" {
				t.Errorf(`"uid":"A","UID":"B": HTTP %d, uid %q, want 200 and "A"`, s.code, s.review.Response.UID)
			}
			// A review whose only request is spelt "Request" has none.
			s = serve(t, h, "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","Request":{"uid":"A",`+object+`}}`))
			if s.code != 400 || !strings.Contains(s.body, "no request") {
				t.Errorf(`"Request": HTTP %d %q, want 400 "no request"`, s.code, s.body)
			}
		})
	}
}
