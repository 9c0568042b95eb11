package hbone

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/test/testutil"
)

// TestServerHandshakeTimeout: connections stalled before the HTTP/2 connection is up (in TLS, before
// the client preface, before the client's SETTINGS) are closed after HandshakeTimeout and counted, and
// every goroutine they used ends.
func TestServerHandshakeTimeout(t *testing.T) {
	testutil.CheckGoroutines(t)
	testutil.CheckFDs(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), func(s *Server) {
		s.HandshakeTimeout = 200 * time.Millisecond
		s.KeepaliveInterval = -1 // only the handshake timeout may close these
	})
	tests := []struct {
		name string
		dial func(t *testing.T) net.Conn
	}{
		{"TLS", func(t *testing.T) net.Conn {
			c, err := net.Dial("tcp", ts.addr.String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
			_, _ = c.Write([]byte{0x16, 0x03, 0x01}) // the start of a ClientHello, then nothing
			return c
		}},
		{"HTTP/2 preface", func(t *testing.T) net.Conn {
			c, err := rawTLS(t, ts.addr, clientTLS(pki.client, "h2"))
			if err != nil {
				t.Fatal(err)
			}
			return c
		}},
		{"SETTINGS", func(t *testing.T) net.Conn {
			c, err := rawTLS(t, ts.addr, clientTLS(pki.client, "h2"))
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.WriteString(c, http2.ClientPreface)
			return c
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.dial(t)
			if err := readToEndWithin(c, 5*time.Second); errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("stalled connection still open after 5 s")
			}
			testutil.WaitFor(t, 5*time.Second, "the timeout to be counted", func() bool {
				return ts.Stats().HandshakeTimeouts == uint64(i+1)
			})
		})
	}
	testutil.WaitFor(t, 5*time.Second, "the connections to end", func() bool { return ts.Stats().Conns == 0 })
}

// TestServerIdleTimeout: an authenticated connection without streams gets GOAWAY(NO_ERROR) and closes
// after IdleTimeout; while a stream is open it does not, and the clock restarts when the stream ends.
func TestServerIdleTimeout(t *testing.T) {
	testutil.CheckGoroutines(t)
	testutil.CheckFDs(t)
	pki := newPKI(t)
	const idle = 200 * time.Millisecond
	ts := startServer(t, pki, echoHandler(), func(s *Server) {
		s.IdleTimeout = idle
		s.KeepaliveInterval = -1
	})

	t.Run("no streams", func(t *testing.T) {
		p := dialFloodPeer(t, ts.addr, pki.client, false)
		select {
		case g := <-p.goAway:
			if g.ErrCode != http2.ErrCodeNo {
				t.Fatalf("GOAWAY %v, want NO_ERROR", g.ErrCode)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("idle connection not closed")
		}
		p.expectEnd()
	})
	t.Run("open stream", func(t *testing.T) {
		p := dialFloodPeer(t, ts.addr, pki.client, false)
		_ = p.connect(1)
		_ = p.flush()
		if st := <-p.statuses; st != [2]int{1, 200} {
			t.Fatalf("response %v", st)
		}
		time.Sleep(3 * idle) // several idle timeouts pass with the stream open
		_ = p.fr.WritePing(false, [8]byte{2})
		_ = p.flush()
		select {
		case <-p.pingAcks:
		case g := <-p.goAway:
			t.Fatalf("GOAWAY %v with a stream open", g.ErrCode)
		case <-time.After(10 * time.Second):
			t.Fatal("no PING ACK")
		}
		_ = p.fr.WriteData(1, true, nil) // the echo handler half-closes back: the stream ends
		_ = p.flush()
		select {
		case g := <-p.goAway:
			if g.ErrCode != http2.ErrCodeNo || g.LastStreamID != 1 {
				t.Fatalf("GOAWAY %v last %d, want NO_ERROR last 1", g.ErrCode, g.LastStreamID)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("connection not closed once idle")
		}
		p.expectEnd()
	})
	if st := ts.Stats(); st.IdleTimeouts != 2 {
		t.Fatalf("stats %+v, want 2 idle timeouts", st)
	}
	testutil.WaitFor(t, 5*time.Second, "the connections to end", func() bool { return ts.Stats().Conns == 0 })
}

// TestServerMaxConns: beyond MaxConns, new connections are closed at accept and counted; a slot frees
// when a connection ends.
func TestServerMaxConns(t *testing.T) {
	testutil.CheckGoroutines(t)
	testutil.CheckFDs(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), func(s *Server) { s.MaxConns = 2 })
	var peers []*floodPeer
	for range 2 {
		p := dialFloodPeer(t, ts.addr, pki.client, false)
		_ = p.fr.WritePing(false, [8]byte{})
		_ = p.flush()
		<-p.pingAcks // established
		peers = append(peers, p)
	}
	if _, err := rawTLS(t, ts.addr, clientTLS(pki.client, "h2")); err == nil {
		t.Fatal("third connection completed TLS with MaxConns 2")
	}
	if st := ts.Stats(); st.ConnsRejected != 1 || st.Conns != 2 || st.ConnsAccepted != 3 {
		t.Fatalf("stats %+v, want 3 accepted, 1 rejected, 2 open", st)
	}
	_ = peers[0].c.Close()
	testutil.WaitFor(t, 5*time.Second, "a slot to free", func() bool { return ts.Stats().Conns == 1 })
	p := dialFloodPeer(t, ts.addr, pki.client, false)
	_ = p.fr.WritePing(false, [8]byte{})
	_ = p.flush()
	select {
	case <-p.pingAcks:
	case <-time.After(10 * time.Second):
		t.Fatal("no connection after a slot freed")
	}
}

func TestIdleStep(t *testing.T) {
	tests := []struct {
		name        string
		prev, now   uint32
		quiet       int
		wantQuiet   int
		wantExpired bool
	}{
		{"activity resets", 5, 6, 3, 0, false},
		{"first quiet tick", 5, 5, 0, 1, false},
		{"still within the timeout", 5, 5, idleTicks - 2, idleTicks - 1, false},
		{"expires on the last quiet tick", 5, 5, idleTicks - 1, idleTicks, true},
		{"counter wrapped is activity", 1<<32 - 1, 0, idleTicks - 1, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, exp := idleStep(tt.prev, tt.now, tt.quiet)
			if q != tt.wantQuiet || exp != tt.wantExpired {
				t.Fatalf("idleStep(%d, %d, %d) = %d, %v; want %d, %v", tt.prev, tt.now, tt.quiet, q, exp, tt.wantQuiet, tt.wantExpired)
			}
		})
	}
}

// TestStreamIdleTimeout: a stream on which no bytes move for its idle timeout is reset (a clean end
// for the peer) and fails locally with ErrStreamIdleTimeout; traffic keeps it open.
func TestStreamIdleTimeout(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	handlerErr := make(chan error, 4)
	h := HandlerFunc(func(ctx context.Context, r *Request) error {
		c, err := r.Accept(nil)
		if err != nil {
			return err
		}
		_, err = io.Copy(c, c)
		handlerErr <- err
		return err
	})

	t.Run("server", func(t *testing.T) {
		ts := startServer(t, pki, h, func(s *Server) { s.StreamIdleTimeout = 200 * time.Millisecond })
		p := newTestPool(t, pki, nil)
		s := dialT(t, p, ts.target(pki))
		if err := readToEnd(s); !errors.Is(err, io.EOF) {
			t.Fatalf("client read %v, want EOF (reset with CANCEL)", err)
		}
		if err := <-handlerErr; !errors.Is(err, ErrStreamIdleTimeout) {
			t.Fatalf("handler got %v, want ErrStreamIdleTimeout", err)
		}
		if st := ts.Stats(); st.StreamIdleTimeouts != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("client", func(t *testing.T) {
		ts := startServer(t, pki, h, nil)
		p := newTestPool(t, pki, nil)
		s := dialT(t, p, ts.target(pki))
		s.SetIdleTimeout(200 * time.Millisecond)
		if err := readToEnd(s); !errors.Is(err, ErrStreamIdleTimeout) {
			t.Fatalf("client read %v, want ErrStreamIdleTimeout", err)
		}
		if err := <-handlerErr; err != nil {
			t.Fatalf("handler got %v, want a clean end", err)
		}
	})
	t.Run("traffic keeps it open", func(t *testing.T) {
		const timeout = 400 * time.Millisecond
		ts := startServer(t, pki, h, func(s *Server) { s.StreamIdleTimeout = timeout })
		p := newTestPool(t, pki, nil)
		s := dialT(t, p, ts.target(pki))
		buf := make([]byte, 1)
		for i := range 3 * timeout / (timeout / 8) { // three timeouts' worth, a byte every eighth
			if _, err := s.Write([]byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(s, buf); err != nil {
				t.Fatalf("stream with traffic closed as idle: %v", err)
			}
			time.Sleep(timeout / 8)
		}
		_ = s.CloseWrite()
		if err := readToEnd(s); !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		if err := <-handlerErr; err != nil {
			t.Fatal(err)
		}
		if st := ts.Stats(); st.StreamIdleTimeouts != 0 {
			t.Fatalf("stats %+v", st)
		}
	})
}

// TestPoolSurvivesServerIdleTimeout: a server that closes idle connections often races the pool's
// reuse of them; the GOAWAY it sends refuses any stream the pool opened meanwhile, and the pool retries
// those on a new connection, so no Dial fails.
func TestPoolSurvivesServerIdleTimeout(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), func(s *Server) { s.IdleTimeout = 20 * time.Millisecond })
	p := newTestPool(t, pki, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 150 {
		s, err := p.Dial(context.Background(), ts.target(pki))
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		if _, err := s.Write([]byte("x")); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		buf := make([]byte, 1)
		if _, err := io.ReadFull(s, buf); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		_ = s.Close()
		time.Sleep(time.Duration(rng.IntN(40)) * time.Millisecond) // around the server's idle timeout
	}
	st := ts.Stats()
	t.Logf("server closed %d idle connections", st.IdleTimeouts)
	if st.IdleTimeouts == 0 {
		t.Fatal("the server never closed an idle connection: the race was not exercised")
	}
}

// TestPoolSurvivesEnhanceYourCalm: a server that answers a stream and then sends GOAWAY
// ENHANCE_YOUR_CALM (as after a flood limit): streams above its last stream id are retried on a new
// connection, streams at or below it go on.
func TestPoolSurvivesEnhanceYourCalm(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	rs := startCalmServer(t, pki.server)
	p := newTestPool(t, pki, nil)
	tg := Target{NextHop: rs.addr, Authority: "10.0.0.1:80", Source: pki.clientID}
	first := dialT(t, p, tg)
	// The server sent GOAWAY(ENHANCE_YOUR_CALM, last 1) after the 200; dials keep working.
	for i := range 5 {
		s, err := p.Dial(context.Background(), tg)
		if err != nil {
			t.Fatalf("dial %d after ENHANCE_YOUR_CALM: %v", i, err)
		}
		_ = s.Close()
	}
	if _, err := first.Write([]byte("still open")); err != nil {
		t.Fatalf("stream below the GOAWAY's last stream id: %v", err)
	}
	if got := rs.conns.Load(); got < 2 {
		t.Fatalf("%d connections, want new ones after the GOAWAY", got)
	}
}

// TestPoolMaxConnsRejected: a server at its connection cap refuses the pool's dial with an error (not a
// hang); the pool dials again once the server has room.
func TestPoolMaxConnsRejected(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), func(s *Server) { s.MaxConns = 1 })
	p1 := newTestPool(t, pki, nil)
	dialT(t, p1, ts.target(pki))
	p2 := newTestPool(t, pki, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c, err := p2.Dial(ctx, ts.target(pki)); err == nil {
		c.Close()
		t.Fatal("dial succeeded beyond MaxConns")
	} else if ctx.Err() != nil {
		t.Fatalf("dial hung: %v", err)
	}
	_ = p1.Close()
	testutil.WaitFor(t, 5*time.Second, "a slot to free", func() bool { return ts.Stats().Conns == 0 })
	dialT(t, p2, ts.target(pki))
}

// calmServer answers every CONNECT with 200 and, after the first stream of each connection, sends
// GOAWAY(ENHANCE_YOUR_CALM) naming that stream as the last one it processes.
type calmServer struct {
	*rawServer
	conns atomic.Int32
}

func startCalmServer(tb testing.TB, creds *Credentials) *calmServer {
	tb.Helper()
	cs := &calmServer{}
	cs.rawServer = startRawServerWith(tb, creds, true, func(p *rawPeer, f *http2.MetaHeadersFrame, first bool) {
		if first {
			cs.conns.Add(1)
		}
		p.hbuf.Reset()
		_ = p.henc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
		_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: p.hbuf.Bytes(), EndHeaders: true})
		if first {
			_ = p.fr.WriteGoAway(f.StreamID, http2.ErrCodeEnhanceYourCalm, []byte("calm down"))
		} else {
			_ = p.fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
		}
	})
	return cs
}
