package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"testing"
	"time"

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

func TestBidi(t *testing.T) {
	for _, splice := range []bool{true, false} {
		name := map[bool]string{true: "splice", false: "buffers"}[splice]
		t.Run(name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			// client <-> [a  relay  b] <-> server
			client, a := pair(t)
			b, server := pair(t)
			var ra, rb net.Conn = a, b
			if !splice {
				ra, rb = onlyConn{a}, onlyConn{b}
			}
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
	testutil.CheckGoroutines(t)
	client, a := pair(t)
	b, server := pair(t)
	defer client.Close()
	defer server.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Bidi(ctx, onlyConn{a}, onlyConn{b}, nil) }()
	client.Write([]byte("x"))
	buf := make([]byte, 1)
	if _, err := io.ReadFull(server, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
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
}

func BenchmarkBidi(b *testing.B) {
	for _, splice := range []bool{true, false} {
		b.Run(map[bool]string{true: "splice", false: "buffers"}[splice], func(b *testing.B) {
			client, a := pair(b)
			rb, server := pair(b)
			var x, y net.Conn = a, rb
			if !splice {
				x, y = onlyConn{a}, onlyConn{rb}
			}
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
