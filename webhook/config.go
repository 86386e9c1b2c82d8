package webhook

import (
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Config is the operator's side of podmeta: the defaults every pod starts from before
// namespace and pod annotations are applied, plus what only the operator may choose (the
// ambassador's image and resources, excluded namespaces). The server and the inject CLI
// bind the same flags onto it.
type Config struct {
	// Inject is the default of podmeta.io/inject for pods in opted-in namespaces.
	Inject bool
	// Env is the default of podmeta.io/env: default, all, none or a comma list.
	Env string
	// EnvPrefix is the default of podmeta.io/env-prefix.
	EnvPrefix string
	// Volume is the default of podmeta.io/volume.
	Volume bool
	// VolumePath is the default of podmeta.io/volume-path.
	VolumePath string
	// EphemeralStorageRequest is the default request (a quantity or "none").
	EphemeralStorageRequest string
	// EphemeralStorageLimit is the default limit (a quantity or "none").
	EphemeralStorageLimit string

	// Ambassador is the default of podmeta.io/ambassador.
	Ambassador bool
	// AmbassadorMode is the default of podmeta.io/ambassador-mode.
	AmbassadorMode string
	// AmbassadorPort is the default of podmeta.io/ambassador-port.
	AmbassadorPort int
	// AmbassadorImage is the sidecar image. Only the operator sets it: an annotation
	// choosing an image would let any pod author run arbitrary code as "podmeta".
	AmbassadorImage string
	// AmbassadorImagePullPolicy is the sidecar's imagePullPolicy.
	AmbassadorImagePullPolicy corev1.PullPolicy
	// AmbassadorAllowPrivilegedPaths lets every ambassador forward the API paths that run
	// code or mint credentials (nodes/proxy, pods/ephemeralcontainers,
	// serviceaccounts/token, pods/proxy, services/proxy), which it refuses by default.
	// Only the operator sets it, for every pod: no annotation can.
	AmbassadorAllowPrivilegedPaths bool
	// AmbassadorResources is the sidecar's requests and limits, e.g.
	// "requests.cpu=10m,requests.memory=16Mi,limits.memory=48Mi".
	AmbassadorResources string
	// NativeSidecar is auto, always or never: whether the ambassador is a native sidecar
	// (an init container with restartPolicy Always, Kubernetes >= 1.29).
	NativeSidecar string

	// ExcludedNamespaces are never mutated, whatever their labels say.
	ExcludedNamespaces []string

	// MaxPatchBytes bounds the JSON patch of one pod (0: DefaultMaxPatchBytes): a pod
	// whose patch would be larger is denied, by the webhook and by inject alike.
	MaxPatchBytes int
}

// DefaultConfig returns the defaults the README documents and the chart repeats.
func DefaultConfig() Config {
	return Config{
		Inject:                    true,
		Env:                       EnvSetDefault,
		Volume:                    true,
		VolumePath:                DefaultVolumePath,
		EphemeralStorageRequest:   "64Mi",
		EphemeralStorageLimit:     "none",
		AmbassadorMode:            ModeReadOnly,
		AmbassadorPort:            DefaultAmbassadorPort,
		AmbassadorImage:           "ghcr.io/podmeta/ambassador:latest",
		AmbassadorImagePullPolicy: corev1.PullIfNotPresent,
		AmbassadorResources:       "requests.cpu=5m,requests.memory=16Mi,requests.ephemeral-storage=1Mi,limits.memory=48Mi,limits.ephemeral-storage=16Mi",
		NativeSidecar:             NativeSidecarAuto,
		ExcludedNamespaces:        slices.Clone(DefaultExcludedNamespaces),
		MaxPatchBytes:             DefaultMaxPatchBytes,
	}
}

// AddFlags binds every field onto fs; the current values are the flag defaults.
func (c *Config) AddFlags(fs *flag.FlagSet) {
	fs.BoolVar(&c.Inject, "inject", c.Inject, "default of "+AnnotationInject)
	fs.StringVar(&c.Env, "env", c.Env, "default of "+AnnotationEnv+": default, all, none or a comma list of keys")
	fs.StringVar(&c.EnvPrefix, "env-prefix", c.EnvPrefix, "default of "+AnnotationEnvPrefix)
	fs.BoolVar(&c.Volume, "volume", c.Volume, "default of "+AnnotationVolume)
	fs.StringVar(&c.VolumePath, "volume-path", c.VolumePath, "default of "+AnnotationVolumePath)
	fs.StringVar(&c.EphemeralStorageRequest, "ephemeral-storage-request", c.EphemeralStorageRequest, "default of "+AnnotationEphemeralStorageRequest+" (a quantity or none)")
	fs.StringVar(&c.EphemeralStorageLimit, "ephemeral-storage-limit", c.EphemeralStorageLimit, "default of "+AnnotationEphemeralStorageLimit+" (a quantity or none)")
	fs.BoolVar(&c.Ambassador, "ambassador", c.Ambassador, "default of "+AnnotationAmbassador)
	fs.StringVar(&c.AmbassadorMode, "ambassador-mode", c.AmbassadorMode, "default of "+AnnotationAmbassadorMode+": read-only or read-write")
	fs.IntVar(&c.AmbassadorPort, "ambassador-port", c.AmbassadorPort, "default of "+AnnotationAmbassadorPort)
	fs.StringVar(&c.AmbassadorImage, "ambassador-image", c.AmbassadorImage, "ambassador sidecar image")
	fs.Func("ambassador-image-pull-policy", "ambassador imagePullPolicy: Always, IfNotPresent or Never (default "+string(c.AmbassadorImagePullPolicy)+")", func(s string) error {
		c.AmbassadorImagePullPolicy = corev1.PullPolicy(s)
		return nil
	})
	fs.BoolVar(&c.AmbassadorAllowPrivilegedPaths, "ambassador-allow-privileged-paths", c.AmbassadorAllowPrivilegedPaths, "let every ambassador forward nodes/proxy, pods/ephemeralcontainers, serviceaccounts/token, pods/proxy and services/proxy (refused by default: they run code or mint credentials)")
	fs.StringVar(&c.AmbassadorResources, "ambassador-resources", c.AmbassadorResources, "ambassador requests and limits as requests.RES=QTY,limits.RES=QTY,…")
	fs.StringVar(&c.NativeSidecar, "native-sidecar", c.NativeSidecar, "run the ambassador as a native sidecar: auto (when the apiserver is >= 1.29), always or never")
	fs.IntVar(&c.MaxPatchBytes, "max-patch-bytes", c.MaxPatchBytes, "deny a pod whose JSON patch would be larger (the default keeps the stored pod under etcd's 1.5 MiB request limit)")
	fs.Func("excluded-namespaces", "comma list of namespaces never mutated (default "+strings.Join(c.ExcludedNamespaces, ",")+")", func(s string) error {
		c.ExcludedNamespaces = splitList(s)
		return nil
	})
}

// UseNativeSidecar resolves NativeSidecar given whether the cluster supports native
// sidecars (Kubernetes >= 1.29).
func (c *Config) UseNativeSidecar(clusterSupports bool) bool {
	switch c.NativeSidecar {
	case NativeSidecarAlways:
		return true
	case NativeSidecarNever:
		return false
	}
	return clusterSupports
}

// Validate reports every invalid field at once.
func (c *Config) Validate() error {
	var errs []error
	if _, err := c.settings(); err != nil {
		errs = append(errs, err)
	}
	if c.AmbassadorImage == "" {
		errs = append(errs, errors.New("--ambassador-image must not be empty"))
	}
	switch c.AmbassadorImagePullPolicy {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		errs = append(errs, fmt.Errorf("--ambassador-image-pull-policy %q: valid values are Always, IfNotPresent, Never", c.AmbassadorImagePullPolicy))
	}
	if _, err := parseResources(c.AmbassadorResources); err != nil {
		errs = append(errs, fmt.Errorf("--ambassador-resources: %w", err))
	}
	switch c.NativeSidecar {
	case NativeSidecarAuto, NativeSidecarAlways, NativeSidecarNever:
	default:
		errs = append(errs, fmt.Errorf("--native-sidecar %q: valid values are auto, always, never", c.NativeSidecar))
	}
	if c.MaxPatchBytes < 0 {
		errs = append(errs, fmt.Errorf("--max-patch-bytes=%d: must be positive (0: %d)", c.MaxPatchBytes, DefaultMaxPatchBytes))
	}
	return errors.Join(errs...)
}

// parseResources reads "requests.cpu=10m,limits.memory=48Mi" into ResourceRequirements.
func parseResources(s string) (corev1.ResourceRequirements, error) {
	var r corev1.ResourceRequirements
	for _, item := range splitList(s) {
		k, v, ok := strings.Cut(item, "=")
		kind, name, ok2 := strings.Cut(strings.TrimSpace(k), ".")
		if !ok || !ok2 || (kind != "requests" && kind != "limits") {
			return r, fmt.Errorf("%q: want requests.RESOURCE=QUANTITY or limits.RESOURCE=QUANTITY", item)
		}
		q, err := parseBoundedQuantity(strings.TrimSpace(v)) // bounds.go: before any arithmetic
		if err != nil {
			return r, fmt.Errorf("%q: %w", item, err)
		}
		list := &r.Requests
		if kind == "limits" {
			list = &r.Limits
		}
		if *list == nil {
			*list = corev1.ResourceList{}
		}
		(*list)[corev1.ResourceName(name)] = q
	}
	for name, req := range r.Requests {
		if lim, ok := r.Limits[name]; ok && req.Cmp(lim) > 0 {
			return r, fmt.Errorf("requests.%s=%s is above limits.%s=%s", name, req.String(), name, lim.String())
		}
	}
	return r, nil
}

// splitList splits a comma list, trimming blanks and dropping empty items.
func splitList(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
