// Command ambassador is podmeta-ambassador, the optional sidecar that podmeta injects
// so that an application can talk plain HTTP to the Kubernetes API.
//
// Contract: the ambassador listens on a loopback address only (127.0.0.1:8001 by
// default) and reverse-proxies every accepted request to the API server
// (https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, or --upstream). It
// verifies the API server against the mounted CA bundle and authenticates with the
// mounted service-account token; the client's Authorization, Impersonate-*,
// X-Remote-*, method-override and forwarding headers are discarded (see
// stripClientHeaders). Token and CA are re-read whenever the kubelet rotates them (checked
// with a stat on every request and on every new TLS connection), so a token is never
// used once a newer one is on disk. It refuses, with a Kubernetes Status JSON body:
// requests whose Host header is not localhost, 127.0.0.1 or ::1 (DNS rebinding),
// pods/exec, pods/attach and pods/portforward, any protocol upgrade (WebSocket,
// SPDY), non-canonical or %2F/%2E-encoded paths, unless --allow-privileged-paths
// is set the paths that run code or mint credentials (nodes/proxy, pods/proxy,
// services/proxy, pods/ephemeralcontainers, serviceaccounts/token), and — in the
// default read-only mode — every method but GET and HEAD. Responses are streamed, never buffered, so watches and log
// follows work. /healthz and /readyz are served on a second listener
// (0.0.0.0:8002 by default) for kubelet probes. SIGTERM or SIGINT stops accepting
// connections, lets in-flight requests finish for up to --shutdown-timeout, then
// exits 0.
//
// The binary has to be small and cheap to run, as every opted-in pod carries one: it
// uses the standard library only and avoids packages that add weight without need.
package main
