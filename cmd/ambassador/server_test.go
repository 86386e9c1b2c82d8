package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestReadiness(t *testing.T) {
	var apiUp atomic.Bool
	var checks atomic.Int32
	f := start(t, fixtureOptions{
		files: map[string]string{}, // volume not populated yet: no token, no CA
		upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/version" {
				checks.Add(1)
				if !apiUp.Load() {
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				_, _ = io.WriteString(w, `{"major":"1"}`)
			}
		}),
	})
	caPEM := f.upstreamCAPEM()
	readyz := func(wantCode int, wantBody string) func() error {
		return func() error {
			code, body := f.get(t, f.healthURL+"/readyz")
			if code != wantCode || !strings.Contains(body, wantBody) {
				return fmt.Errorf("/readyz answered %d %q, want %d %q", code, body, wantCode, wantBody)
			}
			return nil
		}
	}
	must := func(cond func() error) {
		t.Helper()
		if err := cond(); err != nil {
			t.Fatal(err)
		}
	}

	if code, body := f.get(t, f.healthURL+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz answered %d %q", code, body)
	}
	must(readyz(503, "token"))
	// A request without a token is answered 503, never forwarded anonymously.
	checkStatus(t, f.do(t, http.MethodGet, "/api", nil, ""), http.StatusServiceUnavailable, "ServiceUnavailable")

	f.sa.update(map[string]string{"token": tokenPrefix + "1"})
	must(readyz(503, "CA bundle"))

	f.sa.update(map[string]string{"token": tokenPrefix + "1", "ca.crt": caPEM})
	// The API server answers 503 for now: wait until it has been asked, and check.
	eventually(t, "API server checked", func() error {
		if checks.Load() == 0 {
			return errors.New("no check yet")
		}
		return nil
	})
	must(readyz(503, "API server has not answered /version"))

	apiUp.Store(true)
	eventually(t, "ready", readyz(200, "ok"))

	// Sticky: an API-server outage does not make the pod unready.
	apiUp.Store(false)
	must(readyz(200, "ok"))

	// A token that disappears does.
	f.sa.update(map[string]string{"ca.crt": caPEM})
	must(readyz(503, "token"))
	f.sa.update(map[string]string{"token": tokenPrefix + "2", "ca.crt": caPEM})
	must(readyz(200, "ok"))

	if code, _ := f.get(t, f.healthURL+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz answered %d", code)
	}
}

func (f *fixture) upstreamCAPEM() string {
	return string(pemCert(f.upstream.Certificate().Raw))
}

func TestGracefulShutdown(t *testing.T) {
	t.Run("in-flight request completes", func(t *testing.T) {
		arrived, release := make(chan struct{}), make(chan struct{})
		f := start(t, fixtureOptions{upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/slow" {
				return
			}
			close(arrived)
			<-release
			_, _ = io.WriteString(w, "done")
		})})
		type result struct {
			code int
			body string
			err  error
		}
		resc := make(chan result, 1)
		go func() {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, f.proxyURL+"/slow", nil)
			resp, err := f.client.Do(req)
			if err != nil {
				resc <- result{err: err}
				return
			}
			defer func() { _ = resp.Body.Close() }()
			b, err := io.ReadAll(resp.Body)
			resc <- result{resp.StatusCode, string(b), err}
		}()
		<-arrived
		f.cancel() // as SIGTERM does

		// New connections are refused once shutdown began …
		addr := strings.TrimPrefix(f.proxyURL, "http://")
		eventually(t, "listener closed", func() error {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return nil
			}
			_ = c.Close()
			return errors.New("still accepting")
		})
		eventually(t, "unready while draining", func() error {
			if err := f.s.ready(); err == nil || !strings.Contains(err.Error(), "shutting down") {
				return fmt.Errorf("ready() = %w", err)
			}
			return nil
		})
		// … but the request in flight is finished.
		close(release)
		res := <-resc
		if res.err != nil || res.code != 200 || res.body != "done" {
			t.Fatalf("in-flight request: %d %q %v", res.code, res.body, res.err)
		}
		if err := f.stop(); err != nil {
			t.Fatalf("serve returned %v, want nil", err)
		}
	})

	t.Run("watch cut at the shutdown timeout", func(t *testing.T) {
		arrived := make(chan struct{})
		f := start(t, fixtureOptions{
			config: func(c *Config) { c.ShutdownTimeout = 50 * time.Millisecond },
			upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/watch" {
					return
				}
				w.WriteHeader(http.StatusOK)
				w.(http.Flusher).Flush()
				close(arrived)
				<-r.Context().Done() // a watch never ends by itself
			}),
		})
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, f.proxyURL+"/watch", nil)
		resp, err := f.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		<-arrived
		start := time.Now()
		if err := f.stop(); err != nil {
			t.Fatalf("serve returned %v, want nil", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("shutdown took %v", d)
		}
		if _, err := io.ReadAll(resp.Body); err == nil {
			t.Errorf("watch body ended cleanly; want it cut")
		}
	})
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"defaults with upstream", func(*Config) {}, ""},
		{"IPv6 upstream", func(c *Config) { c.Upstream = "https://[fd00::1]:443" }, ""},
		{"read-write", func(c *Config) { c.Mode = modeReadWrite }, ""},
		{"loopback IPv6 listener", func(c *Config) { c.ListenAddress = "::1" }, ""},
		{"no upstream", func(c *Config) { c.Upstream = "" }, "KUBERNETES_SERVICE_HOST"},
		{"plain http upstream", func(c *Config) { c.Upstream = "http://10.0.0.1" }, "https"},
		{"upstream with path", func(c *Config) { c.Upstream = "https://10.0.0.1/api" }, "scheme://host"},
		{"bad mode", func(c *Config) { c.Mode = "readonly" }, "--mode"},
		{"public listener", func(c *Config) { c.ListenAddress = "0.0.0.0" }, "loopback"},
		{"pod IP listener", func(c *Config) { c.ListenAddress = "10.1.2.3" }, "loopback"},
		{"port out of range", func(c *Config) { c.Port = 70000 }, "--port"},
		{"same ports", func(c *Config) { c.HealthPort = c.Port }, "both"},
		{"bad health address", func(c *Config) { c.HealthAddress = "pod" }, "--health-address"},
		{"zero interval", func(c *Config) { c.ReadyCheckInterval = 0 }, "--ready-check-interval"},
		{"relative check path", func(c *Config) { c.ReadyCheckPath = "version" }, "--ready-check-path"},
		{"no token file", func(c *Config) { c.TokenFile = "" }, "--token-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Upstream = "https://10.96.0.1:443"
			tc.mutate(&c)
			err := c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Validate() = %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Validate() = %v, want an error mentioning %q", err, tc.wantErr)
			}
		})
	}
}

func TestUpstreamFromEnvironment(t *testing.T) {
	for _, tc := range []struct {
		host, port, flag string
		want, serverName string
	}{
		{"10.96.0.1", "443", "", "https://10.96.0.1:443", "10.96.0.1"},
		{"fd00:10:96::1", "443", "", "https://[fd00:10:96::1]:443", "fd00:10:96::1"},
		{"[fd00::1]", "6443", "", "https://[fd00::1]:6443", "fd00::1"},
		{"10.96.0.1", "443", "https://127.0.0.1:6443", "https://127.0.0.1:6443", "127.0.0.1"},
		{"", "443", "", "", ""},
	} {
		t.Run(tc.host+" "+tc.flag, func(t *testing.T) {
			c := DefaultConfig()
			c.Upstream = tc.flag
			env := map[string]string{"KUBERNETES_SERVICE_HOST": tc.host, "KUBERNETES_SERVICE_PORT": tc.port}
			c.completeUpstream(func(k string) string { return env[k] })
			if c.Upstream != tc.want {
				t.Fatalf("Upstream = %q, want %q", c.Upstream, tc.want)
			}
			if tc.want == "" {
				return
			}
			u, err := c.upstreamURL()
			if err != nil || u.Hostname() != tc.serverName {
				t.Errorf("upstreamURL() = %v, %v; want server name %q", u, err, tc.serverName)
			}
		})
	}
}

func TestRunArguments(t *testing.T) {
	for _, tc := range []struct {
		name       string
		args       []string
		env        map[string]string
		wantErr    string
		wantStdout string
	}{
		{"version", []string{"--version"}, nil, "", "podmeta-ambassador dev"},
		{"help", []string{"-h"}, nil, "", "-ready-check-interval"},
		{"help lists the privileged-paths flag", []string{"-h"}, nil, "", "-allow-privileged-paths"},
		{"unknown flag", []string{"--bogus"}, nil, "flag provided but not defined: -bogus", ""},
		{"bad value", []string{"--port", "http"}, nil, `invalid value "http" for flag -port`, ""},
		{"positional", []string{"extra"}, nil, "unexpected arguments", ""},
		{"no upstream", nil, nil, "KUBERNETES_SERVICE_HOST", ""},
		{"several problems", []string{"--mode", "rw", "--listen-address", "0.0.0.0"},
			map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
			"--mode \"rw\"", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			err := run(t.Context(), tc.args, &stdout, &stderr, func(k string) string { return tc.env[k] })
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("run: %v", err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("run: %v, want error containing %q", err, tc.wantErr)
			}
			if !strings.Contains(stdout.String(), tc.wantStdout) {
				t.Errorf("stdout %q, want it to contain %q", stdout.String(), tc.wantStdout)
			}
		})
	}
}

// TestRun starts the ambassador through run, as main does, and stops it by
// cancelling its context, as SIGTERM does.
func TestRun(t *testing.T) {
	f := start(t, fixtureOptions{}) // only for its fake API server and volume
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	logs := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{
			"--upstream", f.upstream.URL,
			"--token-file", f.sa.path("token"),
			"--ca-file", f.sa.path("ca.crt"),
			"--port", "0",
			"--health-address", "127.0.0.1",
			"--health-port", "0",
		}, io.Discard, logs, func(string) string { return "" })
	}()
	// The start-up log line names the addresses actually bound.
	var started struct{ Proxy, Health string }
	eventually(t, "started", func() error {
		for line := range strings.Lines(logs.String()) {
			if strings.Contains(line, `"msg":"starting podmeta-ambassador"`) {
				return json.Unmarshal([]byte(line), &started)
			}
		}
		return errors.New("no start-up log line")
	})
	eventually(t, "ready", func() error {
		if code, body := getURL(t, "http://"+started.Health+"/readyz"); code != 200 {
			return fmt.Errorf("/readyz %d %s", code, body)
		}
		return nil
	})
	_, port, _ := net.SplitHostPort(started.Proxy)
	if code, body := getURL(t, "http://localhost:"+port+"/api"); code != 200 || !strings.Contains(body, tokenPrefix+"1") {
		t.Errorf("GET /api via run: %d %s", code, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run returned %v after shutdown, want nil", err)
	}
	for _, want := range []string{`"mode":"read-only"`, `"allowPrivilegedPaths":false`, `"msg":"stopped"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
}

func getURL(t *testing.T, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
