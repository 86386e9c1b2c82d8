// Package harness runs podmeta against a real local control plane: kube-apiserver and
// etcd built from source into bin/k8s (make k8s), started with controller-runtime's
// envtest. The integration tests, the benchmarks and `make demo` share it.
//
// podmeta runs as its real binary, as its own user with only the RBAC that config/rbac
// grants, behind the MutatingWebhookConfiguration from config/webhook exactly as shipped
// except for clientConfig, which points at the local server.
package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// PodmetaUser is the identity podmeta runs as: its ServiceAccount, bound by config/rbac.
const PodmetaUser = "system:serviceaccount:podmeta-system:podmeta"

// Root is the repository root.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// ControlPlane is a running etcd + kube-apiserver.
type ControlPlane struct {
	Env       *envtest.Environment
	Config    *rest.Config // cluster admin
	Client    client.Client
	Clientset kubernetes.Interface
	Dir       string // scratch space, removed by Stop

	restarted []*exec.Cmd // kube-apiservers RestartAPIServer started
}

// Start starts the control plane from $KUBEBUILDER_ASSETS and registers podmeta's
// webhook configuration, pointed at 127.0.0.1 with envtest's serving certificate.
func Start() (*ControlPlane, error) { return StartWith("", nil) }

// StartWith is Start in a scratch directory of the caller's (removed by Stop; "" for a
// new one) with a hook that adjusts the environment before it starts (the node test
// serves the apiserver on the node's address).
func StartWith(dir string, configure func(*envtest.Environment)) (*ControlPlane, error) {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if _, err := os.Stat(filepath.Join(assets, "kube-apiserver")); err != nil {
		return nil, fmt.Errorf("no kube-apiserver in KUBEBUILDER_ASSETS=%q: run `make k8s` (or use `make test`, which does): %w", assets, err)
	}
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "podmeta-cp"); err != nil {
			return nil, err
		}
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		WebhookInstallOptions: envtest.WebhookInstallOptions{
			Paths:            []string{filepath.Join(Root(), "config", "webhook", "manifests.yaml")},
			LocalServingHost: "127.0.0.1",
		},
	}
	// envtest turns the ServiceAccount admission plugin off because it has no
	// controller-manager to create ServiceAccounts. Real clusters run it, and podmeta
	// relies on what it sets (serviceAccountName), so it is on here and the harness
	// creates each namespace's "default" ServiceAccount itself.
	apiserver := env.ControlPlane.GetAPIServer()
	apiserver.Configure().Disable("disable-admission-plugins")
	// A fixed certificate directory (envtest picks a fresh one per start otherwise)
	// lets a test restart the apiserver with the same serving certificate and
	// service-account keys, as a real apiserver restart keeps them.
	apiserver.CertDir = filepath.Join(dir, "apiserver")
	if err := os.MkdirAll(apiserver.CertDir, 0o700); err != nil {
		return nil, err
	}
	if configure != nil {
		configure(env)
	}
	cfg, err := env.Start()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start kube-apiserver and etcd: %w", err)
	}
	cp := &ControlPlane{Env: env, Config: cfg, Dir: dir}
	if cp.Client, err = client.New(cfg, client.Options{}); err == nil {
		cp.Clientset, err = kubernetes.NewForConfig(cfg)
	}
	if err == nil {
		err = cp.Apply(context.Background(), filepath.Join(Root(), "config", "rbac", "role.yaml"))
	}
	if err != nil {
		cp.Stop()
		return nil, err
	}
	return cp, nil
}

// Stop stops the control plane and removes its files.
func (cp *ControlPlane) Stop() error {
	for _, c := range cp.restarted {
		_ = c.Process.Kill()
	}
	err := cp.Env.Stop()
	os.RemoveAll(cp.Dir)
	return err
}

// Apply creates every object of a YAML file (namespaces of namespaced objects included).
func (cp *ControlPlane) Apply(ctx context.Context, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		if ns := u.GetNamespace(); ns != "" {
			if err := cp.EnsureNamespace(ctx, ns, nil, nil); err != nil {
				return err
			}
		}
		if err := cp.Client.Create(ctx, &u); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("%s: create %s %s: %w", path, u.GetKind(), u.GetName(), err)
		}
	}
}

// CreatePolicies creates admission policies and their bindings, then waits until acts
// (typically a dry-run create of a probe pod) returns nil: the apiserver reads policies
// into its cache asynchronously, so a pod created right after them may not see them.
func CreatePolicies[O client.Object](ctx context.Context, cp *ControlPlane, objs []O, acts func(ctx context.Context) error) error {
	for _, o := range objs {
		if err := cp.Client.Create(ctx, o); err != nil {
			return fmt.Errorf("create %T %s: %w", o, o.GetName(), err)
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		err := acts(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the policies do not act after 30s: %w", err)
		}
	}
}

// EnsureNamespace creates a namespace with its "default" ServiceAccount (there is no
// controller-manager to create it, and pods cannot be admitted without it).
func (cp *ControlPlane) EnsureNamespace(ctx context.Context, name string, labels, annotations map[string]string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: annotations}}
	if err := cp.Client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: name}}
	if err := cp.Client.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create serviceaccount %s/default: %w", name, err)
	}
	return nil
}

// UserConfig returns a rest.Config and a kubeconfig file for a user in groups: with
// none, what it may do is what RBAC grants it; "system:masters" is cluster admin.
func (cp *ControlPlane) UserConfig(name string, groups ...string) (*rest.Config, string, error) {
	u, err := cp.Env.AddUser(envtest.User{Name: name, Groups: groups}, cp.Config)
	if err != nil {
		return nil, "", err
	}
	kc, err := u.KubeConfig()
	if err != nil {
		return nil, "", err
	}
	path := filepath.Join(cp.Dir, "kubeconfig-"+strconv.Itoa(int(time.Now().UnixNano())))
	return u.Config(), path, os.WriteFile(path, kc, 0o600)
}

// Podmeta is a running `podmeta webhook` process.
type Podmeta struct {
	Cmd         *exec.Cmd
	MetricsAddr string
	ProbeAddr   string
	Log         *os.File
	done        chan error
}

// StartPodmeta runs binary as the webhook envtest registered, with extra flags, and
// waits until it is ready.
func (cp *ControlPlane) StartPodmeta(ctx context.Context, binary string, extra ...string) (*Podmeta, error) {
	_, kubeconfig, err := cp.UserConfig(PodmetaUser)
	if err != nil {
		return nil, err
	}
	wio := cp.Env.WebhookInstallOptions
	p := &Podmeta{MetricsAddr: FreeAddr(), ProbeAddr: FreeAddr(), done: make(chan error, 1)}
	args := append([]string{"webhook",
		"--kubeconfig=" + kubeconfig,
		"--host=" + wio.LocalServingHost,
		"--port=" + strconv.Itoa(wio.LocalServingPort),
		"--cert-dir=" + wio.LocalServingCertDir,
		"--metrics-bind-address=" + p.MetricsAddr,
		"--health-probe-bind-address=" + p.ProbeAddr,
	}, extra...)
	if p.Log, err = os.CreateTemp(cp.Dir, "podmeta-*.log"); err != nil {
		return nil, err
	}
	p.Cmd = exec.Command(binary, args...)
	p.Cmd.Stdout, p.Cmd.Stderr = p.Log, p.Log
	if err := p.Cmd.Start(); err != nil {
		return nil, fmt.Errorf("start podmeta: %w", err)
	}
	go func() { p.done <- p.Cmd.Wait() }()
	if err := p.waitReady(ctx, 30*time.Second); err != nil {
		p.Cmd.Process.Kill()
		<-p.done
		logs, _ := os.ReadFile(p.Log.Name())
		return nil, fmt.Errorf("%w; podmeta log:\n%s", err, logs)
	}
	return p, nil
}

func (p *Podmeta) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case err := <-p.done:
			p.done <- err
			return fmt.Errorf("podmeta exited before it was ready: %w", err)
		default:
		}
		last, ok := GetOK(http.DefaultClient, "http://"+p.ProbeAddr+"/readyz")
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("podmeta not ready after %s (last /readyz: %s)", timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// GetOK makes one GET and reports whether it answered 200; otherwise it describes the
// answer (status and body, or the error) for a "not ready" message. Readiness loops
// poll with it.
func GetOK(c *http.Client, url string) (string, bool) {
	resp, err := c.Get(url)
	if err != nil {
		return err.Error(), false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		return "", true
	}
	return fmt.Sprintf("%s %s", resp.Status, b), false
}

// Stop sends SIGTERM and waits for a clean exit; it returns the exit error, if any.
func (p *Podmeta) Stop() error {
	if p.Cmd.ProcessState == nil {
		p.Cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(70 * time.Second):
		p.Cmd.Process.Kill()
		return errors.New("podmeta did not exit within 70s of SIGTERM")
	}
}

// Metrics returns the text of podmeta's /metrics.
func (p *Podmeta) Metrics() (string, error) {
	resp, err := http.Get("http://" + p.MetricsAddr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// Logs returns what podmeta wrote so far.
func (p *Podmeta) Logs() string {
	b, _ := os.ReadFile(p.Log.Name())
	return string(b)
}

// FreeAddr returns a free 127.0.0.1 address.
func FreeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// BuildPodmeta builds cmd/podmeta into dir and returns the binary's path.
func BuildPodmeta(dir string) (string, error) {
	bin := filepath.Join(dir, "podmeta")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/podmeta")
	cmd.Dir = Root()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build podmeta: %w\n%s", err, out)
	}
	return bin, nil
}

// RestartAPIServer kills kube-apiserver (as a crash would) and starts it again with
// the same binary, flags and certificates, then waits until it is ready. envtest
// cannot restart it in place (it would pick new certificates), so the harness re-runs
// the process itself and stops it in Stop.
func (cp *ControlPlane) RestartAPIServer(ctx context.Context) error {
	pid, args, err := findProcess("kube-apiserver", cp.Env.ControlPlane.APIServer.CertDir)
	if err != nil {
		return err
	}
	p, _ := os.FindProcess(pid)
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	for deadline := time.Now().Add(30 * time.Second); processAlive(pid); {
		if time.Now().After(deadline) {
			return fmt.Errorf("kube-apiserver %d did not die", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	logPath := filepath.Join(cp.Dir, "kube-apiserver-restarted.log")
	// The port is free once the old process is gone, but an outgoing connection may take
	// it as its local port for a moment (the new apiserver's own etcd clients, a client
	// redialling the dead one): the new process then exits with "address already in
	// use". Start it again rather than wait for a process that is gone.
	for attempt := 1; ; attempt++ {
		exited, err := cp.startAPIServer(args, logPath)
		if err != nil {
			return err
		}
		err = cp.waitAPIServerReady(ctx, exited, logPath)
		if err == nil {
			return nil
		}
		out, _ := os.ReadFile(logPath)
		if attempt == 5 || !bytes.Contains(out, []byte("address already in use")) {
			return err
		}
		time.Sleep(time.Second)
	}
}

// startAPIServer starts kube-apiserver with args, logging to logPath; the channel is
// closed when the process exits.
func (cp *ControlPlane) startAPIServer(args []string, logPath string) (<-chan struct{}, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("restart kube-apiserver: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logFile.Close(); close(exited) }()
	cp.restarted = append(cp.restarted, cmd)
	return exited, nil
}

// waitAPIServerReady polls /readyz until it answers ok, the process exits, or 120 s pass.
func (cp *ControlPlane) waitAPIServerReady(ctx context.Context, exited <-chan struct{}, logPath string) error {
	fail := func(err error) error {
		out, _ := os.ReadFile(logPath)
		if len(out) > 4000 {
			out = out[len(out)-4000:]
		}
		return fmt.Errorf("kube-apiserver not ready after restart: %w\n%s", err, out)
	}
	for deadline := time.Now().Add(120 * time.Second); ; { // a loaded CI machine is slow to start it
		body, err := cp.Clientset.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && string(body) == "ok" {
			return nil
		}
		select {
		case <-exited:
			return fail(errors.New("the process exited"))
		default:
		}
		if time.Now().After(deadline) {
			return fail(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func findProcess(name, argContains string) (int, []string, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, nil, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if filepath.Base(args[0]) == name && strings.Contains(string(raw), argContains) {
			return pid, args, nil
		}
	}
	return 0, nil, fmt.Errorf("no %s process with %q in its arguments", name, argContains)
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie (state Z) is dead; it only waits for its parent to reap it.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// Suite is what a test package's TestMain shares: a podmeta binary built from this tree
// and a running control plane.
type Suite struct {
	Binary string
	CP     *ControlPlane
	dir    string
}

// StartSuite builds podmeta and starts the control plane, once per test package.
func StartSuite() (*Suite, error) {
	dir, err := os.MkdirTemp("", "podmeta-suite")
	if err != nil {
		return nil, err
	}
	s := &Suite{dir: dir}
	if s.Binary, err = BuildPodmeta(dir); err == nil {
		s.CP, err = Start()
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// Stop stops the control plane and removes the binary.
func (s *Suite) Stop() {
	_ = s.CP.Stop()
	os.RemoveAll(s.dir)
}
