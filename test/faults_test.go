package test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/test/harness"
	"github.com/podmeta/podmeta/webhook"
)

// webhookVia registers a copy of the shipped webhook, named for the test, that only
// serves namespace ns and calls url. ns must not be opted in, so the shared
// configuration leaves it to this one.
func webhookVia(t *testing.T, ns, url string, policy admissionregistrationv1.FailurePolicyType) {
	t.Helper()
	api := cp.Clientset.AdmissionregistrationV1().MutatingWebhookConfigurations()
	shipped, err := api.Get(t.Context(), "podmeta", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wh := *shipped.Webhooks[0].DeepCopy()
	wh.ClientConfig.URL = &url
	wh.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}
	wh.FailurePolicy = &policy
	cfg := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "podmeta-" + ns}, Webhooks: []admissionregistrationv1.MutatingWebhook{wh}}
	if _, err := api.Create(t.Context(), cfg, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = api.Delete(context.Background(), cfg.Name, metav1.DeleteOptions{}) })
}

func port(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

// Fault 1: a rolling restart of two replicas behind one endpoint, under continuous pod
// creation: every creation succeeds and every pod is injected. Each replica leaves the
// endpoint, drains (--shutdown-delay: not ready, closing connections after each
// response), finishes in-flight requests on SIGTERM, and a new one takes its place.
func TestFaultRollingRestart(t *testing.T) {
	ns := namespace(t, map[string]string{}, nil)
	start := func() *harness.Podmeta {
		pm, err := cp.StartPodmeta(t.Context(), binary, append(podmetaFlags, "--port="+port(harness.FreeAddr()), "--shutdown-delay=2s")...)
		if err != nil {
			t.Fatal(err)
		}
		return pm
	}
	replicas := []*harness.Podmeta{start(), start()}
	lb, err := harness.NewLB(lastPort(replicas[0]), lastPort(replicas[1]))
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	webhookVia(t, ns, "https://"+lb.Addr+"/mutate-v1-pod", admissionregistrationv1.Ignore)
	eventually(t, 10*time.Second, func(ctx context.Context) string {
		if !injected(create(t, ns, pod(fmt.Sprintf("warmup-%d", time.Now().UnixNano()), nil))) {
			return "not injected through the load balancer yet"
		}
		return ""
	})

	var created, failed atomic.Int64
	var failures sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for i := 0; i < 2000; i++ { // bounded; stopped long before
				select {
				case <-stop:
					return
				default:
				}
				_, err := cp.Clientset.CoreV1().Pods(ns).Create(context.Background(), pod(fmt.Sprintf("load-%d-%d", w, i), nil), metav1.CreateOptions{})
				if err != nil {
					failed.Add(1)
					failures.Store(err.Error(), true)
				} else {
					created.Add(1)
				}
				time.Sleep(40 * time.Millisecond)
			}
		})
	}
	time.Sleep(time.Second)
	for i, old := range replicas {
		others := []string{}
		for j, r := range replicas {
			if j != i {
				others = append(others, lastPort(r))
			}
		}
		lb.SetBackends(others...) // the endpoint goes away first, as on a real rollout
		time.Sleep(500 * time.Millisecond)
		if err := old.Stop(); err != nil {
			t.Errorf("replica %d did not exit cleanly: %v\n%s", i, err, old.Logs())
		}
		replicas[i] = start()
		lb.SetBackends(lastPort(replicas[0]), lastPort(replicas[1]))
		time.Sleep(time.Second)
	}
	close(stop)
	wg.Wait()
	for _, r := range replicas {
		if err := r.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	}

	list, err := cp.Clientset.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	uninjected := 0
	for i := range list.Items {
		if !injected(&list.Items[i]) {
			uninjected++
		}
	}
	t.Logf("rolling restart of 2 replicas: %d creations, %d failed, %d pods uninjected", created.Load(), failed.Load(), uninjected)
	if created.Load() < 50 {
		t.Errorf("only %d creations: the load did not run", created.Load())
	}
	if failed.Load() > 0 || uninjected > 0 {
		failures.Range(func(k, _ any) bool { t.Log("failure:", k); return true })
		t.Errorf("%d creations failed and %d pods were not injected during the rolling restart", failed.Load(), uninjected)
	}
}

// lastPort is the address a harness-started replica serves on (the last --port flag).
func lastPort(pm *harness.Podmeta) string {
	p := ""
	for _, a := range pm.Cmd.Args {
		if v, ok := strings.CutPrefix(a, "--port="); ok {
			p = v
		}
	}
	return "127.0.0.1:" + p
}

// Fault 2: a webhook slower than timeoutSeconds. The apiserver gives up after the
// timeout: with Ignore the pod is admitted and the safety net warns; with Fail it is
// rejected with a message naming the webhook. The apiserver never hangs.
func TestFaultSlowWebhook(t *testing.T) {
	ctx := t.Context()
	installSafetyNet(t)
	wio := cp.Env.WebhookInstallOptions
	lb, err := harness.NewLB(fmt.Sprintf("%s:%d", wio.LocalServingHost, wio.LocalServingPort))
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	lb.SetDelay(6 * time.Second)

	// Point the shipped configuration at the slow path, with a 2 s timeout.
	api := cp.Clientset.AdmissionregistrationV1().MutatingWebhookConfigurations()
	orig, err := api.Get(ctx, "podmeta", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	set := func(policy admissionregistrationv1.FailurePolicyType) {
		cfg, err := api.Get(ctx, "podmeta", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		url, timeout := "https://"+lb.Addr+"/mutate-v1-pod", int32(2)
		cfg.Webhooks[0].ClientConfig.URL, cfg.Webhooks[0].TimeoutSeconds, cfg.Webhooks[0].FailurePolicy = &url, &timeout, &policy
		if _, err := api.Update(ctx, cfg, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		cfg, err := api.Get(context.Background(), "podmeta", metav1.GetOptions{})
		if err == nil {
			cfg.Webhooks = orig.Webhooks
			_, err = api.Update(context.Background(), cfg, metav1.UpdateOptions{})
		}
		if err != nil {
			t.Errorf("restore the webhook configuration: %v", err)
		}
	})

	ns := namespace(t, nil, nil)
	cs, rec := clientWithWarnings(t)
	set(admissionregistrationv1.Ignore)
	n := 0
	eventually(t, 30*time.Second, func(ctx context.Context) string {
		n++
		begin := time.Now()
		got, err := cs.CoreV1().Pods(ns).Create(ctx, pod(fmt.Sprintf("slow-ignore-%d", n), nil), metav1.CreateOptions{})
		if took := time.Since(begin); took > 10*time.Second {
			t.Fatalf("the apiserver took %s with a 2 s webhook timeout", took)
		}
		switch {
		case err != nil:
			return err.Error()
		case injected(got):
			return "injected: the slow path is not in effect yet"
		case !strings.Contains(strings.Join(rec.all(), "\n"), safetyNetMessage):
			return "admitted uninjected, but no safety-net warning"
		}
		return ""
	})

	set(admissionregistrationv1.Fail)
	eventually(t, 30*time.Second, func(ctx context.Context) string {
		n++
		begin := time.Now()
		_, err := cs.CoreV1().Pods(ns).Create(ctx, pod(fmt.Sprintf("slow-fail-%d", n), nil), metav1.CreateOptions{})
		if took := time.Since(begin); took > 10*time.Second {
			t.Fatalf("the apiserver took %s with a 2 s webhook timeout", took)
		}
		if err == nil {
			return "admitted with failurePolicy Fail and a webhook slower than its timeout"
		}
		if !strings.Contains(err.Error(), `failed calling webhook "pods.podmeta.io"`) {
			return "unexpected error: " + err.Error()
		}
		return ""
	})
}

// Fault 3: the apiserver restarts under podmeta. podmeta keeps running, its namespace
// cache reconnects, and admissions resume, including namespace annotations changed
// after the restart.
func TestFaultAPIServerRestart(t *testing.T) {
	ctx := t.Context()
	ns := namespace(t, nil, map[string]string{webhook.AnnotationEnv: "POD_NAME"})
	if err := cp.RestartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	nsObj, err := cp.Clientset.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj.Annotations[webhook.AnnotationEnv] = "NODE_NAME"
	if _, err := cp.Clientset.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	n := 0
	eventually(t, 60*time.Second, func(ctx context.Context) string {
		n++
		got, err := cp.Clientset.CoreV1().Pods(ns).Create(ctx, pod(fmt.Sprintf("after-restart-%d", n), nil), metav1.CreateOptions{})
		if err != nil {
			return err.Error()
		}
		if names := envNames(got.Spec.Containers[0]); len(names) != 1 || names[0] != "NODE_NAME" {
			return fmt.Sprintf("env %v: the namespace cache has not caught up", names)
		}
		return ""
	})
	if strings.Contains(podmeta.Logs(), `"level":"panic"`) || podmeta.Cmd.ProcessState != nil {
		t.Error("podmeta did not survive the apiserver restart")
	}
}

// Fault 4: the apiserver restarts under the ambassador. Once it is back, proxied
// requests succeed again through the same ambassador process, which never restarted.
func TestFaultAPIServerRestartUnderAmbassador(t *testing.T) {
	ns := namespace(t, map[string]string{}, nil)
	sa := serviceAccount(t, ns, "app")
	grantPodReader(t, ns, sa)
	amb := startAmbassador(t, newKubeletDir(t, mintToken(t, ns, sa, nil)), "read-only")
	path := "/api/v1/namespaces/" + ns + "/pods"
	eventually(t, 30*time.Second, func(context.Context) string {
		if r := amb.do(t, "GET", path); r.code != 200 {
			return fmt.Sprintf("before the restart: %d %s", r.code, r.body)
		}
		return ""
	})

	if err := cp.RestartAPIServer(t.Context()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, func(context.Context) string {
		if r := amb.do(t, "GET", path); r.code != 200 {
			return fmt.Sprintf("after the restart: %d %s", r.code, r.body)
		}
		return ""
	})
	select { // the same process served before and after: it never exited
	case <-amb.done:
		t.Fatalf("the ambassador exited: %v", amb.waitErr)
	default:
	}
}
