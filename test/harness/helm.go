package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ChartDir is the podmeta Helm chart.
func ChartDir() string { return filepath.Join(Root(), "charts", "podmeta") }

// Helm runs bin/helm (make helm) against the control plane as cluster admin, with its
// cache, config and data directories kept in the control plane's scratch space so that
// nothing outside it is read or written.
type Helm struct {
	Binary     string
	Kubeconfig string
	env        []string
}

// HelmBinary returns bin/helm, or an error saying how to get it.
func HelmBinary() (string, error) {
	bin := filepath.Join(Root(), "bin", "helm")
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("no helm at %s: run `make helm`: %w", bin, err)
	}
	return bin, nil
}

// Helm returns a Helm bound to the control plane as an admin user.
func (cp *ControlPlane) Helm() (*Helm, error) {
	bin, err := HelmBinary()
	if err != nil {
		return nil, err
	}
	_, kubeconfig, err := cp.UserConfig("helm", "system:masters")
	if err != nil {
		return nil, err
	}
	home := filepath.Join(cp.Dir, "helm")
	return &Helm{Binary: bin, Kubeconfig: kubeconfig, env: helmEnv(home, kubeconfig)}, nil
}

// OfflineHelm returns a Helm for commands that need no cluster (template, lint).
func OfflineHelm(scratch string) (*Helm, error) {
	bin, err := HelmBinary()
	if err != nil {
		return nil, err
	}
	return &Helm{Binary: bin, env: helmEnv(scratch, os.DevNull)}, nil
}

func helmEnv(home, kubeconfig string) []string {
	env := []string{
		"HELM_CACHE_HOME=" + filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(home, "config"),
		"HELM_DATA_HOME=" + filepath.Join(home, "data"),
		"KUBECONFIG=" + kubeconfig,
		"HOME=" + home,
	}
	// PATH only: nothing else of the caller's environment (HELM_*, KUBECONFIG) leaks in.
	return append(env, "PATH="+os.Getenv("PATH"))
}

// Run runs helm with args and returns stdout; the error carries stderr.
func (h *Helm) Run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, h.Binary, args...)
	cmd.Env = h.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// Template renders the chart for release in namespace with --set values.
func (h *Helm) Template(ctx context.Context, release, namespace string, values ...string) (string, error) {
	args := []string{"template", release, ChartDir(), "--namespace", namespace, "--kube-version", "1.37.2"}
	for _, v := range values {
		args = append(args, "--set", v)
	}
	return h.Run(ctx, args...)
}

// CertManagerCRDs returns the directory of cert-manager's CRDs: the cert-manager module
// in go.mod when there is one, else that module at version fallback from the module
// cache (downloaded if needed).
func CertManagerCRDs(fallback string) (string, error) {
	const mod = "github.com/cert-manager/cert-manager"
	list := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", mod)
	list.Dir = Root()
	if out, err := list.Output(); err == nil && strings.TrimSpace(string(out)) != "" {
		if dir := strings.TrimSpace(string(out)); dirExists(dir) {
			return filepath.Join(dir, "deploy", "crds"), nil
		}
	}
	dl := exec.Command("go", "mod", "download", "-json", mod+"@"+fallback)
	dl.Dir = os.TempDir() // outside the main module: go.mod and go.sum stay untouched
	dl.Env = append(os.Environ(), "GO111MODULE=on", "GOFLAGS=-mod=mod")
	out, err := dl.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s@%s: %w", mod, fallback, err)
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil || info.Dir == "" {
		return "", fmt.Errorf("go mod download %s@%s: %s %v", mod, fallback, info.Error, err)
	}
	return filepath.Join(info.Dir, "deploy", "crds"), nil
}

func dirExists(dir string) bool {
	fi, err := os.Stat(dir)
	return err == nil && fi.IsDir()
}
