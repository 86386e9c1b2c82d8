// Command imagetar builds a container image tarball from one static binary, without a
// Docker engine and without downloading a base image: the binary on an empty base with a
// nonroot user (65532), written in docker-archive format (what `docker save` writes), so
// `docker load -i`, `kind load image-archive` and `ctr images import` all accept it.
//
//	go run ./hack/imagetar -binary bin/linux-amd64/podmeta -tag ghcr.io/podmeta/podmeta:v0.1.0 \
//	    -arch amd64 -o bin/images/podmeta-amd64.tar
//
// The image holds /<name> (the binary, the entrypoint), /etc/passwd and /etc/group naming
// the nonroot user, and an empty world-writable /tmp. Timestamps come from
// SOURCE_DATE_EPOCH (default 0), so the same binary always gives the same image digest.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// NonrootUID is the user and group the image runs as: distroless' "nonroot", which the
// chart's securityContext (runAsUser 65532) matches.
const NonrootUID = 65532

// options are the command's flags.
type options struct {
	binary  string
	tag     string
	arch    string
	out     string
	args    stringList
	version string
}

type stringList []string

func (s *stringList) String() string     { return fmt.Sprint(*s) }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "imagetar:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var o options
	fs := flag.NewFlagSet("imagetar", flag.ContinueOnError)
	fs.StringVar(&o.binary, "binary", "", "static linux binary to package; its file name becomes /NAME and the entrypoint")
	fs.StringVar(&o.tag, "tag", "", "image reference to record in the tarball, e.g. ghcr.io/podmeta/podmeta:v0.1.0")
	fs.StringVar(&o.arch, "arch", "amd64", "GOARCH the binary was built for (the image's architecture)")
	fs.StringVar(&o.out, "o", "", "output tarball")
	fs.StringVar(&o.version, "version", "", "org.opencontainers.image.version label (default: the tag's tag)")
	fs.Var(&o.args, "cmd", "default argument after the entrypoint (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.binary == "" || o.tag == "" || o.out == "" {
		return errors.New("-binary, -tag and -o are required")
	}
	ref, err := name.NewTag(o.tag)
	if err != nil {
		return fmt.Errorf("-tag: %w", err)
	}
	if o.version == "" {
		o.version = ref.TagStr()
	}
	created, err := sourceDate()
	if err != nil {
		return err
	}
	img, err := build(o, created)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return err
	}
	if err := tarball.WriteToFile(o.out, ref, img); err != nil {
		return fmt.Errorf("write %s: %w", o.out, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s (%s) linux/%s\n", o.out, ref, digest, o.arch)
	return nil
}

// sourceDate is SOURCE_DATE_EPOCH (reproducible builds) or the Unix epoch.
func sourceDate() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	sec, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", s, err)
	}
	return time.Unix(sec, 0).UTC(), nil
}

// build assembles the one-layer image.
func build(o options, created time.Time) (v1.Image, error) {
	bin, err := os.ReadFile(o.binary)
	if err != nil {
		return nil, err
	}
	entry := "/" + filepath.Base(o.binary)
	layerTar, err := rootfs(entry, bin, created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.DockerLayer))
	if err != nil {
		return nil, err
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:     layer,
		History:   v1.History{Created: v1.Time{Time: created}, CreatedBy: "hack/imagetar " + entry, Comment: "static binary on an empty base"},
		MediaType: types.DockerLayer,
	})
	if err != nil {
		return nil, err
	}
	user := strconv.Itoa(NonrootUID) + ":" + strconv.Itoa(NonrootUID)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: o.arch,
		OS:           "linux",
		Created:      v1.Time{Time: created},
		RootFS:       mustConfig(img).RootFS,
		History:      mustConfig(img).History,
		Config: v1.Config{
			Entrypoint: []string{entry},
			Cmd:        o.args,
			User:       user,
			WorkingDir: "/",
			Env:        []string{"PATH=/"},
			Labels: map[string]string{
				"org.opencontainers.image.source":   "https://github.com/podmeta/podmeta",
				"org.opencontainers.image.title":    filepath.Base(o.binary),
				"org.opencontainers.image.version":  o.version,
				"org.opencontainers.image.licenses": "Apache-2.0",
			},
		},
	})
	if err != nil {
		return nil, err
	}
	return mutate.MediaType(img, types.DockerManifestSchema2), nil
}

func mustConfig(img v1.Image) *v1.ConfigFile {
	cf, err := img.ConfigFile()
	if err != nil {
		panic(err)
	}
	return cf
}

// rootfs is the layer: the binary, a passwd/group naming the nonroot user, and /tmp.
func rootfs(entry string, bin []byte, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body []byte) error {
		h.ModTime, h.Format = mtime, tar.FormatPAX
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", NonrootUID, NonrootUID)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", NonrootUID)
	for _, e := range []struct {
		h    tar.Header
		body []byte
	}{
		{tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644}, []byte(passwd)},
		{tar.Header{Name: "etc/group", Typeflag: tar.TypeReg, Mode: 0o644}, []byte(group)},
		{tar.Header{Name: "home/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{tar.Header{Name: "home/nonroot/", Typeflag: tar.TypeDir, Mode: 0o700, Uid: NonrootUID, Gid: NonrootUID}, nil},
		// Writable scratch for tools that expect it; the chart mounts an emptyDir here
		// because it runs with a read-only root filesystem.
		{tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, nil},
		{tar.Header{Name: entry[1:], Typeflag: tar.TypeReg, Mode: 0o755}, bin},
	} {
		if err := add(&e.h, e.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
