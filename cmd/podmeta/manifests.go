package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/podmeta/podmeta/webhook"
)

// offlineOptions are the flags inject, explain and uninject share.
type offlineOptions struct {
	files         []string
	recursive     bool
	quiet         bool
	nsAnnotations map[string]string
	cfg           webhook.Config
}

func parseOffline(name string, args []string, s streams) (*offlineOptions, *webhook.Injector, error) {
	o := &offlineOptions{cfg: webhook.DefaultConfig()}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(s.err)
	fs.Usage = func() {
		fmt.Fprintf(s.err, "usage: %s %s -f FILE|DIR|- [-f …] [-R] [flags]\n\nflags:\n", programName(), name)
		fs.PrintDefaults()
	}
	fs.Func("f", "manifest file, directory (its .yaml, .yml and .json files) or - for standard input; repeatable", func(v string) error {
		o.files = append(o.files, v)
		return nil
	})
	fs.BoolVar(&o.recursive, "R", false, "with -f DIR, also read its subdirectories")
	fs.BoolVar(&o.quiet, "quiet", false, "do not print the per-document summary on standard error (warnings still are)")
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
	if len(o.files) == 0 || fs.NArg() > 0 {
		return nil, nil, errors.New("usage: " + programName() + " " + name + " -f FILE|DIR|- [-R] [flags]; see -h")
	}
	// Offline there is no apiserver to ask; "auto" assumes a current cluster (>= 1.29).
	in, err := webhook.NewInjector(o.cfg, o.cfg.UseNativeSidecar(true))
	if err != nil {
		return nil, nil, fmt.Errorf("invalid configuration: %w", namingFlags(err))
	}
	return o, in, nil
}

// planAll reads every input and plans each pod-carrying object. Denials are collected,
// so one run reports every invalid object: denied maps each denied object to its
// reason, and err is a *deniedError listing them all (other errors end the run).
func planAll(in *webhook.Injector, o *offlineOptions, stdin io.Reader) (docs []*document, plans map[*object]*webhook.Plan, denied map[*object]error, err error) {
	docs, err = readInputs(o.files, o.recursive, stdin)
	if err != nil {
		return nil, nil, nil, err
	}
	plans, denied = map[*object]*webhook.Plan{}, map[*object]error{}
	var denials []error
	for _, d := range docs {
		for _, obj := range d.objects {
			p, err := planObject(in, o, d, obj)
			if err != nil {
				if webhook.IsDenied(err) {
					denied[obj] = namingNamespaceFlag(err)
					denials = append(denials, fmt.Errorf("%s: %w", obj, denied[obj]))
					continue
				}
				return nil, nil, nil, fmt.Errorf("%s: %s: %w", d, obj, err)
			}
			plans[obj] = p
		}
	}
	if len(denials) > 0 {
		err = &deniedError{denials: denials}
	}
	return docs, plans, denied, err
}

func planObject(in *webhook.Injector, o *offlineOptions, d *document, obj *object) (*webhook.Plan, error) {
	template := at(d.node, obj.template)
	if template == nil {
		return nil, fmt.Errorf("no %s", strings.TrimPrefix(obj.template, obj.pointer))
	}
	js, err := nodeJSON(template)
	if err != nil {
		return nil, err
	}
	return in.PlanPod(js, obj.namespace, o.nsAnnotations)
}

// deniedError lists every object the webhook would deny.
type deniedError struct {
	denials   []error
	explained bool // explain wrote its tables; inject wrote nothing
}

func (e *deniedError) Error() string {
	var b strings.Builder
	if len(e.denials) == 1 {
		b.WriteString("1 object would be denied")
	} else {
		fmt.Fprintf(&b, "%d objects would be denied", len(e.denials))
	}
	if !e.explained {
		b.WriteString("; nothing written")
	}
	b.WriteByte(':')
	for _, err := range e.denials {
		b.WriteString("\n  " + strings.ReplaceAll(err.Error(), "\n", "\n    "))
	}
	return b.String()
}

// apply makes the plan's additions on the document's node tree: the operations the
// webhook would send, under the template's pointer.
func apply(d *document, obj *object, p *webhook.Plan) error {
	if tmpl := at(d.node, obj.template); shared(tmpl) {
		return fmt.Errorf("%s: its pod template uses YAML anchors, aliases or merge keys; adding to it would change the other places that use them: expand them first", obj)
	}
	for _, op := range p.Patch() {
		value, err := valueNode(op.Value)
		if err != nil {
			return err
		}
		if err := addAt(d.node, obj.template+op.Path, value); err != nil {
			return fmt.Errorf("%s: apply: %w", obj, err)
		}
	}
	return nil
}

func runInject(_ context.Context, args []string, s streams) error {
	o, in, err := parseOffline("inject", args, s)
	if err != nil {
		return err
	}
	docs, plans, _, err := planAll(in, o, s.in)
	if err != nil {
		return err // nothing is written: half a manifest is worse than none
	}
	changed := map[*document]bool{}
	for _, d := range docs {
		for _, obj := range d.objects {
			p := plans[obj]
			if !p.Empty() {
				if err := apply(d, obj, p); err != nil {
					return err
				}
				changed[d] = true
			}
			for _, w := range p.Warnings {
				fmt.Fprintf(s.err, "%s: %s\n", obj, w)
			}
			for _, w := range workloadAnnotationWarnings(obj) {
				fmt.Fprintf(s.err, "%s: %s\n", obj, w)
			}
			if !o.quiet {
				fmt.Fprintf(s.err, "%s: %s\n", obj, summary(p))
			}
		}
	}
	encoded := map[*document][]byte{}
	for d := range changed {
		if encoded[d], err = d.encode(); err != nil {
			return fmt.Errorf("%s: %w", d, err)
		}
	}
	return writeDocuments(s.out, docs, encoded)
}

// unchanged is a document as read, or nil for one that is blank.
func unchanged(d *document) []byte {
	if len(bytes.TrimSpace(d.raw)) == 0 {
		return nil
	}
	return d.raw
}

func runExplain(_ context.Context, args []string, s streams) error {
	o, in, err := parseOffline("explain", args, s)
	if err != nil {
		return err
	}
	// Every object is explained, denied ones too (why, in their table); a denial still
	// means exit status 1, after the tables.
	docs, plans, denied, err := planAll(in, o, s.in)
	var deny *deniedError
	if err != nil && !errors.As(err, &deny) {
		return err
	}
	if deny != nil {
		deny.explained = true
	}
	for _, d := range docs {
		for _, obj := range d.objects {
			fmt.Fprintf(s.out, "%s\n", obj)
			tw := tabwriter.NewWriter(s.out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "  WHAT\tWHERE\tRESULT")
			if reason, ok := denied[obj]; ok {
				for i, line := range strings.Split(reason.Error(), "\n") {
					what := "denied"
					if i > 0 {
						what = ""
					}
					fmt.Fprintf(tw, "  %s\t%s\t%s\n", what, "pod", line)
				}
			} else {
				explain(tw, plans[obj], obj, d)
			}
			for _, w := range workloadAnnotationWarnings(obj) {
				fmt.Fprintf(tw, "  %s\t%s\t%s\n", "warning", "-", w)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintln(s.out)
		}
	}
	return err
}

// explain writes one row per thing this pass adds, then what it kept or skipped and
// why, then, apart, what an earlier pass recorded in the object's podmeta.io/status.
func explain(w io.Writer, p *webhook.Plan, obj *object, d *document) {
	row := func(what, where, result string) { fmt.Fprintf(w, "  %s\t%s\t%s\n", what, where, result) }
	if p.Skipped != "" {
		row("nothing", "pod", "skipped: "+p.Skipped)
	} else {
		statusRows(row, p.Status, "added", "mounted", "set")
		for _, n := range p.Notes {
			row("kept", "-", n)
		}
		for _, warn := range p.Warnings {
			row("warning", "-", strings.TrimPrefix(warn, "podmeta: "))
		}
		if p.Empty() {
			row("nothing", "pod", "already has everything podmeta would add")
		}
	}
	text, ok := earlierRecord(obj, d)
	if !ok {
		return
	}
	row("", "", "")
	row("EARLIER PASS", "", "recorded in "+webhook.AnnotationStatus+" (a claim: inject keeps what the pod still shows)")
	var st webhook.Status
	if err := json.Unmarshal([]byte(text), &st); err != nil {
		row("record", "-", "not a record podmeta writes: "+err.Error())
		return
	}
	statusRows(row, st, "recorded", "recorded mount of", "recorded")
	for _, s := range st.Skipped {
		row("skipped", "-", s)
	}
}

// statusRows writes a record's additions, with the verbs given.
func statusRows(row func(what, where, result string), st webhook.Status, added, mounted, set string) {
	for _, c := range sortedKeys(st.Env) {
		row("env", c, added+" "+strings.Join(st.Env[c], ", "))
	}
	if st.Volume != "" {
		row("volume", "pod", added+" "+webhook.VolumeName+" (downwardAPI)")
	}
	for _, c := range st.Mounts {
		row("mount", c, mounted+" "+webhook.VolumeName+" read-only at "+st.Volume)
	}
	for _, c := range sortedKeys(st.EphemeralStorage) {
		var parts []string
		for _, k := range sortedKeys(st.EphemeralStorage[c]) {
			parts = append(parts, k+" "+st.EphemeralStorage[c][k])
		}
		row("ephemeral-storage", c, set+" "+strings.Join(parts, ", "))
	}
	if st.Ambassador != "" {
		row("ambassador", webhook.AmbassadorContainerName, added+" as "+st.Ambassador)
	}
}

// earlierRecord is the podmeta.io/status annotation the object's pod template has.
func earlierRecord(obj *object, d *document) (string, bool) {
	ann := field(field(at(d.node, obj.template), "metadata"), "annotations")
	if v := field(ann, webhook.AnnotationStatus); v != nil {
		return v.Value, true
	}
	return "", false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
