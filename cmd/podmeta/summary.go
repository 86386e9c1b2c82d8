package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/podmeta/podmeta/webhook"
)

// summary is one line saying what a plan does to an object, for standard error:
// "env ×9, volume, storage request; 1 warning".
func summary(p *webhook.Plan) string {
	if p.Skipped != "" {
		return "skipped: " + p.Skipped
	}
	st := p.Status
	var parts []string
	env := 0
	for _, vars := range st.Env {
		env += len(vars)
	}
	if env > 0 {
		parts = append(parts, fmt.Sprintf("env ×%d", env))
	}
	if st.Volume != "" {
		parts = append(parts, "volume")
	}
	if n := len(st.Mounts); n > 0 {
		parts = append(parts, fmt.Sprintf("mount ×%d", n))
	}
	var request, limit bool
	for _, kv := range st.EphemeralStorage {
		_, r := kv["request"]
		_, l := kv["limit"]
		request, limit = request || r, limit || l
	}
	switch {
	case request && limit:
		parts = append(parts, "storage request and limit")
	case request:
		parts = append(parts, "storage request")
	case limit:
		parts = append(parts, "storage limit")
	}
	if st.Ambassador != "" {
		parts = append(parts, "ambassador")
	}
	line := strings.Join(parts, ", ")
	switch {
	case p.Empty():
		line = "unchanged"
	case line == "":
		line = "status record" // only the record was brought up to date
	}
	switch n := len(p.Warnings); n {
	case 0:
	case 1:
		line += "; 1 warning"
	default:
		line += fmt.Sprintf("; %d warnings", n)
	}
	return line
}

// workloadAnnotationWarnings names podmeta annotations set on a workload's own metadata,
// where podmeta never reads them, and the path they belong at.
func workloadAnnotationWarnings(obj *object) []string {
	if obj.kind == "Pod" {
		return nil
	}
	var keys []string
	ann := field(field(obj.node, "metadata"), "annotations")
	if ann == nil {
		return nil
	}
	for i := 0; i+1 < len(ann.Content); i += 2 {
		if k := ann.Content[i].Value; strings.HasPrefix(k, webhook.Prefix) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	slices.Sort(keys)
	where := strings.ReplaceAll(strings.TrimPrefix(templatePaths[obj.kind], "/"), "/", ".") + ".metadata.annotations"
	return []string{fmt.Sprintf("podmeta: %s on the %s's own metadata is ignored: podmeta reads %s", strings.Join(keys, ", "), obj.kind, where)}
}

// namingFlags rewrites the operator-config errors of the engine, which come from
// command-line flags here, to name the flag: the engine turns every flag into its
// annotation's default and reports "operator config annotation podmeta.io/env=…", which
// a user of the CLI did not write. Each such flag is named as its annotation is, without
// the prefix.
func namingFlags(err error) error {
	return rewriteAnnotationErrors(err, "operator config", func(e *webhook.AnnotationError) string {
		return fmt.Sprintf("--%s=%q is invalid: %s", strings.TrimPrefix(e.Key, webhook.Prefix), e.Value, e.Reason)
	})
}

// namingNamespaceFlag says that a namespace annotation came from --namespace-annotations.
func namingNamespaceFlag(err error) error {
	return rewriteAnnotationErrors(err, "namespace", func(e *webhook.AnnotationError) string {
		return fmt.Sprintf("--namespace-annotations %s=%q is invalid: %s", e.Key, e.Value, e.Reason)
	})
}

// rewriteAnnotationErrors rewrites each *webhook.AnnotationError of source in err (a
// joined error or a chain of them); the rest of the message is kept.
func rewriteAnnotationErrors(err error, source string, msg func(*webhook.AnnotationError) string) error {
	// The error itself, not what it wraps, is matched: each level of the chain is rebuilt.
	switch e := err.(type) { //nolint:errorlint // see above
	case nil:
		return nil
	case *webhook.AnnotationError:
		if e.Source == source {
			return errors.New(msg(e))
		}
		return err
	case interface{ Unwrap() []error }:
		var out []error
		for _, inner := range e.Unwrap() {
			out = append(out, rewriteAnnotationErrors(inner, source, msg))
		}
		return errors.Join(out...)
	}
	if inner := errors.Unwrap(err); inner != nil {
		rewritten := rewriteAnnotationErrors(inner, source, msg)
		if rewritten.Error() != inner.Error() {
			prefix, _ := strings.CutSuffix(err.Error(), inner.Error())
			return fmt.Errorf("%s%w", prefix, rewritten)
		}
	}
	return err
}
