// Command record-reviews records AdmissionReview requests exactly as the project's own
// kube-apiserver sends them to a mutating webhook, for the test data in
// webhook/testdata/admission-reviews (its README says why they are kept verbatim).
//
// It starts the local control plane (make k8s), serves the shipped webhook
// configuration's path with a recorder that allows every pod unchanged, and creates each
// pod of the reviews in -from again in an opted-in namespace "bench": the pod the
// recorded review carries, without the fields the apiserver generates, created as the
// recorded user (impersonated) with the recorded field manager, so that userInfo and
// managedFields come out alike. One review per pod is written to -o, which may not be
// the committed directory: a new recording is compared by hand and copied deliberately.
//
//	go run ./hack/record-reviews -o /tmp/reviews
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/podmeta/podmeta/test/harness"
)

const namespace = "bench"

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "record-reviews:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer) error {
	committed := filepath.Join(harness.Root(), "webhook", "testdata", "admission-reviews")
	from := flag.String("from", committed, "directory of recorded reviews whose pods are created again")
	dest := flag.String("o", "", "directory to write the new recordings to (not the committed one)")
	flag.Parse()
	if *dest == "" {
		return errors.New("-o DIR is required")
	}
	if same, err := sameDir(*dest, committed); err != nil {
		return err
	} else if same {
		return fmt.Errorf("-o %s is the committed test data: record elsewhere, compare, and copy deliberately", *dest)
	}
	sources, err := filepath.Glob(filepath.Join(*from, "*.json"))
	if err != nil || len(sources) == 0 {
		return fmt.Errorf("no reviews in %s (%v)", *from, err)
	}
	if err := os.MkdirAll(*dest, 0o755); err != nil {
		return err
	}

	cp, err := harness.Start()
	if err != nil {
		return err
	}
	defer cp.Stop()
	rec, err := startRecorder(cp)
	if err != nil {
		return err
	}
	defer rec.server.Close()
	if err := cp.EnsureNamespace(ctx, namespace, map[string]string{"podmeta.io/inject": "enabled"}, nil); err != nil {
		return err
	}

	sort.Strings(sources)
	for _, src := range sources {
		name := strings.TrimSuffix(filepath.Base(src), ".json")
		pod, user, manager, err := podOf(src)
		if err != nil {
			return fmt.Errorf("%s: %w", src, err)
		}
		cfg := rest.CopyConfig(cp.Config)
		cfg.Impersonate = user
		client, err := dynamic.NewForConfig(cfg)
		if err != nil {
			return err
		}
		rec.expect()
		pods := client.Resource(schema.GroupVersionResource{Version: "v1", Resource: "pods"}).Namespace(namespace)
		if _, err := pods.Create(ctx, pod, metav1.CreateOptions{FieldManager: manager}); err != nil {
			return fmt.Errorf("create the pod of %s: %w", src, err)
		}
		body, err := rec.take(10 * time.Second)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		path := filepath.Join(*dest, name+".json")
		if err := os.WriteFile(path, body, 0o644); err != nil {
			return err
		}
		old, _ := os.Stat(src)
		fmt.Fprintf(out, "%s: %d bytes (%s: %d)\n", path, len(body), src, old.Size())
	}
	return nil
}

// podOf returns the pod of a recorded review, without what the apiserver generates, and
// who created it with which field manager.
func podOf(path string) (*unstructured.Unstructured, rest.ImpersonationConfig, string, error) {
	var review struct {
		Request struct {
			UserInfo struct {
				Username string              `json:"username"`
				UID      string              `json:"uid"`
				Groups   []string            `json:"groups"`
				Extra    map[string][]string `json:"extra"`
			} `json:"userInfo"`
			Object map[string]any `json:"object"`
		} `json:"request"`
	}
	data, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(data, &review)
	}
	if err != nil || review.Request.Object == nil {
		return nil, rest.ImpersonationConfig{}, "", fmt.Errorf("not an AdmissionReview with an object: %v", err)
	}
	pod := &unstructured.Unstructured{Object: review.Request.Object}
	manager := "record-reviews"
	if mf := pod.GetManagedFields(); len(mf) > 0 {
		manager = mf[0].Manager
	}
	for _, f := range []string{"uid", "resourceVersion", "creationTimestamp", "managedFields"} {
		unstructured.RemoveNestedField(pod.Object, "metadata", f)
	}
	pod.SetNamespace(namespace)
	unstructured.RemoveNestedField(pod.Object, "status")
	// The ServiceAccount admission plugin adds the token volume and its mounts again.
	dropTokenVolume(pod.Object)
	u := review.Request.UserInfo
	user := rest.ImpersonationConfig{UserName: u.Username, UID: u.UID, Groups: u.Groups, Extra: u.Extra}
	return pod, user, manager, nil
}

func dropTokenVolume(pod map[string]any) {
	isToken := func(name any) bool { s, _ := name.(string); return strings.HasPrefix(s, "kube-api-access-") }
	spec, _ := pod["spec"].(map[string]any)
	if vols, ok := spec["volumes"].([]any); ok {
		spec["volumes"] = keep(vols, func(v map[string]any) bool { return !isToken(v["name"]) })
	}
	for _, list := range []string{"initContainers", "containers"} {
		cs, _ := spec[list].([]any)
		for _, c := range cs {
			c, _ := c.(map[string]any)
			if mounts, ok := c["volumeMounts"].([]any); ok {
				if kept := keep(mounts, func(m map[string]any) bool { return !isToken(m["name"]) }); len(kept) > 0 {
					c["volumeMounts"] = kept
				} else {
					delete(c, "volumeMounts")
				}
			}
		}
	}
}

func keep(list []any, ok func(map[string]any) bool) []any {
	var out []any
	for _, e := range list {
		if m, _ := e.(map[string]any); m != nil && ok(m) {
			out = append(out, e)
		}
	}
	return out
}

// recorder serves the path of the shipped webhook configuration on envtest's serving
// address, allows every review unchanged and hands over each body it receives.
type recorder struct {
	server *http.Server
	bodies chan []byte
}

func startRecorder(cp *harness.ControlPlane) (*recorder, error) {
	wio := cp.Env.WebhookInstallOptions
	cert, err := tls.LoadX509KeyPair(filepath.Join(wio.LocalServingCertDir, "tls.crt"), filepath.Join(wio.LocalServingCertDir, "tls.key"))
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort(wio.LocalServingHost, strconv.Itoa(wio.LocalServingPort))
	l, err := tls.Listen("tcp", addr, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, err
	}
	r := &recorder{bodies: make(chan []byte, 1)}
	r.server = &http.Server{Handler: http.HandlerFunc(r.serve), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = r.server.Serve(l) }()
	return r, nil
}

func (r *recorder) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(io.LimitReader(req.Body, 8<<20))
	var review struct {
		Request struct {
			UID string `json:"uid"`
		} `json:"request"`
	}
	if err == nil {
		err = json.Unmarshal(body, &review)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	select {
	case r.bodies <- body:
	default: // a reinvocation or an unexpected pod: the first body of each create counts
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
		"response": map[string]any{"uid": review.Request.UID, "allowed": true},
	})
}

// expect drops anything received before the next create.
func (r *recorder) expect() {
	select {
	case <-r.bodies:
	default:
	}
}

func (r *recorder) take(timeout time.Duration) ([]byte, error) {
	select {
	case b := <-r.bodies:
		return b, nil
	case <-time.After(timeout):
		return nil, errors.New("the apiserver sent no review: is the namespace opted in and the webhook registered?")
	}
}

// sameDir reports whether a and b name the same directory (b exists).
func sameDir(a, b string) (bool, error) {
	sa, err := os.Stat(a)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	sb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(sa, sb), nil
}
