package webhook

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// slowClient opens a TLS connection to srv and sends the headers of a POST that
// announces length bytes of body, then prefix of it, and nothing more.
func slowClient(t testing.TB, srv *httptest.Server, length int, prefix []byte) *tls.Conn {
	t.Helper()
	cfg := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	c, err := tls.Dial("tcp", srv.Listener.Addr().String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST /mutate-v1-pod HTTP/1.1\r\nHost: podmeta\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", length)
	// Written aside: a server that refuses the request stops reading it, and may reset
	// the connection under the write.
	go func() { _, _ = c.Write(prefix) }()
	return c
}

// post sends body to srv and returns the status code and how long the answer took.
func post(t testing.TB, srv *httptest.Server, body []byte) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	resp, err := srv.Client().Post(srv.URL+"/mutate-v1-pod", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Since(start)
}

// Finding 4 of security issue 16: 100 TLS connections that send headers and "{" and
// then idle held all 100 in-flight slots until the header timeout (32 s), and every
// real admission got 429. The body is now read before a slot is taken.
func TestServerSlowClientsHoldNoSlots(t *testing.T) {
	h, m := testHandler(t)
	h.MaxInFlight = 100
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close) // after the slow clients' cleanups close them
	for range 100 {
		slowClient(t, srv, 5000, []byte("{"))
	}
	time.Sleep(300 * time.Millisecond) // every slow request is in the handler, reading
	for i := range 5 {
		code, took := post(t, srv, recorded(t, "typical", nil))
		t.Logf("admission %d with 100 slow clients connected: HTTP %d in %s", i, code, took)
		if code != http.StatusOK {
			t.Fatalf("admission %d: HTTP %d, want 200: slow clients hold the in-flight slots", i, code)
		}
	}
	if shed := testutil.ToFloat64(m.Shed); shed != 0 {
		t.Errorf("%v requests shed", shed)
	}
}

// A body not sent within ReadTimeout is answered with 408, its connection closed and
// counted; a client that sends in time is served meanwhile.
func TestServerBodyReadDeadline(t *testing.T) {
	h, m := testHandler(t)
	h.MaxInFlight = 2
	h.ReadTimeout = 300 * time.Millisecond
	h.Reads = NewReadMetrics(prometheus.NewRegistry())
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close) // after the slow clients' cleanups close them
	start := time.Now()
	conns := make([]*tls.Conn, 4)
	for i := range conns {
		conns[i] = slowClient(t, srv, 5000, []byte(`{"apiVersion":`))
	}
	if code, _ := post(t, srv, recorded(t, "typical", nil)); code != http.StatusOK {
		t.Errorf("honest admission next to 4 slow ones with 2 slots: HTTP %d", code)
	}
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("slow client %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout || !resp.Close || !strings.Contains(string(b), "not received within 300ms") {
			t.Errorf("slow client %d: HTTP %d close=%v %q, want 408 and the connection closed", i, resp.StatusCode, resp.Close, b)
		}
	}
	took := time.Since(start)
	t.Logf("4 slow clients answered 408 after %s", took)
	if took > 2*time.Second {
		t.Errorf("slow clients answered after %s, want about the 300ms read timeout", took)
	}
	if got := testutil.ToFloat64(h.Reads.Refused.WithLabelValues(RefusedTimeout)); got != 4 {
		t.Errorf("timeout refusals = %v, want 4", got)
	}
	if got := testutil.ToFloat64(m.Admissions.WithLabelValues(ResultError)); got != 4 {
		t.Errorf("errors = %v, want 4", got)
	}
	if b := h.buffered.Load(); b != 0 {
		t.Errorf("%d bytes still charged to the budget", b)
	}
}

// The bytes buffered for bodies by all requests at once never exceed BodyBudget: a
// request that would go over it gets 429 at once. What a slow client holds is what it
// sent plus one read, not what it announced.
func TestServerBodyBudget(t *testing.T) {
	h, m := testHandler(t)
	h.MaxBodyBytes = 256 << 10
	h.BodyBudget = 256 << 10
	h.ReadTimeout = 500 * time.Millisecond
	h.Reads = NewReadMetrics(prometheus.NewRegistry())
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close) // after the slow clients' cleanups close them

	// Sampled while the clients below hold their bytes.
	var peak int64
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			peak = max(peak, h.buffered.Load())
			mu.Unlock()
			time.Sleep(time.Millisecond)
		}
	})

	// 10 clients that send 100 KiB of a 256 KiB body and stall: what each holds is
	// charged as it arrives (buffer growth included), so one or two fit the 256 KiB
	// budget and the rest are refused at once rather than buffered.
	var conns []*tls.Conn
	for range 10 {
		conns = append(conns, slowClient(t, srv, 256<<10, bytes.Repeat([]byte(" "), 100<<10)))
	}
	time.Sleep(200 * time.Millisecond)
	code, _ := post(t, srv, recorded(t, "typical", nil))
	t.Logf("10 clients that sent 100 KiB of 256 KiB each: honest admission HTTP %d, budget %d bytes charged", code, h.buffered.Load())
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil { // a refusal may reset the connection before the answer is read
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusRequestTimeout {
			t.Errorf("slow client: HTTP %d, want 429 or 408", resp.StatusCode)
		}
	}
	budgetRefusals := testutil.ToFloat64(h.Reads.Refused.WithLabelValues(RefusedBudget))
	refusedAtOnce := int(budgetRefusals - boolFloat(code == http.StatusTooManyRequests))
	close(stop)
	wg.Wait()
	t.Logf("peak %d bytes charged of a %d budget; %d of 10 refused with 429", peak, h.BodyBudget, refusedAtOnce)
	if peak > h.BodyBudget {
		t.Errorf("peak %d bytes charged, over the budget of %d", peak, h.BodyBudget)
	}
	if refusedAtOnce < 7 {
		t.Errorf("%d refused with 429, want at least 7 (only 2 fit the budget)", refusedAtOnce)
	}
	if got := testutil.ToFloat64(h.Reads.Refused.WithLabelValues(RefusedTimeout)); got+float64(refusedAtOnce) != 10 {
		t.Errorf("%v timeouts and %d budget refusals of 10 slow clients", got, refusedAtOnce)
	}
	// Once they are gone, the budget is whole again.
	if code, _ := post(t, srv, recorded(t, "typical", nil)); code != http.StatusOK {
		t.Errorf("after the slow clients: HTTP %d", code)
	}
	if b := h.buffered.Load(); b != 0 {
		t.Errorf("%d bytes still charged", b)
	}
	_ = m
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// A body larger than one read, with and without a Content-Length, decodes the same.
func TestServerReadsInChunks(t *testing.T) {
	h, _ := testHandler(t)
	body := recorded(t, "large", nil)
	if len(body) < 4*readChunk {
		t.Fatalf("large review is %d bytes, want several reads", len(body))
	}
	for _, chunked := range []bool{false, true} {
		var r io.Reader = bytes.NewReader(body)
		if chunked {
			r = io.MultiReader(r) // hides the length: httptest sets none
		}
		req := httptest.NewRequest(http.MethodPost, "/mutate-v1-pod", r)
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			t.Errorf("chunked=%v: HTTP %d %s", chunked, w.Code, w.Body)
		}
		if b := h.buffered.Load(); b != 0 {
			t.Errorf("%d bytes still charged", b)
		}
	}
}

// largeReview is the typical review with an annotation that makes it n bytes or more.
func largeReview(t testing.TB, n int) []byte {
	t.Helper()
	return recorded(t, "typical", func(review map[string]any) {
		podAnnotations(review)["example.com/padding"] = strings.Repeat("x", n)
	})
}

// Bodies over LargeBodyBytes are decided one at a time and share LargeBodyRate: a large
// body sent while another holds the turn for longer than 2 s, or whose bytes the rate
// cannot give within 2 s, gets 429 before it is read, and small bodies are served
// meanwhile (the soak: ten 7 MB reviews a second took the whole core). Without a
// Content-Length a body may not be large.
func TestServerLargeBodiesShareARate(t *testing.T) {
	server := func(rate int64) (*Handler, *httptest.Server) {
		h, _ := testHandler(t)
		h.MaxBodyBytes = 2 << 20
		h.BodyBudget = 8 << 20
		h.LargeBodyBytes = 64 << 10
		h.LargeBodyRate = rate
		h.ReadTimeout = 5 * time.Second
		h.Reads = NewReadMetrics(prometheus.NewRegistry())
		srv := httptest.NewTLSServer(h)
		t.Cleanup(srv.Close)
		return h, srv
	}
	h, srv := server(256 << 10)

	big := largeReview(t, 1500<<10)
	if code, _ := post(t, srv, big); code != http.StatusOK {
		t.Fatalf("first large body (the bucket starts full): HTTP %d", code)
	}
	// 1.5 MiB more now: the bucket has ~0.5 MiB, and 1 MiB at 256 KiB/s is 4 s away,
	// so it is refused; the refusal is answered when the 2 s it may wait are over (a
	// client refused at once would reconnect at once), and the body is never read.
	code, took := post(t, srv, big)
	t.Logf("second large body at once: HTTP %d in %s", code, took)
	if code != http.StatusTooManyRequests || took < largeBodyMaxWait-100*time.Millisecond || took > largeBodyMaxWait+time.Second {
		t.Errorf("second large body: HTTP %d in %s, want 429 after %s", code, took, largeBodyMaxWait)
	}
	if code, _ := post(t, srv, recorded(t, "typical", nil)); code != http.StatusOK {
		t.Errorf("small body after a large refusal: HTTP %d", code)
	}

	// One at a time: a large body whose client trickles it holds the turn; another
	// waits 2 s for it and is refused, while small bodies pass.
	if got := testutil.ToFloat64(h.Reads.Refused.WithLabelValues(RefusedLarge)); got != 1 {
		t.Errorf("podmeta_body_refused_total{reason=large} = %v, want 1", got)
	}
	h, srv = server(1 << 30) // bytes are no longer the limit
	holder := slowClient(t, srv, 100<<10, []byte("{"))
	time.Sleep(200 * time.Millisecond)
	for range 3 {
		if code, took := post(t, srv, recorded(t, "typical", nil)); code != http.StatusOK || took > time.Second {
			t.Errorf("small body while a large one holds the turn: HTTP %d in %s", code, took)
		}
	}
	code, took = post(t, srv, largeReview(t, 100<<10))
	t.Logf("large body while another holds the turn: HTTP %d in %s", code, took)
	if code != http.StatusTooManyRequests || took < largeBodyMaxWait-100*time.Millisecond {
		t.Errorf("large body while another holds the turn: HTTP %d after %s, want 429 after %s", code, took, largeBodyMaxWait)
	}
	holder.Close()
	if got := testutil.ToFloat64(h.Reads.Refused.WithLabelValues(RefusedLarge)); got != 1 {
		t.Errorf("podmeta_body_refused_total{reason=large} = %v, want 1", got)
	}

	// No Content-Length: up to LargeBodyBytes only.
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/mutate-v1-pod", io.MultiReader(bytes.NewReader(largeReview(t, 100<<10))))
	req.Header.Set("Content-Type", "application/json")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || resp.ContentLength == 0 {
		t.Errorf("large body without Content-Length: HTTP %d, want 413", resp.StatusCode)
	}
}
