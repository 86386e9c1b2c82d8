package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/go-logr/logr"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue makes a leaf certificate for usage (client or server auth).
func (ca *testCA) issue(t *testing.T, cn string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// With --client-ca-file, the webhook server (controller-runtime's, with podmeta's TLS
// options, as runWebhook builds it) refuses a client without a certificate or with
// one from another CA, serves one with a certificate from the file's CA, and picks up
// a changed file. Its readiness check still passes.
func TestClientAuth(t *testing.T) {
	serving := newTestCA(t, "serving-ca")
	apiserverCA, otherCA := newTestCA(t, "apiserver-client-ca"), newTestCA(t, "other-ca")
	dir := t.TempDir()
	caFile := filepath.Join(dir, "client-ca.crt")
	if err := os.WriteFile(caFile, apiserverCA.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	cas, err := loadClientCAs(caFile, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	cas.interval = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go cas.Start(ctx)

	servingCert := serving.issue(t, "podmeta-webhook.podmeta-system.svc", x509.ExtKeyUsageServerAuth)
	port := freePort(t)
	srv := crwebhook.NewServer(crwebhook.Options{
		Host: "127.0.0.1", Port: port,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) {
			c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &servingCert, nil }
			c.MinVersion = tls.VersionTLS12
			c.NextProtos = []string{"http/1.1"}
		}, cas.tlsOption},
	})
	srv.Register(MutatePath, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	go srv.Start(ctx)
	ready := srv.StartedChecker()
	for deadline := time.Now().Add(5 * time.Second); ready(nil) != nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("webhook server not ready: %v", ready(nil))
		}
	}

	roots := x509.NewCertPool()
	roots.AddCert(serving.cert)
	call := func(cert *tls.Certificate, maxVersion uint16) error {
		cfg := &tls.Config{RootCAs: roots, MaxVersion: maxVersion}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 5 * time.Second}
		defer c.CloseIdleConnections()
		resp, err := c.Post("https://127.0.0.1:"+strconv.Itoa(port)+MutatePath, "application/json", nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("HTTP %d", resp.StatusCode)
		}
		return nil
	}
	apiserver := apiserverCA.issue(t, "podmeta-webhook.podmeta-system.svc", x509.ExtKeyUsageClientAuth)
	other := otherCA.issue(t, "podmeta-webhook.podmeta-system.svc", x509.ExtKeyUsageClientAuth)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		if err := call(nil, v); err == nil {
			t.Errorf("TLS %x: a client without a certificate was served", v)
		} else {
			t.Logf("TLS %x, no client certificate: %v", v, err)
		}
		if err := call(&other, v); err == nil {
			t.Errorf("TLS %x: a client with a certificate from another CA was served", v)
		}
		if err := call(&apiserver, v); err != nil {
			t.Errorf("TLS %x: the apiserver's client certificate was refused: %v", v, err)
		}
	}

	// The file changes (a rotated Secret): the new CA's clients are served, the old not.
	if err := os.WriteFile(caFile, otherCA.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); call(&other, 0) != nil; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a client of the new CA is still refused after the CA file changed")
		}
	}
	if err := call(&apiserver, 0); err == nil {
		t.Error("a client of the removed CA is still served")
	}
	// An unusable file keeps the CAs loaded before.
	if err := os.WriteFile(caFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := call(&other, 0); err != nil {
		t.Errorf("after the CA file became garbage: %v", err)
	}
	if err := ready(nil); err != nil {
		t.Errorf("readiness with client authentication: %v", err)
	}
}

func TestClientAuthBadFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "ca.crt")
	if _, err := loadClientCAs(f, logr.Discard()); err == nil {
		t.Error("a missing file was accepted")
	}
	_ = os.WriteFile(f, []byte("not PEM"), 0o600)
	if _, err := loadClientCAs(f, logr.Discard()); err == nil {
		t.Error("a file without certificates was accepted")
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
