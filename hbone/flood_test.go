package hbone

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/test/testutil"
)

// floodPeer is a raw HTTP/2 client that writes through a buffer (floods are millions of frames) and
// reads on its own goroutine, recording what the server sends.
type floodPeer struct {
	tb   testing.TB
	c    net.Conn
	bw   *bufio.Writer
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer

	goAway   chan *http2.GoAwayFrame // the first GOAWAY
	pingAcks chan [8]byte
	statuses chan [2]int // stream id, :status
	readDone chan struct{}
	readErr  error
	mu       sync.Mutex
	resets   map[uint32]http2.ErrCode
}

// dialFloodPeer connects to an HBONE server, sends the client preface and SETTINGS (plus settings),
// and, unless noRead, starts reading.
func dialFloodPeer(tb testing.TB, addr netip.AddrPort, creds *Credentials, noRead bool, settings ...http2.Setting) *floodPeer {
	tb.Helper()
	tc, err := rawTLS(tb, addr, clientTLS(creds, "h2"))
	if err != nil {
		tb.Fatalf("tls: %v", err)
	}
	p := &floodPeer{tb: tb, c: tc, bw: bufio.NewWriterSize(tc, 64<<10),
		goAway: make(chan *http2.GoAwayFrame, 1), pingAcks: make(chan [8]byte, 64),
		statuses: make(chan [2]int, 64), readDone: make(chan struct{}), resets: map[uint32]http2.ErrCode{}}
	p.fr = http2.NewFramer(p.bw, tc)
	p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	p.henc = hpack.NewEncoder(&p.hbuf)
	_, _ = p.bw.WriteString(http2.ClientPreface)
	_ = p.fr.WriteSettings(settings...)
	if err := p.flush(); err != nil {
		tb.Fatal(err)
	}
	if noRead {
		close(p.readDone)
	} else {
		go p.read()
	}
	return p
}

func (p *floodPeer) read() {
	defer close(p.readDone)
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			p.readErr = err
			return
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			select {
			case p.goAway <- f:
			default:
			}
		case *http2.PingFrame:
			if f.IsAck() {
				select {
				case p.pingAcks <- f.Data:
				default:
				}
			}
		case *http2.MetaHeadersFrame:
			n, _ := strconv.Atoi(f.PseudoValue("status"))
			select {
			case p.statuses <- [2]int{int(f.StreamID), n}:
			default:
			}
		case *http2.RSTStreamFrame:
			p.mu.Lock()
			p.resets[f.StreamID] = f.ErrCode
			p.mu.Unlock()
		}
	}
}

func (p *floodPeer) flush() error { return p.bw.Flush() }

// block returns the HPACK encoding of a CONNECT request.
func (p *floodPeer) block(authority string) []byte {
	p.hbuf.Reset()
	_ = p.henc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	_ = p.henc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
	return append([]byte(nil), p.hbuf.Bytes()...)
}

func (p *floodPeer) connect(id uint32) error {
	return p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.block("10.0.0.1:80"), EndHeaders: true})
}

// expectGoAwayBeforePing sends a PING and expects a GOAWAY with code before the PING's ACK: frames are
// processed in order, so an ACK means the server let everything sent before it through.
func (p *floodPeer) expectGoAwayBeforePing(code http2.ErrCode) *http2.GoAwayFrame {
	p.tb.Helper()
	_ = p.fr.WritePing(false, [8]byte{'b', 'a', 'r', 'r', 'i', 'e', 'r'})
	_ = p.flush()
	select {
	case g := <-p.goAway:
		if g.ErrCode != code {
			p.tb.Fatalf("GOAWAY %v (%q), want %v", g.ErrCode, g.DebugData(), code)
		}
		return g
	case <-p.pingAcks:
		p.tb.Fatalf("server acknowledged the PING sent after the flood: no limit applied")
	case <-p.readDone:
		select {
		case g := <-p.goAway: // read before the end: select chose at random
			if g.ErrCode != code {
				p.tb.Fatalf("GOAWAY %v (%q), want %v", g.ErrCode, g.DebugData(), code)
			}
			return g
		default:
		}
		p.tb.Fatalf("connection ended without GOAWAY: %v", p.readErr)
	case <-time.After(10 * time.Second):
		p.tb.Fatal("neither GOAWAY nor PING ACK within 10 s")
	}
	return nil
}

// expectEnd waits for the server to close the connection after its GOAWAY.
func (p *floodPeer) expectEnd() {
	p.tb.Helper()
	select {
	case <-p.readDone:
	case <-time.After(10 * time.Second):
		p.tb.Fatal("connection still open 10 s after GOAWAY")
	}
}

// handlerGauge counts the handlers running now and the most that ran at once.
type handlerGauge struct{ live, peak atomic.Int64 }

func (g *handlerGauge) enter() int64 {
	n := g.live.Add(1)
	for {
		p := g.peak.Load()
		if n <= p || g.peak.CompareAndSwap(p, n) {
			return n
		}
	}
}

func (g *handlerGauge) leave() { g.live.Add(-1) }

// stuckHandler is a handler stuck in a slow upstream dial that ignores cancellation until release.
func stuckHandler(g *handlerGauge, release <-chan struct{}) Handler {
	return HandlerFunc(func(ctx context.Context, r *Request) error {
		g.enter()
		defer g.leave()
		<-release
		return errTest
	})
}

// TestServerRapidReset is CVE-2023-44487: 50,000 HEADERS+RST_STREAM pairs on one connection whose
// handlers do not return when cancelled. The reset streams must keep their slots until their handlers
// return, so at most MAX_CONCURRENT_STREAMS handlers run, and the abuse ends with ENHANCE_YOUR_CALM.
func TestServerRapidReset(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	var g handlerGauge
	release := make(chan struct{})
	ts := startServer(t, pki, stuckHandler(&g, release), func(s *Server) { s.KeepaliveInterval = -1 })
	t.Cleanup(func() { close(release) }) // before the server's Close, which waits for the handlers
	p := dialFloodPeer(t, ts.addr, pki.client, false)
	const pairs = 50000
	sent := 0
	for id := uint32(1); sent < pairs; id += 2 {
		if p.connect(id) != nil || p.fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
			break // the server closed the connection
		}
		sent++
		if sent%500 == 0 {
			if p.flush() != nil || isClosed(p.readDone) || g.peak.Load() > DefaultMaxConcurrentStreams {
				break
			}
		}
	}
	_ = p.flush()
	t.Logf("sent %d HEADERS+RST_STREAM pairs; peak handlers %d", sent, g.peak.Load())
	select {
	case ga := <-p.goAway:
		if ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
			t.Errorf("GOAWAY %v, want ENHANCE_YOUR_CALM", ga.ErrCode)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("no GOAWAY after %d pairs", sent)
	}
	if peak := g.peak.Load(); peak > DefaultMaxConcurrentStreams {
		t.Errorf("%d handlers ran at once, limit %d", peak, DefaultMaxConcurrentStreams)
	}
	if st := ts.Stats(); st.Floods.RapidReset != 1 || st.Handlers > DefaultMaxConcurrentStreams {
		t.Errorf("stats %+v, want one rapid-reset flood and at most %d handlers", st, DefaultMaxConcurrentStreams)
	}
}

// TestServerRapidResetQueue checks the second bound: with handlers stuck, streams that reset streams
// made room for wait for a handler slot, and more than maxUnstartedPerSlot per slot earn
// ENHANCE_YOUR_CALM long before the premature-reset ratio applies.
func TestServerRapidResetQueue(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	var g handlerGauge
	release := make(chan struct{})
	const limit = 2
	ts := startServer(t, pki, stuckHandler(&g, release), func(s *Server) {
		s.KeepaliveInterval = -1
		s.Settings.MaxConcurrentStreams = limit
	})
	t.Cleanup(func() { close(release) })
	p := dialFloodPeer(t, ts.addr, pki.client, false)
	for id := uint32(1); id < 2*prematureResetStreams; id += 2 {
		if p.connect(id) != nil || p.fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
			break
		}
	}
	_ = p.flush()
	select {
	case ga := <-p.goAway:
		if ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
			t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", ga.ErrCode)
		}
		// limit handlers, maxUnstartedPerSlot*limit queued, and the one that overflowed.
		if want := uint32(2*(limit+maxUnstartedPerSlot*limit+1) - 1); ga.LastStreamID != want {
			t.Errorf("GOAWAY last stream %d, want %d", ga.LastStreamID, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no GOAWAY")
	}
	if peak := g.peak.Load(); peak > limit {
		t.Errorf("%d handlers ran at once, limit %d", peak, limit)
	}
}

// TestServerResetStreamKeepsHandlerSlot: a stream reset while its handler runs keeps its slot until the
// handler returns; the next stream's handler starts then, and is served normally.
func TestServerResetStreamKeepsHandlerSlot(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	var g handlerGauge
	release := make(chan struct{})
	entered := make(chan uint16, 4)
	h := HandlerFunc(func(ctx context.Context, r *Request) error {
		g.enter()
		defer g.leave()
		entered <- r.AuthorityPort
		if r.AuthorityPort == 1 {
			<-release // stuck, ignoring the reset
			return errTest
		}
		c, err := r.Accept(nil)
		if err != nil {
			return err
		}
		<-ctx.Done()
		return c.Close()
	})
	ts := startServer(t, pki, h, func(s *Server) { s.Settings.MaxConcurrentStreams = 1 })
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	p := dialFloodPeer(t, ts.addr, pki.client, false)
	_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.block("10.0.0.1:1"), EndHeaders: true})
	_ = p.flush()
	<-entered
	_ = p.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: p.block("10.0.0.1:3"), EndHeaders: true})
	_ = p.fr.WritePing(false, [8]byte{1})
	_ = p.flush()
	select {
	case <-p.pingAcks: // HEADERS 3 has been processed (not refused: the peer was within its limit)
	case <-time.After(10 * time.Second):
		t.Fatal("no PING ACK")
	}
	once.Do(func() { close(release) })
	select {
	case st := <-p.statuses:
		if st != [2]int{3, 200} {
			t.Fatalf("response %v, want stream 3 status 200", st)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stream 3 never answered after the stuck handler returned")
	}
	if peak := g.peak.Load(); peak != 1 {
		t.Fatalf("%d handlers ran at once, limit 1: the reset stream's handler lost its slot", peak)
	}
}

// TestServerControlFrameFlood: a client that never reads floods PINGs or SETTINGS. The server must not
// queue their acknowledgements without bound: the connection closes, and the heap grows less than
// 32 MiB over 10^6 frames (measured with runtime.ReadMemStats during the flood).
func TestServerControlFrameFlood(t *testing.T) {
	tests := []struct {
		name   string
		writer bool // a handler keeps the write lock busy writing to the peer that does not read
		frame  func(fr *http2.Framer, i int) error
	}{
		{"PING", false, func(fr *http2.Framer, i int) error { return fr.WritePing(false, [8]byte{byte(i)}) }},
		{"PING with a blocked writer", true, func(fr *http2.Framer, i int) error { return fr.WritePing(false, [8]byte{byte(i)}) }},
		{"SETTINGS", false, func(fr *http2.Framer, i int) error { return fr.WriteSettings() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			pki := newPKI(t)
			h := HandlerFunc(func(ctx context.Context, r *Request) error {
				c, err := r.Accept(nil)
				if err != nil {
					return err
				}
				buf := make([]byte, 1<<20)
				for {
					if _, err := c.Write(buf); err != nil {
						return err
					}
				}
			})
			ts := startServer(t, pki, h, func(s *Server) { s.KeepaliveInterval = -1 })
			p := dialFloodPeer(t, ts.addr, pki.client, true,
				http2.Setting{ID: http2.SettingInitialWindowSize, Val: maxWindow})
			if tt.writer {
				_ = p.fr.WriteWindowUpdate(0, maxWindow-http2DefaultWindow)
				_ = p.connect(1)
				_ = p.flush()
			}
			_ = p.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			base, peak := ms.HeapAlloc, ms.HeapAlloc
			var werr error
			sent := 0
			for ; sent < 1_000_000 && werr == nil; sent++ {
				werr = tt.frame(p.fr, sent)
				if sent%50_000 == 0 {
					runtime.ReadMemStats(&ms)
					peak = max(peak, ms.HeapAlloc)
				}
			}
			if werr == nil {
				werr = p.flush()
			}
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
			if errors.Is(werr, os.ErrDeadlineExceeded) {
				t.Fatalf("the server stopped reading and never closed the connection (%d frames sent)", sent)
			}
			if werr == nil {
				// Everything was sent: the connection must be closed now (EOF or reset once the data
				// the server wrote before is read).
				if err := readToEndWithin(p.c, 20*time.Second); errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("connection still open after %d frames", sent)
				}
			}
			growth := int64(peak) - int64(base)
			t.Logf("%d frames sent before the connection closed (%v); heap growth %.1f MiB", sent, werr, float64(growth)/(1<<20))
			if growth >= 32<<20 {
				t.Errorf("heap grew by %.1f MiB, limit 32 MiB", float64(growth)/(1<<20))
			}
			testutil.WaitFor(t, 5*time.Second, "the flood to be counted", func() bool { return ts.Stats().Floods.ControlQueue == 1 })
		})
	}
}

// readToEndWithin reads c until an error or d.
func readToEndWithin(c net.Conn, d time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 64<<10)
	for {
		if _, err := c.Read(buf); err != nil {
			return err
		}
	}
}

// TestServerHeaderBlockLimits covers CONTINUATION floods (CVE-2024-27316 class): header blocks made of
// many frames, or of many bytes that decode to nothing (HPACK table size updates), are cut off before
// the block ends; a block split into a few CONTINUATIONs still works.
func TestServerHeaderBlockLimits(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), func(s *Server) { s.KeepaliveInterval = -1 })

	t.Run("legitimate split block", func(t *testing.T) {
		p := dialFloodPeer(t, ts.addr, pki.client, false)
		b := p.block("10.0.0.1:80")
		_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:2]})
		_ = p.fr.WriteContinuation(1, false, b[2:4])
		_ = p.fr.WriteContinuation(1, false, nil)
		_ = p.fr.WriteContinuation(1, true, b[4:])
		_ = p.flush()
		select {
		case st := <-p.statuses:
			if st != [2]int{1, 200} {
				t.Fatalf("response %v", st)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no response")
		}
	})
	tests := []struct {
		name  string
		frags func(b []byte) [][]byte // fragments after the HEADERS frame's b[:1]
		code  http2.ErrCode
		count func(FloodStats) uint64
	}{
		{"empty CONTINUATION frames", func(b []byte) [][]byte {
			fr := make([][]byte, 10_000)
			return append(fr, b[1:])
		}, http2.ErrCodeEnhanceYourCalm, func(f FloodStats) uint64 { return f.Continuation }},
		{"table size updates", func(b []byte) [][]byte {
			// 0x20 is "dynamic table size 0": allowed, repeatedly, at the start of a block, decodes to no
			// field, so the Framer's own size check never sees the block grow.
			updates := bytes.Repeat([]byte{0x20}, 16<<10)
			fr := [][]byte{}
			for range 12 {
				fr = append(fr, updates)
			}
			return append(fr, b)
		}, http2.ErrCodeProtocol, func(f FloodStats) uint64 { return f.Continuation }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := ts.Stats().Floods
			p := dialFloodPeer(t, ts.addr, pki.client, false)
			b := p.block("10.0.0.1:80")
			first := b[:1]
			if tt.code == http2.ErrCodeProtocol {
				first = nil
			}
			_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first})
			frags := tt.frags(b)
			for i, f := range frags {
				if p.fr.WriteContinuation(1, i == len(frags)-1, f) != nil {
					break
				}
			}
			p.expectGoAwayBeforePing(tt.code)
			p.expectEnd()
			if got := tt.count(ts.Stats().Floods) - tt.count(before); got != 1 {
				t.Errorf("flood counted %d times, want 1", got)
			}
		})
	}
}

// TestServerFloodLimits covers the cheap per-frame counters (Envoy's flood limits): each flood ends with
// GOAWAY ENHANCE_YOUR_CALM before the PING sent after it is acknowledged.
func TestServerFloodLimits(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), func(s *Server) { s.KeepaliveInterval = -1 })
	tests := []struct {
		name  string
		flood func(p *floodPeer)
		count func(FloodStats) uint64
	}{
		{"empty DATA", func(p *floodPeer) {
			_ = p.connect(1)
			for range maxEmptyDataFrames + 1 {
				_ = p.fr.WriteData(1, false, nil)
			}
		}, func(f FloodStats) uint64 { return f.EmptyFrames }},
		{"padding-only DATA", func(p *floodPeer) {
			_ = p.connect(1)
			for range maxEmptyDataFrames + 1 {
				_ = p.fr.WriteDataPadded(1, false, nil, make([]byte, 10))
			}
		}, func(f FloodStats) uint64 { return f.EmptyFrames }},
		{"WINDOW_UPDATE", func(p *floodPeer) {
			for range 100 {
				_ = p.fr.WriteWindowUpdate(0, 1)
			}
		}, func(f FloodStats) uint64 { return f.WindowUpdate }},
		{"PRIORITY", func(p *floodPeer) {
			for range priorityPerStream + 1 {
				_ = p.fr.WritePriority(3, http2.PriorityParam{StreamDep: 5, Weight: 1})
			}
		}, func(f FloodStats) uint64 { return f.Priority }},
		{"SETTINGS parameters", func(p *floodPeer) {
			s := make([]http2.Setting, maxSettingsPerFrame+1)
			for i := range s {
				s[i] = http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(i)}
			}
			_ = p.fr.WriteSettings(s...)
		}, func(f FloodStats) uint64 { return f.Settings }},
		{"frames on a reset stream", func(p *floodPeer) {
			_ = p.connect(1)
			_ = p.fr.WriteRSTStream(1, http2.ErrCodeCancel)
			for range maxLocalResets + 1 {
				_ = p.connect(1) // HEADERS on a closed stream: RST_STREAM(STREAM_CLOSED)
			}
		}, func(f FloodStats) uint64 { return f.Resets }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.count(ts.Stats().Floods)
			p := dialFloodPeer(t, ts.addr, pki.client, false)
			tt.flood(p)
			p.expectGoAwayBeforePing(http2.ErrCodeEnhanceYourCalm)
			p.expectEnd()
			if got := tt.count(ts.Stats().Floods) - before; got != 1 {
				t.Errorf("flood counted %d times, want 1", got)
			}
		})
	}
}

// TestServerNoFloodForLegitimatePeers: ordinary traffic (many streams, data both ways, window updates,
// keepalive) trips none of the limits.
func TestServerNoFloodForLegitimatePeers(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), func(s *Server) {
		s.KeepaliveInterval = 5 * time.Millisecond
		s.Settings = Settings{StreamWindow: 1 << 16, ConnWindow: 1 << 17}
	})
	p := newTestPool(t, pki, func(o *PoolOptions) {
		o.KeepaliveInterval = 5 * time.Millisecond
		o.Settings = Settings{StreamWindow: 1 << 16, ConnWindow: 1 << 17}
	})
	var g group
	for range 4 {
		g.Go(func() error {
			for range 50 {
				s, err := p.Dial(context.Background(), ts.target(pki))
				if err != nil {
					return err
				}
				msg := bytes.Repeat([]byte("x"), 64<<10)
				go func() { _, _ = s.Write(msg); _ = s.(*Stream).CloseWrite() }()
				got, err := io.ReadAll(s)
				_ = s.Close()
				if err != nil {
					return err
				}
				if len(got) != len(msg) {
					return errors.New("short echo")
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if st := ts.Stats(); st.Floods != (FloodStats{}) || st.ProtocolErrors != 0 {
		t.Fatalf("legitimate traffic counted as abuse: %+v", st)
	}
}
