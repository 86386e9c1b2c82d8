package webhook

import (
	"encoding/json"
	"flag"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestEveryFlagReachesTheEngine walks every flag Config.AddFlags binds, sets it to a value
// other than its default, and proves the engine sees the change: in the Settings the
// operator's defaults give, or in what a probe pod gets. A new flag that is bound but not
// wired into annotationSettings (or into the Injector) fails here, where it would
// otherwise be silently ignored; a new flag without a row in nonDefault fails too.
func TestEveryFlagReachesTheEngine(t *testing.T) {
	nonDefault := map[string]string{
		"inject":                            "false",
		"env":                               "all",
		"env-prefix":                        "K8S_",
		"volume":                            "false",
		"volume-path":                       "/etc/elsewhere",
		"ephemeral-storage-request":         "none",
		"ephemeral-storage-limit":           "1Gi",
		"ambassador":                        "true",
		"ambassador-mode":                   ModeReadWrite,
		"ambassador-port":                   "9000",
		"ambassador-image":                  "registry.example.com/other:1",
		"ambassador-image-pull-policy":      "Always",
		"ambassador-resources":              "requests.cpu=1m",
		"ambassador-allow-privileged-paths": "true",
		"native-sidecar":                    NativeSidecarNever,
		"excluded-namespaces":               "probe",
		"max-patch-bytes":                   "2048",
	}
	// observe is everything a Config decides: the starting Settings, and the patch (or
	// skip) of a pod that asks for the ambassador, in namespace "probe".
	observe := func(args ...string) string {
		cfg := DefaultConfig()
		cfg.AmbassadorImage = testImage
		fs := flag.NewFlagSet("probe", flag.ContinueOnError)
		cfg.AddFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		s, err := cfg.settings()
		if err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		in, err := NewInjector(cfg, cfg.UseNativeSidecar(true))
		if err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		pod := `{"metadata":{"name":"p","annotations":{"` + AnnotationAmbassador + `":"true"}},"spec":{"initContainers":[{"name":"i"}],"containers":[{"name":"c"}]}}`
		plan, err := in.PlanPod([]byte(pod), "probe", nil)
		if IsDenied(err) { // a bound (--max-patch-bytes) denies the probe: that is seen
			return "denied: " + err.Error()
		}
		if err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		patch, _ := plan.PatchJSON()
		settings, _ := json.Marshal(s)
		return string(settings) + "\n" + plan.Skipped + "\n" + string(patch)
	}
	base := observe()
	fs := flag.NewFlagSet("walk", flag.ContinueOnError)
	cfg := DefaultConfig()
	cfg.AddFlags(fs)
	fs.VisitAll(func(f *flag.Flag) {
		v, ok := nonDefault[f.Name]
		if !ok {
			t.Errorf("flag --%s has no row in nonDefault: add a valid non-default value, so this test can prove it reaches the engine", f.Name)
			return
		}
		if observe("--"+f.Name+"="+v) == base {
			t.Errorf("--%s=%s changes nothing the engine does: is it missing from annotationSettings' fromConfig or from NewInjector?", f.Name, v)
		}
	})
}

// TestChartSchemaEnvKeys keeps the chart's copy of the env key names (the pattern and the
// description of defaults.env in values.schema.json) equal to envKeys.
func TestChartSchemaEnvKeys(t *testing.T) {
	raw, err := os.ReadFile("../charts/podmeta/values.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema struct {
		Properties struct {
			Defaults struct {
				Properties struct {
					Env struct {
						Description string `json:"description"`
						Pattern     string `json:"pattern"`
					} `json:"env"`
				} `json:"properties"`
			} `json:"defaults"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatal(err)
	}
	env := schema.Properties.Defaults.Properties.Env
	if env.Pattern == "" {
		t.Fatal("values.schema.json has no properties.defaults.properties.env.pattern")
	}
	want := envSetAll.names()
	slices.Sort(want)
	upper := regexp.MustCompile(`[A-Z][A-Z0-9_]*[A-Z0-9]`)
	for what, text := range map[string]string{"pattern": env.Pattern, "description": env.Description} {
		got := slices.Compact(slices.Sorted(slices.Values(upper.FindAllString(text, -1))))
		if !slices.Equal(got, want) {
			t.Errorf("values.schema.json defaults.env %s names the keys\n%v\nthe engine's envKeys are\n%v", what, got, want)
		}
	}
	re, err := regexp.Compile(env.Pattern)
	if err != nil {
		t.Fatalf("pattern: %v", err)
	}
	for _, v := range append([]string{EnvSetDefault, EnvSetAll, EnvSetNone, strings.Join(want, ", ")}, want...) {
		if !re.MatchString(v) {
			t.Errorf("the chart's pattern rejects %q, which the engine accepts", v)
		}
	}
}
