package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// fakeRecorder collects the events handed to client-go's recorder.
type fakeRecorder struct {
	mu     sync.Mutex
	events []string // "Kind/name uid type reason: note"
}

func (r *fakeRecorder) Eventf(regarding, _ runtime.Object, eventtype, reason, _, note string, args ...interface{}) {
	ref := regarding.(*corev1.ObjectReference)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("%s/%s %s %s %s: %s", ref.Kind, ref.Name, ref.UID, eventtype, reason, fmt.Sprintf(note, args...)))
}

func (r *fakeRecorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

// ownedReview is the recorded typical pod review (created by ReplicaSet web-7d9f8c6b5)
// with its owner renamed to owner (uid "uid-"+owner, pods named owner-*) and
// annotations added.
func ownedReview(t testing.TB, owner string, ann map[string]string, dryRun bool) []byte {
	return recorded(t, "typical", func(review map[string]any) {
		req := request(review)
		meta := req["object"].(map[string]any)["metadata"].(map[string]any)
		ref := meta["ownerReferences"].([]any)[0].(map[string]any)
		ref["name"], ref["uid"] = owner, "uid-"+owner
		meta["generateName"] = owner + "-"
		for k, v := range ann {
			podAnnotations(review)[k] = v
		}
		req["dryRun"] = dryRun
	})
}

func eventsHandler(t testing.TB, e *OwnerEvents) *Handler {
	h, _ := testHandler(t)
	h.Events = e
	return h
}

// waitEvents waits until the recorder has n events, and a moment more to see that no
// more come.
func waitEvents(t *testing.T, r *fakeRecorder, n int) []string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(r.all()) < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	got := r.all()
	if len(got) != n {
		t.Fatalf("%d events, want %d:\n%s", len(got), n, strings.Join(got, "\n"))
	}
	return got
}

// A 1,000-replica rollout of two ReplicaSets, every pod warned and some skipped,
// writes one Event per owner and reason; the next window writes one more; dry runs and
// pods without a controller write none.
func TestOwnerEventsBounded(t *testing.T) {
	rec := &fakeRecorder{}
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var clockMu sync.Mutex
	e := &OwnerEvents{Recorder: rec, Results: NewOwnerEventsMetric(nil), Now: func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go e.Start(ctx)
	h := eventsHandler(t, e)
	warned := map[string]string{Prefix + "bogus": "x"}
	skipped := map[string]string{AnnotationInject: "false"}

	rollout := func(owner string, ann map[string]string, dryRun bool) {
		body := ownedReview(t, owner, ann, dryRun)
		for range 1000 {
			if s := serve(t, h, "application/json", body); s.code != http.StatusOK || !s.review.Response.Allowed {
				t.Fatalf("HTTP %d %s", s.code, s.body)
			}
		}
	}
	rollout("web-a", warned, false)
	rollout("web-b", warned, false)
	rollout("web-a", skipped, false)
	rollout("web-dry", warned, true) // dry run: nothing
	got := waitEvents(t, rec, 3)
	for _, want := range []string{
		"ReplicaSet/web-a uid-web-a Warning PodmetaWarnings: podmeta injected pod ",
		"ReplicaSet/web-b uid-web-b Warning PodmetaWarnings: ",
		"ReplicaSet/web-a uid-web-a Normal PodmetaSkipped: podmeta left pod ",
	} {
		if !strings.Contains(strings.Join(got, "\n"), want) {
			t.Errorf("events lack %q:\n%s", want, strings.Join(got, "\n"))
		}
	}
	if !strings.Contains(got[0], "unknown pod annotation podmeta.io/bogus ignored") || !strings.Contains(got[0], "not reported again for 10m0s") {
		t.Errorf("note %q", got[0])
	}
	if n := testutil.ToFloat64(e.Results.WithLabelValues(EventDeduplicated)); n != 3*999 {
		t.Errorf("deduplicated %v, want %d", n, 3*999)
	}

	// A pod without a controller ownerReference: its creator saw the warnings.
	body := recorded(t, "typical", func(review map[string]any) {
		delete(request(review)["object"].(map[string]any)["metadata"].(map[string]any), "ownerReferences")
		podAnnotations(review)[Prefix+"bogus"] = "x"
	})
	serve(t, h, "application/json", body)

	// The next window: one more for the owner still rolling out.
	clockMu.Lock()
	now = now.Add(DefaultEventWindow)
	clockMu.Unlock()
	rollout("web-a", warned, false)
	waitEvents(t, rec, 4)
}

// The owners remembered are bounded (an LRU of MaxOwners), and a full queue drops
// events instead of blocking the request.
func TestOwnerEventsMemoryAndQueueBounded(t *testing.T) {
	rec := &fakeRecorder{}
	e := &OwnerEvents{Recorder: rec, MaxOwners: 100, Results: NewOwnerEventsMetric(nil)}
	h := eventsHandler(t, e)
	warned := map[string]string{Prefix + "bogus": "x"}
	start := time.Now()
	for i := range 300 { // no Start: nothing drains the queue
		serve(t, h, "application/json", ownedReview(t, fmt.Sprintf("rs-%d", i), warned, false))
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("300 requests took %s with a full queue", d)
	}
	e.mu.Lock()
	remembered := len(e.recent)
	e.mu.Unlock()
	if remembered > 100 || remembered < 100-2 { // the owner keys of dropped events are forgotten
		t.Errorf("%d owners remembered, want the bound 100", remembered)
	}
	queued, dropped := testutil.ToFloat64(e.Results.WithLabelValues(EventRecorded)), testutil.ToFloat64(e.Results.WithLabelValues(EventDropped))
	if queued != eventQueue || dropped != 300-eventQueue {
		t.Errorf("queued %v dropped %v, want %d and %d", queued, dropped, eventQueue, 300-eventQueue)
	}
}

// BenchmarkHandlerOwnerEvents is the cost of events on the pod path: a warned pod of
// one ReplicaSet (deduplicated after the first), with and without OwnerEvents.
func BenchmarkHandlerOwnerEvents(b *testing.B) {
	body := ownedReview(b, "web", map[string]string{Prefix + "bogus": "x"}, false)
	for _, withEvents := range []bool{false, true} {
		b.Run(fmt.Sprintf("events=%v", withEvents), func(b *testing.B) {
			h, _ := testHandler(b)
			h.Log = logr.Discard()
			if withEvents {
				e := &OwnerEvents{Recorder: &fakeRecorder{}}
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go e.Start(ctx)
				h.Events = e
			}
			b.ReportAllocs()
			for b.Loop() {
				r := httptest.NewRequest(http.MethodPost, "/mutate-v1-pod", bytes.NewReader(body))
				r.Header.Set("Content-Type", "application/json")
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				if w.Code != http.StatusOK {
					b.Fatal(w.Code, w.Body.String())
				}
			}
		})
	}
}

// ownerBody is a pod review with one controller ownerReference, as observe reads it.
func ownerBody(t testing.TB, name, uid string) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"request": map[string]any{"object": map[string]any{"metadata": map[string]any{
		"ownerReferences": []any{map[string]any{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": uid, "controller": true}},
	}}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Names from the request are bounded before they are stored: the admission chain runs
// before the apiserver validates generateName or ownerReferences, so a pod author (or
// anyone who reaches the port) can send megabytes in either. Neither the LRU nor the
// queue may keep them: 64 pods with a 1 MiB generateName and a 1 MiB owner name leave
// (almost) nothing behind, and no Event names an owner no object could be.
func TestOwnerEventsHostileNamesBounded(t *testing.T) {
	e := &OwnerEvents{Recorder: &fakeRecorder{}, Results: NewOwnerEventsMetric(nil)}
	plan := &Plan{Warnings: []string{"podmeta: a warning"}}
	const n, size = 64, 1 << 20
	var before goruntime.MemStats
	goruntime.GC()
	goruntime.ReadMemStats(&before)
	for i := range n {
		big := strings.Repeat("x", size) + strconv.Itoa(i)
		e.observe(ownerBody(t, big, "uid-"+strconv.Itoa(i)), "team-a", big+"*", big, plan)
	}
	goruntime.GC()
	var after goruntime.MemStats
	goruntime.ReadMemStats(&after)
	if kept := int64(after.HeapAlloc) - int64(before.HeapAlloc); kept > 8<<20 {
		t.Errorf("%d MiB kept after %d requests of 2 MiB of names", kept>>20, n)
	}
	if len(e.queue) != 0 {
		t.Errorf("%d events queued for owners whose name is over 253 bytes", len(e.queue))
	}
	// A real owner still gets its Event.
	e.observe(ownerBody(t, "web-7d9f8c6b5", "uid-web"), "team-a", "web-7d9f8c6b5-*", "web-7d9f8c6b5-", plan)
	if len(e.queue) != 1 {
		t.Errorf("%d events queued for a valid owner, want 1", len(e.queue))
	}
}

// What leaves the queue is bounded too: client-go's recorder starts two goroutines per
// Event and sends each with retries, at the client's rate, so a flood of made-up
// owners (each one new to the LRU) must not pass through Start as fast as it comes.
func TestOwnerEventsRateBounded(t *testing.T) {
	rec := &fakeRecorder{}
	e := &OwnerEvents{Recorder: rec, Results: NewOwnerEventsMetric(nil)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	start := time.Now()
	go func() { e.Start(ctx); close(done) }()
	plan := &Plan{Warnings: []string{"podmeta: a warning"}}
	for i := range 5000 {
		e.observe(ownerBody(t, "rs-"+strconv.Itoa(i), "uid-"+strconv.Itoa(i)), "team-a", "pod", "rs-"+strconv.Itoa(i)+"-", plan)
	}
	time.Sleep(300 * time.Millisecond)
	got, elapsed := len(rec.all()), time.Since(start)
	if most := DefaultEventBurst + int(DefaultEventRate*elapsed.Seconds()) + 1; got > most {
		t.Errorf("%d events handed to the recorder within %s, want at most %d (burst %d, %v a second)", got, elapsed, most, DefaultEventBurst, DefaultEventRate)
	}
	if dropped := testutil.ToFloat64(e.Results.WithLabelValues(EventDropped)); dropped < 5000-eventQueue-DefaultEventBurst-10 {
		t.Errorf("dropped %v, want the flood beyond the queue", dropped)
	}
	// Start, waiting for its next turn, returns when its context ends: no goroutine is left.
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Start did not return after its context ended")
	}
}

// An event dropped because the queue was full does not count as recorded: the owner's
// next pod tries again, instead of the owner being silent for the whole window.
func TestOwnerEventsDroppedIsNotDeduplicated(t *testing.T) {
	rec := &fakeRecorder{}
	e := &OwnerEvents{Recorder: rec, Results: NewOwnerEventsMetric(nil), Rate: 1e6, Burst: 1000}
	plan := &Plan{Warnings: []string{"podmeta: a warning"}}
	for i := range eventQueue { // no Start yet: the queue fills
		e.observe(ownerBody(t, "rs-"+strconv.Itoa(i), "uid-"+strconv.Itoa(i)), "team-a", "pod", "rs-"+strconv.Itoa(i)+"-", plan)
	}
	e.observe(ownerBody(t, "web", "uid-web"), "team-a", "pod", "web-", plan) // dropped
	if d := testutil.ToFloat64(e.Results.WithLabelValues(EventDropped)); d != 1 {
		t.Fatalf("dropped %v, want 1", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go e.Start(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for len(e.queue) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	e.observe(ownerBody(t, "web", "uid-web"), "team-a", "pod", "web-", plan)
	deadline = time.Now().Add(5 * time.Second)
	for !slices.ContainsFunc(rec.all(), func(s string) bool { return strings.HasPrefix(s, "ReplicaSet/web ") }) {
		if time.Now().After(deadline) {
			t.Fatalf("no Event for ReplicaSet web after its first one was dropped: %v", testutil.ToFloat64(e.Results.WithLabelValues(EventDeduplicated)))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Only the controller ownerReference names the owner: a pod whose other owners (a
// garbage-collection parent, controller false or unset) did not create it gets no Event
// on them, and a controller listed after such owners gets it.
func TestOwnerEventsOnlyOnTheController(t *testing.T) {
	e := &OwnerEvents{Recorder: &fakeRecorder{}, Results: NewOwnerEventsMetric(nil)}
	plan := &Plan{Warnings: []string{"podmeta: a warning"}}
	body := func(refs ...map[string]any) []byte {
		b, err := json.Marshal(map[string]any{"request": map[string]any{"object": map[string]any{"metadata": map[string]any{"ownerReferences": refs}}}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ref := func(name string, controller any) map[string]any {
		r := map[string]any{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": "uid-" + name}
		if controller != nil {
			r["controller"] = controller
		}
		return r
	}
	e.observe(body(ref("parent", false), ref("other", nil)), "team-a", "pod-a", "", plan)
	if len(e.queue) != 0 {
		t.Fatalf("%d events queued for a pod without a controller ownerReference", len(e.queue))
	}
	e.observe(body(ref("parent", false), ref("web", true)), "team-a", "pod-b", "", plan)
	if len(e.queue) != 1 {
		t.Fatalf("%d events queued, want 1 on the controller", len(e.queue))
	}
	if ev := <-e.queue; ev.ref.Name != "web" || ev.ref.UID != "uid-web" {
		t.Errorf("event on %s/%s (uid %s), want the controller web", ev.ref.Kind, ev.ref.Name, ev.ref.UID)
	}
}

// An Event note stays within the events.k8s.io/v1 limit whatever the warnings: a pod
// may be warned about thousands of containers or keys.
func TestOwnerEventNoteBounded(t *testing.T) {
	e := &OwnerEvents{Recorder: &fakeRecorder{}, Results: NewOwnerEventsMetric(nil)}
	plan := &Plan{}
	for i := range 500 {
		plan.Warnings = append(plan.Warnings, "podmeta: warning "+strconv.Itoa(i)+" "+strings.Repeat("w", 100))
	}
	e.observe(ownerBody(t, "web", "uid-web"), "team-a", "web-abcde", "web-", plan)
	if len(e.queue) != 1 {
		t.Fatalf("%d events queued, want 1", len(e.queue))
	}
	note := (<-e.queue).note
	if len(note) > maxEventNoteBytes || !strings.HasPrefix(note, "podmeta injected pod web-abcde with 500 warning(s)") {
		t.Errorf("note of %d bytes (limit %d): %.120q…", len(note), maxEventNoteBytes, note)
	}
}
