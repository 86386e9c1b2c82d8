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
		// exec, attach and port-forward stream over WebSocket or SPDY upgrades; refusing
		// every upgrade closes that door whatever the path.
		return http.StatusForbidden, "connection upgrades (WebSocket, SPDY) are not proxied"
	}
	if !canonicalPath(r.URL.Path) {
		// The checks below must see the path exactly as the API server will.
		return http.StatusForbidden, fmt.Sprintf("path %q refused: it must be absolute and clean (no //, /./ or /../)", r.URL.Path)
	}
	if sub := execLikeSubresource(r.URL.Path); sub != "" {
		return http.StatusForbidden, "pods/" + sub + " is never proxied"
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
// Rejecting the rest (instead of cleaning it) guarantees that the subresource check
// and the API server read the same segments.
func canonicalPath(p string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	if len(p) > 1 {
		p = strings.TrimSuffix(p, "/")
	}
	return path.Clean(p) == p
}

// execLikeSubresource returns "exec", "attach" or "portforward" if p addresses that
// subresource of a pod, else "". It parses the path structurally, so a pod's proxy
// subresource (…/pods/x/proxy/exec) or a namespace named "exec" is not mistaken for
// one. p is decoded (%65xec is exec) and canonical.
func execLikeSubresource(p string) string {
	// Segments are compared case-insensitively: a false refusal of a path the API
	// server would 404 anyway costs nothing.
	is := strings.EqualFold
	segs := strings.Split(strings.Trim(p, "/"), "/")
	switch {
	case len(segs) >= 2 && is(segs[0], "api"): // /api/v1/...
		segs = segs[2:]
	case len(segs) >= 3 && is(segs[0], "apis"): // /apis/group/version/...; pods are core, but be safe
		segs = segs[3:]
	default:
		return ""
	}
	if len(segs) >= 2 && is(segs[0], "namespaces") {
		segs = segs[2:]
	}
	if len(segs) != 3 || !is(segs[0], "pods") {
		return ""
	}
	for _, sub := range []string{"exec", "attach", "portforward"} {
		if is(segs[2], sub) {
			return sub
		}
	}
	return ""
}

// newReverseProxy forwards to the upstream through auth, streaming responses.
func (s *server) newReverseProxy() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(s.upstream)
			// The client never picks the identity; authTransport sets our token.
			pr.Out.Header.Del("Authorization")
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

// withToken returns a copy of req carrying tok (a RoundTripper must not modify req).
func withToken(req *http.Request, tok string) *http.Request {
	r := req.Clone(req.Context())
	r.Header.Set("Authorization", "Bearer "+tok)
	return r
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
