package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// addition is one change of a plan. Each kind renders itself both ways, side by side, so
// the JSON patch and the typed Pod cannot drift apart. Paths refer to the pod as it was
// decoded; the plan orders additions so that no earlier one shifts a later one's index
// (the ambassador, inserted at initContainers[0], comes after every per-container one).
type addition interface {
	patch(ops []jsonpatch.Operation) []jsonpatch.Operation
	apply(pod *corev1.Pod)
}

// Patch renders the plan as JSON-patch operations, all of them "add": podmeta never
// removes or replaces what the pod has.
func (p *Plan) Patch() []jsonpatch.Operation {
	ops := make([]jsonpatch.Operation, 0, len(p.additions)+8)
	for _, a := range p.additions {
		ops = a.patch(ops)
	}
	return ops
}

// Apply makes the plan's additions on a typed Pod: the same Pod the apiserver stores
// after applying Patch.
func (p *Plan) Apply(pod *corev1.Pod) {
	for _, a := range p.additions {
		a.apply(pod)
	}
}

func add(path string, value any) jsonpatch.Operation {
	return jsonpatch.Operation{Operation: "add", Path: path, Value: value}
}

// addOrAppend adds value to the array at path: the whole array when it does not exist.
func addOrAppend[T any](ops []jsonpatch.Operation, path string, exists bool, values ...T) []jsonpatch.Operation {
	if !exists {
		return append(ops, add(path, values))
	}
	for _, v := range values {
		ops = append(ops, add(path+"/-", v))
	}
	return ops
}

func (r containerRef) typed(pod *corev1.Pod) *corev1.Container {
	if r.init {
		return &pod.Spec.InitContainers[r.index]
	}
	return &pod.Spec.Containers[r.index]
}

// addEnv puts vars before the container's own, so the container's $(VAR) references to
// them resolve.
type addEnv struct {
	ref  containerRef
	vars []corev1.EnvVar
}

func (a addEnv) patch(ops []jsonpatch.Operation) []jsonpatch.Operation {
	path := a.ref.path() + "/env"
	if a.ref.c.Env == nil {
		return append(ops, add(path, a.vars))
	}
	for i, v := range a.vars {
		ops = append(ops, add(path+"/"+strconv.Itoa(i), v))
	}
	return ops
}

func (a addEnv) apply(pod *corev1.Pod) {
	c := a.ref.typed(pod)
	vars := make([]corev1.EnvVar, 0, len(a.vars)+len(c.Env))
	for _, v := range a.vars {
		vars = append(vars, *v.DeepCopy()) // a.vars may share the Injector's templates
	}
	c.Env = append(vars, c.Env...)
}

type addMount struct {
	ref   containerRef
	mount corev1.VolumeMount
}

func (a addMount) patch(ops []jsonpatch.Operation) []jsonpatch.Operation {
	return addOrAppend(ops, a.ref.path()+"/volumeMounts", a.ref.c.VolumeMounts != nil, a.mount)
}

func (a addMount) apply(pod *corev1.Pod) {
	c := a.ref.typed(pod)
	c.VolumeMounts = append(c.VolumeMounts, a.mount)
}

type addVolume struct {
	vol        corev1.Volume
	hadVolumes bool
}

func (a addVolume) patch(ops []jsonpatch.Operation) []jsonpatch.Operation {
	return addOrAppend(ops, "/spec/volumes", a.hadVolumes, a.vol)
}

func (a addVolume) apply(pod *corev1.Pod) { pod.Spec.Volumes = append(pod.Spec.Volumes, a.vol) }

// addVolumeItems completes podmeta's existing metadata volume.
type addVolumeItems struct {
	index    int
	hadItems bool
	items    []corev1.DownwardAPIVolumeFile
}

func (a addVolumeItems) patch(ops []jsonpatch.Operation) []jsonpatch.Operation {
	return addOrAppend(ops, "/spec/volumes/"+strconv.Itoa(a.index)+"/downwardAPI/items", a.hadItems, a.items...)
}

func (a addVolumeItems) apply(pod *corev1.Pod) {
	d := pod.Spec.Volumes[a.index].DownwardAPI
	d.Items = append(d.Items, a.items...)
}

// addStorage sets a container's ephemeral-storage request and/or limit, creating
// resources, requests or limits where the container has none.
type addStorage struct {
	ref            containerRef
	request, limit *resource.Quantity
}

func (a addStorage) patch(ops []jsonpatch.Operation) []jsonpatch.Operation {
	path := a.ref.path() + "/resources"
	r := a.ref.c.Resources
	if r == nil {
		return append(ops, add(path, a.requirements()))
	}
	for _, f := range [...]struct {
		name string
		q    *resource.Quantity
		have bool
	}{{"requests", a.request, r.Requests != nil}, {"limits", a.limit, r.Limits != nil}} {
		switch {
		case f.q == nil:
		case f.have:
			ops = append(ops, add(path+"/"+f.name+"/"+EphemeralStorage, f.q))
		default:
			ops = append(ops, add(path+"/"+f.name, corev1.ResourceList{EphemeralStorage: *f.q}))
		}
	}
	return ops
}

func (a addStorage) requirements() corev1.ResourceRequirements {
	var r corev1.ResourceRequirements
	if a.request != nil {
		r.Requests = corev1.ResourceList{EphemeralStorage: *a.request}
	}
	if a.limit != nil {
		r.Limits = corev1.ResourceList{EphemeralStorage: *a.limit}
	}
	return r
}

func (a addStorage) apply(pod *corev1.Pod) {
	r := &a.ref.typed(pod).Resources
	for _, f := range [...]struct {
		list *corev1.ResourceList
		q    *resource.Quantity
	}{{&r.Requests, a.request}, {&r.Limits, a.limit}} {
		if f.q == nil {
			continue
		}
		if *f.list == nil {
			*f.list = corev1.ResourceList{}
		}
		(*f.list)[EphemeralStorage] = *f.q
	}
}

// addContainer adds the ambassador: first among init containers as a native sidecar, so
// it runs before the other init containers, or last among containers otherwise.
type addContainer struct {
	c       corev1.Container
	init    bool
	hadList bool
}

func (a addContainer) patch(ops []jsonpatch.Operation) []jsonpatch.Operation {
	switch {
	case !a.hadList && a.init:
		return append(ops, add("/spec/initContainers", []corev1.Container{a.c}))
	case a.init:
		return append(ops, add("/spec/initContainers/0", a.c))
	default:
		return addOrAppend(ops, "/spec/containers", a.hadList, a.c)
	}
}

func (a addContainer) apply(pod *corev1.Pod) {
	if a.init {
		pod.Spec.InitContainers = slices.Insert(pod.Spec.InitContainers, 0, a.c)
		return
	}
	pod.Spec.Containers = append(pod.Spec.Containers, a.c)
}

// setAnnotation adds (or, for podmeta's own status key, updates) an annotation.
type setAnnotation struct {
	key, value     string
	hadAnnotations bool
}

func (a setAnnotation) patch(ops []jsonpatch.Operation) []jsonpatch.Operation {
	if !a.hadAnnotations {
		return append(ops, add("/metadata/annotations", map[string]string{a.key: a.value}))
	}
	return append(ops, add("/metadata/annotations/"+escapePointer(a.key), a.value))
}

func (a setAnnotation) apply(pod *corev1.Pod) {
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[a.key] = a.value
}

// escapePointer escapes a JSON-pointer token (RFC 6901).
func escapePointer(s string) string { return pointerEscaper.Replace(s) }

var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

func intOrPort(p int) intstr.IntOrString { return intstr.FromInt32(int32(p)) }

// PatchJSON is Patch serialized, as an AdmissionResponse carries it.
func (p *Plan) PatchJSON() ([]byte, error) {
	var buf bytes.Buffer
	err := p.WritePatchJSON(&buf)
	return buf.Bytes(), err
}

// WritePatchJSON writes Patch serialized into buf (the handler passes a pooled one). It
// writes each operation's envelope itself: jsonpatch.Operation's own MarshalJSON
// marshals every operation twice over (once inside, once compacting the result), which
// costs more than the whole plan.
func (p *Plan) WritePatchJSON(buf *bytes.Buffer) error {
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	buf.WriteByte('[')
	for i, op := range p.Patch() {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteString(`{"op":"add","path":`)
		buf.Write(strconv.AppendQuote(buf.AvailableBuffer(), op.Path)) // paths are ASCII: indexes, DNS names, escaped keys
		buf.WriteString(`,"value":`)
		if err := enc.Encode(op.Value); err != nil {
			return fmt.Errorf("marshal %s: %w", op.Path, err)
		}
		buf.Truncate(buf.Len() - 1) // Encode's newline
		buf.WriteByte('}')
	}
	buf.WriteByte(']')
	return nil
}
