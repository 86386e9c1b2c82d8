package harness

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// ReadManifests decodes every object of a YAML file under the repository root.
func ReadManifests(rel string) ([]*unstructured.Unstructured, error) {
	f, err := os.Open(filepath.Join(Root(), rel))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	var out []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return nil, fmt.Errorf("%s: %w", rel, err)
		}
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
}

// ApplyCertsRBAC creates the shipped self-managed-certificates RBAC and empty Secret
// (config/rbac/certs_role.yaml and certs_role_binding.yaml) as shipped except for names:
// the Secret and webhook configuration it grants are secret and webhookConfig, and the
// Role, ClusterRole and bindings get "-"+webhookConfig appended, so that several tests'
// podmeta servers each get their own. The workload validation's configuration granted is
// webhookConfig+"-workloads", which is podmeta's default for it. The subject stays podmeta's ServiceAccount.
func (cp *ControlPlane) ApplyCertsRBAC(ctx context.Context, secret, webhookConfig string) error {
	var objs []*unstructured.Unstructured
	for _, f := range []string{"config/rbac/certs_role.yaml", "config/rbac/certs_role_binding.yaml"} {
		o, err := ReadManifests(f)
		if err != nil {
			return err
		}
		objs = append(objs, o...)
	}
	for _, u := range objs {
		switch u.GetKind() {
		case "Secret":
			u.SetName(secret)
		case "Role", "ClusterRole":
			rules, _, _ := unstructured.NestedSlice(u.Object, "rules")
			for _, r := range rules {
				rule := r.(map[string]any)
				res, _, _ := unstructured.NestedStringSlice(rule, "resources")
				switch res[0] {
				case "secrets":
					rule["resourceNames"] = []any{secret}
				case "mutatingwebhookconfigurations":
					rule["resourceNames"] = []any{webhookConfig}
				case "validatingwebhookconfigurations":
					// podmeta's default --validating-webhook-config-name for webhookConfig.
					rule["resourceNames"] = []any{webhookConfig + "-workloads"}
				}
			}
			if err := unstructured.SetNestedSlice(u.Object, rules, "rules"); err != nil {
				return err
			}
			u.SetName(u.GetName() + "-" + webhookConfig)
		case "RoleBinding", "ClusterRoleBinding":
			u.SetName(u.GetName() + "-" + webhookConfig)
			if err := unstructured.SetNestedField(u.Object, u.GetName(), "roleRef", "name"); err != nil {
				return err
			}
		}
		if ns := u.GetNamespace(); ns != "" {
			if err := cp.EnsureNamespace(ctx, ns, nil, nil); err != nil {
				return err
			}
		}
		if err := cp.Client.Create(ctx, u); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s %s: %w", u.GetKind(), u.GetName(), err)
		}
	}
	return nil
}

// ShippedWebhookConfiguration returns the MutatingWebhookConfiguration of
// config/webhook/manifests.yaml, as shipped.
func ShippedWebhookConfiguration() (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	objs, err := ReadManifests("config/webhook/manifests.yaml")
	if err != nil {
		return nil, err
	}
	for _, u := range objs {
		if u.GetKind() == "MutatingWebhookConfiguration" {
			whc := &admissionregistrationv1.MutatingWebhookConfiguration{}
			return whc, runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, whc)
		}
	}
	return nil, errors.New("config/webhook/manifests.yaml has no MutatingWebhookConfiguration")
}

// ServedCertificate returns the certificate a TLS server at addr presents (not
// verified: tests compare it with what they expect).
func ServedCertificate(addr string) (*x509.Certificate, error) {
	d := &net.Dialer{Timeout: 2 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // inspected, not trusted
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

// ModuleDir returns the directory of a module in the build list (in the module cache),
// e.g. to read the CRDs a dependency ships.
func ModuleDir(path string) (string, error) {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", path)
	cmd.Dir = Root()
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go list -m %s: %w", path, err)
	}
	return strings.TrimSpace(string(out)), nil
}
