package webhook

import (
	"k8s.io/apimachinery/pkg/api/resource"
)

// planStorage sets default ephemeral-storage requests and limits on every container that
// has none, so a container writing a few KiB is not the first evicted. A request is
// never set above the container's own limit, and a limit never below its own request.
func (pl *planner) planStorage() {
	if pl.settings.StorageRequest == nil && pl.settings.StorageLimit == nil {
		return
	}
	for _, t := range pl.allContainers() {
		if pl.over {
			return
		}
		var haveReq, haveLim *resource.Quantity
		if r := t.c.Resources; r != nil {
			if r.Requests != nil {
				haveReq = r.Requests.EphemeralStorage
			}
			if r.Limits != nil {
				haveLim = r.Limits.EphemeralStorage
			}
		}
		a := storageAddition{ref: t}
		if req := pl.settings.StorageRequest; req != nil && haveReq == nil {
			q := req.DeepCopy()
			// The pod's own quantities are compared through cmpPodQuantity (bounds.go): one
			// of "1e2147483647" would cost a number of 2×10⁹ digits to compare.
			if haveLim != nil && cmpPodQuantity(haveLim, q) < 0 {
				q = haveLim.DeepCopy()
				pl.note("%s %q: ephemeral-storage request lowered to its limit %s", t.kind(), t.c.Name, q.String())
			}
			a.request = &q
		}
		if lim := pl.settings.StorageLimit; lim != nil && haveLim == nil {
			if haveReq != nil && cmpPodQuantity(haveReq, *lim) > 0 {
				pl.warn(FeatureStorage, "%s %q requests ephemeral-storage %s, above the default limit %s; set no limit", t.kind(), t.c.Name, podQuantityString(haveReq), lim.String())
				pl.skip(SkipStorageLimit, t.c.Name)
			} else {
				q := lim.DeepCopy()
				a.limit = &q
			}
		}
		if a.request == nil && a.limit == nil {
			continue
		}
		pl.emit(a)
		if pl.plan.Status.EphemeralStorage == nil {
			pl.plan.Status.EphemeralStorage = map[string]map[string]string{}
		}
		rec := map[string]string{}
		if a.request != nil {
			rec["request"] = a.request.String()
		}
		if a.limit != nil {
			rec["limit"] = a.limit.String()
		}
		pl.plan.Status.EphemeralStorage[t.c.Name] = rec
	}
}
