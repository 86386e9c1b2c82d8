package main

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// diffLines is a shortest diff: it covers both inputs in order and keeps as many lines as
// a longest common subsequence has.
func TestDiffLines(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 500; i++ {
		a, b := randLines(r), randLines(r)
		edits := diffLines(a, b)
		var gotA, gotB []string
		common := 0
		for _, e := range edits {
			if e.a >= 0 {
				gotA = append(gotA, a[e.a])
			}
			if e.b >= 0 {
				gotB = append(gotB, b[e.b])
			}
			if e.a >= 0 && e.b >= 0 {
				common++
				if a[e.a] != b[e.b] {
					t.Fatalf("paired %q with %q", a[e.a], b[e.b])
				}
			}
		}
		if strings.Join(gotA, ",") != strings.Join(a, ",") || strings.Join(gotB, ",") != strings.Join(b, ",") {
			t.Fatalf("%v / %v: edits %v do not cover both", a, b, edits)
		}
		if want := lcs(a, b); common != want {
			t.Fatalf("%v / %v: %d common lines, want %d", a, b, common, want)
		}
	}
}

func randLines(r *rand.Rand) []string {
	out := make([]string, r.IntN(12))
	for i := range out {
		out[i] = string(rune('a' + r.IntN(4)))
	}
	return out
}

func lcs(a, b []string) int {
	dp := make([][]int, len(a)+1)
	for i := range dp {
		dp[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				dp[i][j] = dp[i+1][j+1] + 1
			} else {
				dp[i][j] = max(dp[i+1][j], dp[i][j+1])
			}
		}
	}
	return dp[0][0]
}

// The encoder drops blank lines and writes one space before a line comment; both come
// back as written.
func TestEncodeYAMLKeepsLayout(t *testing.T) {
	in := "a: 1   # one\n\nb:\n- x\n\n# about c\nc: |\n  text\n\n  more\n"
	doc, err := parseNode([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	out, err := encodeYAML(doc, []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != in {
		t.Errorf("got\n%s\nwant\n%s", out, in)
	}
}
