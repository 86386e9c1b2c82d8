package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultMaxBodyBytes bounds an AdmissionReview body. The apiserver's own limit for an
// object is 3 MiB and a review may carry it twice (object and oldObject); controller-
// runtime uses the same bound.
const DefaultMaxBodyBytes = 7 << 20

// DefaultBodyBudget bounds the bytes buffered for request bodies by all requests at
// once (--body-budget-bytes): 9 bodies of the largest size, or thousands of typical
// ones (10-20 KB). docs/operations.md shows how it fits the chart's memory limit.
const DefaultBodyBudget = 64 << 20

// DefaultReadTimeout bounds the time a request may take to deliver its body, from the
// moment its headers were read (--body-read-timeout). The apiserver sends a review in
// one write: milliseconds, even for the largest.
const DefaultReadTimeout = 3 * time.Second

// readChunk is the most one read of a body may add: the budget is charged before each
// read, so a request that sent one byte holds at most this much of it.
const readChunk = 16 << 10

// NamespaceAnnotations returns a namespace's annotations from a local cache: the
// handler does no network I/O per request.
type NamespaceAnnotations func(ctx context.Context, namespace string) map[string]string

// Handler serves AdmissionReviews for pods: the HTTP adapter around the Injector. It
// reads the review and the pod in one decoding pass, answers a patch with warnings, a
// denial with the engine's message, or HTTP 4xx for a request that is not a review.
// Anything but a Pod CREATE is allowed untouched. A panic is recovered, logged, counted
// and answered with HTTP 500: it never reaches the apiserver as a dropped connection.
// Workloads serves workload reviews behind the same reading, bounds and recovery.
type Handler struct {
	Injector     *Injector
	Namespaces   NamespaceAnnotations // nil: no namespace defaults
	Metrics      *Metrics             // nil: not counted
	Log          logr.Logger
	MaxBodyBytes int64 // 0: DefaultMaxBodyBytes
	// MaxInFlight bounds the requests decided at once; excess is refused at once with
	// HTTP 429 instead of queueing past the apiserver's timeout (which would fail every
	// request, not just the excess). 0: no bound. A slot is taken only once the body
	// has been read: a client that is slow to send cannot hold one.
	MaxInFlight int
	// ReadTimeout bounds how long a request may take to send its body (0:
	// DefaultReadTimeout). A slower client gets HTTP 408 and its connection is closed.
	ReadTimeout time.Duration
	// BodyBudget bounds the bytes buffered for bodies by all requests at once, from the
	// first byte read until the answer is written (0: DefaultBodyBudget). A request that
	// would go over it is refused with HTTP 429. It must be at least MaxBodyBytes.
	BodyBudget int64
	// Reads counts requests refused while their body was read (nil: not counted).
	Reads *ReadMetrics
	// LargeBodyBytes and LargeBodyRate: bodies over LargeBodyBytes (0:
	// DefaultLargeBodyBytes) are decided one at a time, LargeBodyRate bytes a second in
	// all (0: DefaultLargeBodyRate); see largebody.go. A body that large must announce
	// its Content-Length, as the apiserver's do.
	LargeBodyBytes int64
	LargeBodyRate  int64
	// Events records Events on the owners of controller-created pods injected with
	// warnings or skipped (events.go); nil: none. Never for dry-run requests.
	Events *OwnerEvents

	largeOnce sync.Once
	large     *largeLane

	slotsOnce sync.Once
	slots     chan struct{}
	draining  atomic.Bool
	buffered  atomic.Int64 // bytes of BodyBudget charged
}

// ReadMetrics count what the body reading refuses.
type ReadMetrics struct {
	// Refused counts requests refused before a decision, by reason: timeout (body not
	// sent within --body-read-timeout), budget (--body-budget-bytes were buffered) or large
	// (no turn for a body over --large-body-bytes: largebody.go).
	Refused *prometheus.CounterVec
}

// Reasons of podmeta_body_refused_total.
const (
	RefusedTimeout = "timeout"
	RefusedBudget  = "budget"
)

// NewReadMetrics creates podmeta_body_refused_total and registers it with reg (nil:
// not registered).
func NewReadMetrics(reg prometheus.Registerer) *ReadMetrics {
	return &ReadMetrics{Refused: NewCounterVec(reg, "podmeta_body_refused_total",
		"Admission requests refused while their body was read, by reason: timeout (not sent within --body-read-timeout, HTTP 408), budget (--body-budget-bytes already buffered, HTTP 429) or large (a body over --large-body-bytes found no turn within 2 s at --large-body-rate, HTTP 429). Also counted as result=error.",
		"reason", RefusedTimeout, RefusedBudget, RefusedLarge)}
}

// Drain makes every later response close its connection ("Connection: close"). A
// server about to stop calls it first: the apiserver then moves to other replicas one
// completed request at a time, instead of finding its kept-alive connections closed
// under a request it already sent (which fails that admission).
func (h *Handler) Drain() { h.draining.Store(true) }

// review is the part of an AdmissionReview (v1 or v1beta1, which share this shape) a
// handler reads, its object decoded straight into O in the same pass: a
// podView for the pod path (no RawExtension copy, no second decode of the pod, no typed
// corev1.Pod), a workloadView for the workload path (workloads.go).
type review[O any] struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Request    *reviewRequest[O] `json:"request"`
}

type reviewRequest[O any] struct {
	UID  string `json:"uid"`
	Kind struct {
		Group string `json:"group"`
		Kind  string `json:"kind"`
	} `json:"kind"`
	SubResource string `json:"subResource"`
	Namespace   string `json:"namespace"`
	Operation   string `json:"operation"`
	DryRun      *bool  `json:"dryRun"`
	Object      *O     `json:"object"`
	// OldObject is an UPDATE's object before it, kept as JSON and decoded only where
	// it is read (workloads.go); a pointer, so a CREATE's "oldObject":null costs nothing.
	OldObject *jsontext.Value `json:"oldObject"`
}

// otherReview reads a review whose object is not a pod (it did not fit a podView).
// It is decoded by the same decoder as review, with the same rule for keys: exact and
// case-sensitive, as the apiserver decodes ("UID" is not "uid").
type otherReview struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Request    *struct {
		UID    string         `json:"uid"`
		Object jsontext.Value `json:"object"`
	} `json:"request"`
}

type reviewResponse struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Response   response `json:"response"`
}

type response struct {
	UID       string   `json:"uid"`
	Allowed   bool     `json:"allowed"`
	Status    *status  `json:"status,omitempty"`
	Patch     []byte   `json:"patch,omitempty"`
	PatchType string   `json:"patchType,omitempty"`
	Warnings  []string `json:"warnings,omitempty"`
}

type status struct {
	Code    int    `json:"code"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// httpError is a request the handler cannot answer with a review.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

var buffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.serve(w, r, nil) }

// serve reads, bounds and answers one review: a pod's (v nil) or a workload's
// (workloads.go).
func (h *Handler) serve(w http.ResponseWriter, r *http.Request, v *WorkloadValidator) {
	if h.draining.Load() {
		w.Header().Set("Connection", "close")
	}
	log := h.Log
	defer func() {
		if v := recover(); v != nil {
			log.Error(fmt.Errorf("panic: %v", v), "admission handler panicked", "stack", string(debug.Stack()))
			h.count(ResultError)
			http.Error(w, "podmeta: internal error", http.StatusInternalServerError)
		}
	}()

	body := buffers.Get().(*bytes.Buffer)
	body.Reset()
	var charged int64 // of BodyBudget, held until the answer is written
	defer func() {
		h.buffered.Add(-charged)
		if body.Cap() <= 1<<20 { // do not keep a rare huge buffer alive
			buffers.Put(body)
		}
	}()

	// A large body waits for its turn before it is read (largebody.go).
	if r.ContentLength > h.largeBodyBytes() && r.ContentLength <= h.maxBodyBytes() && r.Method == http.MethodPost {
		leave, err := h.enterLarge(r)
		if err != nil {
			h.refuse(w, err, log)
			return
		}
		defer leave()
	}
	// The body is read before an in-flight slot is taken, under its own deadline and
	// the byte budget: slots are for deciding, and a client slow to send holds none.
	if err := h.read(w, r, body, &charged); err != nil {
		h.refuse(w, err, log)
		return
	}
	if !h.acquire() {
		h.count(ResultError)
		if h.Metrics != nil {
			h.Metrics.Shed.Inc()
		}
		w.Header().Set("Retry-After", "1")
		http.Error(w, "podmeta: too many admission requests in flight", http.StatusTooManyRequests)
		return
	}
	defer h.release()

	patch := buffers.Get().(*bytes.Buffer)
	patch.Reset()
	defer func() {
		if patch.Cap() <= 1<<20 {
			buffers.Put(patch)
		}
	}()

	var resp *reviewResponse
	var err error
	if v != nil {
		resp, err = v.admitWorkload(r.Context(), body.Bytes(), &log)
	} else {
		resp, err = h.admit(r, body, patch, &log)
	}
	if err != nil {
		h.refuse(w, err, log)
		return
	}
	body.Reset()
	if err := json.NewEncoder(body).Encode(resp); err != nil {
		log.Error(err, "encode response")
		h.count(ResultError)
		http.Error(w, "podmeta: encode response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	// A known length spares net/http's chunked encoding, which would send a typical
	// ~10 KB answer as three TLS records (three write syscalls, each waking the
	// apiserver) instead of two.
	w.Header().Set("Content-Length", strconv.Itoa(body.Len()))
	_, _ = w.Write(body.Bytes())
}

// refuse answers a request that gets no review with its HTTP error.
func (h *Handler) refuse(w http.ResponseWriter, err error, log logr.Logger) {
	var he *httpError
	if !errors.As(err, &he) {
		he = &httpError{http.StatusInternalServerError, err.Error()}
	}
	h.count(ResultError)
	switch he.code {
	case http.StatusRequestTimeout:
		h.refused(RefusedTimeout)
		// Whatever the client sends later is not a request: do not read it.
		w.Header().Set("Connection", "close")
	case http.StatusTooManyRequests:
		if errors.Is(err, errLarge) {
			h.refused(RefusedLarge)
		} else {
			h.refused(RefusedBudget)
		}
		if h.Metrics != nil {
			h.Metrics.Shed.Inc()
		}
		w.Header().Set("Retry-After", "1")
		// The unread rest of the body would have to be drained to keep the connection.
		w.Header().Set("Connection", "close")
	}
	log.Info("bad admission request", "code", he.code, "error", he.msg)
	http.Error(w, "podmeta: "+he.msg, he.code)
}

func (h *Handler) refused(reason string) {
	if h.Reads != nil {
		h.Reads.Refused.WithLabelValues(reason).Inc()
	}
}

func (h *Handler) acquire() bool {
	if h.MaxInFlight <= 0 {
		return true
	}
	h.slotsOnce.Do(func() { h.slots = make(chan struct{}, h.MaxInFlight) })
	select {
	case h.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

func (h *Handler) release() {
	if h.MaxInFlight > 0 {
		<-h.slots
	}
}

func (h *Handler) count(result string) {
	if h.Metrics != nil {
		h.Metrics.Admissions.WithLabelValues(result).Inc()
	}
}

// read checks the request line and headers and reads the body into body, under
// ReadTimeout and BodyBudget; *charged is what it took of the budget, released by the
// caller once the answer is written.
func (h *Handler) read(w http.ResponseWriter, r *http.Request, body *bytes.Buffer, charged *int64) (err error) {
	timeout := h.ReadTimeout
	if timeout <= 0 {
		timeout = DefaultReadTimeout
	}
	// The deadline is the connection's: a read blocked on a silent client fails when
	// it passes. It stays set after a refusal, so that net/http's draining of an
	// unread body ends there too; after a body read in full it is cleared, and net/http
	// sets its own deadlines again for the connection's next request. (A
	// ResponseWriter without a connection, in tests, has none.)
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(time.Now().Add(timeout)) == nil {
		defer func() {
			switch {
			case err == nil:
				_ = rc.SetReadDeadline(time.Time{})
			case errors.Is(err, errBudget):
				_ = rc.SetReadDeadline(time.Now()) // read nothing more of it
			}
		}()
	}
	if r.Method != http.MethodPost {
		return &httpError{http.StatusMethodNotAllowed, "only POST is allowed"}
	}
	// The apiserver sends exactly "application/json"; only anything else is parsed
	// (ParseMediaType allocates a map per call).
	if ct := r.Header.Get("Content-Type"); ct != "application/json" && mediaType(ct) != "application/json" {
		return &httpError{http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Type %q: want application/json", r.Header.Get("Content-Type"))}
	}
	limit := h.maxBodyBytes()
	if r.ContentLength > limit {
		return &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("body of %d bytes is over the limit of %d", r.ContentLength, limit)}
	}
	if r.ContentLength < 0 {
		// No Content-Length: the lane for large bodies could not be chosen before
		// reading, so such a body may not be large.
		limit = min(limit, h.largeBodyBytes())
	}
	// A body with a known length is read to that length; one without, to limit+1 (to
	// tell an over-long body).
	want := limit + 1
	if r.ContentLength >= 0 {
		want = r.ContentLength
	}
	buf, rerr := h.readBody(r.Body, body.AvailableBuffer(), want, limit, charged)
	*body = *bytes.NewBuffer(buf)
	var ne interface{ Timeout() bool }
	switch {
	case errors.Is(rerr, errBudget):
		return fmt.Errorf("%w: %w", &httpError{http.StatusTooManyRequests, fmt.Sprintf("too many request bytes buffered at once (budget %d)", h.budget())}, errBudget)
	case rerr != nil && (errors.Is(rerr, os.ErrDeadlineExceeded) || errors.As(rerr, &ne) && ne.Timeout()):
		return &httpError{http.StatusRequestTimeout, fmt.Sprintf("body not received within %s", timeout)}
	case rerr != nil:
		return &httpError{http.StatusBadRequest, "read body: " + rerr.Error()}
	case int64(len(buf)) > limit:
		return &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("body is over the limit of %d bytes", limit)}
	}
	return nil
}

var errBudget = errors.New("body budget exhausted")

func (h *Handler) budget() int64 {
	if h.BodyBudget > 0 {
		return h.BodyBudget
	}
	return DefaultBodyBudget
}

// readBody reads r to EOF, or to want bytes, or past limit, appending to buf. Before
// each read it charges the budget for every byte the read may bring and every byte of
// capacity it allocates (a pooled buffer's capacity exists already and is not
// charged): what a request holds is bounded by what it actually sent, plus one
// readChunk, at most doubled by buffer growth.
func (h *Handler) readBody(r io.Reader, buf []byte, want, limit int64, charged *int64) ([]byte, error) {
	for {
		room := min(int64(readChunk), max(want-int64(len(buf)), 1))
		need := int64(len(buf)) + room
		target := need
		if int64(cap(buf)) < need {
			target = min(max(2*int64(cap(buf)), need), max(want, need))
		}
		if target > *charged {
			if !h.take(target - *charged) {
				return buf, errBudget
			}
			*charged = target
		}
		if int64(cap(buf)) < need {
			nb := make([]byte, len(buf), target)
			copy(nb, buf)
			buf = nb
		}
		n, err := r.Read(buf[len(buf):need])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil || int64(len(buf)) > limit {
			return buf, err
		}
	}
}

// take charges n bytes to the budget unless that would go over it.
func (h *Handler) take(n int64) bool {
	limit := h.budget()
	for {
		cur := h.buffered.Load()
		if cur+n > limit {
			return false
		}
		if h.buffered.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

// admit decides on the review in body, writing any patch into patch.
// log gains the request's uid, namespace and pod name for every line after it.
func (h *Handler) admit(r *http.Request, body, patch *bytes.Buffer, log *logr.Logger) (*reviewResponse, error) {
	var rev review[podView]
	if err := unmarshal(body.Bytes(), &rev); err != nil {
		return h.notAPod(body.Bytes(), err)
	}
	if err := checkReview(rev.APIVersion, rev.Kind, rev.Request != nil, rev.Request != nil && rev.Request.UID != ""); err != nil {
		return nil, err
	}
	req := rev.Request
	resp := &reviewResponse{APIVersion: rev.APIVersion, Kind: rev.Kind, Response: response{UID: req.UID, Allowed: true}}
	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.SubResource != "" || req.Operation != "CREATE" {
		h.count(ResultSkipped)
		return resp, nil
	}
	if req.Object == nil {
		return nil, &httpError{http.StatusBadRequest, "a pod CREATE review has no request.object"}
	}
	pod := req.Object
	name := pod.Metadata.Name
	if name == "" {
		name = pod.Metadata.GenerateName + "*"
	}
	*log = log.WithValues("uid", clip(req.UID), "namespace", clip(req.Namespace), "pod", clip(name))

	var nsAnn map[string]string
	if h.Namespaces != nil {
		nsAnn = h.Namespaces(r.Context(), req.Namespace)
	}
	plan, err := h.Injector.plan(pod, req.Namespace, nsAnn, true)
	if err != nil {
		// plan only fails with a DenyError: the pod decoded already.
		log.Info("denied", "reason", err.Error())
		h.count(ResultDenied)
		resp.Response.Allowed = false
		resp.Response.Status = &status{Code: http.StatusForbidden, Reason: "Forbidden", Message: err.Error()}
		return resp, nil
	}
	resp.Response.Warnings = plan.Warnings
	if h.Events != nil && (plan.Skipped != "" || len(plan.Warnings) > 0) && (req.DryRun == nil || !*req.DryRun) {
		h.Events.observe(body.Bytes(), req.Namespace, name, pod.Metadata.GenerateName, plan)
	}
	if plan.Empty() {
		log.V(1).Info("nothing to inject", "skipped", plan.Skipped)
		h.count(ResultSkipped)
		return resp, nil
	}
	if err := plan.WritePatchJSON(patch); err != nil {
		return nil, err
	}
	resp.Response.Patch, resp.Response.PatchType = patch.Bytes(), "JSONPatch"
	if v := log.V(1); v.Enabled() { // Status.String costs a marshal: only when logged
		v.Info("injected", "status", plan.Status.String(), "warnings", len(plan.Warnings), "dryRun", req.DryRun != nil && *req.DryRun)
	}
	if h.Metrics != nil {
		h.Metrics.observe(plan)
	}
	h.count(ResultInjected)
	return resp, nil
}

// notAPod answers a body that did not decode as a pod review: a review of another kind
// of object is allowed untouched; anything else is a bad request.
func (h *Handler) notAPod(body []byte, podErr error) (*reviewResponse, error) {
	var rev otherReview
	if err := unmarshal(body, &rev); err != nil {
		return nil, &httpError{http.StatusBadRequest, "not an AdmissionReview: " + err.Error()}
	}
	if err := checkReview(rev.APIVersion, rev.Kind, rev.Request != nil, rev.Request != nil && rev.Request.UID != ""); err != nil {
		return nil, err
	}
	var head struct {
		Kind string `json:"kind"`
	}
	if len(rev.Request.Object) > 0 && unmarshal(rev.Request.Object, &head) == nil && head.Kind == "Pod" {
		return nil, &httpError{http.StatusBadRequest, "malformed pod: " + podErr.Error()}
	}
	h.count(ResultSkipped)
	return &reviewResponse{APIVersion: rev.APIVersion, Kind: rev.Kind, Response: response{UID: rev.Request.UID, Allowed: true}}, nil
}

func checkReview(apiVersion, kind string, hasRequest, hasUID bool) error {
	switch {
	case kind != "AdmissionReview" || (apiVersion != "admission.k8s.io/v1" && apiVersion != "admission.k8s.io/v1beta1"):
		return &httpError{http.StatusBadRequest, fmt.Sprintf("want an admission.k8s.io/v1 AdmissionReview, got %q %q", apiVersion, kind)}
	case !hasRequest:
		return &httpError{http.StatusBadRequest, "AdmissionReview has no request"}
	case !hasUID:
		return &httpError{http.StatusBadRequest, "AdmissionReview request has no uid"}
	}
	return nil
}

func mediaType(contentType string) string {
	mt, _, _ := mime.ParseMediaType(contentType)
	return mt
}
