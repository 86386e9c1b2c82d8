package test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podmeta/podmeta/test/harness"
)

// Security issue 16, finding 4, end to end: the shared test podmeta (default
// --max-in-flight, --body-read-timeout, --namespace-wait and --max-namespace-waits)
// behind the real kube-apiserver, with direct callers on its port.

// podmetaAddr and podmetaTLS reach the shared podmeta's serving port directly, as any
// caller in the cluster network could.
func podmetaAddr() string {
	wio := cp.Env.WebhookInstallOptions
	return net.JoinHostPort(wio.LocalServingHost, strconv.Itoa(wio.LocalServingPort))
}

func podmetaTLS() *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cp.Env.WebhookInstallOptions.LocalServingCAData)
	return &tls.Config{RootCAs: pool, ServerName: cp.Env.WebhookInstallOptions.LocalServingHost}
}

// With 150 connections that sent headers and "{" and then idle, a pod created through
// the apiserver in an opted-in namespace is still injected (before, the first 100 held
// every in-flight slot and the apiserver's call got 429: failurePolicy Ignore admitted
// the pod unmutated).
func TestSlowClientsDoNotBlockAdmissions(t *testing.T) {
	ns := namespace(t, nil, nil)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 150 {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", podmetaAddr(), podmetaTLS())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		fmt.Fprintf(c, "POST /mutate-v1-pod HTTP/1.1\r\nHost: podmeta\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
	}
	time.Sleep(300 * time.Millisecond) // every slow request is in podmeta's handler
	for i := range 3 {
		start := time.Now()
		got := create(t, ns, pod(fmt.Sprintf("next-to-slow-%d", i), nil))
		t.Logf("pod %d created in %s with 150 slow connections open", i, time.Since(start))
		if !injected(got) {
			t.Fatalf("pod %d not injected while 150 slow connections were open", i)
		}
	}
	// And the slow ones are cut off at --body-read-timeout (3 s), not held.
	start := time.Now()
	_ = conns[0].SetReadDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(conns[0])
	t.Logf("a slow connection was answered and closed %s after the pods: %q", time.Since(start), firstLine(b))
	if m, err := podmeta.Metrics(); err == nil {
		t.Logf("podmeta after 150 slow connections: %s", memoryFigures(m))
	}
	if !bytes.HasPrefix(b, []byte("HTTP/1.1 408")) {
		t.Errorf("slow connection got %q, want 408", firstLine(b))
	}
}

func firstLine(b []byte) string {
	l, _, _ := strings.Cut(string(b), "\r\n")
	return l
}

// reviewFor is the recorded typical pod review, naming namespace ns.
func reviewFor(t *testing.T, ns string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(harness.Root(), "webhook", "testdata", "admission-reviews", "typical.json"))
	if err != nil {
		t.Fatal(err)
	}
	var r map[string]any
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	req := r["request"].(map[string]any)
	req["namespace"] = ns
	req["object"].(map[string]any)["metadata"].(map[string]any)["namespace"] = ns
	out, _ := json.Marshal(r)
	return out
}

// With 150 direct callers (more than --max-in-flight) sending reviews that name
// namespaces which do not exist, as fast as they can, for 3 seconds, pods created
// through the apiserver are still injected promptly, nothing is shed, and the callers'
// waits are bounded (before, each such review held a slot for --namespace-wait, 1 s,
// and ~100 a second filled every slot).
func TestUnknownNamespacesDoNotBlockAdmissions(t *testing.T) {
	ns := namespace(t, nil, nil)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: podmetaTLS(), MaxIdleConnsPerHost: 150}}
	defer client.CloseIdleConnections()
	url := "https://" + podmetaAddr() + "/mutate-v1-pod"
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	var sent, slow, shed atomic.Int64
	var n atomic.Int64
	var wg sync.WaitGroup
	for range 150 {
		wg.Go(func() {
			for ctx.Err() == nil {
				body := reviewFor(t, fmt.Sprintf("ghost-%d", n.Add(1)))
				start := time.Now()
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				sent.Add(1)
				if time.Since(start) > 500*time.Millisecond {
					slow.Add(1)
				}
				if resp.StatusCode == http.StatusTooManyRequests {
					shed.Add(1)
				}
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	for i := range 5 {
		start := time.Now()
		got := create(t, ns, pod(fmt.Sprintf("next-to-ghosts-%d", i), nil))
		took := time.Since(start)
		t.Logf("pod %d created in %s during the unknown-namespace flood", i, took)
		if !injected(got) {
			t.Errorf("pod %d not injected during the unknown-namespace flood", i)
		}
	}
	wg.Wait()
	t.Logf("%d reviews naming unknown namespaces answered in 3 s by 150 callers: %d took over 500 ms, %d got 429", sent.Load(), slow.Load(), shed.Load())
	if shed.Load() > 0 {
		t.Errorf("%d requests shed: unknown-namespace waits filled the in-flight slots", shed.Load())
	}
	m, err := podmeta.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("podmeta after the flood: %s", memoryFigures(m))
	if !strings.Contains(m, `podmeta_namespace_lookups_total{result="overflow"}`) || strings.Contains(m, `podmeta_namespace_lookups_total{result="overflow"} 0`+"\n") {
		t.Errorf("no overflow counted in podmeta_namespace_lookups_total")
	}
}

// memoryFigures picks podmeta's resident and heap sizes out of its metrics text.
func memoryFigures(metrics string) string {
	var out []string
	for _, line := range strings.Split(metrics, "\n") {
		for _, name := range []string{"process_resident_memory_bytes ", "go_memstats_heap_inuse_bytes ", "go_memstats_sys_bytes "} {
			if strings.HasPrefix(line, name) {
				var v float64
				fmt.Sscanf(strings.TrimPrefix(line, name), "%g", &v)
				out = append(out, fmt.Sprintf("%s%.1f MiB", name, v/(1<<20)))
			}
		}
	}
	return strings.Join(out, ", ")
}
