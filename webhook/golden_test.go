package webhook

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/internal/golden"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.yaml from the current engine")

// goldenCase is one testdata/NAME.yaml: an optional Namespace document (its name and
// annotations are the namespace the pod is admitted in), a Pod, and an optional first
// line "# config: FLAGS" with operator flags.
type goldenCase struct {
	flags     []string
	namespace string
	nsAnn     map[string]string
	pod       []byte // JSON
}

// TestGolden runs every testdata/NAME.yaml through the engine and compares the patched
// pod (with its warnings, or the denial) to NAME.golden.yaml. Each case also passes
// checkPlan: patch == typed rendering, idempotent, nothing of the pod's changed.
func TestGolden(t *testing.T) {
	inputs, err := golden.Inputs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, input := range inputs {
		name := strings.TrimSuffix(filepath.Base(input), ".yaml")
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			c := readCase(t, input)
			got := runCase(t, c)
			golden := strings.TrimSuffix(input, ".yaml") + ".golden.yaml"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./webhook -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("%s is stale (-want +got); run go test ./webhook -update and review the diff:\n%s", golden, diff)
			}
		})
	}
	goldens, _ := filepath.Glob("testdata/*.golden.yaml")
	for _, g := range goldens {
		if name := strings.TrimSuffix(filepath.Base(g), ".golden.yaml"); !seen[name] {
			t.Errorf("%s has no input testdata/%s.yaml: delete it or restore the input", g, name)
		}
	}
	if len(seen) < 25 {
		t.Errorf("only %d golden cases; the engine's contract needs at least 25", len(seen))
	}
}

func runCase(t *testing.T, c goldenCase) []byte {
	in := testInjector(t, c.flags...)
	plan, err := in.PlanPod(c.pod, c.namespace, c.nsAnn)
	var out bytes.Buffer
	if err != nil {
		if !IsDenied(err) {
			t.Fatalf("PlanPod: %v", err)
		}
		out.WriteString("# denied:\n")
		for line := range strings.SplitSeq(err.Error(), "\n") {
			out.WriteString("# " + line + "\n")
		}
		return out.Bytes()
	}
	patched := checkPlan(t, in, c.pod, c.namespace, c.nsAnn, plan)
	if plan.Skipped != "" {
		out.WriteString("# skipped: " + plan.Skipped + "\n")
	}
	for _, w := range plan.Warnings {
		out.WriteString("# warning: " + w + "\n")
	}
	y, err := yaml.JSONToYAML(patched)
	if err != nil {
		t.Fatal(err)
	}
	out.Write(y)
	return out.Bytes()
}

func readCase(t *testing.T, path string) goldenCase {
	t.Helper()
	in, err := golden.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	c := goldenCase{flags: in.Flags, pod: in.Pod}
	if ns := in.Namespace; ns != nil {
		c.namespace, c.nsAnn = ns.Name, ns.Annotations
	}
	return c
}
