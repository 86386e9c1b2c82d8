package policy

import (
	"os"
	"path/filepath"
	"testing"
)

// The chart's template of policy mode is what HelmTemplate generates now: a change of
// the renderer (or of the engine it reads) must be followed by `make chart-policy`.
func TestHelmTemplateCurrent(t *testing.T) {
	want, err := HelmTemplate()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join("..", HelmTemplatePath))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("%s is stale: run `make chart-policy`", HelmTemplatePath)
	}
}
