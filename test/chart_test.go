package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/test/harness"
	"github.com/podmeta/podmeta/webhook"
)

var updateChart = flag.Bool("update-chart", false, "rewrite the chart's golden files under test/testdata/chart")

// chartCase is one combination of values the goldens, lint and the binary checks cover.
type chartCase struct {
	name, release, namespace string
	values                   []string
}

// chartCases are the main value combinations: each certificate mode, everything
// optional switched on, and a minimal single-replica install.
var chartCases = []chartCase{
	{"default", "podmeta", "podmeta-system", nil},
	{"cert-manager", "podmeta", "podmeta-system", []string{"certs.mode=certManager"}},
	{"cert-manager-own-issuer", "podmeta", "podmeta-system", []string{
		"certs.mode=certManager", "certs.certManager.issuerRef.name=corp-ca",
		"certs.certManager.issuerRef.kind=ClusterIssuer", "certs.certManager.issuerRef.group=cert-manager.io",
	}},
	{"external", "webhooks", "infra", []string{
		"certs.mode=external", "certs.external.secretName=podmeta-tls", "certs.external.caBundle=Q0EK",
	}},
	{"everything", "podmeta", "podmeta-system", []string{
		"replicaCount=3", "priorityClassName=system-cluster-critical", "podAntiAffinity=hard",
		"webhook.failurePolicy=Fail", "webhook.port=10250", "webhook.timeoutSeconds=3",
		"webhook.reinvocationPolicy=Never", "webhook.excludedNamespaces={ci,legacy}",
		"webhook.namespaceSelectorExpressions[0].key=team", "webhook.namespaceSelectorExpressions[0].operator=In",
		"webhook.namespaceSelectorExpressions[0].values={payments,search}",
		"defaults.env=all", "defaults.envPrefix=K8S_", "defaults.ambassador=true", "defaults.ambassadorMode=read-write",
		"defaults.ephemeralStorageLimit=1Gi", "ambassador.nativeSidecar=never",
		"ambassador.podReaderClusterRole.create=true", "certs.selfManaged.extraSANs={podmeta.example.com}",
		"serviceMonitor.enabled=true", "prometheusRule.enabled=true", "grafanaDashboard.enabled=true",
		"imagePullSecrets[0].name=regcred", "logLevel=debug", "extraArgs={--max-request-bytes=3145728}",
	}},
	{"minimal", "podmeta", "podmeta-system", []string{
		"replicaCount=1", "podAntiAffinity=none", "topologySpreadConstraints=null",
		"metrics.enabled=false", "rbac.create=true", "serviceAccount.create=false", "serviceAccount.name=existing",
	}},
}

var offlineHelm = sync.OnceValues(func() (*harness.Helm, error) {
	return harness.OfflineHelm(filepath.Join(cp.Dir, "helm-offline"))
})

func helmOffline(t *testing.T) *harness.Helm {
	t.Helper()
	h, err := offlineHelm()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// render runs helm template and decodes every object.
func render(t *testing.T, release, namespace string, values ...string) (string, []*unstructured.Unstructured) {
	t.Helper()
	out, err := helmOffline(t).Template(t.Context(), release, namespace, values...)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeObjects([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	return out, objs
}

func decodeObjects(b []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	var objs []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return objs, nil
		} else if err != nil {
			return nil, err
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}

// find returns the one object of kind (and name, when given), converted to out.
func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string, out any) *unstructured.Unstructured {
	t.Helper()
	var found []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind && (name == "" || o.GetName() == name) {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one %s %q, found %d", kind, name, len(found))
	}
	if out != nil {
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(found[0].Object, out); err != nil {
			t.Fatalf("%s %s: %v", kind, name, err)
		}
	}
	return found[0]
}

func containerArgs(t *testing.T, objs []*unstructured.Unstructured) []string {
	t.Helper()
	var d appsv1.Deployment
	find(t, objs, "Deployment", "", &d)
	return d.Spec.Template.Spec.Containers[0].Args
}

// chartConfig is the configuration podmeta webhook runs with in objs's Deployment: the
// binary's defaults, set by its args that are webhook flags.
func chartConfig(t *testing.T, objs []*unstructured.Unstructured) webhook.Config {
	t.Helper()
	cfg := webhook.DefaultConfig()
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	cfg.AddFlags(fs)
	for _, arg := range containerArgs(t, objs) {
		name, value, _ := strings.Cut(strings.TrimPrefix(arg, "--"), "=")
		if fs.Lookup(name) != nil {
			if err := fs.Set(name, value); err != nil {
				t.Fatalf("%s: %v", arg, err)
			}
		}
	}
	return cfg
}

// releaseObjects are the objects helm installed as release in ns.
func releaseObjects(ctx context.Context, t *testing.T, h *harness.Helm, release, ns string) []*unstructured.Unstructured {
	t.Helper()
	manifest, err := h.Run(ctx, "get", "manifest", release, "--namespace", ns)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeObjects([]byte(manifest))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// 1. helm lint for every case, strict.
func TestChartLint(t *testing.T) {
	for _, c := range chartCases {
		t.Run(c.name, func(t *testing.T) {
			args := []string{"lint", "--strict", harness.ChartDir(), "--namespace", c.namespace}
			for _, v := range c.values {
				args = append(args, "--set", v)
			}
			if out, err := helmOffline(t).Run(t.Context(), args...); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		})
	}
}

// 1. values.schema.json rejects bad values, naming the value and what is wrong.
func TestChartSchemaRejectsBadValues(t *testing.T) {
	for _, c := range []struct {
		set  []string
		want string // in helm's error
	}{
		{[]string{"certs.mode=vault"}, `at '/certs/mode': value must be one of 'selfManaged', 'certManager', 'external'`},
		{[]string{"certs.mode=external"}, `at '/certs/external/secretName': minLength`},
		{[]string{"defaults.env=POD_IPZ"}, `at '/defaults/env': 'POD_IPZ' does not match pattern`},
		{[]string{"defaults.ephemeralStorageRequest=lots"}, `at '/defaults/ephemeralStorageRequest': 'lots' does not match`},
		{[]string{"defaults.ambassadorMode=admin"}, `at '/defaults/ambassadorMode': value must be one of 'read-only', 'read-write'`},
		{[]string{"defaults.ambassadorPort=80"}, `at '/defaults/ambassadorPort': minimum: got 80, want 1,024`},
		{[]string{"defaults.volumePath=etc/podinfo"}, `at '/defaults/volumePath'`},
		{[]string{"webhook.failurePolicy=Retry"}, `at '/webhook/failurePolicy': value must be one of 'Ignore', 'Fail'`},
		{[]string{"webhook.timeoutSeconds=31"}, `at '/webhook/timeoutSeconds': maximum: got 31, want 30`},
		{[]string{"webhook.port=80"}, `at '/webhook/port'`},
		{[]string{"webhook.reinvocationPolicy=Always"}, `at '/webhook/reinvocationPolicy'`},
		{[]string{"webhook.excludedNamespaces={Kube_System}"}, `at '/webhook/excludedNamespaces/0'`},
		{[]string{"webhook.namespaceSelectorExpressions[0].key=team", "webhook.namespaceSelectorExpressions[0].operator=Equals"}, `at '/webhook/namespaceSelectorExpressions/0/operator'`},
		{[]string{"updateStrategy.rollingUpdate.maxUnavailable=1"}, `at '/updateStrategy/rollingUpdate/maxUnavailable': value must be one of 0, '0%'`},
		{[]string{"ambassador.nativeSidecar=yes"}, `at '/ambassador/nativeSidecar': value must be one of 'auto', 'always', 'never'`},
		{[]string{"ambassador.resources.requests.gpu=1"}, `at '/ambassador/resources/requests'`},
		{[]string{"ambassador.allowPrivilegedPaths=yes"}, `at '/ambassador/allowPrivilegedPaths': got string, want boolean`},
		{[]string{"webhook.maxPatchBytes=0"}, `at '/webhook/maxPatchBytes': minimum: got 0, want 1`},
		{[]string{"image.digest=latest"}, `at '/image/digest'`},
		{[]string{"logLevel=trace"}, `at '/logLevel'`},
		{[]string{"replicaCount=0"}, `at '/replicaCount': minimum: got 0, want 1`},
		{[]string{"webhok.port=9443"}, `additional properties 'webhok' not allowed`},
		// Cross-field checks the schema cannot express fail in the templates.
		{[]string{"terminationGracePeriodSeconds=30"}, `terminationGracePeriodSeconds (30) must exceed preStopSleepSeconds (15) + gracefulShutdownTimeout (20s)`},
		{[]string{"serviceMonitor.enabled=true", "metrics.enabled=false"}, `serviceMonitor.enabled needs metrics.enabled`},
	} {
		t.Run(strings.Join(c.set, ","), func(t *testing.T) {
			_, err := helmOffline(t).Template(t.Context(), "podmeta", "podmeta-system", c.set...)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error does not contain %q:\n%v", c.want, err)
			}
		})
	}
}

// 2. Golden snapshots of helm template; -update-chart rewrites them.
func TestChartGolden(t *testing.T) {
	dir := filepath.Join("testdata", "chart")
	seen := map[string]bool{}
	for _, c := range chartCases {
		t.Run(c.name, func(t *testing.T) {
			out, _ := render(t, c.release, c.namespace, c.values...)
			file := filepath.Join(dir, c.name+".yaml")
			seen[filepath.Base(file)] = true
			header := fmt.Sprintf("# helm template %s charts/podmeta -n %s%s\n# Regenerate: go test ./test -run TestChartGolden -update-chart\n",
				c.release, c.namespace, setFlags(c.values))
			got := header + out
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
	// A golden no case produces any more is stale too.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !seen[e.Name()] && !*updateChart {
			t.Errorf("%s: no chart case renders it; delete it", filepath.Join(dir, e.Name()))
		}
	}
}

func setFlags(values []string) string {
	var b strings.Builder
	for _, v := range values {
		b.WriteString(" --set " + v)
	}
	return b.String()
}

// The chart's webhook must not drift from config/webhook/manifests.yaml, the one the
// integration tests run behind: rendered as release "podmeta" in podmeta-system it is
// the same webhook; rendered elsewhere with extra terms, only those differ.
func TestChartWebhookMatchesConfig(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(harness.Root(), "config", "webhook", "manifests.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	config, err := decodeObjects(b)
	if err != nil {
		t.Fatal(err)
	}
	var want admissionregistrationv1.MutatingWebhookConfiguration
	find(t, config, "MutatingWebhookConfiguration", "podmeta", &want)
	var wantSvc corev1.Service
	find(t, config, "Service", "podmeta-webhook", &wantSvc)

	t.Run("documented install", func(t *testing.T) {
		_, objs := render(t, "podmeta", "podmeta-system")
		var got admissionregistrationv1.MutatingWebhookConfiguration
		find(t, objs, "MutatingWebhookConfiguration", "podmeta", &got)
		if diff := cmp.Diff(want.Webhooks, got.Webhooks); diff != "" {
			t.Errorf("chart webhook differs from config/webhook (-config +chart):\n%s", diff)
		}
		var svc corev1.Service
		find(t, objs, "Service", "podmeta-webhook", &svc)
		if diff := cmp.Diff(wantSvc.Spec.Ports, svc.Spec.Ports); diff != "" {
			t.Errorf("webhook Service ports differ (-config +chart):\n%s", diff)
		}
		// The config's Service selects by name only; the chart's pods carry that label.
		for k, v := range wantSvc.Spec.Selector {
			if svc.Spec.Selector[k] != v {
				t.Errorf("chart Service selector %v lacks config's %s=%s", svc.Spec.Selector, k, v)
			}
		}
	})
	t.Run("other namespace with extra terms", func(t *testing.T) {
		_, objs := render(t, "hooks", "infra", "webhook.excludedNamespaces={ci,legacy}",
			"webhook.namespaceSelectorExpressions[0].key=team", "webhook.namespaceSelectorExpressions[0].operator=Exists",
			"webhook.objectSelectorExpressions[0].key=tier", "webhook.objectSelectorExpressions[0].operator=DoesNotExist",
			"webhook.objectSelectorExpressions[1].key=team", "webhook.objectSelectorExpressions[1].operator=In", "webhook.objectSelectorExpressions[1].values={a,b}",
			"webhook.objectSelectorExpressions[2].key=legacy", "webhook.objectSelectorExpressions[2].operator=NotIn", "webhook.objectSelectorExpressions[2].values={yes}",
			"webhook.objectSelectorExpressions[3].key=app", "webhook.objectSelectorExpressions[3].operator=Exists")
		var got admissionregistrationv1.MutatingWebhookConfiguration
		find(t, objs, "MutatingWebhookConfiguration", "hooks-podmeta", &got)
		wh := got.Webhooks[0]
		ns := wh.NamespaceSelector.MatchExpressions
		if want := []string{"kube-system", "kube-public", "kube-node-lease", "infra", "ci", "legacy"}; !slices.Equal(ns[1].Values, want) {
			t.Errorf("excluded namespaces %v, want %v", ns[1].Values, want)
		}
		if len(ns) != 3 || ns[2].Key != "team" || len(wh.ObjectSelector.MatchExpressions) != 5 {
			t.Fatalf("extra selector terms missing: %+v %+v", wh.NamespaceSelector, wh.ObjectSelector)
		}
		// Workload validation sees only what the pods' webhook could serve: the same
		// extra namespace terms, and the extra object terms as --workload-pod-selector.
		var vwc admissionregistrationv1.ValidatingWebhookConfiguration
		find(t, objs, "ValidatingWebhookConfiguration", "hooks-podmeta-workloads", &vwc)
		if got := vwc.Webhooks[0].NamespaceSelector.MatchExpressions; len(got) != 2 || !reflect.DeepEqual(got[1], ns[2]) {
			t.Errorf("workload webhook's namespace selector %+v lacks the extra term %+v", got, ns[2])
		}
		extra, err := metav1.LabelSelectorAsSelector(&metav1.LabelSelector{MatchExpressions: wh.ObjectSelector.MatchExpressions[1:]})
		if err != nil {
			t.Fatal(err)
		}
		var podSelector string
		for _, arg := range containerArgs(t, objs) {
			if v, ok := strings.CutPrefix(arg, "--workload-pod-selector="); ok {
				podSelector = v
			}
		}
		if parsed, err := labels.Parse(podSelector); err != nil || parsed.String() != extra.String() {
			t.Errorf("--workload-pod-selector=%q (%v), want the objectSelector's extra terms %q", podSelector, err, extra)
		}
		// Undo exactly what the values changed; the rest must be config's.
		ns[1].Values = want.Webhooks[0].NamespaceSelector.MatchExpressions[1].Values
		wh.NamespaceSelector.MatchExpressions = ns[:2]
		wh.ObjectSelector.MatchExpressions = wh.ObjectSelector.MatchExpressions[:1]
		wh.ClientConfig.Service.Name, wh.ClientConfig.Service.Namespace = "podmeta-webhook", "podmeta-system"
		if diff := cmp.Diff(want.Webhooks, []admissionregistrationv1.MutatingWebhook{wh}); diff != "" {
			t.Errorf("chart webhook differs from config/webhook beyond the values (-config +chart):\n%s", diff)
		}
	})
	t.Run("safety net", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(harness.Root(), "config", "safety-net", "policy.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := decodeObjects(b)
		if err != nil {
			t.Fatal(err)
		}
		var wantPolicy admissionregistrationv1.ValidatingAdmissionPolicy
		var wantBinding admissionregistrationv1.ValidatingAdmissionPolicyBinding
		find(t, cfg, "ValidatingAdmissionPolicy", "podmeta-safety-net", &wantPolicy)
		find(t, cfg, "ValidatingAdmissionPolicyBinding", "podmeta-safety-net", &wantBinding)
		_, objs := render(t, "podmeta", "podmeta-system")
		var policy admissionregistrationv1.ValidatingAdmissionPolicy
		var binding admissionregistrationv1.ValidatingAdmissionPolicyBinding
		find(t, objs, "ValidatingAdmissionPolicy", "podmeta-safety-net", &policy)
		find(t, objs, "ValidatingAdmissionPolicyBinding", "podmeta-safety-net", &binding)
		if diff := cmp.Diff(wantPolicy.Spec, policy.Spec); diff != "" {
			t.Errorf("chart safety net differs from config/safety-net (-config +chart):\n%s", diff)
		}
		if diff := cmp.Diff(wantBinding.Spec, binding.Spec); diff != "" {
			t.Errorf("chart safety-net binding differs from config/safety-net (-config +chart):\n%s", diff)
		}
		// The policy's selectors are the webhook's, so it flags exactly the pods podmeta
		// should have seen.
		if diff := cmp.Diff(want.Webhooks[0].NamespaceSelector, policy.Spec.MatchConstraints.NamespaceSelector); diff != "" {
			t.Errorf("safety net namespaceSelector differs from the webhook's:\n%s", diff)
		}
		if diff := cmp.Diff(want.Webhooks[0].ObjectSelector, policy.Spec.MatchConstraints.ObjectSelector); diff != "" {
			t.Errorf("safety net objectSelector differs from the webhook's:\n%s", diff)
		}
		_, objs = render(t, "podmeta", "podmeta-system", "safetyNet.action=Deny")
		find(t, objs, "ValidatingAdmissionPolicyBinding", "podmeta-safety-net", &binding)
		if !slices.Equal(binding.Spec.ValidationActions, []admissionregistrationv1.ValidationAction{"Deny", "Audit"}) {
			t.Errorf("safetyNet.action=Deny gives %v", binding.Spec.ValidationActions)
		}
	})
	t.Run("rbac", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(harness.Root(), "config", "rbac", "role.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := decodeObjects(b)
		if err != nil {
			t.Fatal(err)
		}
		var wantRole rbacv1.ClusterRole
		find(t, cfg, "ClusterRole", "podmeta", &wantRole)
		for _, mode := range []string{"selfManaged", "certManager", "external"} {
			_, objs := render(t, "podmeta", "podmeta-system", "certs.mode="+mode, "certs.external.secretName=s", "certs.external.caBundle=Q0EK")
			var role rbacv1.ClusterRole
			find(t, objs, "ClusterRole", "podmeta", &role)
			extra := 0
			if mode == "selfManaged" {
				extra = 2 // its own webhook configurations, by name
			}
			if diff := cmp.Diff(wantRole.Rules, role.Rules[:len(role.Rules)-extra]); diff != "" {
				t.Errorf("%s: ClusterRole differs from config/rbac (-config +chart):\n%s", mode, diff)
			}
		}
	})
}

// The chart's operator defaults are the binary's defaults: an install with default
// values behaves like `podmeta webhook` with no flags (except the release's images).
func TestChartDefaultsMatchBinary(t *testing.T) {
	_, objs := render(t, "podmeta", "podmeta-system")
	got := chartConfig(t, objs)
	want := webhook.DefaultConfig()
	want.AmbassadorImage = "ghcr.io/podmeta/ambassador:" + chartAppVersion(t)
	want.ExcludedNamespaces = append(want.ExcludedNamespaces, "podmeta-system")
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("chart defaults differ from the binary's (-binary +chart):\n%s", diff)
	}
}

func chartAppVersion(t *testing.T) string {
	b, err := os.ReadFile(filepath.Join(harness.ChartDir(), "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c.AppVersion
}

// Every flag the chart passes exists in the binary and has a valid value: `podmeta
// webhook ARGS -h` parses them all before printing the usage.
func TestChartArgsAcceptedByBinary(t *testing.T) {
	for _, c := range chartCases {
		t.Run(c.name, func(t *testing.T) {
			_, objs := render(t, c.release, c.namespace, c.values...)
			args := containerArgs(t, objs)
			if args[0] != "webhook" {
				t.Fatalf("first argument %q, want webhook", args[0])
			}
			cmd := exec.CommandContext(t.Context(), binary, append(slices.Clone(args), "-h")...)
			out, _ := cmd.CombinedOutput() // -h exits non-zero; what matters is what it says
			for _, bad := range []string{"flag provided but not defined", "invalid value", "invalid boolean", "parse error"} {
				if i := bytes.Index(out, []byte(bad)); i >= 0 {
					line, _, _ := bytes.Cut(out[i:], []byte("\n"))
					t.Errorf("podmeta rejects the chart's arguments: %s", line)
				}
			}
			if !bytes.Contains(out, []byte("-cert-dir")) {
				t.Errorf("no usage printed:\n%s", out)
			}
		})
	}
}

// exportedMetrics is every metric name podmeta (the shared test server) and the
// kube-apiserver export, with histogram and summary series names expanded. The apiserver
// only exports a labelled series once it has observed it, so this first makes it see a
// webhook fail open and a denial.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	provokeWebhookMetrics(t)
	names := map[string]bool{}
	text, err := podmeta.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	addMetricNames(names, text)
	raw, err := cp.Clientset.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(t.Context())
	if err != nil {
		t.Fatalf("apiserver /metrics: %v", err)
	}
	addMetricNames(names, string(raw))
	return names
}

var typeLine = regexp.MustCompile(`^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)`)

func addMetricNames(names map[string]bool, text string) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := typeLine.FindStringSubmatch(line); m != nil {
			names[m[1]] = true
			switch m[2] {
			case "histogram":
				names[m[1]+"_bucket"], names[m[1]+"_sum"], names[m[1]+"_count"] = true, true, true
			case "summary":
				names[m[1]+"_sum"], names[m[1]+"_count"] = true, true
			}
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
}

// provokeWebhookMetrics makes the apiserver record a webhook that fails open (a
// throwaway configuration pointing at a closed port, scoped to one fresh namespace) and
// a webhook denial (podmeta denying an invalid annotation).
func provokeWebhookMetrics(t *testing.T) {
	t.Helper()
	ctx := t.Context()
	ns := namespace(t, map[string]string{"podmeta-test/fail-open": "yes"}, nil)
	ignore, none := admissionregistrationv1.Ignore, admissionregistrationv1.SideEffectClassNone
	url := "https://127.0.0.1:1/closed"
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	mwc.Name = "podmeta-test-fail-open"
	mwc.Webhooks = []admissionregistrationv1.MutatingWebhook{{
		Name: "fail-open.podmeta-test.io", AdmissionReviewVersions: []string{"v1"}, SideEffects: &none, FailurePolicy: &ignore,
		ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: cp.Env.WebhookInstallOptions.LocalServingCAData},
		Rules: []admissionregistrationv1.RuleWithOperations{{
			Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
			Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
		}},
		NamespaceSelector: metaSelector("kubernetes.io/metadata.name", ns),
	}}
	if err := cp.Client.Create(ctx, mwc); err != nil {
		t.Fatal(err)
	}
	defer cp.Client.Delete(context.WithoutCancel(ctx), mwc)
	n := 0
	eventually(t, 20*time.Second, func(ctx context.Context) string {
		n++
		create(t, ns, pod(fmt.Sprintf("fail-open-%d", n), nil))
		raw, err := cp.Clientset.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
		if err != nil {
			return err.Error()
		}
		if !bytes.Contains(raw, []byte(`apiserver_admission_webhook_fail_open_count{name="fail-open.podmeta-test.io"`)) {
			return "the apiserver has not failed open on the throwaway webhook yet"
		}
		return ""
	})
	denyNS := namespace(t, nil, nil)
	if _, err := cp.Clientset.CoreV1().Pods(denyNS).Create(ctx, pod("denied", map[string]string{webhook.AnnotationVolume: "maybe"}), metav1.CreateOptions{}); err == nil {
		t.Fatal("podmeta admitted an invalid annotation")
	}
}

func metaSelector(key, value string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: map[string]string{key: value}}
}

// promrules builds hack/promrules, a module of its own around Prometheus' rule and
// PromQL parsers (kept out of podmeta's go.mod: Prometheus pulls in half the cloud SDKs).
var promrules = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(cp.Dir, "promrules")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = filepath.Join(harness.Root(), "hack", "promrules")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build hack/promrules: %w\n%s", err, out)
	}
	return bin, nil
})

// parsePromQL runs hack/promrules in mode (rules or exprs) on content and returns the
// metric names per rule or expression.
func parsePromQL(t *testing.T, mode string, content []byte) map[string][]string {
	t.Helper()
	bin, err := promrules()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "input")
	if err := os.WriteFile(file, content, 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), bin, mode, file)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("Prometheus rejects the %s: %v\n%s", mode, err, stderr.String())
	}
	var rep struct{ Metrics map[string][]string }
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatal(err)
	}
	return rep.Metrics
}

// 1. The alerts parse with Prometheus' own rule parser, and every metric they name is
// one that podmeta or the kube-apiserver really exports.
func TestChartPrometheusRules(t *testing.T) {
	exported := exportedMetrics(t)
	for _, policy := range []string{"Ignore", "Fail"} {
		t.Run(policy, func(t *testing.T) {
			_, objs := render(t, "podmeta", "podmeta-system", "prometheusRule.enabled=true", "webhook.failurePolicy="+policy)
			rule := find(t, objs, "PrometheusRule", "podmeta", nil)
			spec, err := yaml.Marshal(rule.Object["spec"])
			if err != nil {
				t.Fatal(err)
			}
			metrics := parsePromQL(t, "rules", spec)
			var alerts []string
			for alert, names := range metrics {
				alerts = append(alerts, strings.TrimPrefix(alert, "podmeta/"))
				for _, name := range names {
					if !exported[name] {
						t.Errorf("%s: metric %s is exported by neither podmeta nor kube-apiserver", alert, name)
					}
				}
			}
			slices.Sort(alerts)
			want := []string{"PodmetaAdmissionErrors", "PodmetaCertificateExpiringSoon", "PodmetaDenialsSpiking", "PodmetaFailingOpen", "PodmetaSlow"}
			if policy == "Fail" {
				want = append(want, "PodmetaRejectingPods")
				slices.Sort(want)
			}
			if diff := cmp.Diff(want, alerts); diff != "" {
				t.Errorf("alerts (-want +got):\n%s", diff)
			}
		})
	}
}

// 1. The Grafana dashboard is valid JSON and queries only metrics that exist.
func TestChartDashboard(t *testing.T) {
	_, objs := render(t, "podmeta", "podmeta-system", "grafanaDashboard.enabled=true")
	var cm corev1.ConfigMap
	find(t, objs, "ConfigMap", "podmeta-dashboard", &cm)
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("labels %v lack grafana_dashboard: \"1\"", cm.Labels)
	}
	var dash struct {
		UID        string `json:"uid"`
		Title      string `json:"title"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(strings.NewReader(cm.Data["podmeta.json"]))
	if err := dec.Decode(&dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if dash.UID == "" || dash.Title == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard lacks uid, title or panels")
	}
	// Grafana's variables are not PromQL; substitute what Grafana would.
	grafana := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)
	var exprs []string
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, grafana.Replace(tg.Expr))
		}
	}
	for _, v := range dash.Templating.List {
		var q struct{ Query string }
		if json.Unmarshal(v.Query, &q) == nil && q.Query != "" {
			if m := labelValues.FindStringSubmatch(q.Query); m != nil {
				exprs = append(exprs, m[1])
			} else {
				t.Errorf("variable %s: unexpected query %q", v.Name, q.Query)
			}
		}
	}
	input, _ := json.Marshal(exprs)
	exported := exportedMetrics(t)
	for expr, names := range parsePromQL(t, "exprs", input) {
		for _, name := range names {
			if !exported[name] {
				t.Errorf("query %s: metric %s is exported by neither podmeta nor kube-apiserver", expr, name)
			}
		}
	}
}
