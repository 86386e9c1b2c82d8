package policy

import (
	"bytes"
	"os"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"sigs.k8s.io/yaml"
)

// Pods injected in policy mode pass podmeta's safety net (config/safety-net, as
// shipped): the status record policy mode writes is one the net accepts, for every
// golden input the policies admit.
func TestSafetyNetAcceptsPolicyMode(t *testing.T) {
	b, err := os.ReadFile("../config/safety-net/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	doc, _, _ := bytes.Cut(b, []byte("\n---\n"))
	var net admissionregistrationv1.ValidatingAdmissionPolicy
	if err := yaml.UnmarshalStrict(doc, &net); err != nil {
		t.Fatal(err)
	}
	if net.Kind != "ValidatingAdmissionPolicy" || len(net.Spec.Validations) == 0 {
		t.Fatalf("config/safety-net/policy.yaml starts with %s %s", net.Kind, net.Name)
	}
	checked := 0
	for _, c := range readGoldens(t) {
		if len(c.pod.Spec.Containers) == 0 {
			continue // the apiserver cannot create it
		}
		pols := rendered(t, c.flags)
		got, denied, err := admit(t, pols, admitted(c.pod), c.ns)
		if err != nil {
			t.Fatalf("%s: %s", c.name, short(err))
		}
		if denied != "" {
			continue
		}
		msg, err := validate(t, &net, got, c.ns)
		if err != nil {
			t.Fatalf("%s: safety net: %s", c.name, short(err))
		}
		if msg != "" {
			t.Errorf("%s: the safety net flags a pod injected in policy mode: %s", c.name, msg)
		}
		checked++
	}
	if checked < 30 {
		t.Errorf("only %d pods checked", checked)
	}
}
