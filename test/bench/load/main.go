// Command load is `make bench`'s load benchmark. In one run, on the recorded
// AdmissionReviews of ../shared/admission-reviews, it measures:
//
//  1. webhook load: podmeta, the framework floor and the usual-way baseline (see
//     test/bench/server), each server pinned to CPU 0 with GOMAXPROCS=1 while this
//     generator runs pinned to CPU 1: HTTPS, HTTP/1.1 keep-alive, unique uids, a closed
//     loop at -concurrency, and for podmeta an open loop at half its saturation rate;
//  2. through the apiserver: pod creations per second and latency on the local control
//     plane with podmeta registered vs in a namespace podmeta does not serve;
//  3. overload: podmeta offered 10x its saturation rate for -overload, with its
//     in-flight limit shedding the excess, then latency after the overload.
//
// It prints markdown tables. Every loop is bounded in count and time, and every request
// goes to 127.0.0.1.
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
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/podmeta/podmeta/test/harness"
	"github.com/podmeta/podmeta/webhook"
)

type options struct {
	concurrency int
	warmup      time.Duration
	duration    time.Duration
	overload    time.Duration
	apiRate     int
	apiDuration time.Duration
	skipAPI     bool
	probeRates  string
}

func main() {
	var o options
	flag.IntVar(&o.concurrency, "concurrency", 8, "keep-alive clients of the closed loop")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "warm-up before each measurement")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "each measurement")
	flag.DurationVar(&o.overload, "overload", 30*time.Second, "overload phase")
	flag.IntVar(&o.apiRate, "api-rate", 40, "pod creations per second through the apiserver")
	flag.DurationVar(&o.apiDuration, "api-duration", 10*time.Second, "each apiserver phase")
	flag.BoolVar(&o.skipAPI, "skip-apiserver", false, "skip the through-the-apiserver phase")
	flag.StringVar(&o.probeRates, "probe-rates", "", "only measure podmeta's open loop at these comma-separated rates (diagnostics)")
	flag.Parse()
	ctrllog.SetLogger(logr.Discard())
	if err := pin(); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

// pin re-executes this program on CPU 1, leaving CPU 0 to the server under test.
func pin() error {
	if os.Getenv("PODMETA_BENCH_PINNED") != "" {
		return nil
	}
	taskset, err := exec.LookPath("taskset")
	if err != nil {
		fmt.Fprintln(os.Stderr, "load: taskset not found; running unpinned (figures are less comparable)")
		return nil
	}
	self, _ := os.Executable()
	return syscall.Exec(taskset, append([]string{"taskset", "-c", "1", self}, os.Args[1:]...), append(os.Environ(), "PODMETA_BENCH_PINNED=1"))
}

func run(o options) error {
	dir, err := os.MkdirTemp("", "podmeta-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	server := filepath.Join(dir, "server")
	if out, err := exec.Command("go", "build", "-o", server, "./test/bench/server").CombinedOutput(); err != nil {
		return fmt.Errorf("build server: %w\n%s", err, out)
	}
	pool, err := writeCert(dir)
	if err != nil {
		return err
	}
	bodies, err := loadBodies()
	if err != nil {
		return err
	}
	cpu, _ := os.ReadFile("/proc/cpuinfo")
	fmt.Printf("# podmeta load benchmark\n\n%s, %d cores; server: GOMAXPROCS=1 on CPU 0; load: CPU 1; %d keep-alive HTTPS clients; %s per measurement after %s warm-up.\n\n",
		cpuModel(cpu), nproc(cpu), o.concurrency, o.duration, o.warmup)

	if o.probeRates != "" {
		srv, err := startServer(server, dir, "podmeta", 0)
		if err != nil {
			return err
		}
		defer srv.stop()
		for _, f := range strings.Split(o.probeRates, ",") {
			rate, _ := strconv.ParseFloat(f, 64)
			r := srv.openLoop(pool, bodies[0], rate, o.warmup, o.duration, o.concurrency, 5*time.Second)
			fmt.Printf("| %.0f | %s |\n", rate, r.row())
		}
		return nil
	}

	// 1. Webhook load.
	fmt.Println("## 1. Webhook load (closed loop)")
	fmt.Println()
	fmt.Println("| pod | server | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | CPU µs/req | RSS MiB |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	saturation := map[string]float64{}
	rps := map[string]float64{}
	for _, mode := range []string{"podmeta", "floor", "baseline"} {
		srv, err := startServer(server, dir, mode, 0)
		if err != nil {
			return err
		}
		for _, b := range bodies {
			r := srv.closedLoop(pool, b, o.concurrency, o.warmup, o.duration)
			rps[mode+"/"+b.name] = r.rps
			if mode == "podmeta" {
				saturation[b.name] = r.rps
			}
			fmt.Printf("| %s | %s | %s |\n", b.name, mode, r.row())
		}
		srv.stop()
	}
	fmt.Println()
	fmt.Println("| pod | podmeta / floor | podmeta / baseline |")
	fmt.Println("|---|---:|---:|")
	for _, b := range bodies {
		fmt.Printf("| %s | %.1fx | %.1fx |\n", b.name, rps["podmeta/"+b.name]/rps["floor/"+b.name], rps["podmeta/"+b.name]/rps["baseline/"+b.name])
	}
	fmt.Println()

	srv, err := startServer(server, dir, "podmeta", 0)
	if err != nil {
		return err
	}
	half := saturation["typical"] / 2
	r := srv.openLoop(pool, bodies[0], half, o.warmup, o.duration, o.concurrency, 5*time.Second)
	fmt.Printf("## Open loop, typical pod, podmeta at half its saturation (%.0f req/s)\n\n| req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | CPU µs/req | RSS MiB |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n| %s |\n\n", half, r.row())
	srv.stop()

	// 3. Overload.
	if o.overload > 0 {
		srv, err := startServer(server, dir, "podmeta", 64)
		if err != nil {
			return err
		}
		// 256 connections: far more concurrency than the in-flight limit, as when a
		// rollout of thousands of pods hits the webhook through many apiservers.
		over := srv.openLoop(pool, bodies[0], 10*saturation["typical"], 0, o.overload, 256, 5*time.Second)
		after := srv.openLoop(pool, bodies[0], half, 0, 5*time.Second, o.concurrency, 5*time.Second)
		fmt.Printf("## 3. Overload: 10x saturation (%.0f req/s offered) for %s, --max-in-flight=64\n\n", 10*saturation["typical"], o.overload)
		fmt.Println("Sent/s is what the generator managed to send; requests a connection could not send within 5 s of their time count as other errors.")
		fmt.Println()
		fmt.Println("| phase | sent/s | ok/s | shed (429) | other errors | p50 ms | p99 ms | peak RSS MiB | threads |")
		fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
		fmt.Printf("| overload | %.0f | %.0f | %d | %d | %.2f | %.2f | %.1f | %d |\n", over.sentRate, over.rps, over.shed, over.errors, over.p(50), over.p(99), srv.peakRSS(), srv.threads())
		fmt.Printf("| 5 s after, at half saturation | %.0f | %.0f | %d | %d | %.2f | %.2f | %.1f | %d |\n\n", after.sentRate, after.rps, after.shed, after.errors, after.p(50), after.p(99), srv.peakRSS(), srv.threads())
		if err := srv.stop(); err != nil {
			return fmt.Errorf("podmeta after overload: %w", err)
		}
	}

	// 2. Through the apiserver.
	if !o.skipAPI {
		if err := throughAPIServer(o); err != nil {
			return err
		}
	}
	return nil
}

// body is a recorded review with podmeta's ambassador turned on (every feature) and the
// offset of its uid, which each request overwrites to stay unique.
type body struct {
	name   string
	data   []byte
	uidAt  int
	uidLen int
}

func loadBodies() ([]body, error) {
	var out []body
	for _, name := range []string{"typical", "large", "initsidecar"} {
		raw, err := os.ReadFile(filepath.Join(harness.Root(), "..", "shared", "admission-reviews", name+".json"))
		if err != nil {
			return nil, err
		}
		var review map[string]any
		if err := json.Unmarshal(raw, &review); err != nil {
			return nil, err
		}
		req := review["request"].(map[string]any)
		meta := req["object"].(map[string]any)["metadata"].(map[string]any)
		meta["annotations"].(map[string]any)[webhook.AnnotationAmbassador] = "true"
		data, _ := json.Marshal(review)
		uid := req["uid"].(string)
		out = append(out, body{name: name, data: data, uidAt: bytes.Index(data, []byte(uid)), uidLen: len(uid)})
	}
	return out, nil
}

type serverProc struct {
	cmd  *exec.Cmd
	url  string
	done chan error
}

func startServer(bin, dir, mode string, maxInFlight int) (*serverProc, error) {
	addr := harness.FreeAddr()
	_, port, _ := net.SplitHostPort(addr)
	args := []string{bin, "-mode", mode, "-port", port, "-cert-dir", dir, "-max-in-flight", strconv.Itoa(maxInFlight)}
	if ts, err := exec.LookPath("taskset"); err == nil {
		args = append([]string{ts, "-c", "0"}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &serverProc{cmd: cmd, url: "https://" + addr + "/mutate-v1-pod", done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return s, nil
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			return nil, fmt.Errorf("%s server did not listen: %w", mode, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *serverProc) stop() error {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		return err
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		return errors.New("server did not stop")
	}
}

// cpuTicks is the server's user+system CPU time in clock ticks (1/100 s).
func (s *serverProc) cpuTicks() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

func (s *serverProc) status(key string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	return 0
}

func (s *serverProc) rss() float64     { return float64(s.status("VmRSS")) / 1024 }
func (s *serverProc) peakRSS() float64 { return float64(s.status("VmHWM")) / 1024 }
func (s *serverProc) threads() int64   { return s.status("Threads") }

// result is one measurement.
type result struct {
	lat               []time.Duration
	ok, shed, errors  int64
	rps, sentRate     float64
	cpuPerReq, rssMiB float64
}

func (r *result) p(q float64) float64 {
	if len(r.lat) == 0 {
		return 0
	}
	i := int(float64(len(r.lat)-1) * q / 100)
	return float64(r.lat[i].Microseconds()) / 1000
}

func (r *result) row() string {
	return fmt.Sprintf("%.0f | %.2f | %.2f | %.2f | %.2f | %d | %.0f | %.1f", r.rps, r.p(50), r.p(90), r.p(99), r.p(99.9), r.errors+r.shed, r.cpuPerReq, r.rssMiB)
}

func client(pool *x509.CertPool, conns int) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, NextProtos: []string{"http/1.1"}},
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}}
}

var uidCounter atomic.Uint64

// send posts one review with a fresh uid and reports the HTTP status.
func send(c *http.Client, url string, b body, buf []byte) (int, error) {
	buf = append(buf[:0], b.data...)
	uid := fmt.Sprintf("%0*x", b.uidLen, uidCounter.Add(1))
	copy(buf[b.uidAt:], uid[len(uid)-b.uidLen:])
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(buf))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

type recorder struct {
	mu               sync.Mutex
	lat              []time.Duration
	ok, shed, errors atomic.Int64
}

func (r *recorder) record(start time.Time, code int, err error) {
	d := time.Since(start)
	switch {
	case err == nil && code == http.StatusOK:
		r.ok.Add(1)
		r.mu.Lock()
		r.lat = append(r.lat, d)
		r.mu.Unlock()
	case code == http.StatusTooManyRequests:
		r.shed.Add(1)
	default:
		r.errors.Add(1)
	}
}

func (s *serverProc) finish(rec *recorder, elapsed time.Duration, ticks0 int64, sent int64) *result {
	r := &result{lat: rec.lat, ok: rec.ok.Load(), shed: rec.shed.Load(), errors: rec.errors.Load()}
	slices.Sort(r.lat)
	r.rps = float64(r.ok) / elapsed.Seconds()
	r.sentRate = float64(sent) / elapsed.Seconds()
	if n := r.ok + r.shed + r.errors; n > 0 {
		r.cpuPerReq = float64(s.cpuTicks()-ticks0) * 1e4 / float64(n) // 1 tick = 10,000 µs
	}
	r.rssMiB = s.rss()
	return r
}

// closedLoop runs conc clients back to back for d after warm-up w.
func (s *serverProc) closedLoop(pool *x509.CertPool, b body, conc int, w, d time.Duration) *result {
	c := client(pool, conc)
	rec := &recorder{}
	var measuring atomic.Bool
	var sent atomic.Int64
	var ticks0 int64
	stop := time.Now().Add(w + d)
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			buf := make([]byte, 0, len(b.data))
			for time.Now().Before(stop) {
				start := time.Now()
				code, err := send(c, s.url, b, buf)
				if measuring.Load() {
					sent.Add(1)
					rec.record(start, code, err)
				}
			}
		})
	}
	time.Sleep(w)
	ticks0 = s.cpuTicks()
	measuring.Store(true)
	begin := time.Now()
	wg.Wait()
	return s.finish(rec, time.Since(begin), ticks0, sent.Load())
}

// openLoop offers rate requests per second for d over conns keep-alive connections,
// whatever the answers, as wrk2 does: connection i sends request k at its scheduled time
// begin + (k*conns+i)/rate, or at once if it is running late, and latency counts from
// the scheduled time, so a queue in front of a slow server shows. A connection that
// falls more than maxLag behind drops the requests it missed (counted as errors) rather
// than sending a burst.
func (s *serverProc) openLoop(pool *x509.CertPool, b body, rate float64, w, d time.Duration, conns int, maxLag time.Duration) *result {
	if w > 0 {
		s.openLoop(pool, b, rate, 0, w, conns, maxLag)
	}
	c := client(pool, conns)
	rec := &recorder{}
	ticks0 := s.cpuTicks()
	interval := time.Duration(float64(time.Second) / rate)
	var sent atomic.Int64
	var wg sync.WaitGroup
	begin := time.Now()
	for i := range conns {
		wg.Go(func() {
			buf := make([]byte, 0, len(b.data))
			for k := 0; ; k++ {
				at := begin.Add(time.Duration(k*conns+i) * interval)
				if at.Sub(begin) >= d {
					return
				}
				if wait := time.Until(at); wait > 0 {
					time.Sleep(wait)
				} else if -wait > maxLag {
					rec.errors.Add(1)
					continue
				}
				sent.Add(1)
				code, err := send(c, s.url, b, buf)
				rec.record(at, code, err)
			}
		})
	}
	wg.Wait()
	return s.finish(rec, time.Since(begin), ticks0, sent.Load())
}

// throughAPIServer creates pods at a fixed rate on the local control plane, in a
// namespace podmeta serves and in one it does not, and compares creation latency.
func throughAPIServer(o options) error {
	dir, err := os.MkdirTemp("", "podmeta-bench-api")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := harness.BuildPodmeta(dir)
	if err != nil {
		return err
	}
	cp, err := harness.Start()
	if err != nil {
		return err
	}
	defer cp.Stop()
	ctx := context.Background()
	pm, err := cp.StartPodmeta(ctx, bin, "--ambassador-image=registry.example.com/podmeta/ambassador:bench")
	if err != nil {
		return err
	}
	defer pm.Stop()
	if err := cp.EnsureNamespace(ctx, "with-podmeta", map[string]string{webhook.LabelInject: "enabled"}, nil); err != nil {
		return err
	}
	if err := cp.EnsureNamespace(ctx, "without", nil, nil); err != nil {
		return err
	}
	fmt.Printf("## 2. Through the apiserver: %d pod creations/s for %s each (etcd + kube-apiserver v1.37.2, podmeta unpinned)\n\n", o.apiRate, o.apiDuration)
	fmt.Println("| namespace | created/s | p50 ms | p99 ms | errors |")
	fmt.Println("|---|---:|---:|---:|---:|")
	p50 := map[string]float64{}
	for _, ns := range []string{"without", "with-podmeta", "without", "with-podmeta"} {
		r := createPods(ctx, cp, ns, o.apiRate, o.apiDuration)
		p50[ns] = r.p(50)
		fmt.Printf("| %s | %.1f | %.2f | %.2f | %d |\n", ns, r.rps, r.p(50), r.p(99), r.errors)
	}
	fmt.Printf("\nAdded p50 per pod creation (second round): %.2f ms\n\n", p50["with-podmeta"]-p50["without"])
	return nil
}

func createPods(ctx context.Context, cp *harness.ControlPlane, ns string, rate int, d time.Duration) *result {
	rec := &recorder{}
	interval := time.Second / time.Duration(rate)
	var wg sync.WaitGroup
	begin := time.Now()
	var n int
	for at := begin; at.Sub(begin) < d; at = at.Add(interval) {
		time.Sleep(time.Until(at))
		n++
		name := fmt.Sprintf("p-%d-%d", time.Now().UnixNano(), n)
		wg.Go(func() {
			start := time.Now()
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}}}
			_, err := cp.Clientset.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
			code := http.StatusOK
			if err != nil {
				code = 0
			}
			rec.record(start, code, err)
		})
	}
	wg.Wait()
	r := &result{lat: rec.lat, ok: rec.ok.Load(), errors: rec.errors.Load()}
	slices.Sort(r.lat)
	r.rps = float64(r.ok) / time.Since(begin).Seconds()
	return r
}

// writeCert writes a self-signed serving certificate for 127.0.0.1 into dir.
func writeCert(dir string) (*x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "podmeta-bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool, nil
}

func cpuModel(cpuinfo []byte) string {
	for line := range strings.SplitSeq(string(cpuinfo), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

func nproc(cpuinfo []byte) int { return strings.Count(string(cpuinfo), "processor\t:") }
