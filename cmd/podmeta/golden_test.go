package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/golden/*.txt from the current CLI")

// TestGoldenShapes runs the CLI on each input shape it reads (a List, a List of a PodList
// in JSON, a directory with -R, standard input, a commented manifest, denials) and
// compares what it writes, stdout, stderr and exit status, with testdata/golden/NAME.txt.
func TestGoldenShapes(t *testing.T) {
	commented, err := os.ReadFile("testdata/commented.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		stdin string
		args  []string
	}{
		{"inject-list", "", []string{"inject", "-f", "testdata/shapes/list.yaml"}},
		{"inject-nested-list-json", "", []string{"inject", "-f", "testdata/shapes/nested/podlist.json"}},
		{"inject-directory-recursive", "", []string{"inject", "-R", "-f", "testdata/shapes"}},
		{"inject-commented-stdin", string(commented), []string{"inject", "-f", "-"}},
		{"inject-denied", "", []string{"inject", "-f", "testdata/invalid-list.yaml", "-f", "testdata/invalid.yaml"}},
		{"explain-list", "", []string{"explain", "-R", "-f", "testdata/shapes"}},
		{"explain-denied", "", []string{"explain", "-f", "testdata/invalid-list.yaml"}},
		{"uninject-forged-record", "", []string{"uninject", "-f", "testdata/forged-record.yaml"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, stderr, code := podmeta(t, c.stdin, c.args...)
			got := fmt.Sprintf("$ podmeta %s\n--- stdout\n%s--- stderr\n%s--- exit %d\n", strings.Join(c.args, " "), out, stderr, code)
			golden := filepath.Join("testdata", "golden", c.name+".txt")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./cmd/podmeta -run TestGoldenShapes -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("%s is stale (-want +got); run go test ./cmd/podmeta -run TestGoldenShapes -update and review the diff:\n%s", golden, diff)
			}
		})
	}
}
