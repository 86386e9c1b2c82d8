package webhook

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// addition is one change of a plan, made two ways side by side so that they cannot drift
// apart: as JSON-patch operations (the webhook) and on a typed Pod (Apply: the inject CLI,
// the tests). Paths refer to the pod as it was decoded; the plan orders additions so that
// no earlier one shifts a later one's index (the ambassador, inserted at
// initContainers[0], comes after every per-container one).
type addition interface {
	appendOps(ops []jsonpatch.Operation) []jsonpatch.Operation
	addTo(pod *corev1.Pod)
	// minPatchBytes is a lower bound, cheap to compute, of the bytes appendOps' operations
	// take in the patch (with a comma each): every string counted at its length, as if
	// it needed no escaping, and the JSON around them at no more than its size. It lets
	// the plan's size be bounded before anything is rendered (bounds.go).
	minPatchBytes() int
}

// opBytes is the JSON of one operation around its path and value, and its comma:
// {"op":"add","path":"","value":},
const opBytes = len(`{"op":"add","path":"","value":},`)

// Lower bounds of what some values take in JSON, for minPatchBytes.
var (
	// minEnvVarBytes is an env var around its name: {"name":""}, and valueFromBytes its
	// valueFrom, at least ,"valueFrom":{"fieldRef":{"fieldPath":""}}.
	minEnvVarBytes, minValueFromBytes = len(`{"name":""}`), len(`,"valueFrom":{"fieldRef":{"fieldPath":""}}`)
	// minMountBytes is the metadata mount around its path.
	minMountBytes = len(mustMarshal(metadataMount("")))
	// metadataVolumeBytes is the metadata volume without containers, and
	// containerItemsBytes one container's files around the name (which each holds
	// twice: in the path and as containerName), with a comma.
	metadataVolumeBytes = len(mustMarshal(metadataVolume(nil).volume()))
	containerItemsBytes = len(mustMarshal(containerMetadataFiles(""))) - 1
	tokenVolumeBytes    = len(mustMarshal(tokenVolume{}.volume()))
	// minItemBytes is a volume item around its path: {"path":""}, with a comma.
	minItemBytes = len(`{"path":""},`)
	// minStorageBytes is a resources, requests or limits value: {"ephemeral-storage":""}.
	minStorageBytes = len(`{"ephemeral-storage":""}`)
	// minContainerBytes is any ambassador container: its name and image and a few braces.
	minContainerBytes = len(`{"name":"` + AmbassadorContainerName + `","image":""}`)
)

// Patch renders the plan as JSON-patch operations, all of them "add": podmeta never
// removes or replaces what the pod has.
func (p *Plan) Patch() []jsonpatch.Operation {
	ops := make([]jsonpatch.Operation, 0, len(p.additions)+8)
	for _, a := range p.additions {
		ops = a.appendOps(ops)
	}
	return ops
}

// Apply makes the plan's additions on a typed Pod: the same Pod the apiserver stores
// after applying Patch.
func (p *Plan) Apply(pod *corev1.Pod) {
	for _, a := range p.additions {
		a.addTo(pod)
	}
}

func addOp(path string, value any) jsonpatch.Operation {
	return jsonpatch.Operation{Operation: "add", Path: path, Value: value}
}

// addOrAppend adds values to the array at path: the whole array when it does not exist.
func addOrAppend[T any](ops []jsonpatch.Operation, path string, exists bool, values ...T) []jsonpatch.Operation {
	if !exists {
		return append(ops, addOp(path, values))
	}
	for _, v := range values {
		ops = append(ops, addOp(path+"/-", v))
	}
	return ops
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

// kind names the container's list in warnings and notes.
func (r containerRef) kind() string {
	if r.init {
		return "init container"
	}
	return "container"
}

func (r containerRef) in(pod *corev1.Pod) *corev1.Container {
	if r.init {
		return &pod.Spec.InitContainers[r.index]
	}
	return &pod.Spec.Containers[r.index]
}

// envAddition puts vars before the container's own, so the container's $(VAR)
// references to them resolve.
type envAddition struct {
	ref  containerRef
	vars []corev1.EnvVar // their ValueFrom is the Injector's: never modified
}

func (a envAddition) appendOps(ops []jsonpatch.Operation) []jsonpatch.Operation {
	path := a.ref.path() + "/env"
	if a.ref.c.Env == nil {
		return append(ops, addOp(path, a.vars))
	}
	for i := range a.vars {
		ops = append(ops, addOp(path+"/"+strconv.Itoa(i), &a.vars[i])) // a pointer: no copy into the interface
	}
	return ops
}

func (a envAddition) minPatchBytes() int {
	path := len(a.ref.path()) + len("/env")
	n := opBytes + path
	if a.ref.c.Env != nil {
		n = len(a.vars) * (opBytes + path + len("/0"))
	}
	for i := range a.vars {
		n += minEnvVarBytes + len(a.vars[i].Name) + len(a.vars[i].Value)
		if a.vars[i].ValueFrom != nil {
			n += minValueFromBytes
		}
	}
	return n
}

func (a envAddition) addTo(pod *corev1.Pod) {
	c := a.ref.in(pod)
	vars := make([]corev1.EnvVar, 0, len(a.vars)+len(c.Env))
	for _, v := range a.vars {
		vars = append(vars, *v.DeepCopy())
	}
	c.Env = append(vars, c.Env...)
}

// mountAddition mounts the metadata volume into one container.
type mountAddition struct {
	ref   containerRef
	mount corev1.VolumeMount
}

func (a mountAddition) appendOps(ops []jsonpatch.Operation) []jsonpatch.Operation {
	return addOrAppend(ops, a.ref.path()+"/volumeMounts", a.ref.c.VolumeMounts != nil, a.mount)
}

func (a mountAddition) minPatchBytes() int {
	return opBytes + len(a.ref.path()) + len("/volumeMounts") + minMountBytes + len(a.mount.MountPath)
}

func (a mountAddition) addTo(pod *corev1.Pod) {
	c := a.ref.in(pod)
	c.VolumeMounts = append(c.VolumeMounts, a.mount)
}

// podVolume is a pod volume podmeta adds (metadataVolume, tokenVolume): a description
// that marshals as its corev1.Volume, so the plan never builds one that no one reads.
type podVolume interface {
	json.Marshaler
	volume() corev1.Volume
}

// volumeAddition adds a pod volume; the first one added to a pod without spec.volumes
// creates the list.
type volumeAddition struct {
	vol        podVolume
	hadVolumes bool
}

func (a volumeAddition) appendOps(ops []jsonpatch.Operation) []jsonpatch.Operation {
	return addOrAppend(ops, "/spec/volumes", a.hadVolumes, a.vol)
}

func (a volumeAddition) minPatchBytes() int {
	n := opBytes + len("/spec/volumes")
	switch v := a.vol.(type) {
	case metadataVolume:
		n += metadataVolumeBytes
		for _, name := range v {
			n += containerItemsBytes + len(resourceKeys)*2*len(name)
		}
	case tokenVolume:
		n += tokenVolumeBytes
	}
	return n
}

func (a volumeAddition) addTo(pod *corev1.Pod) {
	pod.Spec.Volumes = append(pod.Spec.Volumes, a.vol.volume())
}

// volumeItemsAddition completes podmeta's existing metadata volume.
type volumeItemsAddition struct {
	index    int
	hadItems bool
	items    []corev1.DownwardAPIVolumeFile
}

func (a volumeItemsAddition) appendOps(ops []jsonpatch.Operation) []jsonpatch.Operation {
	return addOrAppend(ops, "/spec/volumes/"+strconv.Itoa(a.index)+"/downwardAPI/items", a.hadItems, a.items...)
}

func (a volumeItemsAddition) minPatchBytes() int {
	path := len("/spec/volumes/") + len(strconv.Itoa(a.index)) + len("/downwardAPI/items")
	n := opBytes + path
	if a.hadItems {
		n = len(a.items) * (opBytes + path + len("/-"))
	}
	for i := range a.items {
		n += minItemBytes + len(a.items[i].Path)
		if r := a.items[i].ResourceFieldRef; r != nil {
			n += len(r.ContainerName) + len(r.Resource)
		}
	}
	return n
}

func (a volumeItemsAddition) addTo(pod *corev1.Pod) {
	d := pod.Spec.Volumes[a.index].DownwardAPI
	d.Items = append(d.Items, a.items...)
}

// storageAddition sets a container's ephemeral-storage request and/or limit, creating
// resources, requests or limits where the container has none.
type storageAddition struct {
	ref            containerRef
	request, limit *resource.Quantity
}

func (a storageAddition) appendOps(ops []jsonpatch.Operation) []jsonpatch.Operation {
	path := a.ref.path() + "/resources"
	r := a.ref.c.Resources
	if r == nil {
		return append(ops, addOp(path, a.requirements()))
	}
	for _, f := range [...]struct {
		name string
		q    *resource.Quantity
		have bool
	}{{"requests", a.request, r.Requests != nil}, {"limits", a.limit, r.Limits != nil}} {
		switch {
		case f.q == nil:
		case f.have:
			ops = append(ops, addOp(path+"/"+f.name+"/"+EphemeralStorage, f.q))
		default:
			ops = append(ops, addOp(path+"/"+f.name, corev1.ResourceList{EphemeralStorage: *f.q}))
		}
	}
	return ops
}

func (a storageAddition) minPatchBytes() int {
	return opBytes + len(a.ref.path()) + len("/resources") + minStorageBytes
}

func (a storageAddition) requirements() corev1.ResourceRequirements {
	var r corev1.ResourceRequirements
	if a.request != nil {
		r.Requests = corev1.ResourceList{EphemeralStorage: *a.request}
	}
	if a.limit != nil {
		r.Limits = corev1.ResourceList{EphemeralStorage: *a.limit}
	}
	return r
}

func (a storageAddition) addTo(pod *corev1.Pod) {
	r := &a.ref.in(pod).Resources
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

// sidecarAddition adds the ambassador: first among init containers as a native sidecar,
// so it runs before the other init containers, or last among containers otherwise.
type sidecarAddition struct {
	container *corev1.Container // may be the Injector's: never modified
	init      bool
	hadList   bool
}

func (a sidecarAddition) appendOps(ops []jsonpatch.Operation) []jsonpatch.Operation {
	switch {
	case !a.hadList && a.init:
		return append(ops, addOp("/spec/initContainers", []*corev1.Container{a.container}))
	case a.init:
		return append(ops, addOp("/spec/initContainers/0", a.container))
	default:
		return addOrAppend(ops, "/spec/containers", a.hadList, a.container)
	}
}

func (a sidecarAddition) minPatchBytes() int {
	return opBytes + len("/spec/containers") + minContainerBytes + len(a.container.Image)
}

func (a sidecarAddition) addTo(pod *corev1.Pod) {
	if a.init {
		pod.Spec.InitContainers = slices.Insert(pod.Spec.InitContainers, 0, *a.container.DeepCopy())
		return
	}
	pod.Spec.Containers = append(pod.Spec.Containers, *a.container.DeepCopy())
}

// annotationAddition adds (or, for podmeta's own status key, updates) an annotation.
type annotationAddition struct {
	key, value     string
	hadAnnotations bool
}

func (a annotationAddition) appendOps(ops []jsonpatch.Operation) []jsonpatch.Operation {
	if !a.hadAnnotations {
		return append(ops, addOp("/metadata/annotations", map[string]string{a.key: a.value}))
	}
	return append(ops, addOp("/metadata/annotations/"+escapePointer(a.key), a.value))
}

func (a annotationAddition) minPatchBytes() int {
	return opBytes + len("/metadata/annotations/") + len(a.key) + len(a.value) + len(`""`)
}

func (a annotationAddition) addTo(pod *corev1.Pod) {
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[a.key] = a.value
}

// escapePointer escapes a JSON-pointer token (RFC 6901).
func escapePointer(s string) string { return pointerEscaper.Replace(s) }

var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")
