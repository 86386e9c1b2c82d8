package webhook

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// The ServiceAccount admission plugin honours a ServiceAccount's
// automountServiceAccountToken: false by adding no kube-api-access-* volume, without
// setting the pod's field. In the webhook path that missing volume is the
// administrator's opt-out, and the ambassador must not mount a token of its own.
func TestAmbassadorHonoursServiceAccountOptOut(t *testing.T) {
	h, _ := testHandler(t)
	const token = `{"name":"kube-api-access-x7k2q","projected":{"sources":[{"serviceAccountToken":{"path":"token"}}]}}`
	for _, c := range []struct {
		name       string
		volumes    string
		ambassador bool
	}{
		{"token volume: automount on", `[` + token + `]`, true},
		{"no token volume: automount off on the ServiceAccount", `[]`, false},
		{"no volumes at all", ``, false},
		{"a volume named like it that is not a token", `[{"name":"kube-api-access-x7k2q","emptyDir":{}}]`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			volumes := ""
			if c.volumes != "" {
				volumes = `,"volumes":` + c.volumes
			}
			pod := `{"metadata":{"name":"p","annotations":{"podmeta.io/ambassador":"true"}},"spec":{"containers":[{"name":"app"}]` + volumes + `}}`
			s := serve(t, h, "application/json", withPod(pod))
			if !s.review.Response.Allowed {
				t.Fatalf("denied: %+v", s.review.Response.Status)
			}
			out := patched(t, s, pod)
			spec := out["spec"].(map[string]any)
			var names []string
			for _, list := range []string{"initContainers", "containers"} {
				cs, _ := spec[list].([]any)
				for _, c := range cs {
					names = append(names, c.(map[string]any)["name"].(string))
				}
			}
			if got := slices.Contains(names, AmbassadorContainerName); got != c.ambassador {
				t.Errorf("ambassador added = %v, want %v (containers %v)", got, c.ambassador, names)
			}
			warned := slices.ContainsFunc(s.review.Response.Warnings, func(w string) bool {
				return strings.Contains(w, "no service-account token volume")
			})
			if warned == c.ambassador {
				t.Errorf("warning about the missing token volume = %v, want %v: %q", warned, !c.ambassador, s.review.Response.Warnings)
			}
		})
	}
}

// Offline, podmeta inject cannot know what the ServiceAccount says: a manifest has no
// token volume before the apiserver adds one, so the sidecar is added as asked.
func TestAmbassadorOfflineIgnoresMissingTokenVolume(t *testing.T) {
	raw, _ := json.Marshal(map[string]any{
		"metadata": map[string]any{"name": "p", "annotations": map[string]string{AnnotationAmbassador: "true"}},
		"spec":     map[string]any{"containers": []any{map[string]any{"name": "app"}}},
	})
	plan, err := testInjector(t).PlanPod(raw, "ns", nil)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Status.Ambassador == "" {
		t.Errorf("offline plan added no ambassador; warnings %q", plan.Warnings)
	}
}
