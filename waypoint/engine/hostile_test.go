package engine

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/waypoint/model"
)

// Hostile HTTP/2 (h2c) clients against the engine's downstream server: every bound the server must
// keep against a peer that floods, never reads or never finishes, driven with x/net's Framer.

// h2peer is a hand-driven h2c client.
type h2peer struct {
	tb   testing.TB
	c    net.Conn
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer
	// Server settings seen in the handshake.
	maxStreams uint32
	window     uint32 // the server's SETTINGS_INITIAL_WINDOW_SIZE
	frames     chan http2.Frame
	readErr    chan error
}

// dialH2 connects to the harness with prior knowledge and sends the preface and an empty SETTINGS.
// With handshake, it also reads the server's SETTINGS, acknowledges them and waits for the ack of its own.
func dialH2(tb testing.TB, h *harness, handshake bool) *h2peer {
	tb.Helper()
	// A small receive buffer, set before connect so the window is small from the SYN: a peer that does
	// not read must make the server's writes block soon, as a real non-reading client would.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 8<<10)
		}); err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", h.addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	p := &h2peer{tb: tb, c: c, fr: http2.NewFramer(c, c), window: 65535}
	p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	p.fr.MaxHeaderListSize = 1 << 20
	p.henc = hpack.NewEncoder(&p.hbuf)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		tb.Fatal(err)
	}
	if err := p.fr.WriteSettings(); err != nil {
		tb.Fatal(err)
	}
	if !handshake {
		return p
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for gotSettings, gotAck := false, false; !gotSettings || !gotAck; {
		f, err := p.fr.ReadFrame()
		if err != nil {
			tb.Fatalf("handshake: %v", err)
		}
		if s, ok := f.(*http2.SettingsFrame); ok {
			if s.IsAck() {
				gotAck = true
				continue
			}
			gotSettings = true
			if v, ok := s.Value(http2.SettingMaxConcurrentStreams); ok {
				p.maxStreams = v
			}
			if v, ok := s.Value(http2.SettingInitialWindowSize); ok {
				p.window = v
			}
			if err := p.fr.WriteSettingsAck(); err != nil {
				tb.Fatal(err)
			}
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	return p
}

// startReading reads frames in the background into p.frames until the connection fails.
func (p *h2peer) startReading() {
	p.frames = make(chan http2.Frame, 1<<16)
	p.readErr = make(chan error, 1)
	fr := http2.NewFramer(nil, p.c) // frames are handed over: the reader must not reuse their buffers
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = 1 << 20
	fr.SetReuseFrames()
	go func() {
		for {
			f, err := readCopy(fr)
			if err != nil {
				p.readErr <- err
				close(p.frames)
				return
			}
			select {
			case p.frames <- f:
			default: // a test that floods does not look at every frame
			}
		}
	}()
}

// readCopy reads one frame and returns the parts the tests look at, detached from the framer's buffers.
func readCopy(fr *http2.Framer) (http2.Frame, error) {
	f, err := fr.ReadFrame()
	if err != nil {
		return nil, err
	}
	switch f := f.(type) {
	case *http2.GoAwayFrame:
		g := *f
		return &g, nil
	case *http2.RSTStreamFrame:
		r := *f
		return &r, nil
	case *http2.MetaHeadersFrame:
		// Its fields are freshly decoded, but its HEADERS frame is the framer's and reused by the next read.
		m, h := *f, *f.HeadersFrame
		m.HeadersFrame = &h
		return &m, nil
	case *http2.WindowUpdateFrame:
		w := *f
		return &w, nil
	}
	return &http2.PingFrame{}, nil // anything else: a placeholder
}

// next returns the next frame matching keep, failing after 20 s or when the connection ends.
func (p *h2peer) next(what string, keep func(http2.Frame) bool) http2.Frame {
	p.tb.Helper()
	t := time.NewTimer(20 * time.Second)
	defer t.Stop()
	for {
		select {
		case f, ok := <-p.frames:
			if !ok {
				p.tb.Fatalf("waiting for %s: connection ended: %v", what, <-p.readErr)
			}
			if keep(f) {
				return f
			}
		case <-t.C:
			p.tb.Fatalf("no %s within 20 s", what)
		}
	}
}

// ended waits (20 s at most) until the connection is closed by the server, returning the GOAWAY
// code if one came first (or -1).
func (p *h2peer) ended() (code int) {
	p.tb.Helper()
	code = -1
	t := time.NewTimer(20 * time.Second)
	defer t.Stop()
	for {
		select {
		case f, ok := <-p.frames:
			if !ok {
				return code
			}
			if g, isGoAway := f.(*http2.GoAwayFrame); isGoAway && code < 0 {
				code = int(g.ErrCode)
			}
		case <-t.C:
			p.tb.Fatal("the server kept the connection open for 20 s")
		}
	}
}

func (p *h2peer) headers(id uint32, endStream bool, path string, extra ...string) {
	p.tb.Helper()
	if err := p.writeHeaders(id, endStream, path, extra...); err != nil {
		p.tb.Fatal(err)
	}
}

func (p *h2peer) writeHeaders(id uint32, endStream bool, path string, extra ...string) error {
	p.hbuf.Reset()
	kv := append([]string{":method", "POST", ":scheme", "http", ":authority", "web.app.svc.cluster.local", ":path", path}, extra...)
	for i := 0; i < len(kv); i += 2 {
		_ = p.henc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.hbuf.Bytes(),
		EndHeaders: true, EndStream: endStream})
}

func status(f http2.Frame) int {
	n, _ := strconv.Atoi(f.(*http2.MetaHeadersFrame).PseudoValue("status"))
	return n
}

func isStream(id uint32) func(http2.Frame) bool {
	return func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			return f.StreamID == id
		case *http2.RSTStreamFrame:
			return f.StreamID == id
		case *http2.GoAwayFrame:
			return true
		}
		return false
	}
}

// slowHarness is a harness whose /slow requests wait an hour (a fault delay) before anything else:
// their handlers run, hold their streams and read no request body.
func slowHarness(t *testing.T, mutate ...func(*Options)) *harness {
	t.Helper()
	h := newHarness(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		io.WriteString(w, strconv.FormatInt(n, 10))
	}), mutate...)
	be := []model.Backend{{Host: h.svc.Hostname, Port: 80, Weight: 1}}
	h.eng.Update(&model.Config{Routes: []*model.Route{{Kind: model.KindHTTPRoute, Namespace: "app", Name: "r",
		Parents: []model.Parent{{Kind: model.KindService, Hostname: h.svc.Hostname}},
		Rules: []*model.Rule{
			{Name: "slow", Matches: []model.Match{{PathKind: model.PathPrefix, Path: "/slow"}},
				Fault: &model.Fault{DelayPercent: 100, Delay: time.Hour}, Backends: be},
			{Name: "rest", Backends: be},
		}}}})
	return h
}

// heapWatch samples the heap in use above the baseline taken when it is created.
type heapWatch struct{ base, peak uint64 }

func newHeapWatch() *heapWatch {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return &heapWatch{base: ms.HeapInuse}
}

func (w *heapWatch) sample() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if ms.HeapInuse > w.base && ms.HeapInuse-w.base > w.peak {
		w.peak = ms.HeapInuse - w.base
	}
}

// TestH2CRapidReset: a client opening streams and resetting them at once (CVE-2023-44487) cannot
// make the server run more handlers than its stream limit: the goroutines stay bounded, and the
// connection either ends with GOAWAY ENHANCE_YOUR_CALM or goes on serving.
func TestH2CRapidReset(t *testing.T) {
	tu.CheckGoroutines(t)
	h := slowHarness(t)
	p := dialH2(t, h, true)
	p.startReading()
	base := runtime.NumGoroutine()
	peak := 0
	var id uint32 = 1
	var werr error
	for i := 0; i < 20000 && werr == nil; i++ {
		if werr = p.writeHeaders(id, true, "/slow"); werr == nil {
			werr = p.fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}
		id += 2
		if i%200 == 0 {
			peak = max(peak, runtime.NumGoroutine()-base)
		}
	}
	// Each running handler is a few goroutines at most; the stream limit is 1000.
	if peak > 4*1000+100 {
		t.Errorf("rapid reset ran %d goroutines above the baseline", peak)
	}
	if werr != nil {
		if code := p.ended(); http2.ErrCode(code) != http2.ErrCodeEnhanceYourCalm {
			t.Errorf("rapid reset: connection ended with GOAWAY %d, want ENHANCE_YOUR_CALM", code)
		}
		return
	}
	p.headers(id, true, "/after")
	switch f := p.next("the answer after the resets", isStream(id)).(type) {
	case *http2.GoAwayFrame:
		if f.ErrCode != http2.ErrCodeEnhanceYourCalm {
			t.Errorf("rapid reset: GOAWAY %v, want ENHANCE_YOUR_CALM", f.ErrCode)
		}
	case *http2.MetaHeadersFrame:
		if st := status(f); st != http.StatusOK {
			t.Errorf("request after the resets: %d", st)
		}
	default:
		t.Errorf("request after the resets: %T", f)
	}
}

// TestH2CControlFloodNotReading: a client that sends PINGs and never reads the acks gets its
// connection closed once the server's queue of control frames is full; SETTINGS, whose acks may be
// coalesced, either close it too or are absorbed. Either way the heap stays bounded.
func TestH2CControlFloodNotReading(t *testing.T) {
	tu.CheckGoroutines(t)
	h := slowHarness(t)
	for _, kind := range []string{"SETTINGS", "PING"} {
		t.Run(kind, func(t *testing.T) {
			p := dialH2(t, h, false)
			hw := newHeapWatch()
			var err error
			data := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
			_ = p.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			// Well past what the kernel's buffers absorb (the acks of 1,000,000 SETTINGS are 9 MB against a
			// 4 MiB send buffer), so that a server that closes only after a grace period of reading, or
			// whose acks all fit, is still caught.
			const flood = 4_000_000
			for i := 0; err == nil && i < flood; i++ {
				if kind == "PING" {
					err = p.fr.WritePing(false, data)
				} else {
					err = p.fr.WriteSettings()
				}
				if i%10000 == 0 {
					hw.sample()
				}
			}
			hw.sample()
			if hw.peak > 64<<20 {
				t.Errorf("%s flood: heap grew by %d MiB", kind, hw.peak>>20)
			}
			// Either the server closes the connection (net/http: more than 10,000 control frames queued) or
			// it stops reading while its writes are blocked (backpressure: the write deadline passes); both
			// bound what it holds. Reading all of them while queueing every answer is the hole.
			if err == nil {
				t.Errorf("%s flood: the server read %d frames from a peer that never reads its answers", kind, flood)
			}
		})
	}
}

// TestH2CContinuationFlood: a header block that never ends (CONTINUATION after CONTINUATION,
// CVE-2023-45288) ends the connection before the server has read much more than its header limit.
func TestH2CContinuationFlood(t *testing.T) {
	tu.CheckGoroutines(t)
	h := slowHarness(t)
	p := dialH2(t, h, true)
	p.startReading()
	hw := newHeapWatch()
	p.hbuf.Reset()
	for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "web.app.svc.cluster.local"}, {":path", "/"}} {
		_ = p.henc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.hbuf.Bytes()}); err != nil {
		t.Fatal(err)
	}
	// Each CONTINUATION carries one literal header field of about 16 KiB (never indexed).
	p.hbuf.Reset()
	_ = p.henc.WriteField(hpack.HeaderField{Name: "x-flood", Value: strings.Repeat("a", 16<<10-32), Sensitive: true})
	frag := bytes.Clone(p.hbuf.Bytes())
	_ = p.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	sent := 0
	var err error
	for ; err == nil && sent < 64<<20; sent += len(frag) {
		err = p.fr.WriteContinuation(1, false, frag)
		if sent%(1<<20) < len(frag) {
			hw.sample()
		}
	}
	if err == nil {
		t.Fatalf("the server read %d MiB of one header block", sent>>20)
	}
	p.ended()
	if hw.peak > 64<<20 {
		t.Errorf("continuation flood: heap grew by %d MiB", hw.peak>>20)
	}
}

// TestH2CHeaderListLimit: a complete header block over MaxHeaderBytes never reaches the engine: the
// stream gets 431 (and the connection goes on serving) or the connection ends with an error.
func TestH2CHeaderListLimit(t *testing.T) {
	tu.CheckGoroutines(t)
	h := slowHarness(t)
	p := dialH2(t, h, true)
	p.startReading()
	p.hbuf.Reset()
	kv := [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "web.app.svc.cluster.local"}, {":path", "/big"}}
	for i := range 6 {
		kv = append(kv, [2]string{"x-big-" + strconv.Itoa(i), strings.Repeat("b", 15<<10)})
	}
	for _, f := range kv {
		_ = p.henc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1], Sensitive: true})
	}
	block := p.hbuf.Bytes()
	const chunk = 16 << 10
	if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:chunk], EndStream: true}); err != nil {
		t.Fatal(err)
	}
	for off := chunk; off < len(block); off += chunk {
		end := min(off+chunk, len(block))
		if err := p.fr.WriteContinuation(1, end == len(block), block[off:end]); err != nil {
			t.Fatal(err)
		}
	}
	switch f := p.next("the answer to an oversized header list", isStream(1)).(type) {
	case *http2.MetaHeadersFrame:
		if s := status(f); s != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("oversized header list: status %d, want 431", s)
		}
	case *http2.GoAwayFrame:
		if f.ErrCode == http2.ErrCodeNo {
			t.Errorf("oversized header list: GOAWAY NO_ERROR, want 431 or an error")
		}
		p.ended()
		return // the connection ended: nothing else to ask
	}
	p.headers(3, true, "/small")
	if f := p.next("the next response", isStream(3)); status(f) != http.StatusOK {
		t.Errorf("request after the oversized one: %d", status(f))
	}
}

// TestH2CMaxConcurrentStreams: the server advertises a stream limit and refuses a stream over it
// (REFUSED_STREAM, or PROTOCOL_ERROR once the client acknowledged the limit) without ending the connection; a stream that ends frees its slot.
func TestH2CMaxConcurrentStreams(t *testing.T) {
	tu.CheckGoroutines(t)
	h := slowHarness(t)
	p := dialH2(t, h, true)
	p.startReading()
	if p.maxStreams == 0 || p.maxStreams > 1000 {
		t.Fatalf("SETTINGS_MAX_CONCURRENT_STREAMS %d, want 1..1000", p.maxStreams)
	}
	var id uint32 = 1
	for range p.maxStreams {
		p.headers(id, true, "/slow")
		id += 2
	}
	over := id
	p.headers(over, true, "/slow")
	f := p.next("the refusal of the stream over the limit", isStream(over))
	rst, ok := f.(*http2.RSTStreamFrame)
	if !ok || rst.ErrCode != http2.ErrCodeRefusedStream && rst.ErrCode != http2.ErrCodeProtocol {
		t.Fatalf("stream over the limit: %T %+v, want RST_STREAM REFUSED_STREAM or PROTOCOL_ERROR", f, f)
	}
	// Free one slot; a new stream is served.
	if err := p.fr.WriteRSTStream(1, http2.ErrCodeCancel); err != nil {
		t.Fatal(err)
	}
	next := over + 2
	// The handler of stream 1 may still be ending: retry a refused stream a few times.
	for range 50 {
		p.headers(next, true, "/fast")
		f := p.next("the answer to a stream after a slot freed", isStream(next))
		if _, refused := f.(*http2.RSTStreamFrame); !refused {
			if st := status(f); st != http.StatusOK {
				t.Fatalf("stream after a slot freed: %d", st)
			}
			return
		}
		next += 2
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no stream served after a slot was freed")
}

// TestH2CUploadLimit: a client sending more request body than the stream's window (the waypoint
// reads nothing yet) gets the stream reset with FLOW_CONTROL_ERROR; more than the connection's window
// over several streams ends the connection.
func TestH2CUploadLimit(t *testing.T) {
	tu.CheckGoroutines(t)
	h := slowHarness(t)
	t.Run("stream", func(t *testing.T) {
		p := dialH2(t, h, true)
		p.startReading()
		if p.window > h2StreamUploadLimit {
			t.Fatalf("SETTINGS_INITIAL_WINDOW_SIZE %d over the stream upload limit %d", p.window, h2StreamUploadLimit)
		}
		p.headers(1, false, "/slow")
		chunk := make([]byte, 16<<10)
		for sent := uint32(0); sent <= p.window; sent += uint32(len(chunk)) {
			if err := p.fr.WriteData(1, false, chunk); err != nil {
				t.Fatal(err)
			}
		}
		f := p.next("the reset of an over-window stream", isStream(1))
		if rst, ok := f.(*http2.RSTStreamFrame); ok {
			if rst.ErrCode != http2.ErrCodeFlowControl {
				t.Errorf("over-window stream: RST_STREAM %v, want FLOW_CONTROL_ERROR", rst.ErrCode)
			}
		} else if g, ok := f.(*http2.GoAwayFrame); !ok || g.ErrCode != http2.ErrCodeFlowControl {
			t.Errorf("over-window stream: %T %+v, want FLOW_CONTROL_ERROR", f, f)
		}
	})
	t.Run("connection", func(t *testing.T) {
		p := dialH2(t, h, true)
		p.startReading()
		chunk := make([]byte, 16<<10)
		var id uint32 = 1
		var err error
		// Fill streams to their windows, over more streams than the connection window holds.
		for total := 0; err == nil && total <= 2*h2ConnUploadLimit; id += 2 {
			if err = p.writeHeaders(id, false, "/slow"); err != nil {
				break
			}
			for sent := uint32(0); err == nil && sent+uint32(len(chunk)) <= p.window; sent += uint32(len(chunk)) {
				err = p.fr.WriteData(id, false, chunk)
				total += len(chunk)
			}
		}
		// The first stream refused for flow control is the one past the connection's window
		// (the stream or the connection reset with FLOW_CONTROL_ERROR).
		f := p.next("a FLOW_CONTROL_ERROR", func(f http2.Frame) bool {
			switch f := f.(type) {
			case *http2.RSTStreamFrame:
				return true
			case *http2.GoAwayFrame:
				return f.ErrCode == http2.ErrCodeFlowControl
			}
			return false
		})
		if rst, ok := f.(*http2.RSTStreamFrame); ok {
			if rst.ErrCode != http2.ErrCodeFlowControl {
				t.Fatalf("over the connection window: RST_STREAM %v, want FLOW_CONTROL_ERROR", rst.ErrCode)
			}
			if fit := uint32(h2ConnUploadLimit) / p.window; rst.StreamID > 2*fit+1 {
				t.Errorf("over the connection window: first reset on stream %d, after %d MiB", rst.StreamID, (rst.StreamID/2)*p.window>>20)
			}
		}
	})
}

// TestH2CStreamIdleRaw: a stream whose client sends its headers and then nothing is answered 408
// after the stream idle timeout; the connection stays.
func TestH2CStreamIdleRaw(t *testing.T) {
	tu.CheckGoroutines(t)
	h := slowHarness(t, func(o *Options) { o.StreamIdleTimeout = 100 * time.Millisecond })
	p := dialH2(t, h, true)
	p.startReading()
	p.headers(1, false, "/quiet")
	if f := p.next("the answer to an idle stream", isStream(1)); status(f) != http.StatusRequestTimeout {
		t.Errorf("idle stream: %d, want 408", status(f))
	}
	p.headers(3, true, "/after")
	if f := p.next("the next response", isStream(3)); status(f) != http.StatusOK {
		t.Errorf("request after the idle one: %d", status(f))
	}
}
