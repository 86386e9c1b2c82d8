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

// A pod template that shares nodes through anchors, aliases or merge keys is read as YAML
// means it, but not edited: an addition would show wherever the shared node is used.
func TestYAMLAliases(t *testing.T) {
	in := "x-common: &common\n  image: app:1\n  env:\n  - {name: A, value: b}\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - <<: *common\n    name: one\n    image: own:2\n"
	doc, err := parseNode([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	got, err := nodeJSON(doc)
	if err != nil {
		t.Fatal(err)
	}
	c := string(got[strings.Index(string(got), `"containers"`):])
	if want := `"containers":[{"env":[{"name":"A","value":"b"}],"name":"one","image":"own:2"}]`; !strings.HasPrefix(c, want) {
		t.Errorf("merge key: got %s, want %s", c, want)
	}
	if field(at(doc, "/spec/containers/0"), "env") == nil {
		t.Error("field does not follow the merge key")
	}

	out, stderr, code := podmeta(t, in, "inject", "-f", "-")
	if code != 1 || out != "" || !strings.Contains(stderr, "pod/p: its pod template uses YAML anchors, aliases or merge keys") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	rec := strings.Replace(in, "metadata:\n  name: p\n", "metadata:\n  name: p\n  annotations: {podmeta.io/status: '{\"env\":{\"one\":[\"A\"]}}'}\n", 1)
	out, stderr, code = podmeta(t, rec, "uninject", "-f", "-")
	if code != 0 || out != rec || !strings.Contains(stderr, "kept everything: the pod template uses YAML anchors") {
		t.Errorf("uninject through an alias: exit %d, stderr %q, changed: %v", code, stderr, out != rec)
	}
}

// Scalars read as Kubernetes reads them (sigs.k8s.io/yaml): a date stays the string written.
func TestNodeJSONScalars(t *testing.T) {
	doc, err := parseNode([]byte("a: 2026-01-01\nb: 0644\nc: \"x <&> y\"\nd: ~\ne: 1.5\n"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := nodeJSON(doc)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"a":"2026-01-01","b":420,"c":"x <&> y","d":null,"e":1.5}`; string(got) != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

// A manifest written on Windows keeps its CRLF line ends, and inject only adds lines.
func TestInjectKeepsCRLF(t *testing.T) {
	in := "# team app\r\napiVersion: v1\r\nkind: Pod\r\nmetadata:\r\n  name: p   # name\r\n\r\nspec:\r\n  containers:\r\n  - name: c\r\n    image: i\r\n"
	out, stderr, code := podmeta(t, in, "inject", "-f", "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if strings.Count(out, "\n") != strings.Count(out, "\r\n") {
		t.Errorf("mixed line ends:\n%q", out)
	}
	onlyAdded(t, in, out)
}
