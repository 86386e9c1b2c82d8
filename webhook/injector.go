package webhook

import (
	"errors"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// Injector decides what a pod gets. It holds only the validated operator config and what
// is built from it once, and is safe for concurrent use: nothing in it is modified after
// NewInjector.
type Injector struct {
	cfg        Config
	base       Settings // the operator's defaults, before any annotation
	native     bool     // the ambassador is a native sidecar
	resources  corev1.ResourceRequirements
	excludedNS map[string]bool
	envVars    []corev1.EnvVar   // one per envKeys entry, unprefixed
	ambassador *corev1.Container // for the operator's own port and mode
	apiURL     corev1.EnvVar     // PODMETA_API_URL for the operator's own port
	encoder    valueEncoder      // what plans write their patch with: patch
	patch      *patchBound       // the fast JSON path (nil without fastjson.go) and the patch bound
}

// NewInjector validates cfg. nativeSidecars says whether the ambassador is added as a
// native sidecar; see Config.UseNativeSidecar.
func NewInjector(cfg Config, nativeSidecars bool) (*Injector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	base, _ := cfg.settings()
	res, _ := parseResources(cfg.AmbassadorResources)
	in := &Injector{cfg: cfg, base: base, native: nativeSidecars, resources: res, excludedNS: map[string]bool{}}
	for _, ns := range cfg.ExcludedNamespaces {
		in.excludedNS[ns] = true
	}
	for _, k := range envKeys {
		in.envVars = append(in.envVars, k.envVar())
	}
	in.ambassador = in.ambassadorSpec(&base).container()
	in.apiURL = apiURLEnvVar(base.AmbassadorPort)
	if newValueEncoder != nil {
		in.encoder = newValueEncoder(in.envVars, in.ambassador)
	}
	in.patch = &patchBound{fast: in.encoder, limit: cfg.maxPatchBytes()} // bounds.go
	in.encoder = in.patch
	return in, nil
}

// ambassadorSpec is the ambassador for s's port and mode: an annotation may pick those,
// never the image or resources, which would let any pod author run arbitrary code with
// the pod's credentials.
func (in *Injector) ambassadorSpec(s *Settings) ambassadorSpec {
	return ambassadorSpec{
		image:      in.cfg.AmbassadorImage,
		pullPolicy: in.cfg.AmbassadorImagePullPolicy,
		resources:  in.resources,
		port:       s.AmbassadorPort,
		mode:       s.AmbassadorMode,
		native:     in.native,

		allowPrivilegedPaths: in.cfg.AmbassadorAllowPrivilegedPaths,
	}
}

// ambassadorFor is the ambassador container for s: the shared one when s keeps the
// operator's port and mode.
func (in *Injector) ambassadorFor(s *Settings) *corev1.Container {
	if s.AmbassadorPort == in.base.AmbassadorPort && s.AmbassadorMode == in.base.AmbassadorMode {
		return in.ambassador
	}
	return in.ambassadorSpec(s).container()
}

// apiURLFor is PODMETA_API_URL for s: the shared one on the operator's own port.
func (in *Injector) apiURLFor(s *Settings) corev1.EnvVar {
	if s.AmbassadorPort == in.base.AmbassadorPort {
		return in.apiURL
	}
	return apiURLEnvVar(s.AmbassadorPort)
}

// DenyError means the pod asked for something podmeta cannot do (an invalid annotation,
// a port clash). The webhook denies the pod with its message; the CLI exits non-zero.
type DenyError struct{ Err error }

func (e *DenyError) Error() string { return e.Err.Error() }
func (e *DenyError) Unwrap() error { return e.Err }

// IsDenied reports whether err is a DenyError.
func IsDenied(err error) bool {
	var d *DenyError
	return errors.As(err, &d)
}

// PlanPod plans the injection for a pod given as JSON. namespace overrides the pod's own
// metadata.namespace when set (an admission request carries it); nsAnnotations are the
// namespace's annotations. A *DenyError means the pod must be rejected; any other error
// means the JSON is not a pod.
func (in *Injector) PlanPod(raw []byte, namespace string, nsAnnotations map[string]string) (*Plan, error) {
	pod, err := decodePod(raw)
	if err != nil {
		return nil, err
	}
	if namespace == "" {
		namespace = pod.Metadata.Namespace
	}
	return in.plan(pod, namespace, nsAnnotations, false)
}

// plan resolves the pod's Settings (the operator's defaults, then the namespace's
// annotations, then the pod's) and plans the additions. The handler calls it with the
// pod it decoded from the review, with admitted true: the apiserver's built-in
// admission, the ServiceAccount plugin among it, has already run on the pod, so what
// that plugin did or did not add is known (offline, PlanPod, it is not).
func (in *Injector) plan(pod *podView, namespace string, nsAnnotations map[string]string, admitted bool) (*Plan, error) {
	p := &Plan{encoder: in.encoder}
	switch {
	case in.excludedNS[namespace]:
		p.Skipped = fmt.Sprintf("namespace %s is excluded", namespace)
		return p, nil
	case pod.Metadata.Annotations[AnnotationMirrorPod] != "":
		p.Skipped = "mirror (static) pod"
		return p, nil
	}
	s := in.base
	w1, err1 := s.overlay(sourceNamespace, nsAnnotations)
	w2, err2 := s.overlay(sourcePod, pod.Metadata.Annotations)
	if err := errors.Join(err1, err2, s.check()); err != nil {
		return nil, &DenyError{err}
	}
	if !s.Inject {
		p.Skipped = AnnotationInject + " is false"
		return p, nil
	}
	p.Warnings = slices.Concat(w1, w2)
	if n := len(p.Warnings); n > 0 {
		p.Conflicts = map[string]int{FeatureConfig: n}
	}

	pl := planner{in: in, settings: &s, pod: pod, plan: p, hasVolumes: pod.Spec.Volumes != nil, admitted: admitted}
	if err := pl.build(); err != nil {
		return nil, &DenyError{err}
	}
	// bounds.go: at most MaxWarnings warnings, and a patch of at most MaxPatchBytes.
	if err := in.bound(p, pod, namespace, pl.minBytes); err != nil {
		return nil, err
	}
	return p, nil
}
