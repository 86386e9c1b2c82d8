package policy

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/webhook"
)

// HelmTemplatePath is where HelmTemplate's output lives, from the repository root
// (`make chart-policy` writes it; TestHelmTemplateCurrent fails when it is stale).
const HelmTemplatePath = "charts/podmeta/templates/policy-mode.yaml"

// helmValue maps each annotation default to the chart value that sets it.
var helmValue = map[string]string{
	webhook.AnnotationInject:                  ".Values.defaults.inject",
	webhook.AnnotationEnv:                     ".Values.defaults.env",
	webhook.AnnotationEnvPrefix:               ".Values.defaults.envPrefix",
	webhook.AnnotationVolume:                  ".Values.defaults.volume",
	webhook.AnnotationVolumePath:              ".Values.defaults.volumePath",
	webhook.AnnotationEphemeralStorageRequest: ".Values.defaults.ephemeralStorageRequest",
	webhook.AnnotationEphemeralStorageLimit:   ".Values.defaults.ephemeralStorageLimit",
	webhook.AnnotationAmbassador:              ".Values.defaults.ambassador",
	webhook.AnnotationAmbassadorMode:          ".Values.defaults.ambassadorMode",
	webhook.AnnotationAmbassadorPort:          ".Values.defaults.ambassadorPort",
}

// Sentinels HelmTemplate renders with, where a chart value goes.
const (
	helmSentinel      = "pmhelmsentinel"
	helmSentinelImage = helmSentinel + ".invalid/ambassador:" + helmSentinel
	helmSentinelNS    = helmSentinel + "-ns"
	helmSentinelLabel = helmSentinel + "-label"
	helmSentinelExpr  = helmSentinel + "-expr"
)

// HelmTemplate is the chart's template of policy mode (mode: policy): the four objects
// Render gives, as JSON documents, with each chart value that Render reads written as
// the Helm expression of that value, so that the chart installs exactly what
// `podmeta policy` renders from the same values (TestChartPolicyMatchesRender). Render
// runs with sentinel values where the chart's go: the annotation defaults, the
// ambassador's image, pull policy, resources and privileged paths, the excluded
// namespaces; the chart adds its labels and webhook.namespaceSelectorExpressions and
// objectSelectorExpressions, as its webhook configuration does.
func HelmTemplate() ([]byte, error) {
	// Rendered twice, without and with --ambassador-allow-privileged-paths: the one
	// place they differ becomes an if.
	var docs [2]string
	for i, allow := range []bool{false, true} {
		cfg := webhook.DefaultConfig()
		cfg.AmbassadorImage = helmSentinelImage
		cfg.ExcludedNamespaces = []string{helmSentinelNS}
		cfg.AmbassadorAllowPrivilegedPaths = allow
		cfg.NativeSidecar = webhook.NativeSidecarAlways
		if err := cfg.Validate(); err != nil {
			return nil, err
		}
		defaults := webhook.PolicyAnnotationDefaults(&cfg)
		for k := range helmValue {
			if _, ok := defaults[k]; !ok {
				return nil, fmt.Errorf("policy: the engine has no default of %s", k)
			}
			defaults[k] = helmSentinel + "-default-" + k + "~"
		}
		pols, err := (&renderer{cfg: cfg, defaults: defaults}).render()
		if err != nil {
			return nil, err
		}
		var b strings.Builder
		for _, o := range pols.Objects() {
			o.SetLabels(map[string]string{helmSentinelLabel: "x"})
			for _, m := range matchResources(o) {
				m.NamespaceSelector.MatchExpressions = append(m.NamespaceSelector.MatchExpressions, metav1.LabelSelectorRequirement{Key: helmSentinelExpr + "-ns", Operator: metav1.LabelSelectorOpExists})
				m.ObjectSelector.MatchExpressions = append(m.ObjectSelector.MatchExpressions, metav1.LabelSelectorRequirement{Key: helmSentinelExpr + "-pod", Operator: metav1.LabelSelectorOpExists})
			}
			j, err := json.Marshal(o)
			if err != nil {
				return nil, err
			}
			b.WriteString("---\n")
			b.Write(j)
			b.WriteString("\n")
		}
		docs[i] = b.String()
	}
	// Each place a chart value goes becomes a placeholder without braces, then every
	// brace run of the CEL is escaped, then each placeholder becomes its action.
	var actions []string
	action := func(a string) string {
		actions = append(actions, a)
		return fmt.Sprintf("%s-action-%d.", helmSentinel, len(actions)-1)
	}
	prefix, without, with, suffix := differ(docs[0], docs[1])
	out := prefix + action("{{ if .Values.ambassador.allowPrivilegedPaths }}") + with + action("{{ else }}") + without + action("{{ end }}") + suffix

	// The ambassador's resources and pull policy, as template.literal renders them.
	cfg := webhook.DefaultConfig()
	cfg.AmbassadorImage = helmSentinelImage
	amb, err := webhook.PolicyAmbassador(cfg, true, sentPort, sentMode)
	if err != nil {
		return nil, err
	}
	var missing []string
	replace := func(old, new string) {
		if !strings.Contains(out, old) {
			missing = append(missing, old)
		}
		out = strings.ReplaceAll(out, old, action(new))
	}
	replace(jsonText(`"resources": dyn(`+mutationTemplate.literal(amb.Resources)+`)`), jsonText(`"resources": dyn(`)+`{{ include "podmeta.policyResources" . }}`+jsonText(`)`))
	replace(jsonText(`"imagePullPolicy": dyn(`+mutationTemplate.literal(string(amb.ImagePullPolicy))+`)`), jsonText(`"imagePullPolicy": dyn("`)+`{{ .Values.ambassador.image.pullPolicy }}`+jsonText(`")`))
	replace(helmSentinelImage, `{{ include "podmeta.image" (list .Values.ambassador.image .) }}`)
	for _, k := range webhook.PolicyAnnotationKeys() {
		if v, ok := helmValue[k]; ok {
			replace(helmSentinel+"-default-"+k+"~", "{{ "+v+" }}")
		}
	}
	replace(`["`+helmSentinelNS+`"]`, `{{ include "podmeta.excludedNamespaces" . }}`)
	replace(`{"`+helmSentinelLabel+`":"x"}`, `{{ include "podmeta.labels" . | fromYaml | toJson }}`)
	replace(`,{"key":"`+helmSentinelExpr+`-ns","operator":"Exists"}`, `{{ range .Values.webhook.namespaceSelectorExpressions }},{{ toJson . }}{{ end }}`)
	replace(`,{"key":"`+helmSentinelExpr+`-pod","operator":"Exists"}`, `{{ range .Values.webhook.objectSelectorExpressions }},{{ toJson . }}{{ end }}`)
	if len(missing) > 0 {
		return nil, fmt.Errorf("policy: HelmTemplate found no %q in the rendered policies", missing)
	}
	out = escapeBraces(out)
	for i := len(actions) - 1; i >= 0; i-- {
		out = strings.ReplaceAll(out, fmt.Sprintf("%s-action-%d.", helmSentinel, i), actions[i])
	}
	if strings.Contains(out, helmSentinel) {
		return nil, fmt.Errorf("policy: a sentinel is left in the chart's template")
	}
	head := "{{- /*\n" +
		"Generated by `make chart-policy` (policy.HelmTemplate) from what `podmeta policy` renders: do\n" +
		"not edit. TestHelmTemplateCurrent fails when it is stale, and TestChartPolicyMatchesRender\n" +
		"when helm template gives other policies than podmeta policy with the same values.\n" +
		"*/}}\n" +
		"{{- if eq (include \"podmeta.webhookMode\" .) \"false\" }}\n"
	return []byte(head + out + "{{- end }}\n"), nil
}

// matchResources are o's match constraints, if o is a policy.
func matchResources(o Object) []*admissionregistrationv1.MatchResources {
	switch p := o.(type) {
	case *admissionregistrationv1.MutatingAdmissionPolicy:
		return []*admissionregistrationv1.MatchResources{p.Spec.MatchConstraints}
	case *admissionregistrationv1.ValidatingAdmissionPolicy:
		return []*admissionregistrationv1.MatchResources{p.Spec.MatchConstraints}
	}
	return nil
}

// jsonText is s as it appears inside a JSON string.
func jsonText(s string) string {
	b, _ := json.Marshal(s)
	return string(b[1 : len(b)-1])
}

// differ splits a and b into their common prefix, the parts that differ and their common
// suffix.
func differ(a, b string) (prefix, amid, bmid, suffix string) {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	j := 0
	for j < len(a)-i && j < len(b)-i && a[len(a)-1-j] == b[len(b)-1-j] {
		j++
	}
	return a[:i], a[i : len(a)-j], b[i : len(b)-j], a[len(a)-j:]
}

var braces = regexp.MustCompile(`[{}]{2,}`)

// escapeBraces writes every run of two or more braces, which Helm could read as the
// start or end of an action, as a string action printing it.
func escapeBraces(s string) string {
	return braces.ReplaceAllStringFunc(s, func(run string) string { return `{{ "` + run + `" }}` })
}
