package webhook

// Every name podmeta reads from or writes into a Pod lives here. They are the product
// contract (see DESIGN.md): renaming one breaks users.

const (
	// Prefix is the common prefix of every podmeta label and annotation.
	Prefix = "podmeta.io/"

	// LabelInject on a Namespace ("enabled") opts it in; on a Pod ("disabled") opts the
	// pod out before the apiserver calls the webhook (objectSelector).
	LabelInject = Prefix + "inject"

	// AnnotationInject "false" opts a pod (or, on a namespace, all its pods) out.
	AnnotationInject = Prefix + "inject"
	// AnnotationEnv selects the Downward-API env vars: default, all, none or a comma list.
	AnnotationEnv = Prefix + "env"
	// AnnotationEnvPrefix is prepended to every injected Downward-API env var name.
	AnnotationEnvPrefix = Prefix + "env-prefix"
	// AnnotationContainers limits env and mounts to the named containers.
	AnnotationContainers = Prefix + "containers"
	// AnnotationVolume "false" disables the metadata volume.
	AnnotationVolume = Prefix + "volume"
	// AnnotationVolumePath is where the metadata volume is mounted.
	AnnotationVolumePath = Prefix + "volume-path"
	// AnnotationEphemeralStorageRequest is the default ephemeral-storage request, or "none".
	AnnotationEphemeralStorageRequest = Prefix + "ephemeral-storage-request"
	// AnnotationEphemeralStorageLimit is the default ephemeral-storage limit, or "none".
	AnnotationEphemeralStorageLimit = Prefix + "ephemeral-storage-limit"
	// AnnotationAmbassador "true" adds the API-server ambassador sidecar.
	AnnotationAmbassador = Prefix + "ambassador"
	// AnnotationAmbassadorMode is read-only (GET/HEAD) or read-write.
	AnnotationAmbassadorMode = Prefix + "ambassador-mode"
	// AnnotationAmbassadorPort is the ambassador's loopback port; its health port is the next one.
	AnnotationAmbassadorPort = Prefix + "ambassador-port"
	// AnnotationStatus is written by podmeta: JSON describing what was injected.
	AnnotationStatus = Prefix + "status"

	// AnnotationMirrorPod marks static (mirror) pods, which are never mutated.
	AnnotationMirrorPod = "kubernetes.io/config.mirror"
)

const (
	// VolumeName is the metadata (downwardAPI) volume.
	VolumeName = "podmeta"
	// DefaultVolumePath is where the metadata volume is mounted unless configured.
	DefaultVolumePath = "/etc/podinfo"

	// AmbassadorContainerName is the sidecar's container name.
	AmbassadorContainerName = "podmeta-ambassador"
	// AmbassadorTokenVolumeName is the ambassador's own projected token + CA volume. The
	// ambassador is added after the ServiceAccount admission plugin ran, so it cannot rely
	// on the pod's kube-api-access volume being mounted into it.
	AmbassadorTokenVolumeName = "podmeta-ambassador-token"
	// AmbassadorTokenPath is where that volume is mounted in the ambassador.
	AmbassadorTokenPath = "/var/run/secrets/podmeta/serviceaccount"
	// AmbassadorHealthPortName names the ambassador's health port (at most 15 characters).
	AmbassadorHealthPortName = "pm-health"
	// DefaultAmbassadorPort is the ambassador's loopback port unless configured.
	DefaultAmbassadorPort = 8001

	// EnvAPIURL tells app containers where the ambassador listens.
	EnvAPIURL = "PODMETA_API_URL"

	// EphemeralStorage is the resource name of ephemeral storage.
	EphemeralStorage = "ephemeral-storage"
)

// Ambassador modes.
const (
	ModeReadOnly  = "read-only"
	ModeReadWrite = "read-write"
)

// Native-sidecar modes of Config.NativeSidecar.
const (
	NativeSidecarAuto   = "auto"
	NativeSidecarAlways = "always"
	NativeSidecarNever  = "never"
)

// Downward-API env keys, in the order they are injected.
const (
	EnvPodName                      = "POD_NAME"
	EnvPodNamespace                 = "POD_NAMESPACE"
	EnvPodUID                       = "POD_UID"
	EnvPodIP                        = "POD_IP"
	EnvHostIP                       = "HOST_IP"
	EnvNodeName                     = "NODE_NAME"
	EnvServiceAccount               = "SERVICE_ACCOUNT"
	EnvCPURequestMillicores         = "CONTAINER_CPU_REQUEST_MILLICORES"
	EnvCPULimitMillicores           = "CONTAINER_CPU_LIMIT_MILLICORES"
	EnvMemoryRequestBytes           = "CONTAINER_MEMORY_REQUEST_BYTES"
	EnvMemoryLimitBytes             = "CONTAINER_MEMORY_LIMIT_BYTES"
	EnvEphemeralStorageRequestBytes = "CONTAINER_EPHEMERAL_STORAGE_REQUEST_BYTES"
	EnvEphemeralStorageLimitBytes   = "CONTAINER_EPHEMERAL_STORAGE_LIMIT_BYTES"
	EnvPodIPs                       = "POD_IPS"
	EnvHostIPs                      = "HOST_IPS"
)

// Keywords of AnnotationEnv.
const (
	EnvSetDefault = "default"
	EnvSetAll     = "all"
	EnvSetNone    = "none"
)

// DefaultExcludedNamespaces are never mutated, whatever their labels say.
var DefaultExcludedNamespaces = []string{"kube-system", "kube-public", "kube-node-lease"}
