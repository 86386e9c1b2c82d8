// Command podmeta is podmeta's one binary: the admission webhook server and the offline
// tools around the same engine.
//
//	podmeta webhook  [flags]           serve the mutating admission webhook
//	podmeta inject   -f FILE [flags]   mutate manifests offline, as the webhook would
//	podmeta explain  -f FILE [flags]   show what each pod would get, and why not
//	podmeta uninject -f FILE [flags]   remove what podmeta added, as its record says
//	podmeta doctor   -n NS (POD | KIND/NAME | -f FILE)   why a pod is (not) injected, asked of the cluster
//	podmeta version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

// Set with -ldflags "-X main.version=… -X main.commit=…".
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		var status *exitStatus
		switch {
		case errors.As(err, &status):
			if status.err != nil {
				fmt.Fprintln(os.Stderr, programName()+":", status.err)
			}
			os.Exit(status.code)
		case !errors.Is(err, flag.ErrHelp):
			fmt.Fprintln(os.Stderr, programName()+":", err)
		}
		os.Exit(1)
	}
}

// streams are a command's standard streams, passed in so tests can run commands in-process.
type streams struct {
	in       io.Reader
	out, err io.Writer
}

type command struct {
	name, usage string
	run         func(ctx context.Context, args []string, s streams) error
}

func commands() []command {
	return []command{
		{"webhook", "serve the mutating admission webhook", runWebhook},
		{"inject", "mutate Pods and workload pod templates in YAML or JSON manifests offline", runInject},
		{"explain", "show per pod what would be injected, what would be skipped and why", runExplain},
		{"uninject", "remove what podmeta added to Pods and pod templates, as their status record says", runUninject},
		{"doctor", "check against the cluster why a pod, workload or manifest is (not) injected, with a fix per check", runDoctor},
		{"policy", "render the injection as a MutatingAdmissionPolicy and a ValidatingAdmissionPolicy (Kubernetes >= 1.36)", runPolicy},
		{"version", "print the version", runVersion},
	}
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	s := streams{stdin, stdout, stderr}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return errors.New("no command given")
		}
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], s)
		}
	}
	usage(stderr)
	return fmt.Errorf("unknown command %q", args[0])
}

func usage(w io.Writer) {
	name := programName()
	fmt.Fprintf(w, "usage: %s COMMAND [flags]\n\ncommands:\n", name)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.usage)
	}
	fmt.Fprintf(w, "\nRun '%s COMMAND -h' for a command's flags.\n", name)
}

// programName is how the user called podmeta: "kubectl podmeta" when it is installed as
// the kubectl plugin kubectl-podmeta (docs/cli.md).
func programName() string {
	base := strings.TrimSuffix(filepath.Base(os.Args[0]), ".exe")
	if plugin, ok := strings.CutPrefix(base, "kubectl-"); ok {
		return "kubectl " + strings.ReplaceAll(plugin, "_", "-")
	}
	return "podmeta"
}

func runVersion(_ context.Context, args []string, s streams) error {
	if len(args) > 0 {
		return fmt.Errorf("version takes no arguments, got %q", args)
	}
	fmt.Fprintf(s.out, "podmeta %s (commit %s)\n", version, commit)
	return nil
}
