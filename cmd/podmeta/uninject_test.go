package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/podmeta/podmeta/internal/golden"
	"github.com/podmeta/podmeta/webhook"
)

// TestUninjectRoundTripGolden: on every golden input of the engine that carries no
// earlier record, uninject of inject's output is the input again, as an object and byte
// for byte.
func TestUninjectRoundTripGolden(t *testing.T) {
	inputs, err := golden.Inputs("../../webhook/testdata")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, input := range inputs {
		t.Run(filepath.Base(input), func(t *testing.T) {
			c := readGoldenCase(t, input)
			if bytes.Contains(c.podJSON, []byte(webhook.AnnotationStatus)) {
				return // an earlier record: uninject removes what it says too
			}
			p, err := c.in.PlanPod(c.podJSON, c.namespace, c.nsAnn)
			if webhook.IsDenied(err) {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			n++
			if err := apply(c.doc, c.doc.objects[0], p); err != nil {
				t.Fatal(err)
			}
			injected, err := c.doc.encode()
			if err != nil {
				t.Fatal(err)
			}
			docs, err := readDocuments(input, bytes.NewReader(injected))
			if err != nil || len(docs) != 1 || len(docs[0].objects) != 1 {
				t.Fatalf("re-reading the output: %v", err)
			}
			d := docs[0]
			o := &offlineOptions{nsAnnotations: c.nsAnn}
			obj := d.objects[0]
			obj.namespace = c.namespace
			r, err := uninjectObject(c.in, o, d, obj)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.warnings) > 0 && !p.Empty() {
				t.Errorf("warnings on podmeta's own additions: %q", r.warnings)
			}
			got, err := nodeJSON(d.node)
			if err != nil {
				t.Fatal(err)
			}
			var a, b any
			json.Unmarshal(c.podJSON, &a)
			json.Unmarshal(got, &b)
			if !reflect.DeepEqual(a, b) {
				t.Errorf("uninject(inject(input)) differs from the input:\n%s\nwant\n%s\ninjected:\n%s", got, c.podJSON, injected)
			}
			// And as written: the same bytes.
			out, err := d.encode()
			if err != nil {
				t.Fatal(err)
			}
			if raw := c.doc.raw; !bytes.Equal(bytes.TrimRight(out, "\n"), bytes.TrimRight(raw, "\n")) {
				t.Errorf("uninject(inject(input)) is not the input byte for byte:\n%s\nwant\n%s", out, raw)
			}
		})
	}
	if n < 25 {
		t.Errorf("only %d golden inputs round-tripped", n)
	}
}

// TestUninjectRoundTripBytes: inject | uninject gives back the commented examples byte
// for byte, YAML and JSON, Lists and directories.
func TestUninjectRoundTripBytes(t *testing.T) {
	for _, args := range [][]string{
		{"-f", "testdata/commented.yaml"},
		{"-f", "testdata/workloads.yaml"},
		{"-R", "-f", "testdata/shapes"},
		{"-f", "testdata/shapes/nested/podlist.json"},
		{"-f", "testdata/commented.yaml", "--ambassador", "--native-sidecar=never", "--ephemeral-storage-limit=2Gi"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			input, _, code := podmeta(t, "", append([]string{"uninject"}, args...)...)
			if code != 0 {
				t.Fatalf("uninject of the input: exit %d", code)
			}
			injected, stderr, code := podmeta(t, "", append([]string{"inject"}, args...)...)
			if code != 0 || injected == input {
				t.Fatalf("inject: exit %d, changed nothing: %s", code, stderr)
			}
			flags := args[flagsAfterFile(args):]
			out, stderr, code := podmeta(t, injected, append([]string{"uninject", "-f", "-"}, flags...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if out != input {
				t.Errorf("inject | uninject differs from the input:\n%s\nwant\n%s", out, input)
			}
			if strings.Contains(stderr, "kept") {
				t.Errorf("uninject kept some of podmeta's additions:\n%s", stderr)
			}
		})
	}
}

// flagsAfterFile is where the flags after -f FILE / -R -f DIR start.
func flagsAfterFile(args []string) int {
	for i, a := range args {
		if a == "-f" {
			return i + 2
		}
	}
	return len(args)
}

// A pod podmeta never injected comes back byte for byte, with nothing on stderr but the
// summary saying so.
func TestUninjectNeverInjected(t *testing.T) {
	input, _ := os.ReadFile("testdata/commented.yaml")
	out, stderr, code := podmeta(t, "", "uninject", "-f", "testdata/commented.yaml")
	if code != 0 || out != string(input) {
		t.Errorf("exit %d, output differs:\n%s", code, out)
	}
	if !strings.Contains(stderr, "deployment/api: no podmeta status record; unchanged") {
		t.Errorf("stderr: %q", stderr)
	}
}

// A record is a claim, not proof: what it claims but the author wrote stays.
func TestUninjectKeepsWhatIsNotPodmetas(t *testing.T) {
	out, stderr, code := podmeta(t, "", "uninject", "-f", "testdata/forged-record.yaml")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	input, _ := os.ReadFile("testdata/forged-record.yaml")
	// Only the two annotations go; everything else is the author's, as written.
	var want []string
	for _, line := range strings.Split(string(input), "\n") {
		switch {
		case strings.Contains(line, "podmeta.io/status"), strings.Contains(line, "podmeta.io/injected"):
		case line == "  annotations:":
			want = append(want, "  annotations: {}") // the author's, so it stays
		default:
			want = append(want, line)
		}
	}
	if out != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", out, strings.Join(want, "\n"))
	}
	for _, w := range []string{
		`kept env POD_NAME of container "app": it differs from what podmeta adds (at valueFrom)`,
		`kept the podmeta mount of container "app"`,
		"kept volume podmeta",
		"kept container podmeta-ambassador",
		`kept the ephemeral-storage request of container "app": 1Gi is not the recorded 64Mi`,
	} {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, stderr)
		}
	}

	// An injected value changed after injection is the author's now.
	injected, _, _ := podmeta(t, "", "inject", "-f", "testdata/commented.yaml")
	edited := strings.Replace(injected, "fieldPath: status.podIP", "fieldPath: status.hostIP", 1)
	out, stderr, _ = podmeta(t, edited, "uninject", "-f", "-")
	if !strings.Contains(out, "- name: POD_IP") || !strings.Contains(stderr, `kept env POD_IP of container "api"`) {
		t.Errorf("an edited env var was removed:\n%s\n%s", out, stderr)
	}
}
