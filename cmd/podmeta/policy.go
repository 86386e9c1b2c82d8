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
	costs := fs.Bool("costs", false, "print each expression's CEL cost, as the apiserver's cost tracking charges it on reference pods, against the apiserver's limits, instead of rendering")
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
	if *costs {
		return printCosts(s, pols)
	}
	y, err := pols.YAML()
	if err != nil {
		return err
	}
	_, err = s.out.Write(y)
	return err
}

// printCosts prints the runtime CEL cost of every expression of pols on each reference
// pod, as a markdown table, and each policy's total, against the apiserver's limits.
func printCosts(s streams, pols *policy.Policies) error {
	pods := policy.ReferencePods()
	var rows [][]policy.Cost
	for _, rp := range pods {
		c, err := policy.RuntimeCosts(pols, rp.Pod, policy.ReferenceNamespace())
		if err != nil {
			return fmt.Errorf("%s: %w", rp.Name, err)
		}
		rows = append(rows, c)
	}
	fmt.Fprintf(s.out, "CEL cost of each expression, as the apiserver's cost tracking charges it (every variable evaluated once), against its limit of %d per expression and %d per policy evaluation:\n\n", policy.PerExpressionLimit, policy.PerEvaluationBudget)
	fmt.Fprint(s.out, "| policy | expression |")
	for _, rp := range pods {
		fmt.Fprintf(s.out, " %s |", rp.Name)
	}
	fmt.Fprint(s.out, "\n|---|---|")
	for range pods {
		fmt.Fprint(s.out, "---:|")
	}
	fmt.Fprintln(s.out)
	totals := make([]map[string]int64, len(pods))
	for i := range rows[0] {
		fmt.Fprintf(s.out, "| %s | %s |", rows[0][i].Policy, rows[0][i].Expression)
		for j := range pods {
			if totals[j] == nil {
				totals[j] = map[string]int64{}
			}
			totals[j][rows[j][i].Policy] += rows[j][i].Cost
			fmt.Fprintf(s.out, " %d |", rows[j][i].Cost)
		}
		fmt.Fprintln(s.out)
	}
	for _, name := range []string{pols.Mutating.Name, pols.Validating.Name} {
		fmt.Fprintf(s.out, "| %s | **total** |", name)
		for j := range pods {
			fmt.Fprintf(s.out, " %d |", totals[j][name])
		}
		fmt.Fprintln(s.out)
	}
	return nil
}
