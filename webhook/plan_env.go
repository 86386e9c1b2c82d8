package webhook

import (
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// planEnvVars computes, once per pod, the env vars targets get.
func (pl *planner) planEnvVars() {
	pl.env = make([]corev1.EnvVar, 0, len(pl.in.envVars)+1)
	for i, v := range pl.in.envVars {
		if pl.settings.Env.has(i) {
			if pl.settings.EnvPrefix != "" {
				v.Name = pl.settings.EnvPrefix + v.Name
			}
			pl.env = append(pl.env, v)
		}
	}
	pl.envWithURL = pl.env
	if pl.ambassador {
		// Into pl.env's spare capacity, which nothing else appends to.
		pl.envWithURL = append(pl.envWithURL, pl.in.apiURLFor(pl.settings))
	}
}

// planEnv adds the selected Downward-API vars (and PODMETA_API_URL) before the
// container's own, skipping any name the container already defines.
func (pl *planner) planEnv(t containerRef) {
	want := pl.envWithURL
	if t.init && !pl.in.native {
		want = pl.env // init containers run before a non-native ambassador starts
	}
	// O(len(want) × len(t.c.Env)): want has at most 16 vars, so linear in the pod.
	var missing []corev1.EnvVar
	var kept []string
	for j, w := range want {
		i := slices.IndexFunc(t.c.Env, func(e envView) bool { return e.Name == w.Name })
		switch {
		case i < 0 && len(missing) == j:
			missing = want[: j+1 : j+1] // all missing so far: share want (read only), copy nothing
		case i < 0:
			missing = append(missing, w)
		case sameEnv(t.c.Env[i], w):
			pl.note("%s %q: env %s already set as podmeta would", t.kind(), t.c.Name, w.Name)
		default:
			pl.warn(FeatureEnv, "%s %q defines env %s; kept the pod's value", t.kind(), t.c.Name, w.Name)
			kept = append(kept, w.Name)
		}
	}
	if kept != nil {
		pl.skip(SkipEnvKept, t.c.Name+" "+strings.Join(kept, ","))
	}
	if len(missing) == 0 {
		return
	}
	pl.emit(envAddition{ref: t, vars: missing})
	if pl.plan.Status.Env == nil {
		pl.plan.Status.Env = map[string][]string{}
	}
	names := make([]string, 0, len(pl.plan.Status.Env[t.c.Name])+len(missing))
	names = append(names, pl.plan.Status.Env[t.c.Name]...)
	for _, v := range missing {
		names = append(names, v.Name)
	}
	pl.plan.Status.Env[t.c.Name] = names
}

// sameEnv reports whether the pod's var is exactly what podmeta would add, so a second
// pass (or a user who wrote the same thing) is quiet.
func sameEnv(have envView, want corev1.EnvVar) bool {
	if want.ValueFrom == nil {
		// Plain values are not decoded (it keeps big pods cheap); PODMETA_API_URL is the
		// only one, and a container that has it is left alone either way.
		return have.ValueFrom == nil
	}
	h, w := have.ValueFrom, want.ValueFrom
	switch {
	case h == nil:
		return false
	case w.FieldRef != nil:
		return h.FieldRef != nil && h.FieldRef.FieldPath == w.FieldRef.FieldPath &&
			(h.FieldRef.APIVersion == "" || h.FieldRef.APIVersion == "v1")
	default:
		return h.ResourceFieldRef != nil && h.ResourceFieldRef.Resource == w.ResourceFieldRef.Resource &&
			sameDivisor(h.ResourceFieldRef.Divisor, w.ResourceFieldRef.Divisor)
	}
}

// sameDivisor compares the pod's divisor a with podmeta's b, where zero means 1 as in
// the kubelet. a is the pod's: compared through cmpPodQuantity, which a huge one cannot
// make costly.
func sameDivisor(a, b resource.Quantity) bool {
	if a.IsZero() {
		a = divisorOne
	}
	if b.IsZero() {
		b = divisorOne
	}
	return cmpPodQuantity(&a, b) == 0
}
