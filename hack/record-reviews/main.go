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

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
		return fmt.Errorf("no reviews in %s (%w)", *from, err)
	}
	if err := os.MkdirAll(*dest, 0o755); err != nil {
		return err
	}

	cp, err := harness.Start()
	if err != nil {
		return err
	}
	defer func() { _ = cp.Stop() }()
	rec, err := startRecorder(cp)
	if err != nil {
		return err
	}
	defer func() { _ = rec.server.Close() }()
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
		if sa, _, _ := unstructured.NestedString(pod.Object, "spec", "serviceAccountName"); sa != "" {
			err := cp.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: namespace}})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				return err
			}
		}
		cfg := rest.CopyConfig(cp.Config)
		cfg.Impersonate = user
		client, err := dynamic.NewForConfig(cfg)
		if err != nil {
			return err
		}
		rec.expect()
		pods := client.Resource(schema.GroupVersionResource{Version: "v1", Resource: "pods"}).Namespace(namespace)
		// Strict: what kubectl and the controllers send.
		if _, err := pods.Create(ctx, pod, metav1.CreateOptions{FieldManager: manager, FieldValidation: "Strict"}); err != nil {
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
		return nil, rest.ImpersonationConfig{}, "", fmt.Errorf("not an AdmissionReview with an object: %w", err)
	}
	pod := &unstructured.Unstructured{Object: review.Request.Object}
	mf := pod.GetManagedFields()
	if len(mf) != 1 || mf[0].FieldsV1 == nil {
		return nil, rest.ImpersonationConfig{}, "", errors.New("want exactly one managedFields entry: it says which fields the creator sent")
	}
	var sent map[string]any
	if err := json.Unmarshal(mf[0].FieldsV1.GetRawBytes(), &sent); err != nil {
		return nil, rest.ImpersonationConfig{}, "", fmt.Errorf("managedFields: %w", err)
	}
	// What the creator sent, without the defaults and the admission plugins' additions
	// (tolerations, priority, the token volume), which the apiserver adds again.
	pod.Object = prune(pod.Object, sent).(map[string]any)
	pod.SetAPIVersion("v1")
	pod.SetKind("Pod")
	pod.SetNamespace(namespace)
	u := review.Request.UserInfo
	user := rest.ImpersonationConfig{UserName: u.Username, UID: u.UID, Groups: u.Groups, Extra: u.Extra}
	return pod, user, mf[0].Manager, nil
}

// prune keeps of v what a managedFields field set names: "f:NAME" a map's field,
// "k:{...}" a list element by its keys, "v:..." a list element by value, "i:N" one by
// index, and "." the node itself. A node whose set names nothing below it is owned
// whole (an atomic struct such as a secretKeyRef or an ownerReference).
func prune(v any, set map[string]any) any {
	if len(set) == 0 || len(set) == 1 && set["."] != nil {
		return v
	}
	switch v := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range v {
			if sub, ok := set["f:"+k].(map[string]any); ok {
				out[k] = prune(e, sub)
			}
		}
		return out
	case []any:
		var out []any
		for i, e := range v {
			if sub, ok := listEntry(set, i, e); ok {
				out = append(out, prune(e, sub))
			}
		}
		return out
	default:
		return v
	}
}

func listEntry(set map[string]any, i int, e any) (map[string]any, bool) {
	if sub, ok := set["i:"+strconv.Itoa(i)].(map[string]any); ok {
		return sub, true
	}
	if raw, err := json.Marshal(e); err == nil {
		if sub, ok := set["v:"+string(raw)].(map[string]any); ok {
			return sub, true
		}
	}
	m, _ := e.(map[string]any)
	for key, sub := range set {
		var fields map[string]any
		if !strings.HasPrefix(key, "k:") || json.Unmarshal([]byte(key[2:]), &fields) != nil {
			continue
		}
		match := m != nil
		for f, want := range fields {
			if got, ok := m[f]; !ok || fmt.Sprint(got) != fmt.Sprint(want) {
				match = false
			}
		}
		if match {
			sub, _ := sub.(map[string]any)
			return sub, true
		}
	}
	return nil, false
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
