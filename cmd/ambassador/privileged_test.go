package main

// Security issue 16, finding 7: identity and override headers from the client, and
// the paths that run code or mint credentials. The tests use only what the
// ambassador had before the fix (the flag is set through BindFlags), so that they
// can be run against the old code and shown to fail there.

import (
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// seen is what the fake API server records of a forwarded request.
type seen struct {
	Path, RawQuery string
	Header         http.Header
	Trailer        http.Header
	Body           string
}

// recordingUpstream answers every request but the readiness check with the seen
// JSON, and counts them.
func recordingUpstream(hits *atomic.Int32) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body) // fills r.Trailer
		if r.URL.Path != "/version" {
			hits.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(seen{Path: r.URL.Path, RawQuery: r.URL.RawQuery, Header: r.Header, Trailer: r.Trailer, Body: string(body)})
	})
}

func decodeSeen(t *testing.T, r response) seen {
	t.Helper()
	if r.code != http.StatusOK {
		t.Fatalf("code %d, want 200 (forwarded); body %s", r.code, r.body)
	}
	var s seen
	if err := json.Unmarshal([]byte(r.body), &s); err != nil {
		t.Fatalf("not the upstream's answer: %v: %s", err, r.body)
	}
	return s
}

// allowPrivilegedPaths sets --allow-privileged-paths the way the command line does.
func allowPrivilegedPaths(t *testing.T, mode string) func(*Config) {
	return func(c *Config) {
		c.Mode = mode
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		c.BindFlags(fs)
		if err := fs.Parse([]string{"--allow-privileged-paths"}); err != nil {
			t.Fatalf("--allow-privileged-paths: %v", err)
		}
	}
}

// strippedLike reports the names in h that a stripped header could be read as
// (case-insensitively, _ as -).
func strippedLike(h http.Header, names ...string) []string {
	var found []string
	for k := range h {
		nk := strings.ToLower(strings.ReplaceAll(k, "_", "-"))
		for _, n := range names {
			if n = strings.ToLower(n); nk == n || strings.HasSuffix(n, "-") && strings.HasPrefix(nk, n) {
				found = append(found, k)
			}
		}
	}
	return found
}

func TestStripsClientIdentityHeaders(t *testing.T) {
	// Every header the API server, a front proxy or an aggregated API server could
	// read as identity, source or "what is really asked".
	stripped := []string{
		"Impersonate-User: system:admin",
		"Impersonate-Group: system:masters",
		"Impersonate-Group: system:nodes",
		"Impersonate-Uid: 0",
		"Impersonate-Extra-Scopes: all",
		"Impersonate-Extra-Acme.com%2fproject: x",
		"impersonate-user: lower-case",
		"IMPERSONATE-GROUP: upper-case",
		"Impersonate_User: underscore",
		"X-Remote-User: system:admin",
		"X-Remote-Group: system:masters",
		"X-Remote-Uid: 0",
		"X-Remote-Extra-Scopes: all",
		"x_remote_user: underscore",
		"X-HTTP-Method-Override: DELETE",
		"X-HTTP-Method: DELETE",
		"X-Method-Override: DELETE",
		"X-Real-IP: 203.0.113.7",
		"X-Forwarded-For: 203.0.113.7",
		"X-Forwarded-User: admin",
		"X-Forwarded-Prefix: /api/v1/nodes/n/proxy",
		"X-Forwarded-Uri: /api/v1/nodes/n/proxy/run",
		"Forwarded: for=203.0.113.7",
		"X-Original-URL: /api/v1/nodes/n/proxy/run/a/b/c",
		"X-Rewrite-URL: /api/v1/nodes/n/proxy/run/a/b/c",
		"X-Kubernetes-Peer-Proxied: true",
		"Authorization: Bearer client-chosen-identity",
		"Authorization: Basic YWRtaW46YWRtaW4=",
		"Proxy-Authorization: Basic YWRtaW46YWRtaW4=",
	}
	strippedNames := []string{
		"Impersonate-", "X-Remote-", "X-Http-Method-Override", "X-Http-Method", "X-Method-Override",
		"X-Real-Ip", "X-Forwarded-", "Forwarded", "X-Original-Url", "X-Rewrite-Url", "X-Kubernetes-Peer-Proxied",
		"Proxy-Authorization",
	}
	// Similar names that are not stripped, and what every client sends.
	kept := map[string]string{
		"Accept":           "application/json",
		"User-Agent":       "app/1",
		"X-Impersonate":    "not a Kubernetes header",
		"Impersonated":     "no dash",
		"X-Remotely":       "no dash",
		"X-Http-Methods":   "longer",
		"Audit-Id":         "6e3a4a5c-0000-4000-8000-000000000000",
		"X-Request-Id":     "abc",
		"Accept-Encoding":  "gzip",
		"X-Forwarded":      "no dash, not a forwarding header",
		"Content-Language": "en",
	}

	for _, mode := range []string{modeReadOnly, modeReadWrite} {
		t.Run(mode, func(t *testing.T) {
			var hits atomic.Int32
			f := start(t, fixtureOptions{config: func(c *Config) { c.Mode = mode }, upstream: recordingUpstream(&hits)})
			check := func(t *testing.T, s seen) {
				t.Helper()
				if got := strippedLike(s.Header, strippedNames...); len(got) > 0 {
					t.Errorf("forwarded %v: %v", got, s.Header)
				}
				if got := s.Header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer "+tokenPrefix+"1" {
					t.Errorf("upstream saw Authorization %q, want only the pod's token", got)
				}
			}
			for _, h := range stripped {
				t.Run(h, func(t *testing.T) {
					req := "GET /api/v1/namespaces/ns/pods HTTP/1.1\r\nHost: localhost\r\n" + h + "\r\n"
					for k, v := range kept {
						req += k + ": " + v + "\r\n"
					}
					s := decodeSeen(t, f.raw(t, req+"\r\n"))
					check(t, s)
					for k, v := range kept {
						if got := s.Header.Get(k); got != v {
							t.Errorf("%s: upstream saw %q, want %q kept", k, got, v)
						}
					}
				})
			}
			t.Run("all at once, several values", func(t *testing.T) {
				check(t, decodeSeen(t, f.raw(t, "GET /api HTTP/1.1\r\nHost: localhost\r\n"+strings.Join(stripped, "\r\n")+"\r\n\r\n")))
			})
			// Connection lists hop-by-hop headers, which a proxy removes. Listing one
			// must not make the proxy treat it, or its neighbours, differently.
			t.Run("Connection-listed", func(t *testing.T) {
				for _, conn := range []string{"Impersonate-User", "keep-alive, Impersonate-Group, X-Remote-User", "Authorization", "close, X-HTTP-Method-Override"} {
					check(t, decodeSeen(t, f.raw(t, "GET /api HTTP/1.1\r\nHost: localhost\r\nConnection: "+conn+"\r\n"+strings.Join(stripped, "\r\n")+"\r\n\r\n")))
				}
			})
			if mode == modeReadWrite {
				// A header sent after the body, as a chunked trailer.
				t.Run("trailer", func(t *testing.T) {
					s := decodeSeen(t, f.raw(t, "POST /api/v1/namespaces/ns/configmaps HTTP/1.1\r\nHost: localhost\r\n"+
						"Transfer-Encoding: chunked\r\nTrailer: Impersonate-User, X-Remote-User\r\nContent-Type: application/json\r\n\r\n"+
						"2\r\n{}\r\n0\r\nImpersonate-User: system:admin\r\nX-Remote-User: system:admin\r\n\r\n"))
					check(t, s)
					if s.Body != "{}" {
						t.Errorf("body %q, want {}", s.Body)
					}
					if got := strippedLike(s.Trailer, strippedNames...); len(got) > 0 {
						t.Errorf("forwarded trailers %v: %v", got, s.Trailer)
					}
				})
			}
		})
	}
}

// privilegedForms returns, for each class refused by default, the URL forms that
// reach it (or that the ambassador treats as if they did).
func privilegedForms() map[string][]string {
	return map[string][]string{
		"nodes/proxy": {
			"/api/v1/nodes/n/proxy",
			"/api/v1/nodes/n/proxy/",
			"/api/v1/nodes/n/proxy/run/ns/pod/container?cmd=id",
			"/api/v1/nodes/n/proxy/exec/ns/pod/container?command=id",
			"/api/v1/nodes/n/proxy/pods",
			"/api/v1/nodes/n/proxy/configz",
			"/api/v1/nodes/n:10250/proxy/logs/",
			"/api/v1/nodes/https:n:10250/proxy/run/ns/pod/c",
			"/api/v1/namespaces/ns/nodes/n/proxy/run/ns/pod/c",
			"/api/v1/watch/nodes/n/proxy",
			"/API/V1/NODES/n/PROXY/run/ns/pod/c",
			"/api/v1/nodes/n/prox%79/run/ns/pod/c",
			"/api/v1/nodes/n/proxy?/../../configmaps",
			"/apis/g.example/v1/nodes/n/proxy",
		},
		"pods/ephemeralcontainers": {
			"/api/v1/namespaces/ns/pods/web/ephemeralcontainers",
			"/api/v1/namespaces/ns/pods/web/ephemeralcontainers/",
			"/api/v1/namespaces/ns/pods/web/ephemeralcontainers?fieldManager=kubectl-debug",
			"/api/v1/pods/web/ephemeralcontainers",
			"/api/v1/namespaces/ns/pods/web/EphemeralContainers",
			"/api/v1/namespaces/ns/pods/web/%65phemeralcontainers",
		},
		"serviceaccounts/token": {
			"/api/v1/namespaces/ns/serviceaccounts/default/token",
			"/api/v1/namespaces/ns/serviceaccounts/default/token/",
			"/api/v1/serviceaccounts/default/token",
			"/api/v1/namespaces/ns/ServiceAccounts/default/Token",
			"/api/v1/namespaces/ns/serviceaccounts/default/t%6Fken",
		},
		"pods/proxy": {
			"/api/v1/namespaces/ns/pods/web/proxy",
			"/api/v1/namespaces/ns/pods/web:8080/proxy/admin/shutdown",
			"/api/v1/namespaces/ns/pods/https:web:8443/proxy/",
			"/api/v1/namespaces/ns/pods/web/proxy/exec", // the pod's own /exec
		},
		"services/proxy": {
			"/api/v1/namespaces/ns/services/web/proxy",
			"/api/v1/namespaces/ns/services/web:8080/proxy/attach",
			"/api/v1/namespaces/kube-system/services/https:metrics-server:/proxy/",
		},
		"proxy": { // the old URL form of the proxy subresources
			"/api/v1/proxy/nodes/n/run/ns/pod/c",
			"/api/v1/proxy/namespaces/ns/pods/web/",
			"/api/v1/proxy/namespaces/ns/services/web:80/",
		},
	}
}

func TestRefusesPrivilegedPaths(t *testing.T) {
	for _, mode := range []string{modeReadOnly, modeReadWrite} {
		t.Run(mode, func(t *testing.T) {
			var hits atomic.Int32
			f := start(t, fixtureOptions{config: func(c *Config) { c.Mode = mode }, upstream: recordingUpstream(&hits)})
			for class, paths := range privilegedForms() {
				for _, p := range paths {
					for _, method := range []string{http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodPut, http.MethodDelete} {
						t.Run(method+" "+p, func(t *testing.T) {
							body := ""
							if method != http.MethodGet && method != http.MethodDelete {
								body = "{}"
							}
							r := f.do(t, method, p, http.Header{"Content-Type": {"application/json"}}, body)
							checkStatus(t, r, http.StatusForbidden, "Forbidden")
							if !strings.Contains(r.body, class+" refused") || !strings.Contains(r.body, "--allow-privileged-paths") {
								t.Errorf("message does not name %s and --allow-privileged-paths: %s", class, r.body)
							}
						})
					}
				}
			}
			// HEAD answers have no body; the code is enough.
			if r := f.do(t, http.MethodHead, "/api/v1/nodes/n/proxy/pods", nil, ""); r.code != http.StatusForbidden {
				t.Errorf("HEAD nodes/n/proxy/pods: %d, want 403", r.code)
			}
			// The absolute request-target form carries the same path.
			checkStatus(t, f.raw(t, "GET http://localhost/api/v1/nodes/n/proxy/pods HTTP/1.1\r\nHost: localhost\r\n\r\n"), http.StatusForbidden, "Forbidden")
			// exec, attach and portforward in read-only mode with GET, and with GET
			// plus an upgrade (how exec is really reached): refused, in every mode.
			for _, p := range []string{"/api/v1/namespaces/ns/pods/web/exec?command=id", "/api/v1/namespaces/ns/pods/web/attach", "/api/v1/namespaces/ns/pods/web/portforward?ports=80", "/api/v1/nodes/n/proxy/exec/ns/web/c?command=id"} {
				checkStatus(t, f.do(t, http.MethodGet, p, nil, ""), http.StatusForbidden, "Forbidden")
				checkStatus(t, f.do(t, http.MethodGet, p, http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"13"}, "Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}, "Sec-Websocket-Protocol": {"v5.channel.k8s.io"}}, ""), http.StatusForbidden, "Forbidden")
				checkStatus(t, f.do(t, http.MethodPost, p, http.Header{"Connection": {"Upgrade"}, "Upgrade": {"SPDY/3.1"}, "X-Stream-Protocol-Version": {"v4.channel.k8s.io"}}, ""), http.StatusForbidden, "Forbidden")
			}
			if n := hits.Load(); n != 0 {
				t.Errorf("%d refused requests reached the API server", n)
			}
		})
	}
}

func TestRefusesEncodedPaths(t *testing.T) {
	refused := []string{
		"/api/v1/nodes/n%2Fproxy/run/ns/pod/c",                 // n/proxy once decoded
		"/api/v1/nodes/n%2fproxy/run/ns/pod/c",                 // lower-case hex
		"/api/v1/namespaces/ns/pods/web%2Fephemeralcontainers", //
		"/api/v1/namespaces/ns/serviceaccounts%2Fdefault/token",
		"/api/v1/namespaces/ns/configmaps/x%2F..%2F..%2F..%2Fnodes%2Fn%2Fproxy",
		"/api/v1/namespaces/ns/configmaps/x/%2E%2E/%2e%2e/nodes/n/proxy",
		"/api/v1/namespaces/ns/configmaps/%2e",
		"/api/v1/namespaces/ns/configmaps/a%2Eb", // harmless, but no client encodes a dot
		"/api/v1/namespaces/ns/configmaps/x/../../../nodes/n/proxy/run",
		"/api/v1/namespaces/ns/configmaps/x/./y",
		"/api/v1/namespaces/ns/configmaps/x/.",
		"/api/v1/namespaces/ns/configmaps/x/..",
		"/api/v1//nodes/n/proxy",
		"//api/v1/nodes/n/proxy",
		"/api/v1/nodes/n/proxy//run",
	}
	for _, mode := range []string{modeReadOnly, modeReadWrite} {
		t.Run(mode, func(t *testing.T) {
			var hits atomic.Int32
			f := start(t, fixtureOptions{config: func(c *Config) { c.Mode = mode }, upstream: recordingUpstream(&hits)})
			for _, p := range refused {
				t.Run(p, func(t *testing.T) {
					// Raw, so that no client library cleans or re-encodes the path.
					checkStatus(t, f.raw(t, "GET "+p+" HTTP/1.1\r\nHost: localhost\r\n\r\n"), http.StatusForbidden, "Forbidden")
				})
			}
			if n := hits.Load(); n != 0 {
				t.Errorf("%d refused requests reached the API server", n)
			}
		})
	}
}

// TestOrdinaryPathsPass: what an app does with its own objects still goes through,
// unchanged, including paths that only look like a privileged one.
func TestOrdinaryPathsPass(t *testing.T) {
	for _, tc := range []struct{ path, wantPath, wantQuery string }{
		{"/api/v1/namespaces/ns/pods/web", "", ""},
		{"/api/v1/namespaces/ns/pods/web/log?follow=true&container=app", "/api/v1/namespaces/ns/pods/web/log", "follow=true&container=app"},
		{"/api/v1/namespaces/ns/pods?watch=1&labelSelector=app%3Dweb", "/api/v1/namespaces/ns/pods", "watch=1&labelSelector=app%3Dweb"},
		{"/api/v1/namespaces/ns/configmaps/proxy", "", ""},
		{"/api/v1/namespaces/proxy/pods/token", "", ""},
		{"/api/v1/nodes/proxy", "", ""},
		{"/api/v1/nodes/n/status", "", ""},
		{"/api/v1/namespaces/ns/serviceaccounts/default", "", ""},
		{"/api/v1/namespaces/ns/services/web", "", ""},
		{"/api/v1/namespaces/ns/configmaps/kube-root-ca.crt", "", ""},
		{"/api/v1/namespaces/ns/configmaps/x?/../../nodes/n/proxy", "/api/v1/namespaces/ns/configmaps/x", "/../../nodes/n/proxy"},
		{"/api/v1/namespaces/ns/configmaps/%78", "/api/v1/namespaces/ns/configmaps/x", ""},
		{"/apis/coordination.k8s.io/v1/namespaces/ns/leases/web", "", ""},
		{"/apis/apps/v1/namespaces/ns/deployments/web/scale", "", ""},
		{"/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "", ""},
		{"/version", "", ""},
		{"/", "", ""},
	} {
		for _, mode := range []string{modeReadOnly, modeReadWrite} {
			t.Run(mode+" "+tc.path, func(t *testing.T) {
				var hits atomic.Int32
				f := start(t, fixtureOptions{config: func(c *Config) { c.Mode = mode }, upstream: recordingUpstream(&hits)})
				s := decodeSeen(t, f.raw(t, "GET "+tc.path+" HTTP/1.1\r\nHost: localhost\r\n\r\n"))
				wantPath, wantQuery := tc.wantPath, tc.wantQuery
				if wantPath == "" {
					wantPath = tc.path
				}
				if s.Path != wantPath || s.RawQuery != wantQuery {
					t.Errorf("upstream saw %q ? %q, want %q ? %q", s.Path, s.RawQuery, wantPath, wantQuery)
				}
				if mode == modeReadWrite {
					s := decodeSeen(t, f.do(t, http.MethodPatch, tc.path, http.Header{"Content-Type": {"application/merge-patch+json"}}, "{}"))
					if s.Path != wantPath || s.Body != "{}" {
						t.Errorf("PATCH: upstream saw %q with %q", s.Path, s.Body)
					}
				}
			})
		}
	}
}

func TestAllowPrivilegedPathsFlag(t *testing.T) {
	t.Run(modeReadWrite, func(t *testing.T) {
		var hits atomic.Int32
		f := start(t, fixtureOptions{config: allowPrivilegedPaths(t, modeReadWrite), upstream: recordingUpstream(&hits)})
		for _, paths := range privilegedForms() {
			for _, p := range paths {
				t.Run(p, func(t *testing.T) {
					s := decodeSeen(t, f.do(t, http.MethodPost, p, http.Header{"Content-Type": {"application/json"}}, "{}"))
					if s.Body != "{}" {
						t.Errorf("upstream saw body %q", s.Body)
					}
				})
			}
		}
		// Still refused with the flag: exec, attach, portforward, upgrades, unclean
		// paths, and the client's identity headers.
		for _, p := range []string{"/api/v1/namespaces/ns/pods/web/exec", "/api/v1/namespaces/ns/pods/web/attach", "/api/v1/namespaces/ns/pods/web/portforward"} {
			r := f.do(t, http.MethodPost, p, nil, "")
			checkStatus(t, r, http.StatusForbidden, "Forbidden")
			if !strings.Contains(r.body, "is never proxied") {
				t.Errorf("POST %s: %s", p, r.body)
			}
		}
		checkStatus(t, f.do(t, http.MethodGet, "/api/v1/nodes/n/proxy/exec/ns/web/c", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}, ""), http.StatusForbidden, "Forbidden")
		checkStatus(t, f.raw(t, "GET /api/v1/nodes/n/proxy/a/%2e%2e/run HTTP/1.1\r\nHost: localhost\r\n\r\n"), http.StatusForbidden, "Forbidden")
		s := decodeSeen(t, f.do(t, http.MethodPost, "/api/v1/nodes/n/proxy/run/ns/web/c", http.Header{"Impersonate-User": {"system:admin"}, "X-Remote-Group": {"system:masters"}}, ""))
		if got := strippedLike(s.Header, "Impersonate-", "X-Remote-"); len(got) > 0 {
			t.Errorf("forwarded %v", got)
		}
	})
	t.Run(modeReadOnly, func(t *testing.T) {
		var hits atomic.Int32
		f := start(t, fixtureOptions{config: allowPrivilegedPaths(t, modeReadOnly), upstream: recordingUpstream(&hits)})
		// Reads of the privileged paths pass, writes stay refused by the mode.
		decodeSeen(t, f.do(t, http.MethodGet, "/api/v1/nodes/n/proxy/pods", nil, ""))
		decodeSeen(t, f.do(t, http.MethodGet, "/api/v1/namespaces/ns/pods/web:8080/proxy/metrics", nil, ""))
		for _, p := range []string{"/api/v1/nodes/n/proxy/run/ns/web/c", "/api/v1/namespaces/ns/serviceaccounts/default/token"} {
			checkStatus(t, f.do(t, http.MethodPost, p, nil, "{}"), http.StatusMethodNotAllowed, "MethodNotAllowed")
		}
		checkStatus(t, f.do(t, http.MethodPatch, "/api/v1/namespaces/ns/pods/web/ephemeralcontainers", nil, "{}"), http.StatusMethodNotAllowed, "MethodNotAllowed")
	})
}

// BenchmarkServeHTTP is the ambassador's own cost per forwarded request: checks,
// rewrite, token stat and header handling, with an API server that answers at once
// and without a network.
func BenchmarkServeHTTP(b *testing.B) {
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(tokenPrefix+"1\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Upstream = "https://10.96.0.1:443"
	cfg.TokenFile = filepath.Join(dir, "token")
	cfg.CAFile = filepath.Join(dir, "ca.crt") // never read: no TLS connection is made
	s, err := newServer(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	s.auth.base = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: http.StatusOK, Header: http.Header{"Content-Type": {"application/json"}},
			Body: http.NoBody, ContentLength: 0, Request: r}, nil
	})
	header := http.Header{
		"Accept":          {"application/json, */*"},
		"User-Agent":      {"reporter/1.0 (linux/amd64) kubernetes/v1.37.2"},
		"Accept-Encoding": {"gzip"},
		"Content-Type":    {"application/json"},
	}
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodGet, "http://localhost:8001/api/v1/namespaces/team-a/pods/reporter-5d8f7c9b4-x2x7q", nil)
		req.Header = header.Clone()
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("code %d: %s", w.Code, w.Body)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// BenchmarkRefusal is the cost of the checks alone, on an ordinary path that passes
// them all.
func BenchmarkRefusal(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Upstream = "https://10.96.0.1:443"
	s, err := newServer(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, "http://localhost:8001/api/v1/namespaces/team-a/pods/reporter-5d8f7c9b4-x2x7q/log?follow=true", nil)
	req.Header.Set("Accept", "application/json")
	b.ReportAllocs()
	for b.Loop() {
		if code, why := s.refusal(req); code != 0 {
			b.Fatal(why)
		}
	}
}
