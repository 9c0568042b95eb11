package hbone

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/ambit-mesh/ambit/test/testutil"
)

// spyConn forwards to a real TCP connection and records the size of every Write that reaches it.
type spyConn struct {
	net.Conn
	mu     sync.Mutex
	writes []int
}

func (s *spyConn) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.writes = append(s.writes, len(p))
	s.mu.Unlock()
	return s.Conn.Write(p)
}

func (s *spyConn) delivered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, w := range s.writes {
		n += w
	}
	return n
}

// coalesceStep is one call on a coalescer: a Write of n bytes, or setBatching(on) when n is 0.
type coalesceStep struct {
	n  int
	on bool
	// delivered is the number of bytes that must have reached the socket after the step.
	delivered int
}

func TestCoalescer(t *testing.T) {
	const rec = tlsRecord + tlsOverhead
	head := 9 + 100 + tlsOverhead // a DATA frame's first record: header and odd-sized head
	tests := map[string][]coalesceStep{
		"outside a section writes go straight through": {
			{n: 50, delivered: 50},
			{n: rec, delivered: 50 + rec},
		},
		"a section holds records until it ends": {
			{on: true},
			{n: head},
			{n: rec},
			{n: rec},
			{n: 0, on: false, delivered: head + 2*rec},
		},
		"sixteen full records fit with a frame's first record": {
			{on: true},
			{n: head},
			{n: 8 * rec},
			{n: 8 * rec},
			{n: 0, on: false, delivered: head + 16*rec},
		},
		"a record that does not fit goes out with what is held": {
			{on: true},
			{n: head},
			{n: 16 * rec},
			{n: rec, delivered: head + 17*rec},
			{n: rec, delivered: head + 17*rec},
			{n: 0, on: false, delivered: head + 18*rec},
		},
		"ending an empty section writes nothing": {
			{on: true},
			{n: 0, on: false},
			{n: 10, delivered: 10},
		},
		"a record larger than the buffer is written at once": {
			{on: true},
			{n: batchSize + 1, delivered: batchSize + 1},
			{n: 0, on: false, delivered: batchSize + 1},
		},
	}
	for name, steps := range tests {
		t.Run(name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			a, b := tcpPair(t)
			got := make(chan []byte, 1)
			go func() {
				all, _ := io.ReadAll(b)
				got <- all
			}()
			spy := &spyConn{Conn: a}
			c := &coalescer{Conn: spy}
			var want bytes.Buffer
			next := byte(0)
			for i, st := range steps {
				if st.n == 0 {
					if err := c.setBatching(st.on); err != nil {
						t.Fatalf("step %d: setBatching(%v) = %v", i, st.on, err)
					}
				} else {
					p := make([]byte, st.n)
					for j := range p {
						p[j] = next
						next++
					}
					want.Write(p)
					if n, err := c.Write(p); n != len(p) || err != nil {
						t.Fatalf("step %d: Write(%d bytes) = %d, %v", i, len(p), n, err)
					}
				}
				if d := spy.delivered(); d != st.delivered {
					t.Fatalf("step %d: %d bytes reached the socket, want %d", i, d, st.delivered)
				}
			}
			if c.held != nil {
				t.Errorf("buffer still held after the section ended")
			}
			a.Close()
			if all := <-got; !bytes.Equal(all, want.Bytes()) {
				t.Errorf("peer read %d bytes, want the %d written in order", len(all), want.Len())
			}
		})
	}
}

// tcpPair returns two connected loopback TCP connections, closed at cleanup.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}
