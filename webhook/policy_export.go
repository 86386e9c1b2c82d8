package webhook

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// What package policy reads of the engine to compile the same injection into CEL: the
// engine's own tables and object builders, exported read-only, so that policy mode
// cannot drift from the webhook by keeping a copy. Nothing here is used by the webhook.

// PolicyEnvKey is one row of the engine's env-key table (envkeys.go).
type PolicyEnvKey struct {
	// Var is the env var podmeta adds, unprefixed.
	Var corev1.EnvVar
	// InDefault says whether the key is in the "default" set of podmeta.io/env.
	InDefault bool
}

// PolicyEnvKeys lists every Downward-API env key in injection order.
func PolicyEnvKeys() []PolicyEnvKey {
	out := make([]PolicyEnvKey, 0, len(envKeys))
	for _, k := range envKeys {
		out = append(out, PolicyEnvKey{Var: k.envVar(), InDefault: k.inDefault})
	}
	return out
}

// PolicyMetadataVolume is the metadata volume for the named target containers, as the
// engine adds it.
func PolicyMetadataVolume(containers []string) corev1.Volume {
	return metadataVolume(containers).volume()
}

// PolicyContainerMetadataFiles are the metadata volume's files for one container.
func PolicyContainerMetadataFiles(name string) []corev1.DownwardAPIVolumeFile {
	return containerMetadataFiles(name)
}

// PolicyMetadataMount is the metadata volume's mount at path.
func PolicyMetadataMount(path string) corev1.VolumeMount { return metadataMount(path) }

// PolicyTokenVolume is the ambassador's projected token and CA volume.
func PolicyTokenVolume() corev1.Volume { return tokenVolume{}.volume() }

// PolicyAPIURL is PODMETA_API_URL for an ambassador on port.
func PolicyAPIURL(port int) corev1.EnvVar { return apiURLEnvVar(port) }

// PolicyAmbassador is the ambassador container cfg gives a pod whose settings chose port
// and mode (port is not checked: package policy passes sentinels to find where it goes).
func PolicyAmbassador(cfg Config, native bool, port int, mode string) (*corev1.Container, error) {
	in, err := NewInjector(cfg, native)
	if err != nil {
		return nil, err
	}
	return in.ambassadorSpec(&Settings{AmbassadorPort: port, AmbassadorMode: mode}).container(), nil
}

// PolicyAnnotationDefaults are the operator's defaults of every podmeta.io/ annotation
// that has one, as annotation text: what a pod gets when neither it nor its namespace
// sets the key.
func PolicyAnnotationDefaults(cfg *Config) map[string]string {
	out := map[string]string{}
	for k, a := range annotationSettings {
		if a.fromConfig != nil {
			out[k] = a.fromConfig(cfg)
		}
	}
	return out
}

// PolicyAnnotationKeys lists every podmeta.io/ annotation the engine reads, sorted.
func PolicyAnnotationKeys() []string {
	keys := make([]string, 0, len(annotationSettings))
	for k := range annotationSettings {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// PolicyCheckQuantity is the engine's rule for a quantity's text (bounds.go): "" when
// resource.ParseQuantity may read it, else why not.
func PolicyCheckQuantity(s string) string { return checkQuantityText(s) }
