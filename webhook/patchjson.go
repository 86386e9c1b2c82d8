package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

// PatchJSON is Patch serialized, as an AdmissionResponse carries it.
func (p *Plan) PatchJSON() ([]byte, error) {
	var buf bytes.Buffer
	err := p.WritePatchJSON(&buf)
	return buf.Bytes(), err
}

// WritePatchJSON writes Patch serialized into buf (the handler passes a pooled one).
func (p *Plan) WritePatchJSON(buf *bytes.Buffer) error { return p.writePatchJSON(buf, p.encoder) }

// valueEncoder writes some patch values' JSON faster than encoding/json: the only
// implementation, and everything that knows about it, is in fastjson.go. encode appends
// exactly what encoding/json (without HTML escaping) would write for value and reports
// true, or reports false and leaves value to encoding/json; what it wrote is then
// discarded. checkPlan proves the bytes equal on every golden and fuzzed plan.
type valueEncoder interface {
	encode(buf *bytes.Buffer, value any) bool
	// encodeString is encode for a string: the operation's path, without boxing it.
	encodeString(buf *bytes.Buffer, s string) bool
}

// newValueEncoder makes the encoder for one Injector's plans from the values it shares
// between them: the env vars (one per envKeys entry) and the ambassador built for the
// operator's own port and mode. fastjson.go sets it; without that file it stays nil and
// encoding/json writes every value: the same bytes, slower.
var newValueEncoder func(envVars []corev1.EnvVar, ambassador *corev1.Container) valueEncoder

// writePatchJSON writes each operation's envelope itself: jsonpatch.Operation's own
// MarshalJSON marshals every operation twice over (once inside, once compacting the
// result), which costs more than the whole plan. fast, when not nil, writes the paths and
// values it can; encoding/json writes the rest.
func (p *Plan) writePatchJSON(buf *bytes.Buffer, fast valueEncoder) error {
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	// encode writes v with encoding/json.
	encode := func(path string, v any) error {
		if err := enc.Encode(v); err != nil {
			return fmt.Errorf("marshal %s: %w", path, err)
		}
		buf.Truncate(buf.Len() - 1) // Encode's newline
		return nil
	}
	buf.WriteByte('[')
	for i, op := range p.Patch() {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteString(`{"op":"add","path":`)
		if mark := buf.Len(); fast == nil || !fast.encodeString(buf, op.Path) {
			buf.Truncate(mark)
			if err := encode(op.Path, op.Path); err != nil {
				return err
			}
		}
		buf.WriteString(`,"value":`)
		if mark := buf.Len(); fast == nil || !fast.encode(buf, op.Value) {
			buf.Truncate(mark)
			if err := encode(op.Path, op.Value); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	}
	buf.WriteByte(']')
	return nil
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
