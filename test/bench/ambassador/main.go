// Command ambassador benchmarks podmeta-ambassador against `kubectl proxy`, in one run,
// on one local control plane (test/harness), with the same ServiceAccount token:
//
//   - binary size (the ambassador built as in the Dockerfile: CGO_ENABLED=0 -trimpath
//     -ldflags "-s -w"; kubectl as built by hack/build-k8s.sh, also stripped);
//   - idle RSS (VmRSS once ready, before any proxied request), peak RSS under load
//     and RSS after the load;
//   - a closed loop of -concurrency keep-alive clients, each sending
//     GET /api/v1/namespaces/bench/pods/target through the proxy for -duration:
//     requests/s, p50/p90/p99 latency, errors (transport errors and non-200 answers)
//     and the proxy's CPU time per 1,000 requests.
//
// The two proxies run side by side and take turns: -rounds rounds, alternating which
// goes first, so that drift on a shared machine hits both. Every request goes to
// 127.0.0.1. Run with KUBEBUILDER_ASSETS set (make k8s):
//
//	KUBEBUILDER_ASSETS=$PWD/bin/k8s/v1.37.2 go run ./test/bench/ambassador
package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/test/harness"
)

const (
	namespace = "bench"
	podName   = "target"
)

func main() {
	duration := flag.Duration("duration", 5*time.Second, "load duration per proxy per round")
	warmup := flag.Duration("warmup", time.Second, "unmeasured load before each measured run")
	concurrency := flag.Int("concurrency", 50, "concurrent keep-alive clients")
	rounds := flag.Int("rounds", 6, "rounds; each proxy is measured once per round, alternating which goes first")
	maxRequests := flag.Int("max-requests", 2_000_000, "upper bound on requests per measured run")
	ambassadorBinary := flag.String("ambassador-binary", "", "benchmark this ambassador binary instead of building ./cmd/ambassador")
	flag.Parse()
	if err := run(*duration, *warmup, *concurrency, *rounds, *maxRequests, *ambassadorBinary); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// proxy is one running proxy process under test.
type proxy struct {
	name   string
	binary string
	cmd    *exec.Cmd
	url    string // http://127.0.0.1:<port>
	done   chan error

	idleRSS, peakRSS, afterRSS int64 // KiB
	results                    []result
}

// result is one measured run.
type result struct {
	round      int
	requests   int
	errors     int
	firstError string
	elapsed    time.Duration
	latencies  []time.Duration // sorted
	cpu        time.Duration   // the proxy's user+system CPU time during the run
}

func run(duration, warmup time.Duration, concurrency, rounds, maxRequests int, ambBin string) error {
	ctx := context.Background()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return errors.New("KUBEBUILDER_ASSETS is not set (e.g. KUBEBUILDER_ASSETS=$PWD/bin/k8s/v1.37.2)")
	}
	kubectl := filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
	if _, err := os.Stat(kubectl); err != nil {
		return fmt.Errorf("no kubectl next to kube-apiserver: %w (make k8s builds it)", err)
	}
	dir, err := os.MkdirTemp("", "podmeta-bench-ambassador")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	if ambBin == "" {
		ambBin = filepath.Join(dir, "ambassador")
		build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", ambBin, "./cmd/ambassador")
		build.Dir = harness.Root()
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("build ambassador: %w\n%s", err, out)
		}
	}

	fmt.Fprintln(os.Stderr, "starting kube-apiserver and etcd ...")
	cp, err := harness.Start()
	if err != nil {
		return err
	}
	defer cp.Stop()
	token, err := setup(ctx, cp)
	if err != nil {
		return err
	}
	host := strings.TrimSuffix(cp.Config.Host, "/")
	if !strings.Contains(host, "://") {
		host = "https://" + host
	}

	// The ambassador's files, as the kubelet lays out a projected volume.
	saDir := filepath.Join(dir, "serviceaccount")
	ts := filepath.Join(saDir, "..2026_01_01_00_00_00.000000001")
	if err := os.MkdirAll(ts, 0o755); err != nil {
		return err
	}
	for name, data := range map[string][]byte{"token": []byte(token), "ca.crt": cp.Config.CAData} {
		if err := os.WriteFile(filepath.Join(ts, name), data, 0o644); err != nil {
			return err
		}
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(saDir, name)); err != nil {
			return err
		}
	}
	if err := os.Symlink(filepath.Base(ts), filepath.Join(saDir, "..data")); err != nil {
		return err
	}

	// kubectl gets the same identity: a kubeconfig with the same token and CA.
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, host, cp.Config.CAData, token); err != nil {
		return err
	}

	amb := &proxy{name: "podmeta-ambassador", binary: ambBin}
	kp := &proxy{name: "kubectl proxy", binary: kubectl}
	if err := amb.start(ambBin, regexp.MustCompile(`"proxy":"127\.0\.0\.1:(\d+)"`),
		"--port=0", "--health-port=0", "--health-address=127.0.0.1", "--mode=read-only",
		"--upstream="+host, "--token-file="+filepath.Join(saDir, "token"), "--ca-file="+filepath.Join(saDir, "ca.crt")); err != nil {
		return err
	}
	defer amb.stop()
	if err := kp.start(kubectl, regexp.MustCompile(`Starting to serve on 127\.0\.0\.1:(\d+)`),
		"proxy", "--kubeconfig="+kubeconfig, "--address=127.0.0.1", "--port=0"); err != nil {
		return err
	}
	defer kp.stop()

	path := "/api/v1/namespaces/" + namespace + "/pods/" + podName
	for _, p := range []*proxy{amb, kp} {
		if err := p.waitReady(path); err != nil {
			return err
		}
		// Idle: ready, no proxied request yet (the ambassador's readiness check has
		// already opened its connection to the API server; kubectl's opens on first use).
		if p.idleRSS, err = rss(p.cmd.Process.Pid); err != nil {
			return err
		}
	}

	for r := range rounds {
		order := []*proxy{amb, kp}
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, p := range order {
			fmt.Fprintf(os.Stderr, "round %d: %s: warm-up %s, load %s at %d clients ...\n", r+1, p.name, warmup, duration, concurrency)
			if warmup > 0 {
				load(p, path, concurrency, warmup, maxRequests, nil)
			}
			res := load(p, path, concurrency, duration, maxRequests, func(kib int64) { p.peakRSS = max(p.peakRSS, kib) })
			res.round = r + 1
			p.results = append(p.results, res)
		}
	}
	for _, p := range []*proxy{amb, kp} {
		if p.afterRSS, err = rss(p.cmd.Process.Pid); err != nil {
			return err
		}
	}
	report(amb, kp, concurrency, duration, rounds)
	return nil
}

// setup creates the namespace, a ServiceAccount allowed to read pods in it, the pod
// the benchmark reads, and returns a token of that ServiceAccount.
func setup(ctx context.Context, cp *harness.ControlPlane) (string, error) {
	// Not labelled podmeta.io/inject: the webhook envtest registered is not called.
	if err := cp.EnsureNamespace(ctx, namespace, nil, nil); err != nil {
		return "", err
	}
	cs := cp.Clientset
	if _, err := cs.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{}); err != nil {
		return "", err
	}
	if _, err := cs.RbacV1().Roles(namespace).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}},
	}, metav1.CreateOptions{}); err != nil {
		return "", err
	}
	if _, err := cs.RbacV1().RoleBindings(namespace).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "app-pod-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pod-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "app", Namespace: namespace}},
	}, metav1.CreateOptions{}); err != nil {
		return "", err
	}
	if _, err := cs.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: podName, Labels: map[string]string{"app": "bench"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	}, metav1.CreateOptions{}); err != nil {
		return "", err
	}
	expiry := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, "app",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return tr.Status.Token, nil
}

// writeKubeconfig writes a kubeconfig (JSON is YAML) with a bearer-token user.
func writeKubeconfig(path, server string, ca []byte, token string) error {
	kc := map[string]any{
		"apiVersion":      "v1",
		"kind":            "Config",
		"clusters":        []any{map[string]any{"name": "bench", "cluster": map[string]any{"server": server, "certificate-authority-data": base64.StdEncoding.EncodeToString(ca)}}},
		"users":           []any{map[string]any{"name": "app", "user": map[string]any{"token": token}}},
		"contexts":        []any{map[string]any{"name": "bench", "context": map[string]any{"cluster": "bench", "user": "app", "namespace": namespace}}},
		"current-context": "bench",
	}
	b, err := json.MarshalIndent(kc, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// start runs the proxy and reads its port from its output.
func (p *proxy) start(bin string, portLine *regexp.Regexp, args ...string) error {
	p.cmd = exec.Command(bin, args...)
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	p.cmd.Stderr = p.cmd.Stdout // both proxies log their address, on different streams
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.done = make(chan error, 1)
	port := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		var lines []string
		for sc.Scan() {
			if m := portLine.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case port <- m[1]:
				default:
				}
			} else if len(lines) < 50 {
				lines = append(lines, sc.Text())
			}
		}
		_, _ = io.Copy(io.Discard, out)
		err := p.cmd.Wait()
		if err != nil {
			err = fmt.Errorf("%w; output:\n%s", err, strings.Join(lines, "\n"))
		}
		p.done <- err
	}()
	select {
	case pt := <-port:
		p.url = "http://127.0.0.1:" + pt
		return nil
	case err := <-p.done:
		p.done <- err
		return fmt.Errorf("%s exited at start: %w", p.name, err)
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s printed no listen address within 30s", p.name)
	}
}

// waitReady polls the benchmark's request until it answers 200.
func (p *proxy) waitReady(path string) error {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		var ok bool
		if last, ok = harness.GetOK(c, p.url+path); ok {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s: GET %s not 200 within 60s: %s", p.name, path, last)
}

func (p *proxy) stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// load runs concurrency keep-alive clients against p for d (at most maxRequests in
// all), sampling the proxy's RSS every 100 ms into sample when it is not nil.
func load(p *proxy, path string, concurrency int, d time.Duration, maxRequests int, sample func(kib int64)) result {
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: concurrency, MaxConnsPerHost: concurrency, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	url := p.url + path

	cpu0 := cpuTime(p.cmd.Process.Pid)
	stopSampling := make(chan struct{})
	var sampler sync.WaitGroup
	if sample != nil {
		sampler.Go(func() {
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				if kib, err := rss(p.cmd.Process.Pid); err == nil {
					sample(kib)
				}
				select {
				case <-stopSampling:
					return
				case <-t.C:
				}
			}
		})
	}

	var (
		issued   atomic.Int64
		mu       sync.Mutex
		all      []time.Duration
		errs     int
		firstErr string
		wg       sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for range concurrency {
		wg.Go(func() {
			lat := make([]time.Duration, 0, 4096)
			var nerr int
			var first string
			for time.Now().Before(deadline) && issued.Add(1) <= int64(maxRequests) {
				t0 := time.Now()
				resp, err := client.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = errors.New(resp.Status)
					}
				}
				lat = append(lat, time.Since(t0))
				if err != nil {
					nerr++
					if first == "" {
						first = err.Error()
					}
				}
			}
			mu.Lock()
			all = append(all, lat...)
			errs += nerr
			if firstErr == "" {
				firstErr = first
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stopSampling)
	sampler.Wait()
	slices.Sort(all)
	return result{requests: len(all), errors: errs, firstError: firstErr, elapsed: elapsed, latencies: all, cpu: cpuTime(p.cmd.Process.Pid) - cpu0}
}

// rss is VmRSS of pid in KiB.
func rss(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// cpuTime is the user+system CPU time of pid so far (/proc/PID/stat, 100 ticks/s).
func cpuTime(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may contain spaces; fields count from after it.
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// loadAvg is the 1, 5 and 15 minute load averages: on a shared machine, the context
// the numbers were taken in.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(data)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// total merges a proxy's runs.
func (p *proxy) total() result {
	var t result
	for _, r := range p.results {
		t.requests += r.requests
		t.errors += r.errors
		t.elapsed += r.elapsed
		t.cpu += r.cpu
		t.latencies = append(t.latencies, r.latencies...)
		if t.firstError == "" {
			t.firstError = r.firstError
		}
	}
	slices.Sort(t.latencies)
	return t
}

func report(amb, kp *proxy, concurrency int, duration time.Duration, rounds int) {
	size := func(p *proxy) int64 {
		fi, err := os.Stat(p.binary)
		if err != nil {
			return 0
		}
		return fi.Size()
	}
	mib := func(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	kib := func(k int64) string { return fmt.Sprintf("%.1f MiB", float64(k)/1024) }
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
	ratio := func(a, b float64) string {
		if b == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f×", a/b)
	}
	ta, tk := amb.total(), kp.total()
	rps := func(r result) float64 { return float64(r.requests) / r.elapsed.Seconds() }
	cpuPerK := func(r result) time.Duration {
		if r.requests == 0 {
			return 0
		}
		return r.cpu * 1000 / time.Duration(r.requests)
	}

	fmt.Printf("\nGET /api/v1/namespaces/%s/pods/%s through each proxy: %d keep-alive clients, %s per proxy per round, %d rounds, same apiserver and token; %d CPUs, %s, load average at the end %s.\n\n",
		namespace, podName, concurrency, duration, rounds, runtime.NumCPU(), runtime.Version(), loadAvg())
	fmt.Println("| | podmeta-ambassador | kubectl proxy | ambassador / kubectl |")
	fmt.Println("|---|---:|---:|---:|")
	row := func(name, a, k, r string) { fmt.Printf("| %s | %s | %s | %s |\n", name, a, k, r) }
	row("binary size (stripped, static)", mib(size(amb)), mib(size(kp)), ratio(float64(size(amb)), float64(size(kp))))
	row("RSS idle (ready)", kib(amb.idleRSS), kib(kp.idleRSS), ratio(float64(amb.idleRSS), float64(kp.idleRSS)))
	row("RSS under load (peak)", kib(amb.peakRSS), kib(kp.peakRSS), ratio(float64(amb.peakRSS), float64(kp.peakRSS)))
	row("RSS after load", kib(amb.afterRSS), kib(kp.afterRSS), ratio(float64(amb.afterRSS), float64(kp.afterRSS)))
	row("requests", strconv.Itoa(ta.requests), strconv.Itoa(tk.requests), "")
	row("errors", strconv.Itoa(ta.errors), strconv.Itoa(tk.errors), "")
	row("requests/s", fmt.Sprintf("%.0f", rps(ta)), fmt.Sprintf("%.0f", rps(tk)), ratio(rps(ta), rps(tk)))
	for _, q := range []struct {
		name string
		q    float64
	}{{"latency p50", 0.50}, {"latency p90", 0.90}, {"latency p99", 0.99}} {
		a, k := percentile(ta.latencies, q.q), percentile(tk.latencies, q.q)
		row(q.name, ms(a), ms(k), ratio(float64(a), float64(k)))
	}
	row("proxy CPU per 1,000 requests", ms(cpuPerK(ta)), ms(cpuPerK(tk)), ratio(float64(cpuPerK(ta)), float64(cpuPerK(tk))))

	fmt.Println("\nPer round:")
	fmt.Println()
	fmt.Println("| round | proxy | requests | errors | requests/s | p50 | p99 |")
	fmt.Println("|---:|---|---:|---:|---:|---:|---:|")
	for r := range rounds {
		for _, p := range []*proxy{amb, kp} {
			res := p.results[r]
			fmt.Printf("| %d | %s | %d | %d | %.0f | %s | %s |\n", res.round, p.name, res.requests, res.errors, rps(res),
				ms(percentile(res.latencies, 0.5)), ms(percentile(res.latencies, 0.99)))
		}
	}
	for _, x := range []struct {
		p *proxy
		r result
	}{{amb, ta}, {kp, tk}} {
		if x.r.errors > 0 {
			fmt.Printf("\n%s: first error: %s\n", x.p.name, x.r.firstError)
		}
	}
}
