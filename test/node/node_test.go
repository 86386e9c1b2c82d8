// Package node runs podmeta-injected pods on a real kubelet: what the application
// inside the container actually sees (make test-node; see docs/testing.md).
//
// The tests need root, containerd, runc, the CNI plugins and a network namespace made
// by hack/node/run.sh, which sets PODMETA_NODE_TEST=1. Without it they skip, so a plain
// `go test ./...` stays quick and harmless.
package node

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/podmeta/podmeta/test/harness"
)

var (
	node    *harness.Node
	podmeta *harness.Podmeta
)

func TestMain(m *testing.M) {
	if os.Getenv("PODMETA_NODE_TEST") != "1" {
		// The tests skip themselves, each with the reason.
		os.Exit(m.Run())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx := context.Background()
	start := time.Now()
	bins := os.Getenv("PODMETA_NODE_BIN")
	var err error
	node, err = harness.StartNode(ctx, harness.BinariesFrom(bins))
	if err != nil {
		fmt.Fprintln(os.Stderr, "start node:", err)
		return 1
	}
	defer func() {
		if err := node.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop node:", err)
		}
	}()
	fmt.Fprintf(os.Stderr, "node Ready after %s\n", time.Since(start).Round(time.Second))
	podmeta, err = node.StartPodmeta(ctx, bins+"/podmeta",
		"--namespace=podmeta-system",
		"--ambassador-image="+harness.AmbassadorImage,
		"--ambassador-image-pull-policy=Never",
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "start podmeta:", err)
		return 1
	}
	defer podmeta.Stop()
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "--- podmeta log (tail)\n%s\n--- kubelet log (tail)\n%s\n--- containerd log (tail)\n%s\n",
			tail(podmeta.Logs(), 3000), node.LogTail("kubelet", 8000), node.LogTail("containerd", 4000))
	}
	return code
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func needNode(t *testing.T) {
	t.Helper()
	if os.Getenv("PODMETA_NODE_TEST") != "1" {
		t.Skip("real-node test: needs root, containerd, runc, CNI plugins and a kubelet in a private network namespace; run it with `make test-node` (hack/node/run.sh sets PODMETA_NODE_TEST=1)")
	}
}

// namespace creates an opted-in namespace with its ServiceAccount and CA ConfigMap.
func namespace(t *testing.T, name string, annotations map[string]string) string {
	t.Helper()
	if err := node.EnsureNamespace(context.Background(), name, map[string]string{"podmeta.io/inject": "enabled"}, annotations); err != nil {
		t.Fatal(err)
	}
	return name
}

// runPod creates pod bound to the node and waits until it is Running.
func runPod(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	pod.Spec.NodeName = harness.NodeName
	created, err := node.Clientset.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod: %v", err)
	}
	if created.Annotations["podmeta.io/status"] == "" {
		t.Fatalf("pod was not injected by podmeta: annotations %v", created.Annotations)
	}
	deadline := time.Now().Add(120 * time.Second)
	for {
		p, err := node.Clientset.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
			return p
		}
		if p.Status.Phase == corev1.PodFailed || time.Now().After(deadline) {
			t.Fatalf("pod %s/%s not Running (phase %s, reason %q, message %q)\ncontainer statuses: %+v\ninit: %+v",
				p.Namespace, p.Name, p.Status.Phase, p.Status.Reason, p.Status.Message, p.Status.ContainerStatuses, p.Status.InitContainerStatuses)
		}
		time.Sleep(time.Second)
	}
}

func logs(t *testing.T, ns, pod, container string) string {
	t.Helper()
	b, err := node.Clientset.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container}).DoRaw(context.Background())
	if err != nil {
		t.Fatalf("logs %s/%s %s: %v", ns, pod, container, err)
	}
	return string(b)
}

// waitLogs polls a container's logs until ok accepts them.
func waitLogs(t *testing.T, ns, pod, container string, timeout time.Duration, what string, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		l := logs(t, ns, pod, container)
		if ok(l) {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, %s: logs of %s/%s %s:\n%s", timeout, what, ns, pod, container, l)
		}
		time.Sleep(2 * time.Second)
	}
}

// printed parses printenv's output: env vars, and each file's latest content.
func printed(l string) (env, files map[string]string) {
	env, files = map[string]string{}, map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(l))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "env "):
			k, v, _ := strings.Cut(strings.TrimPrefix(line, "env "), "=")
			env[k] = v
		case strings.HasPrefix(line, "file "):
			k, v, _ := strings.Cut(strings.TrimPrefix(line, "file "), " ")
			if s, err := strconv.Unquote(v); err == nil {
				files[k] = s
			} else {
				files[k] = v
			}
		}
	}
	return env, files
}

func envPod(ns, name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"foo": "bar"},
			Annotations: map[string]string{"example.com/build": "one"}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{
				Name:            "app",
				Image:           harness.TestAppImage,
				ImagePullPolicy: corev1.PullNever,
				Command:         []string{"/printenv"},
				Env:             []corev1.EnvVar{{Name: "ADDR", Value: "$(POD_IP):8080"}},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("15m")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("4Mi")},
				},
			}},
		},
	}
}

// TestEnvAndVolume: the running app sees podmeta's env vars with the kubelet's values,
// and its labels file follows a relabel.
func TestEnvAndVolume(t *testing.T) {
	needNode(t)
	ns := namespace(t, "node-env", nil)
	p := runPod(t, envPod(ns, "downward"))
	l := waitLogs(t, ns, p.Name, "app", 60*time.Second, "no \"ready\" line", func(s string) bool { return strings.Contains(s, "\nready\n") })
	env, files := printed(l)
	want := map[string]string{
		"POD_NAME":                         p.Name,
		"POD_NAMESPACE":                    ns,
		"POD_UID":                          string(p.UID),
		"POD_IP":                           p.Status.PodIP,
		"HOST_IP":                          harness.NodeIP,
		"NODE_NAME":                        harness.NodeName,
		"SERVICE_ACCOUNT":                  "default",
		"CONTAINER_CPU_REQUEST_MILLICORES": "15",
		"CONTAINER_MEMORY_LIMIT_BYTES":     "4194304",
		"ADDR":                             p.Status.PodIP + ":8080",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("app env %s = %q, want %q", k, env[k], v)
		}
	}
	t.Logf("app saw POD_IP=%s ADDR=%s CONTAINER_CPU_REQUEST_MILLICORES=%s CONTAINER_MEMORY_LIMIT_BYTES=%s",
		env["POD_IP"], env["ADDR"], env["CONTAINER_CPU_REQUEST_MILLICORES"], env["CONTAINER_MEMORY_LIMIT_BYTES"])
	if files["name"] != p.Name || files["namespace"] != ns || files["uid"] != string(p.UID) {
		t.Errorf("metadata files name/namespace/uid = %q/%q/%q", files["name"], files["namespace"], files["uid"])
	}
	if files["labels"] != `foo="bar"` {
		t.Errorf("labels file = %q, want %q", files["labels"], `foo="bar"`)
	}
	if !strings.Contains(files["annotations"], `example.com/build="one"`) || !strings.Contains(files["annotations"], `podmeta.io/status=`) {
		t.Errorf("annotations file = %q, want example.com/build and podmeta.io/status", files["annotations"])
	}
	if t.Failed() {
		return
	}

	// Relabel and annotate: the kubelet rewrites the files on a later sync.
	patch := `{"metadata":{"labels":{"foo":"baz"},"annotations":{"example.com/build":"two"}}}`
	changed := time.Now()
	if _, err := node.Clientset.CoreV1().Pods(ns).Patch(context.Background(), p.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitLogs(t, ns, p.Name, "app", 150*time.Second, `labels file never became foo="baz" and annotations example.com/build="two"`, func(s string) bool {
		_, f := printed(s)
		return f["labels"] == `foo="baz"` && strings.Contains(f["annotations"], `example.com/build="two"`)
	})
	t.Logf("labels and annotations files updated %s after the patch", time.Since(changed).Round(time.Second))
}

// TestEphemeralStorage: the default request is in the admitted spec, visible to the
// app through the env var, and the pod runs.
func TestEphemeralStorage(t *testing.T) {
	needNode(t)
	ns := namespace(t, "node-storage", nil)
	pod := envPod(ns, "storage")
	pod.Annotations["podmeta.io/ephemeral-storage-request"] = "32Mi"
	pod.Annotations["podmeta.io/env"] = "all"
	p := runPod(t, pod)
	got := p.Spec.Containers[0].Resources.Requests[corev1.ResourceEphemeralStorage]
	if got.Cmp(resource.MustParse("32Mi")) != 0 {
		t.Errorf("admitted ephemeral-storage request = %s, want 32Mi", got.String())
	}
	l := waitLogs(t, ns, p.Name, "app", 60*time.Second, "no \"ready\" line", func(s string) bool { return strings.Contains(s, "\nready\n") })
	env, _ := printed(l)
	if v := env["CONTAINER_EPHEMERAL_STORAGE_REQUEST_BYTES"]; v != strconv.Itoa(32<<20) {
		t.Errorf("app env CONTAINER_EPHEMERAL_STORAGE_REQUEST_BYTES = %q, want %d", v, 32<<20)
	}
}

// TestAmbassador: the native sidecar is started (and ready) before the app; through it
// the app gets 403 without RBAC and 200 once a Role allows listing pods.
func TestAmbassador(t *testing.T) {
	needNode(t)
	ctx := context.Background()
	ns := namespace(t, "node-amb", nil)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "amb", Namespace: ns, Annotations: map[string]string{"podmeta.io/ambassador": "true"}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{
				Name: "app", Image: harness.TestAppImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/apiget"},
			}},
		},
	}
	p := runPod(t, pod)
	if len(p.Spec.InitContainers) == 0 || p.Spec.InitContainers[0].Name != "podmeta-ambassador" ||
		p.Spec.InitContainers[0].RestartPolicy == nil || *p.Spec.InitContainers[0].RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Fatalf("ambassador is not a native sidecar: initContainers %+v", p.Spec.InitContainers)
	}
	l := waitLogs(t, ns, p.Name, "app", 60*time.Second, "no 403", func(s string) bool { return strings.Contains(s, " 403\n") })
	// Started after the sidecar's startupProbe passed: the very first request answers.
	if first := lineWith(l, "get 1 "); !strings.HasSuffix(first, " 403") {
		t.Errorf("first request through the ambassador: %q, want 403 (the sidecar should be ready before the app starts)", first)
	}
	p, _ = node.Clientset.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
	var ambStart, appStart time.Time
	for _, s := range p.Status.InitContainerStatuses {
		if s.Name == "podmeta-ambassador" && s.State.Running != nil {
			ambStart = s.State.Running.StartedAt.Time
			if s.Started == nil || !*s.Started {
				t.Errorf("ambassador status not started: %+v", s)
			}
		}
	}
	for _, s := range p.Status.ContainerStatuses {
		if s.Name == "app" && s.State.Running != nil {
			appStart = s.State.Running.StartedAt.Time
		}
	}
	if ambStart.IsZero() || appStart.IsZero() || appStart.Before(ambStart) {
		t.Errorf("ambassador started %s, app %s: want the ambassador first", ambStart, appStart)
	}

	grantPodReader(ctx, t, ns)
	waitLogs(t, ns, p.Name, "app", 60*time.Second, "no 200 after the Role was bound", func(s string) bool { return strings.Contains(s, " 200\n") })
}

func lineWith(l, substr string) string {
	for _, line := range strings.Split(l, "\n") {
		if strings.Contains(line, substr) {
			return line
		}
	}
	return ""
}

// TestAmbassadorTokenRotation: with a 10-minute projected token (the API's minimum) the
// kubelet replaces the token file at 80% of its life; the ambassador re-reads it, and
// the app's calls keep succeeding across two rotations and past the first token's
// expiry. It takes about 17 minutes; -test.short skips it.
func TestAmbassadorTokenRotation(t *testing.T) {
	needNode(t)
	if testing.Short() {
		t.Skip("takes ~17 minutes (two kubelet token rotations of a 600 s token); run without -test.short")
	}
	t.Parallel()
	ctx := context.Background()
	ns := namespace(t, "node-rotate", nil)
	grantPodReader(ctx, t, ns)
	expiry := int64(600)
	// The user's own podmeta-ambassador-token volume wins over podmeta's (3607 s, which
	// the API server extends to a year); the app mounts it too, to see each rotation.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "rotate", Namespace: ns, Annotations: map[string]string{"podmeta.io/ambassador": "true"}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: new(int64),
			Volumes: []corev1.Volume{{Name: "podmeta-ambassador-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
				Sources: []corev1.VolumeProjection{
					{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: &expiry}},
					{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
						Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
				},
			}}}},
			Containers: []corev1.Container{{
				Name: "app", Image: harness.TestAppImage, ImagePullPolicy: corev1.PullNever,
				Command:      []string{"/apiget"},
				Env:          []corev1.EnvVar{{Name: "TOKEN_FILE", Value: "/var/run/podmeta-token/token"}},
				VolumeMounts: []corev1.VolumeMount{{Name: "podmeta-ambassador-token", MountPath: "/var/run/podmeta-token", ReadOnly: true}},
			}},
		},
	}
	p := runPod(t, pod)
	if v := p.Spec.Volumes[0]; v.Name != "podmeta-ambassador-token" || *v.Projected.Sources[0].ServiceAccountToken.ExpirationSeconds != expiry {
		t.Fatalf("the pod's own token volume was not kept: %+v", p.Spec.Volumes)
	}
	start := time.Now()
	var l string
	var tokens []string
	var firstExp int64
	for {
		time.Sleep(15 * time.Second)
		l = logs(t, ns, p.Name, "app")
		tokens = tokens[:0]
		for _, line := range strings.Split(l, "\n") {
			if f := strings.Fields(line); len(f) == 4 && f[1] == "token" {
				tokens = append(tokens, f[2])
				if firstExp == 0 {
					firstExp, _ = strconv.ParseInt(f[3], 10, 64)
				}
			}
		}
		// Two rotations, and at least 30 s of calls past the first token's expiry.
		if len(tokens) >= 3 && time.Now().Unix() > firstExp+30 {
			break
		}
		if time.Since(start) > 22*time.Minute {
			t.Fatalf("after %s, saw %d token(s) %v (want the initial one and two rotations); first exp %d\napp log tail:\n%s",
				time.Since(start).Round(time.Second), len(tokens), tokens, firstExp, tail(l, 3000))
		}
	}
	// Every call after the first success succeeded.
	var bad []string
	ok := false
	for _, line := range strings.Split(l, "\n") {
		if !strings.Contains(line, " get ") {
			continue
		}
		if strings.HasSuffix(line, " 200") {
			ok = true
		} else if ok {
			bad = append(bad, line)
		}
	}
	if !ok || len(bad) > 0 {
		t.Errorf("calls through the ambassador across token rotations: succeeded=%v, failures after the first success:\n%s", ok, strings.Join(bad, "\n"))
	}
	amb := logs(t, ns, p.Name, "podmeta-ambassador")
	reloads := strings.Count(amb, `"msg":"token loaded"`)
	t.Logf("tokens %v over %s; first token expired at %s; ambassador logged %d token loads",
		tokens, time.Since(start).Round(time.Second), time.Unix(firstExp, 0).UTC().Format(time.RFC3339), reloads)
	if reloads < 3 {
		t.Errorf("ambassador logged %d token loads, want >= 3 (initial + 2 rotations):\n%s", reloads, tail(amb, 3000))
	}
}

// grantPodReader lets the namespace's default ServiceAccount get and list its pods.
func grantPodReader(ctx context.Context, t *testing.T, ns string) {
	t.Helper()
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pod-reader", Namespace: ns},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}}}}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "pod-reader", Namespace: ns},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pod-reader"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default", Namespace: ns}}}
	if err := node.Client.Create(ctx, role); err != nil {
		t.Fatal(err)
	}
	if err := node.Client.Create(ctx, rb); err != nil {
		t.Fatal(err)
	}
}
