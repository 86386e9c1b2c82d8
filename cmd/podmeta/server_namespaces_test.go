package main

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// fakeNamespaces is an informer cache holding the namespaces in ns; reads counts Gets.
type fakeNamespaces struct {
	cache.Cache
	mu    sync.Mutex
	ns    map[string]map[string]string
	reads atomic.Int64
}

func (f *fakeNamespaces) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	f.reads.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	ann, ok := f.ns[key.Name]
	if !ok {
		return apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, key.Name)
	}
	obj.(*metav1.PartialObjectMetadata).Annotations = ann
	obj.(*metav1.PartialObjectMetadata).Labels = map[string]string{"kubernetes.io/metadata.name": key.Name}
	return nil
}

func (f *fakeNamespaces) add(name string, ann map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ns[name] = ann
}

func synced() *atomic.Bool {
	var b atomic.Bool
	b.Store(true)
	return &b
}

// lookupAll runs one lookup per name at once and returns how long each took.
func lookupAll(lookup func(context.Context, string) map[string]string, names []string) []time.Duration {
	took := make([]time.Duration, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Go(func() {
			start := time.Now()
			lookup(context.Background(), n)
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	return took
}

// Finding 4 of security issue 16: every review naming a namespace the cache had not
// seen waited --namespace-wait (1 s) in an in-flight slot, so ~100 such requests a
// second filled every slot. Now at most defaultMaxNamespaceWaits requests wait at
// once; the rest go on at once without namespace defaults.
func TestNamespaceUnknownWaitsBounded(t *testing.T) {
	c := &fakeNamespaces{ns: map[string]map[string]string{}}
	lookup := namespaceAnnotations(c, synced(), time.Second, logr.Discard())
	names := make([]string, 100)
	for i := range names {
		names[i] = "ghost-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
	}
	start := time.Now()
	took := lookupAll(lookup, names)
	waited := 0
	for _, d := range took {
		if d > 500*time.Millisecond {
			waited++
		}
	}
	t.Logf("100 lookups of unknown namespaces at once: %d waited, all done in %s", waited, time.Since(start))
	if waited > defaultMaxNamespaceWaits {
		t.Errorf("%d of 100 lookups of unknown namespaces waited; want at most %d", waited, defaultMaxNamespaceWaits)
	}
}

// One name is waited for once: 5 requests for it share one wait, and a request for it
// right after that wait ended is answered at once.
func TestNamespaceUnknownSharedAndRemembered(t *testing.T) {
	c := &fakeNamespaces{ns: map[string]map[string]string{}}
	lookup := namespaceAnnotations(c, synced(), 300*time.Millisecond, logr.Discard())
	names := make([]string, 5)
	for i := range names {
		names[i] = "ghost"
	}
	took := lookupAll(lookup, names)
	for _, d := range took {
		if d < 250*time.Millisecond || d > time.Second {
			t.Errorf("a request for an unknown namespace took %s, want about the 300ms wait", d)
		}
	}
	start := time.Now()
	for range 100 {
		lookup(context.Background(), "ghost")
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("100 requests for a namespace unknown a moment ago took %s, want no wait", d)
	}
}

// A namespace created together with its pods: the cache sees it while the first
// request waits, and that request and every later one get its annotations.
func TestNamespaceAppearsWhileWaiting(t *testing.T) {
	c := &fakeNamespaces{ns: map[string]map[string]string{}}
	lookup := namespaceAnnotations(c, synced(), 2*time.Second, logr.Discard())
	go func() {
		time.Sleep(100 * time.Millisecond)
		c.add("new", map[string]string{"podmeta.io/env": "none"})
	}()
	start := time.Now()
	if ann := lookup(context.Background(), "new"); ann["podmeta.io/env"] != "none" {
		t.Fatalf("got %v", ann)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("found after %s, want as soon as the cache has it", d)
	}
	if ann := lookup(context.Background(), "new"); ann["podmeta.io/env"] != "none" {
		t.Errorf("second lookup got %v", ann)
	}
}

// A name remembered as unknown is still read from the cache first: a namespace
// created after a wait for it gave up is used at once.
func TestNamespaceRememberedUnknownAppears(t *testing.T) {
	c := &fakeNamespaces{ns: map[string]map[string]string{}}
	l := newNamespaceLookup(cacheGetter(c), synced(), 50*time.Millisecond, 2, newNamespaceLookupMetric(nil), logr.Discard())
	if ann := l.Annotations(context.Background(), "late"); ann != nil {
		t.Fatalf("got %v", ann)
	}
	c.add("late", map[string]string{"a": "b"})
	if ann := l.Annotations(context.Background(), "late"); ann["a"] != "b" {
		t.Errorf("got %v", ann)
	}
}

// Requests beyond --max-namespace-waits are counted as overflow.
func TestNamespaceOverflowCounted(t *testing.T) {
	c := &fakeNamespaces{ns: map[string]map[string]string{"real": {"x": "y"}}}
	m := newNamespaceLookupMetric(nil)
	l := newNamespaceLookup(cacheGetter(c), synced(), 200*time.Millisecond, 2, m, logr.Discard())
	lookupAll(l.Annotations, []string{"g1", "g2", "g3", "g4", "g5", "real"})
	count := func(r string) int { return int(testutil.ToFloat64(m.WithLabelValues(r))) }
	if found, unknown, overflow := count(nsFound), count(nsUnknown), count(nsOverflow); found != 1 || unknown != 2 || overflow != 3 {
		t.Errorf("found %d unknown %d overflow %d, want 1 2 3", found, unknown, overflow)
	}
}

// The workload path reads labels through the same lookup: a namespace's labels come
// with its annotations, also for one that appears while the request waits.
func TestNamespaceMetadataHasLabels(t *testing.T) {
	c := &fakeNamespaces{ns: map[string]map[string]string{"real": {"x": "y"}}}
	l := newNamespaceLookup(cacheGetter(c), synced(), time.Second, 2, newNamespaceLookupMetric(nil), logr.Discard())
	labels, ann := l.Metadata(context.Background(), "real")
	if labels["kubernetes.io/metadata.name"] != "real" || ann["x"] != "y" {
		t.Errorf("got labels %v annotations %v", labels, ann)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		c.add("later", map[string]string{"a": "b"})
	}()
	if labels, ann := l.Metadata(context.Background(), "later"); labels["kubernetes.io/metadata.name"] != "later" || ann["a"] != "b" {
		t.Errorf("appeared while waiting: got labels %v annotations %v", labels, ann)
	}
	if labels, ann := l.Metadata(context.Background(), "ghost"); labels != nil || ann != nil {
		t.Errorf("unknown namespace: got labels %v annotations %v", labels, ann)
	}
}
