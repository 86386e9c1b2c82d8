package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v3"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// templatePaths maps a kind to the JSON pointer of its pod template ("" for a Pod).
var templatePaths = map[string]string{
	"Pod":         "",
	"Deployment":  "/spec/template",
	"StatefulSet": "/spec/template",
	"DaemonSet":   "/spec/template",
	"ReplicaSet":  "/spec/template",
	"Job":         "/spec/template",
	"CronJob":     "/spec/jobTemplate/spec/template",
}

// document is one document of the input as read: a YAML document of a stream, or one
// JSON value. Documents nothing changes are written back as read.
type document struct {
	source string // file name, or "-" for standard input
	index  int    // 1-based, within source
	raw    []byte
	json   bool       // written back as JSON
	crlf   bool       // its stream's lines end in CRLF
	node   *yaml.Node // nil: only comments or blank
	// objects are the pod-carrying objects in the document: itself, or the items of a
	// List (at any nesting).
	objects []*object
}

// object is a pod-carrying object of a document.
type object struct {
	pointer   string // JSON pointer of the object in its document
	kind      string
	name      string
	namespace string
	template  string // JSON pointer of its pod template, within the document
	node      *yaml.Node
}

// String names the object as kubectl does: deployment/web.
func (o *object) String() string { return strings.ToLower(o.kind) + "/" + o.name }

func (d *document) String() string {
	if d.source == "-" {
		return "stdin document " + strconv.Itoa(d.index)
	}
	return d.source + ": document " + strconv.Itoa(d.index)
}

// readInputs reads every document of the named files ("-": standard input), directories
// (their .yaml, .yml and .json files; with recursive, their subdirectories' too).
func readInputs(files []string, recursive bool, stdin io.Reader) ([]*document, error) {
	var docs []*document
	for _, f := range files {
		if f == "-" {
			ds, err := readDocuments("-", stdin)
			if err != nil {
				return nil, err
			}
			docs = append(docs, ds...)
			continue
		}
		paths, err := expand(f, recursive)
		if err != nil {
			return nil, err
		}
		for _, p := range paths {
			file, err := os.Open(p)
			if err != nil {
				return nil, err
			}
			ds, err := readDocuments(p, file)
			file.Close() //nolint:errcheck // read-only
			if err != nil {
				return nil, err
			}
			docs = append(docs, ds...)
		}
	}
	return docs, nil
}

// expand lists a path's manifest files, in lexical order, as kubectl -f does.
func expand(path string, recursive bool) ([]string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !info.IsDir() {
		return []string{path}, nil
	}
	var out []string
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != path && !recursive {
				return filepath.SkipDir
			}
			return nil
		}
		switch filepath.Ext(p) {
		case ".yaml", ".yml", ".json":
			out = append(out, p)
		}
		return nil
	})
	if err == nil && len(out) == 0 {
		err = fmt.Errorf("%s: no .yaml, .yml or .json files", path)
	}
	return out, err
}

// readDocuments splits a stream into documents: a JSON stream (it starts with { or [)
// into its values, YAML at its --- separators.
func readDocuments(source string, r io.Reader) ([]*document, error) {
	all, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	// Lines are read as LF; a stream written with CRLF gets CRLF back (writeDocuments).
	crlf := bytes.Contains(all, []byte("\r\n"))
	docs, err := splitDocuments(source, bytes.NewReader(all))
	for _, d := range docs {
		d.crlf = crlf
	}
	return docs, err
}

func splitDocuments(source string, r io.Reader) ([]*document, error) {
	br := bufio.NewReader(r)
	var docs []*document
	if isJSON(br) {
		dec := json.NewDecoder(br)
		for n := 1; ; n++ {
			var raw json.RawMessage
			if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return nil, fmt.Errorf("%s: JSON value %d: %w", source, n, err)
			}
			d, err := newDocument(source, n, raw, true)
			if err != nil {
				return nil, err
			}
			docs = append(docs, d)
		}
		return docs, nil
	}
	reader := utilyaml.NewYAMLReader(br)
	for n := 1; ; n++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, n, err)
		}
		d, err := newDocument(source, n, raw, false)
		if err != nil {
			return nil, err
		}
		docs = append(docs, d)
	}
	return docs, nil
}

func isJSON(br *bufio.Reader) bool {
	for i := 1; ; i++ {
		b, err := br.Peek(i)
		if err != nil || len(b) < i {
			return false
		}
		switch b[i-1] {
		case ' ', '\t', '\r', '\n':
			continue
		case '{', '[':
			return true
		default:
			return false
		}
	}
}

func newDocument(source string, n int, raw []byte, isJSON bool) (*document, error) {
	d := &document{source: source, index: n, raw: raw, json: isJSON}
	node, err := parseNode(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d, err)
	}
	d.node = node
	if node != nil && !isJSON {
		// A JSON value among YAML documents (or after a comment) is written back as JSON.
		r := root(node)
		d.json = r.Kind == yaml.MappingNode && r.Style&yaml.FlowStyle != 0 && bytes.HasPrefix(bytes.TrimSpace(jsonPrefixFree(raw)), []byte("{"))
	}
	if node != nil {
		d.collect(root(node), "")
	}
	return d, nil
}

// collect finds the pod-carrying objects of a document: the object itself, or each item
// of a List or any *List kind (kubectl get -o yaml prints a List; a PodList is what the
// API returns), lists within lists included.
func (d *document) collect(n *yaml.Node, pointer string) {
	n = resolve(n)
	if n != nil && n.Kind == yaml.SequenceNode && pointer == "" {
		for i, item := range n.Content { // a JSON array of objects
			d.collect(item, "/"+strconv.Itoa(i))
		}
		return
	}
	if n == nil || n.Kind != yaml.MappingNode {
		return
	}
	kind := str(n, "kind")
	if items := field(n, "items"); strings.HasSuffix(kind, "List") && items != nil && items.Kind == yaml.SequenceNode {
		for i, item := range items.Content {
			d.collect(item, pointer+"/items/"+strconv.Itoa(i))
		}
		return
	}
	path, ok := templatePaths[kind]
	if !ok {
		return
	}
	meta := field(n, "metadata")
	name := str(meta, "name")
	if name == "" {
		name = str(meta, "generateName") // a pod a controller creates, before the apiserver names it
	}
	d.objects = append(d.objects, &object{
		pointer:   pointer,
		kind:      kind,
		name:      name,
		namespace: str(meta, "namespace"),
		template:  pointer + path,
		node:      n,
	})
}

// encode renders a changed document in its input's format.
func (d *document) encode() ([]byte, error) {
	if d.json {
		return encodeJSON(d.node, d.raw)
	}
	return encodeYAML(d.node, d.raw)
}

// writeDocuments writes documents as a stream: JSON values one after another when all
// are JSON, otherwise YAML documents separated by ---. A document in encoded is written
// as encoded there; any other as it was read (unchanged).
func writeDocuments(w io.Writer, docs []*document, encoded map[*document][]byte) error {
	allJSON := true
	for _, d := range docs {
		allJSON = allJSON && d.json
	}
	var buf bytes.Buffer
	first := true
	for _, d := range docs {
		b, ok := encoded[d]
		if !ok {
			b = unchanged(d)
		}
		if b == nil {
			continue
		}
		nl := "\n"
		if d.crlf {
			nl = "\r\n"
			b = bytes.ReplaceAll(bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
		}
		if !first && !allJSON {
			buf.WriteString("---" + nl)
		}
		first = false
		buf.Write(bytes.TrimRight(b, "\r\n"))
		buf.WriteString(nl)
	}
	_, err := w.Write(buf.Bytes())
	return err
}

// jsonPrefixFree is raw without its leading comment lines.
func jsonPrefixFree(raw []byte) []byte {
	return raw[len(leadingComments(raw)):]
}

// leadingComments is the comment and blank lines raw starts with.
func leadingComments(raw []byte) []byte {
	i := 0
	for i < len(raw) {
		end := bytes.IndexByte(raw[i:], '\n')
		if end < 0 {
			end = len(raw) - i
		} else {
			end++
		}
		line := bytes.TrimSpace(raw[i : i+end])
		if len(line) > 0 && line[0] != '#' {
			break
		}
		i += end
	}
	return raw[:i]
}
