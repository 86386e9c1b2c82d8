package test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/certs"
	"github.com/podmeta/podmeta/test/harness"
)

// certsTestLabel selects a test namespace for one test's own webhook configuration;
// the namespaces are not opted in to the shared podmeta.
const certsTestLabel = "certs-test.podmeta.io/name"

// certServer is a second podmeta with self-managed certificates behind its own copy of
// the shipped webhook configuration (failurePolicy Fail, so a TLS failure surfaces as a
// failed creation), limited to one namespace.
type certServer struct {
	name, ns, secret, whc string
	addr                  string
	flags                 []string
}

// newCertServer prepares RBAC, the empty Secret, the namespace and a webhook
// configuration whose caBundle is garbage: podmeta must write it.
func newCertServer(t *testing.T, name string, flags ...string) *certServer {
	t.Helper()
	ctx := t.Context()
	s := &certServer{name: name, secret: "podmeta-tls-" + name, whc: "podmeta-" + name, addr: harness.FreeAddr()}
	if err := cp.ApplyCertsRBAC(ctx, s.secret, s.whc); err != nil {
		t.Fatal(err)
	}
	s.ns = namespace(t, map[string]string{certsTestLabel: name}, nil)
	whc, err := harness.ShippedWebhookConfiguration()
	if err != nil {
		t.Fatal(err)
	}
	whc.Name = s.whc
	fail := admissionregistrationv1.Fail
	for i := range whc.Webhooks {
		wh := &whc.Webhooks[i]
		url := "https://" + s.addr + *wh.ClientConfig.Service.Path
		wh.ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: []byte("garbage")}
		wh.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{certsTestLabel: name}}
		wh.FailurePolicy = &fail
	}
	api := cp.Clientset.AdmissionregistrationV1().MutatingWebhookConfigurations()
	if _, err := api.Create(ctx, whc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { api.Delete(context.Background(), s.whc, metav1.DeleteOptions{}) })
	_, port, _ := net.SplitHostPort(s.addr)
	s.flags = append(append([]string{}, podmetaFlags...),
		"--port="+port, "--cert-mode=self-managed", "--cert-secret="+s.secret,
		"--webhook-config-name="+s.whc, "--extra-sans=127.0.0.1", "--cert-check-interval=1s")
	s.flags = append(s.flags, flags...)
	return s
}

// start runs a podmeta replica and stops it when the test ends.
func (s *certServer) start(t *testing.T) *harness.Podmeta {
	t.Helper()
	p, err := cp.StartPodmeta(context.Background(), binary, s.flags...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("podmeta %s did not stop cleanly: %v", s.name, err)
		}
		if t.Failed() {
			t.Logf("--- podmeta %s log ---\n%s", s.name, p.Logs())
		}
	})
	return p
}

func (s *certServer) material(t *testing.T) *certs.Material {
	t.Helper()
	sec, err := cp.Clientset.CoreV1().Secrets("podmeta-system").Get(t.Context(), s.secret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := certs.ParseSecret(sec.Data, sec.Annotations)
	if err != nil {
		t.Fatalf("Secret %s: %v", s.secret, err)
	}
	return m
}

// bundles returns the caBundle of every webhook in the server's configuration.
func (s *certServer) bundles(t *testing.T) [][]*x509.Certificate {
	t.Helper()
	b, err := s.tryBundles(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (s *certServer) tryBundles(ctx context.Context) ([][]*x509.Certificate, error) {
	whc, err := cp.Clientset.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, s.whc, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var out [][]*x509.Certificate
	for _, wh := range whc.Webhooks {
		cas, err := parseBundle(wh.ClientConfig.CABundle)
		if err != nil {
			return nil, fmt.Errorf("caBundle of %s: %w", wh.Name, err)
		}
		out = append(out, cas)
	}
	return out, nil
}

func (s *certServer) served(t *testing.T) *x509.Certificate {
	t.Helper()
	c, err := harness.ServedCertificate(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// loadResult is what a load run saw.
type loadResult struct {
	created, failed, notInjected int
	errs                         []string
	elapsed                      time.Duration
	serials, issuers             map[string]bool // served certificates and their CAs, sampled
}

func (r loadResult) rate() float64 { return float64(r.created+r.failed) / r.elapsed.Seconds() }

// runLoad creates pods in ns from two goroutines at about perSecond in all, for d, and
// meanwhile samples the certificate served at addr every 100ms.
func runLoad(t *testing.T, ns, addr string, perSecond int, d time.Duration) loadResult {
	t.Helper()
	ctx := t.Context()
	res := loadResult{serials: map[string]bool{}, issuers: map[string]bool{}}
	var mu sync.Mutex
	var n atomic.Int64
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	const workers = 2
	for w := range workers {
		wg.Go(func() {
			tick := time.NewTicker(time.Second * workers / time.Duration(perSecond))
			defer tick.Stop()
			for time.Now().Before(deadline) {
				<-tick.C
				name := fmt.Sprintf("load-%d-%d", w, n.Add(1))
				got, err := cp.Clientset.CoreV1().Pods(ns).Create(ctx, pod(name, nil), metav1.CreateOptions{})
				mu.Lock()
				switch {
				case err != nil:
					res.failed++
					if len(res.errs) < 5 {
						res.errs = append(res.errs, err.Error())
					}
				case !injected(got):
					res.created++
					res.notInjected++
				default:
					res.created++
				}
				mu.Unlock()
			}
		})
	}
	wg.Go(func() {
		for time.Now().Before(deadline) {
			if c, err := harness.ServedCertificate(addr); err == nil {
				mu.Lock()
				res.serials[c.SerialNumber.String()] = true
				res.issuers[string(c.AuthorityKeyId)] = true
				mu.Unlock()
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}

func (r loadResult) check(t *testing.T) {
	t.Helper()
	t.Logf("%d pods in %s (%.1f/s), %d failed, %d not injected; %d serving certificates from %d CAs observed",
		r.created+r.failed, r.elapsed.Round(time.Millisecond), r.rate(), r.failed, r.notInjected, len(r.serials), len(r.issuers))
	if r.failed > 0 || r.notInjected > 0 {
		t.Errorf("%d failed creations, %d pods without %s; first errors: %s", r.failed, r.notInjected, "podmeta.io/status", strings.Join(r.errs, "; "))
	}
	if r.rate() < 20 {
		t.Errorf("load was %.1f creations/s, want >= 20", r.rate())
	}
}

// 1. Self-managed bootstrap from nothing: an empty Secret and a garbage caBundle. podmeta
// fills both, the apiserver's calls succeed through the caBundle podmeta wrote, the
// expiry metric shows the served certificate, and a restarted podmeta reuses the Secret.
func TestCertSelfManagedBootstrap(t *testing.T) {
	s := newCertServer(t, "bootstrap")
	p := s.start(t)

	m := s.material(t)
	for i, b := range s.bundles(t) {
		if len(b) != 1 || !b[0].Equal(m.CA) {
			t.Fatalf("webhook %d caBundle holds %d CAs, want exactly the Secret's CA", i, len(b))
		}
	}
	served := s.served(t)
	if !served.Equal(m.Cert) {
		t.Fatal("served certificate is not the Secret's")
	}
	if got := create(t, s.ns, pod("through-self-managed-ca", nil)); !injected(got) {
		t.Fatal("pod not injected through the self-managed caBundle")
	}
	metrics, err := p.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%s %s", certs.MetricExpiry, strconv.FormatFloat(float64(served.NotAfter.Unix()), 'g', -1, 64))
	if !strings.Contains(metrics, want) {
		t.Errorf("metrics lack %q", want)
	}

	// Restart: same CA, same serving certificate.
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	s.start(t)
	again := s.material(t)
	if !again.CA.Equal(m.CA) || !again.Cert.Equal(m.Cert) || !s.served(t).Equal(served) {
		t.Errorf("restart replaced the certificates: CA serial %s -> %s, cert serial %s -> %s",
			m.CA.SerialNumber, again.CA.SerialNumber, m.Cert.SerialNumber, again.Cert.SerialNumber)
	}
	if got := create(t, s.ns, pod("after-restart", nil)); !injected(got) {
		t.Fatal("pod not injected after restart")
	}
}

// A missing Secret cannot be created under the shipped RBAC (create cannot be limited
// by name): podmeta exits and says what to do.
func TestCertSelfManagedMissingSecret(t *testing.T) {
	s := newCertServer(t, "missing")
	if err := cp.Clientset.CoreV1().Secrets("podmeta-system").Delete(t.Context(), s.secret, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err := cp.StartPodmeta(t.Context(), binary, s.flags...)
	if err == nil {
		p.Stop()
		t.Fatal("podmeta became ready without its Secret")
	}
	if !strings.Contains(err.Error(), "does not exist and podmeta may not create it") {
		t.Errorf("podmeta did not explain the missing Secret:\n%v", err)
	}
}

// 2. Serving-certificate rotation under load: the certificate rotates about every 2s
// while pods are created at 30/s: no failed creation, no pod without injection.
func TestCertServingRotationUnderLoad(t *testing.T) {
	s := newCertServer(t, "rotation", "--cert-validity=5s", "--cert-renew-before=3s")
	s.start(t)
	before := s.material(t)
	res := runLoad(t, s.ns, s.addr, 30, 12*time.Second)
	res.check(t)
	if rotations := len(res.serials) - 1; rotations < 3 {
		t.Errorf("%d serving-certificate rotations observed, want >= 3", rotations)
	}
	if after := s.material(t); !after.CA.Equal(before.CA) {
		t.Error("a serving-certificate renewal changed the CA")
	}
}

// 3. CA rotation under load: the CA is due every 6s; each rotation first trusts the new
// CA, then serves from it, then drops the old one. No failed creation.
func TestCertCARotationUnderLoad(t *testing.T) {
	s := newCertServer(t, "ca-rotation", "--ca-validity=12s", "--ca-renew-before=6s", "--cert-validity=6s", "--cert-renew-before=3s")
	s.start(t)
	var maxCAs atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			bundles, _ := s.tryBundles(context.Background())
			for _, b := range bundles {
				if n := int64(len(b)); n > maxCAs.Load() {
					maxCAs.Store(n)
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	res := runLoad(t, s.ns, s.addr, 30, 15*time.Second)
	<-done
	res.check(t)
	if rotations := len(res.issuers) - 1; rotations < 2 {
		t.Errorf("%d CA rotations observed in served certificates, want >= 2", rotations)
	}
	if maxCAs.Load() != 2 {
		t.Errorf("the caBundle held at most %d CAs, want 2 during the overlap", maxCAs.Load())
	}
}

// 4. Two replicas starting at once on one empty Secret converge on one CA: both serve
// certificates it signed, and the caBundle holds only it.
func TestCertTwoReplicasConverge(t *testing.T) {
	s := newCertServer(t, "replicas")
	second := harness.FreeAddr()
	_, port2, _ := net.SplitHostPort(second)
	flags2 := append(append([]string{}, s.flags...), "--port="+port2)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	procs := make([]*harness.Podmeta, 2)
	for i, flags := range [][]string{s.flags, flags2} {
		wg.Go(func() { procs[i], errs[i] = cp.StartPodmeta(context.Background(), binary, flags...) })
	}
	wg.Wait()
	for i, p := range procs {
		if p != nil {
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("--- replica %d log ---\n%s", i, p.Logs())
				}
				p.Stop()
			})
		}
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
	}
	m := s.material(t)
	for i, addr := range []string{s.addr, second} {
		c, err := harness.ServedCertificate(addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.CheckSignatureFrom(m.CA); err != nil {
			t.Errorf("replica %d serves a certificate not signed by the Secret's CA: %v", i, err)
		}
	}
	for i, b := range s.bundles(t) {
		if len(b) != 1 || !b[0].Equal(m.CA) {
			t.Errorf("webhook %d caBundle holds %d CAs, want only the Secret's CA", i, len(b))
		}
	}
	if got := create(t, s.ns, pod("two-replicas", nil)); !injected(got) {
		t.Error("pod not injected")
	}
}

// parseBundle returns the certificates of a PEM bundle.
func parseBundle(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		if block, b = pem.Decode(b); block == nil {
			return out, nil
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}
