package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"path"
	"strings"
	"sync"
	"time"
)

// ServeHTTP is the proxy listener's handler: it refuses what the ambassador never
// forwards and hands everything else to the reverse proxy.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if code, why := s.refusal(r); code != 0 {
		s.log.Info("request refused", "method", r.Method, "path", r.URL.Path, "host", r.Host, "code", code, "reason", why)
		if code == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", s.allow)
		}
		writeStatus(w, code, why)
		return
	}
	s.proxy.ServeHTTP(w, r)
}

// refusal returns the status code and reason for refusing r, or 0 to forward it.
func (s *server) refusal(r *http.Request) (int, string) {
	if r.Method == http.MethodConnect {
		// Checked first: for CONNECT, Host is the tunnel's target, not this proxy.
		return http.StatusMethodNotAllowed, "CONNECT is never proxied"
	}
	if !loopbackHost(r.Host) {
		// A browser tricked by DNS rebinding sends the attacker's host name here.
		return http.StatusForbidden, fmt.Sprintf("Host %q refused: only localhost, 127.0.0.1 and [::1] are accepted", r.Host)
	}
	if isUpgrade(r.Header) {
		// exec, attach and port-forward stream over WebSocket or SPDY upgrades (exec
		// and attach even with GET); refusing every upgrade closes that door whatever
		// the path and the mode.
		return http.StatusForbidden, "connection upgrades (WebSocket, SPDY) are not proxied"
	}
	if !canonicalPath(r.URL.Path) || hasEncodedSlashOrDot(r.URL.RawPath) {
		// The checks below must see the path exactly as the API server will.
		return http.StatusForbidden, fmt.Sprintf("path %q refused: it must be absolute and clean (no //, /./, /../, %%2F or %%2E)", r.URL.EscapedPath())
	}
	switch class, never := classifyPath(r.URL.Path); {
	case never:
		return http.StatusForbidden, class + " is never proxied"
	case class != "" && !s.cfg.AllowPrivilegedPaths:
		// Before the method check: in read-only mode a GET of nodes/NAME/proxy/... reads
		// the kubelet's API (logs, pods, configuration) and must be refused too.
		return http.StatusForbidden, class + " refused: it runs code, reaches other endpoints or mints credentials; podmeta-ambassador --allow-privileged-paths allows it"
	}
	if s.cfg.Mode == modeReadOnly && r.Method != http.MethodGet && r.Method != http.MethodHead {
		return http.StatusMethodNotAllowed, r.Method + " refused: the ambassador is read-only (GET and HEAD only)"
	}
	return 0, ""
}

// loopbackHost reports whether the Host header names this machine's loopback.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1] // "[::1]" without a port
	}
	return strings.EqualFold(host, "localhost") || host == "127.0.0.1" || host == "::1"
}

// isUpgrade reports whether the request asks for a protocol switch.
func isUpgrade(h http.Header) bool {
	if len(h.Values("Upgrade")) > 0 {
		return true
	}
	for _, v := range h.Values("Connection") {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return true
			}
		}
	}
	return false
}

// canonicalPath reports whether p is absolute and clean, a trailing slash aside.
// Rejecting the rest (instead of cleaning it) guarantees that the path checks and
// the API server read the same segments.
func canonicalPath(p string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	if len(p) > 1 {
		p = strings.TrimSuffix(p, "/")
	}
	return path.Clean(p) == p
}

// hasEncodedSlashOrDot reports whether the escaped path raw holds %2F or %2E (any
// case). The checks read the decoded path, in which web%2Fexec is web/exec; a
// server or proxy that splits before decoding would read other segments. No client
// needs to encode either character (no name may contain a slash, and a dot is
// never encoded), so such a path is refused rather than interpreted. raw is
// url.URL.RawPath: empty unless the client's encoding differs from the default one,
// which any %2F or %2E does.
func hasEncodedSlashOrDot(raw string) bool {
	for {
		i := strings.IndexByte(raw, '%')
		if i < 0 || i+2 >= len(raw) {
			return false
		}
		if c := raw[i+2] | 0x20; raw[i+1] == '2' && (c == 'f' || c == 'e') {
			return true
		}
		raw = raw[i+1:]
	}
}

// Path classes that classifyPath reports. The first three are never proxied; the
// others only with --allow-privileged-paths.
const (
	classPodsExec        = "pods/exec"
	classPodsAttach      = "pods/attach"
	classPodsPortForward = "pods/portforward"

	classNodesProxy          = "nodes/proxy"              // the kubelet's API: /run and /exec run commands in any pod on the node
	classPodsEphemeral       = "pods/ephemeralcontainers" // adds a container, with any image and command, to a running pod
	classServiceAccountToken = "serviceaccounts/token"    // mints tokens for a service account
	classPodsProxy           = "pods/proxy"               // any pod's HTTP ports, from the API server, past NetworkPolicies
	classServicesProxy       = "services/proxy"           // the same for a Service's endpoints
	classLegacyProxy         = "proxy"                    // /api/v1/proxy/...: the proxy subresources' old URL form
)

// maxSegments is how many leading path segments classifyPath needs: /apis, group,
// version, watch or proxy, namespaces, namespace, resource, name, subresource.
const maxSegments = 9

// classifyPath returns the class of the privileged request path p ("nodes/proxy",
// …) and whether that class is never proxied, or "" for an ordinary path. p is
// decoded (%65xec is exec) and canonical. The path is parsed the way the API server
// parses it (k8s.io/apiserver's RequestInfoFactory), so the pod's own HTTP path in
// …/pods/x/proxy/exec or a namespace named "exec" is not mistaken for a
// subresource. Deliberately broader than the API server's routes: any group
// (/apis/g/v), the watch prefix, a namespace before a cluster-scoped resource, and
// trailing segments after the subresource all count, and segments are compared
// case-insensitively. A false refusal of a path the API server would answer 404
// costs nothing.
func classifyPath(p string) (class string, never bool) {
	is := strings.EqualFold
	var buf [maxSegments]string
	segs := pathSegments(p, buf[:0])
	switch {
	case len(segs) >= 2 && is(segs[0], "api"): // /api/v1/...
		segs = segs[2:]
		if len(segs) > 0 && is(segs[0], "proxy") {
			// /api/v1/proxy/nodes/NAME/... and /api/v1/proxy/namespaces/NS/pods/NAME/...
			// (or services) were removed from Kubernetes long ago; refuse them whatever
			// follows.
			return classLegacyProxy, false
		}
	case len(segs) >= 3 && is(segs[0], "apis"): // /apis/group/version/...; these resources are core, but be safe
		segs = segs[3:]
	default:
		return "", false
	}
	if len(segs) > 0 && is(segs[0], "watch") {
		segs = segs[1:]
	}
	if len(segs) >= 2 && is(segs[0], "namespaces") {
		segs = segs[2:]
	}
	if len(segs) < 3 {
		return "", false
	}
	resource, sub := segs[0], segs[2]
	switch {
	case is(resource, "pods"):
		switch {
		case is(sub, "exec"):
			return classPodsExec, true
		case is(sub, "attach"):
			return classPodsAttach, true
		case is(sub, "portforward"):
			return classPodsPortForward, true
		case is(sub, "ephemeralcontainers"):
			return classPodsEphemeral, false
		case is(sub, "proxy"):
			return classPodsProxy, false
		}
	case is(resource, "nodes") && is(sub, "proxy"):
		return classNodesProxy, false
	case is(resource, "services") && is(sub, "proxy"):
		return classServicesProxy, false
	case is(resource, "serviceaccounts") && is(sub, "token"):
		return classServiceAccountToken, false
	}
	return "", false
}

// pathSegments appends p's first cap(dst) segments to dst without allocating.
func pathSegments(p string, dst []string) []string {
	p = strings.Trim(p, "/")
	for p != "" && len(dst) < cap(dst) {
		i := strings.IndexByte(p, '/')
		if i < 0 {
			return append(dst, p)
		}
		dst = append(dst, p[:i])
		p = p[i+1:]
	}
	return dst
}

// newReverseProxy forwards to the upstream through auth, streaming responses.
func (s *server) newReverseProxy() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(s.upstream)
			// The client never picks the identity: authTransport drops every header
			// that could (Authorization, Impersonate-*, …, see stripClientHeaders)
			// and sets our token. Request trailers are not forwarded either: the API
			// server has no use for them, and nothing the client sends after the
			// headers should be able to add one.
			pr.Out.Trailer = nil
			// No X-Forwarded-For: Rewrite has already dropped the client's
			// Forwarded/X-Forwarded-* headers (so the app cannot forge the audit log's
			// sourceIPs), and adding our own would only ever say 127.0.0.1. The API
			// server then records the pod IP, which is the useful answer.
		},
		Transport: s.auth,
		// Flush every write: watches and log follows must reach the client as they
		// come. Nothing is buffered beyond one copy buffer.
		FlushInterval: -1,
		BufferPool:    &bufferPool{},
		ErrorHandler:  s.proxyError,
		ErrorLog:      s.errorLog,
	}
}

// proxyError answers a request that could not be forwarded.
func (s *server) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client went away (or shutdown cut it); nobody reads the answer.
		s.log.Debug("request canceled", "method", r.Method, "path", r.URL.Path, "error", err)
		w.WriteHeader(http.StatusBadGateway)
	case errors.Is(err, errCredentials):
		s.log.Warn("request failed: no usable credentials", "method", r.Method, "path", r.URL.Path, "error", err)
		writeStatus(w, http.StatusServiceUnavailable, err.Error())
	default:
		s.log.Warn("API server request failed", "method", r.Method, "path", r.URL.Path, "error", err)
		writeStatus(w, http.StatusBadGateway, "API server request failed: "+err.Error())
	}
}

// newTransport builds the one transport to the API server.
func (s *server) newTransport() *http.Transport {
	serverName := s.upstream.Hostname() // without IPv6 brackets
	return &http.Transport{
		// Never route the token through HTTP(S)_PROXY from the environment.
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS12,
			ServerName: serverName,
			// The built-in verification would pin the CA pool read at start-up. It is
			// switched off and replaced by VerifyConnection (which InsecureSkipVerify
			// does not disable): it verifies the chain and the server name against
			// the CA bundle on disk at each handshake, so a rotated CA takes effect
			// on the next connection.
			InsecureSkipVerify: true,
			VerifyConnection: func(cs tls.ConnectionState) error {
				return s.verifyServer(cs, serverName)
			},
		},
		// HTTP/2 multiplexes all of the app's watches over one connection; a custom
		// TLSClientConfig would otherwise silently disable it.
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   10 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		// Pass the client's Accept-Encoding through untouched instead of asking for
		// gzip and decompressing here: less CPU, less memory, same bytes.
		DisableCompression: true,
		// No ResponseHeaderTimeout: a large LIST can take long to start answering.
	}
}

// verifyServer verifies the API server's certificate chain and name against the
// current CA bundle. tls.ConnectionState.ServerName is empty for IP addresses (no
// SNI), hence the explicit serverName.
func (s *server) verifyServer(cs tls.ConnectionState, serverName string) error {
	pool, err := s.ca.get()
	if err != nil {
		return err
	}
	if len(cs.PeerCertificates) == 0 {
		return errors.New("API server presented no certificate")
	}
	opts := x509.VerifyOptions{
		Roots:         pool,
		DNSName:       serverName, // checks IP SANs too
		Intermediates: x509.NewCertPool(),
	}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	_, err = cs.PeerCertificates[0].Verify(opts)
	return err
}

// authTransport sets the current bearer token on every request.
type authTransport struct {
	base  http.RoundTripper
	token *credential[string]
	log   *slog.Logger
}

func (t *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	tok, err := t.token.get()
	if err != nil {
		return nil, err
	}
	resp, err := t.base.RoundTrip(withToken(req, tok))
	if err != nil || resp.StatusCode != http.StatusUnauthorized || !replayable(req) {
		return resp, err
	}
	// The token may have been rotated a moment ago, or rewritten in a way the stat
	// check cannot see. Read it again; if it differs, repeat the request once.
	fresh, err := t.token.reload()
	if err != nil || fresh == tok {
		return resp, nil
	}
	t.log.Info("API server answered 401; retrying once with the token just re-read", "method", req.Method, "path", req.URL.Path)
	drainClose(resp.Body)
	return t.base.RoundTrip(withToken(req, fresh))
}

// replayable reports whether req may be sent a second time: only safe methods
// without a body, so nothing is ever applied twice.
func replayable(req *http.Request) bool {
	return (req.Method == http.MethodGet || req.Method == http.MethodHead) &&
		(req.Body == nil || req.Body == http.NoBody)
}

// withToken returns a copy of req carrying tok and none of the client's identity
// headers (a RoundTripper must not modify req). This is the last step before the
// request leaves: the reverse proxy has already removed the hop-by-hop headers,
// including any that Connection lists, so nothing can add a stripped header back.
func withToken(req *http.Request, tok string) *http.Request {
	r := req.Clone(req.Context())
	stripClientHeaders(r.Header)
	r.Header.Set("Authorization", "Bearer "+tok)
	return r
}

// Request headers that the API server, or a proxy or aggregated API server on the
// way, may take as who is asking, from where, or what is really asked. Whatever the
// client sends of them is dropped, in every mode. Names are compared
// case-insensitively, and with _ read as - (some proxies translate one into the
// other).
var (
	strippedHeaderPrefixes = []string{
		"Impersonate-", // Impersonate-User, -Group, -Uid, -Extra-*: act as someone else (needs RBAC impersonate)
		"X-Remote-",    // X-Remote-User, -Group, -Uid, -Extra-*: front-proxy (requestheader) authentication
		"X-Forwarded-", // X-Forwarded-For, -Host, -Proto, -Prefix, -Uri, -User, -Email, -Access-Token, …
	}
	strippedHeaderNames = []string{
		"Authorization",             // replaced by the pod's token
		"Proxy-Authorization",       // hop-by-hop, already dropped by the reverse proxy
		"Forwarded",                 // RFC 7239 forwarding
		"X-Real-Ip",                 // read by the API server for the audit log's sourceIPs
		"X-Http-Method-Override",    // method overrides: a POST that a server or proxy
		"X-Http-Method",             // on the way could treat as a DELETE, …
		"X-Method-Override",         //
		"X-Original-Url",            // path overrides honoured by some proxies, which would
		"X-Rewrite-Url",             // defeat the path checks
		"X-Kubernetes-Peer-Proxied", // API server to API server: "already proxied, serve locally"
	}
)

// stripClientHeaders deletes from h every header that strippedHeaderPrefixes and
// strippedHeaderNames name. It does not allocate.
func stripClientHeaders(h http.Header) {
	for k := range h {
		if strippedHeader(k) {
			delete(h, k)
		}
	}
}

func strippedHeader(k string) bool {
	for _, p := range strippedHeaderPrefixes {
		if len(k) >= len(p) && headerNameEqual(k[:len(p)], p) {
			return true
		}
	}
	for _, n := range strippedHeaderNames {
		if headerNameEqual(k, n) {
			return true
		}
	}
	return false
}

// headerNameEqual compares header names ASCII-case-insensitively, reading _ as -.
func headerNameEqual(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		x, y := a[i], b[i]
		if x == '_' {
			x = '-'
		}
		if y == '_' {
			y = '-'
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// drainClose reads a little of body, so the connection can be reused, and closes it.
func drainClose(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, 64<<10))
	_ = body.Close()
}

// bufferPool recycles the reverse proxy's copy buffers across requests.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

// statusRecorder remembers the response code for the debug request log. Unwrap lets
// http.ResponseController (used by ReverseProxy to flush) reach the real writer.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.code == 0 && code >= 200 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// logRequests wraps h with a debug log line per request.
func (s *server) logRequests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "code", rec.code, "duration", time.Since(start).String())
	})
}
