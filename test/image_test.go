package test

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/podmeta/podmeta/test/harness"
)

// The image tarballs `make image-tar` builds with hack/imagetar: the right config
// (entrypoint, nonroot user, architecture), docker-archive layout with the tag (what
// docker load, kind load image-archive and ctr images import read), a reproducible
// digest, and a binary inside that runs.
func TestImageTarball(t *testing.T) {
	dir := t.TempDir()
	imagetar := filepath.Join(dir, "imagetar")
	build := exec.Command("go", "build", "-o", imagetar, "./hack/imagetar")
	build.Dir = harness.Root()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build hack/imagetar: %v\n%s", err, out)
	}
	for _, c := range []struct {
		pkg, binary, tag string
		versionArgs      []string
		wantVersion      string
	}{
		{"./cmd/podmeta", "podmeta", "ghcr.io/podmeta/podmeta:v9.9.9-test", []string{"version"}, "podmeta v9.9.9-test"},
		{"./cmd/ambassador", "ambassador", "ghcr.io/podmeta/ambassador:v9.9.9-test", []string{"--version"}, "podmeta-ambassador v9.9.9-test"},
	} {
		t.Run(c.binary, func(t *testing.T) {
			bin := filepath.Join(dir, "linux", c.binary)
			gb := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=v9.9.9-test", "-o", bin, c.pkg)
			gb.Dir = harness.Root()
			gb.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
			if out, err := gb.CombinedOutput(); err != nil {
				t.Fatalf("build %s: %v\n%s", c.pkg, err, out)
			}
			out := filepath.Join(dir, c.binary+".tar")
			again := filepath.Join(dir, c.binary+"-again.tar")
			for _, o := range []string{out, again} {
				cmd := exec.Command(imagetar, "-binary", bin, "-tag", c.tag, "-arch", runtime.GOARCH, "-o", o)
				if b, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("imagetar: %v\n%s", err, b)
				}
			}

			tag, err := name.NewTag(c.tag)
			if err != nil {
				t.Fatal(err)
			}
			manifest, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(out) })
			if err != nil {
				t.Fatalf("not a docker-archive: %v", err)
			}
			if len(manifest) != 1 || !slices.Equal(manifest[0].RepoTags, []string{c.tag}) {
				t.Errorf("manifest.json RepoTags %+v, want [%s]", manifest, c.tag)
			}
			img, err := tarball.ImageFromPath(out, &tag)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
				t.Errorf("platform %s/%s, want linux/%s", cfg.OS, cfg.Architecture, runtime.GOARCH)
			}
			if want := []string{"/" + c.binary}; !slices.Equal(cfg.Config.Entrypoint, want) {
				t.Errorf("entrypoint %q, want %q", cfg.Config.Entrypoint, want)
			}
			if cfg.Config.User != "65532:65532" {
				t.Errorf("user %q, want 65532:65532 (nonroot)", cfg.Config.User)
			}
			d1, _ := img.Digest()
			img2, err := tarball.ImageFromPath(again, &tag)
			if err != nil {
				t.Fatal(err)
			}
			if d2, _ := img2.Digest(); d1 != d2 {
				t.Errorf("not reproducible: %s then %s", d1, d2)
			}

			// Unpack the one layer and run the binary in it.
			layers, err := img.Layers()
			if err != nil || len(layers) != 1 {
				t.Fatalf("layers: %d, %v", len(layers), err)
			}
			rc, err := layers[0].Uncompressed()
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			files := map[string]*tar.Header{}
			extracted := filepath.Join(dir, "rootfs-"+c.binary)
			tr := tar.NewReader(rc)
			for {
				h, err := tr.Next()
				if errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					t.Fatal(err)
				}
				files[h.Name] = h
				if h.Name == c.binary {
					f, err := os.OpenFile(extracted, os.O_CREATE|os.O_WRONLY, os.FileMode(h.Mode))
					if err != nil {
						t.Fatal(err)
					}
					if _, err := io.Copy(f, tr); err != nil {
						t.Fatal(err)
					}
					f.Close()
				}
				if h.Name == "etc/passwd" {
					b, _ := io.ReadAll(tr)
					if !strings.Contains(string(b), "nonroot:x:65532:65532:") {
						t.Errorf("/etc/passwd lacks the nonroot user:\n%s", b)
					}
				}
			}
			if h := files[c.binary]; h == nil || h.Mode&0o111 == 0 || h.Uid != 0 {
				t.Fatalf("/%s missing, not executable or not root-owned: %+v", c.binary, h)
			}
			if h := files["tmp/"]; h == nil || h.Mode&0o1777 != 0o1777 {
				t.Errorf("/tmp missing or not 1777: %+v", h)
			}
			if runtime.GOOS != "linux" {
				t.Skip("the image's linux binary cannot run on " + runtime.GOOS)
			}
			got, err := exec.Command(extracted, c.versionArgs...).CombinedOutput()
			if err != nil || !strings.Contains(string(got), c.wantVersion) {
				t.Errorf("%s %v: %v, output %q, want it to contain %q", c.binary, c.versionArgs, err, got, c.wantVersion)
			}
		})
	}
}
