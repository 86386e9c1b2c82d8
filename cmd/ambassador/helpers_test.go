package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// saDir is a service-account volume laid out the way the kubelet's atomic writer
// does it: the files live in a timestamped directory, ..data points at it, and each
// visible name is a symlink into ..data. update swaps ..data with one rename.
type saDir struct {
	t   *testing.T
	dir string
	gen int
}

func newSADir(t *testing.T, files map[string]string) *saDir {
	t.Helper()
	d := &saDir{t: t, dir: t.TempDir()}
	d.update(files)
	for _, name := range []string{"token", "ca.crt"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(d.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func (d *saDir) path(name string) string { return filepath.Join(d.dir, name) }

// update publishes files as the volume's new content, atomically.
func (d *saDir) update(files map[string]string) {
	d.t.Helper()
	d.gen++
	ts := fmt.Sprintf("..2026_01_01_00_00_00.%d", d.gen)
	if err := os.Mkdir(filepath.Join(d.dir, ts), 0o755); err != nil {
		d.t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(d.dir, ts, name), []byte(content), 0o644); err != nil {
			d.t.Fatal(err)
		}
	}
	old, _ := os.Readlink(filepath.Join(d.dir, "..data"))
	tmp := filepath.Join(d.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		d.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(d.dir, "..data")); err != nil {
		d.t.Fatal(err)
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(d.dir, old)); err != nil {
			d.t.Fatal(err)
		}
	}
}

// syncBuffer collects log output; background goroutines may still write to it after
// the test ended, which t.Output would not allow.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The tokens of all tests share this prefix, so the fixture can check that no token
// ever reaches the log.
const tokenPrefix = "secret-token-"

type fixtureOptions struct {
	upstream http.Handler
	// upstreamTLS, if set, is the fake API server's TLS config and caPEM the CA bundle
	// written for the ambassador; otherwise httptest's own certificate is used.
	upstreamTLS *tls.Config
	caPEM       string
	http2       bool              // the fake API server speaks HTTP/2, like a real one
	files       map[string]string // initial volume content; default token + CA
	config      func(*Config)
}

type fixture struct {
	upstream  *httptest.Server
	sa        *saDir
	s         *server
	logs      *syncBuffer
	proxyURL  string
	healthURL string
	client    *http.Client
	cancel    context.CancelFunc
	done      chan error
}

// start runs a fake API server and an in-process ambassador in front of it.
func start(t *testing.T, o fixtureOptions) *fixture {
	t.Helper()
	if o.upstream == nil {
		o.upstream = echoHandler()
	}
	up := httptest.NewUnstartedServer(o.upstream)
	up.Config.ErrorLog = log.New(io.Discard, "", 0) // the TLS tests provoke handshake errors
	if o.upstreamTLS != nil {
		up.TLS = o.upstreamTLS
	}
	up.EnableHTTP2 = o.http2
	up.StartTLS()
	t.Cleanup(up.Close)
	if o.caPEM == "" {
		o.caPEM = string(pemCert(up.Certificate().Raw))
	}
	if o.files == nil {
		o.files = map[string]string{"token": tokenPrefix + "1\n", "ca.crt": o.caPEM}
	}
	sa := newSADir(t, o.files)

	cfg := DefaultConfig()
	cfg.Upstream = up.URL
	cfg.TokenFile = sa.path("token")
	cfg.CAFile = sa.path("ca.crt")
	cfg.Port, cfg.HealthPort = 0, 0
	cfg.ReadyCheckInterval = 20 * time.Millisecond
	cfg.ShutdownTimeout = 10 * time.Second
	cfg.LogLevel = slog.LevelDebug
	if o.config != nil {
		o.config(&cfg)
	}
	logs := &syncBuffer{}
	s, err := newServer(cfg, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: cfg.LogLevel})))
	if err != nil {
		t.Fatal(err)
	}
	proxyLn := listen(t)
	healthLn := listen(t)
	ctx, cancel := context.WithCancel(t.Context())
	f := &fixture{
		upstream:  up,
		sa:        sa,
		s:         s,
		logs:      logs,
		proxyURL:  "http://" + proxyLn.Addr().String(),
		healthURL: "http://" + healthLn.Addr().String(),
		client:    &http.Client{Transport: &http.Transport{Proxy: nil}},
		cancel:    cancel,
		done:      make(chan error, 1),
	}
	go func() { f.done <- s.serve(ctx, proxyLn, healthLn) }()
	t.Cleanup(func() {
		f.client.CloseIdleConnections()
		if err := f.stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
		if strings.Contains(logs.String(), tokenPrefix) {
			t.Errorf("a token was logged:\n%s", logs)
		}
		if t.Failed() {
			t.Logf("ambassador logs:\n%s", logs)
		}
	})
	return f
}

// stop shuts the ambassador down and returns serve's result. It may be called more
// than once.
func (f *fixture) stop() error {
	f.cancel()
	select {
	case err := <-f.done:
		f.done <- err // for a later call
		return err
	case <-time.After(30 * time.Second):
		return fmt.Errorf("serve did not return within 30s of shutdown")
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// echoHandler answers with what the API server would need to know about a request.
func echoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(echo{
			Method:        r.Method,
			Proto:         r.Proto,
			Path:          r.URL.Path,
			RawQuery:      r.URL.RawQuery,
			Authorization: r.Header.Get("Authorization"),
			Host:          r.Host,
			XForwardedFor: r.Header.Get("X-Forwarded-For"),
			Body:          string(body),
		})
	})
}

type echo struct {
	Method, Proto, Path, RawQuery, Authorization, Host, XForwardedFor, Body string
}

type response struct {
	code   int
	header http.Header
	body   string
}

// do sends one request to the proxy. host, if set, replaces the Host header.
func (f *fixture) do(t *testing.T, method, path string, header http.Header, body string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, f.proxyURL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body == "" {
		req.Body = http.NoBody
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if h := header.Get("Host"); h != "" {
		req.Host = h
	}
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return response{code: resp.StatusCode, header: resp.Header, body: string(b)}
}

// raw writes a hand-made request to the proxy, for what http.Client cannot send.
func (f *fixture) raw(t *testing.T, request string) response {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(f.proxyURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{code: resp.StatusCode, header: resp.Header, body: string(b)}
}

// get returns the status code and body of a GET on url.
func (f *fixture) get(t *testing.T, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// echoed decodes the echo of a forwarded request.
func echoed(t *testing.T, r response) echo {
	t.Helper()
	if r.code != http.StatusOK {
		t.Fatalf("code %d, want 200; body %s", r.code, r.body)
	}
	var e echo
	if err := json.Unmarshal([]byte(r.body), &e); err != nil {
		t.Fatalf("not an echo: %v: %s", err, r.body)
	}
	return e
}

// checkStatus asserts that r is the ambassador's Status refusal with code and reason.
func checkStatus(t *testing.T, r response, code int, reason string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("code %d, want %d; body %s", r.code, code, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(r.body), &got); err != nil {
		t.Fatalf("body is not JSON: %v: %q", err, r.body)
	}
	msg, _ := got["message"].(string)
	if !strings.HasPrefix(msg, "podmeta-ambassador: ") || len(msg) < len("podmeta-ambassador: ")+10 {
		t.Errorf("message %q does not explain the refusal", msg)
	}
	want := map[string]any{
		"kind": "Status", "apiVersion": "v1", "metadata": map[string]any{},
		"status": "Failure", "message": msg, "reason": reason, "code": float64(code),
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Status body\n got %v\nwant %v", got, want)
	}
}

// eventually polls cond until it returns nil, failing the test after a deadline.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %v after 15s", what, err)
		}
		time.Sleep(5 * time.Millisecond) // poll interval, not synchronization
	}
}

// testCA is a throwaway certificate authority.
type testCA struct {
	t    *testing.T
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{t: t, cert: cert, key: key, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// issue returns a serving certificate for the given IP addresses and DNS names.
func (ca *testCA) issue(ips []net.IP, dnsNames ...string) *tls.Certificate {
	ca.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		ca.t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  ips,
		DNSNames:     dnsNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
