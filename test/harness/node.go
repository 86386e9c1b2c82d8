package harness

// A single real node for the node tests (make test-node): the control plane from
// Start's recipe, plus Debian's containerd + runc + CNI bridge and a kubelet built from
// source, all in one network namespace.
//
// The process calling StartNode must already run inside that namespace (hack/node/run.sh
// creates it with `ip netns add`, gives it a veth interface with NodeIP and runs the
// test binary under `nsenter --net=`); StartNode checks that NodeIP is one of its
// addresses. The kube-apiserver serves on NodeIP:443, and the service CIDR is chosen so
// that the "kubernetes" Service's ClusterIP is NodeIP too: pods reach the API server at
// $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT without kube-proxy, and the serving
// certificate (which names NodeIP) verifies.

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

const (
	// NodeIP is the node's InternalIP, the kubelet's and the API server's address, on
	// a veth interface in the test's network namespace (hack/node/run.sh).
	NodeIP = "10.250.0.1"
	// NodeName is the Node object's name.
	NodeName = "podmeta-node"
	// PodCIDR is the CNI bridge's subnet.
	PodCIDR = "10.244.0.0/24"
	// CNIBinDir is where Debian's containernetworking-plugins installs the plugins.
	CNIBinDir = "/usr/lib/cni"

	// Images imported into containerd, built from test/node/images.
	PauseImage      = "podmeta.local/pause:test"
	TestAppImage    = "podmeta.local/testapp:test"
	AmbassadorImage = "podmeta.local/ambassador:test"
)

// Node is a running single-node cluster.
type Node struct {
	*ControlPlane
	CA         []byte // the API server's CA, published as kube-root-ca.crt
	containerd *exec.Cmd
	kubelet    *exec.Cmd
	sock       string
	cgroup     string
	netnsSeen  map[string]bool
	Logs       map[string]string // component → log file
}

// NodeBinaries are the static binaries StartNode packs into images; hack/node/run.sh
// builds them into $PODMETA_NODE_BIN.
type NodeBinaries struct {
	Pause, PrintEnv, APIGet, Ambassador string
}

// BinariesFrom returns the binaries in dir as hack/node/run.sh names them.
func BinariesFrom(dir string) NodeBinaries {
	return NodeBinaries{
		Pause:      filepath.Join(dir, "pause"),
		PrintEnv:   filepath.Join(dir, "printenv"),
		APIGet:     filepath.Join(dir, "apiget"),
		Ambassador: filepath.Join(dir, "ambassador"),
	}
}

// StartNode starts etcd + kube-apiserver, containerd and the kubelet, imports the
// images and waits until the node is Ready. On error everything started is stopped.
func StartNode(ctx context.Context, bins NodeBinaries) (n *Node, err error) {
	if err := checkNodeIP(); err != nil {
		return nil, err
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	for _, b := range []string{"kube-apiserver", "etcd", "kubelet"} {
		if _, err := os.Stat(filepath.Join(assets, b)); err != nil {
			return nil, fmt.Errorf("no %s in KUBEBUILDER_ASSETS=%q (make test-node builds it): %w", b, assets, err)
		}
	}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr"} {
		if _, err := exec.LookPath(b); err != nil {
			return nil, fmt.Errorf("%s not installed (hack/node/install.sh installs containerd, runc, containernetworking-plugins): %w", b, err)
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(CNIBinDir, p)); err != nil {
			return nil, fmt.Errorf("CNI plugin %s missing (apt-get install containernetworking-plugins): %w", p, err)
		}
	}
	dir, err := os.MkdirTemp("", "pmnode")
	if err != nil {
		return nil, err
	}
	n = &Node{Logs: map[string]string{}, netnsSeen: listNetns()}
	n.sock = filepath.Join(dir, "containerd.sock")
	defer func() {
		if err != nil {
			n.Stop()
			if n.ControlPlane == nil {
				os.RemoveAll(dir)
			}
		}
	}()
	if n.ControlPlane, n.CA, err = startNodeControlPlane(dir); err != nil {
		return n, err
	}
	if err = n.startContainerd(ctx, dir); err != nil {
		return n, err
	}
	if err = n.importImages(ctx, dir, bins); err != nil {
		return n, err
	}
	if err = n.startKubelet(ctx, dir); err != nil {
		return n, err
	}
	return n, nil
}

func checkNodeIP() error {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.String() == NodeIP {
			return nil
		}
	}
	return fmt.Errorf("%s is not an address of this network namespace: run the node tests with `make test-node` (hack/node/run.sh), which creates the namespace", NodeIP)
}

func startNodeControlPlane(dir string) (*ControlPlane, []byte, error) {
	cp, err := StartWith(dir, func(env *envtest.Environment) {
		api := env.ControlPlane.GetAPIServer()
		api.SecureServing.ListenAddr.Address = NodeIP
		api.SecureServing.ListenAddr.Port = "443"
		args := api.Configure()
		// The "kubernetes" Service gets the range's first address: NodeIP.
		args.Set("service-cluster-ip-range", "10.250.0.0/24")
		args.Set("advertise-address", NodeIP)
		// The Node's Hostname address (NodeName) resolves nowhere: logs and exec go to
		// the kubelet at its InternalIP.
		args.Set("kubelet-preferred-address-types", "InternalIP")
	})
	if err != nil {
		return nil, nil, err
	}
	return cp, cp.Env.ControlPlane.GetAPIServer().SecureServing.CA, nil
}

// EnsureNamespace creates the namespace, its "default" ServiceAccount and its
// kube-root-ca.crt ConfigMap (no controller-manager runs here).
func (n *Node) EnsureNamespace(ctx context.Context, name string, labels, annotations map[string]string) error {
	if err := n.ControlPlane.EnsureNamespace(ctx, name, labels, annotations); err != nil {
		return err
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt", Namespace: name},
		Data: map[string]string{"ca.crt": string(n.CA)}}
	if err := n.Client.Create(ctx, cm); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create configmap %s/kube-root-ca.crt: %w", name, err)
	}
	return nil
}

func (n *Node) logFile(dir, component string) (*os.File, error) {
	p := filepath.Join(dir, component+".log")
	n.Logs[component] = p
	return os.Create(p)
}

// LogTail returns the last max bytes of a component's log.
func (n *Node) LogTail(component string, max int) string {
	b, _ := os.ReadFile(n.Logs[component])
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

func (n *Node) startContainerd(ctx context.Context, dir string) error {
	cniConf := filepath.Join(dir, "net.d")
	if err := os.MkdirAll(cniConf, 0o755); err != nil {
		return err
	}
	conflist := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "podmeta",
  "plugins": [{
    "type": "bridge", "bridge": "pmcni0", "isGateway": true, "ipMasq": false,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}
  }]
}
`, PodCIDR, filepath.Join(dir, "cni-ipam"))
	if err := os.WriteFile(filepath.Join(cniConf, "10-podmeta.conflist"), []byte(conflist), 0o644); err != nil {
		return err
	}
	conf := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # Without it runc fails to set the sandbox's oom_score_adj here:
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
`, filepath.Join(dir, "containerd", "root"), filepath.Join(dir, "containerd", "state"), n.sock, PauseImage, CNIBinDir, cniConf)
	confPath := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return err
	}
	log, err := n.logFile(dir, "containerd")
	if err != nil {
		return err
	}
	n.containerd = exec.Command("containerd", "--config", confPath)
	n.containerd.Stdout, n.containerd.Stderr = log, log
	n.containerd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := n.containerd.Start(); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := n.ctr(ctx, "version")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd not up after 30s: %v %s\ncontainerd log:\n%s", err, out, n.LogTail("containerd", 4000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (n *Node) ctr(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", n.sock, "-n", "k8s.io"}, args...)...)
	return cmd.CombinedOutput()
}

func (n *Node) importImages(ctx context.Context, dir string, bins NodeBinaries) error {
	images := []struct {
		ref        string
		files      map[string]string // path in image → local file
		entrypoint []string
	}{
		{PauseImage, map[string]string{"pause": bins.Pause}, []string{"/pause"}},
		{TestAppImage, map[string]string{"printenv": bins.PrintEnv, "apiget": bins.APIGet}, []string{"/printenv"}},
		{AmbassadorImage, map[string]string{"ambassador": bins.Ambassador}, []string{"/ambassador"}},
	}
	for _, im := range images {
		path := filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(im.ref)+".tar")
		if err := WriteImage(path, im.ref, im.files, im.entrypoint); err != nil {
			return fmt.Errorf("build image %s: %w", im.ref, err)
		}
		if out, err := n.ctr(ctx, "images", "import", path); err != nil {
			return fmt.Errorf("ctr images import %s: %w\n%s", path, err, out)
		}
	}
	return nil
}

// WriteImage writes a docker-archive tarball of a one-layer image holding files (mode
// 0755, owned by root) on an empty base, for `ctr images import`.
func WriteImage(path, ref string, files map[string]string, entrypoint []string) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, src := range files {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(b)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		if _, err := tw.Write(b); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerBytes)), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config = v1.Config{Entrypoint: entrypoint, Env: []string{"PATH=/"}}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(path, tag, img)
}

func (n *Node) startKubelet(ctx context.Context, dir string) error {
	// Pods' cgroups go under a cgroup of this run's own (cgroup v1, cgroupfs driver), so
	// that teardown can remove exactly them and two runs do not share /kubepods.
	n.cgroup = "/" + filepath.Base(dir)
	if err := makeCgroupRoot(n.cgroup); err != nil {
		return err
	}
	_, kubeconfig, err := n.UserConfig("system:node:"+NodeName, "system:nodes", "system:masters")
	if err != nil {
		return err
	}
	root := filepath.Join(dir, "kubelet")
	conf := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %s
containerRuntimeEndpoint: unix://%s
failSwapOn: false
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
podLogsDir: %s
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
syncFrequency: 10s
serializeImagePulls: false
`, n.cgroup, n.sock, NodeIP, filepath.Join(dir, "pod-logs"))
	confPath := filepath.Join(dir, "kubelet.yaml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return err
	}
	log, err := n.logFile(dir, "kubelet")
	if err != nil {
		return err
	}
	n.kubelet = exec.Command(filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubelet"),
		"--config="+confPath, "--kubeconfig="+kubeconfig, "--root-dir="+root,
		"--cert-dir="+filepath.Join(dir, "kubelet-pki"),
		"--node-ip="+NodeIP, "--hostname-override="+NodeName, "--v=2")
	n.kubelet.Stdout, n.kubelet.Stderr = log, log
	n.kubelet.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := n.kubelet.Start(); err != nil {
		return fmt.Errorf("start kubelet: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- n.kubelet.Wait() }()
	deadline := time.Now().Add(120 * time.Second)
	var last string
	for {
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("kubelet exited: %v\nkubelet log:\n%s", err, n.LogTail("kubelet", 6000))
		default:
		}
		node, err := n.Clientset.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err == nil {
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady {
					if c.Status == corev1.ConditionTrue {
						return nil
					}
					last = c.Reason + ": " + c.Message
				}
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s not Ready after 120s (%s)\nkubelet log:\n%s\ncontainerd log:\n%s", NodeName, last, n.LogTail("kubelet", 6000), n.LogTail("containerd", 3000))
		}
		time.Sleep(time.Second)
	}
}

// cgroupHierarchies returns the cgroup v1 hierarchies; with unified, also the hybrid
// layout's cgroup v2 mount (runc creates the containers' cgroups there as well).
func cgroupHierarchies(unified bool) []string {
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	var hs []string
	for _, e := range entries {
		if e.IsDir() && (unified || e.Name() != "unified") {
			hs = append(hs, filepath.Join("/sys/fs/cgroup", e.Name()))
		}
	}
	return hs
}

func makeCgroupRoot(cg string) error {
	for _, h := range cgroupHierarchies(false) {
		p := filepath.Join(h, cg)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("create cgroup root %s: %w", p, err)
		}
		if filepath.Base(h) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(h, f))
				if err == nil {
					err = os.WriteFile(filepath.Join(p, f), b, 0o644)
				}
				if err != nil {
					return fmt.Errorf("cgroup %s: %s: %w", p, f, err)
				}
			}
		}
	}
	return nil
}

// Stop deletes every pod, stops the kubelet, containerd and the shims it left, removes
// the pods' network namespaces, mounts and cgroups, then stops the control plane.
func (n *Node) Stop() error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if n.kubelet != nil && n.kubelet.Process != nil && n.Clientset != nil {
		// Let the kubelet tear the pods down properly (CNI DEL, unmounts) first.
		pods, err := n.Clientset.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err == nil {
			zero := int64(0)
			for _, p := range pods.Items {
				_ = n.Clientset.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
			}
			// The kubelet cannot delete the API object (no grace-period force), so wait
			// for the containers to go instead.
			for ctx.Err() == nil {
				out, _ := n.ctr(ctx, "tasks", "ls", "-q")
				if len(bytes.TrimSpace(out)) == 0 {
					break
				}
				time.Sleep(time.Second)
			}
		}
	}
	stopProc(n.kubelet, 10*time.Second)
	if n.containerd != nil && n.containerd.Process != nil {
		shims := n.shimPIDs()
		stopProc(n.containerd, 15*time.Second)
		for _, pid := range shims {
			// The shims and their containers outlive containerd: kill the containers
			// (the shim's descendants), then the shim.
			for _, c := range descendants(pid) {
				_ = syscall.Kill(c, syscall.SIGKILL)
			}
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if n.ControlPlane != nil {
		dir := n.Dir
		unmountUnder(dir)
		for _, ns := range newNetns(n.netnsSeen) {
			if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("ip netns delete %s: %v %s", ns, err, out))
			}
		}
		if n.cgroup != "" {
			removeCgroups(n.cgroup)
		}
		if err := n.ControlPlane.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func stopProc(cmd *exec.Cmd, grace time.Duration) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		for {
			// Wait may already be running in another goroutine; poll instead.
			if err := syscall.Kill(cmd.Process.Pid, 0); err != nil {
				close(done)
				return
			}
			if _, err := os.Stat(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)); err == nil {
				if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)); bytes.Contains(b, []byte("State:\tZ")) {
					close(done)
					return
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
	}
	if cmd.ProcessState == nil {
		go func() { _ = cmd.Wait() }()
	}
}

// shimPIDs returns the containerd-shim-runc-v2 processes serving this run's containerd.
func (n *Node) shimPIDs() []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 0 && strings.HasSuffix(args[0], "containerd-shim-runc-v2") && containsSeq(args, "-address", n.sock) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func containsSeq(args []string, k, v string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == k && args[i+1] == v {
			return true
		}
	}
	return false
}

func descendants(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 {
			if pp, err := strconv.Atoi(f[1]); err == nil {
				children[pp] = append(children[pp], p)
			}
		}
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		for _, c := range children[p] {
			walk(c)
			out = append(out, c)
		}
	}
	walk(pid)
	return out
}

// unmountUnder lazily unmounts every mount point under dir, deepest first.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var mps []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && (f[1] == dir || strings.HasPrefix(f[1], dir+"/")) {
			mps = append(mps, f[1])
		}
	}
	for i := len(mps) - 1; i >= 0; i-- {
		_ = syscall.Unmount(mps[i], syscall.MNT_DETACH)
	}
}

func listNetns() map[string]bool {
	seen := map[string]bool{}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		seen[e.Name()] = true
	}
	return seen
}

// newNetns returns the CNI-made namespaces (cni-*) that appeared since seen.
func newNetns(seen map[string]bool) []string {
	var out []string
	for ns := range listNetns() {
		if !seen[ns] && strings.HasPrefix(ns, "cni-") {
			out = append(out, ns)
		}
	}
	return out
}

// removeCgroups removes cg and everything below it in every hierarchy, deepest first.
func removeCgroups(cg string) {
	for _, h := range cgroupHierarchies(true) {
		root := filepath.Join(h, cg)
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			_ = os.Remove(dirs[i])
		}
	}
}
