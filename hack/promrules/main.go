// Command promrules checks Prometheus rules and queries with Prometheus' own parsers and
// reports the metric names they select. The chart tests (test/chart_test.go) run it; it
// is a module of its own so that Prometheus' large dependency tree stays out of
// podmeta's go.mod.
//
//	promrules rules FILE    a rule file (the spec of a PrometheusRule): rulefmt.Parse,
//	                        which also checks every expression and annotation template
//	promrules exprs FILE    a JSON array of PromQL expressions
//
// Either prints {"metrics": {"<rule or expression>": ["metric", …]}} on success, or the
// parse errors on stderr and exits 1.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "promrules:", err)
		os.Exit(1)
	}
}

type report struct {
	Metrics map[string][]string `json:"metrics"`
}

func run(args []string, out io.Writer) error {
	if len(args) != 2 {
		return errors.New("usage: promrules rules|exprs FILE")
	}
	content, err := os.ReadFile(args[1])
	if err != nil {
		return err
	}
	p := parser.NewParser(parser.Options{})
	exprs := map[string]string{}
	switch args[0] {
	case "rules":
		groups, errs := rulefmt.Parse(content, false, model.UTF8Validation, p, slog.New(slog.DiscardHandler))
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				exprs[g.Name+"/"+r.Alert+r.Record] = r.Expr
			}
		}
	case "exprs":
		var list []string
		if err := json.Unmarshal(content, &list); err != nil {
			return err
		}
		for _, e := range list {
			exprs[e] = e
		}
	default:
		return fmt.Errorf("unknown mode %q: want rules or exprs", args[0])
	}
	rep := report{Metrics: map[string][]string{}}
	for key, e := range exprs {
		names, err := metricNames(p, e)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		rep.Metrics[key] = names
	}
	return json.NewEncoder(out).Encode(rep)
}

// metricNames parses e and returns the metric names its selectors name, sorted. A
// selector without a fixed name (e.g. {__name__=~"x.*"}) is an error: it cannot be checked.
func metricNames(p parser.Parser, e string) ([]string, error) {
	expr, err := p.ParseExpr(e)
	if err != nil {
		return nil, err
	}
	var names []string
	var errs []error
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		if name == "" {
			errs = append(errs, fmt.Errorf("selector %s names no metric", vs))
			return nil
		}
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
		return nil
	})
	slices.Sort(names)
	return names, errors.Join(errs...)
}
