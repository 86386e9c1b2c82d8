package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/policy"
)

func TestPolicyRenders(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := runPolicy(context.Background(), []string{"--env=all", "--env-prefix=K8S_", "--excluded-namespaces=kube-system,ops"}, streams{nil, &out, &errOut}); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	docs := strings.Split(out.String(), "\n---\n")
	if len(docs) != 4 {
		t.Fatalf("%d documents, want 4", len(docs))
	}
	var mp admissionregistrationv1.MutatingAdmissionPolicy
	if err := yaml.UnmarshalStrict([]byte(docs[2]), &mp); err != nil {
		t.Fatal(err)
	}
	if mp.Kind != "MutatingAdmissionPolicy" || len(mp.Spec.Mutations) != 1 {
		t.Fatalf("third document is not the MAP: %s", docs[2][:200])
	}
	// The flags reach the policy: the operator defaults and the excluded namespaces.
	var settings string
	for _, v := range mp.Spec.Variables {
		if v.Name == "s" {
			settings = v.Expression
		}
	}
	if !strings.Contains(settings, `variables.na["podmeta.io/env"] : "all")`) {
		t.Errorf("--env=all is not the policy's default of podmeta.io/env: %s", settings)
	}
	if !strings.Contains(settings, `variables.na["podmeta.io/env-prefix"] : "K8S_")`) {
		t.Errorf("--env-prefix=K8S_ is not the policy's default of podmeta.io/env-prefix: %s", settings)
	}
	sel := mp.Spec.MatchConstraints.NamespaceSelector.MatchExpressions
	if len(sel) != 2 || strings.Join(sel[1].Values, ",") != "kube-system,ops" {
		t.Errorf("excluded namespaces: %+v", sel)
	}
}

func TestPolicyExplain(t *testing.T) {
	var out bytes.Buffer
	if err := runPolicy(context.Background(), []string{"--explain"}, streams{nil, &out, &out}); err != nil {
		t.Fatal(err)
	}
	for _, d := range policy.Differences() {
		if !strings.Contains(out.String(), d.What) || !strings.Contains(out.String(), d.Test) {
			t.Errorf("--explain does not list %q", d.What)
		}
	}
}

func TestPolicyInvalidFlags(t *testing.T) {
	var out bytes.Buffer
	err := runPolicy(context.Background(), []string{"--env=NOPE"}, streams{nil, &out, &out})
	if err == nil || !strings.Contains(err.Error(), "NOPE") {
		t.Errorf("--env=NOPE: %v", err)
	}
	if out.Len() != 0 && strings.Contains(out.String(), "MutatingAdmissionPolicy") {
		t.Error("rendered despite an invalid flag")
	}
}

// --costs prints every expression's cost on each reference pod, the MAP's largest being
// its mutation, against the apiserver's limits.
func TestPolicyCosts(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := runPolicy(context.Background(), []string{"--costs"}, streams{nil, &out, &errOut}); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	text := out.String()
	for _, want := range []string{"1000000 per expression", "| podmeta | mutations[0] |", "| podmeta | variables.status |", "| podmeta-annotations | validations[0] |", "| podmeta | **total** |", "200 containers"} {
		if !strings.Contains(text, want) {
			t.Errorf("--costs output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "MutatingAdmissionPolicy") {
		t.Error("--costs rendered the policies too")
	}
}
