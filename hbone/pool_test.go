package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/test/testutil"
)

func TestPoolReusesConnection(t *testing.T) {
	testutil.CheckGoroutines(t)
	testutil.CheckFDs(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), nil)
	dials := &dialCounter{}
	p := newTestPool(t, pki, func(o *PoolOptions) { o.DialTCP = dials.dial })
	for range 5 {
		s := dialT(t, p, ts.target(pki))
		_ = s.Close()
	}
	if n := dials.n.Load(); n != 1 {
		t.Fatalf("%d TCP dials for 5 sequential streams, want 1", n)
	}
}

func TestPoolKeys(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), nil)
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/other")
	otherCreds := pki.creds(t, other)
	dials := &dialCounter{}
	p := newTestPool(t, pki, func(o *PoolOptions) {
		o.DialTCP = dials.dial
		o.Credentials = func(_ context.Context, src spiffeid.ID) (*Credentials, error) {
			if src == other {
				return otherCreds, nil
			}
			return pki.client, nil
		}
	})
	base := ts.target(pki)
	withSource := base
	withSource.Source = other
	withExpected := base
	withExpected.Expected = []spiffeid.ID{pki.serverID, other}
	reordered := base
	reordered.Expected = []spiffeid.ID{other, pki.serverID}
	otherAuthority := base
	otherAuthority.Authority = "10.9.9.9:1"
	tests := []struct {
		name      string
		t         Target
		wantDials int32
	}{
		{"first", base, 1},
		{"same key", base, 1},
		{"other authority, same key", otherAuthority, 1},
		{"other source identity", withSource, 2},
		{"other expected identities", withExpected, 3},
		{"same expected identities reordered", reordered, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := dialT(t, p, tt.t)
			if s.PeerID() != pki.serverID {
				t.Fatalf("peer %v", s.PeerID())
			}
			if got := dials.n.Load(); got != tt.wantDials {
				t.Fatalf("dials = %d, want %d", got, tt.wantDials)
			}
		})
	}
}

func TestPoolSourceIP(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	got := make(chan netip.AddrPort, 1)
	h := HandlerFunc(func(ctx context.Context, r *Request) error {
		got <- r.Remote
		c, err := r.Accept(nil)
		if err != nil {
			return err
		}
		return c.Close()
	})
	ts := startServer(t, pki, h, nil)
	p := newTestPool(t, pki, nil)
	tg := ts.target(pki)
	tg.SourceIP = netip.MustParseAddr("127.0.0.2")
	dialT(t, p, tg)
	if r := <-got; r.Addr() != tg.SourceIP {
		t.Fatalf("server saw %v, want source %v", r, tg.SourceIP)
	}
}

func TestPoolStreamLimitOpensConnections(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), nil)
	dials := &dialCounter{}
	p := newTestPool(t, pki, func(o *PoolOptions) {
		o.DialTCP = dials.dial
		o.MaxStreamsPerConn = 3
	})
	var streams []*Stream
	for range 7 {
		streams = append(streams, dialT(t, p, ts.target(pki)))
	}
	if st := p.Stats(); st.Conns != 3 || st.Streams != 7 {
		t.Fatalf("stats %+v, want 3 connections for 7 streams at 3 per connection", st)
	}
	// A freed slot is reused before a new connection is dialed.
	_ = streams[0].Close()
	testutil.WaitFor(t, 5*time.Second, "slot release", func() bool { return p.Stats().Streams == 6 })
	dialT(t, p, ts.target(pki))
	if n := dials.n.Load(); n != 3 {
		t.Fatalf("%d dials, want 3", n)
	}
}

func TestPoolCoalescesDials(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), nil)
	dials := &dialCounter{}
	slow := func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
		time.Sleep(50 * time.Millisecond) // every caller arrives while the first dial is in flight
		return dials.dial(ctx, src, dst)
	}
	p := newTestPool(t, pki, func(o *PoolOptions) {
		o.DialTCP = slow
		o.MaxStreamsPerConn = 10
	})
	const n = 25
	var g group
	var mu sync.Mutex
	var conns []net.Conn
	for range n {
		g.Go(func() error {
			c, err := p.Dial(context.Background(), ts.target(pki))
			if err != nil {
				return err
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// 25 streams at 10 per connection need 3 connections, dialled one at a time per key.
	if got := dials.n.Load(); got != 3 {
		t.Fatalf("%d dials for %d concurrent streams, want 3", got, n)
	}
}

func TestPoolDialFailureIsShared(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	dials := &dialCounter{}
	failing := func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
		dials.n.Add(1)
		time.Sleep(20 * time.Millisecond)
		return nil, errTest
	}
	p := newTestPool(t, pki, func(o *PoolOptions) { o.DialTCP = failing })
	var g group
	for range 10 {
		g.Go(func() error {
			_, err := p.Dial(context.Background(), Target{NextHop: netip.MustParseAddrPort("127.0.0.1:1"),
				Authority: "10.0.0.1:80", Source: pki.clientID})
			if !errors.Is(err, errTest) {
				return err
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
	if n := dials.n.Load(); n < 1 || n > 10 {
		t.Fatalf("%d dials", n)
	}
}

func TestPoolRejectsUnexpectedServer(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), nil)
	p := newTestPool(t, pki, nil)
	tests := []struct {
		name     string
		expected []spiffeid.ID
		ok       bool
	}{
		{"expected", []spiffeid.ID{pki.serverID}, true},
		{"one of several", []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"), pki.serverID}, true},
		{"other identity", []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/impostor")}, false},
		{"none: same trust domain", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tg := ts.target(pki)
			tg.Expected = tt.expected
			c, err := p.Dial(context.Background(), tg)
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				c.Close()
				return
			}
			if !errors.Is(err, ErrPeerIdentity) {
				t.Fatalf("Dial = %v, want ErrPeerIdentity", err)
			}
		})
	}
	t.Run("server in another trust domain", func(t *testing.T) {
		foreign := spiffeid.RequireFromString("spiffe://other.td/ns/demo/sa/server")
		fs := startServer(t, pki, echoHandler(), func(s *Server) {
			fc := pki.creds(t, foreign)
			s.Credentials = func(context.Context, netip.AddrPort) (*Credentials, error) { return fc, nil }
		})
		tg := fs.target(pki)
		tg.Expected = nil
		if _, err := p.Dial(context.Background(), tg); !errors.Is(err, ErrPeerIdentity) {
			t.Fatalf("Dial = %v, want ErrPeerIdentity", err)
		}
	})
}

func TestPoolKeepaliveDetectsDeadPeer(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	rs := startRawServer(t, pki.server, false)
	p := newTestPool(t, pki, func(o *PoolOptions) {
		o.KeepaliveInterval = 30 * time.Millisecond
		o.KeepaliveTimeout = 100 * time.Millisecond
	})
	s := dialT(t, p, Target{NextHop: rs.addr, Authority: "10.0.0.1:80", Source: pki.clientID,
		Expected: []spiffeid.ID{pki.serverID}})
	_, err := io.ReadAll(s)
	if !errors.Is(err, ErrKeepaliveTimeout) {
		t.Fatalf("Read = %v, want ErrKeepaliveTimeout", err)
	}
	testutil.WaitFor(t, 5*time.Second, "connection removal", func() bool { return p.Stats().Conns == 0 })
}

func TestPoolKeepaliveKeepsLivePeer(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	rs := startRawServer(t, pki.server, true)
	p := newTestPool(t, pki, func(o *PoolOptions) {
		o.KeepaliveInterval = 10 * time.Millisecond
		o.KeepaliveTimeout = 200 * time.Millisecond
	})
	dialT(t, p, Target{NextHop: rs.addr, Authority: "10.0.0.1:80", Source: pki.clientID})
	time.Sleep(400 * time.Millisecond) // several keepalive rounds, each acknowledged
	if st := p.Stats(); st.Conns != 1 || st.Streams != 1 {
		t.Fatalf("live peer dropped: %+v", st)
	}
}

func TestPoolIdleClose(t *testing.T) {
	testutil.CheckGoroutines(t)
	testutil.CheckFDs(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), nil)
	p := newTestPool(t, pki, func(o *PoolOptions) { o.IdleTimeout = 50 * time.Millisecond })
	s := dialT(t, p, ts.target(pki))
	time.Sleep(150 * time.Millisecond)
	if st := p.Stats(); st.Conns != 1 {
		t.Fatalf("connection with an open stream closed as idle: %+v", st)
	}
	_ = s.Close()
	testutil.WaitFor(t, 5*time.Second, "idle close", func() bool { return p.Stats().Conns == 0 })
	// The pool dials again afterwards.
	dialT(t, p, ts.target(pki))
}

func TestPoolRetriesAfterGoAway(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	srv1 := &Server{
		Credentials: func(context.Context, netip.AddrPort) (*Credentials, error) { return pki.server, nil },
		Handler:     echoHandler(),
	}
	done1 := make(chan error, 1)
	go func() { done1 <- srv1.Serve(context.Background(), ln) }()
	p := newTestPool(t, pki, nil)
	tg := Target{NextHop: addr, Authority: "10.0.0.1:80", Source: pki.clientID}
	old := dialT(t, p, tg)
	// The first server drains; a second one takes over the address.
	shut := make(chan error, 1)
	go func() { shut <- srv1.Shutdown(context.Background()) }()
	testutil.WaitFor(t, 5*time.Second, "GOAWAY", func() bool { return p.Stats().Pooled == 0 })
	var ln2 net.Listener
	testutil.WaitFor(t, 5*time.Second, "the first listener to close", func() bool {
		ln2, err = net.Listen("tcp", addr.String())
		return err == nil
	})
	srv2 := &Server{
		Credentials: func(context.Context, netip.AddrPort) (*Credentials, error) { return pki.server, nil },
		Handler:     echoHandler(),
	}
	done2 := make(chan error, 1)
	go func() { done2 <- srv2.Serve(context.Background(), ln2) }()
	defer func() { _ = srv2.Close(); <-done2 }()
	s := dialT(t, p, tg)
	if _, err := s.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	_ = old.Close()
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if err := <-done1; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve = %v", err)
	}
	testutil.WaitFor(t, 5*time.Second, "the drained connection to close", func() bool { return p.Stats().Conns == 1 })
}

func TestPoolDialContext(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	hang := make(chan struct{})
	defer close(hang)
	h := HandlerFunc(func(ctx context.Context, r *Request) error {
		select {
		case <-hang:
		case <-ctx.Done():
		}
		return nil
	})
	ts := startServer(t, pki, h, nil)
	p := newTestPool(t, pki, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := p.Dial(ctx, ts.target(pki)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial = %v", err)
	}
	testutil.WaitFor(t, 5*time.Second, "slot release", func() bool { return p.Stats().Streams == 0 })
}

func TestPoolClose(t *testing.T) {
	testutil.CheckGoroutines(t)
	testutil.CheckFDs(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), nil)
	p := newTestPool(t, pki, nil)
	s := dialT(t, p, ts.target(pki))
	_ = p.Close()
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, ErrConnClosed) {
		t.Fatalf("Read after pool Close = %v", err)
	}
	if _, err := p.Dial(context.Background(), ts.target(pki)); !errors.Is(err, ErrPoolClosed) {
		t.Fatalf("Dial after Close = %v", err)
	}
}

func TestPoolValidatesTarget(t *testing.T) {
	pki := newPKI(t)
	p := newTestPool(t, pki, nil)
	tests := []struct {
		name string
		t    Target
	}{
		{"no next hop", Target{Authority: "1.2.3.4:5", Source: pki.clientID}},
		{"no source", Target{NextHop: netip.MustParseAddrPort("127.0.0.1:1"), Authority: "1.2.3.4:5"}},
		{"bad authority", Target{NextHop: netip.MustParseAddrPort("127.0.0.1:1"), Authority: "1.2.3.4", Source: pki.clientID}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := p.Dial(context.Background(), tt.t); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if _, err := NewPool(PoolOptions{}); err == nil {
		t.Fatal("NewPool without Credentials accepted")
	}
}

func TestIdleVerdict(t *testing.T) {
	const grace, timeout = 20 * time.Second, 5 * time.Minute
	tests := []struct {
		name       string
		idleFor    time.Duration
		grace      time.Duration
		idleInKey  int
		wantClose  bool
		wantNextAt time.Duration // idleFor + next, when not closing
	}{
		{"just idle: wait for the grace", 0, grace, 5, false, grace},
		{"early stale timer: rest of the grace", 5 * time.Second, grace, 5, false, grace},
		{"past the grace, too many idle", grace, grace, 3, true, 0},
		{"past the grace, within the limit: look again after a grace", grace, grace, 2, false, 2 * grace},
		{"alone", time.Minute, grace, 1, false, time.Minute + grace},
		{"kept near the timeout: the timeout", timeout - 5*time.Second, grace, 1, false, timeout},
		{"past the timeout", timeout, grace, 1, true, 0},
		{"no grace: timeout only", grace, -1, 50, false, timeout},
		{"grace beyond the timeout: timeout only", grace, 2 * timeout, 50, false, timeout},
		{"no grace, past the timeout", timeout + time.Second, -1, 50, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			closeIt, next := idleVerdict(tt.idleFor, tt.grace, timeout, tt.idleInKey, 2)
			if closeIt != tt.wantClose {
				t.Fatalf("close = %v, want %v", closeIt, tt.wantClose)
			}
			if !closeIt && tt.idleFor+next != tt.wantNextAt {
				t.Fatalf("next look at %v idle, want %v", tt.idleFor+next, tt.wantNextAt)
			}
		})
	}
}

// TestPoolTrimsIdleConns: N connections to one destination left without streams shrink to
// MaxIdleConnsPerKey after the grace; the others go away with GOAWAY, and streams opened meanwhile work.
func TestPoolTrimsIdleConns(t *testing.T) {
	testutil.CheckGoroutines(t)
	testutil.CheckFDs(t)
	base := LiveConns()
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), nil)
	const n, keep = 6, 2
	dials := &dialCounter{}
	p := newTestPool(t, pki, func(o *PoolOptions) {
		o.MaxStreamsPerConn = 1 // one connection per concurrent stream
		o.IdleGrace = 300 * time.Millisecond
		o.MaxIdleConnsPerKey = keep
		o.DialTCP = dials.dial
	})
	tg := ts.target(pki)
	open := make([]*Stream, n)
	for i := range open {
		open[i] = dialT(t, p, tg)
	}
	if st := p.Stats(); st.Conns != n {
		t.Fatalf("%d connections for %d concurrent streams, want %d", st.Conns, n, n)
	}
	testutil.WaitFor(t, 5*time.Second, "server connections", func() bool { return len(serverConns(ts.Server)) == n })
	srvConns := serverConns(ts.Server)
	for _, s := range open {
		if err := echoRoundTrip(s, 64<<10); err != nil {
			t.Fatal(err)
		}
		_ = s.Close()
	}
	// Streams opened while the pool trims: each takes a connection (reserving it stops its trim) or
	// dials; none is lost.
	g := &group{}
	for range 2 * n {
		g.Go(func() error {
			time.Sleep(250 * time.Millisecond)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := p.Dial(ctx, tg)
			if err != nil {
				return err
			}
			defer func() { _ = c.Close() }()
			return echoRoundTrip(c.(*Stream), 1<<10)
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("stream during trimming: %v", err)
	}
	var last PoolStats
	defer func() {
		t.Logf("last stats %+v", last)
		p.mu.Lock()
		for _, pc := range p.conns[makeKey(tg)] {
			pc.c.mu.Lock()
			t.Logf("conn reserved=%d pooled=%v streams=%d idleFor=%v timer=%v sent=%v recv=%v", pc.reserved, pc.pooled, len(pc.c.streams), time.Since(pc.idleSince), pc.idleTimer != nil, pc.c.goAwaySent, pc.c.goAwayRecv)
			pc.c.mu.Unlock()
		}
		p.mu.Unlock()
	}()
	testutil.WaitFor(t, 10*time.Second, "idle connections trimmed", func() bool {
		st := p.Stats()
		last = st
		return st.Conns == keep && st.Pooled == keep && st.Streams == 0
	})
	// LiveConns, which the memory releaser weighs, sees both sides of the trimmed connections go.
	testutil.WaitFor(t, 10*time.Second, "LiveConns to count the kept connections only", func() bool {
		return LiveConns() == base+2*keep
	})
	// The trimmed connections ended with our GOAWAY(NO_ERROR), cleanly: the server's side read it.
	gone := 0
	for _, c := range srvConns {
		c.mu.Lock()
		closed, goAway, err := c.closed, c.goAwayRecv, c.closeErr
		c.mu.Unlock()
		if !closed {
			continue
		}
		gone++
		if !goAway || err != nil {
			t.Errorf("trimmed connection closed without GOAWAY (GOAWAY received %v, close error %v)", goAway, err)
		}
	}
	if gone == 0 {
		t.Fatal("no connection of the first set was trimmed")
	}
	// The survivors serve without a new dial.
	before := dials.n.Load()
	for range keep {
		s := dialT(t, p, tg)
		if err := echoRoundTrip(s, 1<<10); err != nil {
			t.Fatal(err)
		}
	}
	if d := dials.n.Load() - before; d != 0 {
		t.Fatalf("%d dials for %d streams over %d kept connections", d, keep, keep)
	}
}

// TestStreamEndAfterCloseReleasesOnce: END_STREAM that the read loop processes for a stream that Close
// removed meanwhile (readLoop looked it up before) does not report the stream's departure a second time:
// the pool slot was freed twice (reserved -1), and the connection then counted as busy forever, never
// trimmed (TestPoolTrimsIdleConns failed about 1 in 24 runs under load).
func TestStreamEndAfterCloseReleasesOnce(t *testing.T) {
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), nil)
	p := newTestPool(t, pki, nil)
	s := dialT(t, p, ts.target(pki))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s.c.remoteEnd(s) // what readLoop does with the peer's END_STREAM for s, looked up before Close
	p.mu.Lock()
	defer p.mu.Unlock()
	for pc := range p.all {
		if pc.reserved != 0 {
			t.Fatalf("connection has %d reserved slots after its only stream ended, want 0", pc.reserved)
		}
	}
}
