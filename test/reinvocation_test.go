package test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/webhook"
)

// addContainerWebhook is another team's webhook: it adds a container named "late" to
// pods in namespace ns that lack one. It is registered as configName, which runs after
// "podmeta" (configurations run in name order), and is never reinvoked itself.
func addContainerWebhook(t *testing.T, ns, configName string) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var review admissionv1.AdmissionReview
		if err := json.NewDecoder(r.Body).Decode(&review); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var p corev1.Pod
		_ = json.Unmarshal(review.Request.Object.Raw, &p)
		resp := &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true}
		if !slices.ContainsFunc(p.Spec.Containers, func(c corev1.Container) bool { return c.Name == "late" }) {
			patch, _ := json.Marshal([]map[string]any{{"op": "add", "path": "/spec/containers/-", "value": corev1.Container{Name: "late", Image: "late:1"}}})
			pt := admissionv1.PatchTypeJSONPatch
			resp.Patch, resp.PatchType = patch, &pt
		}
		review.Response, review.Request = resp, nil
		_ = json.NewEncoder(w).Encode(review)
	}))
	srv.StartTLS()
	t.Cleanup(srv.Close)

	url := srv.URL + "/add"
	never, none, fail := admissionregistrationv1.NeverReinvocationPolicy, admissionregistrationv1.SideEffectClassNone, admissionregistrationv1.Fail
	cfg := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: configName},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    "add-container.example.com",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})},
			Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create}, Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}},
			SideEffects:             &none,
			FailurePolicy:           &fail,
			ReinvocationPolicy:      &never,
			AdmissionReviewVersions: []string{"v1"},
		}},
	}
	if err := cp.Client.Create(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Client.Delete(context.Background(), cfg) })
}

// 5. A webhook that runs after podmeta adds a container; the apiserver reinvokes podmeta
// (reinvocationPolicy IfNeeded) and the new container gets env and mounts, with
// nothing duplicated anywhere.
func TestReinvocation(t *testing.T) {
	ns := namespace(t, nil, nil)
	addContainerWebhook(t, ns, "zz-add-container")

	var got *corev1.Pod
	eventually(t, 10*time.Second, func(context.Context) string { // the new configuration reaches the apiserver's cache
		got = create(t, ns, pod(fmt.Sprintf("reinvoked-%d", time.Now().UnixNano()), map[string]string{webhook.AnnotationEnv: "POD_NAME,NODE_NAME"}))
		if len(got.Spec.Containers) < 2 {
			return "no container added yet"
		}
		return ""
	})
	for _, c := range got.Spec.Containers {
		if names := envNames(c); !slices.Equal(names, []string{"POD_NAME", "NODE_NAME"}) {
			t.Errorf("container %s env = %v, want [POD_NAME NODE_NAME] once", c.Name, names)
		}
		mounts := 0
		for _, m := range c.VolumeMounts {
			if m.Name == webhook.VolumeName {
				mounts++
			}
		}
		if mounts != 1 {
			t.Errorf("container %s mounts the metadata volume %d times", c.Name, mounts)
		}
	}
	vols := 0
	for _, v := range got.Spec.Volumes {
		if v.Name == webhook.VolumeName {
			vols++
			if !slices.ContainsFunc(v.DownwardAPI.Items, func(i corev1.DownwardAPIVolumeFile) bool { return i.Path == "containers/late/cpu_request_millicores" }) {
				t.Errorf("metadata volume has no files for the late container: %+v", v.DownwardAPI.Items)
			}
		}
	}
	if vols != 1 {
		t.Errorf("%d metadata volumes", vols)
	}
}
