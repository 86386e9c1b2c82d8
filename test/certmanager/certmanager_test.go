// Package certmanager runs podmeta in cert-manager mode against cert-manager's own
// code, in-process on a real local apiserver: its CRDs (deploy/crds of the
// github.com/cert-manager/cert-manager module), its certificate, certificate-request
// and issuer controllers and its cainjector. It is a package of its own, with its own
// control plane, so that the main integration package does not compile cert-manager.
package certmanager

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmversioned "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	cmscheme "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned/scheme"
	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	"github.com/cert-manager/cert-manager/pkg/controller/cainjector"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	"github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
	cmutil "github.com/cert-manager/cert-manager/pkg/util"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/podmeta/podmeta/test/harness"
	"github.com/podmeta/podmeta/webhook"
)

var (
	cp     *harness.ControlPlane
	binary string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	suite, err := harness.StartSuite()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer suite.Stop()
	cp, binary = suite.CP, suite.Binary
	return m.Run()
}

// installCRDs installs cert-manager's CRDs from its module's deploy/crds.
func installCRDs(t *testing.T) {
	t.Helper()
	dir, err := harness.ModuleDir("github.com/cert-manager/cert-manager")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := envtest.InstallCRDs(cp.Config, envtest.CRDInstallOptions{Paths: []string{filepath.Join(dir, "deploy", "crds")}}); err != nil {
		t.Fatal(err)
	}
}

// startCertManager runs cert-manager's controllers and cainjector in-process, as cluster
// admin, until the test ends.
func startCertManager(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })

	_, kubeconfig, err := cp.UserConfig("cert-manager", "system:masters")
	if err != nil {
		t.Fatal(err)
	}
	factory, err := controllerpkg.NewContextFactory(ctx, controllerpkg.ContextOptions{
		Kubeconfig: kubeconfig, KubernetesAPIQPS: 100, KubernetesAPIBurst: 200,
		IssuerOptions: controllerpkg.IssuerOptions{ClusterResourceNamespace: "cert-manager"},
		CertificateOptions: controllerpkg.CertificateOptions{
			CertificateRequestMinimumBackoffDuration: time.Second,
			CertificateRequestMaximumBackoffDuration: 5 * time.Second,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	names := []string{
		issuers.ControllerName, "certificaterequests-approver", "certificaterequests-issuer-selfsigned", "certificaterequests-issuer-ca",
		trigger.ControllerName, issuing.ControllerName, keymanager.ControllerName, requestmanager.ControllerName,
		readiness.ControllerName, revisionmanager.ControllerName,
	}
	var loops []controllerpkg.Interface
	for _, n := range names {
		fn, ok := controllerpkg.Known()[n]
		if !ok {
			t.Fatalf("cert-manager controller %q not registered", n)
		}
		c, err := fn(factory)
		if err != nil {
			t.Fatalf("cert-manager controller %s: %v", n, err)
		}
		loops = append(loops, c)
	}
	cmctx, err := factory.Build()
	if err != nil {
		t.Fatal(err)
	}
	cmctx.KubeSharedInformerFactory.Start(ctx.Done())
	cmctx.SharedInformerFactory.Start(ctx.Done())
	for _, c := range loops {
		wg.Go(func() { c.Run(2, ctx) })
	}

	// cainjector: a controller-runtime manager, as cert-manager's cainjector runs it.
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, cmscheme.AddToScheme, apiextensionsv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	// As cert-manager's cainjector command does: its server-side apply field manager
	// is derived from the user agent.
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	mgr, err := ctrl.NewManager(cmutil.RestConfigWithUserAgent(cp.Config, "cainjector"), ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cainjector.RegisterAllInjectors(ctx, mgr, cainjector.SetupOptions{
		EnableCertificatesDataSource: true,
		EnabledReconcilersFor:        map[string]bool{"mutatingwebhookconfiguration": true},
	}); err != nil {
		t.Fatal(err)
	}
	wg.Go(func() {
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("cainjector: %v", err)
		}
	})
}

const testLabel = "certmanager-test.podmeta.io/name"

// 5. cert-manager mode with cert-manager's own code: the shipped config/certmanager
// manifests (the serving Certificate's duration and renewBefore shortened so it renews
// every few seconds, and 127.0.0.1 added for the local apiserver), the cainjector
// filling the caBundle from the inject-ca-from annotation, podmeta serving the issued
// Secret from files, and renewals under load with no failed creation.
func TestCertManagerMode(t *testing.T) {
	ctx := t.Context()
	installCRDs(t)
	startCertManager(t)
	if err := cp.EnsureNamespace(ctx, "podmeta-system", nil, nil); err != nil {
		t.Fatal(err)
	}
	objs, err := harness.ReadManifests("config/certmanager/certificate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range objs {
		if u.GetKind() == "Certificate" && u.GetName() == "podmeta-webhook" {
			u.Object["spec"].(map[string]any)["duration"] = "40s"
			u.Object["spec"].(map[string]any)["renewBefore"] = "35s"
			u.Object["spec"].(map[string]any)["ipAddresses"] = []any{"127.0.0.1"}
		}
		if err := cp.Client.Create(ctx, u); err != nil {
			t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}

	// podmeta's webhook configuration, annotated as config/certmanager patches it.
	patch, err := harness.ReadManifests("config/certmanager/webhook_ca_injection.yaml")
	if err != nil {
		t.Fatal(err)
	}
	addr := harness.FreeAddr()
	whc, err := harness.ShippedWebhookConfiguration()
	if err != nil {
		t.Fatal(err)
	}
	whc.Name = "podmeta-cert-manager"
	whc.Annotations = patch[0].GetAnnotations()
	fail := admissionregistrationv1.Fail
	for i := range whc.Webhooks {
		wh := &whc.Webhooks[i]
		url := "https://" + addr + *wh.ClientConfig.Service.Path
		wh.ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url}
		wh.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{testLabel: "cert-manager"}}
		wh.FailurePolicy = &fail
	}
	whcs := cp.Clientset.AdmissionregistrationV1().MutatingWebhookConfigurations()
	if _, err := whcs.Create(ctx, whc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Issued, and the caBundle injected from it.
	cmclient, err := cmversioned.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	var secret *corev1.Secret
	eventually(t, 60*time.Second, func() string {
		crt, err := cmclient.CertmanagerV1().Certificates("podmeta-system").Get(ctx, "podmeta-webhook", metav1.GetOptions{})
		if err != nil {
			return err.Error()
		}
		ready := slices.ContainsFunc(crt.Status.Conditions, func(c cmapi.CertificateCondition) bool {
			return c.Type == cmapi.CertificateConditionReady && c.Status == "True"
		})
		if !ready {
			return fmt.Sprintf("Certificate not ready: %+v", crt.Status.Conditions)
		}
		if secret, err = cp.Clientset.CoreV1().Secrets("podmeta-system").Get(ctx, "podmeta-webhook-tls", metav1.GetOptions{}); err != nil {
			return err.Error()
		}
		got, err := whcs.Get(ctx, whc.Name, metav1.GetOptions{})
		if err != nil {
			return err.Error()
		}
		for _, wh := range got.Webhooks {
			if len(wh.ClientConfig.CABundle) == 0 || string(wh.ClientConfig.CABundle) != string(secret.Data["ca.crt"]) {
				return "caBundle not injected from the Certificate's ca.crt"
			}
		}
		return ""
	})

	// No kubelet mounts the Secret here: the test keeps files in sync with it.
	dir := t.TempDir()
	syncCtx, stopSync := context.WithCancel(context.Background())
	var syncWG sync.WaitGroup
	t.Cleanup(func() { stopSync(); syncWG.Wait() })
	writeFiles := func(s *corev1.Secret) {
		for _, k := range []string{"tls.crt", "tls.key"} {
			tmp := filepath.Join(dir, "."+k)
			if err := os.WriteFile(tmp, s.Data[k], 0o600); err == nil {
				os.Rename(tmp, filepath.Join(dir, k))
			}
		}
	}
	writeFiles(secret)
	syncWG.Go(func() {
		last := secret.ResourceVersion
		for syncCtx.Err() == nil {
			s, err := cp.Clientset.CoreV1().Secrets("podmeta-system").Get(syncCtx, "podmeta-webhook-tls", metav1.GetOptions{})
			if err == nil && s.ResourceVersion != last {
				last = s.ResourceVersion
				writeFiles(s)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	_, port, _ := net.SplitHostPort(addr)
	p, err := cp.StartPodmeta(ctx, binary, "--port="+port, "--cert-mode=cert-manager", "--cert-dir="+dir, "--cert-check-interval=1s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("podmeta did not stop cleanly: %v", err)
		}
		if t.Failed() {
			t.Logf("--- podmeta log ---\n%s", p.Logs())
		}
	})

	ns := "cert-manager-load"
	if err := cp.EnsureNamespace(ctx, ns, map[string]string{testLabel: "cert-manager"}, nil); err != nil {
		t.Fatal(err)
	}
	serials := map[string]bool{}
	var mu sync.Mutex
	var created, failed, notInjected atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	deadline := start.Add(15 * time.Second)
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			tick := time.NewTicker(time.Second / 15)
			defer tick.Stop()
			for i := 0; time.Now().Before(deadline); i++ {
				<-tick.C
				pod := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("load-%d-%d", w, i)},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
				}
				got, err := cp.Clientset.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
				switch {
				case err != nil:
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				case got.Annotations[webhook.AnnotationStatus] == "":
					notInjected.Add(1)
				default:
					created.Add(1)
				}
			}
		})
	}
	wg.Go(func() {
		for time.Now().Before(deadline) {
			if c, err := harness.ServedCertificate(addr); err == nil {
				mu.Lock()
				serials[c.SerialNumber.String()] = true
				mu.Unlock()
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	wg.Wait()
	elapsed := time.Since(start)
	total := created.Load() + failed.Load() + notInjected.Load()
	t.Logf("%d pods in %s (%.1f/s), %d failed, %d not injected; %d serving certificates observed",
		total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds(), failed.Load(), notInjected.Load(), len(serials))
	if failed.Load() > 0 || notInjected.Load() > 0 {
		t.Errorf("%d failed creations (first: %v), %d pods not injected", failed.Load(), firstErr.Load(), notInjected.Load())
	}
	if len(serials) < 2 {
		t.Errorf("%d serving certificates served, want a renewal (>= 2)", len(serials))
	}
	// The served certificate verifies against the injected caBundle.
	got, err := whcs.Get(ctx, whc.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	served, err := harness.ServedCertificate(addr)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(got.Webhooks[0].ClientConfig.CABundle)
	if _, err := served.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Errorf("served certificate does not verify against the injected caBundle: %v", err)
	}
}

func eventually(t *testing.T, timeout time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if last = cond(); last == "" {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("condition not met within %s: %s", timeout, last)
}
