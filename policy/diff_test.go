package policy

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/podmeta/podmeta/webhook"
)

// TestGoldenDifferential admits every golden input of the engine through the rendered
// policies, run by the apiserver's own CEL code, and through the engine: the pods must
// be identical, apart from the documented differences of the status record
// (ExpectedRecord), and a pod the engine denies must be denied by the VAP with a
// message that names the same annotations and values.
func TestGoldenDifferential(t *testing.T) {
	for _, c := range readGoldens(t) {
		t.Run(c.name, func(t *testing.T) {
			cfg := config(t, c.flags)
			pols := rendered(t, c.flags)
			if len(c.pod.Spec.Containers) == 0 {
				t.Skip("the apiserver cannot create a pod without containers")
			}
			p := admitted(c.pod)
			want, _, werr := viaWebhook(t, cfg, c, p)
			got, denied, err := admit(t, pols, p, c.ns)
			if err != nil {
				t.Fatalf("policies failed: %s", short(err))
			}
			if werr != nil {
				if !webhook.IsDenied(werr) {
					t.Fatal(werr)
				}
				if denied == "" {
					t.Fatalf("the webhook denies the pod (%v); the policies admit it", werr)
				}
				checkSameDenial(t, werr.Error(), denied)
				return
			}
			if denied != "" {
				t.Fatalf("the policies deny a pod the webhook admits: %s", denied)
			}
			if err := ExpectedRecord(want, p); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(podJSON(t, want), podJSON(t, got)); diff != "" {
				t.Errorf("policy mode differs from the webhook (-webhook +policy):\n%s", diff)
			}
		})
	}
}

// podJSON is the pod as the apiserver would store it, for comparison: JSON, decoded
// generically (quantities compare as their canonical text).
func podJSON(t *testing.T, p *corev1.Pod) map[string]any {
	t.Helper()
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	// Quantities as the apiserver stores them: canonical.
	b, _ = json.Marshal(roundTrip(t, p))
	_ = json.Unmarshal(b, &m)
	return m
}

func roundTrip(t *testing.T, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var out corev1.Pod
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

// checkSameDenial checks that the VAP's message names every annotation key and value
// the webhook's message names.
func checkSameDenial(t *testing.T, webhookMsg, policyMsg string) {
	t.Helper()
	for line := range strings.SplitSeq(webhookMsg, "\n") {
		head, _, _ := strings.Cut(line, " is invalid")
		if !strings.Contains(policyMsg, head) {
			t.Errorf("the webhook denies with %q; the policy's message does not name %q:\n%s", line, head, policyMsg)
		}
	}
}

// short keeps the end of an error: the apiserver's CEL errors quote the whole
// expression first.
func short(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, "resulted in error:"); i >= 0 {
		s = s[i:]
	}
	var out []string
	for line := range strings.SplitSeq(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "|") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

var renders = map[string]*Policies{}

// rendered is Render for the engine's test configuration with flags, once per flags.
func rendered(t *testing.T, flags []string) *Policies {
	t.Helper()
	key := strings.Join(flags, " ")
	if p, ok := renders[key]; ok {
		return p
	}
	p, err := Render(config(t, flags))
	if err != nil {
		t.Fatal(err)
	}
	renders[key] = p
	return p
}
