package webhook

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Plan is the list of additions for one pod. It is rendered either as JSON-patch "add"
// operations (Patch, PatchJSON) or applied to a typed Pod (Apply); both follow the same
// additions in the same order, so they cannot disagree.
type Plan struct {
	// Skipped says why the pod is left alone entirely; empty when it is considered.
	Skipped string
	// Warnings are admission warnings: what the pod defined that podmeta kept, what it
	// could not inject and why.
	Warnings []string
	// Conflicts counts the warnings by feature (FeatureEnv, …), for metrics.
	Conflicts map[string]int
	// Notes say what was already in place (explain shows them; the webhook does not).
	Notes []string
	// Status is what this plan injects, as recorded in podmeta.io/status.
	Status Status

	// skips are the skip reasons (Skip* codes) this pass records in Status.Skipped, the
	// first maxSkipped of them; moreSkips counts the rest.
	skips     []string
	moreSkips int

	additions []addition
	encoder   valueEncoder // the Injector's; nil: encoding/json writes every value
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool { return len(p.additions) == 0 }

// planner decides one pod's additions from its Settings, step by step (planEnv,
// planVolume, …), each step reading the pod and appending to the plan.
type planner struct {
	in       *Injector // shared, read only
	settings *Settings // what the pod asked for
	pod      *podView
	plan     *Plan
	admitted bool // the apiserver's built-in admission has run (the webhook); false offline

	// minBytes is the plan's minPatchBytes so far; over, that it passed the patch bound:
	// planning then stops, so its work is bounded by the bound, not by the pod.
	minBytes int
	over     bool

	ambassador bool // the ambassador is (or will be) in the pod
	hasVolumes bool // spec.volumes exists, in the pod or through an earlier addition
	// env is what every target gets; envWithURL adds PODMETA_API_URL for containers that
	// can reach the ambassador.
	env, envWithURL []corev1.EnvVar
}

// build plans every feature, in the order the additions must be made.
func (pl *planner) build() error {
	if len(pl.plan.Warnings) > 0 { // the settings' own: unknown keys, repeated items
		pl.skip(SkipAnnotationsIgnored)
	}
	if len(pl.allContainers()) == 0 {
		// Nothing to inject into, and a volume or sidecar alone would be useless (and a
		// pod without a spec has no /spec to add them under): only mark the pod as seen.
		pl.planStatus()
		return nil
	}
	if err := pl.checkAmbassador(); err != nil {
		return err
	}
	pl.planEnvVars()
	targets := pl.targets()
	volumeOurs := pl.planVolume(targets)
	for _, t := range targets {
		if pl.over {
			return nil // Injector.bound denies the plan: its additions pass the bound
		}
		pl.planEnv(t)
		if volumeOurs {
			pl.planMount(t)
		}
	}
	if pl.planStorage(); pl.over {
		return nil
	}
	pl.planAmbassador()
	pl.planStatus()
	return nil
}

// allContainers lists init containers then containers, never the ambassador itself.
func (pl *planner) allContainers() []containerRef {
	var out []containerRef
	for i := range pl.pod.Spec.InitContainers {
		if c := &pl.pod.Spec.InitContainers[i]; c.Name != AmbassadorContainerName {
			out = append(out, containerRef{init: true, index: i, c: c})
		}
	}
	for i := range pl.pod.Spec.Containers {
		if c := &pl.pod.Spec.Containers[i]; c.Name != AmbassadorContainerName {
			out = append(out, containerRef{index: i, c: c})
		}
	}
	return out
}

// targets are the containers that receive env and mounts.
func (pl *planner) targets() []containerRef {
	all := pl.allContainers()
	if pl.settings.Containers == nil {
		return all
	}
	var out []containerRef
	for _, name := range pl.settings.Containers {
		i := slices.IndexFunc(all, func(r containerRef) bool { return r.c.Name == name })
		if i < 0 {
			pl.warn(FeatureConfig, "%s lists container %q, which the pod does not have", AnnotationContainers, name)
			pl.skip(SkipContainerMissing, name)
			continue
		}
		out = append(out, all[i])
	}
	var left []string // the same O(containers × names) as the lookups above, no map
	for _, r := range all {
		if !slices.Contains(pl.settings.Containers, r.c.Name) {
			left = append(left, r.c.Name)
		}
	}
	if left != nil {
		pl.skip(SkipNotSelected, left...)
	}
	return out
}

// warn records an admission warning: something the pod defined that podmeta kept, or
// could not inject.
func (pl *planner) warn(feature, format string, args ...any) {
	pl.plan.Warnings = append(pl.plan.Warnings, "podmeta: "+fmt.Sprintf(format, args...))
	if pl.plan.Conflicts == nil {
		pl.plan.Conflicts = map[string]int{}
	}
	pl.plan.Conflicts[feature]++
}

// skip records a skip reason for Status.Skipped: a Skip* code and what it concerns,
// joined with ',' (containers, env vars) and cut at maxSkippedBytes while it is built,
// so a pod's many names cost no more than the bound.
func (pl *planner) skip(code string, about ...string) {
	if len(pl.plan.skips) == maxSkipped {
		pl.plan.moreSkips++
		return
	}
	var b strings.Builder
	b.WriteString(code)
	for i, a := range about {
		if b.Len() > maxSkippedBytes {
			break
		}
		if i == 0 {
			b.WriteByte(' ')
		} else {
			b.WriteByte(',')
		}
		b.WriteString(clipAt(a, maxSkippedBytes))
	}
	pl.plan.skips = append(pl.plan.skips, clipAt(b.String(), maxSkippedBytes))
}

// note records what was already in place, for explain.
func (pl *planner) note(format string, args ...any) {
	pl.plan.Notes = append(pl.plan.Notes, fmt.Sprintf(format, args...))
}

func (pl *planner) emit(a addition) {
	pl.plan.additions = append(pl.plan.additions, a)
	pl.minBytes += a.minPatchBytes()
	pl.over = pl.minBytes > pl.in.patch.limit
}

// emitVolume adds a pod volume; the first one added to a pod without spec.volumes
// creates the list.
func (pl *planner) emitVolume(v podVolume) {
	pl.emit(volumeAddition{vol: v, hadVolumes: pl.hasVolumes})
	pl.hasVolumes = true
}
