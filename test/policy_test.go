package test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/internal/golden"
	"github.com/podmeta/podmeta/policy"
	"github.com/podmeta/podmeta/test/harness"
	"github.com/podmeta/podmeta/webhook"
)

// policyLabel selects the namespaces of policy mode in these tests. The rendered
// policies select podmeta.io/inject=enabled, as the webhook does; here the webhook
// serves the other tests on that label, so the policies are bound to this one instead,
// and a namespace is injected by one mode only.
const policyLabel = "policy-test.podmeta.io/inject"

// installPolicies renders the policies from the flags the test webhook runs with,
// selects policyLabel instead of podmeta.io/inject, creates them, and waits until the
// apiserver enforces both.
func installPolicies(t *testing.T) *policy.Policies {
	t.Helper()
	ctx := t.Context()
	cfg := webhook.DefaultConfig()
	fs := flag.NewFlagSet("policy", flag.ContinueOnError)
	cfg.AddFlags(fs)
	for _, f := range podmetaFlags { // the injection flags among the test webhook's
		name, _, _ := strings.Cut(strings.TrimLeft(f, "-"), "=")
		if fs.Lookup(name) != nil {
			if err := fs.Parse([]string{f}); err != nil {
				t.Fatal(err)
			}
		}
	}
	pols, err := policy.Render(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*admissionregistrationv1.MatchResources{pols.Mutating.Spec.MatchConstraints, pols.Validating.Spec.MatchConstraints} {
		if m.NamespaceSelector.MatchExpressions[0].Key != webhook.LabelInject {
			t.Fatalf("the policies' namespace selector starts with %+v", m.NamespaceSelector.MatchExpressions[0])
		}
		m.NamespaceSelector.MatchExpressions[0].Key = policyLabel
	}
	for _, o := range pols.Objects() {
		if err := cp.Client.Create(ctx, o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
	api := cp.Clientset.AdmissionregistrationV1()
	t.Cleanup(func() {
		bg := context.Background()
		_ = api.MutatingAdmissionPolicyBindings().Delete(bg, pols.MutatingBinding.Name, metav1.DeleteOptions{})
		_ = api.MutatingAdmissionPolicies().Delete(bg, pols.Mutating.Name, metav1.DeleteOptions{})
		_ = api.ValidatingAdmissionPolicyBindings().Delete(bg, pols.ValidatingBinding.Name, metav1.DeleteOptions{})
		_ = api.ValidatingAdmissionPolicies().Delete(bg, pols.Validating.Name, metav1.DeleteOptions{})
	})
	ns := namespace(t, map[string]string{policyLabel: "enabled"}, nil)
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	eventually(t, 30*time.Second, func(ctx context.Context) string {
		got, err := cp.Clientset.CoreV1().Pods(ns).Create(ctx, pod("probe", nil), dry)
		if err != nil {
			return err.Error()
		}
		if !injected(got) {
			return "the MutatingAdmissionPolicy does not act yet"
		}
		_, err = cp.Clientset.CoreV1().Pods(ns).Create(ctx, pod("probe", map[string]string{webhook.AnnotationEnv: "NOPE"}), dry)
		if err == nil {
			return "the ValidatingAdmissionPolicy does not act yet"
		}
		return ""
	})
	return pols
}

// TestPolicyDifferential creates every golden input of the engine that the apiserver
// accepts twice on one apiserver: in a namespace podmeta webhook injects, and in one
// the rendered policies inject. The stored pods must be identical apart from what the
// apiserver generates and the documented differences (docs/policy.md); a pod the
// webhook denies must be denied by the policy, naming the same annotations and values.
func TestPolicyDifferential(t *testing.T) {
	installPolicies(t)
	inputs, err := golden.Inputs(filepath.Join(harness.Root(), "webhook", "testdata"))
	if err != nil {
		t.Fatal(err)
	}
	compared, denied := 0, 0
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			c := readInput(t, in)
			switch {
			case len(c.flags) > 0:
				t.Skipf("needs operator flags %v; the test webhook runs with its own", c.flags)
			case len(c.pod.Spec.Containers) == 0:
				t.Skip("the apiserver cannot create a pod without containers")
			case len(c.pod.Spec.EphemeralContainers) > 0:
				t.Skip("the apiserver cannot create a pod with ephemeral containers")
			case slices.Contains(webhook.DefaultExcludedNamespaces, c.pod.Namespace):
				t.Skip("an excluded namespace: selected by neither mode")
			}
			ctx := t.Context()
			wns := namespace(t, nil, c.nsAnn)
			pns := namespace(t, map[string]string{policyLabel: "enabled"}, c.nsAnn)
			if sa := c.pod.Spec.ServiceAccountName; sa != "" && sa != "default" {
				for _, ns := range []string{wns, pns} {
					if _, err := cp.Clientset.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
						t.Fatal(err)
					}
				}
			}
			create := func(ns string) (*corev1.Pod, error) {
				p := c.pod.DeepCopy()
				p.Namespace = ""
				return cp.Clientset.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
			}
			want, werr := create(wns)
			got, perr := create(pns)
			if werr != nil {
				if perr == nil {
					t.Fatalf("the webhook denies the pod (%v); the policies admit it", werr)
				}
				if !strings.Contains(werr.Error(), "podmeta.io/") {
					t.Skipf("the apiserver cannot create it: %v", werr)
				}
				if !apierrors.IsForbidden(perr) || strings.Contains(perr.Error(), "\n") {
					t.Errorf("the policy's denial is not one line with reason Forbidden: %v", perr)
				}
				for _, head := range annotationHeads(werr.Error()) {
					if !strings.Contains(perr.Error(), head) {
						t.Errorf("the webhook denies with %q; the policy's message does not name it:\n%v", head, perr)
					}
				}
				denied++
				return
			}
			if perr != nil {
				t.Fatalf("the policies deny a pod the webhook admits: %v", perr)
			}
			if err := policy.ExpectedRecord(want, c.pod); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(comparable(t, want), comparable(t, got)); diff != "" {
				t.Errorf("policy mode stores a different pod (-webhook +policy):\n%s", diff)
			}
			compared++
		})
	}
	t.Logf("%d pods compared, %d denials compared", compared, denied)
	if compared < 30 || denied < 10 {
		t.Errorf("only %d pods and %d denials compared", compared, denied)
	}
}

// annotationHeads are the "SOURCE annotation KEY=VALUE" parts of the webhook's denial.
func annotationHeads(msg string) []string {
	return regexp.MustCompile(`(pod|namespace) annotation podmeta\.io/[a-z-]+="(?:[^"\\]|\\.)*"`).FindAllString(msg, -1)
}

var apiAccess = regexp.MustCompile(`kube-api-access-[a-z0-9]{5}`)

// comparable is the pod without what the apiserver generates: its namespace, uid,
// timestamps, versions, managed fields, a generated name's suffix, and the token
// volume's random suffix.
func comparable(t *testing.T, p *corev1.Pod) map[string]any {
	t.Helper()
	p = p.DeepCopy()
	p.Namespace, p.UID, p.ResourceVersion, p.Generation = "", "", "", 0
	p.CreationTimestamp = metav1.Time{}
	if p.GenerateName != "" && strings.HasPrefix(p.Name, p.GenerateName) {
		p.Name = p.GenerateName + "*" // the generated suffix
	}
	p.ManagedFields = nil
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	b = apiAccess.ReplaceAll(b, []byte("kube-api-access-xxxxx"))
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

type input struct {
	flags []string
	nsAnn map[string]string
	pod   *corev1.Pod
}

// readInput reads a golden input: an optional Namespace (its annotations), a Pod, an
// optional "# config: FLAGS" line.
func readInput(t *testing.T, path string) input {
	t.Helper()
	in, err := golden.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	c := input{flags: in.Flags}
	if in.Namespace != nil {
		c.nsAnn = in.Namespace.Annotations
	}
	if c.pod, err = in.TypedPod(); err != nil {
		t.Fatal(err)
	}
	return c
}

// In policy mode too, a container a later mutator adds is injected: the apiserver
// reinvokes the MutatingAdmissionPolicy (reinvocationPolicy IfNeeded).
func TestPolicyReinvocation(t *testing.T) {
	installPolicies(t)
	ns := namespace(t, map[string]string{policyLabel: "enabled"}, nil)
	addContainerWebhook(t, ns, "zz-policy-add-container")

	var got *corev1.Pod
	eventually(t, 10*time.Second, func(context.Context) string {
		got = create(t, ns, pod(fmt.Sprintf("reinvoked-%d", time.Now().UnixNano()), map[string]string{webhook.AnnotationEnv: "POD_NAME,NODE_NAME"}))
		if len(got.Spec.Containers) < 2 {
			return "no container added yet"
		}
		return ""
	})
	for _, c := range got.Spec.Containers {
		if names := envNames(c); !slices.Equal(names, []string{"POD_NAME", "NODE_NAME"}) {
			t.Errorf("container %s env = %v, want [POD_NAME NODE_NAME] once", c.Name, names)
		}
		if n := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == webhook.VolumeName }); n < 0 {
			t.Errorf("container %s does not mount the metadata volume", c.Name)
		}
	}
	i := slices.IndexFunc(got.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == webhook.VolumeName })
	if i < 0 || !slices.ContainsFunc(got.Spec.Volumes[i].DownwardAPI.Items, func(f corev1.DownwardAPIVolumeFile) bool { return f.Path == "containers/late/cpu_request_millicores" }) {
		t.Errorf("the metadata volume has no files for the late container")
	}
}

// The policies' opt-in is the webhook's: only selected namespaces, not a pod labelled
// podmeta.io/inject=disabled, not a mirror pod, not a pod annotated inject "false".
func TestPolicyOptIn(t *testing.T) {
	installPolicies(t)
	on := namespace(t, map[string]string{policyLabel: "enabled"}, nil)
	off := namespace(t, map[string]string{"unrelated": "yes"}, nil)
	disabled := pod("label-disabled", nil)
	disabled.Labels = map[string]string{webhook.LabelInject: "disabled"}
	mirror := pod("mirror", map[string]string{webhook.AnnotationMirrorPod: "x"})
	mirror.Spec.NodeName = "node-1" // the apiserver requires it of a mirror pod
	for _, c := range []struct {
		ns   string
		p    *corev1.Pod
		want bool
	}{
		{on, pod("plain", nil), true},
		{off, pod("plain", nil), false},
		{on, disabled, false},
		{on, mirror, false},
		{on, pod("annotated-false", map[string]string{webhook.AnnotationInject: " False "}), false},
		{on, pod("invalid-but-opted-out", map[string]string{webhook.AnnotationInject: "false", webhook.AnnotationEnv: "NOPE"}), false},
	} {
		got := create(t, c.ns, c.p)
		if injected(got) != c.want || (len(got.Spec.Containers[0].Env) > 0) != c.want {
			t.Errorf("%s/%s: injected %v, want %v", c.ns, c.p.Name, injected(got), c.want)
		}
	}
}

// The largest reference pod of podmeta policy --costs (200 containers, every env key,
// the ambassador) is admitted and injected in policy mode, within the apiserver's CEL
// limits, exactly as the webhook injects it.
func TestPolicyLargePod(t *testing.T) {
	installPolicies(t)
	refs := policy.ReferencePods()
	large := refs[len(refs)-1].Pod.DeepCopy()
	if len(large.Spec.Containers) != 200 {
		t.Fatalf("the largest reference pod has %d containers, want 200", len(large.Spec.Containers))
	}
	large.Namespace, large.Spec.Volumes = "", nil // the ServiceAccount plugin adds the token volume
	input := large.DeepCopy()
	want := create(t, namespace(t, nil, nil), large.DeepCopy())
	got := create(t, namespace(t, map[string]string{policyLabel: "enabled"}, nil), large)
	if !injected(got) || len(got.Spec.InitContainers) != 1 || got.Spec.InitContainers[0].Name != webhook.AmbassadorContainerName {
		t.Fatalf("the 200-container pod is not injected in policy mode (record %q, %d init containers)", got.Annotations[webhook.AnnotationStatus], len(got.Spec.InitContainers))
	}
	for _, c := range got.Spec.Containers {
		if len(c.Env) != 17 || !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == webhook.VolumeName }) {
			t.Fatalf("container %s: %d env vars (want every key, PODMETA_API_URL and its own: 17), mounts %v", c.Name, len(c.Env), c.VolumeMounts)
		}
	}
	if err := policy.ExpectedRecord(want, input); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(comparable(t, want), comparable(t, got)); diff != "" {
		t.Errorf("policy mode stores a different 200-container pod (-webhook +policy):\n%.4000s", diff)
	}
}
