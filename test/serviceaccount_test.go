package test

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/webhook"
)

// A ServiceAccount with automountServiceAccountToken: false is an administrator's
// hardening. The real ServiceAccount admission plugin honours it by adding no token
// volume, and leaves the pod's own field unset; podmeta sees only that, and must not
// mount a token for the ambassador. With automount on, the same pod gets the sidecar.
func TestAmbassadorHonoursServiceAccountAutomountOff(t *testing.T) {
	ns := namespace(t, nil, nil)
	for _, c := range []struct {
		automount  bool
		ambassador bool
	}{{automount: false, ambassador: false}, {automount: true, ambassador: true}} {
		name := "automount-off"
		if c.automount {
			name = "automount-on"
		}
		t.Run(name, func(t *testing.T) {
			sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}, AutomountServiceAccountToken: &c.automount}
			if _, err := cp.Clientset.CoreV1().ServiceAccounts(ns).Create(t.Context(), sa, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			cs, rec := clientWithWarnings(t)
			p := pod(name, map[string]string{webhook.AnnotationAmbassador: "true"})
			p.Spec.ServiceAccountName = name
			got, err := cs.CoreV1().Pods(ns).Create(t.Context(), p, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if p.Spec.AutomountServiceAccountToken != nil || got.Spec.AutomountServiceAccountToken != nil {
				t.Fatalf("the pod's own automountServiceAccountToken is set (%v): this test is about the ServiceAccount's", got.Spec.AutomountServiceAccountToken)
			}
			var names []string
			for _, list := range [][]corev1.Container{got.Spec.InitContainers, got.Spec.Containers} {
				for _, c := range list {
					names = append(names, c.Name)
				}
			}
			if has := slices.Contains(names, webhook.AmbassadorContainerName); has != c.ambassador {
				t.Errorf("ambassador in the stored pod = %v, want %v (containers %v)", has, c.ambassador, names)
			}
			warned := slices.ContainsFunc(rec.all(), func(w string) bool { return strings.Contains(w, "no service-account token volume") })
			if warned == c.ambassador {
				t.Errorf("warning about the ServiceAccount's opt-out = %v, want %v: %q", warned, !c.ambassador, rec.all())
			}
			if !injected(got) {
				t.Error("the pod got no status record: the rest of the injection must still happen")
			}
		})
	}
}
