package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// The tests of security issue 16's engine bounds. Those above the line "Tests of the
// bounds' own parts" use only what the engine had before the bounds, and each failed on
// it (run in a worktree of the commit before them); those below test the new parts.

// podJSON builds a pod with annotations and containers (each a JSON object).
func podJSON(annotations map[string]string, containers []string, extraSpec string) []byte {
	meta := `{"name":"p"`
	if annotations != nil {
		ann, _ := json.Marshal(annotations)
		meta += `,"annotations":` + string(ann)
	}
	return []byte(`{"metadata":` + meta + `},"spec":{` + extraSpec + `"containers":[` + strings.Join(containers, ",") + `]}}`)
}

// within runs f and fails the test if it does not return within d: the bounds are about
// answers that never came. (On a failure f keeps running until the test binary exits.)
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s: no answer within %s", what, d)
	}
}

// Finding 1: a quantity with a huge exponent, in an annotation (pod or namespace) or an
// operator flag, hung the request (it was compared with 64Mi as a number of 2×10⁹ digits,
// or ParseQuantity itself never returned). It is denied, on its text, at once.
func TestBoundsHugeQuantity(t *testing.T) {
	in := testInjector(t)
	const above = "above the largest quantity podmeta accepts (8Ei - 1 byte, 9223372036854775807); want a positive quantity such as 64Mi or 1Gi, or none"
	const below = "below the smallest quantity podmeta accepts (1n); want a positive quantity such as 64Mi or 1Gi, or none"
	one := []string{`{"name":"app"}`}
	for _, c := range []struct{ value, reason string }{
		{"1e2147483647", above},
		{"1e10000000", above},
		{"12345678901234567890e2147483647", above}, // ParseQuantity itself never returns
		{"1e2147483648", above},                    // ParseQuantity wraps it to 1e-2147483648
		{"1e99999999999999999999", above},          // beyond int64
		{"9Ei", above},                             // ParseQuantity caps it at 8Ei - 1
		{"9223372036854775808", above},
		{"1e-2147483647", below}, // ParseQuantity itself never returns
		{"1e-10", below},
	} {
		for _, where := range []string{sourcePod, sourceNamespace} {
			var pod []byte
			var nsAnn map[string]string
			if where == sourcePod {
				pod = podJSON(map[string]string{AnnotationEphemeralStorageLimit: c.value}, one, "")
			} else {
				pod, nsAnn = podJSON(nil, one, ""), map[string]string{AnnotationEphemeralStorageLimit: c.value}
			}
			var err error
			within(t, 5*time.Second, where+" annotation "+c.value, func() { _, err = in.PlanPod(pod, "ns", nsAnn) })
			want := fmt.Sprintf("%s annotation %s=%q is invalid: %s", where, AnnotationEphemeralStorageLimit, c.value, c.reason)
			if !IsDenied(err) || err.Error() != want {
				t.Errorf("%s annotation %s:\ngot  %v\nwant %s", where, c.value, err, want)
			}
		}
	}
	// The largest accepted, to the byte.
	for _, v := range []string{"9223372036854775807", "8Ei", "1n", "0.000000001"} {
		if _, err := in.PlanPod(podJSON(map[string]string{AnnotationEphemeralStorageRequest: v, AnnotationEphemeralStorageLimit: "none"}, one, ""), "ns", nil); v != "8Ei" && err != nil {
			t.Errorf("%s: %v", v, err)
		}
	}
	// Operator flags: the same bound, and Config.Validate answers at once.
	for _, flag := range []string{"requests.cpu=1e2147483647,limits.cpu=1", "requests.memory=1e-2147483647"} {
		cfg := DefaultConfig()
		cfg.AmbassadorResources = flag
		var err error
		within(t, 5*time.Second, "--ambassador-resources="+flag, func() { _, err = NewInjector(cfg, true) })
		if err == nil || !strings.Contains(err.Error(), "podmeta accepts") {
			t.Errorf("--ambassador-resources=%s: %v", flag, err)
		}
	}
}

// The pod's own quantities are compared with podmeta's defaults, and the apiserver sends
// "1e2147483647" on as "10e2147483646": that comparison hung as well.
func TestBoundsHugeQuantityInPod(t *testing.T) {
	in := testInjector(t, "--ephemeral-storage-limit=1Gi")
	huge := `"10e2147483646"`
	for name, container := range map[string]string{
		"limit":   `{"name":"app","resources":{"limits":{"ephemeral-storage":` + huge + `}}}`,
		"request": `{"name":"app","resources":{"requests":{"ephemeral-storage":` + huge + `}}}`,
		"divisor": `{"name":"app","env":[{"name":"CONTAINER_MEMORY_LIMIT_BYTES","valueFrom":{"resourceFieldRef":{"resource":"limits.memory","divisor":` + huge + `}}}]}`,
	} {
		raw := podJSON(nil, []string{container}, "")
		var plan *Plan
		var err error
		within(t, 5*time.Second, name, func() { plan, err = in.PlanPod(raw, "ns", nil) })
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		checkPlan(t, in, raw, "ns", nil, plan)
		if name == "request" && !slices.ContainsFunc(plan.Warnings, func(w string) bool { return strings.Contains(w, "above the default limit 1Gi") }) {
			t.Errorf("request above the limit not warned about: %q", plan.Warnings)
		}
	}
}

// Finding 2: a repeated container name multiplied the patch (and made a pod the
// apiserver rejects: POD_NAME twice, the mount twice).
func TestBoundsRepeatedListItems(t *testing.T) {
	in := testInjector(t)
	raw := podJSON(map[string]string{AnnotationContainers: "web, web,api,web,api", AnnotationEnv: "POD_NAME,pod_name,POD_NAME"},
		[]string{`{"name":"web"}`, `{"name":"api"}`, `{"name":"other"}`}, "")
	plan, err := in.PlanPod(raw, "ns", nil)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, in, raw, "ns", nil, plan)
	if got := plan.Status.Mounts; !slices.Equal(got, []string{"web", "api"}) {
		t.Errorf("mounts %q, want [web api]", got)
	}
	if got := plan.Status.Env["web"]; !slices.Equal(got, []string{"POD_NAME"}) {
		t.Errorf("env of web %q, want [POD_NAME]", got)
	}
	want := []string{
		"podmeta: pod annotation podmeta.io/containers lists web, api more than once; used each once",
		"podmeta: pod annotation podmeta.io/env lists pod_name more than once; used each once",
	}
	if !slices.Equal(plan.Warnings, want) {
		t.Errorf("warnings\n%q\nwant\n%q", plan.Warnings, want)
	}

	// 20,000 repeats in a 29 KiB pod made a 49 MB patch: now a denial, at once.
	raw = podJSON(map[string]string{AnnotationContainers: strings.Repeat("web,", 20000) + "web"}, []string{`{"name":"web"}`}, "")
	_, err = in.PlanPod(raw, "ns", nil)
	if !IsDenied(err) || !strings.Contains(err.Error(), "podmeta.io/containers") || len(err.Error()) > 500 {
		t.Errorf("20,000 repeats: %v", err)
	}
}

// hugePod is a pod of n bare containers.
func hugePod(n int, annotations map[string]string) []byte {
	containers := make([]string, n)
	for i := range containers {
		containers[i] = fmt.Sprintf(`{"name":"c%d"}`, i)
	}
	return podJSON(annotations, containers, "")
}

// Finding 3: the answer grew with the pod without bound (22,510 containers: a 67 MB
// patch, 412 MB RSS). A patch over 1 MiB is denied, and the handler holds little more.
func TestBoundsPatchSize(t *testing.T) {
	h, _ := testHandler(t)
	pod := hugePod(20000, nil)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var s served
	within(t, 20*time.Second, "20,000 containers", func() { s = serve(t, h, "application/json", withPod(string(pod))) })
	runtime.ReadMemStats(&after)
	if s.code != 200 {
		t.Fatalf("HTTP %d: %.300s", s.code, s.body)
	}
	t.Logf("pod %d bytes, answer %d bytes, %d MiB allocated", len(pod), len(s.body), (after.TotalAlloc-before.TotalAlloc)>>20)
	st := s.review.Response.Status
	if s.review.Response.Allowed || st == nil || !strings.Contains(st.Message, "above the bound of 1048576 bytes") || !strings.Contains(st.Message, "ns/p") {
		t.Errorf("allowed=%v, status %+v, answer of %d bytes", s.review.Response.Allowed, st, len(s.body))
	}
	if len(s.body) > 64<<10 {
		t.Errorf("answer of %d bytes", len(s.body))
	}
	// What the request allocated in all, decoding included (the pod is 300 KB): the old
	// engine allocated over 300 MiB here.
	if got := after.TotalAlloc - before.TotalAlloc; got > 128<<20 {
		t.Errorf("the request allocated %d MiB", got>>20)
	}

	// The same pod, offline (podmeta inject): the same denial.
	_, err := h.Injector.PlanPod(pod, "ns", nil)
	if !IsDenied(err) || err.Error() != st.Message {
		t.Errorf("PlanPod: %v\nwant the webhook's %s", err, st.Message)
	}
}

// Finding 3, warnings: 1 MiB of unknown podmeta.io/ keys gave 17 MB of warnings, and
// every container with a conflict one more.
func TestBoundsWarnings(t *testing.T) {
	h, _ := testHandler(t)
	unknown := map[string]string{}
	for i := 0; len(unknown)*40 < 1<<20; i++ {
		unknown[fmt.Sprintf("podmeta.io/unknown-key-number-%d", i)] = "x"
	}
	conflicting := make([]string, 300)
	for i := range conflicting {
		conflicting[i] = fmt.Sprintf(`{"name":"c%d","env":[{"name":"POD_NAME","value":"mine"}]}`, i)
	}
	for name, pod := range map[string][]byte{
		"unknown keys": podJSON(unknown, []string{`{"name":"app"}`}, ""),
		"conflicts":    podJSON(map[string]string{AnnotationEnv: "POD_NAME", AnnotationVolume: "false"}, conflicting, ""),
	} {
		s := serve(t, h, "application/json", withPod(string(pod)))
		if s.code != 200 || !s.review.Response.Allowed {
			t.Fatalf("%s: HTTP %d: %.300s", name, s.code, s.body)
		}
		ws := s.review.Response.Warnings
		total := 0
		for _, w := range ws {
			total += len(w)
		}
		t.Logf("%s: %d warnings, %d bytes; answer %d bytes", name, len(ws), total, len(s.body))
		if len(ws) > 21 || total > 4096+100 {
			t.Errorf("%s: %d warnings of %d bytes in all", name, len(ws), total)
		}
		if name == "conflicts" && ws[len(ws)-1] != "podmeta: 280 more warnings not shown" {
			t.Errorf("last warning %q", ws[len(ws)-1])
		}
	}
}

// metadataVolumePod is a pod of n containers whose podmeta volume has items items
// already, none of them a container's.
func metadataVolumePod(n, items int) []byte {
	list := make([]string, items)
	for i := range list {
		list[i] = fmt.Sprintf(`{"path":"x/%d","fieldRef":{"fieldPath":"metadata.name"}}`, i)
	}
	containers := make([]string, n)
	for i := range containers {
		containers[i] = fmt.Sprintf(`{"name":"c%d","volumeMounts":[{"name":"podmeta","mountPath":"/etc/podinfo"}]}`, i)
	}
	return podJSON(map[string]string{AnnotationEnv: "none", AnnotationEphemeralStorageRequest: "none"}, containers,
		`"volumes":[{"name":"podmeta","downwardAPI":{"items":[`+strings.Join(list, ",")+`]}}],`)
}

// BenchmarkPlanLargeVolume plans a pod of n containers whose podmeta volume has 20n
// items: planning the volume scanned every item per container (4,000 × 80,000: 2.4 s).
// n and 2n show it linear. (The plan ends in a denial: its patch is over 1 MiB.)
func BenchmarkPlanLargeVolume(b *testing.B) {
	in := testInjector(b)
	for _, n := range []int{2000, 4000} {
		raw := metadataVolumePod(n, 20*n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = in.PlanPod(raw, "ns", nil)
			}
		})
	}
}

// The benchmark as a test, against a baseline measured in the same run: the same pod
// with its items in a volume podmeta does not complete (same bytes to decode, no items
// to match). Linear planning costs about the baseline; the old engine's scan per
// container took 3.5 s here, 70 times its baseline.
func TestBoundsPlanLargeVolumeLinear(t *testing.T) {
	in := testInjector(t)
	raw := metadataVolumePod(4000, 80000)
	other := bytes.Replace(raw, []byte(`"volumes":[{"name":"podmeta"`), []byte(`"volumes":[{"name":"others"`), 1)
	best := func(pod []byte) time.Duration {
		d := time.Duration(1 << 62)
		for range 3 {
			start := time.Now()
			_, _ = in.PlanPod(pod, "ns", nil)
			d = min(d, time.Since(start))
		}
		return d
	}
	var planned, baseline time.Duration
	within(t, 60*time.Second, "4,000 containers × 80,000 items", func() { planned, baseline = best(raw), best(other) })
	t.Logf("planned in %s; the same pod without podmeta's volume: %s", planned, baseline)
	if planned > 5*baseline {
		t.Errorf("planning the podmeta volume took %.1f× the baseline: not linear", float64(planned)/float64(baseline))
	}
}

// ---- Tests of the bounds' own parts ----

func TestCheckQuantityText(t *testing.T) {
	for _, c := range []struct{ text, want string }{
		{"64Mi", ""}, {"1Gi", ""}, {"1", ""}, {"0", ""}, {"+1.5e3", ""}, {".5", ""}, {"1.", ""}, {"1.G", ""},
		{"9223372036854775807", ""}, {"9223372036854775807.0", ""}, {"8Ei", reasonQuantityAbove},
		{"7.99Ei", ""}, {"9.223372036854775807E", ""}, {"9.2233720368547758071E", reasonQuantityAbove},
		{"1n", ""}, {"0.9n", reasonQuantityBelow}, {"0.000000001", ""}, {"0.0000000009999", reasonQuantityBelow},
		{"1e18", ""}, {"1e19", reasonQuantityAbove}, {"1e-9", ""}, {"1e-10", reasonQuantityBelow},
		{"-1e2147483647", reasonQuantityAbove}, {"1E2147483647", reasonQuantityAbove}, {"1e+2147483647", reasonQuantityAbove},
		{"0e2147483647", ""}, {"0.0000e-99999999999", ""},
		{"", reasonQuantitySyntax}, {"e5", reasonQuantitySyntax}, {"1e", reasonQuantitySyntax}, {"1e+", reasonQuantitySyntax},
		{"1K", reasonQuantitySyntax}, {"1 Gi", reasonQuantitySyntax}, {"1e5Ki", reasonQuantitySyntax}, {"1e1.5", reasonQuantitySyntax},
		{"1" + strings.Repeat("0", 10000) + "e-10000", ""}, {"0." + strings.Repeat("0", 10000) + "1e10010", ""},
	} {
		if got := checkQuantityText(c.text); got != c.want {
			t.Errorf("checkQuantityText(%.40q) = %q, want %q", c.text, got, c.want)
		}
	}
}

func TestCapWarnings(t *testing.T) {
	var ws []string
	for i := range 50 {
		ws = append(ws, fmt.Sprintf("podmeta: warning %d", i))
	}
	got := capWarnings(slices.Clone(ws))
	if len(got) != MaxWarnings+1 || got[MaxWarnings] != "podmeta: 30 more warnings not shown" || !slices.Equal(got[:MaxWarnings], ws[:MaxWarnings]) {
		t.Errorf("%q", got)
	}
	long := []string{strings.Repeat("é", 3000), strings.Repeat("x", 900), strings.Repeat("y", 900), strings.Repeat("z", 900), strings.Repeat("w", 900)}
	got = capWarnings(slices.Clone(long))
	total := 0
	for _, w := range got {
		total += len(w)
	}
	if len(got[0]) > MaxWarningItemBytes || !strings.HasSuffix(got[0], "…(clipped)") || total > MaxWarningBytes+64 || got[len(got)-1] != "podmeta: 1 more warnings not shown" {
		t.Errorf("%d warnings, %d bytes: %.80q", len(got), total, got)
	}
	if few := []string{"a", "b"}; !slices.Equal(capWarnings(few), []string{"a", "b"}) {
		t.Error("a short list changed")
	}
}

// The writer stops as soon as it passes the bound: it never holds more than the bound
// and one addition, and its denial is what the Injector's check says.
func TestPatchWriterStopsAtBound(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AmbassadorImage = testImage
	cfg.MaxPatchBytes = 64 << 10
	in, err := NewInjector(cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	unbounded := testInjector(t)
	for _, n := range []int{20, 40, 200} {
		raw := hugePod(n, nil)
		plan, err := unbounded.PlanPod(raw, "ns", nil)
		if err != nil {
			t.Fatal(err)
		}
		full, _ := plan.PatchJSON()
		var out bytes.Buffer
		werr := plan.writePatchJSON(&out, &patchBound{fast: unbounded.patch.fast, limit: cfg.MaxPatchBytes})
		_, perr := in.PlanPod(raw, "ns", nil)
		what := fmt.Sprintf("%d containers: patch %d bytes, writer stopped at %d (%v), Injector: %v", n, len(full), out.Len(), werr, perr)
		t.Log(what)
		switch {
		case len(full) <= cfg.MaxPatchBytes:
			if werr != nil || perr != nil || out.Len() != len(full) {
				t.Errorf("under the bound: %s", what)
			}
		default:
			if !IsDenied(werr) || !IsDenied(perr) || out.Len() > cfg.MaxPatchBytes+8<<10 {
				t.Errorf("over the bound: %s", what)
			}
			var tooLarge *PatchTooLargeError
			if !errors.As(perr, &tooLarge) {
				t.Fatalf("denial %v is not a *PatchTooLargeError", perr)
			}
			want := fmt.Sprintf("pod ns/p: the JSON patch podmeta would add is at least %d bytes, above the bound of 65536 bytes (--max-patch-bytes), "+
				"which keeps the stored pod under etcd's 1.5 MiB request limit; the likely cause is too many containers (the pod has %d) or env vars to inject into: "+
				`name fewer containers in podmeta.io/containers, turn features off (podmeta.io/env: none, podmeta.io/volume: "false"), or opt the pod out with podmeta.io/inject: "false"`,
				tooLarge.AtLeast, n)
			if perr.Error() != want {
				t.Errorf("denial\n%s\nwant\n%s", perr, want)
			}
		}
	}
	cfg.MaxPatchBytes = -1
	if cfg.Validate() == nil {
		t.Error("a negative MaxPatchBytes is valid")
	}
}

func TestAnnotationValueBound(t *testing.T) {
	in := testInjector(t)
	for key, value := range map[string]string{
		AnnotationVolumePath: "/" + strings.Repeat("a", MaxAnnotationValueBytes),
		AnnotationEnv:        strings.Repeat("POD_NAME,", MaxEnvListItems) + "POD_NAME",
	} {
		_, err := in.PlanPod(podJSON(map[string]string{key: value}, []string{`{"name":"app"}`}, ""), "ns", nil)
		if !IsDenied(err) || !strings.Contains(err.Error(), "podmeta accepts") {
			t.Errorf("%s of %d bytes: %v", key, len(value), err)
		}
	}
	// The longest containers list: 256 names of 63 characters.
	names := make([]string, MaxContainersListItems)
	for i := range names {
		names[i] = fmt.Sprintf("%063d", i)
	}
	if _, err := in.PlanPod(podJSON(map[string]string{AnnotationContainers: strings.Join(names, ",")}, []string{`{"name":"app"}`}, ""), "ns", nil); err != nil {
		t.Errorf("256 names of 63 characters: %v", err)
	}
	// Unknown keys: one warning, naming a few.
	plan, err := in.PlanPod(podJSON(map[string]string{"podmeta.io/a": "", "podmeta.io/b": "", "podmeta.io/c": "", "podmeta.io/d": "", "podmeta.io/e": "", "podmeta.io/f": "", "podmeta.io/g": ""}, []string{`{"name":"app"}`}, ""), "ns", nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := "podmeta: unknown pod annotations podmeta.io/a, podmeta.io/b, podmeta.io/c, podmeta.io/d, podmeta.io/e and 2 more ignored; known keys: " + knownAnnotations; !slices.Equal(plan.Warnings, []string{want}) {
		t.Errorf("%q", plan.Warnings)
	}
}
