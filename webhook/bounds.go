package webhook

import (
	"bytes"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/api/resource"
)

// The engine's bounds (security issue 16). podmeta is one shared service on the
// pod-creation path of every opted-in namespace, and every pod author is an adversary of
// every other team: what one pod can make podmeta compute, hold or send is bounded here,
// each bound checked before the work it protects.

const (
	// DefaultMaxPatchBytes is the default of Config.MaxPatchBytes (--max-patch-bytes),
	// the largest JSON patch podmeta answers. 1 MiB keeps the stored pod under etcd's
	// default request limit of 1.5 MiB (--max-request-bytes of etcd) with room for the
	// pod itself, so a patch past it could only make a pod the apiserver then fails to
	// store. A typical patch is 3-10 KB.
	DefaultMaxPatchBytes = 1 << 20

	// MaxAnnotationValueBytes bounds the value of every podmeta.io/ annotation podmeta
	// parses (not podmeta.io/status, which it writes). The longest sensible one is a
	// podmeta.io/containers list of MaxContainersListItems names of 63 characters: 16,383
	// bytes.
	MaxAnnotationValueBytes = 16 << 10
	// MaxContainersListItems bounds the items of podmeta.io/containers, repeats counted.
	MaxContainersListItems = 256
	// MaxEnvListItems bounds the items of podmeta.io/env, repeats counted: there are 15
	// keys and 3 keywords.
	MaxEnvListItems = 64

	// MaxWarnings bounds the admission warnings of one answer; the rest are summed up in
	// one more, "podmeta: N more warnings not shown".
	MaxWarnings = 20
	// MaxWarningBytes bounds the bytes of all warnings of one answer. The apiserver's
	// warning recorder (k8s.io/apiserver/pkg/endpoints/filters/warning.go,
	// truncateAtTotalRunes = 4*1024, truncateItemRunes = 256) passes on 4,096 runes of
	// warnings per response intact, and beyond that cuts every warning to 256 runes:
	// podmeta's stay within it.
	MaxWarningBytes = 4 << 10
	// MaxWarningItemBytes bounds one warning: it may quote container names, which the
	// apiserver validates only after admission.
	MaxWarningItemBytes = 1 << 10
	// maxNamedItems is how many unknown keys or repeated items one warning names.
	maxNamedItems = 5
)

// maxQuantity is the largest quantity podmeta accepts: what an int64 holds (8Ei - 1).
const maxQuantity = 1<<63 - 1

// Reasons of the quantity bounds, as AnnotationError and flag errors give them.
const (
	reasonQuantityAbove = "above the largest quantity podmeta accepts (8Ei - 1 byte, 9223372036854775807)"
	reasonQuantityBelow = "below the smallest quantity podmeta accepts (1n)"
)

var (
	bigMaxQuantity = new(big.Rat).SetInt64(maxQuantity)
	bigMinQuantity = big.NewRat(1, 1_000_000_000)
	bigTen         = big.NewInt(10)
)

// checkQuantityText reads a quantity's text (trimmed) as resource.ParseQuantity would
// and tells whether its magnitude is outside [1n, 8Ei - 1], without any arithmetic
// whose cost the text controls: ParseQuantity itself scales by the exponent
// ("1e-2147483647" never returns; "1e2147483648" wraps to that), and comparing a
// quantity of "1e2147483647" with another builds a number of 2×10⁹ digits. It returns
// "" for text ParseQuantity may parse (it still decides validity and sign), a reason
// when the magnitude is out of bounds, and errQuantitySyntax's text for text outside the
// quantity grammar, which is never handed to ParseQuantity.
func checkQuantityText(s string) string {
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	intStart := i
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	intPart := s[intStart:i]
	var fracPart string
	if i < len(s) && s[i] == '.' {
		i++
		fracStart := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		fracPart = s[fracStart:i]
	}
	if intPart == "" && fracPart == "" {
		return reasonQuantitySyntax
	}
	// value = digits × 10^(exp10 - len(fracPart)) × 2^exp2
	var exp10, exp2 int64
	switch suf := s[i:]; suf {
	case "":
	case "n":
		exp10 = -9
	case "u":
		exp10 = -6
	case "m":
		exp10 = -3
	case "k":
		exp10 = 3
	case "M":
		exp10 = 6
	case "G":
		exp10 = 9
	case "T":
		exp10 = 12
	case "P":
		exp10 = 15
	case "E":
		exp10 = 18
	case "Ki", "Mi", "Gi", "Ti", "Pi", "Ei":
		exp2 = 10 * int64(1+strings.IndexByte("KMGTPE", suf[0]))
	default:
		if len(suf) < 2 || (suf[0] != 'e' && suf[0] != 'E') {
			return reasonQuantitySyntax
		}
		e := suf[1:]
		if e[0] == '+' || e[0] == '-' {
			e = e[1:]
		}
		if e == "" || strings.IndexFunc(e, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
			return reasonQuantitySyntax
		}
		n, err := strconv.ParseInt(suf[1:], 10, 64)
		if err != nil { // out of int64's range: clamp, far beyond either bound
			n = 1 << 40
			if suf[1] == '-' {
				n = -n
			}
		}
		exp10 = max(min(n, 1<<40), -1<<40)
	}
	digits := strings.TrimLeft(intPart+fracPart, "0")
	if digits == "" {
		return "" // zero: ParseQuantity and the caller's sign check decide
	}
	// The value is in [10^(mag-1), 10^mag) × 2^exp2, with 2^exp2 < 10^(3·exp2/10 + 1).
	mag := int64(len(digits)) - int64(len(fracPart)) + exp10
	switch lo, hi := mag-1+3*exp2/10, mag+3*exp2/10+1; {
	case lo >= 19: // ≥ 10^19 > 2^63 - 1
		return reasonQuantityAbove
	case hi <= -10: // < 10^-10 < 1n
		return reasonQuantityBelow
	case hi <= 18 && lo >= -9: // within [10^-9, 10^18)
		return ""
	}
	// Near a bound: the exponents are now small (the text's length plus a few dozen),
	// so exact arithmetic costs what the text costs.
	v, _ := new(big.Int).SetString(digits, 10)
	r := new(big.Rat).SetInt(v)
	scale := exp10 - int64(len(fracPart))
	pow := new(big.Int).Exp(bigTen, big.NewInt(abs(scale)), nil)
	if scale >= 0 {
		r.Mul(r, new(big.Rat).SetInt(pow))
	} else {
		r.Quo(r, new(big.Rat).SetInt(pow))
	}
	r.Mul(r, new(big.Rat).SetInt(new(big.Int).Lsh(big.NewInt(1), uint(exp2))))
	switch {
	case r.Cmp(bigMaxQuantity) > 0:
		return reasonQuantityAbove
	case r.Cmp(bigMinQuantity) < 0:
		return reasonQuantityBelow
	}
	return ""
}

// reasonQuantitySyntax is checkQuantityText's answer for text that is no quantity.
const reasonQuantitySyntax = "not a quantity"

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func abs(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}

// parseBoundedQuantity is resource.ParseQuantity behind checkQuantityText: text outside
// the grammar gets ParseQuantity's own error, without ParseQuantity.
func parseBoundedQuantity(s string) (resource.Quantity, error) {
	switch reason := checkQuantityText(s); reason {
	case "":
		return resource.ParseQuantity(s)
	case reasonQuantitySyntax:
		return resource.Quantity{}, resource.ErrFormatWrong
	default:
		return resource.Quantity{}, errors.New(reason)
	}
}

// quantityAboveMax reports, without arithmetic the value controls, whether a quantity the
// pod itself carries (decoded by ParseQuantity: scale at most 9) is above maxQuantity,
// and so above every quantity podmeta sets. Comparing it with Cmp, or formatting it,
// could cost as much as the exponent says: "1e2147483647", which the apiserver decodes
// and sends on as "10e2147483646", is compared as a number of 2×10⁹ digits.
func quantityAboveMax(q *resource.Quantity) bool {
	c := *q // AsDec caches its result in the receiver; the pod's own is left as it is
	d := c.AsDec()
	u, scale := d.UnscaledBig(), d.Scale()
	if u.Sign() == 0 {
		return false
	}
	if scale < -40 || (scale <= 9 && u.BitLen() > 200) { // ≥ 10^40, or ≥ 2^199 / 10^9
		return true
	}
	return false
}

// cmpPodQuantity is have.Cmp(want) for a quantity of the pod's (have) and one of
// podmeta's (want, at most maxQuantity).
func cmpPodQuantity(have *resource.Quantity, want resource.Quantity) int {
	if quantityAboveMax(have) {
		return 1
	}
	return have.Cmp(want)
}

// podQuantityString formats a quantity of the pod's for a warning.
func podQuantityString(q *resource.Quantity) string {
	if quantityAboveMax(q) {
		return "above 8Ei"
	}
	return q.String()
}

// capWarnings keeps the first warnings that fit MaxWarnings and MaxWarningBytes, each
// clipped to MaxWarningItemBytes, and sums up the rest in one more.
func capWarnings(ws []string) []string {
	total, kept := 0, 0
	for _, w := range ws {
		w = clipWarning(w)
		if kept == MaxWarnings || total+len(w) > MaxWarningBytes {
			break
		}
		ws[kept] = w
		total += len(w)
		kept++
	}
	if kept == len(ws) {
		return ws
	}
	dropped := len(ws) - kept
	ws = append(ws[:kept:kept], fmt.Sprintf("podmeta: %d more warnings not shown", dropped))
	return ws
}

// clipWarning cuts a warning to MaxWarningItemBytes.
func clipWarning(w string) string { return clipAt(w, MaxWarningItemBytes) }

// clipAt cuts s to at most n bytes on a rune boundary, marking the cut.
func clipAt(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…(clipped)"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// nameSome lists up to maxNamedItems items, each clipped, and how many more there are.
func nameSome(items []string) string {
	var b strings.Builder
	for i, it := range items {
		if i == maxNamedItems {
			fmt.Fprintf(&b, " and %d more", len(items)-i)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(clip(it))
	}
	return b.String()
}

// PatchTooLargeError denies a pod whose JSON patch would be larger than
// Config.MaxPatchBytes.
type PatchTooLargeError struct {
	Pod        string // namespace/name, or namespace/generateName* before the name is set
	Containers int    // the pod's containers and init containers
	AtLeast    int    // the patch is at least this many bytes
	Limit      int
}

func (e *PatchTooLargeError) Error() string {
	return fmt.Sprintf("pod %s: the JSON patch podmeta would add is at least %d bytes, above the bound of %d bytes (--max-patch-bytes), "+
		"which keeps the stored pod under etcd's 1.5 MiB request limit; the likely cause is too many containers (the pod has %d) or env vars to inject into: "+
		"name fewer containers in %s, turn features off (%s: none, %s: \"false\"), or opt the pod out with %s: \"false\"",
		clip(e.Pod), e.AtLeast, e.Limit, e.Containers, AnnotationContainers, AnnotationEnv, AnnotationVolume, AnnotationInject)
}

// patchBound is the Injector's valueEncoder, which every plan carries: the fast path
// (nil without fastjson.go) with the bound the patch writer keeps.
type patchBound struct {
	fast  valueEncoder
	limit int
}

func (b *patchBound) encode(buf *bytes.Buffer, value any) bool {
	return b.fast != nil && b.fast.encode(buf, value)
}

func (b *patchBound) encodeString(buf *bytes.Buffer, s string) bool {
	return b.fast != nil && b.fast.encodeString(buf, s)
}

// tooLarge is the writer's denial; Injector.bound names the pod in it.
func (b *patchBound) tooLarge(atLeast int) error {
	return &DenyError{&PatchTooLargeError{Pod: "?", AtLeast: atLeast, Limit: b.limit}}
}

// namingPod names the pod in a PatchTooLargeError.
func namingPod(err error, pod *podView, namespace string) error {
	var tl *PatchTooLargeError
	if errors.As(err, &tl) {
		name := pod.Metadata.Name
		if name == "" {
			name = pod.Metadata.GenerateName + "*"
		}
		if namespace != "" {
			name = namespace + "/" + name
		}
		tl.Pod = name
		tl.Containers = len(pod.Spec.Containers) + len(pod.Spec.InitContainers)
	}
	return err
}

// renderExpansion bounds how much larger a plan's patch is than its minPatchBytes: every
// string is counted there at its length, and JSON writes a byte as at most 6 (\u0001);
// the JSON around the strings is counted at least at a third of its size.
const renderExpansion = 8

// bound is the last step of every plan (the webhook's and PlanPod's alike, so both give
// the same answer): it caps the warnings, and denies a plan whose patch would be over
// Config.MaxPatchBytes. The plan's lower bound (minPatchBytes, O(additions)) decides
// alone when it is over the bound, or far under it; in between the patch is rendered,
// by the writer that stops at the bound. The webhook's own rendering afterwards keeps
// the same bound (the plan carries it in its encoder), and so cannot pass it.
// additionsBytes is the sum of the additions' minPatchBytes, which the planner kept as it
// emitted them.
func (in *Injector) bound(p *Plan, pod *podView, namespace string, additionsBytes int) error {
	p.Warnings = capWarnings(p.Warnings)
	b := in.patch
	n := additionsBytes + len("[]")
	switch {
	case n > b.limit:
		return namingPod(b.tooLarge(n), pod, namespace)
	case n*renderExpansion <= b.limit:
		return nil
	}
	var buf bytes.Buffer
	return namingPod(p.writePatchJSON(&buf, b), pod, namespace)
}

// minPatchBytes is a lower bound of the plan's patch size (what the planner keeps as
// it emits additions, plus the brackets).
func (p *Plan) minPatchBytes() int {
	n := len("[]")
	for _, a := range p.additions {
		n += a.minPatchBytes()
	}
	return n
}

// maxPatchBytes is MaxPatchBytes, or its default.
func (c *Config) maxPatchBytes() int {
	if c.MaxPatchBytes > 0 {
		return c.MaxPatchBytes
	}
	return DefaultMaxPatchBytes
}
