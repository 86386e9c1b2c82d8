package webhook

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// envKey is one Downward-API env var podmeta knows how to inject.
type envKey struct {
	name      string
	fieldPath string // metadata.name, status.podIP, …; empty for resource keys
	resource  string // requests.cpu, limits.memory, …; empty for field keys
	divisor   resource.Quantity
	inDefault bool
}

var (
	divisorMilli = resource.MustParse("1m")
	divisorOne   = resource.MustParse("1")
)

// envKeys lists every key in injection order. The first nine are the default set.
var envKeys = []envKey{
	{name: EnvPodName, fieldPath: "metadata.name", inDefault: true},
	{name: EnvPodNamespace, fieldPath: "metadata.namespace", inDefault: true},
	{name: EnvPodUID, fieldPath: "metadata.uid", inDefault: true},
	{name: EnvPodIP, fieldPath: "status.podIP", inDefault: true},
	{name: EnvHostIP, fieldPath: "status.hostIP", inDefault: true},
	{name: EnvNodeName, fieldPath: "spec.nodeName", inDefault: true},
	{name: EnvServiceAccount, fieldPath: "spec.serviceAccountName", inDefault: true},
	{name: EnvCPURequestMillicores, resource: "requests.cpu", divisor: divisorMilli, inDefault: true},
	{name: EnvCPULimitMillicores, resource: "limits.cpu", divisor: divisorMilli},
	{name: EnvMemoryRequestBytes, resource: "requests.memory", divisor: divisorOne},
	{name: EnvMemoryLimitBytes, resource: "limits.memory", divisor: divisorOne, inDefault: true},
	{name: EnvEphemeralStorageRequestBytes, resource: "requests.ephemeral-storage", divisor: divisorOne},
	{name: EnvEphemeralStorageLimitBytes, resource: "limits.ephemeral-storage", divisor: divisorOne},
	{name: EnvPodIPs, fieldPath: "status.podIPs"},
	{name: EnvHostIPs, fieldPath: "status.hostIPs"},
}

// envSet is a bitmask over envKeys: cheap to copy and compare, and iteration follows
// envKeys' order, which is the injection order.
type envSet uint32

func (s envSet) has(i int) bool { return s&(1<<i) != 0 }

var (
	envSetDefault = func() envSet {
		var s envSet
		for i, k := range envKeys {
			if k.inDefault {
				s |= 1 << i
			}
		}
		return s
	}()
	envSetAll = envSet(1<<len(envKeys) - 1)
)

// names lists the keys in s, in injection order.
func (s envSet) names() []string {
	var out []string
	for i, k := range envKeys {
		if s.has(i) {
			out = append(out, k.name)
		}
	}
	return out
}

// envVar builds the EnvVar for key k named name. Resource keys omit containerName: for
// env vars it defaults to the container itself, which keeps the var correct in any
// container it lands in.
func (k envKey) envVar(name string) corev1.EnvVar {
	if k.fieldPath != "" {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: k.fieldPath},
		}}
	}
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
		ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: k.resource, Divisor: k.divisor},
	}}
}
