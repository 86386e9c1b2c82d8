package webhook

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Settings is what one pod asked for, after config < namespace annotations < pod
// annotations.
type Settings struct {
	Inject     bool
	Env        envSet
	EnvPrefix  string
	Containers []string // nil: every container and init container
	Volume     bool
	VolumePath string
	// StorageRequest and StorageLimit are nil for "none".
	StorageRequest *resource.Quantity
	StorageLimit   *resource.Quantity
	Ambassador     bool
	AmbassadorMode string
	AmbassadorPort int
}

// AmbassadorHealthPort is the ambassador's second port: the next one up, or the one
// below for 65535, so it can never equal the proxy port.
func (s *Settings) AmbassadorHealthPort() int { return healthPort(s.AmbassadorPort) }

// AnnotationError is a podmeta annotation (or operator flag) with a value podmeta cannot
// use. Its message names where the value came from, the key, the value and the valid
// choices, because it is what a pod author reads when the pod is denied.
type AnnotationError struct {
	Source string // "pod", "namespace" or "operator config"
	Key    string
	Value  string
	Reason string
}

func (e *AnnotationError) Error() string {
	return fmt.Sprintf("%s annotation %s=%q is invalid: %s", e.Source, e.Key, clip(e.Value), e.Reason)
}

// clip keeps error messages readable when a value is huge.
func clip(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + fmt.Sprintf("…(%d bytes)", len(s))
}

// Annotation sources, as named in error messages.
const (
	sourceConfig    = "operator config"
	sourceNamespace = "namespace"
	sourcePod       = "pod"
)

// annotationSetting is one podmeta.io/ annotation: how its value is parsed into
// Settings, and which Config field gives its default. Both live in one row so that a new
// annotation cannot forget its operator default (TestEveryFlagReachesTheEngine proves
// every flag does something).
type annotationSetting struct {
	// parse sets the value into Settings. It returns the reason a value is invalid, which
	// AnnotationError wraps with the key and source.
	parse func(s *Settings, v string) string
	// fromConfig is the operator's default as annotation text; nil when the annotation
	// has no flag (podmeta.io/containers names a pod's own containers).
	fromConfig func(c *Config) string
	// list, for a comma list, is how many items it may have (repeats counted) and
	// whether items compare regardless of case; overlay bounds and deduplicates it before
	// parse sees it.
	list *listBound
}

// listBound is how a list annotation is bounded and deduplicated.
type listBound struct {
	maxItems   int
	foldedCase bool // items repeat regardless of case (env keys), or only exactly
}

var annotationSettings = map[string]annotationSetting{
	AnnotationInject: {
		func(s *Settings, v string) string { return parseBool(&s.Inject, v) },
		func(c *Config) string { return strconv.FormatBool(c.Inject) }, nil},
	AnnotationEnv:        {parseEnv, func(c *Config) string { return c.Env }, &listBound{MaxEnvListItems, true}},
	AnnotationEnvPrefix:  {parseEnvPrefix, func(c *Config) string { return c.EnvPrefix }, nil},
	AnnotationContainers: {parseContainers, nil, &listBound{MaxContainersListItems, false}},
	AnnotationVolume: {
		func(s *Settings, v string) string { return parseBool(&s.Volume, v) },
		func(c *Config) string { return strconv.FormatBool(c.Volume) }, nil},
	AnnotationVolumePath: {parseVolumePath, func(c *Config) string { return c.VolumePath }, nil},
	AnnotationEphemeralStorageRequest: {
		func(s *Settings, v string) string { return parseStorage(&s.StorageRequest, v) },
		func(c *Config) string { return c.EphemeralStorageRequest }, nil},
	AnnotationEphemeralStorageLimit: {
		func(s *Settings, v string) string { return parseStorage(&s.StorageLimit, v) },
		func(c *Config) string { return c.EphemeralStorageLimit }, nil},
	AnnotationAmbassador: {
		func(s *Settings, v string) string { return parseBool(&s.Ambassador, v) },
		func(c *Config) string { return strconv.FormatBool(c.Ambassador) }, nil},
	AnnotationAmbassadorMode: {parseMode, func(c *Config) string { return c.AmbassadorMode }, nil},
	AnnotationAmbassadorPort: {parsePort, func(c *Config) string { return strconv.Itoa(c.AmbassadorPort) }, nil},
}

// knownAnnotations lists every key annotationSettings understands, for "unknown
// annotation" warnings.
var knownAnnotations = func() string {
	keys := make([]string, 0, len(annotationSettings))
	for k := range annotationSettings {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return strings.Join(keys, ", ")
}()

// settings turns the operator config into the starting Settings, through the same
// parsers as annotations, so a flag and an annotation can never disagree about what is
// valid.
func (c *Config) settings() (Settings, error) {
	var s Settings
	defaults := make(map[string]string, len(annotationSettings))
	for k, a := range annotationSettings {
		if a.fromConfig != nil {
			defaults[k] = a.fromConfig(c)
		}
	}
	_, err := s.overlay(sourceConfig, defaults)
	if err == nil {
		err = s.check()
	}
	return s, err
}

// overlay layers one source's podmeta annotations over s. It returns warnings for podmeta
// keys it does not know (a typo should be loud, but a key from a newer podmeta must not
// break pods: one warning per source, however many keys) and for repeated list items,
// and an error for every invalid value, or value over its bound (bounds.go).
func (s *Settings) overlay(source string, annotations map[string]string) (warnings []string, err error) {
	var errs []error
	var unknown []string
	for k, v := range annotations {
		if !strings.HasPrefix(k, Prefix) {
			continue
		}
		setting, ok := annotationSettings[k]
		if !ok {
			if k != AnnotationStatus && k != AnnotationInjected {
				unknown = append(unknown, k)
			}
			continue
		}
		invalid := func(reason string) {
			errs = append(errs, &AnnotationError{Source: source, Key: k, Value: v, Reason: reason})
		}
		if len(v) > MaxAnnotationValueBytes {
			invalid(fmt.Sprintf("%d bytes, above the %d podmeta accepts", len(v), MaxAnnotationValueBytes))
			continue
		}
		parsed := v
		if setting.list != nil {
			var repeats []string
			var reason string
			if parsed, repeats, reason = setting.list.dedupe(v); reason != "" {
				invalid(reason)
				continue
			}
			if len(repeats) > 0 {
				warnings = append(warnings, fmt.Sprintf("podmeta: %s annotation %s lists %s more than once; used each once", source, k, nameSome(repeats)))
			}
		}
		if reason := setting.parse(s, parsed); reason != "" {
			invalid(reason)
		}
	}
	if len(errs) > 1 {
		// Map order is random; a stable message is easier to read and to test.
		slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	}
	switch slices.Sort(unknown); len(unknown) {
	case 0:
	case 1:
		warnings = append(warnings, fmt.Sprintf("podmeta: unknown %s annotation %s ignored; known keys: %s", source, clip(unknown[0]), knownAnnotations))
	default:
		warnings = append(warnings, fmt.Sprintf("podmeta: unknown %s annotations %s ignored; known keys: %s", source, nameSome(unknown), knownAnnotations))
	}
	slices.Sort(warnings)
	return warnings, errors.Join(errs...)
}

// dedupe bounds a list annotation's items and drops repeated ones: it returns the value
// to parse (v itself when nothing repeats), the repeated items, or why v is invalid.
func (b *listBound) dedupe(v string) (parsed string, repeats []string, reason string) {
	items := splitList(v)
	if len(items) > b.maxItems {
		return "", nil, fmt.Sprintf("%d items, above the %d podmeta accepts", len(items), b.maxItems)
	}
	if len(items) < 2 {
		return v, nil, ""
	}
	seen := make(map[string]int, len(items)) // times seen, by the item's key
	unique := items[:0:0]
	for _, it := range items {
		key := it
		if b.foldedCase {
			key = strings.ToLower(it)
		}
		switch seen[key]++; seen[key] {
		case 1:
			unique = append(unique, it)
		case 2:
			repeats = append(repeats, it)
		}
	}
	if repeats == nil {
		return v, nil, ""
	}
	return strings.Join(unique, ","), repeats, ""
}

// check validates what only makes sense across keys.
func (s *Settings) check() error {
	if s.StorageRequest != nil && s.StorageLimit != nil && s.StorageRequest.Cmp(*s.StorageLimit) > 0 {
		return fmt.Errorf("%s=%s is above %s=%s: a request can never exceed its limit",
			AnnotationEphemeralStorageRequest, s.StorageRequest, AnnotationEphemeralStorageLimit, s.StorageLimit)
	}
	return nil
}

func norm(v string) string { return strings.ToLower(strings.TrimSpace(v)) }

func parseBool(dst *bool, v string) string {
	switch norm(v) {
	case "true":
		*dst = true
	case "false":
		*dst = false
	default:
		return "valid values are true, false"
	}
	return ""
}

var validEnv = "valid values are default, all, none, or a comma list of " + strings.Join(envSetAll.names(), ", ")

func parseEnv(s *Settings, v string) string {
	if norm(v) == EnvSetNone {
		s.Env = 0
		return ""
	}
	var set envSet
	items := splitList(v)
	if len(items) == 0 {
		return "empty; " + validEnv
	}
	for _, item := range items {
		switch strings.ToLower(item) {
		case EnvSetDefault:
			set |= envSetDefault
			continue
		case EnvSetAll:
			set |= envSetAll
			continue
		}
		i := slices.IndexFunc(envKeys, func(k envKey) bool { return strings.EqualFold(k.name, item) })
		if i < 0 {
			return fmt.Sprintf("unknown key %q; %s", clip(item), validEnv)
		}
		set |= 1 << i
	}
	s.Env = set
	return ""
}

var cIdentifierPrefix = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func parseEnvPrefix(s *Settings, v string) string {
	v = strings.TrimSpace(v)
	if v != "" && (len(v) > 64 || !cIdentifierPrefix.MatchString(v)) {
		return "must be empty or a C identifier prefix of at most 64 characters (letters, digits and _, not starting with a digit), e.g. K8S_"
	}
	s.EnvPrefix = v
	return ""
}

func parseContainers(s *Settings, v string) string {
	names := splitList(v)
	for _, n := range names {
		if errs := validation.IsDNS1123Label(n); len(errs) > 0 {
			return fmt.Sprintf("container name %q: %s; want a comma list of container names", clip(n), errs[0])
		}
	}
	s.Containers = names
	return ""
}

func parseVolumePath(s *Settings, v string) string {
	v = strings.TrimSpace(v)
	if !path.IsAbs(v) || path.Clean(v) != v || v == "/" || strings.Contains(v, ":") || len(v) > 1024 {
		return "must be a clean absolute path other than / without ':', e.g. " + DefaultVolumePath
	}
	s.VolumePath = v
	return ""
}

func parseStorage(dst **resource.Quantity, v string) string {
	if norm(v) == "none" {
		*dst = nil
		return ""
	}
	const want = "want a positive quantity such as 64Mi or 1Gi, or none"
	v = strings.TrimSpace(v)
	switch reason := checkQuantityText(v); {
	case strings.HasPrefix(v, "-"): // negative, whatever its size: not worth parsing
		return "must be a positive quantity such as 64Mi or 1Gi, or none"
	case reason == reasonQuantitySyntax:
		return "must be a positive quantity such as 64Mi or 1Gi, or none"
	case reason != "": // out of bounds: decided on the text, before any arithmetic
		return reason + "; " + want
	}
	q, err := resource.ParseQuantity(v)
	if err != nil || q.Sign() <= 0 {
		return "must be a positive quantity such as 64Mi or 1Gi, or none"
	}
	// String caches its text inside q. Fill that cache now, before every request shares
	// the operator's q, so that formatting it later (warnings, denials) only reads.
	_ = q.String()
	*dst = &q
	return ""
}

func parseMode(s *Settings, v string) string {
	switch m := norm(v); m {
	case ModeReadOnly, ModeReadWrite:
		s.AmbassadorMode = m
		return ""
	}
	return "valid values are read-only, read-write"
}

func parsePort(s *Settings, v string) string {
	p, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || p < 1024 || p > 65535 {
		return "must be a port number from 1024 to 65535"
	}
	s.AmbassadorPort = p
	return ""
}
