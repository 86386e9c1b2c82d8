package test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// The chart's security options (security issue 16): the NetworkPolicy and client
// authentication of the apiserver. Their goldens live in testdata/chart-security, so
// that TestChartGolden's cases stay its own; `make chart-golden` (-run TestChartGolden
// -update-chart) rewrites both.
var chartSecurityCases = []chartCase{
	{"network-policy-client-auth", "podmeta", "podmeta-system", []string{
		"networkPolicy.enabled=true",
		"networkPolicy.webhook.from[0].ipBlock.cidr=10.0.0.0/24",
		"networkPolicy.webhook.from[1].ipBlock.cidr=192.168.10.5/32",
		"networkPolicy.metrics.from[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
		"serviceMonitor.enabled=true",
		"webhook.clientAuth.enabled=true", "webhook.clientAuth.caSecretName=apiserver-client-ca",
	}},
}

func TestChartGoldenSecurity(t *testing.T) {
	dir := filepath.Join("testdata", "chart-security")
	for _, c := range chartSecurityCases {
		t.Run(c.name, func(t *testing.T) {
			out, _ := render(t, c.release, c.namespace, c.values...)
			file := filepath.Join(dir, c.name+".yaml")
			got := fmt.Sprintf("# helm template %s charts/podmeta -n %s%s\n# Regenerate: go test ./test -run TestChartGolden -update-chart\n",
				c.release, c.namespace, setFlags(c.values)) + out
			if *updateChart {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (run with -update-chart to create it)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("%s is stale (-want +got); review and run with -update-chart:\n%s", file, diff)
			}
		})
	}
}

func decode[T any](t *testing.T, u *unstructured.Unstructured) *T {
	t.Helper()
	var out T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

// The NetworkPolicy admits only the given peers to the webhook port, and the metrics
// port only with a ServiceMonitor or metrics peers; it refuses to render without
// webhook peers (which would block every admission).
func TestChartNetworkPolicy(t *testing.T) {
	policy := func(values ...string) *networkingv1.NetworkPolicy {
		_, objs := render(t, "podmeta", "podmeta-system", values...)
		for _, o := range objs {
			if o.GetKind() == "NetworkPolicy" {
				return decode[networkingv1.NetworkPolicy](t, o)
			}
		}
		return nil
	}
	if p := policy(); p != nil {
		t.Error("a NetworkPolicy by default")
	}
	p := policy(chartSecurityCases[0].values...)
	if p == nil || len(p.Spec.Ingress) != 2 {
		t.Fatalf("policy %+v: want two ingress rules", p)
	}
	if r := p.Spec.Ingress[0]; r.Ports[0].Port.IntValue() != 9443 || len(r.From) != 2 || r.From[0].IPBlock.CIDR != "10.0.0.0/24" {
		t.Errorf("webhook rule %+v", r)
	}
	if r := p.Spec.Ingress[1]; r.Ports[0].Port.IntValue() != 8080 || len(r.From) != 1 || r.From[0].NamespaceSelector == nil {
		t.Errorf("metrics rule %+v", r)
	}
	if !slices.Equal(p.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) {
		t.Errorf("policyTypes %v: want Ingress only (podmeta calls the apiserver)", p.Spec.PolicyTypes)
	}
	// The pod selector selects the webhook pods.
	_, objs := render(t, "podmeta", "podmeta-system", chartSecurityCases[0].values...)
	var dep *appsv1.Deployment
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			dep = decode[appsv1.Deployment](t, o)
		}
	}
	for k, v := range p.Spec.PodSelector.MatchLabels {
		if dep.Spec.Template.Labels[k] != v {
			t.Errorf("podSelector %s=%s does not select the webhook pods %v", k, v, dep.Spec.Template.Labels)
		}
	}
	// Without a ServiceMonitor or metrics peers the metrics port stays closed.
	p = policy("networkPolicy.enabled=true", "networkPolicy.webhook.from[0].ipBlock.cidr=10.0.0.0/24", "webhook.port=10250")
	if len(p.Spec.Ingress) != 1 || p.Spec.Ingress[0].Ports[0].Port.IntValue() != 10250 {
		t.Errorf("rules %+v: want only the webhook port (10250)", p.Spec.Ingress)
	}
	if _, err := helmOffline(t).Template(t.Context(), "podmeta", "podmeta-system", "networkPolicy.enabled=true"); err == nil || !strings.Contains(err.Error(), "networkPolicy.webhook.from") {
		t.Errorf("no webhook peers: %v, want a failure naming networkPolicy.webhook.from", err)
	}
	if _, err := helmOffline(t).Template(t.Context(), "podmeta", "podmeta-system", "networkPolicy.enabled=true", "networkPolicy.webhook.from[0].ipBlock.nope=1"); err == nil {
		t.Error("the schema accepted an unknown ipBlock key")
	}
}

// webhook.clientAuth mounts the CA and passes --client-ca-file, and needs exactly one
// source for the CA.
func TestChartClientAuth(t *testing.T) {
	_, objs := render(t, "podmeta", "podmeta-system", "webhook.clientAuth.enabled=true", "webhook.clientAuth.caConfigMapName=apiserver-ca", "webhook.clientAuth.caKey=client-ca.pem")
	if args := containerArgs(t, objs); !slices.Contains(args, "--client-ca-file=/etc/podmeta/client-ca/client-ca.pem") {
		t.Errorf("args %v lack --client-ca-file", args)
	}
	var dep *appsv1.Deployment
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			dep = decode[appsv1.Deployment](t, o)
		}
	}
	i := slices.IndexFunc(dep.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == "client-ca" })
	if i < 0 || dep.Spec.Template.Spec.Volumes[i].ConfigMap == nil || dep.Spec.Template.Spec.Volumes[i].ConfigMap.Name != "apiserver-ca" {
		t.Errorf("no client-ca volume from the ConfigMap: %+v", dep.Spec.Template.Spec.Volumes)
	}
	for _, bad := range [][]string{
		{"webhook.clientAuth.enabled=true"},
		{"webhook.clientAuth.enabled=true", "webhook.clientAuth.caSecretName=a", "webhook.clientAuth.caConfigMapName=b"},
	} {
		if _, err := helmOffline(t).Template(t.Context(), "podmeta", "podmeta-system", bad...); err == nil || !strings.Contains(err.Error(), "exactly one of") {
			t.Errorf("%v: %v, want a failure", bad, err)
		}
	}
}

// RBAC per certificate mode: no verb the code does not use (no patch anywhere, no get
// of namespaces: the informer lists and watches), and write access to a webhook
// configuration only in selfManaged mode, to its own by name. docs/security.md
// recommends certManager or external mode where a stolen podmeta token must not be able
// to rewrite the webhook's rules.
func TestChartRBACPerCertMode(t *testing.T) {
	for _, mode := range []string{"selfManaged", "certManager", "external"} {
		_, objs := render(t, "podmeta", "podmeta-system", "certs.mode="+mode, "certs.external.secretName=s", "certs.external.caBundle=Q0EK",
			"ambassador.podReaderClusterRole.create=false")
		var rules []rbacv1.PolicyRule
		for _, o := range objs {
			switch o.GetKind() {
			case "ClusterRole":
				rules = append(rules, decode[rbacv1.ClusterRole](t, o).Rules...)
			case "Role":
				rules = append(rules, decode[rbacv1.Role](t, o).Rules...)
			}
		}
		var got []string
		for _, r := range rules {
			got = append(got, fmt.Sprintf("%s %v %v", strings.Join(r.Resources, ","), r.ResourceNames, r.Verbs))
		}
		want := []string{"namespaces [] [list watch]", "events [] [create patch]"}
		if mode == "selfManaged" {
			want = append(want, "mutatingwebhookconfigurations [podmeta] [get update]", "validatingwebhookconfigurations [podmeta-workloads] [get update]", "secrets [podmeta-webhook-tls] [get update]")
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: rules (-want +got):\n%s", mode, diff)
		}
	}
}
