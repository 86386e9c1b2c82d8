// Package repocheck holds checks over the repository's own files.
//
// TestSelfContained is the cheap guard behind "the repository stands alone": a user
// clones it into an empty directory, so no tracked file may name a path above the
// repository root — not a relative path in a script, a Go string, a Markdown link or a
// kustomization, and not a path built at run time from the root, such as
// filepath.Join(harness.Root(), "..", "beside"). Paths that stay inside the repository
// (kustomize's ../rbac, a script that finds the root with "$(dirname "$0")/..") are
// fine. The behavioural guard is .ci/run, which runs `make test` in a fresh clone with
// nothing beside it.
package repocheck

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// relPath is a relative path that starts with "../" at the start of a token (so the
// "/.." of "$(dirname "$0")/.." is not one: it is relative to something else).
var relPath = regexp.MustCompile(`(?:^|[\s"'(=\[:,<>` + "`" + `])((?:\.\./)+(?:[A-Za-z0-9_.*-]+/?)*)`)

// joinCall is a filepath.Join or path.Join call whose arguments are on one line.
var joinCall = regexp.MustCompile(`\b(?:filepath|path)\.Join\(([^()]*(?:\([^()]*\)[^()]*)*)\)`)

// rootCall is an expression the repository's code uses for the repository root.
var rootCall = regexp.MustCompile(`^(?:harness\.)?Root\(\)$`)

func TestSelfContained(t *testing.T) {
	root := repoRoot(t)
	var problems []string
	for _, file := range trackedFiles(t, root) {
		data, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.IndexByte(data, 0) >= 0 {
			continue // binary
		}
		problems = append(problems, escapes(file, string(data))...)
	}
	if len(problems) > 0 {
		t.Errorf("files name paths outside the repository (a fresh clone has nothing beside it; keep what they need inside):\n%s",
			strings.Join(problems, "\n"))
	}
}

// escapes lists the places in file (a path relative to the repository root) whose
// relative paths or path joins lead above the repository root. A relative path is read
// from the file's directory where a tool reads it so — a Go string (tests run in the
// package directory), a Markdown link, a kustomization, a script — and from the root in
// Markdown prose. A Go comment may mean either, so it escapes only when both readings do.
func escapes(file, text string) []string {
	dir := path.Dir(file)
	goFile, markdown := strings.HasSuffix(file, ".go"), strings.HasSuffix(file, ".md")
	var out []string
	for n, line := range strings.Split(text, "\n") {
		where := fmt.Sprintf("%s:%d", file, n+1)
		for _, m := range relPath.FindAllStringSubmatchIndex(line, -1) {
			rel, before := line[m[2]:m[3]], line[:m[2]]
			escaped := outside(dir, rel)
			switch {
			case goFile && !strings.HasSuffix(before, `"`):
				escaped = escaped && outside(".", rel)
			case markdown && !strings.HasSuffix(before, "]("):
				escaped = outside(".", rel)
			}
			if escaped {
				out = append(out, fmt.Sprintf("%s: %q", where, rel))
			}
		}
		if !strings.HasSuffix(file, ".go") {
			continue
		}
		for _, m := range joinCall.FindAllStringSubmatch(line, -1) {
			if p, ok := joinedPath(dir, m[1]); ok && outside(".", p) {
				out = append(out, fmt.Sprintf("%s: %s", where, strings.TrimSpace(m[0])))
			}
		}
	}
	return out
}

// joinedPath resolves the leading literal part of a Join's arguments against what its
// first argument is: the repository root (Root()), or the package directory dir (a
// string literal, as tests run there). ok is false when the base is unknown.
func joinedPath(dir, args string) (string, bool) {
	parts := strings.Split(args, ",")
	first := strings.TrimSpace(parts[0])
	base, rest := "", parts
	switch {
	case rootCall.MatchString(first):
		base, rest = ".", parts[1:]
	case strings.HasPrefix(first, `"`):
		base = dir
	default:
		return "", false
	}
	elems := []string{base}
	for _, a := range rest {
		a = strings.TrimSpace(a)
		if len(a) < 2 || a[0] != '"' || a[len(a)-1] != '"' {
			break
		}
		elems = append(elems, a[1:len(a)-1])
	}
	return path.Join(elems...), true
}

// outside reports whether rel, relative to the repository directory dir, leads above the
// repository root.
func outside(dir, rel string) bool {
	p := path.Join(dir, rel)
	return p == ".." || strings.HasPrefix(p, "../")
}

func TestEscapes(t *testing.T) {
	for _, c := range []struct {
		file, line string
		bad        bool
	}{
		{"webhook/handler_test.go", `os.ReadFile("../../beside/admission-reviews/" + name)`, true},
		{"test/bench/load/main.go", `filepath.Join(harness.Root(), "..", "beside", "x.json")`, true},
		{"webhook/x_test.go", `filepath.Join("..", "..", "beside")`, true},
		{"README.md", `The layout follows [DESIGN.md](../beside/DESIGN.md).`, true},
		{"config/default/kustomization.yaml", `- ../rbac`, false},
		{"hack/node/run.sh", `cd "$(dirname "$0")/../.."`, false},
		{"webhook/x_test.go", `os.ReadFile("../charts/podmeta/values.schema.json")`, false},
		{"test/harness/harness.go", `filepath.Join(filepath.Dir(file), "..", "..")`, false},
		{"test/x.go", `filepath.Join(Root(), "config", "webhook")`, false},
		{"docs/a.md", `see [the README](../README.md)`, false},
		{"docs/a.md", "The bodies are in `../beside/admission-reviews`.", true},
		{"webhook/x_test.go", `// the reviews in ../../beside/admission-reviews`, true},
		{"webhook/x_test.go", `// testdata/x is read from ../charts`, false},
	} {
		if got := len(escapes(c.file, c.line)) > 0; got != c.bad {
			t.Errorf("%s: %s: escapes = %v, want %v", c.file, c.line, got, c.bad)
		}
	}
}

func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("git rev-parse: %v (this check reads the files git tracks)", err)
	}
	return strings.TrimSpace(string(out))
}

// trackedFiles lists the files git tracks, and those it would track (untracked, not
// ignored), so that a new file is checked before it is committed.
func trackedFiles(t *testing.T, root string) []string {
	t.Helper()
	cmd := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	var files []string
	for _, f := range strings.Split(string(out), "\x00") {
		// The checker's own cases name such paths on purpose.
		if f == "" || strings.HasSuffix(f, "go.sum") || strings.HasPrefix(f, "hack/repocheck/") {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			continue // deleted in the work tree
		}
		files = append(files, f)
	}
	return files
}
