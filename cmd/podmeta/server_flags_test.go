package main

import (
	"flag"
	"io"
	"testing"
	"time"

	"github.com/podmeta/podmeta/webhook"
)

// The server's bounds have defaults that agree (docs/operations.md): the budget holds
// several of the largest bodies, and every in-flight request with a typical one.
func TestServerFlagDefaults(t *testing.T) {
	o := defaultServerOptions()
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	if o.bodyBudget < 8*o.maxBodyBytes || o.bodyBudget < int64(o.maxInFlight)*256<<10 {
		t.Errorf("--body-budget-bytes %d: want room for 8 bodies of --max-request-bytes (%d) and %d in-flight bodies of 256 KiB", o.bodyBudget, o.maxBodyBytes, o.maxInFlight)
	}
	if o.bodyReadTimeout != webhook.DefaultReadTimeout || o.bodyReadTimeout > 5*time.Second {
		t.Errorf("--body-read-timeout %s", o.bodyReadTimeout)
	}
	for _, args := range [][]string{{"--workload-pod-selector=tier,team in (a,b),!legacy"}} {
		o := defaultServerOptions()
		fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
		o.addFlags(fs)
		if err := fs.Parse(args); err != nil || o.validate() != nil {
			t.Errorf("%v refused: %v %v", args, err, o.validate())
		}
	}
	for _, args := range [][]string{
		{"--body-budget-bytes=1000", "--max-request-bytes=2000"},
		{"--body-read-timeout=0"},
		{"--max-request-bytes=0"},
		{"--max-namespace-waits=-1"},
		{"--workload-validation=block"},
		{"--owner-event-window=-1s"},
		{"--workload-pod-selector=tier in (a"},
	} {
		o := defaultServerOptions()
		fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		o.addFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		if o.validate() == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
