package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/internal/golden"
	"github.com/podmeta/podmeta/webhook"
)

// onlyAdded fails unless every line of in occurs in out, in order: a line diff of in
// against out shows only added lines.
func onlyAdded(t *testing.T, in, out string) {
	t.Helper()
	got := strings.Split(out, "\n")
	j := 0
	for n, line := range strings.Split(strings.TrimRight(in, "\n"), "\n") {
		for j < len(got) && got[j] != line {
			j++
		}
		if j == len(got) {
			t.Fatalf("input line %d %q is missing or changed in the output:\n%s", n+1, line, out)
		}
		j++
	}
}

// unmarshalAll parses a YAML or JSON stream into one generic value per document.
func unmarshalAll(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, d := range splitDocs(t, s) {
		var m map[string]any
		if err := yaml.Unmarshal(d, &m); err != nil {
			t.Fatal(err)
		}
		if m != nil {
			out = append(out, m)
		}
	}
	return out
}

func podFrom(t *testing.T, v any) corev1.Pod {
	t.Helper()
	b, _ := json.Marshal(v)
	var p corev1.Pod
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestInjectListsDirectoriesAndJSON(t *testing.T) {
	out, stderr, code := podmeta(t, "", "inject", "-R", "-f", "testdata/shapes/")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	docs := unmarshalAll(t, out)
	if len(docs) != 2 {
		t.Fatalf("got %d documents, want the List and the nested JSON List:\n%s", len(docs), out)
	}
	// The List's Deployment is injected; its ConfigMap is not touched.
	items := docs[0]["items"].([]any)
	tmpl := items[0].(map[string]any)["spec"].(map[string]any)["template"]
	if p := podFrom(t, tmpl); len(p.Spec.Containers[0].Env) == 0 || p.Annotations[webhook.AnnotationStatus] == "" {
		t.Errorf("the List's Deployment was not injected:\n%s", out)
	}
	if cm := items[1].(map[string]any); !reflect.DeepEqual(cm["data"], map[string]any{"key": "value"}) || len(cm) != 4 {
		t.Errorf("the ConfigMap changed: %v", cm)
	}
	// The JSON file's PodList inside a List is injected, and written back as JSON.
	jsonStart := strings.Index(out, "---\n{")
	if jsonStart < 0 {
		t.Fatalf("the JSON document is not written as JSON:\n%s", out)
	}
	inner := docs[1]["items"].([]any)[0].(map[string]any)["items"].([]any)[0]
	if p := podFrom(t, inner); len(p.Spec.Containers[0].Env) != 1 || p.Spec.Containers[0].Env[0].Name != webhook.EnvPodName {
		t.Errorf("the nested PodList's pod was not injected as asked (env POD_NAME):\n%s", out)
	}
	for _, want := range []string{"deployment/web: env ×9, volume, mount ×1, storage request\n", "pod/inner: env ×1, volume"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}

	// Without -R, the subdirectory is not read.
	out, _, code = podmeta(t, "", "inject", "-f", "testdata/shapes")
	if code != 0 || strings.Contains(out, "PodList") || !strings.Contains(out, "kind: List") {
		t.Errorf("-f DIR without -R: exit %d, output:\n%s", code, out)
	}
}

func TestInjectJSONFromStdin(t *testing.T) {
	in := `{"apiVersion":"v1","kind":"PodList","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"i"}]}}]}`
	out, stderr, code := podmeta(t, in, "inject", "-f", "-", "--quiet")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if stderr != "" {
		t.Errorf("--quiet printed %q", stderr)
	}
	var list struct{ Items []corev1.Pod }
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	if len(list.Items) != 1 || len(list.Items[0].Spec.Containers[0].Env) == 0 {
		t.Errorf("the PodList's pod was not injected:\n%s", out)
	}
	if strings.Contains(out, "\n ") {
		t.Errorf("one-line JSON in, indented JSON out:\n%s", out)
	}
}

// TestInjectKeepsComments: in documents inject changes, every line of the input is kept
// as written (comments, key order, quoting, blank lines); inject only adds lines.
func TestInjectKeepsComments(t *testing.T) {
	for _, file := range []string{"testdata/commented.yaml", "testdata/workloads.yaml", "testdata/shapes/list.yaml"} {
		t.Run(filepath.Base(file), func(t *testing.T) {
			input, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			out, stderr, code := podmeta(t, "", "inject", "-f", file)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if len(out) <= len(input) {
				t.Fatalf("nothing injected:\n%s", out)
			}
			onlyAdded(t, string(input), out)
		})
	}
}

// TestInjectMatchesWebhookPatch: on every golden input of the engine, the CLI's edit of
// the YAML tree is, as an object, what applying the webhook's own JSON patch gives.
func TestInjectMatchesWebhookPatch(t *testing.T) {
	inputs, err := golden.Inputs("../../webhook/testdata")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, input := range inputs {
		t.Run(filepath.Base(input), func(t *testing.T) {
			c := readGoldenCase(t, input)
			p, err := c.in.PlanPod(c.podJSON, c.namespace, c.nsAnn)
			if webhook.IsDenied(err) {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			n++
			ops, _ := json.Marshal(p.Patch())
			patch, err := jsonpatch.DecodePatch(ops)
			if err != nil {
				t.Fatal(err)
			}
			want, err := patch.Apply(c.podJSON)
			if err != nil {
				t.Fatal(err)
			}
			if err := apply(c.doc, c.doc.objects[0], p); err != nil {
				t.Fatal(err)
			}
			out, err := c.doc.encode()
			if err != nil {
				t.Fatal(err)
			}
			got, err := yaml.YAMLToJSON(out)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			var a, b any
			json.Unmarshal(want, &a)
			json.Unmarshal(got, &b)
			if !reflect.DeepEqual(a, b) {
				t.Errorf("the CLI's output differs from the patched pod:\n%s\nwant\n%s", got, want)
			}
		})
	}
	if n < 25 {
		t.Errorf("only %d golden inputs compared", n)
	}
}

// goldenCase is one of the engine's golden inputs (webhook/golden_test.go): operator
// flags on a "# config:" line, an optional Namespace, a Pod.
type goldenCase struct {
	in        *webhook.Injector
	namespace string
	nsAnn     map[string]string
	doc       *document // the Pod's
	podJSON   []byte
}

func readGoldenCase(t *testing.T, path string) goldenCase {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	docs, err := readDocuments(path, f)
	if err != nil {
		t.Fatal(err)
	}
	var c goldenCase
	var flags []string
	for _, d := range docs {
		if line, ok := strings.CutPrefix(string(bytes.TrimSpace(d.raw)), "# config:"); ok {
			line, _, _ = strings.Cut(line, "\n")
			flags = strings.Fields(line)
		}
		if d.node == nil {
			continue
		}
		switch str(root(d.node), "kind") {
		case "Namespace":
			meta := field(root(d.node), "metadata")
			c.namespace = str(meta, "name")
			js, _ := nodeJSON(field(meta, "annotations"))
			json.Unmarshal(js, &c.nsAnn)
		case "Pod":
			c.doc = d
			if c.podJSON, err = nodeJSON(d.node); err != nil {
				t.Fatal(err)
			}
		}
	}
	cfg := webhook.DefaultConfig()
	fs := flag.NewFlagSet("golden", flag.ContinueOnError)
	cfg.AddFlags(fs)
	if err := fs.Parse(flags); err != nil {
		t.Fatal(err)
	}
	if c.in, err = webhook.NewInjector(cfg, cfg.UseNativeSidecar(true)); err != nil {
		t.Fatal(err)
	}
	if c.doc == nil || len(c.doc.objects) != 1 {
		t.Fatalf("%s: no Pod", path)
	}
	return c
}

func TestDeniedListsEveryProblem(t *testing.T) {
	out, stderr, code := podmeta(t, "", "inject", "-f", "testdata/invalid-list.yaml")
	if code != 1 || out != "" {
		t.Fatalf("exit %d, stdout %q: want 1 and nothing", code, out)
	}
	for _, want := range []string{"2 objects would be denied", "deployment/bad-env:", `unknown key "NOT_A_KEY"`, "pod/bad-volume:", `podmeta.io/volume="maybe"`} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "pod/fine") {
		t.Errorf("a valid pod is listed among the problems:\n%s", stderr)
	}
}

func TestFlagErrorsNameTheFlag(t *testing.T) {
	for _, c := range []struct {
		args      []string
		want, not string
	}{
		{[]string{"--env=bogus"}, `--env="bogus" is invalid: unknown key "bogus"`, "operator config"},
		{[]string{"--ambassador-mode=admin", "--volume-path=relative"}, `--ambassador-mode="admin" is invalid`, "annotation"},
		{[]string{"--namespace-annotations", "podmeta.io/volume=maybe"}, `--namespace-annotations podmeta.io/volume="maybe" is invalid`, "namespace annotation"},
	} {
		_, stderr, code := podmeta(t, "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: i}]\n", append([]string{"inject", "-f", "-"}, c.args...)...)
		if code != 1 || !strings.Contains(stderr, c.want) || strings.Contains(stderr, c.not) {
			t.Errorf("%v: exit %d, stderr %q; want 1, %q and no %q", c.args, code, stderr, c.want, c.not)
		}
	}
	// The server's flags are the same settings: named as flags too.
	_, stderr, code := podmeta(t, "", "webhook", "--env=bogus")
	if code != 1 || !strings.Contains(stderr, `--env="bogus" is invalid`) || strings.Contains(stderr, "operator config") {
		t.Errorf("webhook --env=bogus: exit %d, stderr %q", code, stderr)
	}
}

func TestWorkloadMetadataAnnotationsWarn(t *testing.T) {
	in := "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  annotations:\n    podmeta.io/env: none\nspec:\n  template:\n    spec:\n      containers:\n      - {name: c, image: i}\n"
	_, stderr, code := podmeta(t, in, "inject", "-f", "-")
	want := "deployment/web: podmeta: podmeta.io/env on the Deployment's own metadata is ignored: podmeta reads spec.template.metadata.annotations"
	if code != 0 || !strings.Contains(stderr, want) {
		t.Errorf("exit %d, stderr %q; want %q", code, stderr, want)
	}
	out, _, _ := podmeta(t, in, "explain", "-f", "-")
	if !strings.Contains(out, "own metadata is ignored") {
		t.Errorf("explain does not warn:\n%s", out)
	}
}

// A JSON array of objects is read as the objects.
func TestInjectJSONArray(t *testing.T) {
	in := `[{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}},{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"i"}]}}]`
	out, stderr, code := podmeta(t, in, "inject", "-f", "-")
	if code != 0 || !strings.Contains(stderr, "pod/p: env ×") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var objs []corev1.Pod
	if err := json.Unmarshal([]byte(out), &objs); err != nil || len(objs) != 2 || len(objs[1].Spec.Containers[0].Env) == 0 {
		t.Errorf("the array's pod was not injected (%v):\n%s", err, out)
	}
}
