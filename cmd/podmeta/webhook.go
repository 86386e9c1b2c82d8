package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilversion "k8s.io/apimachinery/pkg/util/version"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/podmeta/podmeta/certs"
	"github.com/podmeta/podmeta/webhook"
)

// MutatePath is where the webhook configuration sends pod admissions.
const MutatePath = "/mutate-v1-pod"

// serverOptions are the webhook server's flags; the injection defaults are webhook.Config's.
type serverOptions struct {
	kubeconfig       string
	namespace        string
	host             string
	port             int
	metricsAddr      string
	probeAddr        string
	maxBodyBytes     int64
	maxInFlight      int
	namespaceWait    time.Duration
	gracefulShutdown time.Duration
	shutdownDelay    time.Duration
	zap              zap.Options
	cfg              webhook.Config
	certs            certs.Config
}

func defaultServerOptions() *serverOptions {
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "podmeta-system"
	}
	return &serverOptions{
		namespace:        ns,
		port:             9443,
		metricsAddr:      ":8080",
		probeAddr:        ":8081",
		maxBodyBytes:     webhook.DefaultMaxBodyBytes,
		maxInFlight:      100,
		namespaceWait:    time.Second,
		gracefulShutdown: 30 * time.Second,
		shutdownDelay:    5 * time.Second,
		cfg:              webhook.DefaultConfig(),
		certs:            certs.DefaultConfig(),
	}
}

func (o *serverOptions) addFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.kubeconfig, "kubeconfig", o.kubeconfig, "kubeconfig file (default: $KUBECONFIG, then in-cluster)")
	fs.StringVar(&o.namespace, "namespace", o.namespace, "podmeta's own namespace, never mutated (default $POD_NAMESPACE)")
	fs.StringVar(&o.host, "host", o.host, "address the webhook server binds (default: all)")
	fs.IntVar(&o.port, "port", o.port, "webhook server HTTPS port")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", o.metricsAddr, "Prometheus /metrics address; 0 disables")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", o.probeAddr, "/healthz and /readyz address")
	fs.Int64Var(&o.maxBodyBytes, "max-request-bytes", o.maxBodyBytes, "largest AdmissionReview body accepted (413 above)")
	fs.IntVar(&o.maxInFlight, "max-in-flight", o.maxInFlight, "admission requests served at once; more are refused at once with 429 (0: no limit)")
	fs.DurationVar(&o.namespaceWait, "namespace-wait", o.namespaceWait, "how long a request waits for a namespace the cache has not seen yet")
	fs.DurationVar(&o.gracefulShutdown, "graceful-shutdown-timeout", o.gracefulShutdown, "how long in-flight requests may finish once the server stops")
	fs.DurationVar(&o.shutdownDelay, "shutdown-delay", o.shutdownDelay, "after SIGTERM, keep serving this long, not ready and closing each connection after its response, so the apiserver moves to other replicas before this one stops")
	o.zap.BindFlags(fs)
	o.cfg.AddFlags(fs)
	o.certs.AddFlags(fs)
}

func runWebhook(ctx context.Context, args []string, s streams) error {
	o := defaultServerOptions()
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	fs.SetOutput(s.err)
	o.addFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if !slices.Contains(o.cfg.ExcludedNamespaces, o.namespace) {
		o.cfg.ExcludedNamespaces = append(o.cfg.ExcludedNamespaces, o.namespace)
	}
	o.certs.Namespace = o.namespace
	if err := errors.Join(o.cfg.Validate(), o.certs.Validate()); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	o.zap.DestWriter = s.err
	log := zap.New(zap.UseFlagOptions(&o.zap))
	ctrl.SetLogger(log)

	restCfg, err := o.restConfig()
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	native, err := nativeSidecars(restCfg, o.cfg.NativeSidecar)
	if err != nil {
		return err
	}
	injector, err := webhook.NewInjector(o.cfg, native)
	if err != nil {
		return err
	}

	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return err
	}
	// The serving certificate comes from certs in every mode (self-managed, or files
	// reloaded by certwatcher), so the server's own CertDir watcher is not used.
	certSource, err := certs.New(o.certs, restCfg, crmetrics.Registry, log.WithName("certs"))
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	server := crwebhook.NewServer(crwebhook.Options{
		Host: o.host, Port: o.port,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) {
			c.GetCertificate = certSource.GetCertificate
			c.MinVersion = tls.VersionTLS12
			// HTTP/2 off: its stream multiplexing exposed servers to the "Rapid Reset" and
			// stream-cancellation CVEs (CVE-2023-44487, CVE-2023-39325), and the apiserver
			// calls webhooks over HTTP/1.1 keep-alive connections anyway.
			c.NextProtos = []string{"http/1.1"}
		}},
	})
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: o.metricsAddr},
		HealthProbeBindAddress:  o.probeAddr,
		WebhookServer:           server,
		GracefulShutdownTimeout: &o.gracefulShutdown,
		// Only namespace metadata is cached: podmeta reads annotations and nothing else.
		// It never modifies them, so reads skip the cache's deep copy.
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&metav1.PartialObjectMetadata{TypeMeta: namespaceType}: {UnsafeDisableDeepCopy: ptrTo(true)},
		}},
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	if err := mgr.Add(certSource); err != nil {
		return err
	}
	// Start the namespace informer with the manager, not at the first request.
	if _, err := mgr.GetCache().GetInformer(ctx, namespaceMeta()); err != nil {
		return fmt.Errorf("namespace informer: %w", err)
	}
	var synced atomic.Bool
	if err := mgr.Add(runnable(func(ctx context.Context) error {
		if mgr.GetCache().WaitForCacheSync(ctx) {
			synced.Store(true)
		}
		return nil
	})); err != nil {
		return err
	}

	handler := &webhook.Handler{
		Injector:     injector,
		Namespaces:   namespaceAnnotations(mgr.GetCache(), &synced, o.namespaceWait, log),
		Metrics:      webhook.NewMetrics(crmetrics.Registry),
		Log:          log.WithName("admission"),
		MaxBodyBytes: o.maxBodyBytes,
		MaxInFlight:  o.maxInFlight,
	}
	// GetWebhookServer also adds the server to the manager.
	mgr.GetWebhookServer().Register(MutatePath, handler)
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	// Ready once the serving certificate is loaded (a TLS handshake succeeds), trusted
	// by the caBundle (self-managed mode) and the namespace cache is synced, so no
	// admission runs without namespace defaults.
	if err := mgr.AddReadyzCheck("webhook", server.StartedChecker()); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("certificate", certSource.Ready); err != nil {
		return err
	}
	var draining atomic.Bool
	if err := mgr.AddReadyzCheck("not-draining", func(*http.Request) error {
		if draining.Load() {
			return errors.New("shutting down")
		}
		return nil
	}); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("namespace-cache", func(*http.Request) error {
		if !synced.Load() {
			return errors.New("namespace cache not synced")
		}
		return nil
	}); err != nil {
		return err
	}
	log.Info("starting podmeta", "version", version, "port", o.port, "nativeSidecars", native, "namespace", o.namespace, "certMode", o.certs.EffectiveMode())
	// The manager gets its own context: on SIGTERM podmeta first drains for
	// --shutdown-delay, then stops the manager, which finishes in-flight requests.
	mgrCtx, stopMgr := context.WithCancel(context.WithoutCancel(ctx))
	defer stopMgr()
	go func() {
		select {
		case <-ctx.Done():
		case <-mgrCtx.Done():
			return
		}
		log.Info("draining before shutdown", "delay", o.shutdownDelay)
		draining.Store(true)
		handler.Drain()
		select {
		case <-time.After(o.shutdownDelay):
		case <-mgrCtx.Done():
		}
		stopMgr()
	}()
	if err := mgr.Start(mgrCtx); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	log.Info("stopped")
	return nil
}

func (o *serverOptions) restConfig() (*rest.Config, error) {
	if o.kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	}
	return ctrl.GetConfig()
}

// nativeSidecars resolves --native-sidecar: for auto, asks the apiserver its version
// once at start (native sidecars are on by default from Kubernetes 1.29).
func nativeSidecars(cfg *rest.Config, mode string) (bool, error) {
	c := webhook.Config{NativeSidecar: mode}
	if mode != webhook.NativeSidecarAuto {
		return c.UseNativeSidecar(false), nil
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return false, err
	}
	info, err := dc.ServerVersion()
	if err != nil {
		return false, fmt.Errorf("ask the apiserver its version for --native-sidecar=auto: %w", err)
	}
	v, err := utilversion.ParseGeneric(info.GitVersion)
	if err != nil {
		return false, fmt.Errorf("apiserver version %q: %w", info.GitVersion, err)
	}
	return v.AtLeast(utilversion.MajorMinor(1, 29)), nil
}

var namespaceType = metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}

func namespaceMeta() *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{TypeMeta: namespaceType}
}

// namespaceAnnotations reads a namespace's annotations from the informer cache. A
// namespace the cache has not seen yet (created a moment ago) is waited for briefly —
// still no network I/O — so its defaults are not silently missed.
func namespaceAnnotations(c cache.Cache, synced *atomic.Bool, wait time.Duration, log logr.Logger) webhook.NamespaceAnnotations {
	return func(ctx context.Context, name string) map[string]string {
		deadline := time.Now().Add(wait)
		for {
			ns := namespaceMeta()
			err := c.Get(ctx, types.NamespacedName{Name: name}, ns)
			switch {
			case err == nil:
				return ns.Annotations
			case !apierrors.IsNotFound(err) && synced.Load():
				log.Error(err, "read namespace from cache", "namespace", name)
				return nil
			case time.Now().After(deadline) || ctx.Err() != nil:
				log.Info("namespace not in cache; using no namespace defaults", "namespace", name)
				return nil
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// runnable adapts a function to manager.Runnable.
type runnable func(context.Context) error

func (r runnable) Start(ctx context.Context) error { return r(ctx) }

func ptrTo[T any](v T) *T { return &v }
