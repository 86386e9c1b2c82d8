package policy

import (
	"encoding/json"
	"flag"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/internal/golden"
	"github.com/podmeta/podmeta/webhook"
)

// A golden input of the engine (webhook/testdata/NAME.yaml): an optional Namespace, a
// Pod, and an optional "# config: FLAGS" line.
type goldenCase struct {
	name  string
	flags []string
	ns    *corev1.Namespace
	pod   *corev1.Pod
	raw   []byte // the pod's JSON as written
}

func readGoldens(t *testing.T) []goldenCase {
	t.Helper()
	inputs, err := golden.Inputs("../webhook/testdata")
	if err != nil {
		t.Fatal(err)
	}
	var out []goldenCase
	for _, in := range inputs {
		out = append(out, readGolden(t, in))
	}
	if len(out) < 25 {
		t.Fatalf("only %d golden inputs found", len(out))
	}
	return out
}

func readGolden(t *testing.T, path string) goldenCase {
	t.Helper()
	in, err := golden.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	c := goldenCase{name: strings.TrimSuffix(filepath.Base(path), ".yaml"), flags: in.Flags, ns: in.Namespace, raw: in.Pod}
	if c.pod, err = in.TypedPod(); err != nil {
		t.Fatal(err)
	}
	if c.ns == nil {
		ns := c.pod.Namespace
		if ns == "" {
			ns = "default"
		}
		c.ns = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}
	}
	if c.pod.Namespace == "" {
		c.pod.Namespace = c.ns.Name
	}
	// An opted-in namespace, as the apiserver labels it.
	if c.ns.Labels == nil {
		c.ns.Labels = map[string]string{}
	}
	c.ns.Labels["kubernetes.io/metadata.name"] = c.ns.Name
	if _, ok := c.ns.Labels[webhook.LabelInject]; !ok {
		c.ns.Labels[webhook.LabelInject] = "enabled"
	}
	return c
}

// config is the engine's test configuration for a case's flags.
func config(t *testing.T, flags []string) webhook.Config {
	t.Helper()
	cfg := webhook.DefaultConfig()
	cfg.AmbassadorImage = "registry.example.com/podmeta/ambassador:test"
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	cfg.AddFlags(fs)
	if err := fs.Parse(flags); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// admitted is the pod as the webhook and the policies see it: after the apiserver's
// ServiceAccount admission plugin, which adds the token volume (and mounts) unless the
// pod opts out of automounting.
func admitted(p *corev1.Pod) *corev1.Pod {
	p = p.DeepCopy()
	if p.Spec.AutomountServiceAccountToken != nil && !*p.Spec.AutomountServiceAccountToken {
		return p
	}
	p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "kube-api-access-abcde", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}})
	return p
}

// viaWebhook is the engine's result for the pod: the injected pod, or the denial.
func viaWebhook(t *testing.T, cfg webhook.Config, c goldenCase, p *corev1.Pod) (*corev1.Pod, *webhook.Plan, error) {
	t.Helper()
	// The webhook's matchConditions (config/webhook/manifests.yaml): mirror pods and pods
	// annotated podmeta.io/inject: "false" are never sent to it.
	if p.Annotations[webhook.AnnotationMirrorPod] != "" ||
		(p.Annotations != nil && strings.ToLower(strings.TrimSpace(p.Annotations[webhook.AnnotationInject])) == "false") {
		return p.DeepCopy(), nil, nil
	}
	in, err := webhook.NewInjector(cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := in.PlanPod(raw, c.ns.Name, c.ns.Annotations)
	if err != nil {
		return nil, nil, err
	}
	out := p.DeepCopy()
	plan.Apply(out)
	return out, plan, nil
}
