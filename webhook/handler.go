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
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/go-logr/logr"
)

// DefaultMaxBodyBytes bounds an AdmissionReview body. The apiserver's own limit for an
// object is 3 MiB and a review may carry it twice (object and oldObject); controller-
// runtime uses the same bound.
const DefaultMaxBodyBytes = 7 << 20

// NamespaceAnnotations returns a namespace's annotations from a local cache: the
// handler does no network I/O per request.
type NamespaceAnnotations func(ctx context.Context, namespace string) map[string]string

// Handler serves AdmissionReviews for pods: the HTTP adapter around the Injector. It
// reads the review and the pod in one decoding pass, answers a patch with warnings, a
// denial with the engine's message, or HTTP 4xx for a request that is not a review.
// Anything but a Pod CREATE is allowed untouched. A panic is recovered, logged, counted
// and answered with HTTP 500: it never reaches the apiserver as a dropped connection.
type Handler struct {
	Injector     *Injector
	Namespaces   NamespaceAnnotations // nil: no namespace defaults
	Metrics      *Metrics             // nil: not counted
	Log          logr.Logger
	MaxBodyBytes int64 // 0: DefaultMaxBodyBytes
	// MaxInFlight bounds the requests served at once; excess is refused at once with
	// HTTP 429 instead of queueing past the apiserver's timeout (which would fail every
	// request, not just the excess). 0: no bound.
	MaxInFlight int

	slotsOnce sync.Once
	slots     chan struct{}
	draining  atomic.Bool
}

// Drain makes every later response close its connection ("Connection: close"). A
// server about to stop calls it first: the apiserver then moves to other replicas one
// completed request at a time, instead of finding its kept-alive connections closed
// under a request it already sent (which fails that admission).
func (h *Handler) Drain() { h.draining.Store(true) }

// review is the part of an AdmissionReview (v1 or v1beta1, which share this shape) the
// handler reads. The object decodes straight into a podView, in the same pass: no
// RawExtension copy, no second decode of the pod, no typed corev1.Pod.
type review struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Request    *reviewRequest `json:"request"`
}

type reviewRequest struct {
	UID  string `json:"uid"`
	Kind struct {
		Group string `json:"group"`
		Kind  string `json:"kind"`
	} `json:"kind"`
	SubResource string   `json:"subResource"`
	Namespace   string   `json:"namespace"`
	Operation   string   `json:"operation"`
	DryRun      *bool    `json:"dryRun"`
	Object      *podView `json:"object"`
}

// otherReview reads a review whose object is not a pod (it did not fit a podView).
type otherReview struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Request    *struct {
		UID    string          `json:"uid"`
		Object json.RawMessage `json:"object"`
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

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
	defer func() {
		if body.Cap() <= 1<<20 { // do not keep a rare huge buffer alive
			buffers.Put(body)
		}
	}()

	patch := buffers.Get().(*bytes.Buffer)
	patch.Reset()
	defer func() {
		if patch.Cap() <= 1<<20 {
			buffers.Put(patch)
		}
	}()

	resp, err := h.admit(r, body, patch, &log)
	if err != nil {
		var he *httpError
		if !errors.As(err, &he) {
			he = &httpError{http.StatusInternalServerError, err.Error()}
		}
		log.Info("bad admission request", "code", he.code, "error", he.msg)
		h.count(ResultError)
		http.Error(w, "podmeta: "+he.msg, he.code)
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

// admit reads the review from r into body and decides, writing any patch into patch.
// log gains the request's uid, namespace and pod name for every line after it.
func (h *Handler) admit(r *http.Request, body, patch *bytes.Buffer, log *logr.Logger) (*reviewResponse, error) {
	if r.Method != http.MethodPost {
		return nil, &httpError{http.StatusMethodNotAllowed, "only POST is allowed"}
	}
	// The apiserver sends exactly "application/json"; only anything else is parsed
	// (ParseMediaType allocates a map per call).
	if ct := r.Header.Get("Content-Type"); ct != "application/json" && mediaType(ct) != "application/json" {
		return nil, &httpError{http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Type %q: want application/json", r.Header.Get("Content-Type"))}
	}
	limit := h.MaxBodyBytes
	if limit <= 0 {
		limit = DefaultMaxBodyBytes
	}
	if r.ContentLength > limit {
		return nil, &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("body of %d bytes is over the limit of %d", r.ContentLength, limit)}
	}
	if n, err := body.ReadFrom(io.LimitReader(r.Body, limit+1)); err != nil {
		return nil, &httpError{http.StatusBadRequest, "read body: " + err.Error()}
	} else if n > limit {
		return nil, &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("body is over the limit of %d bytes", limit)}
	}

	var rev review
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
	*log = log.WithValues("uid", req.UID, "namespace", req.Namespace, "pod", name)

	var nsAnn map[string]string
	if h.Namespaces != nil {
		nsAnn = h.Namespaces(r.Context(), req.Namespace)
	}
	plan, err := h.Injector.plan(pod, req.Namespace, nsAnn)
	if err != nil {
		// plan only fails with a DenyError: the pod decoded already.
		log.Info("denied", "reason", err.Error())
		h.count(ResultDenied)
		resp.Response.Allowed = false
		resp.Response.Status = &status{Code: http.StatusForbidden, Reason: "Forbidden", Message: err.Error()}
		return resp, nil
	}
	resp.Response.Warnings = plan.Warnings
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
	if err := json.Unmarshal(body, &rev); err != nil {
		return nil, &httpError{http.StatusBadRequest, "not an AdmissionReview: " + err.Error()}
	}
	if err := checkReview(rev.APIVersion, rev.Kind, rev.Request != nil, rev.Request != nil && rev.Request.UID != ""); err != nil {
		return nil, err
	}
	var head struct {
		Kind string `json:"kind"`
	}
	if json.Unmarshal(rev.Request.Object, &head) == nil && head.Kind == "Pod" {
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
