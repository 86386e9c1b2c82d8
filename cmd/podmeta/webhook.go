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
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilversion "k8s.io/apimachinery/pkg/util/version"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/events"
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

// WorkloadsPath is where the ValidatingWebhookConfiguration podmeta-workloads sends
// workload reviews (webhook/workloads.go).
const WorkloadsPath = "/validate-workloads"

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
	bodyReadTimeout  time.Duration
	bodyBudget       int64
	largeBodyBytes   int64
	largeBodyRate    int64
	namespaceWait    time.Duration
	maxNSWaits       int
	clientCAFile     string
	gracefulShutdown time.Duration
	shutdownDelay    time.Duration
	workloads        string
	workloadPods     string
	ownerEventWindow time.Duration
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
		bodyReadTimeout:  webhook.DefaultReadTimeout,
		bodyBudget:       webhook.DefaultBodyBudget,
		largeBodyBytes:   webhook.DefaultLargeBodyBytes,
		largeBodyRate:    webhook.DefaultLargeBodyRate,
		namespaceWait:    time.Second,
		maxNSWaits:       defaultMaxNamespaceWaits,
		gracefulShutdown: 30 * time.Second,
		shutdownDelay:    5 * time.Second,
		workloads:        webhook.WorkloadValidationDeny,
		ownerEventWindow: webhook.DefaultEventWindow,
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
	fs.IntVar(&o.maxInFlight, "max-in-flight", o.maxInFlight, "admission requests decided at once, counted once their body is read; more are refused at once with 429 (0: no limit)")
	fs.DurationVar(&o.bodyReadTimeout, "body-read-timeout", o.bodyReadTimeout, "how long a request may take to send its body once its headers are read; slower ones get 408 and their connection is closed")
	fs.Int64Var(&o.largeBodyBytes, "large-body-bytes", o.largeBodyBytes, "bodies larger than this are decided one at a time and share --large-body-rate; one that would wait over 2 s for its turn gets 429 before it is read")
	fs.Int64Var(&o.largeBodyRate, "large-body-rate", o.largeBodyRate, "bytes a second of bodies over --large-body-bytes, in all (decoding costs ~40 ms of CPU per MB)")
	fs.Int64Var(&o.bodyBudget, "body-budget-bytes", o.bodyBudget, "bytes buffered for request bodies by all requests at once (at least --max-request-bytes); a request that would go over it gets 429")
	fs.DurationVar(&o.namespaceWait, "namespace-wait", o.namespaceWait, "how long a request waits for a namespace the cache has not seen yet (one shared wait per name)")
	fs.IntVar(&o.maxNSWaits, "max-namespace-waits", o.maxNSWaits, "requests waiting at once for namespaces the cache has not seen; more go on at once without namespace defaults (logged, counted in podmeta_namespace_lookups_total{result=\"overflow\"})")
	fs.StringVar(&o.clientCAFile, "client-ca-file", o.clientCAFile, "PEM CA bundle: when set, every client (the kube-apiserver) must present a certificate it signed; the file is re-read when it changes (default: no client authentication)")
	fs.DurationVar(&o.gracefulShutdown, "graceful-shutdown-timeout", o.gracefulShutdown, "how long in-flight requests may finish once the server stops")
	fs.DurationVar(&o.shutdownDelay, "shutdown-delay", o.shutdownDelay, "after SIGTERM, keep serving this long, not ready and closing each connection after its response, so the apiserver moves to other replicas before this one stops")
	fs.StringVar(&o.workloads, "workload-validation", o.workloads, "what "+WorkloadsPath+" does with a workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob) whose pods podmeta would deny: deny (on CREATE and on an UPDATE that changes the template's podmeta annotations; a warning otherwise, and for objects a controller created), warn, or off (docs/workloads.md)")
	fs.StringVar(&o.workloadPods, "workload-pod-selector", o.workloadPods, "a label selector (kubectl's -l syntax) for the terms the webhook configuration's objectSelector has beyond the opt-out label, such as the chart's webhook.objectSelectorExpressions: a workload whose template labels it does not select has pods podmeta never sees, so it is not checked (default: every template)")
	fs.DurationVar(&o.ownerEventWindow, "owner-event-window", o.ownerEventWindow, "record an Event on the owner (ReplicaSet, Job, …) of a pod injected with warnings or skipped, at most one per owner and reason per this window (0: no Events)")
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
	if err := errors.Join(namingFlags(o.cfg.Validate()), o.certs.Validate(), o.validate()); err != nil {
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
	var clientCAs *clientCAs
	if o.clientCAFile != "" {
		if clientCAs, err = loadClientCAs(o.clientCAFile, log.WithName("client-ca")); err != nil {
			return err
		}
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
		}, clientCAs.tlsOption},
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
	if clientCAs != nil {
		if err := mgr.Add(clientCAs); err != nil {
			return err
		}
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

	namespaces := newNamespaceLookup(cacheGetter(mgr.GetCache()), &synced, o.namespaceWait, o.maxNSWaits,
		newNamespaceLookupMetric(crmetrics.Registry), log.WithName("namespaces"))
	handler := &webhook.Handler{
		Injector:       injector,
		Namespaces:     namespaces.Annotations,
		Metrics:        webhook.NewMetrics(crmetrics.Registry),
		Reads:          webhook.NewReadMetrics(crmetrics.Registry),
		Log:            log.WithName("admission"),
		MaxBodyBytes:   o.maxBodyBytes,
		MaxInFlight:    o.maxInFlight,
		ReadTimeout:    o.bodyReadTimeout,
		BodyBudget:     o.bodyBudget,
		LargeBodyBytes: o.largeBodyBytes,
		LargeBodyRate:  o.largeBodyRate,
	}
	if o.ownerEventWindow > 0 {
		if handler.Events, err = ownerEvents(mgr, restCfg, scheme, o.ownerEventWindow); err != nil {
			return err
		}
	}
	// GetWebhookServer also adds the server to the manager.
	mgr.GetWebhookServer().Register(MutatePath, handler)
	// Workload reviews share the pod path's body bounds, budget and in-flight slots.
	var workloadPods labels.Selector // nil: every template
	if o.workloadPods != "" {
		workloadPods, _ = labels.Parse(o.workloadPods) // validated with the other flags
	}
	mgr.GetWebhookServer().Register(WorkloadsPath, handler.Workloads(&webhook.WorkloadValidator{
		Injector:    injector,
		Mode:        o.workloads,
		Namespaces:  namespaces.Metadata,
		Metrics:     webhook.NewWorkloadMetrics(crmetrics.Registry),
		PodSelector: workloadPods,
	}))
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
	log.Info("starting podmeta", "version", version, "port", o.port, "nativeSidecars", native, "namespace", o.namespace, "certMode", o.certs.EffectiveMode(),
		"clientAuth", o.clientCAFile != "", "workloadValidation", o.workloads, "ownerEventWindow", o.ownerEventWindow, "maxInFlight", o.maxInFlight, "maxRequestBytes", o.maxBodyBytes, "bodyBudgetBytes", o.bodyBudget, "bodyReadTimeout", o.bodyReadTimeout, "largeBodyBytes", o.largeBodyBytes, "largeBodyRate", o.largeBodyRate)
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

// validate checks the server's own flags.
func (o *serverOptions) validate() error {
	var errs []error
	switch {
	case o.maxBodyBytes <= 0:
		errs = append(errs, fmt.Errorf("--max-request-bytes=%d: must be positive", o.maxBodyBytes))
	case o.largeBodyBytes <= 0 || o.largeBodyRate <= 0:
		errs = append(errs, fmt.Errorf("--large-body-bytes=%d and --large-body-rate=%d: must be positive", o.largeBodyBytes, o.largeBodyRate))
	case o.bodyBudget < o.maxBodyBytes:
		errs = append(errs, fmt.Errorf("--body-budget-bytes=%d is below --max-request-bytes=%d: the largest review could never be read", o.bodyBudget, o.maxBodyBytes))
	}
	if o.bodyReadTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--body-read-timeout=%s: must be positive", o.bodyReadTimeout))
	}
	if !slices.Contains(webhook.WorkloadValidationModes, o.workloads) {
		errs = append(errs, fmt.Errorf("--workload-validation=%q: valid values are %s", o.workloads, strings.Join(webhook.WorkloadValidationModes, ", ")))
	}
	if _, err := labels.Parse(o.workloadPods); err != nil {
		errs = append(errs, fmt.Errorf("--workload-pod-selector=%q: %w; want a label selector such as tier,team in (a,b),!legacy", o.workloadPods, err))
	}
	if o.ownerEventWindow < 0 {
		errs = append(errs, fmt.Errorf("--owner-event-window=%s: must not be negative (0: no Events)", o.ownerEventWindow))
	}
	if o.maxInFlight < 0 || o.maxNSWaits < 0 {
		errs = append(errs, errors.New("--max-in-flight and --max-namespace-waits must not be negative"))
	}
	return errors.Join(errs...)
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

// ownerEvents records Events with client-go's events.k8s.io/v1 machinery, run by the
// manager: the broadcaster sends them (its own series aggregation on top of
// OwnerEvents' bound) until the manager stops.
func ownerEvents(mgr ctrl.Manager, restCfg *rest.Config, scheme *runtime.Scheme, window time.Duration) (*webhook.OwnerEvents, error) {
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("client for events: %w", err)
	}
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: cs.EventsV1()})
	e := &webhook.OwnerEvents{
		Recorder: broadcaster.NewRecorder(scheme, "podmeta"),
		Window:   window,
		Results:  webhook.NewOwnerEventsMetric(crmetrics.Registry),
	}
	if err := mgr.Add(runnable(func(ctx context.Context) error {
		if err := broadcaster.StartRecordingToSinkWithContext(ctx); err != nil {
			return err
		}
		defer broadcaster.Shutdown()
		return e.Start(ctx)
	})); err != nil {
		return nil, err
	}
	return e, nil
}

// runnable adapts a function to manager.Runnable: per-replica work (the cache-synced
// flag, the owner Events of this replica's requests), started on every replica, leader
// or not.
type runnable func(context.Context) error

func (r runnable) Start(ctx context.Context) error { return r(ctx) }

// NeedLeaderElection is false: without it the manager would start the function only on
// the leader once leader election is on, and the other replicas' Events would be dropped.
func (runnable) NeedLeaderElection() bool { return false }

func ptrTo[T any](v T) *T { return &v }
