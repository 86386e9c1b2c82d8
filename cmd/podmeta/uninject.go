package main

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"

	yaml "go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/podmeta/podmeta/webhook"
)

// uninject removes what podmeta added to a pod, as its status record says, and only
// where the pod still holds exactly what podmeta adds: a record is a claim, not proof
// (webhook/status.go). What podmeta adds is found by asking the engine: the pod without
// the claimed additions is planned again with the same flags, and each claimed value must
// equal the one that plan would add. Whatever does not match stays, with a warning.

func runUninject(_ context.Context, args []string, s streams) error {
	o, in, err := parseOffline("uninject", args, s)
	if err != nil {
		return err
	}
	docs, err := readInputs(o.files, o.recursive, s.in)
	if err != nil {
		return err
	}
	encoded := map[*document][]byte{}
	for _, d := range docs {
		changed := false
		for _, obj := range d.objects {
			r, err := uninjectObject(in, o, d, obj)
			if err != nil {
				return fmt.Errorf("%s: %s: %w", d, obj, err)
			}
			for _, w := range r.warnings {
				fmt.Fprintf(s.err, "%s: %s\n", obj, w)
			}
			if !o.quiet {
				fmt.Fprintf(s.err, "%s: %s\n", obj, r.summary())
			}
			changed = changed || r.changed
		}
		if changed {
			if encoded[d], err = d.encode(); err != nil {
				return fmt.Errorf("%s: %w", d, err)
			}
		}
	}
	return writeDocuments(s.out, docs, encoded)
}

// removal is what uninject did to one object.
type removal struct {
	record   bool // the object had a status record
	changed  bool
	removed  []string
	warnings []string
}

func (r *removal) summary() string {
	var line string
	switch {
	case !r.record:
		return "no podmeta status record; unchanged"
	case len(r.removed) == 0:
		line = "removed the status record only"
	default:
		line = "removed " + strings.Join(r.removed, ", ")
	}
	if n := len(r.warnings); n == 1 {
		line += "; 1 warning"
	} else if n > 1 {
		line += fmt.Sprintf("; %d warnings", n)
	}
	return line
}

func (r *removal) keep(format string, args ...any) {
	r.warnings = append(r.warnings, "podmeta: kept "+fmt.Sprintf(format, args...))
}

// podNodes are the parts of a pod template's node tree uninject edits.
type podNodes struct {
	meta, annotations *yaml.Node
	spec              *yaml.Node
}

func (p podNodes) list(name string) *yaml.Node {
	if l := field(p.spec, name); l != nil && l.Kind == yaml.SequenceNode {
		return l
	}
	return nil
}

// container finds a container by name the way the engine does: init containers first.
func (p podNodes) container(name string) *yaml.Node {
	for _, list := range []string{"initContainers", "containers"} {
		if l := p.list(list); l != nil {
			if i := indexByName(l, name); i >= 0 {
				return resolve(l.Content[i])
			}
		}
	}
	return nil
}

func indexByName(seq *yaml.Node, name string) int {
	if seq == nil {
		return -1
	}
	for i, item := range seq.Content {
		if str(item, "name") == name {
			return i
		}
	}
	return -1
}

func uninjectObject(in *webhook.Injector, o *offlineOptions, d *document, obj *object) (*removal, error) {
	r := &removal{}
	tmpl := at(d.node, obj.template)
	if tmpl == nil || tmpl.Kind != yaml.MappingNode {
		return r, nil
	}
	p := podNodes{meta: field(tmpl, "metadata"), spec: field(tmpl, "spec")}
	p.annotations = field(p.meta, "annotations")
	text := str(p.annotations, webhook.AnnotationStatus)
	if field(p.annotations, webhook.AnnotationStatus) == nil {
		return r, nil // never injected (or the record was removed): nothing is podmeta's
	}
	r.record = true
	if shared(tmpl) {
		r.keep("everything: the pod template uses YAML anchors, aliases or merge keys, and removing from it would change the other places that use them; expand them first")
		return r, nil
	}
	var st webhook.Status
	if err := json.Unmarshal([]byte(text), &st); err != nil {
		r.keep("everything: %s is not a record podmeta writes (%v)", webhook.AnnotationStatus, err)
		return r, nil
	}
	created := st.Created
	if created == nil {
		created = &webhook.Created{}
	}
	want, err := reinjected(in, o, tmpl, obj, &st)
	if err != nil {
		r.keep("everything but the record: the pod without podmeta's additions cannot be planned: %v", err)
		want = nil
	}

	if want != nil {
		uninjectEnv(r, p, &st, want, created)
		uninjectMounts(r, p, &st, want, created)
		uninjectAmbassador(r, p, &st, want, created)
		uninjectVolume(r, p, &st, want, created)
		uninjectStorage(r, p, &st, created)
	}

	// The record itself, and the annotations map when podmeta created it.
	for _, key := range []string{webhook.AnnotationStatus, webhook.AnnotationInjected} {
		deleteField(p.annotations, key)
	}
	if len(p.annotations.Content) == 0 && slices.Contains(created.Pod, "annotations") {
		deleteField(p.meta, "annotations")
		if len(p.meta.Content) == 0 && obj.template != obj.pointer {
			deleteField(tmpl, "metadata") // inject made it for the annotations
		}
	}
	r.changed = true
	return r, nil
}

// reinjected is the typed pod the engine makes of the template without what the record
// claims: what podmeta adds, to compare the claimed values with.
func reinjected(in *webhook.Injector, o *offlineOptions, tmpl *yaml.Node, obj *object, st *webhook.Status) (*corev1.Pod, error) {
	js, err := nodeJSON(tmpl)
	if err != nil {
		return nil, err
	}
	var pod corev1.Pod
	if err := json.Unmarshal(js, &pod); err != nil {
		return nil, err
	}
	delete(pod.Annotations, webhook.AnnotationStatus)
	delete(pod.Annotations, webhook.AnnotationInjected)
	strip := func(c *corev1.Container) {
		if names := st.Env[c.Name]; len(names) > 0 {
			c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return slices.Contains(names, e.Name) })
		}
		if slices.Contains(st.Mounts, c.Name) {
			c.VolumeMounts = slices.DeleteFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == webhook.VolumeName })
		}
		if kv := st.EphemeralStorage[c.Name]; kv != nil {
			if _, ok := kv["request"]; ok {
				delete(c.Resources.Requests, webhook.EphemeralStorage)
			}
			if _, ok := kv["limit"]; ok {
				delete(c.Resources.Limits, webhook.EphemeralStorage)
			}
		}
	}
	isAmbassador := func(c corev1.Container) bool { return c.Name == webhook.AmbassadorContainerName }
	switch st.Ambassador {
	case "native-sidecar":
		pod.Spec.InitContainers = slices.DeleteFunc(pod.Spec.InitContainers, isAmbassador)
	case "container":
		pod.Spec.Containers = slices.DeleteFunc(pod.Spec.Containers, isAmbassador)
	}
	for i := range pod.Spec.InitContainers {
		strip(&pod.Spec.InitContainers[i])
	}
	for i := range pod.Spec.Containers {
		strip(&pod.Spec.Containers[i])
	}
	pod.Spec.Volumes = slices.DeleteFunc(pod.Spec.Volumes, func(v corev1.Volume) bool {
		return (st.Volume != "" && v.Name == webhook.VolumeName) || (st.Ambassador != "" && v.Name == webhook.AmbassadorTokenVolumeName)
	})
	candidate, err := json.Marshal(&pod)
	if err != nil {
		return nil, err
	}
	plan, err := in.PlanPod(candidate, obj.namespace, o.nsAnnotations)
	if err != nil {
		return nil, err
	}
	plan.Apply(&pod)
	return &pod, nil
}

// wantContainer is a container of the reinjected pod, init containers first.
func wantContainer(pod *corev1.Pod, name string) *corev1.Container {
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			if list[i].Name == name {
				return &list[i]
			}
		}
	}
	return nil
}

// defaulted are fields the apiserver sets on what podmeta added (kubectl get prints
// them); a value may have them beside what podmeta wrote and still be podmeta's.
var defaulted = map[string]bool{
	"terminationMessagePath": true, "terminationMessagePolicy": true, "imagePullPolicy": true,
	"protocol": true, "timeoutSeconds": true, "successThreshold": true, "scheme": true,
	"defaultMode": true,
}

// sameAs reports whether a node holds what podmeta adds (want, anything encoding/json
// marshals), fields the apiserver defaults aside, and names the first difference.
func sameAs(n *yaml.Node, want any) (bool, string) {
	js, err := nodeJSON(n)
	if err != nil {
		return false, err.Error()
	}
	var have, w any
	json.Unmarshal(js, &have) //nolint:errcheck // nodeJSON writes JSON
	wb, _ := json.Marshal(want)
	json.Unmarshal(wb, &w) //nolint:errcheck
	return covers(w, have, "")
}

func covers(want, have any, path string) (bool, string) {
	switch w := want.(type) {
	case map[string]any:
		h, ok := have.(map[string]any)
		if !ok {
			return false, path
		}
		for _, k := range sortedKeys(w) { // sorted: the same difference is named every time
			if ok, where := covers(w[k], h[k], path+"."+k); !ok {
				return false, where
			}
		}
		for _, k := range sortedKeys(h) {
			if _, ok := w[k]; !ok && !defaulted[k] {
				return false, path + "." + k
			}
		}
		return true, ""
	case []any:
		h, ok := have.([]any)
		if !ok || len(h) != len(w) {
			return false, path
		}
		for i := range w {
			if ok, where := covers(w[i], h[i], fmt.Sprintf("%s[%d]", path, i)); !ok {
				return false, where
			}
		}
		return true, ""
	default:
		if reflect.DeepEqual(want, have) || fmt.Sprint(want) == fmt.Sprint(have) {
			return true, ""
		}
		return false, path
	}
}

func removeAt(seq *yaml.Node, i int) { seq.Content = slices.Delete(seq.Content, i, i+1) }

// dropIfCreated removes a list or map field podmeta created once it is empty.
func dropIfCreated(parent *yaml.Node, key string, created bool) {
	if v := field(parent, key); v != nil && created && len(v.Content) == 0 {
		deleteField(parent, key)
	}
}

func createdIn(c *webhook.Created, container, word string) bool {
	return slices.Contains(c.Containers[container], word)
}

func uninjectEnv(r *removal, p podNodes, st *webhook.Status, want *corev1.Pod, created *webhook.Created) {
	n := 0
	for _, name := range sortedKeys(st.Env) {
		c := p.container(name)
		wc := wantContainer(want, name)
		env := field(c, "env")
		if c == nil || env == nil || wc == nil {
			continue
		}
		for _, v := range st.Env[name] {
			i := indexByName(env, v)
			if i < 0 {
				continue
			}
			j := slices.IndexFunc(wc.Env, func(e corev1.EnvVar) bool { return e.Name == v })
			if j < 0 {
				r.keep("env %s of container %q: podmeta would not add it now", v, name)
				continue
			}
			if ok, where := sameAs(env.Content[i], wc.Env[j]); !ok {
				r.keep("env %s of container %q: it differs from what podmeta adds (at %s)", v, name, strings.TrimPrefix(where, "."))
				continue
			}
			removeAt(env, i)
			n++
		}
		dropIfCreated(c, "env", createdIn(created, name, "env"))
	}
	if n > 0 {
		r.removed = append(r.removed, fmt.Sprintf("env ×%d", n))
	}
}

func uninjectMounts(r *removal, p podNodes, st *webhook.Status, want *corev1.Pod, created *webhook.Created) {
	n := 0
	for _, name := range st.Mounts {
		c := p.container(name)
		wc := wantContainer(want, name)
		mounts := field(c, "volumeMounts")
		if c == nil || mounts == nil || wc == nil {
			continue
		}
		i := indexByName(mounts, webhook.VolumeName)
		j := slices.IndexFunc(wc.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == webhook.VolumeName })
		if i < 0 {
			continue
		}
		if j < 0 {
			r.keep("the %s mount of container %q: podmeta would not add it now", webhook.VolumeName, name)
			continue
		}
		if ok, where := sameAs(mounts.Content[i], wc.VolumeMounts[j]); !ok {
			r.keep("the %s mount of container %q: it differs from what podmeta adds (at %s)", webhook.VolumeName, name, strings.TrimPrefix(where, "."))
			continue
		}
		removeAt(mounts, i)
		n++
		dropIfCreated(c, "volumeMounts", createdIn(created, name, "volumeMounts"))
	}
	if n > 0 {
		r.removed = append(r.removed, fmt.Sprintf("mount ×%d", n))
	}
}

// removeVolume removes a pod volume when it is what podmeta adds.
func removeVolume(r *removal, p podNodes, want *corev1.Pod, name string) bool {
	vols := p.list("volumes")
	i := indexByName(vols, name)
	if i < 0 {
		return false
	}
	j := slices.IndexFunc(want.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == name })
	if j < 0 {
		r.keep("volume %s: podmeta would not add it now", name)
		return false
	}
	if ok, where := sameAs(vols.Content[i], want.Spec.Volumes[j]); !ok {
		if name == webhook.VolumeName && removeItems(r, vols.Content[i], want.Spec.Volumes[j]) {
			return false
		}
		r.keep("volume %s: it differs from what podmeta adds (at %s)", name, strings.TrimPrefix(where, "."))
		return false
	}
	removeAt(vols, i)
	return true
}

// removeItems undoes podmeta's completion of a metadata volume the pod had: podmeta
// appends the items it lacks, so its items are the ones at the end equal to podmeta's
// item for their path; the first item from the end that is not stops the removal.
func removeItems(r *removal, vol *yaml.Node, want corev1.Volume) bool {
	items := field(field(vol, "downwardAPI"), "items")
	if items == nil || items.Kind != yaml.SequenceNode || want.DownwardAPI == nil {
		return false
	}
	n := 0
	for len(items.Content) > 0 {
		last := items.Content[len(items.Content)-1]
		path := str(last, "path")
		k := slices.IndexFunc(want.DownwardAPI.Items, func(it corev1.DownwardAPIVolumeFile) bool { return it.Path == path })
		if k < 0 {
			break
		}
		if ok, _ := sameAs(last, want.DownwardAPI.Items[k]); !ok {
			break
		}
		items.Content = items.Content[:len(items.Content)-1]
		n++
	}
	if n > 0 {
		r.removed = append(r.removed, fmt.Sprintf("volume items ×%d", n))
	}
	return n > 0
}

func uninjectVolume(r *removal, p podNodes, st *webhook.Status, want *corev1.Pod, created *webhook.Created) {
	if st.Volume != "" && removeVolume(r, p, want, webhook.VolumeName) {
		r.removed = append(r.removed, "volume")
	}
	dropIfCreated(p.spec, "volumes", slices.Contains(created.Pod, "volumes"))
}

func uninjectAmbassador(r *removal, p podNodes, st *webhook.Status, want *corev1.Pod, created *webhook.Created) {
	list, wantList, createdWord := "containers", want.Spec.Containers, ""
	switch st.Ambassador {
	case "native-sidecar":
		list, wantList, createdWord = "initContainers", want.Spec.InitContainers, "initContainers"
	case "container":
	default:
		return
	}
	seq := p.list(list)
	i := indexByName(seq, webhook.AmbassadorContainerName)
	j := slices.IndexFunc(wantList, func(c corev1.Container) bool { return c.Name == webhook.AmbassadorContainerName })
	switch {
	case i < 0:
		return
	case j < 0:
		r.keep("container %s: podmeta would not add it now", webhook.AmbassadorContainerName)
		return
	}
	if ok, where := sameAs(seq.Content[i], wantList[j]); !ok {
		r.keep("container %s: it differs from what podmeta adds (at %s; pass the webhook's --ambassador-* flags)", webhook.AmbassadorContainerName, strings.TrimPrefix(where, "."))
		return
	}
	removeAt(seq, i)
	r.removed = append(r.removed, "ambassador")
	if createdWord != "" {
		dropIfCreated(p.spec, createdWord, slices.Contains(created.Pod, createdWord))
	}
	removeVolume(r, p, want, webhook.AmbassadorTokenVolumeName)
}

func uninjectStorage(r *removal, p podNodes, st *webhook.Status, created *webhook.Created) {
	n := 0
	for _, name := range sortedKeys(st.EphemeralStorage) {
		c := p.container(name)
		res := field(c, "resources")
		if res == nil {
			continue
		}
		for _, f := range []struct{ key, list, word string }{{"request", "requests", "resources.requests"}, {"limit", "limits", "resources.limits"}} {
			v, ok := st.EphemeralStorage[name][f.key]
			list := field(res, f.list)
			if !ok || list == nil {
				continue
			}
			have := str(list, webhook.EphemeralStorage)
			if have == "" {
				continue
			}
			qh, err1 := resource.ParseQuantity(have)
			qv, err2 := resource.ParseQuantity(v)
			if err1 != nil || err2 != nil || qh.Cmp(qv) != 0 {
				r.keep("the ephemeral-storage %s of container %q: %s is not the recorded %s", f.key, name, have, v)
				continue
			}
			deleteField(list, webhook.EphemeralStorage)
			n++
			dropIfCreated(res, f.list, createdIn(created, name, f.word) || createdIn(created, name, "resources"))
		}
		dropIfCreated(c, "resources", createdIn(created, name, "resources"))
	}
	if n > 0 {
		r.removed = append(r.removed, fmt.Sprintf("storage ×%d", n))
	}
}
