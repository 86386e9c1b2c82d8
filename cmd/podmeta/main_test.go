package main

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/webhook"
)

// binary is the podmeta binary built once for the CLI tests: they run it as a user would.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "podmeta-cli")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "podmeta")
	build := exec.Command("go", "build", "-o", binary, "-ldflags", "-X main.version=v9.9.9-test", ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		panic("build podmeta: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// podmeta runs the binary and returns stdout, stderr and the exit code.
func podmeta(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), binary, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return out.String(), errOut.String(), exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return out.String(), errOut.String(), 0
}

func splitDocs(t *testing.T, s string) [][]byte {
	t.Helper()
	var docs [][]byte
	r := utilyaml.NewYAMLReader(bufioReader(s))
	for {
		d, err := r.Read()
		if err != nil {
			break
		}
		docs = append(docs, d)
	}
	return docs
}

func envNames(c corev1.Container) []string {
	var out []string
	for _, e := range c.Env {
		out = append(out, e.Name)
	}
	return out
}

func TestInjectWorkloads(t *testing.T) {
	out, stderr, code := podmeta(t, "", "inject", "-f", "testdata/workloads.yaml")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	docs := splitDocs(t, out)
	if len(docs) != 5 {
		t.Fatalf("got %d documents, want 5:\n%s", len(docs), out)
	}
	input, _ := os.ReadFile("testdata/workloads.yaml")
	inDocs := splitDocs(t, string(input))

	// Documents without a pod, and opted-out pods, come back byte for byte.
	for _, i := range []int{0, 3, 4} {
		if strings.TrimSpace(string(docs[i])) != strings.TrimSpace(string(inDocs[i])) {
			t.Errorf("document %d changed:\n%s\nwant\n%s", i, docs[i], inDocs[i])
		}
	}

	var dep appsv1.Deployment
	if err := yaml.UnmarshalStrict(docs[1], &dep); err != nil {
		t.Fatal(err)
	}
	spec := dep.Spec.Template.Spec
	web := spec.Containers[0]
	if got := envNames(web); got[0] != webhook.EnvPodName || !contains(got, webhook.EnvAPIURL) || got[len(got)-1] != webhook.EnvPodIP {
		t.Errorf("web env = %v: want podmeta's first, PODMETA_API_URL, and the user's POD_IP last", got)
	}
	if len(spec.InitContainers) != 1 || spec.InitContainers[0].Name != webhook.AmbassadorContainerName {
		t.Errorf("ambassador not added as native sidecar: %+v", spec.InitContainers)
	}
	if dep.Spec.Template.Annotations[webhook.AnnotationStatus] == "" {
		t.Error("no status annotation on the template")
	}
	if !strings.Contains(stderr, `deployment/web: podmeta: container "web" defines env POD_IP; kept the pod's value`) {
		t.Errorf("warning missing from stderr: %q", stderr)
	}

	var cj batchv1.CronJob
	if err := yaml.UnmarshalStrict(docs[2], &cj); err != nil {
		t.Fatal(err)
	}
	job := cj.Spec.JobTemplate.Spec.Template.Spec.Containers[0]
	if got := envNames(job); len(got) != 1 || got[0] != webhook.EnvPodName {
		t.Errorf("cronjob env = %v, want [POD_NAME]", got)
	}
	if len(job.VolumeMounts) != 1 || job.VolumeMounts[0].MountPath != webhook.DefaultVolumePath {
		t.Errorf("cronjob mounts = %+v", job.VolumeMounts)
	}

	// The output is a fixed point: injecting it again changes nothing.
	again, stderr2, code := podmeta(t, out, "inject", "-f", "-")
	if code != 0 || again != out {
		t.Errorf("second inject differs (exit %d, %s)", code, stderr2)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestInjectInvalidAnnotation(t *testing.T) {
	out, stderr, code := podmeta(t, "", "inject", "-f", "testdata/invalid.yaml")
	if code == 0 {
		t.Fatal("exit 0 for an invalid annotation")
	}
	if out != "" {
		t.Errorf("wrote output despite the error:\n%s", out)
	}
	for _, want := range []string{"statefulset/db", `podmeta.io/env="POD_NAME,NOT_A_KEY"`, `unknown key "NOT_A_KEY"`, "valid values are default, all, none"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
}

func TestInjectFlags(t *testing.T) {
	pod := "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {podmeta.io/ambassador: \"true\"}\nspec:\n  containers:\n  - {name: app, image: app:1}\n"
	cases := []struct {
		name string
		args []string
		want func(p *corev1.Pod) string
	}{
		{"legacy sidecar from config", []string{"--native-sidecar=never", "--ambassador-image=example.com/amb:1"}, func(p *corev1.Pod) string {
			if len(p.Spec.Containers) != 2 || p.Spec.Containers[1].Image != "example.com/amb:1" {
				return "want the ambassador as a second container with the configured image"
			}
			return ""
		}},
		{"namespace annotations", []string{"--namespace-annotations", "podmeta.io/env=none,podmeta.io/volume=false"}, func(p *corev1.Pod) string {
			if got := envNames(p.Spec.Containers[0]); len(got) != 1 || got[0] != webhook.EnvAPIURL {
				return "want only PODMETA_API_URL, got " + strings.Join(got, ",")
			}
			if len(p.Spec.Volumes) != 1 {
				return "want only the ambassador's token volume"
			}
			return ""
		}},
		{"operator storage default", []string{"--ephemeral-storage-request=1Gi"}, func(p *corev1.Pod) string {
			if q := p.Spec.Containers[0].Resources.Requests[corev1.ResourceEphemeralStorage]; q.String() != "1Gi" {
				return "request " + q.String()
			}
			return ""
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, stderr, code := podmeta(t, pod, append([]string{"inject", "-f", "-"}, c.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var p corev1.Pod
			if err := yaml.UnmarshalStrict([]byte(out), &p); err != nil {
				t.Fatal(err)
			}
			if msg := c.want(&p); msg != "" {
				t.Errorf("%s\n%s", msg, out)
			}
		})
	}
}

func TestBadUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"inject"}, "usage: podmeta inject -f FILE|DIR|-"},
		{[]string{"inject", "-f", "testdata/nope.yaml"}, "no such file"},
		{[]string{"inject", "-f", "-", "--ambassador-mode=admin"}, `--ambassador-mode="admin" is invalid`},
		{[]string{"inject", "-f", "-", "--native-sidecar=maybe"}, "--native-sidecar"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{}, "no command given"},
	} {
		_, stderr, code := podmeta(t, "", c.args...)
		if code == 0 || !strings.Contains(stderr, c.want) {
			t.Errorf("podmeta %q: exit %d, stderr %q; want non-zero and %q", c.args, code, stderr, c.want)
		}
	}
}

func TestExplain(t *testing.T) {
	out, stderr, code := podmeta(t, "", "explain", "-f", "testdata/workloads.yaml")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"deployment/web", "ambassador", "added as native-sidecar",
		`warning            -                   container "web" defines env POD_IP; kept the pod's value`,
		"cronjob/nightly", "added POD_NAME",
		"pod/opted-out", "skipped: podmeta.io/inject is false",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "ConfigMap") {
		t.Error("explain lists a document without a pod")
	}
}

func TestVersion(t *testing.T) {
	out, _, code := podmeta(t, "", "version")
	if code != 0 || !strings.Contains(out, "podmeta v9.9.9-test") {
		t.Errorf("version: exit %d, %q", code, out)
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }
