package main

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// status is a Kubernetes metav1.Status, so that clients (client-go, kubectl) show the
// ambassador's refusals like any API error instead of failing to decode them.
type status struct {
	Kind       string   `json:"kind"`
	APIVersion string   `json:"apiVersion"`
	Metadata   struct{} `json:"metadata"`
	Status     string   `json:"status"`
	Message    string   `json:"message"`
	Reason     string   `json:"reason"`
	Code       int      `json:"code"`
}

// Status reasons (metav1.StatusReason) for the codes the ambassador answers itself.
var statusReasons = map[int]string{
	http.StatusForbidden:          "Forbidden",
	http.StatusMethodNotAllowed:   "MethodNotAllowed",
	http.StatusBadGateway:         "InternalError", // metav1 has no reason for 502
	http.StatusServiceUnavailable: "ServiceUnavailable",
}

// writeStatus answers with a Failure Status. msg says why, for a human reading it.
func writeStatus(w http.ResponseWriter, code int, msg string) {
	body, _ := json.Marshal(status{ // cannot fail: only strings and an int
		Kind:       "Status",
		APIVersion: "v1",
		Status:     "Failure",
		Message:    "podmeta-ambassador: " + msg,
		Reason:     statusReasons[code],
		Code:       code,
	})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}
