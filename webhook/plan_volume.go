package webhook

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// planVolume adds the metadata volume, or completes podmeta's existing one with items
// for containers it does not cover yet (a container added by a later webhook). It
// reports whether the volume named podmeta is a downwardAPI volume mounts may use.
func (pl *planner) planVolume(targets []containerRef) bool {
	if !pl.settings.Volume {
		return false
	}
	i := slices.IndexFunc(pl.pod.Spec.Volumes, func(v volumeView) bool { return v.Name == VolumeName })
	want := make(metadataVolume, len(targets))
	for j, t := range targets {
		want[j] = t.c.Name
	}
	if i < 0 {
		pl.emitVolume(want)
		pl.plan.Status.Volume = pl.settings.VolumePath
		return true
	}
	dapi := pl.pod.Spec.Volumes[i].DownwardAPI
	if dapi == nil {
		pl.warn(FeatureVolume, "volume %q exists and is not a downwardAPI volume; kept it and did not add the metadata volume", VolumeName)
		pl.skip(SkipVolumeKept)
		return false
	}
	// The paths the volume has, in a set built once: both lists are the pod's to make
	// long (80,000 items and 4,000 containers), and a scan per item would multiply them.
	have := make(map[string]struct{}, len(dapi.Items))
	for i := range dapi.Items {
		have[dapi.Items[i].Path] = struct{}{}
	}
	var missing []corev1.DownwardAPIVolumeFile
	for _, item := range want.volume().DownwardAPI.Items {
		if _, ok := have[item.Path]; !ok {
			missing = append(missing, item)
		}
	}
	if len(missing) > 0 {
		pl.emit(volumeItemsAddition{index: i, hadItems: dapi.Items != nil, items: missing})
		pl.plan.Status.Volume = pl.settings.VolumePath
	} else {
		pl.note("volume %q already has every item", VolumeName)
	}
	return true
}

// planMount mounts the metadata volume read-only, unless the container already mounts
// it or uses the path for something else.
func (pl *planner) planMount(t containerRef) {
	for _, m := range t.c.VolumeMounts {
		switch {
		case m.Name == VolumeName:
			pl.note("%s %q already mounts volume %q at %s", t.kind(), t.c.Name, VolumeName, m.MountPath)
			return
		case m.MountPath == pl.settings.VolumePath:
			pl.warn(FeatureMount, "%s %q already mounts %q at %s; kept it and did not mount the metadata volume", t.kind(), t.c.Name, m.Name, m.MountPath)
			pl.skip(SkipMountKept, t.c.Name+" "+m.MountPath)
			return
		}
	}
	pl.emit(mountAddition{ref: t, mount: metadataMount(pl.settings.VolumePath)})
	pl.plan.Status.Mounts = append(pl.plan.Status.Mounts, t.c.Name)
}
