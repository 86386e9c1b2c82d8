// Package golden reads the engine's golden inputs, webhook/testdata/NAME.yaml: an
// optional "# config: FLAGS" line of operator flags, an optional Namespace, and a Pod.
// The engine's goldens, policy mode's differential tests and the apiserver tests read
// the same files through it.
package golden

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Input is one golden input.
type Input struct {
	Flags     []string          // operator flags from the "# config:" line
	Namespace *corev1.Namespace // nil when the file has none
	Pod       []byte            // the Pod as JSON, as written
}

// Read reads the golden input at path.
func Read(path string) (Input, error) {
	var in Input
	b, err := os.ReadFile(path)
	if err != nil {
		return in, err
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return in, fmt.Errorf("%s: %w", path, err)
		}
		if flags, ok := strings.CutPrefix(string(bytes.TrimSpace(doc)), "# config:"); ok {
			line, _, _ := strings.Cut(flags, "\n")
			in.Flags = strings.Fields(line)
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return in, fmt.Errorf("%s: %w", path, err)
		}
		var kind struct {
			Kind string `json:"kind"`
		}
		if err := json.Unmarshal(js, &kind); err != nil {
			return in, fmt.Errorf("%s: %w", path, err)
		}
		switch kind.Kind {
		case "Namespace":
			in.Namespace = &corev1.Namespace{}
			if err := json.Unmarshal(js, in.Namespace); err != nil {
				return in, fmt.Errorf("%s: %w", path, err)
			}
		case "Pod":
			in.Pod = js
		case "":
			// a document of comments only
		default:
			return in, fmt.Errorf("%s: unexpected kind %q", path, kind.Kind)
		}
	}
	if in.Pod == nil {
		return in, fmt.Errorf("%s: no Pod", path)
	}
	return in, nil
}

// TypedPod decodes Pod.
func (in Input) TypedPod() (*corev1.Pod, error) {
	var p corev1.Pod
	err := json.Unmarshal(in.Pod, &p)
	return &p, err
}

// Inputs lists the golden inputs in dir (NAME.yaml beside NAME.golden.yaml), sorted.
func Inputs(dir string) ([]string, error) {
	all, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	var inputs []string
	for _, p := range all {
		if !strings.HasSuffix(p, ".golden.yaml") {
			inputs = append(inputs, p)
		}
	}
	if len(inputs) == 0 {
		return nil, fmt.Errorf("no golden inputs in %s", dir)
	}
	return inputs, nil
}
