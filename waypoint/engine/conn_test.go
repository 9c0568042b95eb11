package engine

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestStreamConn(t *testing.T) {
	tests := []struct {
		name    string
		first   string
		wantH2  bool
		readLen int
	}{
		{name: "h2 preface", first: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", wantH2: true, readLen: len(h2Preface)},
		{name: "http1 request", first: "GET / HTTP/1.1\r\nHost: a\r\n\r\n", readLen: 14},
		{name: "large first read", first: "GET / HTTP/1.1\r\nHost: a\r\n\r\n", readLen: readBufferSize},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client, server := tcpPair(t)
			sc := newStreamConn(server, &ConnInfo{})
			if _, err := client.Write([]byte(tc.first)); err != nil {
				t.Fatal(err)
			}
			// Small reads come out of the read-ahead in order, whatever their sizes.
			got := make([]byte, 0, len(tc.first))
			p := make([]byte, tc.readLen)
			for len(got) < len(tc.first) {
				size := len(p) // the first read asks for the preface's length, as the server's does
				if len(got) > 0 {
					size = min(len(p), 1+len(got)%5+len(got)/3)
				}
				n, err := sc.Read(p[:size])
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, p[:n]...)
			}
			if string(got) != tc.first {
				t.Fatalf("read %q, want %q", got, tc.first)
			}
			if sc.h2.Load() != tc.wantH2 {
				t.Fatalf("h2 = %v, want %v", sc.h2.Load(), tc.wantH2)
			}

			// Writes from several goroutines, one at a time, arrive whole and in order, and Close
			// writes what is pending before the client sees EOF.
			var want bytes.Buffer
			var mu sync.Mutex
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Go(func() {
					for i := range 200 {
						chunk := bytes.Repeat([]byte{byte('a' + g)}, 1+(i*37)%3000)
						mu.Lock()
						want.Write(chunk)
						_, err := sc.Write(chunk)
						mu.Unlock()
						if err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			var recv []byte
			readDone := make(chan error, 1)
			go func() {
				var err error
				recv, err = io.ReadAll(client)
				readDone <- err
			}()
			wg.Wait()
			if err := sc.Close(); err != nil {
				t.Fatal(err)
			}
			if err := <-readDone; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(recv, want.Bytes()) {
				t.Fatalf("client read %d bytes, want %d (same content: %v)", len(recv), want.Len(), bytes.Equal(recv, want.Bytes()))
			}
			if _, err := sc.Write([]byte("x")); err == nil {
				t.Fatal("write after Close succeeded")
			}
			select {
			case <-sc.done:
			default:
				t.Fatal("done not closed by Close")
			}
		})
	}
}

// TestStreamConnWriteError checks that a failed write is reported by a later Write and that the
// writer goroutine exits.
func TestStreamConnWriteError(t *testing.T) {
	client, server := tcpPair(t)
	sc := newStreamConn(server, &ConnInfo{})
	client.Write(h2Preface)
	if _, err := sc.Read(make([]byte, len(h2Preface))); err != nil {
		t.Fatal(err)
	}
	client.Close()
	server.(*net.TCPConn).SetLinger(0)
	deadline := time.Now().Add(10 * time.Second)
	var err error
	for err == nil && time.Now().Before(deadline) {
		_, err = sc.Write(make([]byte, 32<<10))
		time.Sleep(time.Millisecond)
	}
	if err == nil {
		t.Fatal("writes to a closed peer kept succeeding")
	}
	if errors.Is(err, net.ErrClosed) {
		t.Fatalf("err = %v, want the stream's write error", err)
	}
	sc.Close()
	sc.wmu.Lock()
	running := sc.wdone != nil
	sc.wmu.Unlock()
	if running {
		t.Fatal("writer goroutine still running after Close")
	}
}

// TestStreamConnReadDeadline checks the read deadline's semantics through streamConn's one timer: a
// deadline that passes fails a pending read, a passed deadline fails reads until cleared, and a
// deadline moved later or cleared before it passes does not fire.
func TestStreamConnReadDeadline(t *testing.T) {
	isTimeout := func(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
	t.Run("pending read times out", func(t *testing.T) {
		_, server := tcpPair(t)
		sc := newStreamConn(server, &ConnInfo{})
		defer sc.Close()
		sc.SetReadDeadline(time.Now().Add(time.Hour))
		sc.SetReadDeadline(time.Now().Add(20 * time.Millisecond)) // earlier: re-arms the timer
		if _, err := sc.Read(make([]byte, 1)); !isTimeout(err) {
			t.Fatalf("read: %v, want a timeout", err)
		}
		// The passed deadline holds until it is replaced; then reads work again.
		if _, err := sc.Read(make([]byte, 1)); !isTimeout(err) {
			t.Fatalf("second read: %v, want a timeout", err)
		}
	})
	t.Run("past deadline then cleared", func(t *testing.T) {
		client, server := tcpPair(t)
		sc := newStreamConn(server, &ConnInfo{})
		defer sc.Close()
		sc.SetReadDeadline(time.Unix(1, 0))
		if _, err := sc.Read(make([]byte, 1)); !isTimeout(err) {
			t.Fatalf("read: %v, want a timeout", err)
		}
		sc.SetReadDeadline(time.Time{})
		client.Write([]byte("x"))
		if n, err := sc.Read(make([]byte, 1)); n != 1 || err != nil {
			t.Fatalf("read after clearing: %d, %v", n, err)
		}
	})
	for _, later := range []time.Time{{}, time.Now().Add(time.Hour)} {
		t.Run("moved before it passes, to "+map[bool]string{true: "none", false: "later"}[later.IsZero()], func(t *testing.T) {
			client, server := tcpPair(t)
			sc := newStreamConn(server, &ConnInfo{})
			defer sc.Close()
			sc.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			sc.SetReadDeadline(later)
			time.Sleep(50 * time.Millisecond) // the timer armed for the first deadline fires
			client.Write([]byte("x"))
			if n, err := sc.Read(make([]byte, 1)); n != 1 || err != nil {
				t.Fatalf("read: %d, %v", n, err)
			}
		})
	}
}
