package main

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestForwardsWithOwnToken(t *testing.T) {
	f := start(t, fixtureOptions{})
	r := f.do(t, http.MethodGet, "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb&watch=true", http.Header{
		"Authorization":       {"Bearer client-chosen-identity"},
		"X-Forwarded-For":     {"203.0.113.7"},
		"Forwarded":           {"for=203.0.113.7"},
		"Proxy-Authorization": {"Basic Zm9vOmJhcg=="},
	}, "")
	e := echoed(t, r)
	upHost := strings.TrimPrefix(f.upstream.URL, "https://")
	for _, c := range []struct{ what, got, want string }{
		{"Authorization", e.Authorization, "Bearer " + tokenPrefix + "1"},
		{"path", e.Path, "/api/v1/namespaces/default/pods"},
		{"query", e.RawQuery, "labelSelector=app%3Dweb&watch=true"},
		{"Host", e.Host, upHost},
		{"X-Forwarded-For", e.XForwardedFor, ""},
	} {
		if c.got != c.want {
			t.Errorf("upstream saw %s %q, want %q", c.what, c.got, c.want)
		}
	}
}

func TestHostHeader(t *testing.T) {
	f := start(t, fixtureOptions{})
	for _, tc := range []struct {
		host string
		ok   bool
	}{
		{"localhost:8001", true},
		{"localhost", true},
		{"LocalHost:8001", true},
		{"127.0.0.1", true},
		{"127.0.0.1:8001", true},
		{"[::1]:8001", true},
		{"[::1]", true},
		{"evil.example", false},
		{"evil.example:8001", false},
		{"localhost.evil.example", false},
		{"127.0.0.2:8001", false},
		{"10.0.0.1:8001", false},
		{"[::2]:8001", false},
	} {
		t.Run(tc.host, func(t *testing.T) {
			r := f.do(t, http.MethodGet, "/api", http.Header{"Host": {tc.host}}, "")
			if tc.ok {
				echoed(t, r)
			} else {
				checkStatus(t, r, http.StatusForbidden, "Forbidden")
			}
		})
	}
	t.Run("no Host (HTTP/1.0)", func(t *testing.T) {
		checkStatus(t, f.raw(t, "GET /api HTTP/1.0\r\n\r\n"), http.StatusForbidden, "Forbidden")
	})
	t.Run("absolute-form request target", func(t *testing.T) {
		checkStatus(t, f.raw(t, "GET http://evil.example/api HTTP/1.1\r\nHost: localhost\r\n\r\n"), http.StatusForbidden, "Forbidden")
	})
}

func TestRefusesExecAttachPortForward(t *testing.T) {
	refused := []string{
		"/api/v1/namespaces/ns/pods/web/exec?command=sh&stdin=true&tty=true",
		"/api/v1/namespaces/ns/pods/web/exec",
		"/api/v1/namespaces/ns/pods/web/exec/",
		"/api/v1/namespaces/ns/pods/web/attach",
		"/api/v1/namespaces/ns/pods/web/attach/?stdout=true",
		"/api/v1/namespaces/ns/pods/web/portforward",
		"/api/v1/namespaces/ns/pods/web/portforward?ports=8080",
		"/api/v1/namespaces/ns/pods/web/%65xec",    // percent-encoded
		"/api/v1/namespaces/ns/pods/web/EXEC",      // whatever the API server makes of it
		"/api/v1/namespaces/ns/pods/web%2Fexec",    // encoded slash
		"/api/v1/namespaces/ns/pods/web//exec",     // not canonical
		"/api/v1/namespaces/ns/pods/web/./exec",    // not canonical
		"/api/v1/namespaces/ns/pods/x/../web/exec", // not canonical
		"/api/v1/namespaces/ns/pods/web/exec/.",    // not canonical
		"/apis/custom.example/v1/namespaces/ns/pods/web/exec",
	}
	allowed := []string{
		"/api/v1/namespaces/ns/pods/web",
		"/api/v1/namespaces/ns/pods/web/log?follow=true",
		"/api/v1/namespaces/exec/pods/attach",
		"/api/v1/namespaces/ns/pods/exec",
		"/api/v1/namespaces/ns/configmaps/exec",
		"/apis/apps/v1/namespaces/ns/deployments/web/",
	}
	for _, mode := range []string{modeReadOnly, modeReadWrite} {
		t.Run(mode, func(t *testing.T) {
			var hits atomic.Int32
			echo := echoHandler()
			f := start(t, fixtureOptions{
				config: func(c *Config) { c.Mode = mode },
				upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path != "/version" {
						hits.Add(1)
					}
					echo.ServeHTTP(w, r)
				}),
			})
			for _, p := range refused {
				for _, method := range []string{http.MethodGet, http.MethodPost} {
					t.Run("refuse "+method+" "+p, func(t *testing.T) {
						checkStatus(t, f.do(t, method, p, nil, ""), http.StatusForbidden, "Forbidden")
					})
				}
			}
			if n := hits.Load(); n != 0 {
				t.Errorf("%d refused requests reached the API server", n)
			}
			for _, p := range allowed {
				t.Run("allow "+p, func(t *testing.T) { echoed(t, f.do(t, http.MethodGet, p, nil, "")) })
			}
		})
	}
}

func TestMethods(t *testing.T) {
	for _, tc := range []struct {
		mode    string
		method  string
		allowed bool
	}{
		{modeReadOnly, http.MethodGet, true},
		{modeReadOnly, http.MethodHead, true},
		{modeReadOnly, http.MethodPost, false},
		{modeReadOnly, http.MethodPut, false},
		{modeReadOnly, http.MethodPatch, false},
		{modeReadOnly, http.MethodDelete, false},
		{modeReadOnly, http.MethodOptions, false},
		{modeReadWrite, http.MethodGet, true},
		{modeReadWrite, http.MethodPost, true},
		{modeReadWrite, http.MethodPut, true},
		{modeReadWrite, http.MethodPatch, true},
		{modeReadWrite, http.MethodDelete, true},
	} {
		t.Run(tc.mode+" "+tc.method, func(t *testing.T) {
			f := start(t, fixtureOptions{config: func(c *Config) { c.Mode = tc.mode }})
			body := ""
			if tc.method != http.MethodGet && tc.method != http.MethodHead {
				body = `{"kind":"ConfigMap"}`
			}
			r := f.do(t, tc.method, "/api/v1/namespaces/ns/configmaps", nil, body)
			switch {
			case !tc.allowed:
				checkStatus(t, r, http.StatusMethodNotAllowed, "MethodNotAllowed")
				if got := r.header.Get("Allow"); got != "GET, HEAD" {
					t.Errorf("Allow %q, want %q", got, "GET, HEAD")
				}
				if !strings.Contains(r.body, "read-only") {
					t.Errorf("message does not say why: %s", r.body)
				}
			case tc.method == http.MethodHead:
				if r.code != http.StatusOK {
					t.Errorf("HEAD: code %d, want 200", r.code)
				}
			default:
				if e := echoed(t, r); e.Method != tc.method || e.Body != body {
					t.Errorf("upstream saw %s with body %q, want %s with %q", e.Method, e.Body, tc.method, body)
				}
			}
		})
	}
}

func TestRefusesConnect(t *testing.T) {
	for mode, allow := range map[string]string{
		modeReadOnly:  "GET, HEAD",
		modeReadWrite: "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
	} {
		t.Run(mode, func(t *testing.T) {
			f := start(t, fixtureOptions{config: func(c *Config) { c.Mode = mode }})
			r := f.raw(t, "CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: localhost\r\n\r\n")
			checkStatus(t, r, http.StatusMethodNotAllowed, "MethodNotAllowed")
			if got := r.header.Get("Allow"); got != allow {
				t.Errorf("Allow %q, want %q", got, allow)
			}
		})
	}
}

func TestRefusesUpgrades(t *testing.T) {
	for _, mode := range []string{modeReadOnly, modeReadWrite} {
		f := start(t, fixtureOptions{config: func(c *Config) { c.Mode = mode }})
		for _, tc := range []struct {
			name   string
			header http.Header
		}{
			{"websocket", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"13"}, "Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}}},
			{"SPDY", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"SPDY/3.1"}}},
			{"Upgrade header only", http.Header{"Upgrade": {"h2c"}}},
			{"Connection token only", http.Header{"Connection": {"keep-alive, upgrade"}}},
		} {
			t.Run(mode+" "+tc.name, func(t *testing.T) {
				checkStatus(t, f.do(t, http.MethodGet, "/api/v1/namespaces/ns/pods/web/log", tc.header, ""), http.StatusForbidden, "Forbidden")
			})
		}
	}
}

// TestStreamsWithoutBuffering proves that the first chunk of a response reaches the
// client while the API server is still in the middle of it, as in a watch, over
// HTTP/1.1 and HTTP/2 to the API server.
func TestStreamsWithoutBuffering(t *testing.T) {
	for _, tc := range []struct {
		name  string
		http2 bool
		level slog.Level // debug wraps the ResponseWriter to log each request
	}{
		{"HTTP/1.1 upstream", false, slog.LevelInfo},
		{"HTTP/2 upstream", true, slog.LevelInfo},
		{"HTTP/1.1 upstream, debug log", false, slog.LevelDebug},
		{"HTTP/2 upstream, debug log", true, slog.LevelDebug},
	} {
		t.Run(tc.name, func(t *testing.T) { testStreamsWithoutBuffering(t, tc.http2, tc.level) })
	}
}

func testStreamsWithoutBuffering(t *testing.T, http2 bool, level slog.Level) {
	release := make(chan struct{})
	f := start(t, fixtureOptions{http2: http2, config: func(c *Config) { c.LogLevel = level }, upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/version" {
			return
		}
		if want := map[bool]int{false: 1, true: 2}[http2]; r.ProtoMajor != want {
			http.Error(w, "ambassador used "+r.Proto, http.StatusHTTPVersionNotSupported)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"type":"ADDED"}`+"\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, `{"type":"MODIFIED"}`+"\n")
	})})

	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.proxyURL+"/api/v1/pods?watch=true", nil)
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	br := bufio.NewReader(resp.Body)
	// The API server cannot finish before release is closed, so this line can only
	// arrive if the ambassador passed it on unbuffered.
	line, err := br.ReadString('\n')
	if err != nil || line != `{"type":"ADDED"}`+"\n" {
		t.Fatalf("first event %q, %v", line, err)
	}
	close(release)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != `{"type":"MODIFIED"}`+"\n" {
		t.Fatalf("rest %q, %v", rest, err)
	}
}

func TestClassifyPath(t *testing.T) {
	type want struct {
		class string
		never bool
	}
	for p, w := range map[string]want{
		"/api/v1/namespaces/a/pods/b/exec":                        {"pods/exec", true},
		"/api/v1/namespaces/a/pods/b/attach/":                     {"pods/attach", true},
		"/api/v1/namespaces/a/pods/b/portforward":                 {"pods/portforward", true},
		"/api/v1/pods/b/exec":                                     {"pods/exec", true}, // not a real route; refused anyway
		"/apis/g/v1/namespaces/a/pods/b/exec":                     {"pods/exec", true},
		"/api/v1/namespaces/a/pods/b/exec/extra":                  {"pods/exec", true},
		"/api/v1/namespaces/pods/pods/exec/exec":                  {"pods/exec", true},
		"/api/v1/namespaces/a/pods/b/PortForward":                 {"pods/portforward", true},
		"/apis/g/v1/namespaces/a/pods/b/attach":                   {"pods/attach", true},
		"/apis/metrics.k8s.io/v1beta1/pods/x/exec":                {"pods/exec", true},
		"/api/v1/watch/namespaces/a/pods/b/exec":                  {"pods/exec", true},
		"/api/v1/namespaces/a/pods/b/proxy/exec":                  {"pods/proxy", false},
		"/api/v1/namespaces/a/pods/b:8080/proxy":                  {"pods/proxy", false},
		"/api/v1/nodes/n/proxy/exec/ns/pod/c":                     {"nodes/proxy", false},
		"/api/v1/nodes/n:10250/proxy":                             {"nodes/proxy", false},
		"/api/v1/namespaces/a/nodes/n/proxy/run/a/b/c":            {"nodes/proxy", false},
		"/api/v1/namespaces/a/services/https:b:443/proxy/":        {"services/proxy", false},
		"/api/v1/namespaces/a/pods/b/ephemeralcontainers":         {"pods/ephemeralcontainers", false},
		"/api/v1/namespaces/a/serviceaccounts/b/token":            {"serviceaccounts/token", false},
		"/api/v1/proxy/nodes/n/run/a/b/c":                         {"proxy", false},
		"/api/v1/proxy":                                           {"proxy", false},
		"/api/v1/namespaces/a/pods/b":                             {"", false},
		"/api/v1/namespaces/a/services/b/exec":                    {"", false},
		"/api/v1/namespaces/a/serviceaccounts/b":                  {"", false},
		"/api/v1/namespaces/proxy/pods/b":                         {"", false},
		"/api/v1/namespaces/token/serviceaccounts":                {"", false},
		"/apis/g/v1/proxy/nodes/n":                                {"", false}, // a custom resource named proxy
		"/api/v1/nodes/n":                                         {"", false},
		"/api/v1/nodes/n/status":                                  {"", false},
		"/api/v1/nodes/proxy":                                     {"", false}, // the node named proxy
		"/api":                                                    {"", false},
		"/":                                                       {"", false},
		"/exec":                                                   {"", false},
		"/version":                                                {"", false},
		"/apis/g/v1/namespaces/a/pods/b/ephemeral":                {"", false},
		"/api/v1/namespaces/exec/pods/exec":                       {"", false},
		"/api/v1/watch/namespaces/a/pods/b":                       {"", false},
		"/api/v1/namespaces/a/pods/b/log?tail=exec":               {"", false},
		"/api/v1/namespaces/a/configmaps/proxy":                   {"", false},
		"/apis/apps/v1/namespaces/a/deployments/b/scale":          {"", false},
		"/apis/coordination.k8s.io/v1/namespaces/a/leases/proxy":  {"", false},
		"/apis/authentication.k8s.io/v1/selfsubjectreviews":       {"", false},
		"/apis/authorization.k8s.io/v1/selfsubjectaccessreviews/": {"", false},
	} {
		if class, never := classifyPath(p); class != w.class || never != w.never {
			t.Errorf("classifyPath(%q) = %q, %v; want %q, %v", p, class, never, w.class, w.never)
		}
	}
}

func TestHasEncodedSlashOrDot(t *testing.T) {
	for raw, want := range map[string]bool{
		"":                   false,
		"/api/v1/pods":       false,
		"/a%2Fb":             true,
		"/a%2fb":             true,
		"/a%2Eb":             true,
		"/a/%2e%2e/b":        true,
		"/a%252Fb":           false, // %25 is %: the API server reads the name a%2Fb
		"/a%20b":             false,
		"/a%":                false,
		"/a%2":               false,
		"/%%2f":              true,
		"/api/v1/%65xec%2F/": true,
	} {
		if got := hasEncodedSlashOrDot(raw); got != want {
			t.Errorf("hasEncodedSlashOrDot(%q) = %v, want %v", raw, got, want)
		}
	}
}
