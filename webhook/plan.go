package webhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// Injector decides what a pod gets. It holds only the validated operator config and is
// safe for concurrent use.
type Injector struct {
	cfg        Config
	base       Settings
	native     bool
	resources  corev1.ResourceRequirements
	excludedNS map[string]bool
	envVars    []envVar // one per envKeys entry, unprefixed; shared, never mutated
	// The ambassador, rendered, and PODMETA_API_URL for the operator's own port and
	// mode: shared, never mutated.
	baseAmbassador *ambassador
	baseAPIURL     envVar
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
		in.envVars = append(in.envVars, newEnvVar(k.envVar(k.name)))
	}
	b := &planner{Injector: in, s: &base}
	in.baseAmbassador, in.baseAPIURL = b.ambassadorContainer(), b.apiURLVar()
	in.baseAmbassador.json = mustMarshal(in.baseAmbassador.Container)
	return in, nil
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

// Plan is the list of additions for one pod. It is rendered either as JSON-patch "add"
// operations (Patch) or applied to a typed Pod (Apply); both follow the same additions in
// the same order, so they cannot disagree.
type Plan struct {
	// Skipped says why the pod is left alone entirely; empty when it is considered.
	Skipped string
	// Warnings are admission warnings: what the pod defined that podmeta kept, what it
	// could not inject and why.
	Warnings []string
	// Conflicts counts the warnings by feature (FeatureEnv, …), for metrics.
	Conflicts map[string]int
	// Notes say what was already in place (explain shows them; the webhook does not).
	Notes []string
	// Status is what this plan injects, as recorded in podmeta.io/status.
	Status Status

	additions []addition
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool { return len(p.additions) == 0 }

// Status is the JSON value of the podmeta.io/status annotation.
type Status struct {
	// Env lists, per container, the env vars podmeta added.
	Env map[string][]string `json:"env,omitempty"`
	// Volume is the metadata volume's mount path, when podmeta added or completed it.
	Volume string `json:"volume,omitempty"`
	// Mounts lists the containers that got the metadata volume mounted.
	Mounts []string `json:"mounts,omitempty"`
	// EphemeralStorage lists, per container, the defaults podmeta set ("request", "limit").
	EphemeralStorage map[string]map[string]string `json:"ephemeralStorage,omitempty"`
	// Ambassador is "native-sidecar" or "container" when podmeta added the ambassador.
	Ambassador string `json:"ambassador,omitempty"`
}

// merge adds what a previous invocation recorded, so that a reinvocation that adds to a
// new container keeps the full record. It is only a record: what to add is always
// decided from the spec.
func (s *Status) merge(prev Status) {
	for c, names := range prev.Env {
		if s.Env == nil {
			s.Env = map[string][]string{}
		}
		s.Env[c] = append(names, s.Env[c]...)
	}
	for c, kv := range prev.EphemeralStorage {
		if s.EphemeralStorage == nil {
			s.EphemeralStorage = map[string]map[string]string{}
		}
		if s.EphemeralStorage[c] == nil {
			s.EphemeralStorage[c] = kv
		}
	}
	s.Mounts = append(prev.Mounts, s.Mounts...)
	if s.Volume == "" {
		s.Volume = prev.Volume
	}
	if s.Ambassador == "" {
		s.Ambassador = prev.Ambassador
	}
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
	return in.plan(pod, namespace, nsAnnotations)
}

func (in *Injector) plan(pod *podView, namespace string, nsAnnotations map[string]string) (*Plan, error) {
	p := &Plan{}
	switch {
	case in.excludedNS[namespace]:
		p.Skipped = fmt.Sprintf("namespace %s is excluded", namespace)
		return p, nil
	case pod.Metadata.Annotations[AnnotationMirrorPod] != "":
		p.Skipped = "mirror (static) pod"
		return p, nil
	}
	s := in.base
	w1, err1 := s.apply(sourceNamespace, nsAnnotations)
	w2, err2 := s.apply(sourcePod, pod.Metadata.Annotations)
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

	b := planner{Injector: in, s: &s, pod: pod, p: p, hasVolumes: pod.Spec.Volumes != nil}
	if err := b.build(); err != nil {
		return nil, &DenyError{err}
	}
	return p, nil
}

// planner holds the state of building one plan.
type planner struct {
	*Injector
	s   *Settings
	pod *podView
	p   *Plan

	ambassador bool // the ambassador is (or will be) in the pod
	hasVolumes bool // spec.volumes exists, in the pod or through an earlier addition
	// env is what every target gets; envWithURL adds PODMETA_API_URL for containers that
	// can reach the ambassador.
	env, envWithURL []envVar
}

func (b *planner) build() error {
	if len(b.allContainers()) == 0 {
		// Nothing to inject into, and a volume or sidecar alone would be useless (and a
		// pod without a spec has no /spec to add them under): only mark the pod as seen.
		b.planStatus()
		return nil
	}
	if err := b.checkAmbassador(); err != nil {
		return err
	}
	b.planEnvVars()
	targets := b.targets()
	volumeOurs := b.planVolume(targets)
	for _, t := range targets {
		b.planEnv(t)
		if volumeOurs {
			b.planMount(t)
		}
	}
	b.planStorage()
	b.planAmbassador()
	b.planStatus()
	return nil
}

// containerRef points at one container of the pod as it was decoded.
type containerRef struct {
	init  bool
	index int
	c     *containerView
}

func (r containerRef) path() string {
	list := "/spec/containers/"
	if r.init {
		list = "/spec/initContainers/"
	}
	return list + strconv.Itoa(r.index)
}

func (r containerRef) kind() string {
	if r.init {
		return "init container"
	}
	return "container"
}

// allContainers lists init containers then containers, never the ambassador itself.
func (b *planner) allContainers() []containerRef {
	var out []containerRef
	for i := range b.pod.Spec.InitContainers {
		if c := &b.pod.Spec.InitContainers[i]; c.Name != AmbassadorContainerName {
			out = append(out, containerRef{init: true, index: i, c: c})
		}
	}
	for i := range b.pod.Spec.Containers {
		if c := &b.pod.Spec.Containers[i]; c.Name != AmbassadorContainerName {
			out = append(out, containerRef{index: i, c: c})
		}
	}
	return out
}

// targets are the containers that receive env and mounts.
func (b *planner) targets() []containerRef {
	all := b.allContainers()
	if b.s.Containers == nil {
		return all
	}
	var out []containerRef
	for _, name := range b.s.Containers {
		i := slices.IndexFunc(all, func(r containerRef) bool { return r.c.Name == name })
		if i < 0 {
			b.warn(FeatureConfig, "%s lists container %q, which the pod does not have", AnnotationContainers, name)
			continue
		}
		out = append(out, all[i])
	}
	return out
}

func (b *planner) warn(feature, format string, args ...any) {
	b.p.Warnings = append(b.p.Warnings, "podmeta: "+fmt.Sprintf(format, args...))
	if b.p.Conflicts == nil {
		b.p.Conflicts = map[string]int{}
	}
	b.p.Conflicts[feature]++
}

func (b *planner) note(format string, args ...any) {
	b.p.Notes = append(b.p.Notes, fmt.Sprintf(format, args...))
}

func (b *planner) add(a addition) { b.p.additions = append(b.p.additions, a) }

// planEnvVars computes, once per pod, the env vars targets get.
func (b *planner) planEnvVars() {
	b.env = make([]envVar, 0, len(b.envVars)+1)
	for i, v := range b.envVars {
		if b.s.Env.has(i) {
			if b.s.EnvPrefix != "" {
				v.Name = b.s.EnvPrefix + v.Name
			}
			b.env = append(b.env, v)
		}
	}
	b.envWithURL = b.env
	if b.ambassador {
		// Into b.env's spare capacity, which nothing else appends to.
		b.envWithURL = append(b.envWithURL, b.apiURLVar())
	}
}

// planEnv adds the selected Downward-API vars (and PODMETA_API_URL) before the
// container's own, skipping any name the container already defines.
func (b *planner) planEnv(t containerRef) {
	want := b.envWithURL
	if t.init && !b.native {
		want = b.env // init containers run before a non-native ambassador starts
	}
	add := make([]envVar, 0, len(want))
	for _, w := range want {
		i := slices.IndexFunc(t.c.Env, func(e envView) bool { return e.Name == w.Name })
		switch {
		case i < 0:
			add = append(add, w)
		case sameEnv(t.c.Env[i], w.EnvVar):
			b.note("%s %q: env %s already set as podmeta would", t.kind(), t.c.Name, w.Name)
		default:
			b.warn(FeatureEnv, "%s %q defines env %s; kept the pod's value", t.kind(), t.c.Name, w.Name)
		}
	}
	if len(add) == 0 {
		return
	}
	b.add(addEnv{ref: t, vars: add})
	if b.p.Status.Env == nil {
		b.p.Status.Env = map[string][]string{}
	}
	for _, v := range add {
		b.p.Status.Env[t.c.Name] = append(b.p.Status.Env[t.c.Name], v.Name)
	}
}

// apiURLVar is PODMETA_API_URL: the ambassador's address.
func (b *planner) apiURLVar() envVar {
	if b.s.AmbassadorPort == b.base.AmbassadorPort && b.baseAPIURL.tmpl != nil {
		return b.baseAPIURL
	}
	return newEnvVar(corev1.EnvVar{Name: EnvAPIURL, Value: "http://127.0.0.1:" + strconv.Itoa(b.s.AmbassadorPort)})
}

// sameEnv reports whether the pod's var is exactly what podmeta would add, so a second
// pass (or a user who wrote the same thing) is quiet.
func sameEnv(have envView, want corev1.EnvVar) bool {
	if want.ValueFrom == nil {
		// Plain values are not decoded (it keeps big pods cheap); PODMETA_API_URL is the
		// only one, and a container that has it is left alone either way.
		return have.ValueFrom == nil
	}
	h, w := have.ValueFrom, want.ValueFrom
	switch {
	case h == nil:
		return false
	case w.FieldRef != nil:
		return h.FieldRef != nil && h.FieldRef.FieldPath == w.FieldRef.FieldPath &&
			(h.FieldRef.APIVersion == "" || h.FieldRef.APIVersion == "v1")
	default:
		return h.ResourceFieldRef != nil && h.ResourceFieldRef.Resource == w.ResourceFieldRef.Resource &&
			sameDivisor(h.ResourceFieldRef.Divisor, w.ResourceFieldRef.Divisor)
	}
}

// sameDivisor compares divisors, where zero means 1 as in the kubelet.
func sameDivisor(a, b resource.Quantity) bool {
	if a.IsZero() {
		a = divisorOne
	}
	if b.IsZero() {
		b = divisorOne
	}
	return a.Cmp(b) == 0
}

// planVolume adds the metadata volume, or completes podmeta's existing one with items
// for containers it does not cover yet (a container added by a later webhook). It
// reports whether the volume named podmeta is a downwardAPI volume mounts may use.
func (b *planner) planVolume(targets []containerRef) bool {
	if !b.s.Volume {
		return false
	}
	i := slices.IndexFunc(b.pod.Spec.Volumes, func(v volumeView) bool { return v.Name == VolumeName })
	want := make(metadataVolume, len(targets))
	for j, t := range targets {
		want[j] = t.c.Name
	}
	if i < 0 {
		b.addVolume(want)
		b.p.Status.Volume = b.s.VolumePath
		return true
	}
	dapi := b.pod.Spec.Volumes[i].DownwardAPI
	if dapi == nil {
		b.warn(FeatureVolume, "volume %q exists and is not a downwardAPI volume; kept it and did not add the metadata volume", VolumeName)
		return false
	}
	var missing []corev1.DownwardAPIVolumeFile
	for _, item := range want.typed().DownwardAPI.Items {
		if !slices.ContainsFunc(dapi.Items, func(h corev1.DownwardAPIVolumeFile) bool { return h.Path == item.Path }) {
			missing = append(missing, item)
		}
	}
	if len(missing) > 0 {
		b.add(addVolumeItems{index: i, hadItems: dapi.Items != nil, items: missing})
		b.p.Status.Volume = b.s.VolumePath
	} else {
		b.note("volume %q already has every item", VolumeName)
	}
	return true
}

// metadataVolume is the metadata volume for the named target containers. Its files are
// the pod's identity, labels and annotations, and per container its resource requests
// and limits.
type metadataVolume []string

func (m metadataVolume) typed() corev1.Volume {
	items := make([]corev1.DownwardAPIVolumeFile, 0, 5+6*len(m))
	for _, f := range [...]struct{ path, field string }{
		{"name", "metadata.name"}, {"namespace", "metadata.namespace"}, {"uid", "metadata.uid"},
		{"labels", "metadata.labels"}, {"annotations", "metadata.annotations"},
	} {
		items = append(items, corev1.DownwardAPIVolumeFile{Path: f.path, FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: f.field}})
	}
	for _, name := range m {
		items = append(items, containerMetadataItems(name)...)
	}
	return corev1.Volume{
		Name:         VolumeName,
		VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: items}},
	}
}

// containerMetadataItems are the metadata volume's files for one container.
func containerMetadataItems(name string) []corev1.DownwardAPIVolumeFile {
	items := make([]corev1.DownwardAPIVolumeFile, 0, 6)
	for _, f := range [...]struct {
		file, res string
		div       resource.Quantity
	}{
		{"cpu_request_millicores", "requests.cpu", divisorMilli},
		{"cpu_limit_millicores", "limits.cpu", divisorMilli},
		{"memory_request_bytes", "requests.memory", divisorOne},
		{"memory_limit_bytes", "limits.memory", divisorOne},
		{"ephemeral_storage_request_bytes", "requests.ephemeral-storage", divisorOne},
		{"ephemeral_storage_limit_bytes", "limits.ephemeral-storage", divisorOne},
	} {
		items = append(items, corev1.DownwardAPIVolumeFile{
			Path:             "containers/" + name + "/" + f.file,
			ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: name, Resource: f.res, Divisor: f.div},
		})
	}
	return items
}

// planMount mounts the metadata volume read-only, unless the container already mounts
// it or uses the path for something else.
func (b *planner) planMount(t containerRef) {
	for _, m := range t.c.VolumeMounts {
		switch {
		case m.Name == VolumeName:
			b.note("%s %q already mounts volume %q at %s", t.kind(), t.c.Name, VolumeName, m.MountPath)
			return
		case m.MountPath == b.s.VolumePath:
			b.warn(FeatureMount, "%s %q already mounts %q at %s; kept it and did not mount the metadata volume", t.kind(), t.c.Name, m.Name, m.MountPath)
			return
		}
	}
	b.add(addMount{ref: t, mount: metadataMountAt(b.s.VolumePath)})
	b.p.Status.Mounts = append(b.p.Status.Mounts, t.c.Name)
}

// planStorage sets default ephemeral-storage requests and limits on every container that
// has none, so a container writing a few KiB is not the first evicted. A request is
// never set above the container's own limit, and a limit never below its own request.
func (b *planner) planStorage() {
	if b.s.StorageRequest == nil && b.s.StorageLimit == nil {
		return
	}
	for _, t := range b.allContainers() {
		var haveReq, haveLim *resource.Quantity
		if r := t.c.Resources; r != nil {
			if r.Requests != nil {
				haveReq = r.Requests.EphemeralStorage
			}
			if r.Limits != nil {
				haveLim = r.Limits.EphemeralStorage
			}
		}
		a := addStorage{ref: t}
		if req := b.s.StorageRequest; req != nil && haveReq == nil {
			q := req.DeepCopy()
			if haveLim != nil && haveLim.Cmp(q) < 0 {
				q = haveLim.DeepCopy()
				b.note("%s %q: ephemeral-storage request lowered to its limit %s", t.kind(), t.c.Name, q.String())
			}
			a.request = &q
		}
		if lim := b.s.StorageLimit; lim != nil && haveLim == nil {
			if haveReq != nil && haveReq.Cmp(*lim) > 0 {
				b.warn(FeatureStorage, "%s %q requests ephemeral-storage %s, above the default limit %s; set no limit", t.kind(), t.c.Name, haveReq.String(), lim.String())
			} else {
				q := lim.DeepCopy()
				a.limit = &q
			}
		}
		if a.request == nil && a.limit == nil {
			continue
		}
		b.add(a)
		if b.p.Status.EphemeralStorage == nil {
			b.p.Status.EphemeralStorage = map[string]map[string]string{}
		}
		rec := map[string]string{}
		if a.request != nil {
			rec["request"] = a.request.String()
		}
		if a.limit != nil {
			rec["limit"] = a.limit.String()
		}
		b.p.Status.EphemeralStorage[t.c.Name] = rec
	}
}

// checkAmbassador decides whether the ambassador is (or will be) in the pod, and denies
// a port the pod already uses.
func (b *planner) checkAmbassador() error {
	if !b.s.Ambassador {
		return nil
	}
	pod := b.pod
	switch {
	case pod.Spec.HostNetwork:
		b.warn(FeatureAmbassador, "ambassador not added: a hostNetwork pod shares the node's loopback, where the ambassador would expose the pod's token to every process on the node")
		return nil
	case pod.Spec.AutomountServiceAccountToken != nil && !*pod.Spec.AutomountServiceAccountToken:
		b.warn(FeatureAmbassador, "ambassador not added: the pod sets automountServiceAccountToken: false, so it must not get API credentials")
		return nil
	case pod.Spec.OS != nil && pod.Spec.OS.Name == string(corev1.Windows):
		b.warn(FeatureAmbassador, "ambassador not added: it runs on Linux only and this is a Windows pod")
		return nil
	}
	for _, list := range [][]containerView{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			if c.Name == AmbassadorContainerName {
				continue
			}
			for _, port := range c.Ports {
				if p := int(port.ContainerPort); p == b.s.AmbassadorPort || p == b.s.AmbassadorHealthPort() {
					return fmt.Errorf("%s=%d: container %q already declares port %d, and the ambassador needs ports %d and %d; choose another port from 1024 to 65535",
						AnnotationAmbassadorPort, b.s.AmbassadorPort, c.Name, p, b.s.AmbassadorPort, b.s.AmbassadorHealthPort())
				}
			}
		}
	}
	if i := slices.IndexFunc(pod.Spec.Volumes, func(v volumeView) bool { return v.Name == AmbassadorTokenVolumeName }); i >= 0 && pod.Spec.Volumes[i].Projected == nil {
		b.warn(FeatureAmbassador, "ambassador not added: volume %q exists and is not podmeta's projected token volume", AmbassadorTokenVolumeName)
		return nil
	}
	b.ambassador = true
	return nil
}

// planAmbassador adds the sidecar and its token volume unless the pod already has them.
func (b *planner) planAmbassador() {
	if !b.ambassador {
		return
	}
	pod := b.pod
	for _, list := range [][]containerView{pod.Spec.InitContainers, pod.Spec.Containers} {
		if i := slices.IndexFunc(list, func(c containerView) bool { return c.Name == AmbassadorContainerName }); i >= 0 {
			if list[i].Image == b.cfg.AmbassadorImage {
				b.note("container %q already present", AmbassadorContainerName)
			} else {
				b.warn(FeatureAmbassador, "container %q already exists with image %q; kept it", AmbassadorContainerName, list[i].Image)
			}
			return
		}
	}
	if !slices.ContainsFunc(pod.Spec.Volumes, func(v volumeView) bool { return v.Name == AmbassadorTokenVolumeName }) {
		b.addVolume(tokenVolume{})
	}
	c := b.ambassadorContainer()
	if b.native {
		b.add(addContainer{c: c, init: true, hadList: pod.Spec.InitContainers != nil})
		b.p.Status.Ambassador = "native-sidecar"
	} else {
		b.add(addContainer{c: c, hadList: pod.Spec.Containers != nil})
		b.p.Status.Ambassador = "container"
	}
}

// addVolume adds a pod volume; the first one added to a pod without spec.volumes
// creates the list.
func (b *planner) addVolume(v podVolume) {
	b.add(addVolume{hadVolumes: b.hasVolumes, vol: v})
	b.hasVolumes = true
}

// planStatus records what was injected. The annotation is written when anything was
// added, or when the pod has none yet (so a pod podmeta saw is always marked, which the
// safety-net policy relies on); a pass that adds nothing to a marked pod adds nothing.
func (b *planner) planStatus() {
	prev, had := b.pod.Metadata.Annotations[AnnotationStatus]
	if had && b.p.Empty() {
		return
	}
	st := b.p.Status
	var old Status
	if had && json.Unmarshal([]byte(prev), &old) == nil {
		st.merge(old)
	}
	value, _ := json.Marshal(st) // a struct of strings cannot fail to marshal
	b.add(setAnnotation{key: AnnotationStatus, value: string(value), hadAnnotations: b.pod.Metadata.Annotations != nil})
}

// ambassadorTokenVolume is the ambassador's own service-account token and CA. The pod's
// kube-api-access volume is mounted by an admission plugin that runs before webhooks, so
// a container added here would not get it.
func ambassadorTokenVolume() corev1.Volume {
	expiry := int64(3607)
	return corev1.Volume{Name: AmbassadorTokenVolumeName, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: &expiry}},
			{ConfigMap: &corev1.ConfigMapProjection{
				LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
				Items:                []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}},
			}},
		},
	}}}
}

// ambassadorContainer builds the sidecar from operator config only: an annotation may
// pick its port and mode, never its image or resources. Its securityContext meets the
// "restricted" Pod Security level.
func (b *planner) ambassadorContainer() *ambassador {
	if b.s.AmbassadorPort == b.base.AmbassadorPort && b.s.AmbassadorMode == b.base.AmbassadorMode && b.baseAmbassador != nil {
		return b.baseAmbassador
	}
	health := b.s.AmbassadorHealthPort()
	probe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intOrPort(health)}},
			PeriodSeconds:    period,
			FailureThreshold: failures,
		}
	}
	uid := int64(65532)
	c := corev1.Container{
		Name:            AmbassadorContainerName,
		Image:           b.cfg.AmbassadorImage,
		ImagePullPolicy: b.cfg.AmbassadorImagePullPolicy,
		Args: []string{
			"--port=" + strconv.Itoa(b.s.AmbassadorPort),
			"--health-port=" + strconv.Itoa(health),
			"--mode=" + b.s.AmbassadorMode,
			"--token-file=" + AmbassadorTokenPath + "/token",
			"--ca-file=" + AmbassadorTokenPath + "/ca.crt",
		},
		Resources:                *b.resources.DeepCopy(),
		VolumeMounts:             []corev1.VolumeMount{{Name: AmbassadorTokenVolumeName, MountPath: AmbassadorTokenPath, ReadOnly: true}},
		StartupProbe:             probe("/readyz", 1, 120),
		LivenessProbe:            probe("/healthz", 10, 3),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr(true),
			RunAsUser:                &uid,
			RunAsGroup:               &uid,
			AllowPrivilegeEscalation: ptr(false),
			ReadOnlyRootFilesystem:   ptr(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
	if b.native {
		always := corev1.ContainerRestartPolicyAlways
		c.RestartPolicy = &always
	}
	return &ambassador{Container: c}
}

func ptr[T any](v T) *T { return &v }

// String renders a plan's status for logs and explain.
func (s Status) String() string {
	b, _ := json.Marshal(s)
	return string(b)
}
