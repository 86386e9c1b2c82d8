package webhook

import (
	"k8s.io/apimachinery/pkg/api/resource"
)

// envKey is one Downward-API fact podmeta can inject as an env var. A resource key is
// also a file of the metadata volume, per container: the table is the one list of
// resource facts podmeta knows.
type envKey struct {
	name      string
	fieldPath string // metadata.name, status.podIP, …; empty for resource keys
	resource  string // requests.cpu, limits.memory, …; empty for field keys
	divisor   resource.Quantity
	file      string // the metadata volume's containers/NAME/<file>; resource keys only
	inDefault bool   // in the "default" set of podmeta.io/env
}

var (
	divisorMilli = resource.MustParse("1m")
	divisorOne   = resource.MustParse("1")
)

// envKeys lists every key in injection order, which is also the order of the metadata
// volume's per-container files. Adding a key here is all the engine needs: the name
// constant goes in consts.go, and TestChartSchemaEnvKeys names the chart's copy.
var envKeys = []envKey{
	{name: EnvPodName, fieldPath: "metadata.name", inDefault: true},
	{name: EnvPodNamespace, fieldPath: "metadata.namespace", inDefault: true},
	{name: EnvPodUID, fieldPath: "metadata.uid", inDefault: true},
	{name: EnvPodIP, fieldPath: "status.podIP", inDefault: true},
	{name: EnvHostIP, fieldPath: "status.hostIP", inDefault: true},
	{name: EnvNodeName, fieldPath: "spec.nodeName", inDefault: true},
	{name: EnvServiceAccount, fieldPath: "spec.serviceAccountName", inDefault: true},
	{name: EnvCPURequestMillicores, resource: "requests.cpu", divisor: divisorMilli, file: "cpu_request_millicores", inDefault: true},
	{name: EnvCPULimitMillicores, resource: "limits.cpu", divisor: divisorMilli, file: "cpu_limit_millicores"},
	{name: EnvMemoryRequestBytes, resource: "requests.memory", divisor: divisorOne, file: "memory_request_bytes"},
	{name: EnvMemoryLimitBytes, resource: "limits.memory", divisor: divisorOne, file: "memory_limit_bytes", inDefault: true},
	{name: EnvEphemeralStorageRequestBytes, resource: "requests.ephemeral-storage", divisor: divisorOne, file: "ephemeral_storage_request_bytes"},
	{name: EnvEphemeralStorageLimitBytes, resource: "limits.ephemeral-storage", divisor: divisorOne, file: "ephemeral_storage_limit_bytes"},
	{name: EnvPodIPs, fieldPath: "status.podIPs"},
	{name: EnvHostIPs, fieldPath: "status.hostIPs"},
}

// resourceKeys are the envKeys that name a container resource, in table order.
var resourceKeys = func() []envKey {
	var out []envKey
	for _, k := range envKeys {
		if k.resource != "" {
			out = append(out, k)
		}
	}
	return out
}()

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
