// Command load is `make bench`'s load benchmark. In one run, on the recorded
// AdmissionReviews of webhook/testdata/admission-reviews, it measures:
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
	"golang.org/x/sys/unix"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/podmeta/podmeta/policy"
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
	onlyAPI     bool
	probeRates  string
	probeMode   string
	apiRounds   int
	apiProfile  string
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
	flag.BoolVar(&o.onlyAPI, "only-apiserver", false, "run only the through-the-apiserver phase")
	flag.StringVar(&o.probeRates, "probe-rates", "", "only measure podmeta's open loop at these comma-separated rates (diagnostics)")
	flag.StringVar(&o.probeMode, "probe-mode", "podmeta", "server mode -probe-rates measures (see test/bench/server)")
	flag.IntVar(&o.apiRounds, "api-rounds", 3, "interleaved rounds of the through-the-apiserver phase")
	flag.StringVar(&o.apiProfile, "apiserver-profile", "", "write a CPU profile of the kube-apiserver during round 1's policy-mode arm to this file (diagnostics)")
	flag.Parse()
	ctrllog.SetLogger(logr.Discard())
	if err := pin(o); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

// pin re-executes this program on CPU 1, leaving CPU 0 to the server under test.
func pin(o options) error {
	if os.Getenv("PODMETA_BENCH_PINNED") != "" || o.onlyAPI {
		return nil
	}
	taskset, err := exec.LookPath("taskset")
	if err != nil {
		fmt.Fprintln(os.Stderr, "load: taskset not found; running unpinned (figures are less comparable)")
		return nil
	}
	self, _ := os.Executable()
	// Two Ps on the one CPU (the figures in docs/performance.md were measured so): a
	// connection in a write syscall, which on loopback also runs the receiving side's
	// TCP work, holds its P, and with only one the others wait for the runtime to take
	// it back.
	return syscall.Exec(taskset, append([]string{"taskset", "-c", "1", self}, os.Args[1:]...), append(os.Environ(), "PODMETA_BENCH_PINNED=1", "GOMAXPROCS=2"))
}

func run(o options) error {
	if o.onlyAPI {
		return throughAPIServer(o)
	}
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
		srv, err := startServer(server, dir, o.probeMode, 0, pinnedToCPU0)
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
		srv, err := startServer(server, dir, mode, 0, pinnedToCPU0)
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

	// Open loop at half of podmeta's saturation, beside a server that does no work at
	// all at the same rate: the latency this machine's TLS, HTTP and scheduling give any
	// server pinned to one core.
	half := saturation["typical"] / 2
	fmt.Printf("## Open loop, typical pod, at half of podmeta's saturation (%.0f req/s)\n\n", half)
	fmt.Println("| server | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | CPU µs/req | RSS MiB |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, mode := range []string{"podmeta", "null", "podmeta", "null"} {
		srv, err := startServer(server, dir, mode, 0, pinnedToCPU0)
		if err != nil {
			return err
		}
		r := srv.openLoop(pool, bodies[0], half, o.warmup, o.duration, o.concurrency, 5*time.Second)
		srv.stop()
		fmt.Printf("| %s | %s |\n", mode, r.row())
	}
	fmt.Println()

	// 3. Overload.
	if o.overload > 0 {
		srv, err := startServer(server, dir, "podmeta", 64, pinnedToCPU0)
		if err != nil {
			return err
		}
		// 256 connections: far more concurrency than the in-flight limit, as when a
		// rollout of thousands of pods hits the webhook through many apiservers.
		over := srv.openLoop(pool, bodies[0], 10*saturation["typical"], 0, o.overload, 256, 5*time.Second)
		after := srv.openLoop(pool, bodies[0], half, 0, 5*time.Second, o.concurrency, 5*time.Second)
		fmt.Printf("## 3. Overload: 10x saturation (%.0f req/s offered) for %s, --max-in-flight=64\n\n", 10*saturation["typical"], o.overload)
		fmt.Println("Sent/s is what the generator managed to send; requests a connection could not send within 5 s of their time count as other errors. Latency from the schedule includes the time a request waited for its connection; latency from the send is the server's, queue included.")
		fmt.Println()
		fmt.Println("| phase | sent/s | ok/s | shed (429) | other errors | p50 ms from schedule | p99 ms from schedule | p99 ms from send | max ms from send | peak RSS MiB | threads |")
		fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
		for _, ph := range []struct {
			name string
			r    *result
		}{{"overload", over}, {"5 s after, at half saturation", after}} {
			r := ph.r
			fmt.Printf("| %s | %.0f | %.0f | %d | %d | %.2f | %.2f | %.2f | %.2f | %.1f | %d |\n", ph.name, r.sentRate, r.rps, r.shed, r.errors, r.p(50), r.p(99), quantile(r.fromSend, 99), quantile(r.fromSend, 100), srv.peakRSS(), srv.threads())
		}
		fmt.Println()
		if err := srv.stop(); err != nil {
			return fmt.Errorf("podmeta after overload: %w", err)
		}
	}

	// 2. Through the apiserver.
	if !o.skipAPI {
		// The control plane gets every CPU, as in a cluster: run that phase in a
		// process of its own, unpinned (children inherit this process's CPU 1 only).
		self, _ := os.Executable()
		args := append([]string{"taskset", "-c", fmt.Sprintf("0-%d", nproc(cpu)-1), self, "-only-apiserver"}, os.Args[1:]...)
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GOMAXPROCS=") })
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("through the apiserver: %w", err)
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
		raw, err := os.ReadFile(filepath.Join(harness.Root(), "webhook", "testdata", "admission-reviews", name+".json"))
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
	addr string
	url  string
	done chan error
}

// Where startServer runs a server: pinned to CPU 0 with GOMAXPROCS=1 (the webhook load
// phases) or, beside the control plane, on every CPU.
const (
	pinnedToCPU0 = true
	onAllCPUs    = false
)

// startServer starts a bench server in mode with the certificate in certDir and returns
// once it listens.
func startServer(bin, certDir, mode string, maxInFlight int, pinned bool) (*serverProc, error) {
	addr := harness.FreeAddr()
	_, port, _ := net.SplitHostPort(addr)
	args := []string{bin, "-mode", mode, "-port", port, "-cert-dir", certDir, "-max-in-flight", strconv.Itoa(maxInFlight)}
	env := os.Environ()
	if ts, err := exec.LookPath("taskset"); err == nil && pinned {
		args = append([]string{ts, "-c", "0"}, args...)
	}
	if pinned {
		env = append(env, "GOMAXPROCS=1")
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = env
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &serverProc{cmd: cmd, addr: addr, url: "https://" + addr + "/mutate-v1-pod", done: make(chan error, 1)}
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

// result is one measurement. lat counts from each request's scheduled time (open loop)
// or its start; fromSend from the moment it was actually sent, which is the time the
// server (and its queue) took.
type result struct {
	lat, fromSend     []time.Duration
	ok, shed, errors  int64
	rps, sentRate     float64
	cpuPerReq, rssMiB float64
}

func (r *result) p(q float64) float64 { return quantile(r.lat, q) }

// quantile is the q-th percentile of sorted durations, in milliseconds.
func quantile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * q / 100)
	return float64(sorted[i].Microseconds()) / 1000
}

func (r *result) row() string {
	return fmt.Sprintf("%.0f | %.2f | %.2f | %.2f | %.2f | %d | %.0f | %.1f", r.rps, r.p(50), r.p(90), r.p(99), r.p(99.9), r.errors+r.shed, r.cpuPerReq, r.rssMiB)
}

// conn is one keep-alive HTTPS connection that speaks HTTP/1.1 by hand, as the
// apiserver's client does on the wire. The load generator shares two cores with the
// server: net/http's client costs several times more CPU per request than this, and
// the generator's own queueing would otherwise show up as server latency.
type conn struct {
	addr string
	tls  *tls.Config
	c    *tls.Conn
	r    *bufio.Reader
	req  []byte
}

func newConn(addr string, pool *x509.CertPool) *conn {
	return &conn{addr: addr, tls: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"http/1.1"}}}
}

func (c *conn) dial() error {
	if c.c != nil {
		return nil
	}
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", c.addr, c.tls)
	if err != nil {
		return err
	}
	c.c, c.r = tc, bufio.NewReaderSize(tc, 16<<10)
	return nil
}

func (c *conn) close() {
	if c.c != nil {
		c.c.Close()
		c.c = nil
	}
}

var uidCounter atomic.Uint64

// post sends one review with a fresh uid, reads the whole answer and reports its HTTP
// status. Any error closes the connection; the next post dials again.
func (c *conn) post(b body) (int, error) {
	if err := c.dial(); err != nil {
		return 0, err
	}
	c.req = fmt.Appendf(c.req[:0], "POST /mutate-v1-pod HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", c.addr, len(b.data))
	head := len(c.req)
	c.req = append(c.req, b.data...)
	uid := strconv.FormatUint(uidCounter.Add(1), 16)
	field := c.req[head+b.uidAt : head+b.uidAt+b.uidLen]
	for i := range field {
		field[i] = '0'
	}
	copy(field[max(0, len(field)-len(uid)):], uid)
	c.c.SetDeadline(time.Now().Add(10 * time.Second))
	code, err := c.roundTrip()
	if err != nil {
		c.close()
	}
	return code, err
}

func (c *conn) roundTrip() (int, error) {
	if _, err := c.c.Write(c.req); err != nil {
		return 0, err
	}
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, fmt.Errorf("bad status line %q", line)
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, err
	}
	length, chunked, closing := -1, false, false
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		h := strings.ToLower(strings.TrimSpace(string(line)))
		if h == "" {
			break
		}
		switch {
		case strings.HasPrefix(h, "content-length:"):
			length, _ = strconv.Atoi(strings.TrimSpace(h[len("content-length:"):]))
		case h == "transfer-encoding: chunked":
			chunked = true
		case h == "connection: close":
			closing = true
		}
	}
	switch {
	case chunked:
		for {
			line, err := c.r.ReadSlice('\n')
			if err != nil {
				return 0, err
			}
			n, err := strconv.ParseInt(strings.TrimSpace(string(line)), 16, 64)
			if err != nil {
				return 0, fmt.Errorf("bad chunk size %q", line)
			}
			if _, err := c.r.Discard(int(n) + 2); err != nil { // the chunk and its CRLF
				return 0, err
			}
			if n == 0 {
				break
			}
		}
	case length >= 0:
		if _, err := c.r.Discard(length); err != nil {
			return 0, err
		}
	default:
		return 0, errors.New("answer without a length")
	}
	if closing {
		c.close()
	}
	return code, nil
}

type recorder struct {
	mu               sync.Mutex
	lat, fromSend    []time.Duration
	ok, shed, errors atomic.Int64
}

// record counts an answer to a request due at start and sent at sent.
func (r *recorder) record(start, sent time.Time, code int, err error) {
	now := time.Now()
	switch {
	case err == nil && code == http.StatusOK:
		r.ok.Add(1)
		r.mu.Lock()
		r.lat = append(r.lat, now.Sub(start))
		r.fromSend = append(r.fromSend, now.Sub(sent))
		r.mu.Unlock()
	case code == http.StatusTooManyRequests:
		r.shed.Add(1)
	default:
		r.errors.Add(1)
	}
}

func (s *serverProc) finish(rec *recorder, elapsed time.Duration, ticks0 int64, sent int64) *result {
	r := &result{lat: rec.lat, fromSend: rec.fromSend, ok: rec.ok.Load(), shed: rec.shed.Load(), errors: rec.errors.Load()}
	slices.Sort(r.lat)
	slices.Sort(r.fromSend)
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
	rec := &recorder{}
	var measuring atomic.Bool
	var sent atomic.Int64
	var ticks0 int64
	stop := time.Now().Add(w + d)
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			c := newConn(s.addr, pool)
			defer c.close()
			for time.Now().Before(stop) {
				start := time.Now()
				code, err := c.post(b)
				if measuring.Load() {
					sent.Add(1)
					rec.record(start, start, code, err)
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
	rec := &recorder{}
	cs := make([]*conn, conns)
	pacers := make([]*pacer, conns)
	for i := range cs {
		cs[i] = newConn(s.addr, pool)
		defer cs[i].close()
		if err := cs[i].dial(); err != nil {
			rec.errors.Add(1)
		}
		pacers[i] = newPacer()
		defer pacers[i].close()
	}
	ticks0 := s.cpuTicks()
	interval := time.Duration(float64(time.Second) / rate)
	var sent atomic.Int64
	var wg sync.WaitGroup
	begin := time.Now()
	for i := range conns {
		wg.Go(func() {
			c := cs[i]
			for k := 0; ; k++ {
				at := begin.Add(time.Duration(k*conns+i) * interval)
				if at.Sub(begin) >= d {
					return
				}
				from := at
				if wait := time.Until(at); wait > 0 {
					pacers[i].sleepUntil(at)
					// Waking late is the generator's lateness, not the server's: count
					// from the wake-up. Being late because the previous answer came late
					// is the server's, and counts from the schedule.
					from = time.Now()
				} else if -wait > maxLag {
					rec.errors.Add(1)
					continue
				}
				sent.Add(1)
				sentAt := time.Now()
				code, err := c.post(b)
				rec.record(from, sentAt, code, err)
			}
		})
	}
	wg.Wait()
	return s.finish(rec, time.Since(begin), ticks0, sent.Load())
}

// pacer sleeps with the kernel's timer precision. Go's own timers wake an idle program
// through its network poller, whose timeout has millisecond granularity: on this
// machine time.Sleep(200µs) returns after ~1.1 ms, which would add a millisecond to
// every latency and bunch requests onto millisecond ticks. A timerfd read through the
// same poller wakes within microseconds and, unlike nanosleep(2), holds no thread.
type pacer struct {
	fd int
	f  *os.File
}

// newPacer returns a timerfd pacer, or one that falls back to time.Sleep where there is
// no timerfd.
func newPacer() *pacer {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return &pacer{fd: -1}
	}
	return &pacer{fd: fd, f: os.NewFile(uintptr(fd), "timerfd")}
}

func (p *pacer) sleepUntil(t time.Time) {
	d := time.Until(t)
	if d <= 0 {
		return
	}
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
	if p.fd < 0 || unix.TimerfdSettime(p.fd, 0, &spec, nil) != nil {
		time.Sleep(d)
		return
	}
	var expirations [8]byte
	_, _ = p.f.Read(expirations[:])
}

func (p *pacer) close() {
	if p.f != nil {
		p.f.Close()
	}
}

// throughAPIServer creates pods at a fixed rate on the local control plane in four
// namespaces, in rounds: one no webhook serves; one served by the floor server (a no-op
// webhook: what calling any webhook costs on this machine); one by the baseline server
// (the same injection written the usual way: what the injected content costs the
// apiserver, whoever computes it); and one podmeta serves. The bench servers are
// registered exactly like podmeta, with the shipped configuration.
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
	server := filepath.Join(dir, "server")
	if out, err := exec.Command("go", "build", "-o", server, "./test/bench/server").CombinedOutput(); err != nil {
		return fmt.Errorf("build server: %w\n%s", err, out)
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
	arms := []struct{ ns, name string }{{"without", "no webhook"}, {"policy", "podmeta policy mode (no webhook)"}, {"bare-map", "a MAP adding one env var (policy floor)"}, {"floor", "no-op webhook (floor)"}, {"baseline", "same injection, usual way (baseline)"}, {"with-podmeta", "podmeta"}}
	if err := installPolicyMode(ctx, cp); err != nil {
		return err
	}
	if err := installBareMAP(ctx, cp); err != nil {
		return err
	}
	apiserverPID, err := apiserverProcess(cp)
	if err != nil {
		return err
	}
	for _, a := range arms {
		labels := map[string]string{}
		switch a.ns {
		case "policy":
			labels[benchPolicyLabel] = "enabled"
		case "bare-map":
			labels[benchBareLabel] = "enabled"
		case "floor", "baseline":
			s, err := registerBenchServer(ctx, cp, server, a.ns)
			if err != nil {
				return err
			}
			defer s.stop()
			labels[benchLabel] = a.ns
		case "with-podmeta":
			labels[webhook.LabelInject] = "enabled"
		}
		if err := cp.EnsureNamespace(ctx, a.ns, labels, nil); err != nil {
			return err
		}
	}
	fmt.Printf("## 2. Through the apiserver: %d pod creations/s for %s each (etcd + kube-apiserver v1.37.2 + webhooks, on all CPUs)\n\n", o.apiRate, o.apiDuration)
	fmt.Println("The apiserver's CPU per pod is the kube-apiserver process's user+system time over the arm (watches, other helpers' work and the webhooks' own CPU excluded), divided by the pods created.")
	fmt.Println()
	fmt.Println("| round | namespace served by | created/s | p50 ms | p99 ms | errors | apiserver CPU ms/pod |")
	fmt.Println("|---:|---|---:|---:|---:|---:|---:|")
	p50, cpu := map[string][]float64{}, map[string][]float64{}
	for round := 1; round <= o.apiRounds; round++ {
		for _, a := range arms {
			var profiled chan error
			if o.apiProfile != "" && round == 1 && a.ns == "policy" {
				profiled = make(chan error, 1)
				go func() { profiled <- profileAPIServer(ctx, cp, o.apiDuration, o.apiProfile) }()
			}
			ticks0 := processTicks(apiserverPID)
			r := createPods(ctx, cp, a.ns, o.apiRate, o.apiDuration)
			perPod := float64(processTicks(apiserverPID)-ticks0) * 10 / float64(max(r.ok, 1)) // 1 tick = 10 ms
			if profiled != nil {
				if err := <-profiled; err != nil {
					return err
				}
			}
			p50[a.ns] = append(p50[a.ns], r.p(50))
			cpu[a.ns] = append(cpu[a.ns], perPod)
			fmt.Printf("| %d | %s | %.1f | %.2f | %.2f | %d | %.2f |\n", round, a.name, r.rps, r.p(50), r.p(99), r.errors, perPod)
		}
	}
	median := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	med := func(ns string) float64 { return median(p50[ns]) }
	none := med("without")
	fmt.Printf("\nMedian over the rounds of each p50, added to a pod creation over no webhook: **podmeta %.2f ms**; no-op webhook %.2f ms; the same injection the usual way %.2f ms.\n\n",
		med("with-podmeta")-none, med("floor")-none, med("baseline")-none)
	policyAdded, podmetaAdded := med("policy")-none, med("with-podmeta")-none
	fmt.Printf("Policy mode (docs/policy.md) adds **%.2f ms**, %.0f%% of what the podmeta webhook adds (target: at most a third); a MAP that only adds one env var adds %.2f ms.\n\n", policyAdded, 100*policyAdded/podmetaAdded, med("bare-map")-none)
	fmt.Printf("Median apiserver CPU per pod creation: no webhook %.2f ms; policy mode %.2f ms (%.2fx; target: at most 1.3x); one-env-var MAP %.2f ms; podmeta webhook %.2f ms.\n\n",
		median(cpu["without"]), median(cpu["policy"]), median(cpu["policy"])/median(cpu["without"]), median(cpu["bare-map"]), median(cpu["with-podmeta"]))
	// The apiserver's own timing of each call: request encoding, the round trip, and
	// applying the patch (apiserver_admission_webhook_admission_duration_seconds).
	if m, err := cp.Clientset.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx); err == nil {
		sum, count := map[string]float64{}, map[string]float64{}
		for line := range strings.SplitSeq(string(m), "\n") {
			for _, kind := range []string{"sum", "count"} {
				if !strings.HasPrefix(line, "apiserver_admission_webhook_admission_duration_seconds_"+kind+"{") {
					continue
				}
				name := line[strings.Index(line, `name="`)+6:]
				name = name[:strings.IndexByte(name, '"')]
				v, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
				if kind == "sum" {
					sum[name] += v
				} else {
					count[name] += v
				}
			}
		}
		for _, name := range []string{"floor" + benchWebhookSuffix, "baseline" + benchWebhookSuffix, "pods.podmeta.io"} {
			if count[name] > 0 {
				fmt.Printf("- the apiserver's mean time per call of %s: %.2f ms over %.0f calls\n", name, 1000*sum[name]/count[name], count[name])
			}
		}
		// The MutatingAdmissionPolicies' own timing: their evaluations (a reinvocation is
		// one more, unless the matchConditions skip it) and their mean.
		for _, pol := range []struct{ metric, name, what string }{
			{"apiserver_mutating_admission_policy_check_duration_seconds", policy.Name, "podmeta MutatingAdmissionPolicy"},
			{"apiserver_mutating_admission_policy_check_duration_seconds", benchBareName, "one-env-var MutatingAdmissionPolicy"},
		} {
			var psum, pcount float64
			for line := range strings.SplitSeq(string(m), "\n") {
				if !strings.Contains(line, `policy="`+pol.name+`"`) {
					continue
				}
				v, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
				switch {
				case strings.HasPrefix(line, pol.metric+"_sum{"):
					psum += v
				case strings.HasPrefix(line, pol.metric+"_count{"):
					pcount += v
				}
			}
			if pcount > 0 {
				fmt.Printf("- the apiserver's mean time per evaluation of the %s: %.3f ms over %.0f evaluations\n", pol.what, 1000*psum/pcount, pcount)
			}
		}
		fmt.Println()
	}
	return nil
}

// installPolicyMode creates the policies podmeta policy renders from the bench's
// flags, bound to namespaces labelled benchPolicyLabel (podmeta's webhook serves
// podmeta.io/inject here), and waits until they act.
func installPolicyMode(ctx context.Context, cp *harness.ControlPlane) error {
	cfg := webhook.DefaultConfig()
	cfg.AmbassadorImage = "registry.example.com/podmeta/ambassador:bench"
	pols, err := policy.Render(cfg)
	if err != nil {
		return err
	}
	for _, m := range []*admissionregistrationv1.MatchResources{pols.Mutating.Spec.MatchConstraints, pols.Validating.Spec.MatchConstraints} {
		m.NamespaceSelector.MatchExpressions[0].Key = benchPolicyLabel
	}
	const probeNS = "policy-probe"
	if err := cp.EnsureNamespace(ctx, probeNS, map[string]string{benchPolicyLabel: "enabled"}, nil); err != nil {
		return err
	}
	return harness.CreatePolicies(ctx, cp, pols.Objects(), func(ctx context.Context) error {
		got, err := cp.Clientset.CoreV1().Pods(probeNS).Create(ctx, probePod(), dryRun)
		if err == nil && got.Annotations[webhook.AnnotationStatus] == "" {
			err = errors.New("the probe pod is not injected")
		}
		return err
	})
}

// probePod is the pod created, as a dry run, to see whether policies act yet.
func probePod() *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "probe"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}}}
}

var dryRun = metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}

// installBareMAP creates the floor of policy mode: a MutatingAdmissionPolicy that adds one
// env var to a pod's first container, for namespaces labelled benchBareLabel, and waits
// until it acts. It is evaluated once per pod (reinvocationPolicy Never).
func installBareMAP(ctx context.Context, cp *harness.ControlPlane) error {
	never, ignore := admissionregistrationv1.NeverReinvocationPolicy, admissionregistrationv1.Ignore
	mp := &admissionregistrationv1.MutatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: benchBareName},
		Spec: admissionregistrationv1.MutatingAdmissionPolicySpec{
			MatchConstraints: &admissionregistrationv1.MatchResources{
				ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
				}}},
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{benchBareLabel: "enabled"}},
			},
			Mutations: []admissionregistrationv1.Mutation{{
				PatchType: admissionregistrationv1.PatchTypeJSONPatch,
				JSONPatch: &admissionregistrationv1.JSONPatch{Expression: `[JSONPatch{op: 'add', path: '/spec/containers/0/env', value: [{'name': 'BARE', 'value': 'x'}]}]`},
			}},
			ReinvocationPolicy: never,
			FailurePolicy:      &ignore,
		},
	}
	mb := &admissionregistrationv1.MutatingAdmissionPolicyBinding{ObjectMeta: metav1.ObjectMeta{Name: benchBareName}, Spec: admissionregistrationv1.MutatingAdmissionPolicyBindingSpec{PolicyName: benchBareName}}
	const probeNS = "bare-probe"
	if err := cp.EnsureNamespace(ctx, probeNS, map[string]string{benchBareLabel: "enabled"}, nil); err != nil {
		return err
	}
	return harness.CreatePolicies(ctx, cp, []policy.Object{mp, mb}, func(ctx context.Context) error {
		got, err := cp.Clientset.CoreV1().Pods(probeNS).Create(ctx, probePod(), dryRun)
		if err == nil && len(got.Spec.Containers[0].Env) != 1 {
			err = errors.New("the one-env-var policy does not act yet")
		}
		return err
	})
}

// apiserverProcess is the pid of cp's kube-apiserver: the one whose certificate
// directory is cp's.
func apiserverProcess(cp *harness.ControlPlane) (int, error) {
	want := "--cert-dir=" + cp.Env.ControlPlane.APIServer.CertDir
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(raw), "\x00")
		if filepath.Base(args[0]) == "kube-apiserver" && slices.Contains(args, want) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no kube-apiserver process with %s", want)
}

// processTicks is a process's user+system CPU time in clock ticks (1/100 s).
func processTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

// profileAPIServer writes the kube-apiserver's CPU profile over d (its
// /debug/pprof/profile, served to the admin user envtest connects as) to path.
func profileAPIServer(ctx context.Context, cp *harness.ControlPlane, d time.Duration, path string) error {
	b, err := cp.Clientset.Discovery().RESTClient().Get().AbsPath("/debug/pprof/profile").Param("seconds", strconv.Itoa(int(d.Seconds()))).Timeout(d + 30*time.Second).DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("apiserver profile: %w", err)
	}
	return os.WriteFile(path, b, 0o644)
}

const (
	benchBareLabel     = "bench.podmeta.io/bare-map"
	benchBareName      = "bench-one-env-var"
	benchPolicyLabel   = "bench.podmeta.io/policy"
	benchLabel         = "bench.podmeta.io/webhook"
	benchWebhookSuffix = ".bench.podmeta.io"
)

// registerBenchServer starts a bench server in mode and registers it like podmeta (the
// shipped configuration's rules, conditions and policies) for namespaces labelled
// benchLabel=mode.
func registerBenchServer(ctx context.Context, cp *harness.ControlPlane, server, mode string) (*serverProc, error) {
	wio := cp.Env.WebhookInstallOptions
	s, err := startServer(server, wio.LocalServingCertDir, mode, 0, onAllCPUs)
	if err != nil {
		return nil, err
	}
	whc, err := harness.ShippedWebhookConfiguration()
	if err != nil {
		s.stop()
		return nil, err
	}
	whc.Name = "bench-" + mode
	wh := &whc.Webhooks[0]
	wh.Name = mode + benchWebhookSuffix
	wh.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{benchLabel: mode}}
	wh.ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &s.url, CABundle: wio.LocalServingCAData}
	if err := cp.Client.Create(ctx, whc); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
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
			rec.record(start, start, code, err)
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
