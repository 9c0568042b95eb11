package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// streamPair dials HBONE streams over one loopback mTLS connection; the server's handler hands each
// stream off (hbone.Request.HandOff) and returns, so neither end of an idle stream holds a goroutine.
type streamPair struct {
	pool     *hbone.Pool
	target   hbone.Target
	accepted chan net.Conn
}

func newStreamPair(t *testing.T) *streamPair {
	t.Helper()
	ca, err := testutil.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	srvID := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/server")
	cliID := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client")
	creds := func(id spiffeid.ID) *hbone.Credentials {
		cert, roots, err := ca.Issue(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return &hbone.Credentials{ID: id, Certificate: cert, Roots: roots}
	}
	srvCreds, cliCreds := creds(srvID), creds(cliID)
	sp := &streamPair{accepted: make(chan net.Conn, 1)}
	srv := &hbone.Server{
		Credentials: func(context.Context, netip.AddrPort) (*hbone.Credentials, error) { return srvCreds, nil },
		Handler: hbone.HandlerFunc(func(ctx context.Context, r *hbone.Request) error {
			c, err := r.Accept(nil)
			if err != nil {
				return err
			}
			r.HandOff()
			sp.accepted <- c
			return nil
		}),
	}
	ln := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ctx, ln)
	}()
	sp.pool, err = hbone.NewPool(hbone.PoolOptions{
		Credentials: func(context.Context, spiffeid.ID) (*hbone.Credentials, error) { return cliCreds, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	sp.target = hbone.Target{NextHop: ln.Addr().(*net.TCPAddr).AddrPort(), Authority: "10.0.0.1:80",
		Source: cliID, Expected: []spiffeid.ID{srvID}}
	t.Cleanup(func() {
		_ = sp.pool.Close()
		cancel()
		_ = srv.Close()
		<-served
	})
	return sp
}

// dial returns both ends of a new stream.
func (sp *streamPair) dial(t *testing.T) (client, server net.Conn) {
	t.Helper()
	c, err := sp.pool.Dial(context.Background(), sp.target)
	if err != nil {
		t.Fatal(err)
	}
	return c, <-sp.accepted
}

// relayed is one connection through Start: client <-> [a relay b] <-> server.
type relayed struct {
	client, server net.Conn
	c              Counters
	done           chan error
	calls          atomic.Int32
}

// kinds are the sources a relay parks: TCP both ways, and a TCP connection to an HBONE stream (the
// agent's outbound and inbound legs).
var kinds = []string{"tcp-tcp", "tcp-stream"}

func startRelay(t *testing.T, ctx context.Context, kind string, sp *streamPair) *relayed {
	t.Helper()
	client, a := pair(t)
	var b, server net.Conn
	if kind == "tcp-stream" {
		b, server = sp.dial(t)
	} else {
		b, server = pair(t)
	}
	r := &relayed{client: client, server: server, done: make(chan error, 2)}
	Start(ctx, a, b, &r.c, func(err error) {
		r.calls.Add(1)
		r.done <- err
	})
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return r
}

func (r *relayed) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.done:
		if n := r.calls.Load(); n != 1 {
			t.Errorf("done called %d times", n)
		}
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not end")
		return nil
	}
}

func roundTrip(t *testing.T, from, to net.Conn, msg string) {
	t.Helper()
	if _, err := from.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(to, got); err != nil || string(got) != msg {
		t.Fatalf("read %q, %v; want %q", got, err, msg)
	}
}

// settle waits until the goroutine count is back to at most n: every half parked again.
// The poller's goroutine, started by the first parked relay, is allowed for.
func settle(t *testing.T, n int, what string) {
	t.Helper()
	n++
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%s: %d goroutines, want at most %d\n%s", what, runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStartParkedTransitions(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			testutil.CheckFDs(t)
			sp := newStreamPair(t)
			var sp0 *streamPair
			if kind == "tcp-stream" {
				sp0 = sp
			}
			c0, s0 := sp.dial(t) // the HBONE connection is up before the baseline
			c0.Close()
			s0.Close()

			t.Run("idle both ways, then one way, then the other", func(t *testing.T) {
				base := runtime.NumGoroutine()
				r := startRelay(t, context.Background(), kind, sp0)
				settle(t, base, "both halves parked")
				roundTrip(t, r.client, r.server, "ping")
				settle(t, base, "parked after data client to server")
				roundTrip(t, r.server, r.client, "pong")
				settle(t, base, "parked after data server to client")
				if r.c.AToB.Load() != 4 || r.c.BToA.Load() != 4 {
					t.Errorf("counters %d/%d, want 4/4", r.c.AToB.Load(), r.c.BToA.Load())
				}
				r.client.Close()
				r.server.Close()
				if err := r.wait(t); err != nil {
					t.Errorf("relay = %v", err)
				}
			})
			t.Run("bulk, then idle", func(t *testing.T) {
				base := runtime.NumGoroutine()
				r := startRelay(t, context.Background(), kind, sp0)
				const size = 4 << 20 // drains of 64 KiB and more: the half lingers, then parks
				go r.client.Write(make([]byte, size))
				if _, err := io.ReadFull(r.server, make([]byte, size)); err != nil {
					t.Fatal(err)
				}
				settle(t, base, "parked after a bulk transfer")
				roundTrip(t, r.client, r.server, "after the bulk")
				r.client.Close()
				r.server.Close()
				if err := r.wait(t); err != nil {
					t.Errorf("relay = %v", err)
				}
			})
			t.Run("half-close while parked", func(t *testing.T) {
				base := runtime.NumGoroutine()
				r := startRelay(t, context.Background(), kind, sp0)
				settle(t, base, "parked")
				r.client.(*net.TCPConn).CloseWrite()
				if b, err := io.ReadAll(r.server); err != nil || len(b) != 0 {
					t.Fatalf("server read %q, %v after the client's half-close", b, err)
				}
				settle(t, base, "the other half parked after the half-close")
				roundTrip(t, r.server, r.client, "reply after half-close")
				r.server.(interface{ CloseWrite() error }).CloseWrite()
				if _, err := io.ReadAll(r.client); err != nil {
					t.Fatal(err)
				}
				if err := r.wait(t); err != nil {
					t.Errorf("relay = %v", err)
				}
			})
			t.Run("peer reset while parked", func(t *testing.T) {
				base := runtime.NumGoroutine()
				r := startRelay(t, context.Background(), kind, sp0)
				settle(t, base, "parked")
				r.client.(*net.TCPConn).SetLinger(0)
				r.client.Close() // RST: the relay's read fails and half-closes the server's side
				if _, err := io.ReadAll(r.server); err != nil {
					t.Errorf("server read after the client's reset: %v", err)
				}
				r.server.Close()
				if err := r.wait(t); err == nil {
					t.Error("relay = nil after the client's reset, want the reset")
				}
			})
			t.Run("cancel while parked", func(t *testing.T) {
				base := runtime.NumGoroutine()
				ctx, cancel := context.WithCancel(context.Background())
				r := startRelay(t, ctx, kind, sp0)
				settle(t, base, "parked")
				cancel()
				if err := r.wait(t); !errors.Is(err, context.Canceled) {
					t.Errorf("relay = %v, want context.Canceled", err)
				}
				if _, err := io.ReadAll(r.client); err != nil {
					t.Errorf("client read after cancel: %v", err)
				}
			})
			t.Run("close racing readiness", func(t *testing.T) {
				for i := range 50 {
					ctx, cancel := context.WithCancel(context.Background())
					r := startRelay(t, ctx, kind, sp0)
					go r.client.Write([]byte("racing"))
					go r.server.Write([]byte("racing"))
					if i%2 == 0 {
						go cancel()
					} else {
						go r.client.Close()
						go r.server.Close()
					}
					_ = r.wait(t)
					cancel()
					r.client.Close()
					r.server.Close()
				}
			})
		})
	}
}

// TestIdleRelaysHoldNoGoroutine: idle relays hold no goroutine, whatever their number: the count with
// 200 idle relays is the count without them (Start), and Bidi holds only its caller's.
func TestIdleRelaysHoldNoGoroutine(t *testing.T) {
	const n = 200
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			var sp *streamPair
			if kind == "tcp-stream" {
				sp = newStreamPair(t)
				c0, s0 := sp.dial(t)
				c0.Close()
				s0.Close()
			}
			base := runtime.NumGoroutine()
			var rs []*relayed
			for range n {
				r := startRelay(t, context.Background(), kind, sp)
				roundTrip(t, r.client, r.server, "x") // each has moved data, and parked again
				rs = append(rs, r)
			}
			// The pool may spread the streams over a few HBONE connections (two goroutines each).
			settle(t, base+8, "no goroutine per idle relay")
			if got := Live(); got != n {
				t.Errorf("Live() = %d with %d relays running", got, n)
			}
			for _, r := range rs {
				r.client.Close()
				r.server.Close()
				_ = r.wait(t)
			}
			if got := Live(); got != 0 {
				t.Errorf("Live() = %d after every relay ended", got)
			}
		})
	}
}

// TestIdleBidiHoldsOneGoroutine: a blocking Bidi keeps only its caller waiting while idle (it kept two
// goroutines per connection before the relay parked).
func TestIdleBidiHoldsOneGoroutine(t *testing.T) {
	testutil.CheckGoroutines(t)
	const n = 200
	base := runtime.NumGoroutine()
	type conn struct{ client, server net.Conn }
	var cs []conn
	done := make(chan error, n)
	for range n {
		client, a := pair(t)
		b, server := pair(t)
		go func() { done <- Bidi(context.Background(), a, b, nil) }()
		roundTrip(t, client, server, "x")
		cs = append(cs, conn{client, server})
	}
	settle(t, base+n, "one goroutine per idle Bidi (its caller)")
	for _, c := range cs {
		c.client.Close()
		c.server.Close()
		<-done
	}
}

// TestRelayCancel: Cancel ends a relay, parked or not yet running, with its cause as the result, once;
// the relay's context ending still reports the context's error.
func TestRelayCancel(t *testing.T) {
	testutil.CheckGoroutines(t)
	errPolicy := errors.New("policy changed")
	sp := newStreamPair(t)
	for _, kind := range kinds {
		t.Run(kind+"/parked", func(t *testing.T) {
			client, a := pair(t)
			var b, server net.Conn
			if kind == "tcp-stream" {
				b, server = sp.dial(t)
			} else {
				b, server = pair(t)
			}
			r := &relayed{client: client, server: server, done: make(chan error, 2)}
			rl := New(context.Background(), a, b, &r.c, func(err error) { r.calls.Add(1); r.done <- err })
			rl.Run()
			roundTrip(t, r.client, r.server, "x")
			rl.Cancel(errPolicy)
			rl.Cancel(errors.New("second cause"))
			if err := r.wait(t); !errors.Is(err, errPolicy) {
				t.Fatalf("result %v, want the cause %v", err, errPolicy)
			}
			if _, err := client.Read(make([]byte, 1)); err == nil {
				t.Fatal("client still open after Cancel")
			}
			client.Close()
			server.Close()
		})
	}
	t.Run("before Run", func(t *testing.T) {
		client, a := pair(t)
		b, server := pair(t)
		defer client.Close()
		defer server.Close()
		done := make(chan error, 1)
		rl := New(context.Background(), a, b, nil, func(err error) { done <- err })
		rl.Cancel(nil)
		rl.Run()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("result %v, want context.Canceled", err)
		}
	})
	t.Run("context", func(t *testing.T) {
		client, a := pair(t)
		b, server := pair(t)
		defer client.Close()
		defer server.Close()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		New(ctx, a, b, nil, func(err error) { done <- err }).Run()
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("result %v, want context.Canceled", err)
		}
	})
}

// TestStartRelaysWaitingDataInline: what a TCP source received before Run (less than a read, more than
// one, or only its end) is relayed in order, a first read of it before Run returns (on the caller's
// goroutine, no poller round trip), and the relay then works both ways and ends cleanly.
func TestStartRelaysWaitingDataInline(t *testing.T) {
	testutil.CheckGoroutines(t)
	sp := newStreamPair(t)
	for _, kind := range kinds {
		for _, size := range []int{0, 5, smallSize, 3*smallSize + 7} {
			t.Run(fmt.Sprintf("%s/%d", kind, size), func(t *testing.T) {
				client, a := pair(t)
				var b, server net.Conn
				if kind == "tcp-stream" {
					b, server = sp.dial(t)
				} else {
					b, server = pair(t)
				}
				defer client.Close()
				defer server.Close()
				msg := make([]byte, size)
				for i := range msg {
					msg[i] = byte(i)
				}
				if _, err := client.Write(msg); err != nil {
					t.Fatal(err)
				}
				if size == 0 {
					if err := client.CloseWrite(); err != nil {
						t.Fatal(err)
					}
				}
				// Everything written has reached a's receive queue once a has it to read.
				testutil.WaitFor(t, 5*time.Second, "data at the relay's source", func() bool {
					return waitReadableFD(t, a)
				})
				var c Counters
				done := make(chan error, 1)
				New(context.Background(), a, b, &c, func(err error) { done <- err }).Run()
				// At least the first read's bytes (a goroutine may be relaying the rest by now).
				if got, want := c.AToB.Load(), int64(min(size, smallSize)); got < want {
					t.Errorf("after Run: %d bytes relayed, want at least the first read's %d", got, want)
				}
				got := make([]byte, size)
				if _, err := io.ReadFull(server, got); err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("server read %d bytes, %v; want the %d written", len(got), err, size)
				}
				if size == 0 {
					if _, err := server.Read(make([]byte, 1)); err != io.EOF {
						t.Fatalf("server read after the client's end: %v, want io.EOF", err)
					}
					server.(interface{ CloseWrite() error }).CloseWrite()
				} else {
					roundTrip(t, server, client, "back")
					roundTrip(t, client, server, "again")
					client.Close()
					server.Close()
				}
				select {
				case err := <-done:
					if err != nil {
						t.Fatalf("relay ended with %v", err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("relay did not end")
				}
			})
		}
	}
}

// waitReadableFD reports whether c has something to read (bytes or its end) without taking it.
func waitReadableFD(t *testing.T, c *net.TCPConn) bool {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ready bool
	if err := rc.Control(func(fd uintptr) {
		var b [1]byte
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ready = err != syscall.EAGAIN
	}); err != nil {
		t.Fatal(err)
	}
	return ready
}
