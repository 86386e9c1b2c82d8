package harness

import (
	"io"
	"net"
	"sync"
	"time"
)

// LB is a TCP load balancer on 127.0.0.1 in front of webhook replicas, standing in for a
// Service: new connections go round-robin to the current backends, established ones
// stay where they are (as with kube-proxy). A delay holds every read from a client
// before it is forwarded, to make a backend look slow on every request, including
// those sent on connections already open (a client keeps a connection whose dial
// finished after its request gave up, and would reuse it without the delay).
type LB struct {
	Addr string
	ln   net.Listener

	mu       sync.Mutex
	backends []string
	next     int
	delay    time.Duration
	conns    map[net.Conn]struct{}
}

// NewLB listens on a free loopback port.
func NewLB(backends ...string) (*LB, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	lb := &LB{Addr: ln.Addr().String(), ln: ln, backends: backends, conns: map[net.Conn]struct{}{}}
	go lb.serve()
	return lb, nil
}

// SetBackends replaces the backends for new connections, as an Endpoints update does.
func (lb *LB) SetBackends(backends ...string) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.backends = backends
}

// SetDelay holds each read from a client for d before forwarding it.
func (lb *LB) SetDelay(d time.Duration) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.delay = d
}

// Close stops accepting and closes every connection.
func (lb *LB) Close() {
	lb.ln.Close()
	lb.mu.Lock()
	defer lb.mu.Unlock()
	for c := range lb.conns {
		c.Close()
	}
}

func (lb *LB) serve() {
	for {
		c, err := lb.ln.Accept()
		if err != nil {
			return
		}
		go lb.forward(c)
	}
}

func (lb *LB) track(c net.Conn, add bool) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if add {
		lb.conns[c] = struct{}{}
	} else {
		delete(lb.conns, c)
	}
}

func (lb *LB) forward(client net.Conn) {
	lb.mu.Lock()
	var backend string
	if len(lb.backends) > 0 {
		backend = lb.backends[lb.next%len(lb.backends)]
		lb.next++
	}
	lb.mu.Unlock()
	lb.track(client, true)
	defer lb.track(client, false)
	defer client.Close()
	if backend == "" {
		return
	}
	server, err := net.Dial("tcp", backend)
	if err != nil {
		return
	}
	lb.track(server, true)
	defer lb.track(server, false)
	defer server.Close()
	done := make(chan struct{}, 2)
	go func() { _ = lb.copyDelayed(server, client); closeWrite(server); done <- struct{}{} }()
	go func() { _, _ = io.Copy(client, server); closeWrite(client); done <- struct{}{} }()
	<-done
	<-done
}

// copyDelayed copies src to dst as io.Copy does, holding each read for the delay set at
// that moment.
func (lb *LB) copyDelayed(dst io.Writer, src io.Reader) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			lb.mu.Lock()
			d := lb.delay
			lb.mu.Unlock()
			time.Sleep(d)
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err != nil {
			return err
		}
	}
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}
