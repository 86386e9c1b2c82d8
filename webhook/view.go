package webhook

import (
	"fmt"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// podView is the part of a Pod the plan reads. Decoding only this, rather than a whole
// corev1.Pod, is most of what makes the webhook cheap: a pod with 2,000 env vars decodes
// into 2,000 names, not 2,000 EnvVar structs with their values. Pointers and nil maps
// record whether a field is present, because a JSON-patch "add" must create a missing
// parent before it can add inside it.
type podView struct {
	Metadata struct {
		Name         string            `json:"name"`
		GenerateName string            `json:"generateName"`
		Namespace    string            `json:"namespace"`
		Annotations  map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		Containers                   []containerView `json:"containers"`
		InitContainers               []containerView `json:"initContainers"`
		Volumes                      []volumeView    `json:"volumes"`
		HostNetwork                  bool            `json:"hostNetwork"`
		AutomountServiceAccountToken *bool           `json:"automountServiceAccountToken"`
		OS                           *struct {
			Name string `json:"name"`
		} `json:"os"`
	} `json:"spec"`
}

type containerView struct {
	Name         string      `json:"name"`
	Image        string      `json:"image"`
	Env          []envView   `json:"env"`
	VolumeMounts []mountView `json:"volumeMounts"`
	Ports        []portView  `json:"ports"`
	Resources    *struct {
		Requests *storageView `json:"requests"`
		Limits   *storageView `json:"limits"`
	} `json:"resources"`
	RestartPolicy string `json:"restartPolicy"`
}

type envView struct {
	Name      string               `json:"name"`
	ValueFrom *corev1.EnvVarSource `json:"valueFrom"`
}

type mountView struct {
	Name      string `json:"name"`
	MountPath string `json:"mountPath"`
}

type portView struct {
	ContainerPort int32 `json:"containerPort"`
}

type storageView struct {
	EphemeralStorage *resource.Quantity `json:"ephemeral-storage"`
}

type volumeView struct {
	Name        string                          `json:"name"`
	DownwardAPI *corev1.DownwardAPIVolumeSource `json:"downwardAPI"`
	Projected   *struct{}                       `json:"projected"`
}

// decodePod reads a Pod's JSON into a podView.
func decodePod(raw []byte) (*podView, error) {
	var p podView
	if err := unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("decode pod: %w", err)
	}
	return &p, nil
}

// decodeOptions make the JSON v2 decoder read what the apiserver reads: keys match
// case-sensitively (as in sigs.k8s.io/json), a repeated key keeps its last value, and
// invalid UTF-8 is not an error. v2 decodes in one pass where encoding/json validates
// the whole document first and then decodes it: that halves the cost of the request path.
var decodeOptions = jsonv2.JoinOptions(jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))

func unmarshal(data []byte, v any) error { return jsonv2.Unmarshal(data, v, decodeOptions) }
