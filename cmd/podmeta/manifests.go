package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	jsonpatch "github.com/evanphx/json-patch/v5"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/webhook"
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

// offlineOptions are the flags inject and explain share.
type offlineOptions struct {
	file          string
	nsAnnotations map[string]string
	cfg           webhook.Config
}

func parseOffline(name string, args []string, s streams) (*offlineOptions, *webhook.Injector, error) {
	o := &offlineOptions{cfg: webhook.DefaultConfig()}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(s.err)
	fs.StringVar(&o.file, "f", "", "manifest file (multi-document YAML); - reads standard input")
	fs.Func("namespace-annotations", "k=v,… namespace annotations to simulate (namespace-wide podmeta defaults)", func(v string) error {
		o.nsAnnotations = map[string]string{}
		for item := range strings.SplitSeq(v, ",") {
			k, val, ok := strings.Cut(strings.TrimSpace(item), "=")
			if !ok {
				return fmt.Errorf("%q: want key=value", item)
			}
			o.nsAnnotations[k] = val
		}
		return nil
	})
	o.cfg.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	if o.file == "" || fs.NArg() > 0 {
		return nil, nil, errors.New("usage: podmeta " + name + " -f FILE [flags]; see -h")
	}
	// Offline there is no apiserver to ask; "auto" assumes a current cluster (>= 1.29).
	in, err := webhook.NewInjector(o.cfg, o.cfg.UseNativeSidecar(true))
	if err != nil {
		return nil, nil, fmt.Errorf("invalid configuration: %w", err)
	}
	return o, in, nil
}

// document is one YAML document of a manifest and, for the kinds that carry a pod, its plan.
type document struct {
	raw      []byte // as read, written back unchanged when nothing is injected
	json     []byte
	kind     string
	name     string
	template string // JSON pointer of the pod template
	plan     *webhook.Plan
}

func (d *document) String() string { return d.kind + "/" + d.name }

// planManifests reads every document of o.file and plans those that carry a pod. Denials
// are collected, so one run reports every invalid document.
func planManifests(in *webhook.Injector, o *offlineOptions, stdin io.Reader) ([]*document, error) {
	r := stdin
	if o.file != "-" {
		f, err := os.Open(o.file)
		if err != nil {
			return nil, err
		}
		defer f.Close() //nolint:errcheck // read-only
		r = f
	}
	var docs []*document
	var denials []error
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	for n := 1; ; n++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", o.file, n, err)
		}
		d, err := planDocument(in, o, raw)
		if err != nil {
			if webhook.IsDenied(err) {
				denials = append(denials, fmt.Errorf("%s: %w", d, err))
				continue
			}
			return nil, fmt.Errorf("%s: document %d: %w", o.file, n, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
	return docs, errors.Join(denials...)
}

func planDocument(in *webhook.Injector, o *offlineOptions, raw []byte) (*document, error) {
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, err
	}
	d := &document{raw: raw, json: js}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return nil, nil // only comments or blank
	}
	var head struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(js, &head); err != nil {
		return nil, err
	}
	d.kind, d.name = head.Kind, head.Metadata.Name
	path, ok := templatePaths[head.Kind]
	if !ok {
		return d, nil
	}
	d.template = path
	template, err := lookup(js, path)
	if err != nil {
		return d, err
	}
	d.plan, err = in.PlanPod(template, head.Metadata.Namespace, o.nsAnnotations)
	return d, err
}

// lookup returns the JSON value at a pointer made of object keys.
func lookup(js []byte, pointer string) ([]byte, error) {
	for key := range strings.SplitSeq(strings.TrimPrefix(pointer, "/"), "/") {
		if key == "" {
			break
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(js, &obj); err != nil {
			return nil, fmt.Errorf("%s: %w", pointer, err)
		}
		if js = obj[key]; js == nil {
			return nil, fmt.Errorf("no %s", pointer)
		}
	}
	return js, nil
}

// mutated applies the plan's patch, under the template's pointer, to the whole document:
// the same operations the webhook sends, applied by the library the apiserver uses.
func (d *document) mutated() ([]byte, error) {
	ops := d.plan.Patch()
	for i := range ops {
		ops[i].Path = d.template + ops[i].Path
	}
	opsJSON, err := json.Marshal(ops)
	if err != nil {
		return nil, err
	}
	patch, err := jsonpatch.DecodePatch(opsJSON)
	if err != nil {
		return nil, err
	}
	out, err := patch.Apply(d.json)
	if err != nil {
		return nil, fmt.Errorf("%s: apply: %w", d, err)
	}
	return yaml.JSONToYAML(out)
}

func runInject(_ context.Context, args []string, s streams) error {
	o, in, err := parseOffline("inject", args, s)
	if err != nil {
		return err
	}
	docs, err := planManifests(in, o, s.in)
	if err != nil {
		return err // nothing is written: half a manifest is worse than none
	}
	var out bytes.Buffer
	for i, d := range docs {
		if i > 0 {
			out.WriteString("---\n")
		}
		if d.plan == nil || d.plan.Empty() {
			out.Write(bytes.TrimRight(d.raw, "\n"))
			out.WriteByte('\n')
			continue
		}
		for _, w := range d.plan.Warnings {
			fmt.Fprintf(s.err, "%s: %s\n", d, w)
		}
		y, err := d.mutated()
		if err != nil {
			return err
		}
		out.Write(y)
	}
	_, err = s.out.Write(out.Bytes())
	return err
}

func runExplain(_ context.Context, args []string, s streams) error {
	o, in, err := parseOffline("explain", args, s)
	if err != nil {
		return err
	}
	docs, err := planManifests(in, o, s.in)
	if err != nil {
		return err
	}
	for _, d := range docs {
		if d.plan == nil {
			continue
		}
		fmt.Fprintf(s.out, "%s\n", d)
		tw := tabwriter.NewWriter(s.out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  WHAT\tWHERE\tRESULT")
		explain(tw, d.plan)
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(s.out)
	}
	return nil
}

// explain writes one row per injected thing, then what was skipped and why.
func explain(w io.Writer, p *webhook.Plan) {
	row := func(what, where, result string) { fmt.Fprintf(w, "  %s\t%s\t%s\n", what, where, result) }
	if p.Skipped != "" {
		row("nothing", "pod", "skipped: "+p.Skipped)
		return
	}
	st := p.Status
	for _, c := range sortedKeys(st.Env) {
		row("env", c, "added "+strings.Join(st.Env[c], ", "))
	}
	if st.Volume != "" {
		row("volume", "pod", "added "+webhook.VolumeName+" (downwardAPI)")
	}
	for _, c := range st.Mounts {
		row("mount", c, "mounted "+webhook.VolumeName+" read-only at "+st.Volume)
	}
	for _, c := range sortedKeys(st.EphemeralStorage) {
		var parts []string
		for _, k := range sortedKeys(st.EphemeralStorage[c]) {
			parts = append(parts, k+" "+st.EphemeralStorage[c][k])
		}
		row("ephemeral-storage", c, "set "+strings.Join(parts, ", "))
	}
	if st.Ambassador != "" {
		row("ambassador", webhook.AmbassadorContainerName, "added as "+st.Ambassador)
	}
	for _, n := range p.Notes {
		row("unchanged", "-", n)
	}
	for _, warn := range p.Warnings {
		row("warning", "-", strings.TrimPrefix(warn, "podmeta: "))
	}
	if p.Empty() {
		row("nothing", "pod", "already has everything podmeta would add")
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
