package webhook

// Every name podmeta reads from or writes into a Pod lives here, with a line of doc each.
// They are the product contract (the README's tables are their reference, docs/design.md
// the rules they follow): renaming one breaks users.

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
	// AnnotationInjected is written by podmeta with AnnotationStatus: the containers that
	// got env vars or the metadata mount, as a comma list CEL can split (status.go).
	AnnotationInjected = Prefix + "injected"

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

// Ambassador modes, the values of AnnotationAmbassadorMode.
const (
	// ModeReadOnly lets the pod's processes GET and HEAD only.
	ModeReadOnly = "read-only"
	// ModeReadWrite also forwards writes (POST, PUT, PATCH, DELETE).
	ModeReadWrite = "read-write"
)

// Native-sidecar modes of Config.NativeSidecar.
const (
	// NativeSidecarAuto uses a native sidecar when the apiserver is >= 1.29.
	NativeSidecarAuto = "auto"
	// NativeSidecarAlways always adds the ambassador as a native sidecar.
	NativeSidecarAlways = "always"
	// NativeSidecarNever always adds it as an ordinary container.
	NativeSidecarNever = "never"
)

// Downward-API env keys, the names AnnotationEnv selects, in the order they are
// injected. envkeys.go says what each one reads.
const (
	// EnvPodName is the pod's name.
	EnvPodName = "POD_NAME"
	// EnvPodNamespace is the pod's namespace.
	EnvPodNamespace = "POD_NAMESPACE"
	// EnvPodUID is the pod's UID.
	EnvPodUID = "POD_UID"
	// EnvPodIP is the pod's primary IP.
	EnvPodIP = "POD_IP"
	// EnvHostIP is the node's primary IP.
	EnvHostIP = "HOST_IP"
	// EnvNodeName is the node's name.
	EnvNodeName = "NODE_NAME"
	// EnvServiceAccount is the pod's service account.
	EnvServiceAccount = "SERVICE_ACCOUNT"
	// EnvCPURequestMillicores is the container's CPU request, in millicores.
	EnvCPURequestMillicores = "CONTAINER_CPU_REQUEST_MILLICORES"
	// EnvCPULimitMillicores is the container's CPU limit, in millicores.
	EnvCPULimitMillicores = "CONTAINER_CPU_LIMIT_MILLICORES"
	// EnvMemoryRequestBytes is the container's memory request, in bytes.
	EnvMemoryRequestBytes = "CONTAINER_MEMORY_REQUEST_BYTES"
	// EnvMemoryLimitBytes is the container's memory limit, in bytes.
	EnvMemoryLimitBytes = "CONTAINER_MEMORY_LIMIT_BYTES"
	// EnvEphemeralStorageRequestBytes is the container's ephemeral-storage request, in bytes.
	EnvEphemeralStorageRequestBytes = "CONTAINER_EPHEMERAL_STORAGE_REQUEST_BYTES"
	// EnvEphemeralStorageLimitBytes is the container's ephemeral-storage limit, in bytes.
	EnvEphemeralStorageLimitBytes = "CONTAINER_EPHEMERAL_STORAGE_LIMIT_BYTES"
	// EnvPodIPs is the pod's IPs, comma-separated (dual-stack).
	EnvPodIPs = "POD_IPS"
	// EnvHostIPs is the node's IPs, comma-separated (dual-stack).
	EnvHostIPs = "HOST_IPS"
)

// Keywords of AnnotationEnv.
const (
	// EnvSetDefault is the default set (envKeys marked inDefault).
	EnvSetDefault = "default"
	// EnvSetAll is every key.
	EnvSetAll = "all"
	// EnvSetNone is no key.
	EnvSetNone = "none"
)

// DefaultExcludedNamespaces are never mutated, whatever their labels say.
var DefaultExcludedNamespaces = []string{"kube-system", "kube-public", "kube-node-lease"}
