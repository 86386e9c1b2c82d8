package policy

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// lit is a CEL string literal of s.
func lit(s string) string { return strconv.Quote(s) }

// litList is a CEL list literal of strings.
func litList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = lit(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// intList is a CEL list literal of ints.
func intList(is []int) string {
	q := make([]string, len(is))
	for i, n := range is {
		q[i] = strconv.Itoa(n)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// template turns an object the engine builds into a CEL literal of plain maps and lists,
// the values the apiserver's JSONPatch mutations take: the engine builds it with
// sentinel values where the pod decides (a container's name, the mount path, the
// ambassador's port), and holes maps each sentinel to the CEL expression that replaces
// it, inside strings or as a whole integer.
//
// Maps, not the typed Object.spec.containers{…} values: the apiserver converts a typed
// value to JSON by converting each nested object again at every level above it (and
// type-checks it the same way), so a nested literal such as the ambassador container
// costs it milliseconds per pod; a map of the same JSON costs microseconds. Each map
// value is wrapped in dyn(), as the apiserver's CEL wants literals of one type.
type template struct {
	holes map[string]string // sentinel text → CEL string expression
	ints  map[int64]string  // sentinel integer → CEL int expression
}

// literal renders v (any value encoding/json marshals) as a CEL value of maps and lists.
func (tp template) literal(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only the engine's own objects are rendered
	}
	var x any
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.UseNumber()
	if err := d.Decode(&x); err != nil {
		panic(err)
	}
	return tp.value(x)
}

func (tp template) value(x any) string {
	switch x := x.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, 0, len(keys))
		for _, k := range keys {
			parts = append(parts, lit(k)+": dyn("+tp.value(x[k])+")")
		}
		return "{" + strings.Join(parts, ", ") + "}"
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = tp.value(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case string:
		return tp.str(x)
	case json.Number:
		n, err := x.Int64()
		if err != nil {
			panic(fmt.Sprintf("non-integer %s in an engine object", x))
		}
		if e, ok := tp.ints[n]; ok {
			return e
		}
		return x.String()
	case bool:
		return strconv.FormatBool(x)
	case nil:
		return "null"
	}
	panic(fmt.Sprintf("unexpected %T", x))
}

// str renders s, with every sentinel in it replaced by its expression.
func (tp template) str(s string) string {
	var parts []string
	for s != "" {
		at, hole := -1, ""
		for h := range tp.holes {
			if i := strings.Index(s, h); i >= 0 && (at < 0 || i < at) {
				at, hole = i, h
			}
		}
		if at < 0 {
			parts = append(parts, lit(s))
			break
		}
		if at > 0 {
			parts = append(parts, lit(s[:at]))
		}
		parts = append(parts, "("+tp.holes[hole]+")")
		s = s[at+len(hole):]
	}
	if len(parts) == 0 {
		return `""`
	}
	return strings.Join(parts, " + ")
}

// unbind rewrites every cel.bind(name, value, expr) in a CEL expression into
// [value].map(name, expr)[0]: the apiserver's environment has no cel.bind (the
// bindings extension), and a one-element map binds the same name to the same value.
func unbind(s string) string {
	const call = "cel.bind("
	var b strings.Builder
	for {
		i := indexOutsideStrings(s, call)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		args, end := splitArgs(s[i+len(call):])
		if len(args) != 3 {
			panic("policy: cel.bind with " + strconv.Itoa(len(args)) + " arguments")
		}
		b.WriteString("[" + unbind(args[1]) + "].map(" + strings.TrimSpace(args[0]) + ", " + unbind(args[2]) + ")[0]")
		s = s[i+len(call)+end:]
	}
}

// outsideStrings calls f with each index of s outside CEL string literals, in order,
// until f returns false.
func outsideStrings(s string, f func(i int) bool) {
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == '\\':
			i++
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
		case c == '\'' || c == '"':
			quote = c
		default:
			if !f(i) {
				return
			}
		}
	}
}

// indexOutsideStrings is strings.Index of sub in s, outside CEL string literals.
func indexOutsideStrings(s, sub string) int {
	at := -1
	outsideStrings(s, func(i int) bool {
		if strings.HasPrefix(s[i:], sub) {
			at = i
		}
		return at < 0
	})
	return at
}

// splitArgs splits the arguments of a call whose "(" was just before s, returning them
// and the offset just past the closing ")".
func splitArgs(s string) ([]string, int) {
	var args []string
	depth, start, end := 0, 0, -1
	outsideStrings(s, func(i int) bool {
		switch c := s[i]; {
		case c == '(' || c == '[' || c == '{':
			depth++
		case (c == ')' || c == ']' || c == '}') && depth > 0:
			depth--
		case c == ')':
			args, end = append(args, s[start:i]), i+1
			return false
		case c == ',' && depth == 0:
			args = append(args, s[start:i])
			start = i + 1
		}
		return true
	})
	if end < 0 {
		panic("policy: unbalanced cel.bind")
	}
	return args, end
}
