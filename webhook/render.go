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
		return append(ops, add(path, list[T](values)))
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
	vars []envVar
}

func (a addEnv) patch(ops []jsonpatch.Operation) []jsonpatch.Operation {
	path := a.ref.path() + "/env"
	if a.ref.c.Env == nil {
		return append(ops, add(path, list[envVar](a.vars)))
	}
	for i := range a.vars {
		ops = append(ops, add(path+"/"+strconv.Itoa(i), &a.vars[i])) // a pointer: no copy into the interface
	}
	return ops
}

func (a addEnv) apply(pod *corev1.Pod) {
	c := a.ref.typed(pod)
	vars := make([]corev1.EnvVar, 0, len(a.vars)+len(c.Env))
	for _, v := range a.vars {
		vars = append(vars, *v.DeepCopy()) // a.vars share the Injector's valueFrom
	}
	c.Env = append(vars, c.Env...)
}

type addMount struct {
	ref   containerRef
	mount metadataMount
}

func (a addMount) patch(ops []jsonpatch.Operation) []jsonpatch.Operation {
	return addOrAppend(ops, a.ref.path()+"/volumeMounts", a.ref.c.VolumeMounts != nil, a.mount)
}

func (a addMount) apply(pod *corev1.Pod) {
	c := a.ref.typed(pod)
	c.VolumeMounts = append(c.VolumeMounts, a.mount.VolumeMount)
}

type addVolume struct {
	vol        podVolume
	hadVolumes bool
}

func (a addVolume) patch(ops []jsonpatch.Operation) []jsonpatch.Operation {
	return addOrAppend(ops, "/spec/volumes", a.hadVolumes, a.vol)
}

func (a addVolume) apply(pod *corev1.Pod) { pod.Spec.Volumes = append(pod.Spec.Volumes, a.vol.typed()) }

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
	c       *ambassador // may be the Injector's: never modified
	init    bool
	hadList bool
}

func (a addContainer) patch(ops []jsonpatch.Operation) []jsonpatch.Operation {
	switch {
	case !a.hadList && a.init:
		return append(ops, add("/spec/initContainers", list[*ambassador]{a.c}))
	case a.init:
		return append(ops, add("/spec/initContainers/0", a.c))
	default:
		return addOrAppend(ops, "/spec/containers", a.hadList, a.c)
	}
}

func (a addContainer) apply(pod *corev1.Pod) {
	if a.init {
		pod.Spec.InitContainers = slices.Insert(pod.Spec.InitContainers, 0, *a.c.DeepCopy())
		return
	}
	pod.Spec.Containers = append(pod.Spec.Containers, *a.c.DeepCopy())
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
	return append(ops, add("/metadata/annotations/"+escapePointer(a.key), text(a.value)))
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

// WritePatchJSON writes Patch serialized into buf (the handler passes a pooled one).
func (p *Plan) WritePatchJSON(buf *bytes.Buffer) error { return p.writePatchJSON(buf, true) }

// writePatchJSON writes each operation's envelope itself: jsonpatch.Operation's own
// MarshalJSON marshals every operation twice over (once inside, once compacting the
// result), which costs more than the whole plan. With fast, a value that can write its
// own JSON does (see fastValue); without, encoding/json renders every value: checkPlan
// proves both give the same bytes.
func (p *Plan) writePatchJSON(buf *bytes.Buffer, fast bool) error {
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	buf.WriteByte('[')
	for i, op := range p.Patch() {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteString(`{"op":"add","path":`)
		if !fast || !text(op.Path).appendJSON(buf) {
			buf.Write(mustMarshal(op.Path))
		}
		buf.WriteString(`,"value":`)
		start := buf.Len()
		if f, ok := op.Value.(fastValue); ok && fast && f.appendJSON(buf) {
			buf.WriteByte('}')
			continue
		}
		buf.Truncate(start)
		if err := enc.Encode(op.Value); err != nil {
			return fmt.Errorf("marshal %s: %w", op.Path, err)
		}
		buf.Truncate(buf.Len() - 1) // Encode's newline
		buf.WriteByte('}')
	}
	buf.WriteByte(']')
	return nil
}

// Rendering without reflection. encoding/json walks every value by reflection on every
// request, yet most of what podmeta adds is the same each time: the env vars' valueFrom,
// the metadata volume's items, the mounts, the ambassador and its token volume. A
// template is encoding/json's own rendering of such a value, made once, with one string
// left open (the hole): a var's name, a container's name, a mount path. Filling the hole
// with a non-empty string that needs no escaping writes exactly what encoding/json writes
// for the value built with that string; any other string goes to encoding/json. Only
// the splicing is podmeta's; every byte between holes is encoding/json's, and checkPlan
// compares the result with a plain encoding/json rendering on every golden and fuzzed
// plan.

// fastValue is a patch value that can write its own JSON. appendJSON reports false when
// it cannot (a string a template cannot hold verbatim); the value is then encoded by
// encoding/json, which renders every fastValue the same, as its embedded typed value.
type fastValue interface {
	appendJSON(buf *bytes.Buffer) bool
}

// template is a JSON rendering split at its holes.
type template [][]byte

// hole is the string a template is rendered with; encoding/json writes it as \u0000,
// which nothing else in podmeta's values contains.
const hole = "\x00"

func newTemplate(v any) template {
	return bytes.Split(mustMarshal(v), []byte(`\u0000`))
}

// fill writes the template with s in every hole, when s needs no escaping and is not
// empty (encoding/json omits an empty omitempty field the template holds).
func (t template) fill(buf *bytes.Buffer, s string) bool {
	if s == "" || !printable(s) || strings.ContainsAny(s, `"\\`) {
		return false
	}
	for i, part := range t {
		if i > 0 {
			buf.WriteString(s)
		}
		buf.Write(part)
	}
	return true
}

// mustMarshal renders one of podmeta's own values as WritePatchJSON's encoder does.
func mustMarshal(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(err) // podmeta's own values always marshal
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// text is a string value: JSON text such as podmeta's status record, a path.
type text string

// appendJSON writes printable ASCII, escaping only '"' and '\\' as encoding/json does.
func (t text) appendJSON(buf *bytes.Buffer) bool {
	if !printable(string(t)) {
		return false
	}
	buf.WriteByte('"')
	rest := string(t)
	for i := strings.IndexAny(rest, `"\\`); i >= 0; i = strings.IndexAny(rest, `"\\`) {
		buf.WriteString(rest[:i])
		buf.WriteByte('\\')
		buf.WriteByte(rest[i])
		rest = rest[i+1:]
	}
	buf.WriteString(rest)
	buf.WriteByte('"')
	return true
}

// printable reports whether s is printable ASCII, which encoding/json writes as it is
// but for '"' and '\\'.
func printable(s string) bool {
	for i := range len(s) {
		if c := s[i]; c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// list is an array value whose elements may be fastValues.
type list[T any] []T

func (l list[T]) appendJSON(buf *bytes.Buffer) bool {
	buf.WriteByte('[')
	for i := range l {
		if i > 0 {
			buf.WriteByte(',')
		}
		// A struct element as a pointer (its methods are the pointer's too, and boxing a
		// pointer copies nothing); a pointer or interface element as it is.
		f, ok := any(&l[i]).(fastValue)
		if !ok {
			f, ok = any(l[i]).(fastValue)
		}
		if !ok || !f.appendJSON(buf) {
			return false
		}
	}
	buf.WriteByte(']')
	return true
}

// envVar is an env var podmeta adds; tmpl renders it with the hole at its name, so a
// prefix changes nothing else.
type envVar struct {
	corev1.EnvVar
	tmpl template
}

func (v envVar) appendJSON(buf *bytes.Buffer) bool { return v.tmpl.fill(buf, v.Name) }

func newEnvVar(v corev1.EnvVar) envVar {
	named := v
	named.Name = hole
	return envVar{EnvVar: v, tmpl: newTemplate(named)}
}

// metadataMount mounts the metadata volume.
type metadataMount struct{ corev1.VolumeMount }

var mountTemplate = newTemplate(metadataMountAt(hole).VolumeMount)

func metadataMountAt(path string) metadataMount {
	return metadataMount{corev1.VolumeMount{Name: VolumeName, MountPath: path, ReadOnly: true}}
}

func (m metadataMount) appendJSON(buf *bytes.Buffer) bool {
	return mountTemplate.fill(buf, m.MountPath)
}

// podVolume is a pod volume podmeta adds: rendered from its template by appendJSON, and
// built as a corev1.Volume only when asked (Apply, encoding/json).
type podVolume interface {
	fastValue
	json.Marshaler
	typed() corev1.Volume
}

var (
	// The metadata volume renders as head (up to its pod-wide items), then per container
	// ","+containerItems with the name filled, then tail.
	metadataHead, metadataTail = func() ([]byte, []byte) {
		b := mustMarshal(metadataVolume(nil).typed())
		i := bytes.LastIndexByte(b, ']')
		return b[:i], b[i:]
	}()
	containerItems = func() template {
		t := newTemplate(containerMetadataItems(hole))
		t[0], t[len(t)-1] = t[0][1:], t[len(t)-1][:len(t[len(t)-1])-1] // without [ and ]
		return t
	}()
)

func (m metadataVolume) appendJSON(buf *bytes.Buffer) bool {
	buf.Write(metadataHead)
	for _, c := range m {
		buf.WriteByte(',')
		if !containerItems.fill(buf, c) {
			return false
		}
	}
	buf.Write(metadataTail)
	return true
}

func (m metadataVolume) MarshalJSON() ([]byte, error) { return mustMarshal(m.typed()), nil }

// tokenVolume is the ambassador's token volume: always the same.
type tokenVolume struct{}

var tokenVolumeJSON = mustMarshal(ambassadorTokenVolume())

func (tokenVolume) typed() corev1.Volume { return ambassadorTokenVolume() }

func (tokenVolume) appendJSON(buf *bytes.Buffer) bool {
	buf.Write(tokenVolumeJSON)
	return true
}

func (v tokenVolume) MarshalJSON() ([]byte, error) { return mustMarshal(v.typed()), nil }

// ambassador is the sidecar; json is its rendering when made ahead (the Injector's, for
// the operator's own port and mode), nil otherwise.
type ambassador struct {
	corev1.Container
	json []byte
}

func (a ambassador) appendJSON(buf *bytes.Buffer) bool {
	buf.Write(a.json)
	return a.json != nil
}
