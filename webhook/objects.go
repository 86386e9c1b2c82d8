package webhook

import (
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The Kubernetes objects podmeta adds, built from plain inputs. Each is built the same
// way for the JSON patch and for a typed Pod; none of them reads a pod.

// envVar builds the EnvVar for key k. Resource keys omit containerName: for env vars it
// defaults to the container itself, which keeps the var correct in any container it
// lands in.
func (k envKey) envVar() corev1.EnvVar {
	if k.fieldPath != "" {
		return corev1.EnvVar{Name: k.name, ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: k.fieldPath},
		}}
	}
	return corev1.EnvVar{Name: k.name, ValueFrom: &corev1.EnvVarSource{
		ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: k.resource, Divisor: k.divisor},
	}}
}

// apiURLEnvVar is PODMETA_API_URL: where the ambassador listens.
func apiURLEnvVar(port int) corev1.EnvVar {
	return corev1.EnvVar{Name: EnvAPIURL, Value: "http://127.0.0.1:" + strconv.Itoa(port)}
}

// metadataVolume is the metadata volume for the named target containers: the plan keeps
// the names, and the corev1.Volume is built only when something reads it (Apply,
// encoding/json). Its files are the pod's identity, labels and annotations, and per
// container its resource requests and limits.
type metadataVolume []string

// podMetadataFiles are the metadata volume's pod-wide files.
var podMetadataFiles = [...]struct{ path, fieldPath string }{
	{"name", "metadata.name"}, {"namespace", "metadata.namespace"}, {"uid", "metadata.uid"},
	{"labels", "metadata.labels"}, {"annotations", "metadata.annotations"},
}

func (m metadataVolume) volume() corev1.Volume {
	items := make([]corev1.DownwardAPIVolumeFile, 0, len(podMetadataFiles)+len(resourceKeys)*len(m))
	for _, f := range podMetadataFiles {
		items = append(items, corev1.DownwardAPIVolumeFile{Path: f.path, FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: f.fieldPath}})
	}
	for _, name := range m {
		items = append(items, containerMetadataFiles(name)...)
	}
	return corev1.Volume{
		Name:         VolumeName,
		VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: items}},
	}
}

func (m metadataVolume) MarshalJSON() ([]byte, error) { return mustMarshal(m.volume()), nil }

// containerMetadataFiles are the metadata volume's files for one container: one per
// resource env key.
func containerMetadataFiles(name string) []corev1.DownwardAPIVolumeFile {
	items := make([]corev1.DownwardAPIVolumeFile, 0, len(resourceKeys))
	for _, k := range resourceKeys {
		items = append(items, corev1.DownwardAPIVolumeFile{
			Path:             "containers/" + name + "/" + k.file,
			ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: name, Resource: k.resource, Divisor: k.divisor},
		})
	}
	return items
}

// metadataMount mounts the metadata volume read-only at path.
func metadataMount(path string) corev1.VolumeMount {
	return corev1.VolumeMount{Name: VolumeName, MountPath: path, ReadOnly: true}
}

// tokenVolume is the ambassador's own service-account token and CA, described: it is
// always the same volume, built by volume() when something reads it. The pod's
// kube-api-access volume is mounted by an admission plugin that runs before webhooks, so
// a container added here would not get it.
type tokenVolume struct{}

func (tokenVolume) volume() corev1.Volume {
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

func (v tokenVolume) MarshalJSON() ([]byte, error) { return mustMarshal(v.volume()), nil }

// ambassadorSpec is what the ambassador container is built from: the operator's image,
// pull policy and resources, and the pod's port and mode.
type ambassadorSpec struct {
	image      string
	pullPolicy corev1.PullPolicy
	resources  corev1.ResourceRequirements
	port       int
	mode       string
	native     bool // a native sidecar: an init container with restartPolicy Always
	// allowPrivilegedPaths lets the sidecar forward the API paths it refuses by default
	// (nodes/proxy, pods/ephemeralcontainers, serviceaccounts/token, …): operator only.
	allowPrivilegedPaths bool
}

// healthPort is the ambassador's second port: the next one up, or the one below for
// 65535, so it can never equal the proxy port.
func healthPort(port int) int {
	if port == 65535 {
		return 65534
	}
	return port + 1
}

// ambassadorArgs are the ambassador's command-line flags, as cmd/ambassador defines them
// (cmd/ambassador's flags_drift_test parses them with its own flag set).
func ambassadorArgs(port int, mode string, allowPrivilegedPaths bool) []string {
	args := []string{
		"--port=" + strconv.Itoa(port),
		"--health-port=" + strconv.Itoa(healthPort(port)),
		"--mode=" + mode,
		"--token-file=" + AmbassadorTokenPath + "/token",
		"--ca-file=" + AmbassadorTokenPath + "/ca.crt",
	}
	if allowPrivilegedPaths {
		args = append(args, "--allow-privileged-paths")
	}
	return args
}

// container builds the sidecar. Its securityContext meets the "restricted" Pod Security
// level.
func (a ambassadorSpec) container() *corev1.Container {
	probe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(int32(healthPort(a.port)))}},
			PeriodSeconds:    period,
			FailureThreshold: failures,
		}
	}
	uid := int64(65532)
	c := &corev1.Container{
		Name:                     AmbassadorContainerName,
		Image:                    a.image,
		ImagePullPolicy:          a.pullPolicy,
		Args:                     ambassadorArgs(a.port, a.mode, a.allowPrivilegedPaths),
		Resources:                *a.resources.DeepCopy(),
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
	if a.native {
		always := corev1.ContainerRestartPolicyAlways
		c.RestartPolicy = &always
	}
	return c
}

func ptr[T any](v T) *T { return &v }
