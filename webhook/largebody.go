package webhook

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Large bodies. Decoding a review costs ~40 ms of CPU per MB when the pod is many small
// objects (measured: 20,000 containers), and a typical review is 8 KB: ten 7 MB reviews a
// second, sent straight to the port, take more than a core, and every honest admission
// waits behind them (the hostile-input soak, docs/security.md). Requests whose body is
// over LargeBodyBytes are therefore decided one at a time and share LargeBodyRate bytes a
// second; the admission of a large body waits up to largeBodyMaxWait for its turn and
// its bytes, and is refused with 429, after that wait and before its body is read, if it
// would wait longer.
// Small bodies never wait for large ones.

const (
	// DefaultLargeBodyBytes is the default of Handler.LargeBodyBytes (--large-body-bytes).
	// Pods that big are rare: etcd stores at most 1.5 MiB per object, and a typical
	// review is 8 KB.
	DefaultLargeBodyBytes = 256 << 10
	// DefaultLargeBodyRate is the default of Handler.LargeBodyRate (--large-body-rate):
	// about a tenth of a core for decoding large bodies, worst case.
	DefaultLargeBodyRate = 2 << 20
	// largeBodyMaxWait bounds how long a large body waits for its turn and its bytes:
	// well within the apiserver's webhook timeout (the chart's 5 s).
	largeBodyMaxWait = 2 * time.Second
	// RefusedLarge is the reason of podmeta_body_refused_total for a large body refused
	// before it was read.
	RefusedLarge = "large"
)

var errLarge = errors.New("large body refused")

// largeLane admits large bodies one at a time at a bounded byte rate.
type largeLane struct {
	turn chan struct{} // one slot

	mu     sync.Mutex
	tokens float64 // bytes; negative: owed, paid by waiting
	last   time.Time
}

func (h *Handler) largeBodyBytes() int64 {
	if h.LargeBodyBytes > 0 {
		return h.LargeBodyBytes
	}
	return DefaultLargeBodyBytes
}

func (h *Handler) largeBodyRate() float64 {
	if h.LargeBodyRate > 0 {
		return float64(h.LargeBodyRate)
	}
	return DefaultLargeBodyRate
}

// enterLarge admits a request whose body is over LargeBodyBytes, before the body is
// read. It returns the function that ends its turn, called once the answer is written,
// or the 429 that refuses it.
func (h *Handler) enterLarge(r *http.Request) (leave func(), err error) {
	h.largeOnce.Do(func() {
		h.large = &largeLane{turn: make(chan struct{}, 1), tokens: float64(h.maxBodyBytes()), last: time.Now()}
	})
	l := h.large
	start := time.Now()
	// A refusal is answered only when the wait it refuses would have ended: a client
	// refused at once would reconnect at once, and a TLS handshake costs more than a
	// waiting goroutine (the soak: 1,400 handshakes a second took half the core).
	refuse := func(why string) (func(), error) {
		if rest := largeBodyMaxWait - time.Since(start); rest > 0 {
			t := time.NewTimer(rest)
			select {
			case <-t.C:
			case <-r.Context().Done():
			}
			t.Stop()
		}
		return nil, fmt.Errorf("%w: %w", &httpError{http.StatusTooManyRequests, fmt.Sprintf("body of %d bytes is over --large-body-bytes=%d, and %s (large bodies are decided one at a time, %d bytes a second in all: --large-body-rate)",
			r.ContentLength, h.largeBodyBytes(), why, int64(h.largeBodyRate()))}, errLarge)
	}
	deadline := time.NewTimer(largeBodyMaxWait)
	defer deadline.Stop()
	select {
	case l.turn <- struct{}{}:
	case <-deadline.C:
		return refuse(fmt.Sprintf("another large body was being decided for all of %s", largeBodyMaxWait))
	case <-r.Context().Done():
		return refuse("the client went away")
	}
	// This request's bytes, owed if the bucket lacks them: paid by waiting, while holding
	// the turn, unless that would take past the deadline.
	rate := h.largeBodyRate()
	l.mu.Lock()
	now := time.Now()
	l.tokens = min(l.tokens+rate*now.Sub(l.last).Seconds(), float64(h.maxBodyBytes()))
	l.last = now
	wait := time.Duration(0)
	if owed := float64(r.ContentLength) - l.tokens; owed > 0 {
		wait = time.Duration(owed / rate * float64(time.Second))
	}
	if time.Since(start)+wait > largeBodyMaxWait {
		l.mu.Unlock()
		<-l.turn
		return refuse(fmt.Sprintf("its bytes would be available only in %s", wait.Round(time.Millisecond)))
	}
	l.tokens -= float64(r.ContentLength)
	l.mu.Unlock()
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
		}
	}
	return func() { <-l.turn }, nil
}

func (h *Handler) maxBodyBytes() int64 {
	if h.MaxBodyBytes > 0 {
		return h.MaxBodyBytes
	}
	return DefaultMaxBodyBytes
}
