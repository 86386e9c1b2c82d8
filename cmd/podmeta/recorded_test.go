package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/webhook"
)

// recordedList is what `kubectl get pods -o json` prints for the pods a real apiserver
// sent the webhook (webhook/testdata/admission-reviews: managedFields, defaults and the
// service-account volume included): a List of them. The first asks for the ambassador.
func recordedList(t *testing.T) []byte {
	t.Helper()
	var items []any
	for i, name := range []string{"typical", "initsidecar", "large"} {
		b, err := os.ReadFile("../../webhook/testdata/admission-reviews/" + name + ".json")
		if err != nil {
			t.Fatal(err)
		}
		var review struct {
			Request struct {
				Object map[string]any `json:"object"`
			} `json:"request"`
		}
		if err := json.Unmarshal(b, &review); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			review.Request.Object["metadata"].(map[string]any)["annotations"].(map[string]any)[webhook.AnnotationAmbassador] = "true"
		}
		items = append(items, review.Request.Object)
	}
	list, err := json.MarshalIndent(map[string]any{"apiVersion": "v1", "kind": "List", "metadata": map[string]any{"resourceVersion": ""}, "items": items}, "", "    ")
	if err != nil {
		t.Fatal(err)
	}
	return append(list, '\n')
}

// TestRecordedApiserverPods runs what kubectl prints for real pods through the CLI, as
// JSON and as YAML: inject changes each, explain explains each, and uninject gives the
// input back byte for byte.
func TestRecordedApiserverPods(t *testing.T) {
	js := recordedList(t)
	y, err := yaml.JSONToYAML(js) // kubectl -o yaml: sorted keys, two spaces
	if err != nil {
		t.Fatal(err)
	}
	for format, input := range map[string]string{"json": string(js), "yaml": string(y)} {
		t.Run(format, func(t *testing.T) {
			out, stderr, code := podmeta(t, input, "inject", "-f", "-")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			for _, want := range []string{"pod/web-7d9f8c6b5-: env ×", "ambassador", "pod/worker-84c7d9f6b-: env ×", "pod/bigenv-5f6d7c8b9-: "} {
				if !strings.Contains(stderr, want) {
					t.Errorf("summary lacks %q:\n%s", want, stderr)
				}
			}
			if strings.Count(out, webhook.AnnotationInjected) != 3 {
				t.Errorf("not every pod was injected")
			}
			if format == "json" && !json.Valid([]byte(out)) {
				t.Errorf("JSON in, not JSON out")
			}
			if format == "yaml" {
				onlyAdded(t, input, out)
			}
			back, stderr, code := podmeta(t, out, "uninject", "-f", "-")
			if code != 0 || back != input {
				t.Errorf("inject | uninject differs from the input (exit %d): %s", code, stderr)
			}
			explained, _, code := podmeta(t, input, "explain", "-f", "-")
			if code != 0 || strings.Count(explained, "WHAT") != 3 {
				t.Errorf("explain: exit %d\n%s", code, explained)
			}
		})
	}
}

// TestUninjectAfterApiserverDefaults: a pod read back from the apiserver has fields the
// apiserver defaulted on what podmeta added (kubectl get prints them); they do not make
// podmeta's additions the author's.
func TestUninjectAfterApiserverDefaults(t *testing.T) {
	input := recordedList(t)
	out, stderr, code := podmeta(t, string(input), "inject", "-f", "-", "--quiet")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var list map[string]any
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	pod := list["items"].([]any)[0].(map[string]any)
	spec := pod["spec"].(map[string]any)
	defaulted := 0
	for _, c := range spec["initContainers"].([]any) {
		c := c.(map[string]any)
		if c["name"] != webhook.AmbassadorContainerName {
			continue
		}
		c["terminationMessagePath"] = "/dev/termination-log"
		for _, probe := range []string{"livenessProbe", "startupProbe"} {
			p := c[probe].(map[string]any)
			p["timeoutSeconds"], p["successThreshold"] = 1, 1
			p["httpGet"].(map[string]any)["scheme"] = "HTTP"
		}
		defaulted++
	}
	for _, v := range spec["volumes"].([]any) {
		v := v.(map[string]any)
		switch v["name"] {
		case webhook.VolumeName:
			v["downwardAPI"].(map[string]any)["defaultMode"] = 420
			defaulted++
		case webhook.AmbassadorTokenVolumeName:
			v["projected"].(map[string]any)["defaultMode"] = 420
			defaulted++
		}
	}
	if defaulted != 3 {
		t.Fatalf("found %d of podmeta's additions to default, want 3", defaulted)
	}
	stored, _ := json.MarshalIndent(list, "", "    ")
	back, stderr, code := podmeta(t, string(stored), "uninject", "-f", "-")
	if code != 0 || strings.Contains(stderr, "kept") {
		t.Fatalf("exit %d; kept some of podmeta's additions:\n%s", code, stderr)
	}
	var a, b any
	json.Unmarshal(input, &a)
	json.Unmarshal([]byte(back), &b)
	if ja, _ := json.Marshal(a); !bytes.Equal(ja, mustJSON(b)) {
		t.Errorf("uninject after defaults is not the input:\n%s", back)
	}
}

func mustJSON(v any) []byte { b, _ := json.Marshal(v); return b }
