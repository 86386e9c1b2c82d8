// Package test holds the integration tests: podmeta's real binary behind its shipped
// webhook configuration on a real kube-apiserver + etcd (see package harness).
package test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/podmeta/podmeta/test/harness"
)

// The control plane and podmeta are started once for the package, as in
// open-policy-agent/cert-controller: starting etcd + kube-apiserver costs seconds.
var (
	cp      *harness.ControlPlane
	binary  string
	podmeta *harness.Podmeta
)

// podmetaFlags are the operator flags every test server runs with.
var podmetaFlags = []string{"--ambassador-image=registry.example.com/podmeta/ambassador:test", "--zap-log-level=debug", "--shutdown-delay=500ms"}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	suite, err := harness.StartSuite()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer suite.Stop()
	cp, binary = suite.CP, suite.Binary
	if podmeta, err = cp.StartPodmeta(context.Background(), binary, podmetaFlags...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if err := podmeta.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "podmeta did not stop cleanly: %v\n%s", err, podmeta.Logs())
		return 1
	}
	if code != 0 {
		fmt.Fprintf(os.Stderr, "--- podmeta log ---\n%s", podmeta.Logs())
	}
	return code
}
