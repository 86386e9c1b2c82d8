// Command soak is `make soak`: the hostile-input soak of security issue 16. One podmeta
// replica (the real `podmeta webhook` binary, GOMAXPROCS=1, pinned to CPU 0) serves an
// honest load while a hostile client attacks it; this generator runs pinned to CPU 1
// beside the local control plane (etcd + kube-apiserver from bin/k8s).
//
//   - Phase A, baseline: the honest load alone. 8 keep-alive HTTPS connections in a
//     closed loop send the recorded typical review (namespace "bench", opted in) with a
//     fresh uid each, straight to podmeta's /mutate-v1-pod.
//   - Phase B, hostile: the same honest load while the hostile client holds slow-body
//     connections, sends reviews naming unknown namespaces and sends each hostile
//     annotation payload at a fixed rate (see hostileStreams). Its requests still in
//     flight when B ends get their own timeout to finish.
//   - Phase A2: the baseline again, to see what B left behind.
//
// Per phase it measures the honest latency, whether every honest admission was patched,
// podmeta's RSS (sampled every 100 ms) and CPU; for the hostile client, per stream, the
// answers' statuses, largest size and slowest time. It prints markdown tables and one
// verdict per criterion of the issue: honest p99 in B within 2x of A, no honest
// admission unpatched, podmeta's RSS under the chart's memory limit. It is a
// measurement: it exits 0 whether the criteria pass or not, and prints FAIL clearly.
//
// Everything is bounded: every request has a timeout, every loop a count and a time
// limit, every connection goes to 127.0.0.1, and the whole run stops by itself within
// about three minutes (a watchdog stops podmeta and the control plane after -deadline).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/podmeta/podmeta/test/harness"
)

// chartMemoryLimit is charts/podmeta/values.yaml's resources.limits.memory (256Mi).
const chartMemoryLimit = 256 << 20

// maxReviewBytes is podmeta's --max-request-bytes default (webhook.DefaultMaxBodyBytes):
// the hostile bodies are sized to stay under it, so that they reach the engine.
const maxReviewBytes = 7 << 20

type options struct {
	conns       int
	warmup      time.Duration
	duration    time.Duration
	timeout     time.Duration
	slowConns   int
	unknownRate float64
	payloadRate float64
	rssGuard    int64
	deadline    time.Duration
	only        string
}

func main() {
	var o options
	flag.IntVar(&o.conns, "connections", 8, "honest keep-alive connections (closed loop)")
	flag.DurationVar(&o.warmup, "warmup", 3*time.Second, "honest warm-up before each measurement")
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "each phase's measurement")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Second, "timeout of every request")
	flag.IntVar(&o.slowConns, "slow-connections", 150, "hostile slow-body connections held open")
	flag.Float64Var(&o.unknownRate, "unknown-rate", 50, "hostile reviews per second naming unknown namespaces")
	flag.Float64Var(&o.payloadRate, "payload-rate", 10, "requests per second of each hostile annotation payload")
	flag.Int64Var(&o.rssGuard, "rss-guard-mib", 2048, "kill podmeta if its RSS passes this (protects the machine; reported)")
	flag.DurationVar(&o.deadline, "deadline", 6*time.Minute, "stop everything and exit 2 after this long")
	flag.StringVar(&o.only, "only", "", "diagnostics: run only these comma-separated hostile streams of phase B (keys: "+strings.Join(streamKeys, ", ")+")")
	flag.Parse()
	ctrllog.SetLogger(logr.Discard())
	if err := pin(); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

// pin re-executes this program on CPU 1, leaving CPU 0 to podmeta. Two Ps, as in
// test/bench/load: a connection in a write syscall holds its P.
func pin() error {
	if os.Getenv("PODMETA_SOAK_PINNED") != "" {
		return nil
	}
	taskset, err := exec.LookPath("taskset")
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak: taskset not found; running unpinned (figures are less meaningful)")
		return nil
	}
	self, _ := os.Executable()
	return syscall.Exec(taskset, append([]string{"taskset", "-c", "1", self}, os.Args[1:]...), append(os.Environ(), "PODMETA_SOAK_PINNED=1", "GOMAXPROCS=2"))
}

func run(o options) error {
	dir, err := os.MkdirTemp("", "podmeta-soak")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := harness.BuildPodmeta(dir)
	if err != nil {
		return err
	}
	// podmeta as the chart runs one replica's process, but on one core: a wrapper that
	// sets GOMAXPROCS=1 and pins it to CPU 0, then execs it (same pid: the harness's
	// signals and this program's /proc sampling reach podmeta itself).
	pinning := ""
	if ts, err := exec.LookPath("taskset"); err == nil {
		pinning = ts + " -c 0 "
	}
	wrapper := filepath.Join(dir, "podmeta-pinned")
	script := fmt.Sprintf("#!/bin/sh\nexport GOMAXPROCS=1\nexec %s'%s' \"$@\"\n", pinning, bin)
	if err := os.WriteFile(wrapper, []byte(script), 0o700); err != nil {
		return err
	}
	bodies, err := buildBodies()
	if err != nil {
		return err
	}

	cp, err := harness.Start()
	if err != nil {
		return err
	}
	var running atomic.Pointer[harness.Podmeta] // for the watchdog
	var cleanupOnce sync.Once
	cleanup := func() {
		cleanupOnce.Do(func() {
			if pm := running.Load(); pm != nil {
				stopPodmeta(pm)
			}
			_ = cp.Stop()
		})
	}
	defer cleanup()
	// Watchdog and signals: whatever happens, podmeta and the control plane stop.
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		select {
		case s := <-sig:
			fmt.Fprintln(os.Stderr, "soak: got", s, "; stopping")
		case <-time.After(o.deadline):
			fmt.Fprintln(os.Stderr, "soak: deadline", o.deadline, "passed; stopping")
		}
		cleanup()
		os.Exit(2)
	}()

	ctx := context.Background()
	if err := cp.EnsureNamespace(ctx, "bench", map[string]string{"podmeta.io/inject": "enabled"}, nil); err != nil {
		return err
	}
	pm, err := cp.StartPodmeta(ctx, wrapper,
		"--ambassador-image=registry.example.com/podmeta/ambassador:soak",
		// Stop promptly at the end, even with requests stuck in flight.
		"--shutdown-delay=0s", "--graceful-shutdown-timeout=2s")
	if err != nil {
		return err
	}
	running.Store(pm)
	pid := pm.Cmd.Process.Pid
	wio := cp.Env.WebhookInstallOptions
	addr := net.JoinHostPort(wio.LocalServingHost, strconv.Itoa(wio.LocalServingPort))
	url := "https://" + addr + "/mutate-v1-pod"
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(wio.LocalServingCAData) {
		return errors.New("envtest's serving CA does not parse")
	}
	tlsConfig := &tls.Config{RootCAs: pool, ServerName: wio.LocalServingHost, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12}

	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	loadavg, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("# podmeta hostile-input soak (security issue 16)\n\n")
	fmt.Printf("%s, %d cores; load average before the run: %s.\n", cpuModel(cpuinfo), strings.Count(string(cpuinfo), "processor\t:"), strings.Join(strings.Fields(string(loadavg))[:3], " "))
	fmt.Printf("podmeta (pid %d): CPUs %s, GOMAXPROCS=%s, --max-request-bytes and --max-in-flight at their defaults; generator and control plane: CPUs %s.\n",
		pid, procStatus(pid, "Cpus_allowed_list"), procEnv(pid, "GOMAXPROCS"), procStatus(os.Getpid(), "Cpus_allowed_list"))
	fmt.Printf("Honest load: webhook/testdata/admission-reviews/typical.json (%d bytes, namespace bench, opted in), a fresh uid each, %d keep-alive HTTPS connections, closed loop, %s after %s warm-up per phase; every request times out after %s.\n\n",
		len(bodies.honest.pre)+len(bodies.honest.post)+36, o.conns, o.duration, o.warmup, o.timeout)

	honest := &http.Client{Transport: &http.Transport{
		TLSClientConfig: tlsConfig, MaxConnsPerHost: o.conns, MaxIdleConnsPerHost: o.conns,
		DisableCompression: true, IdleConnTimeout: time.Minute,
	}, Timeout: o.timeout}
	// One request first: the honest review must be patched by this podmeta at all, or
	// the soak measures nothing.
	if r := postHonest(honest, url, bodies.honest, 0); r != "" {
		fmt.Printf("**warning: the first honest request was not patched (%s): the figures below measure a podmeta that does not inject the typical pod.**\n\n", r)
	}

	s := newSampler(pid, o.rssGuard<<20)
	go s.loop()
	defer s.stop()

	a := runPhase("A (baseline)", s, func() *honestStats {
		return runHonest(honest, url, bodies.honest, pid, o.conns, o.warmup, o.duration)
	})
	var streams []*stream
	var slow *slowBody
	b := runPhase("B (hostile)", s, func() *honestStats {
		hctx, stopHostile := context.WithCancel(ctx)
		var wg sync.WaitGroup
		slow = &slowBody{addr: addr, tls: tlsConfig, timeout: o.timeout}
		if selected(o.only, "slow-body") {
			wg.Go(func() { slow.run(hctx, o.slowConns) })
		}
		streams = hostileStreams(bodies, o, tlsConfig)
		for _, st := range streams {
			wg.Go(func() { st.run(hctx, url, o.timeout) })
		}
		h := runHonest(honest, url, bodies.honest, pid, o.conns, o.warmup, o.duration)
		stopHostile()
		// Requests in flight finish or time out on their own (bounded by -timeout);
		// podmeta's RSS is still sampled under phase B meanwhile.
		wg.Wait()
		return h
	})
	phases := []*phase{a, b}
	a2 := &phase{name: "A2 (baseline after)", honest: &honestStats{}}
	if processAlive(pid) {
		a2 = runPhase(a2.name, s, func() *honestStats {
			return runHonest(honest, url, bodies.honest, pid, o.conns, o.warmup, o.duration)
		})
		phases = append(phases, a2)
	}
	s.stop()

	fmt.Println("## Honest requests")
	fmt.Println()
	fmt.Println("Latency is the time to a patched admission: a request not patched (refused, failed, timed out, answered without a patch) counts as never patched (∞), so a p99 is finite only when at least 99% were patched. \"patched p99\" is over the patched answers alone.")
	fmt.Println()
	fmt.Println("| phase | sent | patched | not patched | patched/s | p50 ms | p90 ms | p99 ms | max ms | patched p99 ms | podmeta max RSS MiB | podmeta CPU % | podmeta threads | generator CPU % |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, p := range phases {
		h := p.honest
		fmt.Printf("| %s | %d | %d | %d | %.0f | %s | %s | %s | %s | %s | %.1f | %s | %d | %.0f |\n",
			p.name, h.sent, h.patched, h.sent-h.patched, float64(h.patched)/h.window.Seconds(),
			ms(h.q(50)), ms(h.q(90)), ms(h.q(99)), ms(h.q(100)), ms(quantile(h.lat, 99)),
			float64(p.maxRSS)/(1<<20), p.cpuText(), p.maxThreads, p.genCPU)
	}
	if len(phases) < 3 {
		fmt.Println("| A2 (baseline after) | - | - | - | - | - | - | - | - | - | - | - | - | - |")
		fmt.Println()
		fmt.Println("A2 did not run: podmeta was no longer running after B.")
	}
	fmt.Println()
	for _, p := range phases {
		fmt.Printf("- podmeta's RSS in %s, MiB, once a second: %s", p.name, strings.Join(p.timeline, " "))
		if p.over >= 0 {
			fmt.Printf(" (over 256 MiB %.1f s into the phase)", p.over.Seconds())
		}
		if p.died >= 0 {
			fmt.Printf(" (podmeta gone %.1f s into the phase)", p.died.Seconds())
		}
		fmt.Println()
	}
	for _, p := range phases {
		if len(p.honest.reasons) > 0 {
			fmt.Printf("- not patched in %s: %s\n", p.name, counts(p.honest.reasons))
		}
	}
	fmt.Println()

	fmt.Println("## Hostile client (phase B)")
	fmt.Println()
	fmt.Println("Open loop: each stream sends at its rate whatever the answers, each request in its own goroutine with its own timeout; a stream skips a send while rate x timeout requests of its own are outstanding. Answers are read and discarded.")
	fmt.Println()
	fmt.Println("| stream | body bytes | rate/s | sent | skipped | answers | max answer bytes | max ms |")
	fmt.Println("|---|---:|---:|---:|---:|---|---:|---:|")
	for _, st := range streams {
		st.mu.Lock()
		fmt.Printf("| %s | %d | %.0f | %d | %d | %s | %d | %.0f |\n", st.name, st.size, st.rate, st.sent, st.skipped, counts(st.answers), st.maxBytes, float64(st.maxLat.Microseconds())/1000)
		st.mu.Unlock()
	}
	slow.mu.Lock()
	if selected(o.only, "slow-body") {
		fmt.Printf("| slow body: %d connections, headers (Content-Length: %d) + `{`, then idle | - | - | %d opened | %d dial errors | %s | - | held max %.0f |\n",
			o.slowConns, slowContentLength, slow.opened, slow.dialErrors, counts(slow.ends), float64(slow.maxHeld.Microseconds())/1000)
	}
	slow.mu.Unlock()
	fmt.Println()

	alive := processAlive(pid)
	fmt.Println("## Verdict")
	fmt.Println()
	verdict := func(ok bool, what string) {
		if ok {
			fmt.Println("- PASS:", what)
		} else {
			fmt.Println("- **FAIL**:", what)
		}
	}
	pa, pb := a.honest.q(99), b.honest.q(99)
	verdict(a.honest.sent > 0 && !math.IsInf(pa, 1) && pb <= 2*pa, fmt.Sprintf("honest p99 in B %s ms <= 2 x A's %s ms (%.1fx; A2's p99 in ms: %s)", ms(pb), ms(pa), pb/max(pa, 1e-9), ms(a2.honest.q(99))))
	var unpatched int64
	for _, p := range phases {
		unpatched += p.honest.sent - p.honest.patched
	}
	verdict(unpatched == 0, fmt.Sprintf("every honest admission patched: %d not patched (A %d, B %d, A2 %d)", unpatched,
		a.honest.sent-a.honest.patched, b.honest.sent-b.honest.patched, a2.honest.sent-a2.honest.patched))
	peak := max(a.maxRSS, b.maxRSS, a2.maxRSS)
	verdict(peak < chartMemoryLimit && s.hwm < chartMemoryLimit && !s.killed.Load(), fmt.Sprintf("podmeta's RSS under the chart's limit (256 MiB): max sampled %.1f MiB, VmHWM %.1f MiB", float64(peak)/(1<<20), float64(s.hwm)/(1<<20)))
	if s.killed.Load() {
		fmt.Printf("- podmeta was killed by this program: its RSS passed -rss-guard-mib=%d\n", o.rssGuard)
	}
	if !alive {
		fmt.Println("- **podmeta was not running at the end**; the end of its log:")
		fmt.Println()
		fmt.Println("```")
		fmt.Println(tail(pm.Logs(), 20))
		fmt.Println("```")
	}
	return nil
}

// stopPodmeta sends SIGTERM and kills podmeta if it has not exited 10 s later.
func stopPodmeta(pm *harness.Podmeta) {
	done := make(chan struct{})
	go func() { _ = pm.Stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = pm.Cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	}
}

// phase is one phase's figures.
type phase struct {
	name       string
	honest     *honestStats
	maxRSS     int64
	maxThreads int64
	cpu        float64 // podmeta's CPU over the measurement window, % of one core
	genCPU     float64 // this program's CPU, % of one core
	start      time.Time
	timeline   []string      // RSS in MiB, once a second
	over       time.Duration // when RSS first passed the chart's limit, -1: never
	died       time.Duration // when podmeta was first seen gone, -1: never
}

func (p *phase) cpuText() string {
	if p.died >= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", p.cpu)
}

// q is the q-th percentile of the time to a patched admission, in ms (+Inf: not patched).
func (h *honestStats) q(q float64) float64 {
	n := h.sent
	if n == 0 {
		return math.NaN()
	}
	i := int(float64(n-1) * q / 100)
	if i >= len(h.lat) {
		return math.Inf(1)
	}
	return float64(h.lat[i].Microseconds()) / 1000
}

func ms(v float64) string {
	switch {
	case math.IsNaN(v):
		return "not run"
	case math.IsInf(v, 1):
		return "∞"
	}
	return fmt.Sprintf("%.2f", v)
}

func runPhase(name string, s *sampler, body func() *honestStats) *phase {
	fmt.Fprintf(os.Stderr, "soak: phase %s\n", name)
	p := &phase{name: name, start: time.Now(), over: -1, died: -1}
	s.setPhase(p)
	p.honest = body()
	h := p.honest
	if secs := h.window.Seconds(); secs > 0 {
		p.cpu = float64(h.ticks[1]-h.ticks[0]) / secs // ticks are 1/100 s: % of a core
		p.genCPU = float64(h.gen[1]-h.gen[0]) / secs  // idem
	}
	return p
}

// sampler reads podmeta's RSS and thread count every 100 ms into the current phase.
type sampler struct {
	pid    int
	guard  int64
	mu     sync.Mutex
	cur    *phase
	done   chan struct{}
	exited chan struct{}
	once   sync.Once
	killed atomic.Bool
	hwm    int64 // VmHWM, the last seen while podmeta ran
}

func newSampler(pid int, guard int64) *sampler {
	return &sampler{pid: pid, guard: guard, done: make(chan struct{}), exited: make(chan struct{})}
}

func (s *sampler) setPhase(p *phase) {
	s.mu.Lock()
	s.cur = p
	s.mu.Unlock()
	s.sample()
}

// stop stops the sampling and returns once the phases are no longer written.
func (s *sampler) stop() {
	s.once.Do(func() { close(s.done) })
	<-s.exited
}

func (s *sampler) loop() {
	defer close(s.exited)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			s.sample()
		}
	}
}

func (s *sampler) sample() {
	rss := procStatusKiB(s.pid, "VmRSS") << 10
	threads := procStatusKiB(s.pid, "Threads")
	hwm := procStatusKiB(s.pid, "VmHWM") << 10
	alive := processAlive(s.pid)
	if rss > s.guard && s.killed.CompareAndSwap(false, true) {
		fmt.Fprintf(os.Stderr, "soak: podmeta's RSS %d MiB passed the guard; killing it\n", rss>>20)
		_ = syscall.Kill(s.pid, syscall.SIGKILL)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hwm = max(s.hwm, hwm)
	if p := s.cur; p != nil {
		p.maxRSS = max(p.maxRSS, rss)
		p.maxThreads = max(p.maxThreads, threads)
		at := time.Since(p.start)
		if rss >= chartMemoryLimit && p.over < 0 {
			p.over = at
		}
		if !alive && p.died < 0 {
			p.died = at
		}
		if alive && at >= time.Duration(len(p.timeline))*time.Second {
			p.timeline = append(p.timeline, strconv.FormatInt(rss>>20, 10))
		}
	}
}

// template is a review whose request uid is cut out: a request's body is pre, a uid,
// post. Large bodies are sent from these slices without copying.
type template struct {
	pre, post []byte
}

func (t template) size() int64 { return int64(len(t.pre) + 36 + len(t.post)) }

func (t template) reader(uid string) io.Reader {
	return io.MultiReader(bytes.NewReader(t.pre), strings.NewReader(uid), bytes.NewReader(t.post))
}

func uid(stream int, n uint64) string { return fmt.Sprintf("%08x-0000-4000-8000-%012x", stream, n) }

func split(data []byte, placeholder string) (template, error) {
	if bytes.Count(data, []byte(placeholder)) != 1 {
		return template{}, fmt.Errorf("the uid %q is not in the review exactly once", placeholder)
	}
	i := bytes.Index(data, []byte(placeholder))
	return template{pre: data[:i], post: data[i+len(placeholder):]}, nil
}

// honestStats is one phase of the honest load.
type honestStats struct {
	mu      sync.Mutex
	lat     []time.Duration // of the patched answers
	sent    int64
	patched int64
	reasons map[string]int
	window  time.Duration
	ticks   [2]int64 // podmeta's CPU ticks at the window's start and end
	gen     [2]int64 // this program's
}

// post sends one honest review and returns "" if podmeta patched it, else why not.
func postHonest(c *http.Client, url string, t template, n uint64) string {
	id := uid(0, n)
	req, err := http.NewRequest(http.MethodPost, url, t.reader(id))
	if err != nil {
		return err.Error()
	}
	req.ContentLength = t.size()
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || os.IsTimeout(err) {
			return "timeout"
		}
		return "transport error (" + errClass(err) + ")"
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		if os.IsTimeout(err) {
			return "timeout reading the answer"
		}
		return "error reading the answer"
	}
	if resp.StatusCode != http.StatusOK {
		return "HTTP " + strconv.Itoa(resp.StatusCode)
	}
	var ans struct {
		Response *struct {
			UID     string `json:"uid"`
			Allowed bool   `json:"allowed"`
			Patch   []byte `json:"patch"`
		} `json:"response"`
	}
	switch {
	case json.Unmarshal(data, &ans) != nil || ans.Response == nil:
		return "not an AdmissionReview answer"
	case ans.Response.UID != id:
		return "answer for another uid"
	case !ans.Response.Allowed:
		return "denied"
	case len(ans.Response.Patch) == 0:
		return "allowed without a patch"
	}
	return ""
}

var honestCounter atomic.Uint64

// runHonest runs conns clients back to back for warmup+d, measuring the last d.
func runHonest(c *http.Client, url string, t template, pid, conns int, warmup, d time.Duration) *honestStats {
	h := &honestStats{reasons: map[string]int{}}
	begin := time.Now().Add(warmup)
	end := begin.Add(d)
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			for i := 0; i < 1_000_000 && time.Now().Before(end); i++ {
				start := time.Now()
				why := postHonest(c, url, t, honestCounter.Add(1))
				if strings.HasPrefix(why, "transport error") {
					time.Sleep(20 * time.Millisecond) // podmeta gone: no tight loop
				}
				if start.Before(begin) {
					continue
				}
				lat := time.Since(start)
				h.mu.Lock()
				h.sent++
				if why == "" {
					h.patched++
					h.lat = append(h.lat, lat)
				} else {
					h.reasons[why]++
				}
				h.mu.Unlock()
			}
		})
	}
	time.Sleep(time.Until(begin))
	h.ticks[0], h.gen[0] = cpuTicks(pid), cpuTicks(os.Getpid())
	time.Sleep(time.Until(end))
	h.ticks[1], h.gen[1] = cpuTicks(pid), cpuTicks(os.Getpid())
	h.window = d
	wg.Wait()
	slices.Sort(h.lat)
	return h
}

// stream is one hostile open-loop stream of reviews.
type stream struct {
	key    string
	name   string
	id     int
	rate   float64
	size   int64
	body   func(n uint64) (io.Reader, int64)
	client *http.Client

	mu       sync.Mutex
	sent     int64
	skipped  int64
	answers  map[string]int
	maxBytes int64
	maxLat   time.Duration
}

func (st *stream) run(ctx context.Context, url string, timeout time.Duration) {
	st.answers = map[string]int{}
	limit := int64(st.rate * timeout.Seconds()) // outstanding requests at most
	var outstanding atomic.Int64
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(time.Duration(float64(time.Second) / st.rate))
	defer tick.Stop()
	for n := uint64(1); n < 1_000_000; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if outstanding.Load() >= limit {
			st.mu.Lock()
			st.skipped++
			st.mu.Unlock()
			continue
		}
		outstanding.Add(1)
		wg.Go(func() {
			defer outstanding.Add(-1)
			st.send(url, n, timeout)
		})
	}
}

// send makes one request with its own timeout (not the phase's: a request in flight at
// the end of phase B finishes or times out), reads and discards the answer.
func (st *stream) send(url string, n uint64, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	body, size := st.body(n)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, body)
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	what, got := "", int64(0)
	resp, err := st.client.Do(req)
	if err == nil {
		// The decision is near the start of the answer; the rest is read and dropped.
		head := make([]byte, 512)
		k, _ := io.ReadFull(resp.Body, head)
		rest, rerr := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<30))
		resp.Body.Close()
		got = int64(k) + rest
		what = strconv.Itoa(resp.StatusCode)
		switch {
		case rerr != nil:
			what += " (answer cut: " + errClass(rerr) + ")"
		case bytes.Contains(head[:k], []byte(`"allowed":true`)) && bytes.Contains(head[:k], []byte(`"patch"`)):
			what += " patched"
		case bytes.Contains(head[:k], []byte(`"allowed":true`)):
			what += " allowed"
		case bytes.Contains(head[:k], []byte(`"allowed":false`)):
			what += " denied"
		}
	} else {
		what = errClass(err)
	}
	lat := time.Since(start)
	st.mu.Lock()
	defer st.mu.Unlock()
	st.sent++
	st.answers[what]++
	st.maxBytes = max(st.maxBytes, got)
	st.maxLat = max(st.maxLat, lat)
}

func errClass(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded) || os.IsTimeout(err):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "closed"
	}
	return "conn error"
}

// hostileStreams are the hostile client's review streams: unknown namespaces, and each
// hostile annotation payload of the issue.
func hostileStreams(b *reviewBodies, o options, tlsConfig *tls.Config) []*stream {
	transport := func() *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig, MaxIdleConnsPerHost: 32, DisableCompression: true, IdleConnTimeout: time.Minute}}
	}
	unknown := &stream{key: "unknown-ns", name: "typical review, unknown namespace (random per request)", id: 1, rate: o.unknownRate, client: transport(), size: int64(len(b.unknownNS))}
	unknown.body = func(n uint64) (io.Reader, int64) {
		var r [7]byte
		_, _ = rand.Read(r[:])
		ns := "unknown-" + hex.EncodeToString(r[:]) // as long as the placeholder
		data := bytes.ReplaceAll(b.unknownNS, []byte(nsPlaceholder), []byte(ns))
		data = bytes.Replace(data, []byte(uidPlaceholder), []byte(uid(1, n)), 1)
		return bytes.NewReader(data), int64(len(data))
	}
	var out []*stream
	if selected(o.only, unknown.key) {
		out = append(out, unknown)
	}
	for i, p := range b.hostile {
		st := &stream{key: streamKeys[2+i], name: p.name, id: 2 + i, rate: o.payloadRate, client: transport(), size: p.t.size()}
		st.body = func(n uint64) (io.Reader, int64) { return p.t.reader(uid(st.id, n)), p.t.size() }
		if selected(o.only, st.key) {
			out = append(out, st)
		}
	}
	return out
}

// streamKeys name phase B's hostile streams for -only: the slow bodies, the unknown
// namespaces, then the payloads in buildBodies' order.
var streamKeys = []string{"slow-body", "unknown-ns", "storage-1e2147483647", "storage-1e10000000", "containers-annotation", "many-containers", "unknown-keys", "volume-items", "forged-status"}

func selected(only, key string) bool {
	return only == "" || slices.Contains(strings.Split(only, ","), key)
}

// slowContentLength is what the slow-body connections announce: under
// --max-request-bytes, so that the size alone does not refuse them.
const slowContentLength = 7_000_000

// slowBody holds connections that send a request's headers and one byte of its body,
// then nothing: each is re-opened when podmeta closes it.
type slowBody struct {
	addr    string
	tls     *tls.Config
	timeout time.Duration

	mu         sync.Mutex
	opened     int64
	dialErrors int64
	ends       map[string]int // how each connection ended
	maxHeld    time.Duration
}

func (s *slowBody) run(ctx context.Context, conns int) {
	s.ends = map[string]int{}
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			for i := 0; i < 1000 && ctx.Err() == nil; i++ {
				s.once(ctx)
				select { // no tight loop when podmeta refuses at once
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		})
	}
	wg.Wait()
}

func (s *slowBody) once(ctx context.Context) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: s.timeout}, Config: s.tls}
	dctx, cancel := context.WithTimeout(ctx, s.timeout)
	c, err := d.DialContext(dctx, "tcp", s.addr)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			s.mu.Lock()
			s.dialErrors++
			s.mu.Unlock()
		}
		return
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	s.mu.Lock()
	s.opened++
	s.mu.Unlock()
	start := time.Now()
	_ = c.SetDeadline(start.Add(2 * time.Minute)) // never longer than the run
	_, err = fmt.Fprintf(c, "POST /mutate-v1-pod HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", s.addr, slowContentLength)
	end := "write failed"
	if err == nil {
		line, rerr := bufio.NewReader(c).ReadString('\n')
		switch {
		case ctx.Err() != nil:
			end = "held until B ended"
		case strings.HasPrefix(line, "HTTP/1.1 ") && len(line) >= 12:
			end = "answered " + line[9:12]
		case errors.Is(rerr, io.EOF):
			end = "closed without an answer"
		default:
			end = "read error"
		}
	}
	held := time.Since(start)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ends[end]++
	if end != "held until B ended" {
		s.maxHeld = max(s.maxHeld, held)
	}
}

// Placeholders cut out of the re-encoded reviews; each is exactly as long as what
// replaces it (a uid: 36 characters; a namespace: 22).
const (
	uidPlaceholder = "SOAKUID0-0000-0000-0000-000000000000"
	nsPlaceholder  = "soak-namespace-0000000"
)

type hostilePayload struct {
	name string
	t    template
}

type reviewBodies struct {
	honest    template
	unknownNS []byte
	hostile   []hostilePayload
}

// buildBodies reads the recorded typical review and derives the hostile ones from it.
func buildBodies() (*reviewBodies, error) {
	raw, err := os.ReadFile(filepath.Join(harness.Root(), "webhook", "testdata", "admission-reviews", "typical.json"))
	if err != nil {
		return nil, err
	}
	var probe struct {
		Request struct {
			UID string `json:"uid"`
		} `json:"request"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return nil, err
	}
	b := &reviewBodies{}
	// The honest body is the recorded bytes themselves, uid replaced.
	if b.honest, err = split(raw, probe.Request.UID); err != nil {
		return nil, err
	}
	fresh := func() (review, req, pod, meta, spec map[string]any) {
		_ = json.Unmarshal(raw, &review)
		req = review["request"].(map[string]any)
		req["uid"] = uidPlaceholder
		pod = req["object"].(map[string]any)
		meta = pod["metadata"].(map[string]any)
		spec = pod["spec"].(map[string]any)
		return
	}
	annotate := func(meta map[string]any, kv map[string]string) {
		ann := meta["annotations"].(map[string]any)
		for k, v := range kv {
			ann[k] = v
		}
	}
	add := func(name string, review map[string]any) error {
		data, err := json.Marshal(review)
		if err != nil {
			return err
		}
		t, err := split(data, uidPlaceholder)
		if err != nil {
			return err
		}
		b.hostile = append(b.hostile, hostilePayload{name: name, t: t})
		return nil
	}

	// Unknown namespaces: the typical review with its namespace (request and pod)
	// replaced by a random one per request.
	review, req, _, meta, _ := fresh()
	req["namespace"], meta["namespace"] = nsPlaceholder, nsPlaceholder
	if b.unknownNS, err = json.Marshal(review); err != nil {
		return nil, err
	}

	// 1. An ephemeral-storage limit whose exponent is huge, on a one-container pod.
	for _, v := range []string{"1e2147483647", "1e10000000"} {
		review, _, _, meta, spec := fresh()
		spec["containers"] = spec["containers"].([]any)[:1]
		annotate(meta, map[string]string{"podmeta.io/ephemeral-storage-limit": v})
		if err := add(fmt.Sprintf("`ephemeral-storage-limit: %s`, one container", v), review); err != nil {
			return nil, err
		}
	}

	// 2. One container named 20,000 times.
	review, _, _, meta, _ = fresh()
	annotate(meta, map[string]string{"podmeta.io/containers": strings.TrimSuffix(strings.Repeat("web,", 20_000), ",")})
	if err := add("`containers: web,web,...` (20,000 names)", review); err != nil {
		return nil, err
	}

	// 3. As many containers as fit a ~6 MiB review, shaped as the apiserver sends them
	// (defaults and the service-account mount filled in; no managedFields).
	n, err := fit(22_510, 6<<20, func(n int) ([]byte, error) {
		review, _, _, meta, spec := fresh()
		delete(meta, "managedFields")
		spec["containers"] = apiContainers(n, true)
		return json.Marshal(review)
	})
	if err != nil {
		return nil, err
	}
	review, _, _, meta, spec := fresh()
	delete(meta, "managedFields")
	spec["containers"] = apiContainers(n, true)
	if err := add(fmt.Sprintf("%d containers", n), review); err != nil {
		return nil, err
	}

	// 4. 1 MiB of podmeta.io/* annotation keys podmeta does not know.
	review, _, _, meta, _ = fresh()
	unknown := map[string]string{}
	for i, size := 0, 0; size < 1<<20 && i < 100_000; i++ {
		k := fmt.Sprintf("podmeta.io/unknown-%06d", i)
		unknown[k] = "x"
		size += len(k) + 7 // "k":"x",
	}
	annotate(meta, unknown)
	if err := add(fmt.Sprintf("%d unknown `podmeta.io/*` keys (1 MiB)", len(unknown)), review); err != nil {
		return nil, err
	}

	// 5. 4,000 containers and a metadata volume (podmeta's name) that already has as
	// many items as fit under --max-request-bytes, up to 80,000.
	podmetaVolume := func(spec map[string]any, items int) {
		list := make([]any, items)
		for i := range list {
			list[i] = map[string]any{"path": "i" + strconv.Itoa(i), "fieldRef": map[string]any{"apiVersion": "v1", "fieldPath": "metadata.name"}}
		}
		spec["volumes"] = append(spec["volumes"].([]any), map[string]any{"name": "podmeta", "downwardAPI": map[string]any{"items": list, "defaultMode": 420}})
	}
	items, err := fit(80_000, maxReviewBytes-64<<10, func(items int) ([]byte, error) {
		review, _, _, meta, spec := fresh()
		delete(meta, "managedFields")
		spec["containers"] = apiContainers(4_000, true)
		podmetaVolume(spec, items)
		return json.Marshal(review)
	})
	if err != nil {
		return nil, err
	}
	review, _, _, meta, spec = fresh()
	delete(meta, "managedFields")
	spec["containers"] = apiContainers(4_000, true)
	podmetaVolume(spec, items)
	if err := add(fmt.Sprintf("4,000 containers, volume `podmeta` with %d items", items), review); err != nil {
		return nil, err
	}

	// 6. A forged podmeta.io/status: env, mounts and storage defaults for 500
	// containers the pod does not have, the ambassador it does not have (~200 KB, under
	// the apiserver's 256 KiB for all annotations).
	type status struct {
		Env              map[string][]string          `json:"env"`
		Volume           string                       `json:"volume"`
		Mounts           []string                     `json:"mounts"`
		EphemeralStorage map[string]map[string]string `json:"ephemeralStorage"`
		Ambassador       string                       `json:"ambassador"`
	}
	forged := status{Env: map[string][]string{}, Volume: "/etc/podinfo", EphemeralStorage: map[string]map[string]string{}, Ambassador: "native-sidecar"}
	envs := []string{"POD_NAME", "POD_NAMESPACE", "POD_UID", "POD_IP", "HOST_IP", "NODE_NAME", "SERVICE_ACCOUNT", "CONTAINER_CPU_REQUEST_MILLICORES", "CONTAINER_MEMORY_LIMIT_BYTES", "PODMETA_API_URL"}
	for i := range 500 {
		c := fmt.Sprintf("ghost-%03d", i)
		forged.Env[c] = envs
		forged.Mounts = append(forged.Mounts, c)
		forged.EphemeralStorage[c] = map[string]string{"request": "1Gi", "limit": "1e2147483647"}
	}
	forged.Env["web"] = envs // and more than podmeta added to a container that exists
	fs, _ := json.Marshal(forged)
	review, _, _, meta, _ = fresh()
	annotate(meta, map[string]string{"podmeta.io/status": string(fs)})
	if err := add(fmt.Sprintf("forged `podmeta.io/status` (%d KB, 500 ghost containers)", len(fs)/1000), review); err != nil {
		return nil, err
	}
	return b, nil
}

// fit returns the largest n <= want whose body is at most limit bytes.
func fit(want, limit int, build func(int) ([]byte, error)) (int, error) {
	n := want
	for range 8 {
		data, err := build(n)
		if err != nil {
			return 0, err
		}
		if len(data) <= limit {
			return n, nil
		}
		n = int(float64(n) * float64(limit) / float64(len(data)) * 0.995)
	}
	return 0, fmt.Errorf("no body of at most %d bytes", limit)
}

// apiContainers returns n containers as the apiserver sends them in a review: its
// defaults filled in and the service-account token mounted.
func apiContainers(n int, mount bool) []any {
	out := make([]any, n)
	for i := range out {
		c := map[string]any{
			"name": "c" + strconv.Itoa(i), "image": "registry.example.com/app:1", "resources": map[string]any{},
			"terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent",
		}
		if mount {
			c["volumeMounts"] = []any{map[string]any{"name": "kube-api-access-fd692", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}}
		}
		out[i] = c
	}
	return out
}

// quantile is the q-th percentile of sorted durations, in milliseconds.
func quantile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * q / 100)
	return float64(sorted[i].Microseconds()) / 1000
}

// counts renders a tally as "a x3, b x1", largest first.
func counts(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s ×%d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// cpuTicks is a process's user+system CPU time in clock ticks (1/100 s).
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

func procStatus(pid int, key string) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// procStatusKiB is a numeric field of /proc/PID/status (kB for sizes), 0 if unknown.
func procStatusKiB(pid int, key string) int64 {
	f := strings.Fields(procStatus(pid, key))
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.ParseInt(f[0], 10, 64)
	return n
}

func procEnv(pid int, key string) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	for kv := range strings.SplitSeq(string(b), "\x00") {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return "unset"
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

func cpuModel(cpuinfo []byte) string {
	for line := range strings.SplitSeq(string(cpuinfo), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
