package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// After a reinvocation (a container added to an injected pod), explain says what this
// pass adds (to the new container only) apart from what the earlier pass recorded.
func TestExplainSeparatesThisPassFromTheRecord(t *testing.T) {
	out, stderr, code := podmeta(t, "", "explain", "-f", "../../webhook/testdata/reinvocation-new-container.yaml")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	this, earlier, ok := strings.Cut(out, "EARLIER PASS")
	if !ok {
		t.Fatalf("no EARLIER PASS section:\n%s", out)
	}
	if !regexp.MustCompile(`env +late +added POD_NAME, PODMETA_API_URL`).MatchString(this) {
		t.Errorf("this pass does not add env to late:\n%s", out)
	}
	if regexp.MustCompile(`(env|mount) +app +added`).MatchString(this) {
		t.Errorf("this pass claims to add what the earlier one did:\n%s", out)
	}
	if !regexp.MustCompile(`kept +- +container "app": env POD_NAME already set`).MatchString(this) {
		t.Errorf("what this pass kept is not shown:\n%s", out)
	}
	for _, want := range []string{`env +app +recorded POD_NAME, PODMETA_API_URL`, `ambassador +podmeta-ambassador +recorded as native-sidecar`} {
		if !regexp.MustCompile(want).MatchString(earlier) {
			t.Errorf("earlier section lacks %s:\n%s", want, earlier)
		}
	}

	// A pod without a record has no earlier section.
	out, _, _ = podmeta(t, "", "explain", "-f", "testdata/commented.yaml")
	if strings.Contains(out, "EARLIER PASS") {
		t.Errorf("an earlier pass shown for a pod never injected:\n%s", out)
	}
}

// Installed as kubectl-podmeta, the binary is the kubectl plugin "kubectl podmeta": the
// same commands, and its messages name it so.
func TestKubectlPlugin(t *testing.T) {
	plugin := filepath.Join(t.TempDir(), "kubectl-podmeta")
	if err := os.Symlink(binary, plugin); err != nil {
		t.Fatal(err)
	}
	run := func(stdin string, args ...string) (string, string, error) {
		cmd := exec.CommandContext(t.Context(), plugin, args...)
		cmd.Stdin = strings.NewReader(stdin)
		var out, errOut strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		return out.String(), errOut.String(), err
	}
	_, stderr, _ := run("", "--help")
	if !strings.Contains(stderr, "usage: kubectl podmeta COMMAND") || !strings.Contains(stderr, "uninject") {
		t.Errorf("help: %q", stderr)
	}
	pod := "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: i}]\n"
	out, stderr, err := run(pod, "inject", "-f", "-")
	if err != nil || !strings.Contains(out, "POD_NAME") || !strings.Contains(stderr, "pod/p: env") {
		t.Errorf("inject through the plugin: %v, %q, %q", err, out, stderr)
	}
	_, stderr, _ = run("", "inject", "-f", "-", "--env=bogus")
	if !strings.HasPrefix(stderr, "kubectl podmeta: ") {
		t.Errorf("errors do not name the plugin: %q", stderr)
	}
}
