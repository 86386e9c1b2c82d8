package webhook

import (
	"bytes"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// The fast JSON path. encoding/json walks every value by reflection on every request, yet
// most of what podmeta adds is the same each time: the env vars' valueFrom, the metadata
// volume's items, the mounts, the ambassador and its token volume. This file writes those
// from JSON that encoding/json rendered once, at start: as it is, or as a template with
// one string left open (a container's name, a mount path). Filling the hole with a
// non-empty string that needs no escaping writes exactly what encoding/json writes for
// the value built with that string; any other string, and any value not recognised here,
// goes to encoding/json. Only the splicing is podmeta's; every byte between holes is
// encoding/json's, and checkPlan compares the result with a plain encoding/json rendering
// on every golden and fuzzed plan. It measured −31% handler time on the typical pod.
//
// Nothing outside this file refers to it: deleting it (and fastjson_test.go) leaves the
// engine rendering everything with encoding/json, and the goldens unchanged.

func init() { newValueEncoder = newTemplateEncoder }

// templateEncoder is an Injector's valueEncoder.
type templateEncoder struct {
	// valueFrom is the JSON of each shared env var's valueFrom, known by its address: the
	// plan copies the Injector's vars (to prefix their names) but shares their valueFrom.
	// A slice, scanned: comparing a few pointers costs less than hashing one.
	valueFrom []renderedSource
	// ambassador is the Injector's ambassador (the operator's own port and mode), and
	// ambassadorJSON its rendering; another port or mode is a new container, left to
	// encoding/json.
	ambassador     *corev1.Container
	ambassadorJSON []byte
}

type renderedSource struct {
	source *corev1.EnvVarSource
	json   []byte
}

func newTemplateEncoder(envVars []corev1.EnvVar, ambassador *corev1.Container) valueEncoder {
	e := &templateEncoder{ambassador: ambassador, ambassadorJSON: mustMarshal(ambassador)}
	for _, v := range envVars {
		e.valueFrom = append(e.valueFrom, renderedSource{v.ValueFrom, mustMarshal(v.ValueFrom)})
	}
	return e
}

// valueFromJSON is the rendering of a shared valueFrom; nil for any other.
func (e *templateEncoder) valueFromJSON(src *corev1.EnvVarSource) []byte {
	for i := range e.valueFrom {
		if e.valueFrom[i].source == src {
			return e.valueFrom[i].json
		}
	}
	return nil
}

func (e *templateEncoder) encodeString(buf *bytes.Buffer, s string) bool { return appendString(buf, s) }

func (e *templateEncoder) encode(buf *bytes.Buffer, value any) bool {
	switch v := value.(type) {
	case string:
		return appendString(buf, v)
	case *corev1.EnvVar:
		return e.envVar(buf, v)
	case []corev1.EnvVar:
		return appendEach(buf, v, e.envVar)
	case corev1.VolumeMount:
		return appendMount(buf, &v)
	case []corev1.VolumeMount:
		return appendEach(buf, v, appendMount)
	case podVolume:
		return appendVolume(buf, v)
	case []podVolume:
		return appendEach(buf, v, func(buf *bytes.Buffer, v *podVolume) bool { return appendVolume(buf, *v) })
	case *corev1.Container:
		return e.container(buf, v)
	case []*corev1.Container:
		return appendEach(buf, v, func(buf *bytes.Buffer, c **corev1.Container) bool { return e.container(buf, *c) })
	}
	return false
}

// appendEach writes a JSON array of list's elements, each by appendElem.
func appendEach[T any](buf *bytes.Buffer, list []T, appendElem func(*bytes.Buffer, *T) bool) bool {
	buf.WriteByte('[')
	for i := range list {
		if i > 0 {
			buf.WriteByte(',')
		}
		if !appendElem(buf, &list[i]) {
			return false
		}
	}
	buf.WriteByte(']')
	return true
}

// envVar writes {"name":…,"value":…,"valueFrom":…}, the fields in corev1.EnvVar's order,
// the last two omitted when empty as their omitempty says.
func (e *templateEncoder) envVar(buf *bytes.Buffer, v *corev1.EnvVar) bool {
	buf.WriteString(`{"name":`)
	if !appendString(buf, v.Name) {
		return false
	}
	if v.Value != "" {
		buf.WriteString(`,"value":`)
		if !appendString(buf, v.Value) {
			return false
		}
	}
	if v.ValueFrom != nil {
		js := e.valueFromJSON(v.ValueFrom)
		if js == nil {
			return false
		}
		buf.WriteString(`,"valueFrom":`)
		buf.Write(js)
	}
	buf.WriteByte('}')
	return true
}

var mountTemplate = newTemplate(metadataMount(templateHole))

// appendMount writes the metadata volume's mount (metadataMount's fields and no other);
// any other mount is left to encoding/json.
func appendMount(buf *bytes.Buffer, m *corev1.VolumeMount) bool {
	want := metadataMount(m.MountPath)
	same := m.Name == want.Name && m.ReadOnly == want.ReadOnly && m.RecursiveReadOnly == nil && m.SubPath == "" &&
		m.MountPropagation == nil && m.SubPathExpr == "" && m.BindMountOptions == nil
	return same && mountTemplate.fill(buf, m.MountPath)
}

var (
	// The metadata volume renders as head (up to its pod-wide items), then per container
	// ","+containerItems with the name filled, then tail.
	metadataHead, metadataTail = func() ([]byte, []byte) {
		b := mustMarshal(metadataVolume(nil).volume())
		i := bytes.LastIndexByte(b, ']')
		return b[:i], b[i:]
	}()
	containerItems = func() jsonTemplate {
		t := newTemplate(containerMetadataFiles(templateHole))
		t[0], t[len(t)-1] = t[0][1:], t[len(t)-1][:len(t[len(t)-1])-1] // without [ and ]
		return t
	}()
	tokenVolumeJSON = mustMarshal(tokenVolume{}.volume())
)

func appendVolume(buf *bytes.Buffer, v podVolume) bool {
	switch v := v.(type) {
	case metadataVolume:
		buf.Write(metadataHead)
		for _, c := range v {
			buf.WriteByte(',')
			if !containerItems.fill(buf, c) {
				return false
			}
		}
		buf.Write(metadataTail)
		return true
	case tokenVolume:
		buf.Write(tokenVolumeJSON)
		return true
	}
	return false
}

func (e *templateEncoder) container(buf *bytes.Buffer, c *corev1.Container) bool {
	if c != e.ambassador {
		return false
	}
	buf.Write(e.ambassadorJSON)
	return true
}

// jsonTemplate is a JSON rendering split at its holes.
type jsonTemplate [][]byte

// templateHole is the string a template is rendered with; encoding/json writes it as
// \u0000, which nothing else in podmeta's values contains.
const templateHole = "\x00"

func newTemplate(v any) jsonTemplate {
	return bytes.Split(mustMarshal(v), []byte(`\u0000`))
}

// fill writes the template with s in every hole, when s needs no escaping and is not
// empty (encoding/json omits an empty omitempty field the template holds).
func (t jsonTemplate) fill(buf *bytes.Buffer, s string) bool {
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

// appendString writes s as a JSON string when it is printable ASCII, escaping only '"'
// and '\\' as encoding/json does.
func appendString(buf *bytes.Buffer, s string) bool {
	if !printable(s) {
		return false
	}
	buf.WriteByte('"')
	rest := s
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
