// Command chartgen writes the podmeta chart's template of policy mode
// (policy.HelmTemplatePath) from policy.HelmTemplate: `make chart-policy` runs it from
// the repository root.
package main

import (
	"fmt"
	"os"

	"github.com/podmeta/podmeta/policy"
)

func main() {
	b, err := policy.HelmTemplate()
	if err == nil {
		err = os.WriteFile(policy.HelmTemplatePath, b, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "chartgen:", err)
		os.Exit(1)
	}
}
