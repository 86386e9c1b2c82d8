package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/podmeta/podmeta/policy"
	"github.com/podmeta/podmeta/webhook"
)

// runPolicy renders podmeta's injection as a MutatingAdmissionPolicy and its denials
// as a ValidatingAdmissionPolicy, each with its binding, from the injection flags
// podmeta webhook takes (docs/policy.md). With --explain it lists what policy mode does
// differently from the webhook instead.
func runPolicy(_ context.Context, args []string, s streams) error {
	fs := flag.NewFlagSet("policy", flag.ContinueOnError)
	fs.SetOutput(s.err)
	cfg := webhook.DefaultConfig()
	cfg.AddFlags(fs)
	explain := fs.Bool("explain", false, "list what policy mode does differently from the webhook (what CEL cannot express), and the tests that pin it, instead of rendering")
	fs.Usage = func() {
		fmt.Fprintf(s.err, "usage: %s policy [flags] > podmeta-policy.yaml\n\n"+
			"Renders a MutatingAdmissionPolicy and a ValidatingAdmissionPolicy, with their bindings,\n"+
			"that do in the apiserver (Kubernetes >= 1.36) what podmeta webhook does with the same flags.\n"+
			"--native-sidecar resolves to always and --max-patch-bytes does not apply.\n\nflags:\n", programName())
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("policy takes no arguments, got %q", fs.Args())
	}
	if *explain {
		fmt.Fprintln(s.out, "What policy mode does differently from podmeta webhook (CEL in an admission policy cannot do it):")
		for _, d := range policy.Differences() {
			fmt.Fprintf(s.out, "- %s\n  pinned by %s\n", d.What, d.Test)
		}
		return nil
	}
	pols, err := policy.Render(cfg)
	if err != nil {
		return err
	}
	y, err := pols.YAML()
	if err != nil {
		return err
	}
	_, err = s.out.Write(y)
	return err
}
