package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
)

// PatchJSON is Patch serialized, as an AdmissionResponse carries it. Like WritePatchJSON
// it keeps the plan's bound (Config.MaxPatchBytes).
func (p *Plan) PatchJSON() ([]byte, error) {
	var buf bytes.Buffer
	err := p.WritePatchJSON(&buf)
	return buf.Bytes(), err
}

// WritePatchJSON writes Patch serialized into buf (the handler passes a pooled one). A
// plan the Injector made stops at Config.MaxPatchBytes with a *DenyError; the Injector
// checked that bound already, so that only a plan used otherwise meets it.
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
// result), which costs more than the whole plan. enc, when not nil, writes the paths and
// values it can; encoding/json writes the rest. When enc is the plan's patchBound, the
// writer keeps its bound as it goes: it stops with a *DenyError (a PatchTooLargeError) as
// soon as what it wrote passes the bound, or would pass it by an addition's lower bound
// alone, so it never holds more than the bound and one addition. The operations are
// made one addition at a time, never all at once.
func (p *Plan) writePatchJSON(buf *bytes.Buffer, enc valueEncoder) error {
	fast, limit := enc, 0
	bound, _ := enc.(*patchBound)
	if bound != nil {
		fast, limit = bound.fast, bound.limit
	}
	encoder := json.NewEncoder(buf)
	encoder.SetEscapeHTML(false)
	// encode writes v with encoding/json.
	encode := func(path string, v any) error {
		if err := encoder.Encode(v); err != nil {
			return fmt.Errorf("marshal %s: %w", path, err)
		}
		buf.Truncate(buf.Len() - 1) // Encode's newline
		return nil
	}
	start := buf.Len()
	buf.WriteByte('[')
	var ops [16]jsonpatch.Operation // most additions make one operation, env ones up to 16
	first := true
	for _, a := range p.additions {
		if limit > 0 && buf.Len()-start+a.minPatchBytes() > limit {
			return bound.tooLarge(buf.Len() - start + a.minPatchBytes())
		}
		for _, op := range a.appendOps(ops[:0]) {
			if !first {
				buf.WriteByte(',')
			}
			first = false
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
			if limit > 0 && buf.Len()-start+1 > limit {
				return bound.tooLarge(buf.Len() - start + 1)
			}
		}
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
