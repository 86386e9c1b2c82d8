package test

import (
	"bufio"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/webhook"
)

// scrape reads podmeta's /metrics into series -> value.
func scrape(t *testing.T) map[string]float64 {
	t.Helper()
	text, err := podmeta.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// 10. /metrics counts exactly what happened: a known set of admissions moves podmeta's
// counters and controller-runtime's request counter by exactly their number.
func TestMetrics(t *testing.T) {
	ns := namespace(t, nil, nil)
	skippedNS := namespace(t, nil, map[string]string{webhook.AnnotationInject: "false"})
	before := scrape(t)

	create(t, ns, pod("plain", nil))
	create(t, ns, pod("conflict", nil, corev1.Container{Name: "app", Image: "app:1", Env: []corev1.EnvVar{{Name: "POD_IP", Value: "x"}}}))
	if _, err := cp.Clientset.CoreV1().Pods(ns).Create(t.Context(), pod("denied", map[string]string{webhook.AnnotationVolume: "maybe"}), metav1.CreateOptions{}); err == nil {
		t.Fatal("invalid pod admitted")
	}
	create(t, skippedNS, pod("skipped", nil))

	after := scrape(t)
	for series, want := range map[string]float64{
		`podmeta_admissions_total{result="injected"}`:                                    2,
		`podmeta_admissions_total{result="denied"}`:                                      1,
		`podmeta_admissions_total{result="skipped"}`:                                     1,
		`podmeta_admissions_total{result="error"}`:                                       0,
		`podmeta_injections_total{feature="env"}`:                                        2,
		`podmeta_injections_total{feature="volume"}`:                                     2,
		`podmeta_injections_total{feature="mount"}`:                                      2,
		`podmeta_injections_total{feature="ephemeral-storage"}`:                          2,
		`podmeta_injections_total{feature="ambassador"}`:                                 0,
		`podmeta_conflicts_total{feature="env"}`:                                         1,
		`controller_runtime_webhook_requests_total{code="200",webhook="/mutate-v1-pod"}`: 4,
	} {
		if _, ok := after[series]; !ok {
			t.Errorf("series %s missing from /metrics", series)
			continue
		}
		if got := after[series] - before[series]; got != want {
			t.Errorf("%s moved by %v, want %v", series, got, want)
		}
	}
	if _, ok := after[`controller_runtime_webhook_latency_seconds_count{webhook="/mutate-v1-pod"}`]; !ok {
		t.Error("controller-runtime's webhook latency histogram is missing")
	}
}
