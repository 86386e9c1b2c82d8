package webhook

import (
	"encoding/json"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
)

// recordOf plans raw, applies the patch and returns the record and list it leaves.
func recordOf(t *testing.T, in *Injector, raw []byte) (Status, string, []byte) {
	t.Helper()
	plan, err := in.PlanPod(raw, "ns", nil)
	if err != nil {
		t.Fatal(err)
	}
	patched := checkPlan(t, in, raw, "ns", nil, plan)
	var pod struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(patched, &pod); err != nil {
		t.Fatal(err)
	}
	var st Status
	if err := json.Unmarshal([]byte(pod.Metadata.Annotations[AnnotationStatus]), &st); err != nil {
		t.Fatalf("record %q: %v", pod.Metadata.Annotations[AnnotationStatus], err)
	}
	return st, pod.Metadata.Annotations[AnnotationInjected], patched
}

// Finding 8: a forged podmeta.io/status was merged into the new record, which then
// claimed a native-sidecar ambassador and containers the pod does not have. The record
// now describes the pod: each earlier claim is kept only where the spec shows it.
func TestStatusForgedRecordIsNotMerged(t *testing.T) {
	in := testInjector(t)
	forged := `{"env":{"ghost":["POD_NAME"],"app":["POD_NAME","MY_OWN"]},"volume":"/etc/podinfo","mounts":["ghost","app"],` +
		`"ephemeralStorage":{"ghost":{"request":"64Mi"},"app":{"limit":"1Gi"}},"ambassador":"native-sidecar",` +
		`"created":{"pod":["initContainers","volumes"],"containers":{"ghost":["env"],"app":["env","resources.limits"]}},` +
		`"skipped":["` + strings.Repeat("x", 5000) + `"]}`
	raw := podJSON(map[string]string{AnnotationStatus: forged, AnnotationInjected: "ghost,app", AnnotationVolume: "false"},
		[]string{`{"name":"app","env":[{"name":"MY_OWN","value":"mine"}]}`}, "")
	st, injected, _ := recordOf(t, in, raw)
	got, _ := json.Marshal(st)
	t.Logf("record: %s", got)
	switch {
	case st.Ambassador != "":
		t.Errorf("claims an ambassador the pod does not have: %s", got)
	case st.Volume != "" || len(st.Mounts) != 0:
		t.Errorf("claims a volume or mounts the pod does not have: %s", got)
	case st.Env["ghost"] != nil || st.EphemeralStorage["ghost"] != nil || st.Created.Containers["ghost"] != nil:
		t.Errorf("claims a container the pod does not have: %s", got)
	case slices.Contains(st.Env["app"], "MY_OWN") || slices.Contains(st.Created.Containers["app"], createdEnv):
		t.Errorf("claims the pod's own env var: %s", got)
	case !slices.Equal(st.Env["app"], []string{"POD_NAME", "POD_NAMESPACE", "POD_UID", "POD_IP", "HOST_IP", "NODE_NAME", "SERVICE_ACCOUNT", "CONTAINER_CPU_REQUEST_MILLICORES", "CONTAINER_MEMORY_LIMIT_BYTES"}):
		t.Errorf("env of app %q: want what this pass added, once", st.Env["app"])
	case st.EphemeralStorage["app"]["limit"] != "":
		t.Errorf("claims a limit the pod does not have: %s", got)
	case slices.Contains(st.Created.Pod, "initContainers") || slices.Contains(st.Created.Pod, "volumes"):
		t.Errorf("claims it created lists the pod does not have: %s", got)
	case injected != "app":
		t.Errorf("%s = %q, want app", AnnotationInjected, injected)
	}
	for _, s := range st.Skipped {
		if len(s) > maxSkippedBytes {
			t.Errorf("skipped entry of %d bytes", len(s))
		}
	}
}

// A reinvocation (the apiserver calls podmeta again after another webhook added a
// container) keeps what the first pass added and adds the new container's, and a pass
// over a truthfully marked pod adds nothing (checkPlan's second pass).
func TestStatusReinvocationKeepsVerifiedRecord(t *testing.T) {
	in := testInjector(t, "--ambassador=true")
	raw := podJSON(nil, []string{`{"name":"app"}`}, "")
	first, _, patched := recordOf(t, in, raw)
	// Another webhook adds a container, without env or resources.
	var pod map[string]any
	if err := json.Unmarshal(patched, &pod); err != nil {
		t.Fatal(err)
	}
	spec := pod["spec"].(map[string]any)
	spec["containers"] = append(spec["containers"].([]any), map[string]any{"name": "late"})
	again, _ := json.Marshal(pod)
	second, injected, _ := recordOf(t, in, again)
	if !slices.Equal(second.Env["app"], first.Env["app"]) || len(second.Env["late"]) == 0 || second.Ambassador != first.Ambassador ||
		!slices.Equal(second.Mounts, []string{"app", "late"}) || injected != "app,late" {
		t.Errorf("first %s\nsecond %s, injected %q", first, second, injected)
	}
	if got := second.Created.Containers["late"]; !slices.Equal(got, []string{createdEnv, createdMounts, createdResources}) {
		t.Errorf("created of late %q", got)
	}
	if got := second.Created.Containers["app"]; !slices.Equal(got, first.Created.Containers["app"]) {
		t.Errorf("created of app %q, first pass %q", got, first.Created.Containers["app"])
	}
}

// The record's Created lists let the additions be removed exactly: undoing every addition
// (removing what was created, and podmeta's items from lists that existed) gives back
// the pod. This is what a later uninject relies on.
func TestStatusCreatedUndoesExactly(t *testing.T) {
	in := testInjector(t, "--ambassador=true", "--ephemeral-storage-limit=1Gi")
	raw := podJSON(map[string]string{"keep": "me"}, []string{
		`{"name":"bare"}`,
		`{"name":"some","env":[{"name":"A","value":"a"}],"resources":{"requests":{"cpu":"1"}}}`,
		`{"name":"all","env":[],"volumeMounts":[],"resources":{"requests":{},"limits":{}}}`,
	}, "")
	st, _, patched := recordOf(t, in, raw)
	var pod map[string]any
	if err := json.Unmarshal(patched, &pod); err != nil {
		t.Fatal(err)
	}
	meta, spec := pod["metadata"].(map[string]any), pod["spec"].(map[string]any)
	delete(meta["annotations"].(map[string]any), AnnotationStatus)
	delete(meta["annotations"].(map[string]any), AnnotationInjected)
	for _, f := range st.Created.Pod {
		delete(spec, f) // volumes, initContainers: podmeta's alone
	}
	if v, ok := spec["volumes"]; ok {
		t.Fatalf("volumes %v kept though the pod had none", v)
	}
	for _, c := range spec["containers"].([]any) {
		c := c.(map[string]any)
		name := c["name"].(string)
		created := st.Created.Containers[name]
		for _, f := range created {
			switch f {
			case createdRequests, createdLimits:
				delete(c["resources"].(map[string]any), strings.TrimPrefix(f, "resources."))
			default:
				delete(c, f)
			}
		}
		if env, ok := c["env"].([]any); ok && !slices.Contains(created, createdEnv) {
			c["env"] = env[len(st.Env[name]):] // podmeta's vars come first
		}
		if r, ok := c["resources"].(map[string]any); ok && !slices.Contains(created, createdResources) {
			for _, list := range []string{"requests", "limits"} {
				if l, ok := r[list].(map[string]any); ok {
					delete(l, EphemeralStorage)
				}
			}
		}
		if m, ok := c["volumeMounts"].([]any); ok && !slices.Contains(created, createdMounts) {
			c["volumeMounts"] = m[:len(m)-1]
		}
	}
	undone, _ := json.Marshal(pod)
	if !jsonpatch.Equal(undone, raw) {
		t.Errorf("undoing the record's additions:\n%s\nwant\n%s\nrecord %s", undone, raw, st)
	}
}

// The record says what this pass skipped and why, as Skip* codes, including what gives
// no admission warning (containers podmeta.io/containers leaves out).
func TestStatusSkipReasons(t *testing.T) {
	in := testInjector(t, "--ambassador=true")
	for _, c := range []struct {
		name       string
		ann        map[string]string
		containers []string
		extraSpec  string
		want       []string
	}{
		{"nothing skipped", nil, []string{`{"name":"app"}`}, "", nil},
		{"not selected", map[string]string{AnnotationContainers: "web,gone"}, []string{`{"name":"web"}`, `{"name":"a"}`, `{"name":"b"}`}, "",
			[]string{"container-missing gone", "not-selected a,b"}},
		{"own POD_IP kept", nil, []string{`{"name":"app","env":[{"name":"POD_IP","value":"1.2.3.4"},{"name":"HOST_IP","value":"x"}]}`}, "",
			[]string{"env-kept app POD_IP,HOST_IP"}},
		{"hostNetwork", nil, []string{`{"name":"app"}`}, `"hostNetwork":true,`, []string{SkipAmbassadorHostNetwork}},
		{"automount off", nil, []string{`{"name":"app"}`}, `"automountServiceAccountToken":false,`, []string{SkipAmbassadorAutomountOff}},
		{"windows", nil, []string{`{"name":"app"}`}, `"os":{"name":"windows"},`, []string{SkipAmbassadorWindows}},
		{"token volume taken", nil, []string{`{"name":"app"}`}, `"volumes":[{"name":"` + AmbassadorTokenVolumeName + `","emptyDir":{}}],`, []string{SkipAmbassadorTokenVolumeKept}},
		{"unknown annotation", map[string]string{"podmeta.io/nope": "x"}, []string{`{"name":"app"}`}, "", []string{SkipAnnotationsIgnored}},
	} {
		t.Run(c.name, func(t *testing.T) {
			st, _, _ := recordOf(t, in, podJSON(c.ann, c.containers, c.extraSpec))
			if !slices.Equal(st.Skipped, c.want) {
				t.Errorf("skipped %q, want %q", st.Skipped, c.want)
			}
		})
	}
}

// A pod's many names cannot grow the record: each entry stays within maxSkippedBytes,
// and past maxSkipped entries the rest are counted.
func TestStatusSkipReasonsBounded(t *testing.T) {
	in := testInjector(t)
	var many []string
	for i := range 300 {
		many = append(many, `{"name":"container-with-a-long-name-`+strings.Repeat("x", 20)+strconv.Itoa(i)+`","env":[{"name":"POD_IP","value":"x"}]}`)
	}
	st, _, _ := recordOf(t, in, podJSON(map[string]string{AnnotationContainers: "container-with-a-long-name-xxxxxxxxxxxxxxxxxxxx0,container-with-a-long-name-xxxxxxxxxxxxxxxxxxxx1"}, many, ""))
	// One not-selected entry for the other 298 containers, clipped, then the two
	// selected containers' kept POD_IP.
	if len(st.Skipped) != 3 || !strings.HasPrefix(st.Skipped[0], SkipNotSelected+" ") {
		t.Fatalf("%d entries: %q", len(st.Skipped), st.Skipped)
	}
	for _, s := range st.Skipped {
		if len(s) > maxSkippedBytes {
			t.Errorf("entry of %d bytes: %q", len(s), s)
		}
	}
	// Twenty containers keep their POD_IP: maxSkipped entries, then the count.
	st, _, _ = recordOf(t, in, podJSON(nil, many[:20], ""))
	if want := "and 12 more"; st.Skipped[maxSkipped] != want || !strings.HasPrefix(st.Skipped[0], SkipEnvKept+" ") {
		t.Errorf("skipped %q: want %d env-kept entries, then %q", st.Skipped, maxSkipped, want)
	}
}

// A skip reason stops being built at its bound: what it costs does not grow with the
// names it concerns (the clipped result alone would hide a megabyte built and dropped).
func TestStatusSkipReasonBuiltWithinBound(t *testing.T) {
	names := make([]string, 1000)
	for i := range names {
		names[i] = strings.Repeat("c", 1000) + strconv.Itoa(i)
	}
	pl := &planner{plan: &Plan{}}
	var before, after goruntime.MemStats
	goruntime.ReadMemStats(&before)
	pl.skip(SkipNotSelected, names...)
	goruntime.ReadMemStats(&after)
	if built := after.TotalAlloc - before.TotalAlloc; built > 64<<10 {
		t.Errorf("%d KiB allocated for one skip reason of 1,000 names of 1 KB (bound %d bytes)", built>>10, maxSkippedBytes)
	}
	if len(pl.plan.skips) != 1 || len(pl.plan.skips[0]) > maxSkippedBytes || !strings.HasPrefix(pl.plan.skips[0], SkipNotSelected+" ccc") {
		t.Errorf("skips %q", pl.plan.skips)
	}
}

// VerifyRecord gives what of a pod's record its spec still shows: what doctor reports
// for an existing pod.
func TestVerifyRecord(t *testing.T) {
	in := testInjector(t)
	_, _, patched := recordOf(t, in, podJSON(map[string]string{AnnotationContainers: "app"}, []string{`{"name":"app"}`, `{"name":"side"}`}, ""))
	recorded, verified, ok, err := in.VerifyRecord(patched, nil)
	if err != nil || !ok {
		t.Fatalf("ok %v, err %v", ok, err)
	}
	if recorded.String() != verified.String() || !slices.Equal(recorded.Skipped, []string{"not-selected side"}) {
		t.Errorf("an untouched pod: recorded %s, verified %s", recorded, verified)
	}
	// Someone removed the env vars podmeta added.
	var pod map[string]any
	if err := json.Unmarshal(patched, &pod); err != nil {
		t.Fatal(err)
	}
	delete(pod["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any), "env")
	edited, _ := json.Marshal(pod)
	recorded, verified, _, err = in.VerifyRecord(edited, nil)
	if err != nil || len(recorded.Env["app"]) == 0 || len(verified.Env["app"]) != 0 || verified.Volume == "" {
		t.Errorf("env removed: recorded %s, verified %s (%v)", recorded, verified, err)
	}
	if _, _, ok, err := in.VerifyRecord(podJSON(nil, []string{`{"name":"app"}`}, ""), nil); ok || err != nil {
		t.Errorf("a pod without a record: ok %v, err %v", ok, err)
	}
}
