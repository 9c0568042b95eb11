package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// pair returns two connected TCP connections on loopback.
func pair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// onlyConn hides *net.TCPConn so the user-space path runs.
type onlyConn struct{ net.Conn }

func (c onlyConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// wrappers are the ways Bidi may see its two TCP connections: both as *net.TCPConn (splice), a as TCP
// and b hidden (a's direction waits for readability and borrows pooled buffers, b's reads into a buffer
// of its own), and both hidden.
var wrappers = []struct {
	name   string
	wa, wb func(*net.TCPConn) net.Conn
}{
	{"splice", asConn, asConn},
	{"tcp-source", asConn, hide},
	{"buffers", hide, hide},
}

func asConn(c *net.TCPConn) net.Conn { return c }
func hide(c *net.TCPConn) net.Conn   { return onlyConn{c} }

func TestBidi(t *testing.T) {
	for _, w := range wrappers {
		t.Run(w.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			// client <-> [a  relay  b] <-> server
			client, a := pair(t)
			b, server := pair(t)
			ra, rb := w.wa(a), w.wb(b)
			var c Counters
			done := make(chan error, 1)
			go func() { done <- Bidi(context.Background(), ra, rb, &c) }()

			up := make([]byte, 3<<20)
			rand.Read(up)
			go func() {
				client.Write(up)
				client.CloseWrite() // half-close: the server must see EOF, then still answer
			}()
			got, err := io.ReadAll(server)
			if err != nil || !bytes.Equal(got, up) {
				t.Fatalf("server read %d bytes (err %v), want %d identical", len(got), err, len(up))
			}
			if _, err := server.Write([]byte("reply after half-close")); err != nil {
				t.Fatal(err)
			}
			server.CloseWrite()
			reply, err := io.ReadAll(client)
			if err != nil || string(reply) != "reply after half-close" {
				t.Fatalf("client read %q, %v", reply, err)
			}
			if err := <-done; err != nil {
				t.Errorf("Bidi = %v", err)
			}
			if c.AToB.Load() != int64(len(up)) || c.BToA.Load() != int64(len(reply)) {
				t.Errorf("counters %d/%d, want %d/%d", c.AToB.Load(), c.BToA.Load(), len(up), len(reply))
			}
			client.Close()
			server.Close()
		})
	}
}

func TestBidiCancel(t *testing.T) {
	for _, w := range wrappers {
		t.Run(w.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			client, a := pair(t)
			b, server := pair(t)
			defer client.Close()
			defer server.Close()
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- Bidi(ctx, w.wa(a), w.wb(b), nil) }()
			client.Write([]byte("x"))
			buf := make([]byte, 1)
			if _, err := io.ReadFull(server, buf); err != nil {
				t.Fatal(err)
			}
			cancel() // both directions are idle, waiting to read
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Bidi = %v, want context.Canceled", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Bidi did not stop on cancel")
			}
			// Both outer ends see the connection go away.
			client.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := client.Read(buf); err == nil {
				t.Error("client still connected")
			}
		})
	}
}

func BenchmarkBidi(b *testing.B) {
	for _, w := range wrappers {
		b.Run(w.name, func(b *testing.B) {
			client, a := pair(b)
			rb, server := pair(b)
			x, y := w.wa(a), w.wb(rb)
			go Bidi(context.Background(), x, y, nil)
			buf := make([]byte, 256<<10)
			go func() {
				io.Copy(io.Discard, server)
			}()
			b.SetBytes(int64(len(buf)))
			for b.Loop() {
				if _, err := client.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			client.Close()
			server.Close()
		})
	}
}

func TestCleanEnd(t *testing.T) {
	peerCancel := &hbone.ResetError{Code: http2.ErrCodeCancel, Remote: true}
	peerInternal := &hbone.ResetError{Code: http2.ErrCodeInternal, Remote: true}
	localCancel := &hbone.ResetError{Code: http2.ErrCodeCancel}
	tests := map[string]struct {
		err   error
		clean bool
	}{
		"nil":                           {nil, true},
		"end of stream":                 {io.EOF, true},
		"wrapped end of stream":         {fmt.Errorf("read: %w", io.EOF), true},
		"closed here":                   {net.ErrClosed, true},
		"peer reset NO_ERROR":           {&hbone.ResetError{Code: http2.ErrCodeNo, Remote: true}, true},
		"peer reset CANCEL":             {peerCancel, true},
		"wrapped peer reset CANCEL":     {fmt.Errorf("write: %w", peerCancel), true},
		"peer reset INTERNAL_ERROR":     {peerInternal, false},
		"peer reset REFUSED_STREAM":     {&hbone.ResetError{Code: http2.ErrCodeRefusedStream, Remote: true}, false},
		"local reset CANCEL":            {localCancel, false},
		"connection reset":              {syscall.ECONNRESET, false},
		"deadline exceeded":             {os.ErrDeadlineExceeded, false},
		"HBONE connection closed early": {fmt.Errorf("%w: write: %w", hbone.ErrConnClosed, syscall.EPIPE), false},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got := cleanEnd(tt.err)
			if tt.clean && got != nil {
				t.Errorf("cleanEnd(%v) = %v, want nil", tt.err, got)
			}
			if !tt.clean && got != tt.err {
				t.Errorf("cleanEnd(%v) = %v, want the error unchanged", tt.err, got)
			}
		})
	}
}

// hboneStream returns both ends of one HBONE stream over loopback mTLS: the client's (from a Pool) and
// the server's (accepted by a Server's handler). Cleanup closes the pool and the server.
func hboneStream(t *testing.T) (client, server net.Conn) {
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
	accepted := make(chan net.Conn, 1)
	release := make(chan struct{}) // the handler owns the stream until it returns
	srv := &hbone.Server{
		Credentials: func(context.Context, netip.AddrPort) (*hbone.Credentials, error) { return srvCreds, nil },
		Handler: hbone.HandlerFunc(func(ctx context.Context, r *hbone.Request) error {
			c, err := r.Accept(nil)
			if err != nil {
				return err
			}
			accepted <- c
			<-release
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
	pool, err := hbone.NewPool(hbone.PoolOptions{
		Credentials: func(context.Context, spiffeid.ID) (*hbone.Credentials, error) { return cliCreds, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		close(release)
		_ = pool.Close()
		cancel()
		_ = srv.Close()
		<-served
	})
	client, err = pool.Dial(ctx, hbone.Target{
		NextHop: ln.Addr().(*net.TCPAddr).AddrPort(), Authority: "10.0.0.1:80",
		Source: cliID, Expected: []spiffeid.ID{srvID},
	})
	if err != nil {
		t.Fatal(err)
	}
	return client, <-accepted
}

// TestBidiPeerCancel relays a TCP connection to an HBONE stream whose peer closes it (RST_STREAM CANCEL):
// a normal end, so Bidi reports no error whether the TCP side then writes or closes.
func TestBidiPeerCancel(t *testing.T) {
	for _, clientWrites := range []bool{true, false} {
		name := map[bool]string{true: "client writes after the reset", false: "client closes after the reset"}[clientWrites]
		t.Run(name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			client, a := pair(t)
			defer client.Close()
			up, peer := hboneStream(t)
			done := make(chan error, 1)
			go func() { done <- Bidi(context.Background(), a, up, nil) }()
			if _, err := client.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 5)
			if _, err := io.ReadFull(peer, got); err != nil || string(got) != "hello" {
				t.Fatalf("peer read %q, %v", got, err)
			}
			peer.Close() // END_STREAM and RST_STREAM(CANCEL): the peer no longer wants the stream
			if _, err := io.ReadAll(client); err != nil {
				t.Fatalf("client read after reset: %v", err)
			}
			if clientWrites {
				// The relay's write to the reset stream fails with a CANCEL reset from the peer.
				for range 100 {
					if _, err := client.Write([]byte("more")); err != nil {
						break
					}
					select {
					case err := <-done:
						done <- err
					case <-time.After(10 * time.Millisecond):
						continue
					}
					break
				}
			}
			client.Close()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Bidi = %v, want nil for a stream the peer cancelled", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Bidi did not return")
			}
		})
	}
}
