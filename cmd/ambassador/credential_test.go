package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestTokenRotation swaps ..data like the kubelet while clients keep requesting, and
// checks that no request started after a swap carries an older token.
func TestTokenRotation(t *testing.T) {
	f := start(t, fixtureOptions{})
	caPEM := string(mustRead(t, f.sa.path("ca.crt")))

	var published atomic.Int64 // newest token generation fully on disk
	published.Store(1)
	tokenGen := func(t *testing.T) (started, used int64) {
		started = published.Load()
		e := echoed(t, f.do(t, http.MethodGet, "/api/v1/namespaces", nil, ""))
		n, err := strconv.ParseInt(strings.TrimPrefix(e.Authorization, "Bearer "+tokenPrefix), 10, 64)
		if err != nil {
			t.Fatalf("unexpected Authorization %q", e.Authorization)
		}
		return started, n
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if started, used := tokenGen(t); used < started {
					t.Errorf("request started after token %d was published used token %d", started, used)
					return
				}
			}
		})
	}
	for gen := int64(2); gen <= 30; gen++ {
		f.sa.update(map[string]string{"token": fmt.Sprintf("%s%d\n", tokenPrefix, gen), "ca.crt": caPEM})
		published.Store(gen)
		if _, used := tokenGen(t); used != gen {
			t.Errorf("first request after rotation to %d used token %d", gen, used)
		}
	}
	close(stop)
	wg.Wait()
	if !strings.Contains(f.logs.String(), `"msg":"token loaded"`) {
		t.Errorf("token reloads were not logged")
	}
}

// TestRetryOn401 rewrites the token in place so that a stat cannot notice (same
// inode, size and modification time): only the 401 makes the ambassador re-read it.
func TestRetryOn401(t *testing.T) {
	for _, tc := range []struct {
		name       string
		mode       string
		method     string
		body       string
		rotate     bool
		wantCode   int
		wantTokens string // the Authorization tokens the API server saw, in order
	}{
		{"GET retried with rotated token", modeReadOnly, http.MethodGet, "", true, 200, "1,2"},
		{"HEAD retried with rotated token", modeReadOnly, http.MethodHead, "", true, 200, "1,2"},
		{"GET not retried when token unchanged", modeReadOnly, http.MethodGet, "", false, 401, "1"},
		{"POST never retried", modeReadWrite, http.MethodPost, "{}", true, 401, "1"},
		{"DELETE never retried", modeReadWrite, http.MethodDelete, "", true, 401, "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var seen []string
			valid := tokenPrefix + "1"
			f := start(t, fixtureOptions{
				config: func(c *Config) { c.Mode = tc.mode },
				upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path == "/version" {
						return
					}
					tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "+tokenPrefix)
					mu.Lock()
					seen = append(seen, tok)
					ok := "Bearer "+valid == r.Header.Get("Authorization")
					mu.Unlock()
					if !ok {
						w.WriteHeader(http.StatusUnauthorized)
						return
					}
				}),
			})
			f.do(t, http.MethodGet, "/api", nil, "") // loads token 1 into the cache
			mu.Lock()
			seen, valid = nil, tokenPrefix+"2" // the API server now only accepts token 2
			mu.Unlock()
			if tc.rotate {
				rewriteInPlace(t, f.sa.path("token"), tokenPrefix+"2\n")
			}
			if r := f.do(t, tc.method, "/api/v1/namespaces/ns/configmaps", nil, tc.body); r.code != tc.wantCode {
				t.Errorf("code %d, want %d", r.code, tc.wantCode)
			}
			mu.Lock()
			defer mu.Unlock()
			if got := strings.Join(seen, ","); got != tc.wantTokens {
				t.Errorf("API server saw tokens %s, want %s", got, tc.wantTokens)
			}
		})
	}
}

// rewriteInPlace replaces the content of path with a same-sized content and restores
// its modification time, so that its stat identity does not change.
func rewriteInPlace(t *testing.T, path, content string) {
	t.Helper()
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, time.Time{}, before.ModTime()); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fileIDOf(before) != fileIDOf(after) {
		t.Fatalf("precondition: rewrite changed the file identity %+v → %+v", fileIDOf(before), fileIDOf(after))
	}
}

// TestCARotation switches the fake API server between certificates and checks that
// the ambassador trusts exactly what the CA file on disk says, at each new connection.
func TestCARotation(t *testing.T) {
	ca1, ca2 := newTestCA(t, "ca-1"), newTestCA(t, "ca-2")
	loopback := []net.IP{net.IPv4(127, 0, 0, 1)}
	certs := map[string]*tls.Certificate{
		"ca1":            ca1.issue(loopback),
		"ca2":            ca2.issue(loopback),
		"ca2 wrong name": ca2.issue(nil, "kubernetes.default.svc"),
	}
	var current atomic.Pointer[tls.Certificate]
	current.Store(certs["ca1"])
	f := start(t, fixtureOptions{
		caPEM: ca1.pem,
		upstreamTLS: &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return &tls.Config{Certificates: []tls.Certificate{*current.Load()}}, nil
		}},
	})
	token := tokenPrefix + "1\n"
	for _, step := range []struct {
		name     string
		server   string // certificate the API server presents
		caFile   string // new CA file content, if any
		wantCode int
	}{
		{"initial CA", "ca1", "", 200},
		{"server moved to CA 2, file still CA 1", "ca2", "", 502},
		{"CA file rotated to CA 2", "ca2", ca2.pem, 200},
		{"CA 2 certificate for another name", "ca2 wrong name", "", 502},
		{"bundle of both CAs, server back on CA 1", "ca1", ca1.pem + ca2.pem, 200},
		{"bundle of both CAs, server on CA 2", "ca2", "", 200},
		{"CA file without certificates", "ca2", "garbage\n", 503},
	} {
		t.Run(step.name, func(t *testing.T) {
			current.Store(certs[step.server])
			if step.caFile != "" {
				f.sa.update(map[string]string{"token": token, "ca.crt": step.caFile})
			}
			// Force a new TLS handshake: that is where the CA is applied.
			f.upstream.CloseClientConnections()
			f.s.transport.CloseIdleConnections()
			r := f.do(t, http.MethodGet, "/api", nil, "")
			switch step.wantCode {
			case 200:
				echoed(t, r)
			case 502:
				checkStatus(t, r, http.StatusBadGateway, "InternalError")
				if !strings.Contains(r.body, "certificate") {
					t.Errorf("message does not name the certificate problem: %s", r.body)
				}
			default:
				checkStatus(t, r, step.wantCode, "ServiceUnavailable")
			}
		})
	}
}

func TestParseToken(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"abc.def-ghi_jkl\n", "abc.def-ghi_jkl", true},
		{"  tok  \r\n", "tok", true},
		{"", "", false},
		{" \n\t", "", false},
		{"two tokens", "", false},
		{"tok\r\nX-Evil: 1", "", false},
		{"t\u00f6k", "", false},
	} {
		got, err := parseToken([]byte(tc.in))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseToken(%q) = %q, %v; want %q, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
