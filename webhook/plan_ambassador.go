package webhook

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// checkAmbassador decides whether the ambassador is (or will be) in the pod, and denies
// a port the pod already uses. It runs before the env is planned, which needs to know
// whether PODMETA_API_URL has anything to point at.
func (pl *planner) checkAmbassador() error {
	s, pod := pl.settings, pl.pod
	if !s.Ambassador {
		return nil
	}
	switch {
	case pod.Spec.HostNetwork:
		pl.warn(FeatureAmbassador, "ambassador not added: a hostNetwork pod shares the node's loopback, where the ambassador would expose the pod's token to every process on the node")
		pl.skip(SkipAmbassadorHostNetwork)
		return nil
	case pod.Spec.AutomountServiceAccountToken != nil && !*pod.Spec.AutomountServiceAccountToken:
		pl.warn(FeatureAmbassador, "ambassador not added: the pod sets automountServiceAccountToken: false, so it must not get API credentials")
		pl.skip(SkipAmbassadorAutomountOff)
		return nil
	case pl.admitted && !slices.ContainsFunc(pod.Spec.Volumes, isServiceAccountTokenVolume):
		// The ServiceAccount admission plugin honours the ServiceAccount's
		// automountServiceAccountToken: false by adding no token volume, without setting
		// the pod's field; this is the only trace of an administrator's opt-out that
		// reaches a webhook. (Offline, podmeta inject cannot know and adds the sidecar.)
		pl.warn(FeatureAmbassador, "ambassador not added: the pod has no service-account token volume (%s*), so its ServiceAccount sets automountServiceAccountToken: false and the pod must not get API credentials", serviceAccountTokenVolumePrefix)
		pl.skip(SkipAmbassadorNoTokenMount)
		return nil
	case pod.Spec.OS != nil && pod.Spec.OS.Name == string(corev1.Windows):
		pl.warn(FeatureAmbassador, "ambassador not added: it runs on Linux only and this is a Windows pod")
		pl.skip(SkipAmbassadorWindows)
		return nil
	}
	for _, list := range [][]containerView{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			if c.Name == AmbassadorContainerName {
				continue
			}
			for _, port := range c.Ports {
				if p := int(port.ContainerPort); p == s.AmbassadorPort || p == s.AmbassadorHealthPort() {
					return fmt.Errorf("%s=%d: container %q already declares port %d, and the ambassador needs ports %d and %d; choose another port from 1024 to 65535",
						AnnotationAmbassadorPort, s.AmbassadorPort, c.Name, p, s.AmbassadorPort, s.AmbassadorHealthPort())
				}
			}
		}
	}
	if i := slices.IndexFunc(pod.Spec.Volumes, func(v volumeView) bool { return v.Name == AmbassadorTokenVolumeName }); i >= 0 && pod.Spec.Volumes[i].Projected == nil {
		pl.warn(FeatureAmbassador, "ambassador not added: volume %q exists and is not podmeta's projected token volume", AmbassadorTokenVolumeName)
		pl.skip(SkipAmbassadorTokenVolumeKept)
		return nil
	}
	pl.ambassador = true
	return nil
}

// planAmbassador adds the sidecar and its token volume unless the pod already has them.
func (pl *planner) planAmbassador() {
	if !pl.ambassador {
		return
	}
	pod := pl.pod
	for _, list := range [][]containerView{pod.Spec.InitContainers, pod.Spec.Containers} {
		if i := slices.IndexFunc(list, func(c containerView) bool { return c.Name == AmbassadorContainerName }); i >= 0 {
			if list[i].Image == pl.in.cfg.AmbassadorImage {
				pl.note("container %q already present", AmbassadorContainerName)
			} else {
				pl.warn(FeatureAmbassador, "container %q already exists with image %q; kept it", AmbassadorContainerName, list[i].Image)
				pl.skip(SkipAmbassadorKept, list[i].Image)
			}
			return
		}
	}
	if !slices.ContainsFunc(pod.Spec.Volumes, func(v volumeView) bool { return v.Name == AmbassadorTokenVolumeName }) {
		pl.emitVolume(tokenVolume{})
	}
	c := pl.in.ambassadorFor(pl.settings)
	if pl.in.native {
		pl.emit(sidecarAddition{container: c, init: true, hadList: pod.Spec.InitContainers != nil})
		pl.plan.Status.Ambassador = "native-sidecar"
	} else {
		pl.emit(sidecarAddition{container: c, hadList: pod.Spec.Containers != nil})
		pl.plan.Status.Ambassador = "container"
	}
}

// serviceAccountTokenVolumePrefix starts the name of the token volume the ServiceAccount
// admission plugin adds (kube-api-access-<random>) unless automounting is off.
const serviceAccountTokenVolumePrefix = "kube-api-access-"

func isServiceAccountTokenVolume(v volumeView) bool {
	return strings.HasPrefix(v.Name, serviceAccountTokenVolumePrefix) && v.Projected != nil
}
