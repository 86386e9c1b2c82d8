package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v3"
)

// The offline tools edit a manifest as a yaml.v3 node tree, not as decoded maps: the
// tree keeps comments, key order and scalar styles, so a document podmeta changes keeps
// everything its author wrote. JSON documents are read into the same tree (JSON is
// YAML) and written back as JSON.

// parseNode parses one document. It returns nil for a document of only comments.
func parseNode(raw []byte) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, nil
	}
	return &doc, nil
}

// root is a document's top node.
func root(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		return n.Content[0]
	}
	return n
}

func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// nodeJSON renders a node as JSON, keys in their order.
func nodeJSON(n *yaml.Node) ([]byte, error) {
	var buf bytes.Buffer
	err := writeJSON(&buf, root(n))
	return buf.Bytes(), err
}

func writeJSON(buf *bytes.Buffer, n *yaml.Node) error {
	n = resolve(n)
	switch n.Kind {
	case yaml.MappingNode:
		buf.WriteByte('{')
		for i, kv := range pairs(n) {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeJSONValue(buf, kv.key) //nolint:errcheck // a string
			buf.WriteByte(':')
			if err := writeJSON(buf, kv.value); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	case yaml.SequenceNode:
		buf.WriteByte('[')
		for i, c := range n.Content {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := writeJSON(buf, c); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case yaml.ScalarNode:
		if n.ShortTag() == "!!timestamp" {
			return writeJSONValue(buf, n.Value) // a string, as Kubernetes' YAML reads it
		}
		var v any
		if err := n.Decode(&v); err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		if err := writeJSONValue(buf, v); err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
	default:
		buf.WriteString("null")
	}
	return nil
}

// writeJSONValue writes v as JSON without escaping <, > and & (a command's "a && b"
// stays as written).
func writeJSONValue(buf *bytes.Buffer, v any) error {
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	buf.Truncate(buf.Len() - 1) // Encode's newline
	return nil
}

// pair is a key of a mapping and its value.
type pair struct {
	key   string
	value *yaml.Node
}

// isMerge reports whether a mapping key is YAML's merge key (<<: *anchor).
func isMerge(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" && k.ShortTag() == "!!merge"
}

// pairs are a mapping's keys and values as YAML means them: the keys of merged mappings
// (<<: *anchor, or a list of them, earlier ones first) where the merge key is, unless the
// mapping has the key itself.
func pairs(m *yaml.Node) []pair {
	m = resolve(m)
	own := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if !isMerge(m.Content[i]) {
			own[m.Content[i].Value] = true
		}
	}
	var out []pair
	seen := map[string]bool{}
	add := func(k string, v *yaml.Node) {
		if !seen[k] {
			seen[k] = true
			out = append(out, pair{k, v})
		}
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if !isMerge(k) {
			add(k.Value, v)
			continue
		}
		merged := []*yaml.Node{resolve(v)}
		if r := resolve(v); r.Kind == yaml.SequenceNode {
			merged = r.Content
		}
		for _, mm := range merged {
			if mm = resolve(mm); mm == nil || mm.Kind != yaml.MappingNode {
				continue
			}
			for _, kv := range pairs(mm) {
				if !own[kv.key] {
					add(kv.key, kv.value)
				}
			}
		}
	}
	return out
}

// field returns a mapping's value for key, or nil, as YAML means it (merge keys and
// aliases followed).
func field(m *yaml.Node, key string) *yaml.Node {
	m = resolve(m)
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key && !isMerge(m.Content[i]) {
			return resolve(m.Content[i+1])
		}
	}
	for _, kv := range pairs(m) {
		if kv.key == key {
			return resolve(kv.value)
		}
	}
	return nil
}

// shared reports whether a node, or anything in it, is shared with other places of the
// document through YAML anchors, aliases or merge keys: editing it there would edit them
// too, so podmeta does not.
func shared(n *yaml.Node) bool {
	if n == nil {
		return false
	}
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		return true
	}
	for i, c := range n.Content {
		if shared(c) || (n.Kind == yaml.MappingNode && i%2 == 0 && isMerge(c)) {
			return true
		}
	}
	return false
}

// str is a mapping's string value for key, or "".
func str(m *yaml.Node, key string) string {
	if v := field(m, key); v != nil && v.Kind == yaml.ScalarNode {
		return v.Value
	}
	return ""
}

// deleteField removes key from a mapping; it reports whether it was there.
func deleteField(m *yaml.Node, key string) bool {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content = append(m.Content[:i], m.Content[i+2:]...)
			return true
		}
	}
	return false
}

// pointerTokens splits a JSON pointer (RFC 6901).
func pointerTokens(p string) []string {
	if p == "" {
		return nil
	}
	toks := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, t := range toks {
		toks[i] = strings.NewReplacer("~1", "/", "~0", "~").Replace(t)
	}
	return toks
}

// at returns the node at a JSON pointer, or nil.
func at(n *yaml.Node, pointer string) *yaml.Node {
	n = resolve(root(n))
	for _, tok := range pointerTokens(pointer) {
		switch n.Kind {
		case yaml.MappingNode:
			n = field(n, tok)
		case yaml.SequenceNode:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(n.Content) {
				return nil
			}
			n = resolve(n.Content[i])
		default:
			return nil
		}
		if n == nil {
			return nil
		}
	}
	return n
}

// valueNode renders v (anything encoding/json marshals) as a block-style node: the
// styles a person would write, so added lines look like the lines around them.
func valueNode(v any) (*yaml.Node, error) {
	js, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(js, &doc); err != nil {
		return nil, err
	}
	n := doc.Content[0]
	var block func(*yaml.Node)
	block = func(n *yaml.Node) {
		n.Style = 0 // plain scalars (the encoder quotes what would read as another type), block collections
		n.Line, n.Column = 0, 0
		for _, c := range n.Content {
			block(c)
		}
	}
	block(n)
	return n, nil
}

// addAt performs a JSON-patch "add" of value at pointer: a mapping key is set (replaced
// when present, appended after the others otherwise), a sequence index inserts before,
// "-" appends. A missing mapping on the way is created, as for a pod template without
// metadata.
func addAt(doc *yaml.Node, pointer string, value *yaml.Node) error {
	toks := pointerTokens(pointer)
	if len(toks) == 0 {
		return errors.New("add at the document root")
	}
	n := resolve(root(doc))
	for _, tok := range toks[:len(toks)-1] {
		switch n.Kind {
		case yaml.MappingNode:
			next := field(n, tok)
			if next == nil || (next.Kind == yaml.ScalarNode && next.Tag == "!!null") {
				next = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
				setField(n, tok, next)
			}
			n = next
		case yaml.SequenceNode:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(n.Content) {
				return fmt.Errorf("%s: no element %s", pointer, tok)
			}
			n = resolve(n.Content[i])
		default:
			return fmt.Errorf("%s: %s is not an object or a list", pointer, tok)
		}
	}
	last := toks[len(toks)-1]
	switch n.Kind {
	case yaml.MappingNode:
		setField(n, last, value)
	case yaml.SequenceNode:
		if last == "-" {
			n.Content = append(n.Content, value)
			return nil
		}
		i, err := strconv.Atoi(last)
		if err != nil || i < 0 || i > len(n.Content) {
			return fmt.Errorf("%s: no index %s", pointer, last)
		}
		n.Content = append(n.Content[:i], append([]*yaml.Node{value}, n.Content[i:]...)...)
	default:
		return fmt.Errorf("%s: parent is not an object or a list", pointer)
	}
	return nil
}

func setField(m *yaml.Node, key string, value *yaml.Node) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content[i+1] = value
			return
		}
	}
	if m.Style&yaml.FlowStyle != 0 && value.Kind != yaml.ScalarNode {
		flow(value) // block content inside a flow mapping cannot be written
	}
	m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, value)
}

func flow(n *yaml.Node) {
	if n.Kind != yaml.ScalarNode {
		n.Style = yaml.FlowStyle
	}
	for _, c := range n.Content {
		flow(c)
	}
}

// layout is how a YAML document is indented, so that a changed one is written back the
// way it was written: kubectl's style (two spaces, "- " at its key's column) unless the
// document shows another.
type layout struct {
	indent  int
	compact bool // "- " at its parent key's column
}

func detectLayout(raw []byte) layout {
	l := layout{indent: 2, compact: true}
	lines := strings.Split(string(raw), "\n")
	indentOf := func(s string) int { return len(s) - len(strings.TrimLeft(s, " ")) }
	foundIndent, foundSeq := false, false
	for i := 0; i+1 < len(lines) && (!foundIndent || !foundSeq); i++ {
		line := strings.TrimRight(lines[i], " ")
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "#") || !strings.HasSuffix(t, ":") || strings.HasPrefix(t, "- ") {
			continue
		}
		next := lines[i+1]
		nt := strings.TrimSpace(next)
		if nt == "" || strings.HasPrefix(nt, "#") {
			continue
		}
		d := indentOf(next) - indentOf(line)
		if strings.HasPrefix(nt, "- ") || nt == "-" {
			if !foundSeq {
				l.compact, foundSeq = d == 0, true
				if d > 0 && !foundIndent {
					l.indent, foundIndent = d, true
				}
			}
			continue
		}
		if d > 0 && !foundIndent {
			l.indent, foundIndent = d, true
		}
	}
	return l
}

// encodeYAML writes a document in the layout it was read with, then puts back the blank
// lines the encoder drops (restoreBlankLines).
func encodeYAML(doc *yaml.Node, raw []byte) ([]byte, error) {
	l := detectLayout(raw)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(l.indent)
	if l.compact {
		enc.CompactSeqIndent()
	}
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	out := buf.Bytes()
	if restored := restoreBlankLines(raw, out); restored != nil {
		return restored, nil
	}
	return out, nil
}

// restoreBlankLines puts back into the encoder's output what the encoder normalizes away
// from lines it kept: the input's blank lines, and the spacing before line comments. A
// line diff of input against output aligns the two; each kept line is written as the
// input had it, each blank input line the output lacks is put back. It returns nil when
// that would change what out means (a blank line landing inside a block scalar).
func restoreBlankLines(raw, out []byte) []byte {
	in := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	got := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	var res, blanks []string
	for _, e := range diffLines(in, got) {
		switch {
		case e.a >= 0 && e.b >= 0:
			// Blank lines go after what was added where they were: podmeta appends to
			// the end of a mapping or list, which a blank line follows.
			res = append(append(res, blanks...), in[e.a]) // as written, comment spacing included
			blanks = blanks[:0]
		case e.b >= 0:
			res = append(res, got[e.b])
		case strings.TrimSpace(in[e.a]) == "":
			blanks = append(blanks, in[e.a])
		}
	}
	res = append(res, blanks...)
	text := []byte(strings.Join(res, "\n") + "\n")
	if string(text) == string(out) {
		return nil
	}
	a, errA := parseNode(text)
	b, errB := parseNode(out)
	if errA != nil || errB != nil || a == nil || b == nil {
		return nil
	}
	ja, errA := nodeJSON(a)
	jb, errB := nodeJSON(b)
	if errA != nil || errB != nil || !bytes.Equal(ja, jb) {
		return nil
	}
	return text
}

// edit is one step of a line diff: a line of both (a and b set), only of a (b -1) or
// only of b (a -1).
type edit struct{ a, b int }

// diffLines is a shortest line diff of a and b (Myers), lines compared by commentKey.
// Its work is O((len(a)+len(b))·D) for D differing lines: small for inject and uninject,
// which only add or only remove lines.
func diffLines(a, b []string) []edit {
	ka := make([]string, len(a))
	for i := range a {
		ka[i] = commentKey(a[i])
	}
	kb := make([]string, len(b))
	for i := range b {
		kb[i] = commentKey(b[i])
	}
	n, m := len(a), len(b)
	max := n + m
	off := max + 1
	v := make([]int, 2*max+3)
	var trace [][]int
	found := false
	for d := 0; d <= max && !found; d++ {
		// Keep only the diagonals this step can reach.
		snapshot := make([]int, 2*d+3)
		copy(snapshot, v[off-d-1:off+d+2])
		trace = append(trace, snapshot)
		for k := -d; k <= d; k += 2 {
			var x int
			if k == -d || (k != d && v[off+k-1] < v[off+k+1]) {
				x = v[off+k+1]
			} else {
				x = v[off+k-1] + 1
			}
			y := x - k
			for x < n && y < m && ka[x] == kb[y] {
				x, y = x+1, y+1
			}
			v[off+k] = x
			if x >= n && y >= m {
				found = true
				break
			}
		}
	}
	// Walk back through the snapshots (each taken before its step ran).
	var rev []edit
	x, y := n, m
	for d := len(trace) - 1; d >= 0; d-- {
		snap := trace[d] // v before step d: index k maps to snap[k+d+1]
		get := func(k int) int { return snap[k+d+1] }
		k := x - y
		var prevK int
		switch {
		case d == 0:
			prevK = 0
		case k == -d || (k != d && get(k-1) < get(k+1)):
			prevK = k + 1
		default:
			prevK = k - 1
		}
		prevX := 0
		if d > 0 {
			prevX = get(prevK)
		}
		prevY := prevX - prevK
		for x > prevX && y > prevY {
			x, y = x-1, y-1
			rev = append(rev, edit{x, y})
		}
		if d > 0 {
			if x == prevX {
				y--
				rev = append(rev, edit{-1, y})
			} else {
				x--
				rev = append(rev, edit{x, -1})
			}
		}
	}
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	return rev
}

// encodeJSON writes a document as JSON indented as the input was (kubectl's four spaces
// unless it shows another).
func encodeJSON(doc *yaml.Node, raw []byte) ([]byte, error) {
	js, err := nodeJSON(doc)
	if err != nil {
		return nil, err
	}
	indent := "    "
	trimmed := bytes.TrimLeft(raw[len(leadingComments(raw)):], " \t\r\n")
	if len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[') {
		rest := trimmed[1:]
		if nl := bytes.IndexByte(rest, '\n'); nl >= 0 {
			line := rest[nl+1:]
			ws := len(line) - len(bytes.TrimLeft(line, " \t"))
			switch {
			case ws > 0:
				indent = string(line[:ws])
			case nl >= 0 && len(bytes.TrimSpace(rest[:nl])) > 0:
				indent = "" // all on one line
			}
		} else {
			indent = ""
		}
	}
	var buf bytes.Buffer
	buf.Write(leadingComments(raw)) // a JSON value among YAML documents may follow comments
	if indent == "" {
		buf.Write(js)
	} else if err := json.Indent(&buf, js, "", indent); err != nil {
		return nil, err
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

// commentKey is a line with the spaces before a line comment (" #") made one.
func commentKey(line string) string {
	i := strings.Index(line, " #")
	if i < 0 {
		return line
	}
	return strings.TrimRight(line[:i], " ") + line[i:]
}
