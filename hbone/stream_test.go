package hbone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/test/testutil"
)

// serverStream starts a server whose handler hands each accepted stream to the test.
func serverStream(tb testing.TB, pki *testPKI, mod func(*Server)) (*testServer, <-chan *Stream) {
	ch := make(chan *Stream, 16)
	release := make(chan struct{})
	h := HandlerFunc(func(ctx context.Context, r *Request) error {
		c, err := r.Accept(nil)
		if err != nil {
			return err
		}
		ch <- c.(*Stream)
		<-release // the test uses and closes the stream; the handler returns at cleanup
		return nil
	})
	ts := startServer(tb, pki, h, mod)
	tb.Cleanup(func() { close(release) })
	return ts, ch
}

func TestHalfCloseClientFirst(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts, srvc := serverStream(t, pki, nil)
	p := newTestPool(t, pki, nil)
	c := dialT(t, p, ts.target(pki))
	s := <-srvc
	defer s.Close()

	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(s); err != nil || string(got) != "request" {
		t.Fatalf("server read %q, %v", got, err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, ErrWriteAfterClose) {
		t.Fatalf("write after CloseWrite = %v", err)
	}
	// The other direction still flows after the client's half-close.
	if _, err := s.Write([]byte("response")); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(c); err != nil || string(got) != "response" {
		t.Fatalf("client read %q, %v", got, err)
	}
	testutil.WaitFor(t, 5*time.Second, "stream to leave", func() bool { return p.Stats().Streams == 0 })
}

func TestHalfCloseServerFirst(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts, srvc := serverStream(t, pki, nil)
	p := newTestPool(t, pki, nil)
	c := dialT(t, p, ts.target(pki))
	s := <-srvc
	defer s.Close()

	if _, err := s.Write([]byte("banner")); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(c); err != nil || string(got) != "banner" {
		t.Fatalf("client read %q, %v", got, err)
	}
	if _, err := c.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(s); err != nil || string(got) != "reply" {
		t.Fatalf("server read %q, %v", got, err)
	}
	testutil.WaitFor(t, 5*time.Second, "stream to leave", func() bool { return p.Stats().Streams == 0 })
}

func TestCloseResetsPeerAsEOF(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts, srvc := serverStream(t, pki, nil)
	p := newTestPool(t, pki, nil)

	t.Run("client closes", func(t *testing.T) {
		c := dialT(t, p, ts.target(pki))
		s := <-srvc
		defer s.Close()
		if _, err := c.Write([]byte("bye")); err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
		// END_STREAM then RST_STREAM(CANCEL): the server reads the data, then EOF.
		if got, err := io.ReadAll(s); err != nil || string(got) != "bye" {
			t.Fatalf("server read %q, %v", got, err)
		}
		testutil.WaitFor(t, 5*time.Second, "reset to arrive", func() bool {
			_, err := s.Write([]byte("x"))
			var re *ResetError
			return errors.As(err, &re) && re.Code == http2.ErrCodeCancel
		})
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close = %v", err)
		}
	})
	t.Run("server closes", func(t *testing.T) {
		c := dialT(t, p, ts.target(pki))
		s := <-srvc
		if _, err := s.Write([]byte("bye")); err != nil {
			t.Fatal(err)
		}
		_ = s.Close()
		if got, err := io.ReadAll(c); err != nil || string(got) != "bye" {
			t.Fatalf("client read %q, %v", got, err)
		}
	})
	t.Run("reset codes", func(t *testing.T) {
		for _, tt := range []struct {
			code http2.ErrCode
			eof  bool
		}{{http2.ErrCodeNo, true}, {http2.ErrCodeCancel, true}, {http2.ErrCodeInternal, false}} {
			c := dialT(t, p, ts.target(pki))
			s := <-srvc
			s.c.resetStream(s.id, tt.code)
			_, err := io.ReadAll(c)
			var re *ResetError
			if tt.eof && err != nil || !tt.eof && !(errors.As(err, &re) && re.Code == tt.code && re.Remote) {
				t.Errorf("reset %v: ReadAll = %v", tt.code, err)
			}
			_ = s.Close()
		}
	})
}

func TestCloseUnblocksReadAndWrite(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts, srvc := serverStream(t, pki, nil)
	p := newTestPool(t, pki, func(o *PoolOptions) {})
	c := dialT(t, p, ts.target(pki))
	s := <-srvc
	defer s.Close()
	readErr := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		readErr <- err
	}()
	writeErr := make(chan error, 1)
	go func() {
		// The server never reads: the 4 MiB stream window fills and Write blocks.
		_, err := c.Write(make([]byte, 8<<20))
		writeErr <- err
	}()
	time.Sleep(100 * time.Millisecond)
	_ = c.Close()
	for name, ch := range map[string]chan error{"Read": readErr, "Write": writeErr} {
		select {
		case err := <-ch:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("%s after Close = %v", name, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s still blocked after Close", name)
		}
	}
}

func TestDeadlines(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts, srvc := serverStream(t, pki, nil)
	p := newTestPool(t, pki, nil)
	c := dialT(t, p, ts.target(pki))
	s := <-srvc
	defer s.Close()

	t.Run("read", func(t *testing.T) {
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
		start := time.Now()
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read = %v", err)
		}
		if time.Since(start) < 20*time.Millisecond {
			t.Fatal("deadline fired early")
		}
		// Past deadline: immediate.
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read = %v", err)
		}
		// Cleared deadline: data flows again.
		_ = c.SetReadDeadline(time.Time{})
		go func() { _, _ = s.Write([]byte("z")) }()
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil || b[0] != 'z' {
			t.Fatalf("Read after clearing deadline = %q, %v", b, err)
		}
	})
	t.Run("read deadline moved while blocked", func(t *testing.T) {
		_ = c.SetReadDeadline(time.Now().Add(time.Hour))
		errc := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 1))
			errc <- err
		}()
		time.Sleep(20 * time.Millisecond)
		_ = c.SetReadDeadline(time.Now())
		if err := <-errc; !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read = %v", err)
		}
		_ = c.SetReadDeadline(time.Time{})
	})
	t.Run("write blocked on flow control", func(t *testing.T) {
		// The server is not reading: one stream window fits, the next byte must wait for credit.
		if _, err := c.Write(make([]byte, DefaultStreamWindow)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetWriteDeadline(time.Now().Add(30 * time.Millisecond))
		n, err := c.Write([]byte{1})
		if !errors.Is(err, os.ErrDeadlineExceeded) || n != 0 {
			t.Fatalf("Write past the window = %d, %v", n, err)
		}
		n = DefaultStreamWindow
		// Draining on the server reopens the window; a cleared deadline lets writing continue.
		_ = c.SetWriteDeadline(time.Time{})
		go func() { _, _ = io.CopyN(io.Discard, s, int64(n)+10) }()
		if _, err := c.Write(make([]byte, 10)); err != nil {
			t.Fatal(err)
		}
	})
}

// transfer sends size pseudo-random bytes from w to r with odd write sizes, the reader reading odd sizes
// and pausing now and then, and checks integrity.
func transfer(w, r *Stream, size int, seed uint64, slow bool) error {
	rng := rand.New(rand.NewPCG(seed, 1))
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	want := sha256.Sum256(data)
	errc := make(chan error, 1)
	go func() {
		wr := rand.New(rand.NewPCG(seed, 2))
		p := data
		for len(p) > 0 {
			n := min(len(p), 1+wr.IntN(300<<10))
			if _, err := w.Write(p[:n]); err != nil {
				errc <- err
				return
			}
			p = p[n:]
		}
		errc <- w.CloseWrite()
	}()
	rr := rand.New(rand.NewPCG(seed, 3))
	h := sha256.New()
	buf := make([]byte, 1<<20)
	total := 0
	for {
		n, err := r.Read(buf[:1+rr.IntN(len(buf))])
		h.Write(buf[:n])
		total += n
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read after %d bytes: %w", total, err)
		}
		if slow && rr.IntN(50) == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if total != size || !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("received %d bytes with a different digest (sent %d)", total, size)
	}
	return nil
}

func TestLargeTransferIntegrity(t *testing.T) {
	testutil.CheckGoroutines(t)
	size := 64 << 20
	if testing.Short() {
		size = 8 << 20
	}
	small := Settings{StreamWindow: 65535, ConnWindow: 100_000, MaxFrameSize: 16384}
	tests := []struct {
		name     string
		settings Settings
		slow     bool
	}{
		{"default windows", Settings{}, false},
		{"default windows, slow reader", Settings{}, true},
		{"small windows and frames, slow reader", small, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pki := newPKI(t)
			ts, srvc := serverStream(t, pki, func(s *Server) { s.Settings = tt.settings })
			p := newTestPool(t, pki, func(o *PoolOptions) { o.Settings = tt.settings })
			c := dialT(t, p, ts.target(pki))
			s := <-srvc
			defer s.Close()
			n := size
			if tt.settings.StreamWindow != 0 {
				n = size / 8
			}
			var g group
			g.Go(func() error { return transfer(c, s, n, 1, tt.slow) })
			g.Go(func() error { return transfer(s, c, n, 2, tt.slow) })
			if err := g.Wait(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestConcurrentStreams(t *testing.T) {
	testutil.CheckGoroutines(t)
	testutil.CheckFDs(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), nil)
	p := newTestPool(t, pki, func(o *PoolOptions) { o.MaxStreamsPerConn = 8 })
	const n = 40
	var g group
	var dialed sync.WaitGroup // all streams are open at once before any transfer
	dialed.Add(n)
	for i := range n {
		g.Go(func() error {
			c, err := p.Dial(context.Background(), ts.target(pki))
			dialed.Done()
			if err != nil {
				return err
			}
			defer c.Close()
			dialed.Wait()
			msg := bytes.Repeat([]byte{byte(i)}, 100_000+i)
			go func() {
				_, _ = c.Write(msg)
				_ = c.(*Stream).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				return err
			}
			if !bytes.Equal(got, msg) {
				return fmt.Errorf("stream %d: echo mismatch (%d bytes)", i, len(got))
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "streams to leave", func() bool { return p.Stats().Streams == 0 })
	if st := p.Stats(); st.Conns != n/8 {
		t.Fatalf("%d concurrent streams at 8 per connection used %d connections", n, st.Conns)
	}
}

func TestStreamFlowControlViolation(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts, srvc := serverStream(t, pki, func(s *Server) { s.Settings.StreamWindow = 65535 })
	rc := dialRawClient(t, ts.addr, pki.client)
	rc.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.1:80")
	if got := rc.status(1); got != 200 {
		t.Fatalf("status %d", got)
	}
	s := <-srvc
	defer s.Close()
	_ = rc.fr.WriteData(1, false, make([]byte, 65536)) // one byte over the window
	_ = rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if r, ok := f.(*http2.RSTStreamFrame); ok {
			if r.StreamID != 1 || r.ErrCode != http2.ErrCodeFlowControl {
				t.Fatalf("RST %d %v", r.StreamID, r.ErrCode)
			}
			break
		}
	}
	if _, err := io.ReadAll(s); err == nil {
		t.Fatal("server stream read cleanly after a flow-control violation")
	}
}

func TestRecvBuffer(t *testing.T) {
	var rb recvBuffer
	var want []byte
	rng := rand.New(rand.NewPCG(7, 7))
	for range 200 {
		switch rng.IntN(3) {
		case 0:
			p := make([]byte, rng.IntN(40000))
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			rb.appendCopy(p)
			want = append(want, p...)
		case 1:
			n := 1 + rng.IntN(200000)
			b := getChunk(n)
			for i := range n {
				b[i] = byte(rng.Uint32())
			}
			rb.appendChunk(b, n)
			want = append(want, b[:n]...)
		case 2:
			p := make([]byte, rng.IntN(100000))
			n := rb.read(p)
			if !bytes.Equal(p[:n], want[:n]) {
				t.Fatal("read mismatch")
			}
			want = want[n:]
		}
		if rb.len() != len(want) {
			t.Fatalf("len %d, want %d", rb.len(), len(want))
		}
	}
	if n := rb.reset(); n != len(want) {
		t.Fatalf("reset dropped %d, want %d", n, len(want))
	}
}

func TestWriteTo(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts, srvc := serverStream(t, pki, nil)
	p := newTestPool(t, pki, nil)
	c := dialT(t, p, ts.target(pki))
	s := <-srvc
	defer s.Close()

	rng := rand.New(rand.NewPCG(9, 9))
	data := make([]byte, 16<<20+12345)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	go func() {
		for p := data; len(p) > 0; {
			n := min(len(p), 1+rng.IntN(200<<10))
			if _, err := s.Write(p[:n]); err != nil {
				return
			}
			p = p[n:]
		}
		_ = s.CloseWrite()
	}()
	h := sha256.New()
	n, err := io.Copy(h, c) // uses Stream.WriteTo
	if err != nil || n != int64(len(data)) {
		t.Fatalf("io.Copy = %d, %v; want %d", n, err, len(data))
	}
	if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("digest mismatch")
	}

	t.Run("deadline", func(t *testing.T) {
		c := dialT(t, p, ts.target(pki))
		s := <-srvc
		defer s.Close()
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := c.WriteTo(io.Discard); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("WriteTo = %v", err)
		}
	})
	t.Run("writer error", func(t *testing.T) {
		c := dialT(t, p, ts.target(pki))
		s := <-srvc
		defer s.Close()
		go func() { _, _ = s.Write([]byte("x")) }()
		if _, err := c.WriteTo(failingWriter{}); !errors.Is(err, errTest) {
			t.Fatalf("WriteTo = %v", err)
		}
	})
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errTest }
