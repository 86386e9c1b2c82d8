package main

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBinary builds the real binary, the way release builds do, and checks what a
// user sees first: the version, and a clear error for a mistyped flag.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	bin := filepath.Join(t.TempDir(), "podmeta-ambassador")
	build := exec.CommandContext(t.Context(), goTool, "build", "-trimpath",
		"-ldflags", "-s -w -X main.version=v9.8.7-test -X main.commit=abc1234", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	for _, tc := range []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"version", []string{"--version"}, 0, "podmeta-ambassador v9.8.7-test (commit abc1234, go", ""},
		{"bad flag", []string{"--upstream", "https://127.0.0.1:1", "--no-such-flag"}, 1, "",
			"podmeta-ambassador: flag provided but not defined: -no-such-flag (see --help)\n"},
		{"bad mode", []string{"--upstream", "https://127.0.0.1:1", "--mode", "admin"}, 1, "",
			`podmeta-ambassador: --mode "admin": must be read-only or read-write` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			cmd := exec.CommandContext(t.Context(), bin, tc.args...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			cmd.Env = []string{} // no KUBERNETES_SERVICE_* from the test environment
			err := cmd.Run()
			code := 0
			if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d", code, tc.wantCode)
			}
			if !strings.HasPrefix(stdout.String(), tc.wantStdout) {
				t.Errorf("stdout %q, want prefix %q", stdout.String(), tc.wantStdout)
			}
			if tc.wantStderr != "" && stderr.String() != tc.wantStderr || tc.wantStderr == "" && stderr.Len() > 0 {
				t.Errorf("stderr %q, want %q", stderr.String(), tc.wantStderr)
			}
		})
	}
}
