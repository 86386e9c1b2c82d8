package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	"github.com/podmeta/podmeta/webhook"
)

// Defaults of the unknown-namespace bounds.
const (
	// defaultMaxNamespaceWaits is --max-namespace-waits: requests waiting at once for
	// a namespace the cache has not seen. A namespace created together with its pods
	// is seen within milliseconds, so a handful of waits covers every honest race;
	// more than that are someone naming namespaces that do not exist.
	defaultMaxNamespaceWaits = 8
	// unknownNamespaceTTL is how long a name not found after a full wait is answered
	// at once (no defaults) instead of being waited for again. The cache is still
	// read first: a namespace that appears meanwhile is used at once.
	unknownNamespaceTTL = 5 * time.Second
	// maxUnknownNamespaces bounds the names remembered as unknown.
	maxUnknownNamespaces = 4096
)

// Results of podmeta_namespace_lookups_total.
const (
	nsFound         = "found"          // in the cache at once
	nsAppeared      = "appeared"       // seen by the cache while the request waited
	nsUnknown       = "unknown"        // not seen within --namespace-wait
	nsUnknownCached = "unknown-cached" // not seen within a wait a moment ago: not waited for
	nsOverflow      = "overflow"       // --max-namespace-waits were waiting: not waited for
	nsError         = "error"          // the cache failed
)

// nsMeta is what podmeta reads of a namespace: the pod path its annotations, the
// workload path (webhook/workloads.go) its labels too.
type nsMeta struct {
	labels, annotations map[string]string
}

// namespaceLookup reads a namespace's metadata from the informer cache: no network
// I/O per request. A namespace the cache has not seen (created a moment ago, or one
// that does not exist) is waited for up to wait, so the defaults of a namespace
// created together with its pods are not missed. What unknown names can cost is
// bounded: one shared wait per name (later requests for it join the first), at most
// maxWaits requests waiting at once (beyond that a request goes on at once without
// namespace defaults, logged and counted), and a name not found after a full wait is
// not waited for again for unknownNamespaceTTL.
type namespaceLookup struct {
	get      func(ctx context.Context, name string) (nsMeta, error)
	synced   *atomic.Bool
	wait     time.Duration
	maxWaits int64
	log      logr.Logger
	lookups  *prometheus.CounterVec // nil: not counted
	poll     time.Duration

	waiting  atomic.Int64
	lastWarn atomic.Int64 // unix nanoseconds of the last overflow log line

	mu      sync.Mutex
	flights map[string]*nsFlight
	unknown map[string]time.Time // name: not waited for again until then
}

type nsFlight struct {
	done  chan struct{}
	meta  nsMeta
	found bool
}

// newNamespaceLookupMetric creates podmeta_namespace_lookups_total.
func newNamespaceLookupMetric(reg prometheus.Registerer) *prometheus.CounterVec {
	return webhook.NewCounterVec(reg, "podmeta_namespace_lookups_total",
		"Namespace annotation lookups of pod admissions, by result: found, appeared (seen while waiting), unknown (not seen within --namespace-wait), unknown-cached (not waited for: unknown a moment ago), overflow (not waited for: --max-namespace-waits already waiting), error.",
		"result", nsFound, nsAppeared, nsUnknown, nsUnknownCached, nsOverflow, nsError)
}

func newNamespaceLookup(get func(context.Context, string) (nsMeta, error), synced *atomic.Bool, wait time.Duration, maxWaits int, lookups *prometheus.CounterVec, log logr.Logger) *namespaceLookup {
	return &namespaceLookup{
		get: get, synced: synced, wait: wait, maxWaits: int64(maxWaits), lookups: lookups, log: log,
		poll: 20 * time.Millisecond, flights: map[string]*nsFlight{}, unknown: map[string]time.Time{},
	}
}

// cacheGetter reads namespace metadata from c.
func cacheGetter(c cache.Cache) func(context.Context, string) (nsMeta, error) {
	return func(ctx context.Context, name string) (nsMeta, error) {
		ns := namespaceMeta()
		if err := c.Get(ctx, types.NamespacedName{Name: name}, ns); err != nil {
			return nsMeta{}, err
		}
		return nsMeta{labels: ns.Labels, annotations: ns.Annotations}, nil
	}
}

// namespaceAnnotations is the lookup with the default bounds and no metric.
func namespaceAnnotations(c cache.Cache, synced *atomic.Bool, wait time.Duration, log logr.Logger) webhook.NamespaceAnnotations {
	return newNamespaceLookup(cacheGetter(c), synced, wait, defaultMaxNamespaceWaits, nil, log).Annotations
}

func (l *namespaceLookup) count(result string) {
	if l.lookups != nil {
		l.lookups.WithLabelValues(result).Inc()
	}
}

// Annotations is a webhook.NamespaceAnnotations.
func (l *namespaceLookup) Annotations(ctx context.Context, name string) map[string]string {
	return l.lookup(ctx, name).annotations
}

// Metadata is a webhook.NamespaceMetadata: the same lookup, labels too.
func (l *namespaceLookup) Metadata(ctx context.Context, name string) (labels, annotations map[string]string) {
	m := l.lookup(ctx, name)
	return m.labels, m.annotations
}

func (l *namespaceLookup) lookup(ctx context.Context, name string) nsMeta {
	meta, err := l.get(ctx, name)
	switch {
	case err == nil:
		l.count(nsFound)
		return meta
	case !apierrors.IsNotFound(err) && l.synced.Load():
		l.log.Error(err, "read namespace from cache", "namespace", name)
		l.count(nsError)
		return nsMeta{}
	}

	l.mu.Lock()
	if until, ok := l.unknown[name]; ok {
		if time.Now().Before(until) {
			l.mu.Unlock()
			l.count(nsUnknownCached)
			return nsMeta{}
		}
		delete(l.unknown, name)
	}
	if l.maxWaits > 0 && l.waiting.Load() >= l.maxWaits {
		l.mu.Unlock()
		l.count(nsOverflow)
		// At most one line a second: whoever causes this would otherwise write the log.
		if now := time.Now().UnixNano(); now-l.lastWarn.Load() > int64(time.Second) {
			l.lastWarn.Store(now)
			l.log.Info("too many requests waiting for namespaces the cache has not seen; using no namespace defaults", "namespace", name, "maxNamespaceWaits", l.maxWaits)
		}
		return nsMeta{}
	}
	l.waiting.Add(1)
	defer l.waiting.Add(-1)
	f := l.flights[name]
	if f == nil {
		f = &nsFlight{done: make(chan struct{})}
		l.flights[name] = f
		go l.await(name, f)
	}
	l.mu.Unlock()

	select {
	case <-f.done:
	case <-ctx.Done():
		l.count(nsUnknown)
		return nsMeta{}
	}
	if !f.found {
		l.count(nsUnknown)
		l.log.Info("namespace not in cache; using no namespace defaults", "namespace", name, "waited", l.wait)
		return nsMeta{}
	}
	l.count(nsAppeared)
	return f.meta
}

// await polls the cache for name until it appears or wait has passed, for every
// request waiting on f.
func (l *namespaceLookup) await(name string, f *nsFlight) {
	ctx, cancel := context.WithTimeout(context.Background(), l.wait)
	defer cancel()
	for {
		meta, err := l.get(ctx, name)
		if err == nil {
			f.meta, f.found = meta, true
			break
		}
		if !apierrors.IsNotFound(err) && l.synced.Load() {
			l.log.Error(err, "read namespace from cache", "namespace", name)
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(l.poll):
			continue
		}
		break
	}
	l.mu.Lock()
	delete(l.flights, name)
	if !f.found {
		now := time.Now()
		if len(l.unknown) >= maxUnknownNamespaces {
			for n, until := range l.unknown {
				if !now.Before(until) {
					delete(l.unknown, n)
				}
			}
			if len(l.unknown) >= maxUnknownNamespaces {
				clear(l.unknown)
			}
		}
		l.unknown[name] = now.Add(unknownNamespaceTTL)
	}
	l.mu.Unlock()
	close(f.done)
}
