package test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podmeta/podmeta/test/harness"
	"github.com/podmeta/podmeta/webhook"
)

// certManagerVersion is the cert-manager whose CRDs the certManager install uses when
// go.mod does not require cert-manager itself.
const certManagerVersion = "v1.21.2"

// chartTestLabel scopes an installed chart's webhook to this test's namespaces: the
// chart's namespaceSelectorExpressions value adds it, so the webhook cannot catch pods
// of other tests whatever its failurePolicy.
const chartTestLabel = "podmeta-test/chart"

// 3 and 4. helm install for each certificate mode (the apiserver accepts every object),
// the installed webhook configuration selects exactly the right pods, helm upgrade
// applies changed values without touching podmeta's certificate Secret, and helm
// uninstall leaves nothing behind.
func TestChartInstall(t *testing.T) {
	h, err := cp.Helm()
	if err != nil {
		t.Fatal(err)
	}
	proxy := startAdmissionProxy(t)
	for _, mode := range []string{"selfManaged", "certManager", "external"} {
		t.Run(mode, func(t *testing.T) {
			// Release names sort before the harness's "podmeta" configuration and make a
			// full name ("chart-…-podmeta") that collides with nothing the harness installed.
			release := "chart-" + strings.ToLower(mode)
			ns := release
			testChartLifecycle(t, h, proxy, mode, release, ns)
		})
	}
}

func testChartLifecycle(t *testing.T, h *harness.Helm, proxy *admissionProxy, mode, release, ns string) {
	ctx := t.Context()
	fullname := release + "-podmeta"
	values := []string{
		"certs.mode=" + mode,
		"webhook.excludedNamespaces={" + release + "-excluded}",
		"webhook.namespaceSelectorExpressions[0].key=" + chartTestLabel,
		"webhook.namespaceSelectorExpressions[0].operator=In",
		"webhook.namespaceSelectorExpressions[0].values={" + release + "}",
		"ambassador.podReaderClusterRole.create=true",
	}
	switch mode {
	case "certManager":
		installCertManagerCRDs(t)
	case "external":
		// The user's Secret: the chart only references it.
		if err := cp.EnsureNamespace(ctx, ns, nil, nil); err != nil {
			t.Fatal(err)
		}
		wio := cp.Env.WebhookInstallOptions
		crt, _ := os.ReadFile(filepath.Join(wio.LocalServingCertDir, "tls.crt"))
		key, _ := os.ReadFile(filepath.Join(wio.LocalServingCertDir, "tls.key"))
		secret := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "user-tls", Namespace: ns},
			Type:       corev1.SecretTypeTLS,
			Data:       map[string][]byte{"tls.crt": crt, "tls.key": key},
		}
		if err := cp.Client.Create(ctx, secret); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cp.Client.Delete(context.Background(), secret) })
		values = append(values, "certs.external.secretName=user-tls",
			"certs.external.caBundle="+base64.StdEncoding.EncodeToString(wio.LocalServingCAData))
	}
	args := []string{"install", release, harness.ChartDir(), "--namespace", ns, "--create-namespace"}
	for _, v := range values {
		args = append(args, "--set", v)
	}
	if _, err := h.Run(ctx, args...); err != nil {
		t.Fatal(err)
	}
	uninstalled := false
	t.Cleanup(func() {
		if !uninstalled {
			h.Run(context.Background(), "uninstall", release, "--namespace", ns)
		}
	})

	// The apiserver accepted and stored every object helm rendered.
	objs := releaseObjects(ctx, t, h, release, ns)
	kinds := map[string]bool{}
	for _, o := range objs {
		kinds[o.GetKind()] = true
		live := &unstructured.Unstructured{}
		live.SetGroupVersionKind(o.GroupVersionKind())
		if err := cp.Client.Get(ctx, client.ObjectKeyFromObject(o), live); err != nil {
			t.Errorf("%s %s not stored: %v", o.GetKind(), o.GetName(), err)
		}
	}
	wantKinds := []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment", "PodDisruptionBudget", "MutatingWebhookConfiguration"}
	switch mode {
	case "selfManaged":
		wantKinds = append(wantKinds, "Secret", "Role", "RoleBinding")
	case "certManager":
		wantKinds = append(wantKinds, "Issuer", "Certificate")
	}
	for _, k := range wantKinds {
		if !kinds[k] {
			t.Errorf("release has no %s", k)
		}
	}

	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := cp.Client.Get(ctx, client.ObjectKey{Name: fullname}, &mwc); err != nil {
		t.Fatal(err)
	}
	switch mode {
	case "certManager":
		if got, want := mwc.Annotations["cert-manager.io/inject-ca-from"], ns+"/"+fullname+"-webhook"; got != want {
			t.Errorf("inject-ca-from %q, want %q", got, want)
		}
	case "external":
		if !bytes.Equal(mwc.Webhooks[0].ClientConfig.CABundle, cp.Env.WebhookInstallOptions.LocalServingCAData) {
			t.Error("caBundle is not the one given in certs.external.caBundle")
		}
	}

	checkInstalledWebhookSelects(t, proxy, &mwc, release, ns)

	if mode == "selfManaged" {
		// What podmeta writes into its Secret must survive helm upgrade.
		var s corev1.Secret
		if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: fullname + "-webhook-tls"}, &s); err != nil {
			t.Fatal(err)
		}
		s.Data = map[string][]byte{"tls.crt": []byte("written by podmeta")}
		if err := cp.Client.Update(ctx, &s); err != nil {
			t.Fatal(err)
		}
	}

	// Upgrade with changed values.
	up := []string{"upgrade", release, harness.ChartDir(), "--namespace", ns}
	for _, v := range append(values, "webhook.failurePolicy=Fail", "webhook.timeoutSeconds=10", "replicaCount=3", "defaults.env=all") {
		up = append(up, "--set", v)
	}
	if _, err := h.Run(ctx, up...); err != nil {
		t.Fatal(err)
	}
	if err := cp.Client.Get(ctx, client.ObjectKey{Name: fullname}, &mwc); err != nil {
		t.Fatal(err)
	}
	if wh := mwc.Webhooks[0]; *wh.FailurePolicy != admissionregistrationv1.Fail || *wh.TimeoutSeconds != 10 {
		t.Errorf("after upgrade: failurePolicy %s timeoutSeconds %d, want Fail 10", *wh.FailurePolicy, *wh.TimeoutSeconds)
	}
	var d appsv1.Deployment
	if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: fullname}, &d); err != nil {
		t.Fatal(err)
	}
	if *d.Spec.Replicas != 3 || !slices.Contains(d.Spec.Template.Spec.Containers[0].Args, "--env=all") {
		t.Errorf("after upgrade: replicas %d args %v", *d.Spec.Replicas, d.Spec.Template.Spec.Containers[0].Args)
	}
	if mode == "selfManaged" {
		var s corev1.Secret
		if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: fullname + "-webhook-tls"}, &s); err != nil {
			t.Fatal(err)
		}
		if string(s.Data["tls.crt"]) != "written by podmeta" {
			t.Errorf("helm upgrade overwrote podmeta's certificate Secret: %v", s.Data)
		}
	}

	// Uninstall: nothing left that could block or mutate pods, no RBAC, no Secret.
	if _, err := h.Run(ctx, "uninstall", release, "--namespace", ns); err != nil {
		t.Fatal(err)
	}
	uninstalled = true
	for _, o := range objs {
		live := &unstructured.Unstructured{}
		live.SetGroupVersionKind(o.GroupVersionKind())
		err := cp.Client.Get(ctx, client.ObjectKeyFromObject(o), live)
		if err == nil && live.GetDeletionTimestamp() == nil {
			t.Errorf("%s %s left behind by helm uninstall", o.GetKind(), o.GetName())
		} else if err != nil && !apierrors.IsNotFound(err) {
			t.Error(err)
		}
	}
	for _, list := range []client.ObjectList{
		&admissionregistrationv1.MutatingWebhookConfigurationList{}, &unstructured.UnstructuredList{},
	} {
		if u, ok := list.(*unstructured.UnstructuredList); ok {
			u.SetGroupVersionKind(schema.GroupVersionKind{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRoleList"})
		}
		if err := cp.Client.List(ctx, list, client.MatchingLabels{"app.kubernetes.io/instance": release}); err != nil {
			t.Fatal(err)
		}
		if n := metaLen(list); n != 0 {
			t.Errorf("%d %T of the release left behind", n, list)
		}
	}
	// The webhook had failurePolicy Fail: pod creation in its namespace works only if
	// the configuration is really gone.
	optedIn := chartNamespace(t, release, "gone", true)
	eventually(t, 10*time.Second, func(ctx context.Context) string {
		_, err := cp.Clientset.CoreV1().Pods(optedIn).Create(ctx, pod(fmt.Sprintf("after-%d", time.Now().UnixNano()), nil), metav1.CreateOptions{})
		if err != nil {
			return "pod creation after uninstall: " + err.Error()
		}
		return ""
	})
}

func metaLen(list client.ObjectList) int {
	switch l := list.(type) {
	case *admissionregistrationv1.MutatingWebhookConfigurationList:
		return len(l.Items)
	case *unstructured.UnstructuredList:
		return len(l.Items)
	}
	return -1
}

// chartNamespace creates a namespace carrying the chart test's scoping label and,
// when optedIn, podmeta's opt-in label.
func chartNamespace(t *testing.T, release, suffix string, optedIn bool) string {
	t.Helper()
	labels := map[string]string{chartTestLabel: release}
	if optedIn {
		labels[webhook.LabelInject] = "enabled"
	}
	name := fmt.Sprintf("%s-%s-%d", release, suffix, time.Now().UnixNano()%1e6)
	if err := cp.EnsureNamespace(t.Context(), name, labels, nil); err != nil {
		t.Fatal(err)
	}
	return name
}

// checkInstalledWebhookSelects points the installed configuration — rules, selectors
// and matchConditions exactly as installed — at the recording proxy in front of the
// shared podmeta, and checks that the apiserver sends it the opted-in pod, which gets
// injected, and none of the others. clientConfig is restored afterwards.
func checkInstalledWebhookSelects(t *testing.T, proxy *admissionProxy, mwc *admissionregistrationv1.MutatingWebhookConfiguration, release, ns string) {
	t.Helper()
	ctx := t.Context()
	saved := *mwc.Webhooks[0].ClientConfig.DeepCopy()
	url := proxy.url(release)
	mwc.Webhooks[0].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: cp.Env.WebhookInstallOptions.LocalServingCAData}
	if err := cp.Client.Update(ctx, mwc); err != nil {
		t.Fatal(err)
	}
	defer func() {
		var cur admissionregistrationv1.MutatingWebhookConfiguration
		if err := cp.Client.Get(context.WithoutCancel(ctx), client.ObjectKeyFromObject(mwc), &cur); err != nil {
			t.Error(err)
			return
		}
		cur.Webhooks[0].ClientConfig = saved
		if err := cp.Client.Update(context.WithoutCancel(ctx), &cur); err != nil {
			t.Errorf("restore clientConfig: %v", err)
		}
	}()

	optedIn := chartNamespace(t, release, "in", true)
	// The apiserver picks up webhook configuration changes asynchronously.
	n := 0
	eventually(t, 15*time.Second, func(context.Context) string {
		n++
		name := fmt.Sprintf("warmup-%d", n)
		create(t, optedIn, pod(name, nil))
		if !proxy.saw(release, optedIn, name) {
			return "the apiserver does not call the installed webhook yet"
		}
		return ""
	})

	got := create(t, optedIn, pod("opted-in", nil))
	if !proxy.saw(release, optedIn, "opted-in") || !proxy.patched(release, optedIn, "opted-in") || !injected(got) {
		t.Errorf("opted-in pod: sent %v, patched %v, injected %v", proxy.saw(release, optedIn, "opted-in"),
			proxy.patched(release, optedIn, "opted-in"), injected(got))
	}

	notOptedIn := chartNamespace(t, release, "out", false)
	excluded := release + "-excluded"
	if err := cp.EnsureNamespace(ctx, excluded, map[string]string{chartTestLabel: release, webhook.LabelInject: "enabled"}, nil); err != nil {
		t.Fatal(err)
	}
	// The release namespace is podmeta's own: never sent, even when labelled.
	var own corev1.Namespace
	if err := cp.Client.Get(ctx, client.ObjectKey{Name: ns}, &own); err != nil {
		t.Fatal(err)
	}
	own.Labels[chartTestLabel], own.Labels[webhook.LabelInject] = release, "enabled"
	if err := cp.Client.Update(ctx, &own); err != nil {
		t.Fatal(err)
	}
	if err := cp.EnsureNamespace(ctx, ns, nil, nil); err != nil { // its default ServiceAccount
		t.Fatal(err)
	}
	optOutLabel := pod("opt-out-label", nil)
	optOutLabel.Labels = map[string]string{webhook.LabelInject: "disabled"}
	mirror := pod("mirror", map[string]string{"kubernetes.io/config.mirror": "x"})
	for _, c := range []struct {
		ns string
		p  *corev1.Pod
	}{
		{optedIn, optOutLabel},
		{optedIn, pod("opt-out-annotation", map[string]string{webhook.AnnotationInject: " False"})},
		{optedIn, mirror},
		{notOptedIn, pod("not-opted-in", nil)},
		{excluded, pod("excluded", nil)},
		{ns, pod("own-namespace", nil)},
	} {
		if _, err := cp.Clientset.CoreV1().Pods(c.ns).Create(ctx, c.p, metav1.CreateOptions{}); err != nil && c.p != mirror {
			t.Fatalf("create %s/%s: %v", c.ns, c.p.Name, err)
		}
		if proxy.saw(release, c.ns, c.p.Name) {
			t.Errorf("the installed webhook was sent %s/%s", c.ns, c.p.Name)
		}
	}
}

// admissionProxy records which pods the apiserver sends to an installed webhook
// configuration and forwards each request to the shared podmeta. It serves on
// 127.0.0.1 with envtest's serving certificate, as podmeta does.
type admissionProxy struct {
	srv   *httptest.Server
	mu    sync.Mutex
	calls map[string]bool // "config/namespace/name" -> response had a patch
}

func startAdmissionProxy(t *testing.T) *admissionProxy {
	t.Helper()
	wio := cp.Env.WebhookInstallOptions
	cert, err := tls.LoadX509KeyPair(filepath.Join(wio.LocalServingCertDir, "tls.crt"), filepath.Join(wio.LocalServingCertDir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(wio.LocalServingCAData)
	upstream := "https://" + net.JoinHostPort(wio.LocalServingHost, strconv.Itoa(wio.LocalServingPort)) + "/mutate-v1-pod"
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	p := &admissionProxy{calls: map[string]bool{}}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var req admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &req); err != nil || req.Request == nil {
			http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
			return
		}
		resp, err := hc.Post(upstream, "application/json", bytes.NewReader(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		var review admissionv1.AdmissionReview
		patched := json.Unmarshal(out, &review) == nil && review.Response != nil && len(review.Response.Patch) > 0
		var meta struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
		}
		json.Unmarshal(req.Request.Object.Raw, &meta)
		p.mu.Lock()
		p.calls[strings.TrimPrefix(r.URL.Path, "/")+"/"+req.Request.Namespace+"/"+meta.Metadata.Name] = patched
		p.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(resp.StatusCode)
		w.Write(out)
	}))
	p.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	p.srv.StartTLS()
	t.Cleanup(p.srv.Close)
	return p
}

// url is the proxy's address for one configuration; the first path segment tells the
// configurations apart.
func (p *admissionProxy) url(config string) string { return p.srv.URL + "/" + config }

func (p *admissionProxy) saw(config, ns, name string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.calls[config+"/"+ns+"/"+name]
	return ok
}

func (p *admissionProxy) patched(config, ns, name string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[config+"/"+ns+"/"+name]
}

// installCertManagerCRDs installs cert-manager's Certificate and Issuer CRDs, which is
// all the apiserver needs to accept the chart's certManager objects, and removes them
// when the test ends.
func installCertManagerCRDs(t *testing.T) {
	t.Helper()
	dir, err := harness.CertManagerCRDs(certManagerVersion)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"cert-manager.io_certificates.yaml", "cert-manager.io_issuers.yaml"} {
		if err := cp.Apply(t.Context(), filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(f, "cert-manager.io_"), ".yaml") + ".cert-manager.io"
		crd := &unstructured.Unstructured{}
		crd.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
		crd.SetName(name)
		t.Cleanup(func() { cp.Client.Delete(context.Background(), crd) })
		eventually(t, 20*time.Second, func(ctx context.Context) string {
			if err := cp.Client.Get(ctx, client.ObjectKey{Name: name}, crd); err != nil {
				return err.Error()
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
					return ""
				}
			}
			return name + " not established"
		})
	}
	// The client's REST mapper caches discovery; make it see the new kinds.
	eventually(t, 20*time.Second, func(ctx context.Context) string {
		if _, err := cp.Client.RESTMapper().RESTMapping(schema.GroupKind{Group: "cert-manager.io", Kind: "Certificate"}, "v1"); err != nil {
			return err.Error()
		}
		return ""
	})
}
