package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// FuzzHandler sends arbitrary bodies to the HTTP handler: whatever the bytes, the answer
// is a well-formed HTTP response, never a panic and never a 5xx (garbage is the
// client's fault: 4xx), and a 200 always carries a review with the request's uid and an
// answer of bounded size.
func FuzzHandler(f *testing.F) {
	for _, name := range []string{"typical", "initsidecar"} {
		f.Add(recorded(f, name, nil))
	}
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},"operation":"CREATE","object":{"spec":{"containers":[{"name":"a"}]}}}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":[]}}`))
	f.Add([]byte("\x00\xff{"))
	h, _ := testHandler(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest(http.MethodPost, "/mutate-v1-pod", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		switch {
		case w.Code >= 500:
			t.Fatalf("HTTP %d for client input: %s", w.Code, w.Body)
		case w.Code == 200:
			// The answer is bounded twice: by the patch bound (base64 of at most
			// DefaultMaxPatchBytes) plus capped warnings and a denial's text, and by a
			// fixed multiple of the request (one byte of pod makes at most ~150 bytes of
			// patch: a 12-byte container gets 9 env vars, a mount and its volume items).
			if n, abs, rel := w.Body.Len(), DefaultMaxPatchBytes*4/3+16<<10, 200*len(body)+16<<10; n > abs || n > rel {
				t.Fatalf("answer of %d bytes to a request of %d: bounds %d and %d", n, len(body), abs, rel)
			}
			var rr reviewResponse
			if err := json.Unmarshal(w.Body.Bytes(), &rr); err != nil || rr.Response.UID == "" {
				t.Fatalf("200 without a well-formed review (%v): %s", err, w.Body)
			}
			if len(rr.Response.Patch) > 0 {
				if _, err := jsonpatch.DecodePatch(rr.Response.Patch); err != nil {
					t.Fatalf("patch is not a JSON patch: %v", err)
				}
			}
		case w.Code < 400:
			t.Fatalf("unexpected HTTP %d", w.Code)
		}
	})
}

// withPod builds a v1 review of a pod CREATE around a pod JSON document.
func withPod(pod string) []byte {
	return []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","kind":{"group":"","version":"v1","kind":"Pod"},"namespace":"ns","operation":"CREATE","object":` + pod + `}}`)
}

// patched applies a response's patch to pod, as the apiserver would.
func patched(t *testing.T, s served, pod string) map[string]any {
	t.Helper()
	out := []byte(pod)
	if len(s.review.Response.Patch) > 0 {
		p, err := jsonpatch.DecodePatch(s.review.Response.Patch)
		if err != nil {
			t.Fatal(err)
		}
		if out, err = p.Apply(out); err != nil {
			t.Fatalf("patch does not apply: %v", err)
		}
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func containersOf(m map[string]any) []any { return m["spec"].(map[string]any)["containers"].([]any) }

func envCount(c any) int {
	env, _ := c.(map[string]any)["env"].([]any)
	return len(env)
}

// TestHostileInput: inputs a careless or hostile client could produce, each answered
// correctly and promptly, with memory bounded.
func TestHostileInput(t *testing.T) {
	bigValue := strings.Repeat("x", 1<<20)
	var manyContainers []string
	for i := range 50 {
		manyContainers = append(manyContainers, fmt.Sprintf(`{"name":"c%d","image":"i"}`, i))
	}
	bigEnv := make([]string, 0, 30000)
	for i := range 30000 {
		bigEnv = append(bigEnv, fmt.Sprintf(`{"name":"VAR_%d","value":"%s"}`, i, strings.Repeat("v", 80)))
	}
	pod3MiB := `{"metadata":{"name":"big"},"spec":{"containers":[{"name":"app","image":"i","env":[` + strings.Join(bigEnv, ",") + `]}]}}`

	cases := []struct {
		name  string
		pod   string
		check func(t *testing.T, s served, pod string)
	}{
		{"3 MiB pod", pod3MiB, func(t *testing.T, s served, pod string) {
			if len(pod) < 3<<20 {
				t.Fatalf("test pod is only %d bytes", len(pod))
			}
			if got := envCount(containersOf(patched(t, s, pod))[0]); got != 30000+9 {
				t.Errorf("env count %d", got)
			}
		}},
		{"50 containers", `{"metadata":{"name":"many"},"spec":{"containers":[` + strings.Join(manyContainers, ",") + `]}}`, func(t *testing.T, s served, pod string) {
			for i, c := range containersOf(patched(t, s, pod)) {
				if envCount(c) != 9 {
					t.Errorf("container %d got %d env vars", i, envCount(c))
				}
			}
		}},
		{"duplicate keys: the last wins, as in the apiserver", `{"metadata":{"name":"dup","annotations":{"podmeta.io/env":"all","podmeta.io/env":"POD_NAME"}},"spec":{"containers":[{"name":"app","image":"i"}]}}`, func(t *testing.T, s served, pod string) {
			if got := envCount(containersOf(patched(t, s, pod))[0]); got != 1 {
				t.Errorf("env count %d, want 1 (POD_NAME)", got)
			}
		}},
		{"unknown fields survive", `{"metadata":{"name":"u"},"spec":{"futureField":{"a":1},"containers":[{"name":"app","image":"i","futureContainerField":true}]}}`, func(t *testing.T, s served, pod string) {
			m := patched(t, s, pod)
			if m["spec"].(map[string]any)["futureField"] == nil || containersOf(m)[0].(map[string]any)["futureContainerField"] != true {
				t.Error("unknown fields lost")
			}
		}},
		{"only generateName", `{"metadata":{"generateName":"web-"},"spec":{"containers":[{"name":"app","image":"i"}]}}`, func(t *testing.T, s served, pod string) {
			if !s.review.Response.Allowed || len(s.review.Response.Patch) == 0 {
				t.Error("not injected")
			}
		}},
		{"odd case and spaces", `{"metadata":{"name":"c","annotations":{"podmeta.io/volume":" FALSE ","podmeta.io/env":" Pod_Name , NODE_name","podmeta.io/ambassador-mode":"READ-ONLY"}},"spec":{"containers":[{"name":"app","image":"i"}]}}`, func(t *testing.T, s served, pod string) {
			m := patched(t, s, pod)
			if got := envCount(containersOf(m)[0]); got != 2 || m["spec"].(map[string]any)["volumes"] != nil {
				t.Errorf("env %d, volumes %v", got, m["spec"].(map[string]any)["volumes"])
			}
		}},
		{"1 MiB annotation value: denied with a clipped message", `{"metadata":{"name":"c","annotations":{"podmeta.io/env":"` + bigValue + `"}},"spec":{"containers":[{"name":"app","image":"i"}]}}`, func(t *testing.T, s served, _ string) {
			st := s.review.Response.Status
			if s.review.Response.Allowed || st == nil || len(st.Message) > 2000 || !strings.Contains(st.Message, "podmeta.io/env") {
				t.Errorf("allowed=%v status len %d", s.review.Response.Allowed, len(fmt.Sprint(st)))
			}
		}},
		{"1 MiB unrelated annotation", `{"metadata":{"name":"c","annotations":{"example.com/blob":"` + bigValue + `"}},"spec":{"containers":[{"name":"app","image":"i"}]}}`, func(t *testing.T, s served, pod string) {
			if envCount(containersOf(patched(t, s, pod))[0]) != 9 {
				t.Error("not injected")
			}
		}},
		{"forged status is not trusted", `{"metadata":{"name":"f","annotations":{"podmeta.io/status":"{\"env\":{\"app\":[\"POD_NAME\"]}}"}},"spec":{"containers":[{"name":"app","image":"i"}]}}`, func(t *testing.T, s served, pod string) {
			if envCount(containersOf(patched(t, s, pod))[0]) != 9 {
				t.Error("a forged status stopped the injection")
			}
		}},
		{"windows pod: no ambassador", `{"metadata":{"name":"w","annotations":{"podmeta.io/ambassador":"true"}},"spec":{"os":{"name":"windows"},"containers":[{"name":"iis","image":"i"}]}}`, func(t *testing.T, s served, pod string) {
			m := patched(t, s, pod)
			if m["spec"].(map[string]any)["initContainers"] != nil || len(s.review.Response.Warnings) == 0 {
				t.Error("ambassador added to a Windows pod, or no warning")
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, _ := testHandler(t)
			var before runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			s := serve(t, h, "application/json", withPod(c.pod))
			elapsed := time.Since(start)
			var after runtime.MemStats
			runtime.ReadMemStats(&after) // before the checks, which allocate plenty themselves
			if s.code != 200 {
				t.Fatalf("HTTP %d: %s", s.code, s.body)
			}
			c.check(t, s, c.pod)
			// Promptly (generously, for a loaded CI machine) and without holding memory
			// beyond a few copies of the input.
			if elapsed > 5*time.Second {
				t.Errorf("took %s", elapsed)
			}
			if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 64<<20 {
				t.Errorf("heap grew by %d MiB", grown>>20)
			}
		})
	}
}

func TestOperationsOtherThanCreate(t *testing.T) {
	for _, op := range []string{"UPDATE", "DELETE", "CONNECT"} {
		h, _ := testHandler(t)
		body := bytes.Replace(withPod(`{"metadata":{"name":"p"},"spec":{"containers":[{"name":"a","image":"i"}]}}`), []byte(`"CREATE"`), []byte(`"`+op+`"`), 1)
		s := serve(t, h, "application/json", body)
		if s.code != 200 || !s.review.Response.Allowed || len(s.review.Response.Patch) != 0 {
			t.Errorf("%s: HTTP %d allowed=%v patch=%s", op, s.code, s.review.Response.Allowed, s.review.Response.Patch)
		}
	}
}

// Overload (many more concurrent requests than MaxInFlight) neither crashes the handler
// nor leaks goroutines: once the clients are gone, the goroutine count is back.
func TestOverloadNoLeak(t *testing.T) {
	h, m := testHandler(t)
	h.MaxInFlight = 4
	// Each admission takes 10 ms, so 64 clients offer 16x what 4 slots can serve.
	h.Namespaces = func(context.Context, string) map[string]string { time.Sleep(10 * time.Millisecond); return nil }
	srv := httptest.NewTLSServer(h)
	base := runtime.NumGoroutine()
	body := recorded(t, "typical", nil)
	client := srv.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	var wg sync.WaitGroup
	deadline := time.Now().Add(2 * time.Second)
	for range 64 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				resp, err := client.Post(srv.URL, "application/json", bytes.NewReader(body))
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 && resp.StatusCode != http.StatusTooManyRequests {
					t.Errorf("HTTP %d under overload", resp.StatusCode)
					return
				}
			}
		})
	}
	wg.Wait()
	client.CloseIdleConnections()
	srv.Close()
	ok := testutil.ToFloat64(m.Admissions.WithLabelValues(ResultInjected))
	shed := testutil.ToFloat64(m.Shed)
	t.Logf("served %v, shed %v", ok, shed)
	if ok == 0 || shed == 0 {
		t.Errorf("served %v, shed %v: want both under 16x overload", ok, shed)
	}
	for end := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > base+2; {
		if time.Now().After(end) {
			t.Fatalf("%d goroutines after the overload, %d before", runtime.NumGoroutine(), base)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
