package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/podmeta/podmeta/webhook"
)

// TestWebhookArgsParse takes the args the webhook gives the ambassador container, for
// every mode and for the edge ports, and parses them with the ambassador's own flag set:
// a flag the webhook writes that the ambassador does not define (or renamed) fails here
// rather than as a crash-looping sidecar in every pod. The webhook package is imported by
// this test only, never by the binary.
func TestWebhookArgsParse(t *testing.T) {
	for _, allow := range []bool{false, true} {
		cfg := webhook.DefaultConfig()
		cfg.AmbassadorAllowPrivilegedPaths = allow
		in, err := webhook.NewInjector(cfg, true)
		if err != nil {
			t.Fatal(err)
		}
		testWebhookArgsParse(t, in, allow)
	}
}

func testWebhookArgsParse(t *testing.T, in *webhook.Injector, allow bool) {
	for _, mode := range []string{webhook.ModeReadOnly, webhook.ModeReadWrite} {
		for _, port := range []int{1024, webhook.DefaultAmbassadorPort, 65535} {
			t.Run(fmt.Sprintf("%s/%d/allow-privileged-paths=%v", mode, port, allow), func(t *testing.T) {
				c := ambassadorFromWebhook(t, in, mode, port)
				got := DefaultConfig()
				fs := flag.NewFlagSet("ambassador", flag.ContinueOnError)
				got.BindFlags(fs)
				if err := fs.Parse(c.Args); err != nil {
					t.Fatalf("the ambassador rejects the webhook's args %q: %v", c.Args, err)
				}
				if fs.NArg() != 0 {
					t.Fatalf("args %q leave positional arguments %q", c.Args, fs.Args())
				}
				got.completeUpstream(func(k string) string {
					return map[string]string{"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}[k]
				})
				if err := got.Validate(); err != nil {
					t.Fatalf("args %q: %v", c.Args, err)
				}
				if got.Port != port || got.Mode != mode || got.AllowPrivilegedPaths != allow {
					t.Errorf("args %q give port %d mode %q allow-privileged-paths %v, want %d %q %v",
						c.Args, got.Port, got.Mode, got.AllowPrivilegedPaths, port, mode, allow)
				}
				if probe := c.LivenessProbe.HTTPGet.Port.IntValue(); got.HealthPort != probe {
					t.Errorf("args %q give health port %d, the probes check %d", c.Args, got.HealthPort, probe)
				}
				mount := c.VolumeMounts[0].MountPath
				if got.TokenFile != mount+"/token" || got.CAFile != mount+"/ca.crt" {
					t.Errorf("args %q read %s and %s, outside the token volume mounted at %s", c.Args, got.TokenFile, got.CAFile, mount)
				}
			})
		}
	}
}

// ambassadorFromWebhook plans a pod that asks for the ambassador on port and mode, and
// returns the container the webhook adds.
func ambassadorFromWebhook(t *testing.T, in *webhook.Injector, mode string, port int) corev1.Container {
	t.Helper()
	raw, _ := json.Marshal(map[string]any{
		"metadata": map[string]any{"name": "p", "annotations": map[string]string{
			webhook.AnnotationAmbassador:     "true",
			webhook.AnnotationAmbassadorMode: mode,
			webhook.AnnotationAmbassadorPort: strconv.Itoa(port),
		}},
		"spec": map[string]any{"containers": []any{map[string]any{"name": "app"}}},
	})
	plan, err := in.PlanPod(raw, "ns", nil)
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := json.Unmarshal(raw, &pod); err != nil {
		t.Fatal(err)
	}
	plan.Apply(&pod)
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			if c.Name == webhook.AmbassadorContainerName {
				return c
			}
		}
	}
	t.Fatalf("the webhook added no %s container", webhook.AmbassadorContainerName)
	return corev1.Container{}
}
