package test

// The ambassador's integration tests (issue 4, tests 1–4): the real cmd/ambassador
// binary in front of the real kube-apiserver, authenticating with ServiceAccount tokens
// minted by the TokenRequest API and laid out on disk exactly as the kubelet lays out a
// projected volume. Test 5 (an injected pod passes Pod Security "restricted") is
// TestAmbassadorPassesRestricted in webhook_test.go.
//
// Set PODMETA_AMBASSADOR_BINARY to test a prebuilt binary instead of building
// ./cmd/ambassador (how a deliberately broken build is checked to fail these tests).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/test/harness"
)

// requestTimeout bounds one proxied request. Generous: the machine is small and shared.
const requestTimeout = 30 * time.Second

// 1. Without RBAC the apiserver's own 403 comes back unchanged; once a Role allows it,
// the pod list does.
func TestAmbassadorForbiddenThenAllowedByRBAC(t *testing.T) {
	ns := namespace(t, map[string]string{}, nil)
	sa := serviceAccount(t, ns, "app")
	tok := mintToken(t, ns, sa, nil)
	amb := startAmbassador(t, newKubeletDir(t, tok), "read-only")

	// The client's own Authorization header is dropped, never forwarded: the apiserver
	// sees the ServiceAccount, not "bogus" (which it would answer with 401).
	path := "/api/v1/namespaces/" + ns + "/pods"
	got := amb.do(t, http.MethodGet, path, withHeader("Authorization", "Bearer bogus"))
	direct := apiserverDo(t, tok, http.MethodGet, path, nil)
	if got.code != http.StatusForbidden {
		t.Fatalf("GET %s through the ambassador without RBAC: %d %s, want 403", path, got.code, got.body)
	}
	user := "system:serviceaccount:" + ns + ":" + sa
	wantMsg := fmt.Sprintf(`User \"%s\" cannot list resource \"pods\" in API group \"\" in the namespace \"%s\"`, user, ns)
	if !strings.Contains(string(got.body), wantMsg) || !strings.Contains(string(got.body), `"reason":"Forbidden"`) {
		t.Errorf("403 body %s\ndoes not carry the apiserver's message %s", got.body, wantMsg)
	}
	if strings.Contains(string(got.body), "podmeta-ambassador") {
		t.Errorf("403 came from the ambassador, not the apiserver: %s", got.body)
	}
	if direct.code != got.code || !bytes.Equal(direct.body, got.body) || direct.header.Get("Content-Type") != got.header.Get("Content-Type") {
		t.Errorf("proxied answer differs from the apiserver's own:\nproxied %d %s %s\ndirect  %d %s %s",
			got.code, got.header.Get("Content-Type"), got.body, direct.code, direct.header.Get("Content-Type"), direct.body)
	}

	create(t, ns, pod("listed", nil))
	grantPodReader(t, ns, sa)
	eventually(t, 30*time.Second, func(context.Context) string { // RBAC reaches the authorizer through an informer
		r := amb.do(t, http.MethodGet, path)
		if r.code != http.StatusOK {
			return fmt.Sprintf("GET %s: %d %s", path, r.code, r.body)
		}
		var list corev1.PodList
		if err := json.Unmarshal(r.body, &list); err != nil {
			return fmt.Sprintf("GET %s: 200 but not a PodList (%v): %s", path, err, r.body)
		}
		if list.Kind != "PodList" || len(list.Items) != 1 || list.Items[0].Name != "listed" {
			return fmt.Sprintf("GET %s: 200 with kind %q and %d pods, want the one pod \"listed\"", path, list.Kind, len(list.Items))
		}
		return ""
	})
}

// 2. The kubelet rotates the token: the new token is used from the first request after
// the swap, and requests keep succeeding, without a single error, after the old token
// stopped being valid.
func TestAmbassadorFollowsTokenRotation(t *testing.T) {
	ctx := t.Context()
	ns := namespace(t, map[string]string{}, nil)
	sa := serviceAccount(t, ns, "app")
	grantPodReader(t, ns, sa)
	secretA, secretB := boundSecret(t, ns, "token-a"), boundSecret(t, ns, "token-b")
	tokA, tokB := mintToken(t, ns, sa, secretA), mintToken(t, ns, sa, secretB)
	jtiA, jtiB := tokenJTI(t, tokA), tokenJTI(t, tokB)

	// read-write only so that SelfSubjectReview (a POST) can tell which token was used.
	dir := newKubeletDir(t, tokA)
	amb := startAmbassador(t, dir, "read-write")
	path := "/api/v1/namespaces/" + ns + "/pods"
	eventually(t, 30*time.Second, func(context.Context) string {
		if r := amb.do(t, http.MethodGet, path); r.code != http.StatusOK {
			return fmt.Sprintf("GET %s with token A: %d %s", path, r.code, r.body)
		}
		return ""
	})
	if got := amb.credentialID(t); got != "JTI="+jtiA {
		t.Fatalf("before the rotation the apiserver saw credential %q, want token A's JTI=%s", got, jtiA)
	}

	// Clients hammer the proxy during and after the rotation; every answer must be 200.
	var (
		ok     atomic.Int64
		mu     sync.Mutex
		failed []string
	)
	loopCtx, stopLoop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for loopCtx.Err() == nil {
				r := amb.do(t, http.MethodGet, path)
				if r.code == http.StatusOK {
					ok.Add(1)
					time.Sleep(2 * time.Millisecond) // pacing, to spare the shared machine
					continue
				}
				mu.Lock()
				failed = append(failed, fmt.Sprintf("%d %s", r.code, r.body))
				mu.Unlock()
			}
		})
	}
	checked := false
	stopAndCheck := func() {
		stopLoop()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		if !checked && len(failed) > 0 {
			checked = true
			t.Fatalf("%d of %d requests failed around the rotation; first: %s", len(failed), int64(len(failed))+ok.Load(), failed[0])
		}
	}
	defer stopAndCheck()
	waitCount := func(what string, n int64) {
		t.Helper()
		target := ok.Load() + n
		eventually(t, 60*time.Second, func(context.Context) string {
			mu.Lock()
			defer mu.Unlock()
			if len(failed) > 0 {
				return "" // reported by stopAndCheck
			}
			if got := ok.Load(); got < target {
				return fmt.Sprintf("%s: %d of %d requests done", what, got, target)
			}
			return ""
		})
	}
	waitCount("before the rotation", 40)

	dir.rotate(t, tokB)
	// No grace period: the very next request carries B.
	if got := amb.credentialID(t); got != "JTI="+jtiB {
		t.Fatalf("right after the rotation the apiserver saw credential %q, want token B's JTI=%s (token A is JTI=%s)", got, jtiB, jtiA)
	}
	waitCount("after the rotation", 40)

	// Invalidate A: its bound object is gone. The apiserver notices through its secret
	// informer and its authentication cache (10 s for successes), hence the polling.
	if err := cp.Clientset.CoreV1().Secrets(ns).Delete(ctx, secretA.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, func(context.Context) string {
		if r := apiserverDo(t, tokA, http.MethodGet, path, nil); r.code != http.StatusUnauthorized {
			return fmt.Sprintf("token A, called directly after its secret was deleted: %d, want 401", r.code)
		}
		return ""
	})
	if r := apiserverDo(t, tokB, http.MethodGet, path, nil); r.code != http.StatusOK {
		t.Fatalf("token B, called directly: %d %s, want 200", r.code, r.body)
	}
	// A is dead for the apiserver; the proxy must not care.
	waitCount("after token A was invalidated", 100)
	stopAndCheck()
	t.Logf("%d requests through the rotation, none failed", ok.Load())
}

// 3. A watch streams through the proxy: each event arrives within a second.
func TestAmbassadorStreamsWatch(t *testing.T) {
	ctx := t.Context()
	ns := namespace(t, map[string]string{}, nil)
	sa := serviceAccount(t, ns, "app")
	grantPodReader(t, ns, sa)
	amb := startAmbassador(t, newKubeletDir(t, mintToken(t, ns, sa, nil)), "read-only")

	path := "/api/v1/namespaces/" + ns + "/pods"
	var rv string
	eventually(t, 30*time.Second, func(context.Context) string {
		r := amb.do(t, http.MethodGet, path)
		if r.code != http.StatusOK {
			return fmt.Sprintf("GET %s: %d %s", path, r.code, r.body)
		}
		var list corev1.PodList
		if err := json.Unmarshal(r.body, &list); err != nil {
			return err.Error()
		}
		rv = list.ResourceVersion
		return ""
	})

	watchCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(watchCtx, http.MethodGet, amb.url+path+"?watch=1&resourceVersion="+rv, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := amb.stream.Do(req) //nolint:bodyclose // closed by the defer below
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("watch: %s %s", resp.Status, b)
	}
	type event struct {
		Type   string     `json:"type"`
		Object corev1.Pod `json:"object"`
	}
	events := make(chan event)
	go func() {
		defer close(events)
		dec := json.NewDecoder(resp.Body)
		for {
			var e event
			if dec.Decode(&e) != nil {
				return
			}
			select {
			case events <- e:
			case <-watchCtx.Done():
				return
			}
		}
	}()

	// Several small events in a row: a proxy that buffers would hold them back until
	// its buffer filled or the stream ended.
	for _, name := range []string{"first", "second", "third"} {
		create(t, ns, pod(name, nil))
		created := time.Now()
		timer := time.NewTimer(time.Second)
		select {
		case e, open := <-events:
			timer.Stop()
			if !open {
				t.Fatalf("watch ended before the ADDED event of %s", name)
			}
			if e.Type != "ADDED" || e.Object.Name != name {
				t.Fatalf("event %s %s, want ADDED %s", e.Type, e.Object.Name, name)
			}
			t.Logf("ADDED %s arrived %s after the create returned", name, time.Since(created).Round(time.Millisecond))
		case <-timer.C:
			t.Fatalf("no event within 1s of creating pod %s", name)
		}
	}
}

// 4. What the ambassador refuses, and where it listens.
func TestAmbassadorRefusesAndListensOnLoopbackOnly(t *testing.T) {
	ctx := t.Context()
	ns := namespace(t, map[string]string{}, nil)
	sa := serviceAccount(t, ns, "app")
	tok := mintToken(t, ns, sa, nil)
	// The health port keeps its default address (all interfaces), as in a pod: the
	// listener check below must tell it apart from the proxy's.
	ro := startAmbassador(t, newKubeletDir(t, tok), "read-only", "--health-address=0.0.0.0")
	rw := startAmbassador(t, newKubeletDir(t, tok), "read-write")
	for _, a := range []*ambassador{ro, rw} {
		eventually(t, 30*time.Second, func(context.Context) string { // ready, and the token works
			if r := a.do(t, http.MethodGet, "/version"); r.code != http.StatusOK {
				return fmt.Sprintf("GET /version: %d %s", r.code, r.body)
			}
			return ""
		})
	}
	const review = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
	reviewBody := `{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`

	t.Run("read-only refuses writes", func(t *testing.T) {
		podJSON := `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"posted"},"spec":{"containers":[{"name":"app","image":"app:1"}]}}`
		for _, c := range []struct{ method, path, body string }{
			{http.MethodPost, "/api/v1/namespaces/" + ns + "/pods", podJSON},
			{http.MethodPost, review, reviewBody},
			{http.MethodDelete, "/api/v1/namespaces/" + ns + "/pods/posted", ""},
			{http.MethodPatch, "/api/v1/namespaces/" + ns, "{}"},
		} {
			r := ro.do(t, c.method, c.path, withBody(c.body))
			wantStatus(t, c.method+" "+c.path, r, http.StatusMethodNotAllowed, "MethodNotAllowed", "read-only")
			if allow := r.header.Get("Allow"); allow != "GET, HEAD" {
				t.Errorf("%s %s: Allow %q, want \"GET, HEAD\"", c.method, c.path, allow)
			}
		}
		if _, err := cp.Clientset.CoreV1().Pods(ns).Get(ctx, "posted", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("the refused POST created a pod anyway (get: %v)", err)
		}
		// HEAD is a read: forwarded, and answered by the apiserver.
		if r, direct := ro.do(t, http.MethodHead, "/version"), apiserverDo(t, tok, http.MethodHead, "/version", nil); r.code != direct.code {
			t.Errorf("HEAD /version in read-only mode: %d, the apiserver answers %d", r.code, direct.code)
		}
		// The same POST in read-write mode is forwarded: the refusal is the mode's.
		if r := rw.do(t, http.MethodPost, review, withBody(reviewBody)); r.code != http.StatusCreated {
			t.Errorf("POST %s in read-write mode: %d %s, want 201", review, r.code, r.body)
		}
	})

	t.Run("exec attach portforward refused in every mode", func(t *testing.T) {
		for _, a := range []*ambassador{ro, rw} {
			for _, sub := range []string{"exec", "attach", "portforward"} {
				for _, method := range []string{http.MethodGet, http.MethodPost} {
					p := "/api/v1/namespaces/" + ns + "/pods/x/" + sub
					if sub == "exec" {
						p += "?command=id&stdout=true"
					}
					r := a.do(t, method, p)
					wantStatus(t, a.mode+" "+method+" "+p, r, http.StatusForbidden, "Forbidden", "pods/"+sub+" is never proxied")
				}
			}
			// Encoded or disguised forms of the same path.
			for _, p := range []string{
				"/api/v1/namespaces/" + ns + "/pods/x/%65xec",
				"/api/v1/namespaces/" + ns + "/pods/x/EXEC",
				"/api/v1/namespaces/" + ns + "/pods/y/../x/exec",
			} {
				if r := a.do(t, http.MethodGet, p); r.code != http.StatusForbidden {
					t.Errorf("%s GET %s: %d %s, want 403", a.mode, p, r.code, r.body)
				}
			}
		}
	})

	t.Run("foreign Host refused", func(t *testing.T) {
		for _, a := range []*ambassador{ro, rw} {
			for _, host := range []string{"evil.example", "evil.example:" + a.port(), "localhost.evil.example", "127.0.0.1.nip.io"} {
				r := a.do(t, http.MethodGet, "/api/v1/namespaces/"+ns+"/pods", withHost(host))
				wantStatus(t, a.mode+" Host "+host, r, http.StatusForbidden, "Forbidden", "only localhost, 127.0.0.1 and [::1] are accepted")
			}
			for _, host := range []string{"localhost:" + a.port(), "127.0.0.1:" + a.port(), "localhost"} {
				if r := a.do(t, http.MethodGet, "/version", withHost(host)); r.code != http.StatusOK {
					t.Errorf("%s Host %s: %d %s, want 200", a.mode, host, r.code, r.body)
				}
			}
		}
	})

	t.Run("proxy listens on 127.0.0.1 only", func(t *testing.T) {
		for _, a := range []*ambassador{ro, rw} {
			if !strings.HasPrefix(a.proxyAddr, "127.0.0.1:") {
				t.Errorf("%s: the start-up log says the proxy listens on %s", a.mode, a.proxyAddr)
			}
			listening := listeningSockets(t, a.cmd.Process.Pid)
			proxy := listening[a.port()]
			if len(proxy) != 1 || proxy[0] != "127.0.0.1" {
				t.Errorf("%s: pid %d listens on port %s at %v, want [127.0.0.1] only (all its listeners: %v)", a.mode, a.cmd.Process.Pid, a.port(), proxy, listening)
			}
			// The check can see a wildcard listener: the read-only ambassador's health
			// port is one.
			if a == ro {
				_, hp, _ := net.SplitHostPort(a.healthAddr)
				if h := listening[hp]; len(h) != 1 || (h[0] != "0.0.0.0" && h[0] != "::") {
					t.Errorf("health port %s listens at %v, want the wildcard address (all its listeners: %v)", hp, h, listening)
				}
			}
		}
		// And a non-loopback proxy address is refused at start.
		cmd := exec.CommandContext(ctx, ambassadorBinary(t), "--listen-address=0.0.0.0", "--port=0", "--health-port=0",
			"--upstream="+apiserverURL(t), "--token-file=/nonexistent/token", "--ca-file=/nonexistent/ca.crt")
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "must be a loopback address") {
			t.Errorf("--listen-address=0.0.0.0: err %v, output %s; want exit 1 and \"must be a loopback address\"", err, out)
		}
	})
}

// 5. Security issue 16, finding 7: the client's identity headers never reach the
// apiserver, and the paths that run code or mint credentials are refused in both modes
// although RBAC allows them, unless the ambassador runs with --allow-privileged-paths.
func TestAmbassadorDropsIdentityHeadersAndRefusesPrivilegedPaths(t *testing.T) {
	ctx := t.Context()
	ns := namespace(t, map[string]string{}, nil)
	sa := serviceAccount(t, ns, "app")
	tok := mintToken(t, ns, sa, nil)
	user := "system:serviceaccount:" + ns + ":" + sa

	// RBAC allows everything below: impersonating someone-else, minting its own
	// tokens, the kubelet API through nodes/proxy.
	name := "podmeta-test-privileged-" + ns
	cr := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"users"}, Verbs: []string{"impersonate"}, ResourceNames: []string{"someone-else"}},
		{APIGroups: []string{""}, Resources: []string{"groups"}, Verbs: []string{"impersonate"}, ResourceNames: []string{"some-group"}},
		{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"create"}},
		{APIGroups: []string{""}, Resources: []string{"nodes/proxy"}, Verbs: []string{"get", "create"}},
	}}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}},
	}
	if _, err := cp.Clientset.RbacV1().ClusterRoles().Create(ctx, cr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cp.Clientset.RbacV1().ClusterRoles().Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{})
	})
	if _, err := cp.Clientset.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cp.Clientset.RbacV1().ClusterRoleBindings().Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{})
	})

	const review = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
	reviewBody := `{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`
	tokenPath := "/api/v1/namespaces/" + ns + "/serviceaccounts/" + sa + "/token"
	tokenBody := `{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":600}}`
	whoAmI := func(r response) (string, []string) {
		t.Helper()
		var rv authenticationv1.SelfSubjectReview
		if r.code != http.StatusCreated || json.Unmarshal(r.body, &rv) != nil {
			t.Fatalf("SelfSubjectReview: %d %s", r.code, r.body)
		}
		return rv.Status.UserInfo.Username, rv.Status.UserInfo.Groups
	}
	// Directly, with the same token, RBAC lets the account impersonate and mint.
	eventually(t, 30*time.Second, func(context.Context) string { // RBAC reaches the authorizer through an informer
		if r := apiserverDo(t, tok, http.MethodPost, tokenPath, []byte(tokenBody)); r.code != http.StatusCreated {
			return fmt.Sprintf("POST %s directly: %d %s", tokenPath, r.code, r.body)
		}
		r := doRequest(t, directClient, http.MethodPost, apiserverURL(t)+review, withHeader("Authorization", "Bearer "+tok),
			withHeader("Impersonate-User", "someone-else"), withBody(reviewBody))
		if r.code != http.StatusCreated {
			return fmt.Sprintf("impersonating directly: %d %s", r.code, r.body)
		}
		if u, _ := whoAmI(r); u != "someone-else" {
			return "impersonating directly: the apiserver says " + u
		}
		return ""
	})

	rw := startAmbassador(t, newKubeletDir(t, tok), "read-write")
	ro := startAmbassador(t, newKubeletDir(t, tok), "read-only")

	t.Run("identity headers dropped", func(t *testing.T) {
		r := rw.do(t, http.MethodPost, review, withBody(reviewBody),
			withHeader("Impersonate-User", "someone-else"), withHeader("Impersonate-Group", "some-group"),
			withHeader("X-Remote-User", "someone-else"), withHeader("X-Remote-Group", "system:masters"))
		u, groups := whoAmI(r)
		if u != user || slices.Contains(groups, "some-group") || slices.Contains(groups, "system:masters") {
			t.Errorf("through the ambassador the apiserver saw %s in %v, want %s without some-group or system:masters", u, groups, user)
		}
	})

	t.Run("privileged paths refused in both modes", func(t *testing.T) {
		for _, c := range []struct {
			a                   *ambassador
			method, path, class string
		}{
			{rw, http.MethodPost, tokenPath, "serviceaccounts/token"},
			{rw, http.MethodPost, "/api/v1/nodes/node-1/proxy/run/" + ns + "/web/app?cmd=id", "nodes/proxy"},
			{rw, http.MethodPatch, "/api/v1/namespaces/" + ns + "/pods/web/ephemeralcontainers", "pods/ephemeralcontainers"},
			{ro, http.MethodGet, "/api/v1/nodes/node-1/proxy/pods", "nodes/proxy"},
			{ro, http.MethodGet, "/api/v1/namespaces/" + ns + "/services/web:80/proxy/", "services/proxy"},
			{ro, http.MethodGet, "/api/v1/nodes/node-1%2Fproxy/pods", "%2F"},
		} {
			r := c.a.do(t, c.method, c.path, withBody(tokenBody))
			wantStatus(t, c.a.mode+" "+c.method+" "+c.path, r, http.StatusForbidden, "Forbidden", c.class)
		}
	})

	t.Run("--allow-privileged-paths forwards them", func(t *testing.T) {
		allowed := startAmbassador(t, newKubeletDir(t, tok), "read-write", "--allow-privileged-paths")
		if r := allowed.do(t, http.MethodPost, tokenPath, withBody(tokenBody)); r.code != http.StatusCreated {
			t.Errorf("POST %s with --allow-privileged-paths: %d %s, want 201", tokenPath, r.code, r.body)
		}
		// Impersonation stays impossible.
		if u, _ := whoAmI(allowed.do(t, http.MethodPost, review, withBody(reviewBody), withHeader("Impersonate-User", "someone-else"))); u != user {
			t.Errorf("with --allow-privileged-paths the apiserver saw %s, want %s", u, user)
		}
	})
}

// ---- the ambassador process ----

var (
	ambassadorOnce sync.Once
	ambassadorBin  string
	ambassadorErr  error
)

// ambassadorBinary builds ./cmd/ambassador once per test binary, into the control
// plane's scratch directory (removed when the control plane stops).
func ambassadorBinary(t *testing.T) string {
	t.Helper()
	ambassadorOnce.Do(func() {
		if bin := os.Getenv("PODMETA_AMBASSADOR_BINARY"); bin != "" {
			ambassadorBin = bin
			return
		}
		ambassadorBin = filepath.Join(cp.Dir, "ambassador")
		cmd := exec.Command("go", "build", "-o", ambassadorBin, "./cmd/ambassador")
		cmd.Dir = harness.Root()
		if out, err := cmd.CombinedOutput(); err != nil {
			ambassadorErr = fmt.Errorf("build ambassador: %w\n%s", err, out)
		}
	})
	if ambassadorErr != nil {
		t.Fatal(ambassadorErr)
	}
	return ambassadorBin
}

// ambassador is one running ambassador process.
type ambassador struct {
	cmd        *exec.Cmd
	mode       string
	proxyAddr  string // as logged at start-up
	healthAddr string
	url        string       // http://127.0.0.1:<port>
	client     *http.Client // keep-alive, per-request timeout
	stream     *http.Client // no timeout, for watches

	done    chan struct{} // closed once the process exited and its log was read
	waitErr error

	mu   sync.Mutex
	logs []string
}

// startAmbassador runs the binary on free loopback ports against the control plane
// and waits until it is ready. It is stopped with SIGTERM when the test ends, and
// must then exit 0.
func startAmbassador(t *testing.T, dir *kubeletDir, mode string, extra ...string) *ambassador {
	t.Helper()
	args := append([]string{
		"--port=0", "--health-port=0", "--health-address=127.0.0.1",
		"--upstream=" + apiserverURL(t),
		"--token-file=" + filepath.Join(dir.path, "token"),
		"--ca-file=" + filepath.Join(dir.path, "ca.crt"),
		"--mode=" + mode,
		"--ready-check-interval=1s",
	}, extra...) // later flags win
	a := &ambassador{cmd: exec.Command(ambassadorBinary(t), args...), mode: mode, done: make(chan struct{})}
	stderr, err := a.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			a.mu.Lock()
			a.logs = append(a.logs, sc.Text())
			a.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, stderr)
		a.waitErr = a.cmd.Wait()
		close(a.done)
	}()
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 16, DisableCompression: true}
	a.client = &http.Client{Transport: tr, Timeout: requestTimeout}
	a.stream = &http.Client{Transport: tr}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		if err := a.stop(); err != nil {
			t.Errorf("ambassador (%s) did not stop cleanly: %v", mode, err)
		}
		if t.Failed() {
			t.Logf("--- ambassador (%s) log ---\n%s", mode, a.log())
		}
	})

	deadline := time.Now().Add(60 * time.Second)
	var last string
	for {
		select {
		case <-a.done:
			t.Fatalf("ambassador exited before it was ready: %v\n%s", a.waitErr, a.log())
		default:
		}
		if a.url == "" {
			a.parseStartLog()
		}
		if a.url != "" {
			var ok bool
			if last, ok = harness.GetOK(a.client, "http://"+a.healthAddr+"/readyz"); ok {
				return a
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("ambassador not ready within 60s (last /readyz: %s)\n%s", last, a.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// parseStartLog reads the listen addresses from the start-up log line.
func (a *ambassador) parseStartLog() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, l := range a.logs {
		var m struct{ Msg, Proxy, Health string }
		if json.Unmarshal([]byte(l), &m) == nil && m.Msg == "starting podmeta-ambassador" {
			_, pp, _ := net.SplitHostPort(m.Proxy)
			_, hp, _ := net.SplitHostPort(m.Health)
			a.proxyAddr = m.Proxy
			a.healthAddr = net.JoinHostPort("127.0.0.1", hp)
			a.url = "http://" + net.JoinHostPort("127.0.0.1", pp)
			return
		}
	}
}

func (a *ambassador) port() string {
	_, p, _ := net.SplitHostPort(strings.TrimPrefix(a.url, "http://"))
	return p
}

func (a *ambassador) log() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return strings.Join(a.logs, "\n")
}

// stop sends SIGTERM and waits for the graceful exit.
func (a *ambassador) stop() error {
	select {
	case <-a.done:
		return fmt.Errorf("exited before the test ended: %w", a.waitErr)
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
		return a.waitErr
	case <-time.After(30 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
		return errors.New("still running 30s after SIGTERM; killed")
	}
}

type response struct {
	code   int
	header http.Header
	body   []byte
}

type reqOption func(*http.Request)

func withHeader(k, v string) reqOption { return func(r *http.Request) { r.Header.Set(k, v) } }
func withHost(h string) reqOption      { return func(r *http.Request) { r.Host = h } }
func withBody(s string) reqOption {
	return func(r *http.Request) {
		if s == "" {
			return
		}
		r.Body = io.NopCloser(strings.NewReader(s))
		r.ContentLength = int64(len(s))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(s)), nil }
		r.Header.Set("Content-Type", "application/json")
	}
}

// do sends one request through the proxy. A transport error fails the test; a
// response of any status is returned. It may run on any goroutine.
func (a *ambassador) do(t *testing.T, method, pathAndQuery string, opts ...reqOption) response {
	t.Helper()
	return doRequest(t, a.client, method, a.url+pathAndQuery, opts...)
}

func doRequest(t *testing.T, c *http.Client, method, url string, opts ...reqOption) response {
	t.Helper()
	req, err := http.NewRequestWithContext(context.WithoutCancel(t.Context()), method, url, nil)
	if err != nil {
		t.Error(err)
		return response{}
	}
	for _, o := range opts {
		o(req)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, url, err)
		return response{}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("%s %s: reading the body: %v", method, url, err)
	}
	return response{code: resp.StatusCode, header: resp.Header, body: b}
}

// credentialID asks the apiserver, through the proxy, which credential authenticated
// the request: "JTI=<the token's jti claim>". It needs read-write mode (a POST).
func (a *ambassador) credentialID(t *testing.T) string {
	t.Helper()
	r := a.do(t, http.MethodPost, "/apis/authentication.k8s.io/v1/selfsubjectreviews",
		withBody(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`))
	if r.code != http.StatusCreated {
		t.Fatalf("SelfSubjectReview: %d %s", r.code, r.body)
	}
	var review authenticationv1.SelfSubjectReview
	if err := json.Unmarshal(r.body, &review); err != nil {
		t.Fatalf("SelfSubjectReview: %v: %s", err, r.body)
	}
	ids := review.Status.UserInfo.Extra["authentication.kubernetes.io/credential-id"]
	if len(ids) != 1 {
		t.Fatalf("SelfSubjectReview carries no single credential-id: %s", r.body)
	}
	return ids[0]
}

// wantStatus checks that r is the ambassador's own Kubernetes Status refusal.
func wantStatus(t *testing.T, what string, r response, code int, reason, msgPart string) {
	t.Helper()
	if r.code != code {
		t.Errorf("%s: %d %s, want %d", what, r.code, r.body, code)
		return
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
	var st metav1.Status
	if err := json.Unmarshal(r.body, &st); err != nil {
		t.Errorf("%s: body is not a Status (%v): %s", what, err, r.body)
		return
	}
	if st.Kind != "Status" || st.APIVersion != "v1" || st.Status != metav1.StatusFailure || st.Code != int32(code) ||
		string(st.Reason) != reason || !strings.HasPrefix(st.Message, "podmeta-ambassador: ") || !strings.Contains(st.Message, msgPart) {
		t.Errorf("%s: Status %s, want kind Status, code %d, reason %s, a message from podmeta-ambassador containing %q", what, r.body, code, reason, msgPart)
	}
}

// ---- the API server side ----

// apiserverURL is the control plane's https://host:port.
func apiserverURL(t *testing.T) string {
	t.Helper()
	h := strings.TrimSuffix(cp.Config.Host, "/")
	if !strings.Contains(h, "://") {
		h = "https://" + h
	}
	return h
}

var (
	directOnce   sync.Once
	directClient *http.Client
)

// apiserverDo calls the apiserver directly with a bearer token.
func apiserverDo(t *testing.T, token, method, path string, body []byte) response {
	t.Helper()
	directOnce.Do(func() {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(cp.Config.CAData) {
			panic("no CA in the control plane's rest.Config")
		}
		directClient = &http.Client{Timeout: requestTimeout, Transport: &http.Transport{
			Proxy:           nil,
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: cp.Config.TLSClientConfig.ServerName},
		}}
	})
	opts := []reqOption{withHeader("Authorization", "Bearer "+token)}
	if body != nil {
		opts = append(opts, withBody(string(body)))
	}
	return doRequest(t, directClient, method, apiserverURL(t)+path, opts...)
}

// serviceAccount creates a ServiceAccount and returns its name.
func serviceAccount(t *testing.T, ns, name string) string {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := cp.Clientset.CoreV1().ServiceAccounts(ns).Create(t.Context(), sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return name
}

// boundSecret creates a Secret for a token to be bound to.
func boundSecret(t *testing.T, ns, name string) *corev1.Secret {
	t.Helper()
	s, err := cp.Clientset.CoreV1().Secrets(ns).Create(t.Context(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// mintToken asks the TokenRequest API for a token of ServiceAccount sa, bound to
// secret if it is not nil (the token dies with it).
func mintToken(t *testing.T, ns, sa string, secret *corev1.Secret) string {
	t.Helper()
	expiry := int64(3600)
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}
	if secret != nil {
		tr.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: secret.Name, UID: secret.UID}
	}
	got, err := cp.Clientset.CoreV1().ServiceAccounts(ns).CreateToken(t.Context(), sa, tr, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s/%s: %v", ns, sa, err)
	}
	return got.Status.Token
}

// tokenJTI returns a JWT's jti claim (the token is not verified: it is our own).
func tokenJTI(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %d parts", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct{ JTI string }
	if err := json.Unmarshal(payload, &claims); err != nil || claims.JTI == "" {
		t.Fatalf("no jti claim (%v): %s", err, payload)
	}
	return claims.JTI
}

// grantPodReader lets ServiceAccount sa get, list and watch pods in ns.
func grantPodReader(t *testing.T, ns, sa string) {
	t.Helper()
	ctx := t.Context()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}},
	}
	if _, err := cp.Clientset.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader-" + sa},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}},
	}
	if _, err := cp.Clientset.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// ---- the kubelet's projected-volume layout ----

// kubeletDir is a projected service-account volume as the kubelet's AtomicWriter
// writes it:
//
//	..2026_01_02_15_04_05.123456789/{token,ca.crt}
//	..data -> ..2026_01_02_15_04_05.123456789
//	token  -> ..data/token
//	ca.crt -> ..data/ca.crt
//
// An update writes a new timestamped directory, points a temporary symlink at it,
// renames that over ..data (the atomic step) and removes the old directory.
type kubeletDir struct {
	path    string
	current string // the timestamped directory ..data points at
}

func newKubeletDir(t *testing.T, token string) *kubeletDir {
	t.Helper()
	d := &kubeletDir{path: t.TempDir()}
	d.rotate(t, token)
	for _, f := range []string{"token", "ca.crt"} {
		if err := os.Symlink(filepath.Join("..data", f), filepath.Join(d.path, f)); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// rotate publishes token (and the control plane's CA) atomically.
func (d *kubeletDir) rotate(t *testing.T, token string) {
	t.Helper()
	ts, err := os.MkdirTemp(d.path, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"token": []byte(token), "ca.crt": cp.Config.CAData} {
		if err := os.WriteFile(filepath.Join(ts, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(d.path, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(d.path, "..data")); err != nil {
		t.Fatal(err)
	}
	if d.current != "" {
		if err := os.RemoveAll(d.current); err != nil {
			t.Fatal(err)
		}
	}
	d.current = ts
}

// ---- /proc ----

// listeningSockets maps each TCP port that process pid listens on to the local
// addresses it is bound to, from /proc/<pid>/net/tcp{,6} filtered by the socket inodes
// of the process's file descriptors. No packet is sent.
func listeningSockets(t *testing.T, pid int) map[string][]string {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	out := map[string][]string{}
	for _, table := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			if table == "tcp6" && errors.Is(err, os.ErrNotExist) {
				continue // IPv6 disabled
			}
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] { // 0A: TCP_LISTEN
				continue
			}
			addr, port, ok := strings.Cut(f[1], ":")
			ip, err := hex.DecodeString(addr)
			p, perr := strconv.ParseUint(port, 16, 16)
			if !ok || err != nil || perr != nil || (len(ip) != 4 && len(ip) != 16) {
				t.Fatalf("/proc/%d/net/%s: cannot parse %q", pid, table, f[1])
			}
			// The kernel prints each 32-bit word in host (little-endian) order.
			for i := 0; i < len(ip); i += 4 {
				slices.Reverse(ip[i : i+4])
			}
			ps := strconv.FormatUint(p, 10)
			out[ps] = append(out[ps], net.IP(ip).String())
		}
	}
	return out
}
