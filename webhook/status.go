package webhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Status is the podmeta.io/status record: what podmeta's additions are in the pod now.
// It is the one schema that explain, the safety net and later tools read, and it is
// written so that each may trust it as far as it needs:
//
//   - It describes the pod as admitted, never what an earlier annotation claimed: on a
//     reinvocation (or over a record the pod author wrote), each earlier claim is kept
//     only while the spec still shows it (verifyAgainst), then this pass's additions
//     are merged in.
//   - Created says which lists and maps podmeta created rather than appended to, which is
//     what removing the additions exactly needs.
//   - Skipped says, compactly and within a byte bound, what this pass did not add and why,
//     as stable codes (Skip*): including what gives no warning (containers that
//     podmeta.io/containers leaves out).
//   - Its companion annotation podmeta.io/injected (AnnotationInjected) lists, plainly, the
//     containers that got env vars or the mount, for CEL, which has no JSON parser: the
//     safety net checks each name against the spec, and that the record's "volume" and
//     "ambassador" claims are in the spec (their JSON, "volume":"… and
//     "ambassador":"native-sidecar", occurs nowhere else in a record podmeta writes).
//
// A record is a claim, not proof: whoever reads it to act (uninject) checks each value
// against what podmeta adds. A forged record that claims less than the spec has equals
// opting out, which any pod author may do with podmeta.io/inject: "false".
// docs/design.md documents the schema for users.
type Status struct {
	// Env lists, per container, the env vars podmeta added.
	Env map[string][]string `json:"env,omitempty"`
	// Volume is the metadata volume's mount path, when podmeta added or completed it.
	Volume string `json:"volume,omitempty"`
	// Mounts lists the containers that got the metadata volume mounted.
	Mounts []string `json:"mounts,omitempty"`
	// EphemeralStorage lists, per container, the defaults podmeta set ("request", "limit").
	EphemeralStorage map[string]map[string]string `json:"ephemeralStorage,omitempty"`
	// Ambassador is "native-sidecar" or "container" when podmeta added the ambassador.
	Ambassador string `json:"ambassador,omitempty"`
	// Created lists the fields podmeta created, where the pod had none: removing its
	// additions exactly removes these fields rather than emptying them.
	Created *Created `json:"created,omitempty"`
	// Skipped says what this pass did not add and why, one skip reason an entry: a Skip*
	// code, then for most a space and what it concerns ("env-kept app POD_IP,HOST_IP").
	// At most maxSkipped entries, each at most maxSkippedBytes, then "and N more".
	Skipped []string `json:"skipped,omitempty"`
}

// Created is Status.Created. The words are the fields' JSON names:
// per container "env", "volumeMounts", "resources", "resources.requests",
// "resources.limits"; for the pod "volumes", "initContainers", "annotations".
type Created struct {
	Pod        []string            `json:"pod,omitempty"`
	Containers map[string][]string `json:"containers,omitempty"`
}

// The words of Created, by what they name.
const (
	createdEnv          = "env"
	createdMounts       = "volumeMounts"
	createdResources    = "resources"
	createdRequests     = "resources.requests"
	createdLimits       = "resources.limits"
	createdVolumes      = "volumes"
	createdInit         = "initContainers"
	createdAnnotations  = "annotations"
	ambassadorAsSidecar = "native-sidecar"
	ambassadorAsPlain   = "container"
)

// Bounds of Status.Skipped: it is stored with the pod.
const (
	maxSkipped      = 8
	maxSkippedBytes = 256
)

// The skip reasons of Status.Skipped: stable codes a tool may match (docs/design.md). An
// entry is the code, then, where it says so, a space and what it concerns; names are
// joined with ','.
const (
	// SkipAnnotationsIgnored: unknown podmeta.io/ keys or repeated list items were
	// ignored (the admission warnings name them).
	SkipAnnotationsIgnored = "annotations-ignored"
	// SkipNotSelected NAMES: containers podmeta.io/containers leaves out got no env
	// vars or mount.
	SkipNotSelected = "not-selected"
	// SkipContainerMissing NAME: podmeta.io/containers names a container the pod lacks.
	SkipContainerMissing = "container-missing"
	// SkipEnvKept CONTAINER VARS: the container defines these of podmeta's env vars
	// itself; its values were kept (e.g. "env-kept app POD_IP").
	SkipEnvKept = "env-kept"
	// SkipVolumeKept: the pod has a volume of the metadata volume's name that is not a
	// downwardAPI volume; no metadata volume and no mounts were added.
	SkipVolumeKept = "volume-kept"
	// SkipMountKept CONTAINER PATH: the container mounts something else at the path.
	SkipMountKept = "mount-kept"
	// SkipStorageLimit CONTAINER: its ephemeral-storage request is above the default
	// limit, so no limit was set.
	SkipStorageLimit = "storage-limit-skipped"
	// SkipAmbassadorHostNetwork: no ambassador on a hostNetwork pod.
	SkipAmbassadorHostNetwork = "ambassador-host-network"
	// SkipAmbassadorAutomountOff: no ambassador; the pod sets
	// automountServiceAccountToken: false.
	SkipAmbassadorAutomountOff = "ambassador-automount-off"
	// SkipAmbassadorNoTokenMount: no ambassador; the pod has no service-account token
	// volume (its ServiceAccount turns automounting off).
	SkipAmbassadorNoTokenMount = "ambassador-no-token-mount"
	// SkipAmbassadorWindows: no ambassador on a Windows pod.
	SkipAmbassadorWindows = "ambassador-windows"
	// SkipAmbassadorTokenVolumeKept: no ambassador; a volume of its token volume's name
	// is the pod's own.
	SkipAmbassadorTokenVolumeKept = "ambassador-token-volume-kept"
	// SkipAmbassadorKept IMAGE: a container of the ambassador's name with another image
	// is the pod's own; it was kept.
	SkipAmbassadorKept = "ambassador-kept"
)

// String renders a plan's status for logs and explain.
func (s Status) String() string {
	b, _ := json.Marshal(s)
	return string(b)
}

// createdPod records that podmeta created a field (a Created word) of the pod.
func (s *Status) createdPod(field string) {
	if s.Created == nil {
		s.Created = &Created{}
	}
	if !slices.Contains(s.Created.Pod, field) {
		s.Created.Pod = append(s.Created.Pod, field)
	}
}

// createdIn records that podmeta created a field (a Created word) of a container.
func (s *Status) createdIn(container, field string) {
	if s.Created == nil {
		s.Created = &Created{}
	}
	if s.Created.Containers == nil {
		s.Created.Containers = map[string][]string{}
	}
	if !slices.Contains(s.Created.Containers[container], field) {
		s.Created.Containers[container] = append(s.Created.Containers[container], field)
	}
}

// recordCreated derives Created from the plan's additions: each knows whether the list
// or map it adds to existed.
func (s *Status) recordCreated(additions []addition) {
	for _, a := range additions {
		switch a := a.(type) {
		case envAddition:
			if a.ref.c.Env == nil {
				s.createdIn(a.ref.c.Name, createdEnv)
			}
		case mountAddition:
			if a.ref.c.VolumeMounts == nil {
				s.createdIn(a.ref.c.Name, createdMounts)
			}
		case storageAddition:
			switch r := a.ref.c.Resources; r {
			case nil:
				s.createdIn(a.ref.c.Name, createdResources)
			default:
				if a.request != nil && r.Requests == nil {
					s.createdIn(a.ref.c.Name, createdRequests)
				}
				if a.limit != nil && r.Limits == nil {
					s.createdIn(a.ref.c.Name, createdLimits)
				}
			}
		case volumeAddition:
			if !a.hadVolumes {
				s.createdPod(createdVolumes)
			}
		case sidecarAddition:
			if a.init && !a.hadList {
				s.createdPod(createdInit)
			}
		case annotationAddition:
			if !a.hadAnnotations {
				s.createdPod(createdAnnotations)
			}
		}
	}
}

// setSkipped records skip reasons (already bounded, as planner.skip makes them) and
// how many more there were.
func (s *Status) setSkipped(skips []string, more int) {
	s.Skipped = slices.Clone(skips)
	if more > 0 {
		s.Skipped = append(s.Skipped, "and "+strconv.Itoa(more)+" more")
	}
}

// boundSkipped bounds a Skipped list that podmeta did not write (a forged record) as
// podmeta would: maxSkipped entries, each clipped, and how many more.
func boundSkipped(list []string) []string {
	if len(list) <= maxSkipped+1 && !slices.ContainsFunc(list, func(w string) bool { return len(w) > maxSkippedBytes }) {
		return list
	}
	var out []string
	for i, w := range list {
		if i == maxSkipped {
			return append(out, "and "+strconv.Itoa(len(list)-i)+" more")
		}
		out = append(out, clipAt(w, maxSkippedBytes))
	}
	return out
}

// verifyAgainst keeps of an earlier record (prev) only what the pod shows now: env vars
// the container has with the value podmeta gives them (want, by name), mounts of the
// metadata volume, the volume itself, storage values equal to the recorded ones, the
// ambassador where the record says, and Created entries of containers that exist and
// fields that do. It is linear in the record and the pod.
func (pl *planner) verifyAgainst(prev Status) Status {
	pod := pl.pod
	byName := make(map[string]*containerView, len(pod.Spec.Containers)+len(pod.Spec.InitContainers))
	for _, list := range [][]containerView{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			if _, dup := byName[list[i].Name]; !dup {
				byName[list[i].Name] = &list[i]
			}
		}
	}
	want := make(map[string]int, len(pl.envWithURL))
	for i := range pl.envWithURL {
		want[pl.envWithURL[i].Name] = i
	}
	var st Status
	for name, vars := range prev.Env {
		c := byName[name]
		if c == nil || len(vars) == 0 {
			continue
		}
		have := make(map[string]int, len(c.Env))
		for i := range c.Env {
			if _, dup := have[c.Env[i].Name]; !dup {
				have[c.Env[i].Name] = i
			}
		}
		var kept []string
		for _, v := range vars {
			i, ok := have[v]
			w, ok2 := want[v]
			if ok && ok2 && sameEnv(c.Env[i], pl.envWithURL[w]) && !slices.Contains(kept, v) {
				kept = append(kept, v)
			}
		}
		if kept != nil {
			if st.Env == nil {
				st.Env = map[string][]string{}
			}
			st.Env[name] = kept
		}
	}
	if prev.Volume != "" && slices.ContainsFunc(pod.Spec.Volumes, func(v volumeView) bool { return v.Name == VolumeName && v.DownwardAPI != nil }) {
		st.Volume = prev.Volume
	}
	seen := map[string]bool{}
	for _, name := range prev.Mounts {
		if c := byName[name]; c != nil && !seen[name] && slices.ContainsFunc(c.VolumeMounts, func(m mountView) bool { return m.Name == VolumeName }) {
			st.Mounts = append(st.Mounts, name)
			seen[name] = true
		}
	}
	for name, rec := range prev.EphemeralStorage {
		c := byName[name]
		if c == nil || c.Resources == nil {
			continue
		}
		kept := map[string]string{}
		for key, list := range map[string]*storageView{"request": c.Resources.Requests, "limit": c.Resources.Limits} {
			v, ok := rec[key]
			if !ok || list == nil || list.EphemeralStorage == nil {
				continue
			}
			if q, err := parseBoundedQuantity(v); err == nil && cmpPodQuantity(list.EphemeralStorage, q) == 0 {
				kept[key] = v
			}
		}
		if len(kept) > 0 {
			if st.EphemeralStorage == nil {
				st.EphemeralStorage = map[string]map[string]string{}
			}
			st.EphemeralStorage[name] = kept
		}
	}
	switch isAmbassador := func(c containerView) bool { return c.Name == AmbassadorContainerName }; prev.Ambassador {
	case ambassadorAsSidecar:
		if slices.ContainsFunc(pod.Spec.InitContainers, isAmbassador) {
			st.Ambassador = prev.Ambassador
		}
	case ambassadorAsPlain:
		if slices.ContainsFunc(pod.Spec.Containers, isAmbassador) {
			st.Ambassador = prev.Ambassador
		}
	}
	if c := prev.Created; c != nil {
		for _, f := range c.Pod {
			if f == createdAnnotations ||
				(f == createdVolumes && pod.Spec.Volumes != nil) ||
				(f == createdInit && pod.Spec.InitContainers != nil) {
				st.createdPod(f)
			}
		}
		for name, fields := range c.Containers {
			ct := byName[name]
			if ct == nil {
				continue
			}
			// A created list holds podmeta's additions alone; resources are only seen
			// as far as ephemeral-storage (the view decodes no more), so a created
			// resources claim needs a verified storage record (uninject checks the rest).
			storage := st.EphemeralStorage[name] != nil
			for _, f := range fields {
				if (f == createdEnv && len(ct.Env) > 0 && len(ct.Env) == len(st.Env[name])) ||
					(f == createdMounts && len(ct.VolumeMounts) == 1 && seen[name]) ||
					(f == createdResources && ct.Resources != nil && storage) ||
					(f == createdRequests && ct.Resources != nil && ct.Resources.Requests != nil && storage) ||
					(f == createdLimits && ct.Resources != nil && ct.Resources.Limits != nil && storage) {
					st.createdIn(name, f)
				}
			}
		}
	}
	st.Skipped = boundSkipped(prev.Skipped)
	return st
}

// merge adds this pass's record (s) to what an earlier one verified (prev): the names
// this pass added come after the ones already there.
func (s *Status) merge(prev Status) {
	for c, names := range prev.Env {
		if s.Env == nil {
			s.Env = map[string][]string{}
		}
		s.Env[c] = append(names, s.Env[c]...)
	}
	for c, kv := range prev.EphemeralStorage {
		if s.EphemeralStorage == nil {
			s.EphemeralStorage = map[string]map[string]string{}
		}
		if s.EphemeralStorage[c] == nil {
			s.EphemeralStorage[c] = kv
		}
	}
	s.Mounts = append(prev.Mounts, s.Mounts...)
	if s.Volume == "" {
		s.Volume = prev.Volume
	}
	if s.Ambassador == "" {
		s.Ambassador = prev.Ambassador
	}
	if c := prev.Created; c != nil {
		for _, f := range c.Pod {
			s.createdPod(f)
		}
		for name, fields := range c.Containers {
			for _, f := range fields {
				s.createdIn(name, f)
			}
		}
	}
}

// injectedContainers is the value of podmeta.io/injected: the containers (init ones
// first, in the pod's order, each once) the record says got env vars or the mount.
func (pl *planner) injectedContainers(st *Status) string {
	listed := make(map[string]bool, len(st.Mounts)+len(st.Env)) // false: to list
	for _, n := range st.Mounts {
		listed[n] = false
	}
	for n, vars := range st.Env {
		if len(vars) > 0 {
			listed[n] = false
		}
	}
	var b strings.Builder
	for _, list := range [][]containerView{pl.pod.Spec.InitContainers, pl.pod.Spec.Containers} {
		for i := range list {
			if done, ok := listed[list[i].Name]; ok && !done {
				if b.Len() > 0 {
					b.WriteByte(',')
				}
				b.WriteString(list[i].Name)
				listed[list[i].Name] = true
			}
		}
	}
	return b.String()
}

// planStatus writes the record (and podmeta.io/injected) when this pass added anything,
// when the pod has no record yet (so a pod podmeta saw is always marked, which the
// safety net relies on), or when the pod's record or list is not what the pod shows;
// a pass that adds nothing to a truthfully marked pod adds nothing.
func (pl *planner) planStatus() {
	ann := pl.pod.Metadata.Annotations
	prevText, had := ann[AnnotationStatus]
	var prev Status
	if had && json.Unmarshal([]byte(prevText), &prev) == nil {
		prev = pl.verifyAgainst(prev)
	}
	var st Status
	if pl.plan.Empty() {
		st = prev
		if !had {
			st.setSkipped(pl.plan.skips, pl.plan.moreSkips)
		}
	} else {
		st = pl.plan.Status
		if had {
			// merge appends to the maps and lists: copies, so that Plan.Status stays this
			// pass's own (explain and metrics read it).
			st.Env, st.EphemeralStorage, st.Mounts = maps.Clone(st.Env), maps.Clone(st.EphemeralStorage), slices.Clone(st.Mounts)
			st.merge(prev)
		}
		st.recordCreated(pl.plan.additions)
		st.setSkipped(pl.plan.skips, pl.plan.moreSkips)
	}
	if ann == nil {
		st.createdPod(createdAnnotations) // by the first annotation below
	}
	value, _ := json.Marshal(st) // strings, slices and maps of them cannot fail to marshal
	injected := pl.injectedContainers(&st)
	have, hadInjected := ann[AnnotationInjected]
	if pl.plan.Empty() && had && string(value) == prevText && hadInjected && have == injected {
		return
	}
	pl.emit(annotationAddition{key: AnnotationStatus, value: string(value), hadAnnotations: ann != nil})
	pl.emit(annotationAddition{key: AnnotationInjected, value: injected, hadAnnotations: true})
}

// VerifyRecord reads a pod's podmeta.io/status (raw is the pod's JSON) and checks it
// against the spec as a reinvocation would (verifyAgainst), with the settings the
// operator's config, the namespace's annotations and the pod's give. It returns the
// record as written and what of it the spec still shows (with the record's Skipped);
// ok is false when the pod has no record. podmeta doctor reads an existing pod with it.
func (in *Injector) VerifyRecord(raw []byte, nsAnnotations map[string]string) (recorded, verified Status, ok bool, err error) {
	pod, err := decodePod(raw)
	if err != nil {
		return Status{}, Status{}, false, err
	}
	text, had := pod.Metadata.Annotations[AnnotationStatus]
	if !had {
		return Status{}, Status{}, false, nil
	}
	if err := json.Unmarshal([]byte(text), &recorded); err != nil {
		return Status{}, Status{}, true, fmt.Errorf("%s is not a record podmeta writes: %w", AnnotationStatus, err)
	}
	s := in.base
	_, err1 := s.overlay(sourceNamespace, nsAnnotations)
	_, err2 := s.overlay(sourcePod, pod.Metadata.Annotations)
	if err := errors.Join(err1, err2, s.check()); err != nil {
		return recorded, Status{}, true, &DenyError{err}
	}
	pl := planner{in: in, settings: &s, pod: pod, plan: &Plan{}}
	for _, list := range [][]containerView{pod.Spec.InitContainers, pod.Spec.Containers} {
		if slices.ContainsFunc(list, func(c containerView) bool { return c.Name == AmbassadorContainerName }) {
			pl.ambassador = true // the record's PODMETA_API_URL points at it
		}
	}
	pl.planEnvVars()
	return recorded, pl.verifyAgainst(recorded), true, nil
}
