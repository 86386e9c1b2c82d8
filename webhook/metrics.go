package webhook

import "github.com/prometheus/client_golang/prometheus"

// Results of an admission, the label of podmeta_admissions_total.
const (
	ResultInjected = "injected" // the pod got a non-empty patch
	ResultSkipped  = "skipped"  // allowed untouched: opted out, excluded, nothing to add, not a pod CREATE
	ResultDenied   = "denied"   // an invalid podmeta annotation or port clash
	ResultError    = "error"    // a malformed request or a bug; never a panic
)

// Features, the label of podmeta_injections_total and podmeta_conflicts_total.
const (
	FeatureEnv        = "env"
	FeatureVolume     = "volume"
	FeatureMount      = "mount"
	FeatureStorage    = "ephemeral-storage"
	FeatureAmbassador = "ambassador"
	FeatureConfig     = "config" // unknown annotation keys, unknown container names
)

// Metrics are podmeta's own Prometheus series. controller-runtime's webhook server adds
// its request counters and latency histograms around the handler.
type Metrics struct {
	Admissions *prometheus.CounterVec
	Injections *prometheus.CounterVec
	Conflicts  *prometheus.CounterVec
	Shed       prometheus.Counter
}

// NewMetrics creates the series and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmeta_admissions_total",
			Help: "Pod admission requests answered, by result: injected, skipped, denied, error.",
		}, []string{"result"}),
		Injections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmeta_injections_total",
			Help: "Pods that got a feature injected, by feature: env, volume, mount, ephemeral-storage, ambassador.",
		}, []string{"feature"}),
		Conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmeta_conflicts_total",
			Help: "Things podmeta kept as the pod defined them, or could not add, by feature.",
		}, []string{"feature"}),
		Shed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podmeta_shed_total",
			Help: "Admission requests refused with HTTP 429 because --max-in-flight were already being served (also counted as result=error).",
		}),
	}
	// Series exist from the start, so rate() and alerts see zeros rather than nothing.
	for _, r := range []string{ResultInjected, ResultSkipped, ResultDenied, ResultError} {
		m.Admissions.WithLabelValues(r)
	}
	for _, f := range []string{FeatureEnv, FeatureVolume, FeatureMount, FeatureStorage, FeatureAmbassador} {
		m.Injections.WithLabelValues(f)
		m.Conflicts.WithLabelValues(f)
	}
	m.Conflicts.WithLabelValues(FeatureConfig)
	if reg != nil {
		reg.MustRegister(m.Admissions, m.Injections, m.Conflicts, m.Shed)
	}
	return m
}

// observe counts one planned pod.
func (m *Metrics) observe(p *Plan) {
	st := p.Status
	for _, f := range [...]struct {
		name     string
		injected bool
	}{
		{FeatureEnv, len(st.Env) > 0}, {FeatureVolume, st.Volume != ""}, {FeatureMount, len(st.Mounts) > 0},
		{FeatureStorage, len(st.EphemeralStorage) > 0}, {FeatureAmbassador, st.Ambassador != ""},
	} {
		if f.injected {
			m.Injections.WithLabelValues(f.name).Inc()
		}
	}
	for feature, n := range p.Conflicts {
		m.Conflicts.WithLabelValues(feature).Add(float64(n))
	}
}

// NewCounterVec creates a counter of name partitioned by label, with a series for each
// of values from the start (rate() and alerts see zeros rather than nothing), and
// registers it with reg (nil: not registered).
func NewCounterVec(reg prometheus.Registerer, name, help, label string, values ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{label})
	for _, v := range values {
		c.WithLabelValues(v)
	}
	if reg != nil {
		reg.MustRegister(c)
	}
	return c
}

// WorkloadMetrics count workload reviews (workloads.go). A review refused before a
// decision (a bad request, the body bounds) is counted with the pods' as result=error.
type WorkloadMetrics struct {
	Reviews *prometheus.CounterVec
}

// NewWorkloadMetrics creates podmeta_workload_reviews_total and registers it with reg
// (nil: not registered).
func NewWorkloadMetrics(reg prometheus.Registerer) *WorkloadMetrics {
	return &WorkloadMetrics{Reviews: NewCounterVec(reg, "podmeta_workload_reviews_total",
		"Workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob) reviews answered, by result: allowed, warned, denied, skipped (--workload-validation=off, an excluded namespace, not a workload).",
		"result", WorkloadAllowed, WorkloadWarned, WorkloadDenied, WorkloadSkipped)}
}

func (m *WorkloadMetrics) count(result string) {
	if m != nil {
		m.Reviews.WithLabelValues(result).Inc()
	}
}
