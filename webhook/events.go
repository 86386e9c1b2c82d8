package webhook

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/flowcontrol"
)

// Events where someone reads them (docs/workloads.md): the admission warnings of a pod a
// controller creates go to the controller, and a skipped pod says nothing at all, so
// podmeta records an Event on the pod's owner (its controller ownerReference: the pod
// has no name yet at CREATE), where `kubectl describe deployment|replicaset|job` shows
// it.
//
// The bound: at most one Event per owner and reason per Window (default 10 minutes), as
// long as fewer than MaxOwners owners (and pod generateNames, the cheap first key) were
// recorded within the window (an LRU; beyond it the least recently recorded are
// forgotten first). A 1,000-replica rollout thus
// writes one Event per ReplicaSet and reason, not 1,000 (client-go's own aggregation
// lets ~25 through before it throttles). Recording never runs on the request
// goroutine: the request only decides, under one mutex, and hands the event to a
// bounded queue (full: dropped, counted, and not remembered, so the owner's next pod
// tries again); Start drains it into client-go's recorder at most Rate a second (burst
// Burst), because that recorder starts goroutines per Event and retries each for
// minutes: what it holds is bounded by the rate, not by how fast requests come.
// Nothing is recorded for dry-run requests.
//
// What a request names is bounded before it is kept: the LRU keeps a SHA-256 of each
// key, never the names (the admission chain runs before the apiserver validates
// generateName or ownerReferences, so they may be megabytes), and an owner reference
// no object could have (a name over 253 bytes, a kind over 63, …) gets no Event.

// Reasons of the owner Events.
const (
	// EventReasonWarnings: podmeta injected the owner's pods with warnings (type Warning).
	EventReasonWarnings = "PodmetaWarnings"
	// EventReasonSkipped: podmeta left the owner's pods alone, and why (type Normal).
	EventReasonSkipped = "PodmetaSkipped"
)

// Defaults of OwnerEvents.
const (
	DefaultEventWindow    = 10 * time.Minute
	DefaultEventMaxOwners = 4096
	// DefaultEventRate and DefaultEventBurst bound the Events handed to client-go's
	// recorder: a second, and at once.
	DefaultEventRate  = 10.0
	DefaultEventBurst = 25
	// eventQueue bounds the events waiting for the recorder.
	eventQueue = 256
	// maxEventNoteBytes keeps a note under the events.k8s.io/v1 limit of 1 KiB.
	maxEventNoteBytes = 1000
)

// Results of podmeta_owner_events_total.
const (
	EventRecorded     = "recorded"     // handed to the recorder
	EventDeduplicated = "deduplicated" // one for this owner and reason within the window
	EventDropped      = "dropped"      // the queue was full
)

// EventRecorder is the part of client-go's events.EventRecorder
// (k8s.io/client-go/tools/events) podmeta uses.
type EventRecorder interface {
	Eventf(regarding runtime.Object, related runtime.Object, eventtype, reason, action, note string, args ...interface{})
}

// OwnerEvents records Events on the owners of pods; see the top of this file.
type OwnerEvents struct {
	Recorder  EventRecorder
	Window    time.Duration // 0: DefaultEventWindow
	MaxOwners int           // 0: DefaultEventMaxOwners
	Rate      float64       // Events handed to the recorder a second; 0: DefaultEventRate
	Burst     int           // and at once; 0: DefaultEventBurst
	// Results counts the events by result (nil: not counted).
	Results *prometheus.CounterVec
	// Now is the clock; tests replace it.
	Now func() time.Time

	once    sync.Once
	queue   chan ownerEvent
	limiter flowcontrol.RateLimiter

	mu     sync.Mutex
	recent map[eventKey]*list.Element // of lru, values *eventEntry
	lru    list.List                  // most recently recorded first
}

// eventKey is a SHA-256 of what it names (keyOf): its size does not depend on the
// request.
type eventKey [sha256.Size]byte

// keyOf is the key of parts, each length-prefixed so that no two lists of parts share it.
func keyOf(parts ...string) eventKey {
	h := sha256.New()
	var n [8]byte
	for _, p := range parts {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write([]byte(p))
	}
	var k eventKey
	h.Sum(k[:0])
	return k
}

type eventEntry struct {
	key eventKey
	at  time.Time
}

type ownerEvent struct {
	ref       *corev1.ObjectReference
	eventType string
	reason    string
	action    string
	note      string
}

// NewOwnerEventsMetric creates podmeta_owner_events_total and registers it with reg
// (nil: not registered).
func NewOwnerEventsMetric(reg prometheus.Registerer) *prometheus.CounterVec {
	return NewCounterVec(reg, "podmeta_owner_events_total",
		"Events on the owners of pods podmeta injected with warnings or skipped, by result: recorded, deduplicated (one for the owner and reason within --owner-event-window), dropped (the queue was full).",
		"result", EventRecorded, EventDeduplicated, EventDropped)
}

func (e *OwnerEvents) init() {
	e.once.Do(func() {
		e.queue = make(chan ownerEvent, eventQueue)
		e.recent = map[eventKey]*list.Element{}
		if e.Now == nil {
			e.Now = time.Now
		}
		rate, burst := e.Rate, e.Burst
		if rate <= 0 {
			rate = DefaultEventRate
		}
		if burst <= 0 {
			burst = DefaultEventBurst
		}
		e.limiter = flowcontrol.NewTokenBucketRateLimiter(float32(rate), burst)
	})
}

// Start hands queued events to the recorder, at most Rate a second, until ctx ends (a
// manager Runnable); it returns as soon as ctx ends, waiting or not.
func (e *OwnerEvents) Start(ctx context.Context) error {
	e.init()
	for {
		if e.limiter.Wait(ctx) != nil {
			return nil // ctx ended
		}
		select {
		case <-ctx.Done():
			return nil
		case ev := <-e.queue:
			e.Recorder.Eventf(ev.ref, nil, ev.eventType, ev.reason, ev.action, "%s", ev.note)
		}
	}
}

// NeedLeaderElection is false: every replica records the events of its own requests.
func (e *OwnerEvents) NeedLeaderElection() bool { return false }

// podOwner is the part of a pod review the events read, decoded only for a pod that
// gets an event.
type podOwner struct {
	Request struct {
		Object struct {
			Metadata struct {
				OwnerReferences []struct {
					APIVersion string    `json:"apiVersion"`
					Kind       string    `json:"kind"`
					Name       string    `json:"name"`
					UID        types.UID `json:"uid"`
					Controller *bool     `json:"controller"`
				} `json:"ownerReferences"`
			} `json:"metadata"`
		} `json:"object"`
	} `json:"request"`
}

// observe decides whether the pod of body (a review of namespace ns, planned as plan)
// gets an Event on its owner, and queues it. It never blocks. generateName is the pod's:
// the pods of one owner share it, so the second pod of a rollout is deduplicated by it
// without decoding the review again for its ownerReferences.
func (e *OwnerEvents) observe(body []byte, namespace, pod, generateName string, plan *Plan) {
	reason, eventType, action := EventReasonWarnings, corev1.EventTypeWarning, "Inject"
	switch {
	case plan.Skipped != "":
		reason, eventType, action = EventReasonSkipped, corev1.EventTypeNormal, "Skip"
	case len(plan.Warnings) == 0:
		return
	}
	e.init()
	var byName eventKey
	if generateName != "" {
		byName = keyOf(reason, namespace, "generateName", generateName)
		if !e.admit(byName) {
			e.count(EventDeduplicated)
			return
		}
	}
	var o podOwner
	if err := unmarshal(body, &o); err != nil {
		return
	}
	var ref *corev1.ObjectReference
	for _, r := range o.Request.Object.Metadata.OwnerReferences {
		if r.Controller != nil && *r.Controller {
			ref = &corev1.ObjectReference{APIVersion: r.APIVersion, Kind: r.Kind, Name: r.Name, UID: r.UID, Namespace: namespace}
			break
		}
	}
	if ref == nil || !possibleOwner(ref) {
		// Not created by a controller (the warnings reached whoever created it), or by
		// none that could exist.
		return
	}
	byOwner := keyOf(reason, namespace, string(ref.UID), ref.Kind, ref.Name)
	if !e.admit(byOwner) {
		e.count(EventDeduplicated)
		return
	}
	ev := ownerEvent{ref: ref, eventType: eventType, reason: reason, action: action, note: eventNote(clipAt(pod, maxOwnerNameBytes), plan, e.window())}
	select {
	case e.queue <- ev:
		e.count(EventRecorded)
	default:
		e.count(EventDropped)
		e.forget(byOwner, byName) // not recorded: the next pod tries again
	}
}

// Bounds of an owner reference an object could have: an object's name is at most a DNS
// subdomain (253), a kind a DNS label (63, as a CRD's kind is validated), an
// apiVersion a group (a DNS subdomain) and a version (a DNS label); a UID is a UUID.
const (
	maxOwnerNameBytes       = 253
	maxOwnerKindBytes       = 63
	maxOwnerAPIVersionBytes = 253 + 1 + 63
	maxOwnerUIDBytes        = 128
	maxNamespaceBytes       = 63
)

// possibleOwner reports whether ref is within what the apiserver allows an object:
// anything else names no owner, and would only cost memory while it waits.
func possibleOwner(ref *corev1.ObjectReference) bool {
	return ref.Name != "" && len(ref.Name) <= maxOwnerNameBytes && ref.Kind != "" && len(ref.Kind) <= maxOwnerKindBytes &&
		len(ref.APIVersion) <= maxOwnerAPIVersionBytes && len(ref.UID) <= maxOwnerUIDBytes && len(ref.Namespace) <= maxNamespaceBytes
}

// forget removes keys (the zero key is none) from the LRU.
func (e *OwnerEvents) forget(keys ...eventKey) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, k := range keys {
		if el, ok := e.recent[k]; ok && k != (eventKey{}) {
			delete(e.recent, k)
			e.lru.Remove(el)
		}
	}
}

// admit reports whether key had no event within the window, and if so marks it now.
func (e *OwnerEvents) admit(key eventKey) bool {
	now, window := e.Now(), e.window()
	maxOwners := e.MaxOwners
	if maxOwners <= 0 {
		maxOwners = DefaultEventMaxOwners
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if el, ok := e.recent[key]; ok {
		entry := el.Value.(*eventEntry)
		if now.Sub(entry.at) < window {
			return false
		}
		entry.at = now
		e.lru.MoveToFront(el)
		return true
	}
	e.recent[key] = e.lru.PushFront(&eventEntry{key: key, at: now})
	for e.lru.Len() > maxOwners {
		oldest := e.lru.Back()
		delete(e.recent, oldest.Value.(*eventEntry).key)
		e.lru.Remove(oldest)
	}
	return true
}

func (e *OwnerEvents) window() time.Duration {
	if e.Window > 0 {
		return e.Window
	}
	return DefaultEventWindow
}

func (e *OwnerEvents) count(result string) {
	if e.Results != nil {
		e.Results.WithLabelValues(result).Inc()
	}
}

// eventNote says what happened to one of the owner's pods, within the Event note limit.
func eventNote(pod string, plan *Plan, window time.Duration) string {
	var b strings.Builder
	if plan.Skipped != "" {
		fmt.Fprintf(&b, "podmeta left pod %s alone: %s (this owner's pods are not reported again for %s)", pod, plan.Skipped, window)
	} else {
		fmt.Fprintf(&b, "podmeta injected pod %s with %d warning(s) (this owner's pods are not reported again for %s): %s",
			pod, len(plan.Warnings), window, strings.Join(plan.Warnings, "; "))
	}
	return clipAt(b.String(), maxEventNoteBytes)
}
