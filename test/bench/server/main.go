// Command server is one admission webhook server of the load benchmark. All three modes
// run in controller-runtime's webhook server (same TLS, mux and metrics instrumentation)
// and differ only in the handler:
//
//	podmeta   podmeta's webhook.Handler with every feature on
//	floor     controller-runtime's admission.Webhook decoding the Pod, answering "allowed"
//	baseline  the same injection written the usual way: decode a typed Pod, mutate it,
//	          marshal it and let admission.PatchResponseFromRaw diff the two documents
//	null      a fixed answer without decoding anything: the server's TLS, HTTP and
//	          scheduling alone, the latency floor of any server on this machine (its
//	          uid is not the request's, so only the load benchmark can use it)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/podmeta/podmeta/webhook"
)

func main() {
	mode := flag.String("mode", "podmeta", "podmeta, floor or baseline")
	port := flag.Int("port", 9443, "HTTPS port on 127.0.0.1")
	certDir := flag.String("cert-dir", "", "directory with tls.crt and tls.key")
	maxInFlight := flag.Int("max-in-flight", 0, "podmeta's in-flight limit (0: none)")
	flag.Parse()
	ctrllog.SetLogger(logr.Discard()) // the benchmark measures serving, not logging
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *mode, *port, *certDir, *maxInFlight)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, mode string, port int, certDir string, maxInFlight int) error {
	cfg := webhook.DefaultConfig()
	cfg.AmbassadorImage = "registry.example.com/podmeta/ambassador:bench"
	in, err := webhook.NewInjector(cfg, true)
	if err != nil {
		return err
	}
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return err
	}
	dec := admission.NewDecoder(scheme)
	var h http.Handler
	switch mode {
	case "podmeta":
		h = &webhook.Handler{Injector: in, Log: logr.Discard(), MaxInFlight: maxInFlight, Metrics: webhook.NewMetrics(nil)}
	case "floor":
		h = &admission.Webhook{Handler: admission.HandlerFunc(func(_ context.Context, req admission.Request) admission.Response {
			var pod corev1.Pod
			if err := dec.Decode(req, &pod); err != nil {
				return admission.Errored(http.StatusBadRequest, err)
			}
			return admission.Allowed("")
		})}
	case "baseline":
		h = &admission.Webhook{Handler: admission.HandlerFunc(func(_ context.Context, req admission.Request) admission.Response {
			var pod corev1.Pod
			if err := dec.Decode(req, &pod); err != nil {
				return admission.Errored(http.StatusBadRequest, err)
			}
			plan, err := in.PlanPod(req.Object.Raw, req.Namespace, nil)
			if err != nil {
				return admission.Denied(err.Error())
			}
			plan.Apply(&pod)
			mutated, err := json.Marshal(&pod)
			if err != nil {
				return admission.Errored(http.StatusInternalServerError, err)
			}
			return admission.PatchResponseFromRaw(req.Object.Raw, mutated).WithWarnings(plan.Warnings...)
		})}
	case "null":
		resp := []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"x","allowed":true}}`)
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(resp)
		})
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	srv := crwebhook.NewServer(crwebhook.Options{Host: "127.0.0.1", Port: port, CertDir: certDir})
	srv.Register("/mutate-v1-pod", h)
	return srv.Start(ctx)
}
