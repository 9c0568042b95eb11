package engine

// h2server.go: the engine's downstream HTTP/2 server (h2c with prior knowledge; gRPC), built on
// x/net/http2's Framer and hpack instead of net/http's HTTP/2 server. It hands each request to
// Engine.ServeHTTP as an *http.Request and an http.ResponseWriter, so every step of the pipeline is the
// one HTTP/1.1 requests take.
//
// Invariants:
//   - Only serve's goroutine (the read loop) reads the connection. It never waits for a handler: DATA
//     is buffered up to the stream's receive window (h2StreamUploadLimit; FLOW_CONTROL_ERROR beyond)
//     and the connection's (h2ConnUploadLimit; the connection ends beyond), and credit goes back as
//     the handler reads the body. Frames it answers itself (SETTINGS and PING acks, resets) are written
//     under wmu like any other: a peer that does not read stalls the read loop (backpressure), so
//     nothing queues without bound.
//   - wmu guards the write side (pending frames, Framer writes, the hpack encoder); c.mu the stream
//     map, counters and send windows; a stream's mu its receive side. wmu may be taken before c.mu or
//     a stream's mu, never after; none is held across a wait or a socket write. Frames are appended to
//     a pending buffer; the goroutine that finds no write in progress writes it (and what others
//     append meanwhile) outside wmu, so frames of concurrent streams share socket writes. At most
//     h2MaxPendingWrite bytes wait: beyond, writers (the read loop's acks included) wait for the socket.
//   - One goroutine per stream, running the handler; the stream holds its MAX_CONCURRENT_STREAMS slot
//     until the peer's side ended or was reset, and its place among the running handlers
//     (h2MaxHandlers) until its handler returned, even after a RST_STREAM (CVE-2023-44487). A peer
//     over the stream limit gets REFUSED_STREAM; one making the server run more than h2MaxHandlers
//     handlers, or resetting most of its streams before their responses (h2PrematureResets, as
//     Envoy), gets GOAWAY ENHANCE_YOUR_CALM.
//   - Header lists are bounded by MaxHeaderBytes: past it the Framer stops decoding (431 to the
//     stream), and a header block far above it (CONTINUATION flood) ends the connection.
//   - A small response (up to h2PendingMax bytes before the handler returns or flushes) goes out as
//     HEADERS and one DATA with END_STREAM in one write.
//   - A connection without streams for Engine.h2IdleTimeout is closed with GOAWAY NO_ERROR.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const (
	h2MaxStreams      = 1000             // SETTINGS_MAX_CONCURRENT_STREAMS
	h2MaxHandlers     = 2 * h2MaxStreams // handlers running, reset streams' included
	h2PrematureResets = 500              // with at least half of the streams reset before their response
	h2SrvMaxFrame     = 64 << 10         // SETTINGS_MAX_FRAME_SIZE (what the peer may send)
	h2PendingMax      = 16 << 10         // response bytes held before the first flush
	h2DefaultIdleConn = time.Hour        // a connection without streams this long is closed
	h2PrefaceTimeout  = 30 * time.Second // for the first bytes of a connection
	h2LingerTimeout   = time.Second      // reading after a GOAWAY for a connection error
	h2LingerBytes     = 1 << 20
	h2MaxPendingWrite = 64 << 10 // frames waiting for the socket before writers wait
)

var errH2StreamReset = errors.New("h2: stream reset by the client")

// h2ConnError ends the connection with a GOAWAY of code.
type h2ConnError struct {
	code   http2.ErrCode
	reason string
}

func (e *h2ConnError) Error() string { return "h2 downstream: " + e.code.String() + ": " + e.reason }

// h2Server serves one downstream HTTP/2 connection.
type h2Server struct {
	e      *Engine
	sc     *streamConn
	info   *ConnInfo
	ctx    context.Context // carries info (connKey); cancelled when the connection ends
	cancel context.CancelFunc
	remote string

	// write side, guarded by wmu
	wmu     sync.Mutex
	wcond   *sync.Cond    // signalled when pending bytes were written, a write failed or writing ended
	wbuf    []byte        // frames not written yet
	wspare  []byte        // the other buffer (wbuf and wspare swap around each socket write)
	writing bool          // a goroutine is writing to the socket
	fr      *http2.Framer // writes under wmu; reads by serve only
	henc    *hpack.Encoder
	hbuf    bytes.Buffer
	werr    error

	mu           sync.Mutex
	streams      map[uint32]*h2SrvStream // guarded by mu; streams whose handler runs
	live         int                     // guarded by mu; streams the peer may still use (slots)
	sendWin      int64                   // guarded by mu
	peerInitWin  int64                   // guarded by mu
	peerMaxFrame uint32                  // guarded by mu
	windowCh     chan struct{}           // guarded by mu; closed when a send window grows
	consumed     int64                   // guarded by mu; connection credit not yet returned
	closed       bool                    // guarded by mu
	goingAway    bool                    // guarded by mu; the client sent GOAWAY
	idleSince    time.Time               // guarded by mu; when the last stream ended
	inflow       int64                   // guarded by mu; what the peer may still send on the connection
	idleTimer    *time.Timer

	// read loop only
	maxID       uint32 // highest stream id the peer opened
	opened      int
	earlyResets int

	wg sync.WaitGroup // handlers
}

// serveH2 serves an HTTP/2 connection whose client preface was read.
func (e *Engine) serveH2(ctx context.Context, sc *streamConn, info *ConnInfo) error {
	c := &h2Server{e: e, sc: sc, info: info, streams: map[uint32]*h2SrvStream{}, sendWin: 65535, peerInitWin: 65535,
		peerMaxFrame: 16384, windowCh: make(chan struct{}), inflow: h2ConnUploadLimit, idleSince: time.Now()}
	if info != nil && info.Remote.IsValid() {
		c.remote = info.Remote.String()
	}
	c.ctx, c.cancel = context.WithCancel(context.WithValue(ctx, connKey{}, info))
	defer c.cancel()
	c.wcond = sync.NewCond(&c.wmu)
	c.fr = http2.NewFramer(h2FrameSink{c}, sc)
	c.fr.SetMaxReadFrameSize(h2SrvMaxFrame)
	c.fr.MaxHeaderListSize = MaxHeaderBytes
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	// No dynamic table: per-response values would churn it; names still come from the static table.
	c.henc.SetMaxDynamicTableSizeLimit(0)

	// Close the connection when the caller's context ends or the engine closes.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
		case <-e.ln.closed:
		case <-stop:
			return
		}
		c.closeConn()
	}()
	c.mu.Lock()
	c.idleTimer = time.AfterFunc(e.h2IdleTimeout(), c.checkIdle)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.idleTimer.Stop()
		c.mu.Unlock()
	}()

	err := c.writeFrames(func(fr *http2.Framer) error {
		err := fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: h2MaxStreams},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2StreamUploadLimit},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: h2SrvMaxFrame},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: MaxHeaderBytes})
		if err == nil {
			err = fr.WriteWindowUpdate(0, h2ConnUploadLimit-65535)
		}
		return err
	})
	if err == nil {
		err = c.readFrames()
	}
	var ce *h2ConnError
	if errors.As(err, &ce) {
		c.e.log.Debug("h2 downstream connection error", "err", err)
		c.goAway(ce.code)
		c.linger()
	}
	c.closeConn()
	c.wg.Wait()
	return nil
}

// linger half-closes the connection after a GOAWAY and reads (discarding) what the peer still sends
// for at most h2LingerTimeout and h2LingerBytes, so that closing does not reset the connection before the peer read the
// GOAWAY.
func (c *h2Server) linger() {
	c.cancel()
	_ = c.sc.CloseWrite()
	t := time.AfterFunc(h2LingerTimeout, func() { c.sc.Conn.Close() })
	defer t.Stop()
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	for n := 0; n < h2LingerBytes; {
		m, err := c.sc.Conn.Read(*bp)
		if err != nil {
			return
		}
		n += m
	}
}

// h2IdleTimeout is how long a downstream HTTP/2 connection may stay without streams.
func (e *Engine) h2IdleTimeout() time.Duration {
	if d := time.Duration(e.h2Idle.Load()); d > 0 {
		return d
	}
	return h2DefaultIdleConn
}

// checkIdle closes the connection once it has had no stream for the idle timeout, else re-arms.
func (c *h2Server) checkIdle() {
	d := c.e.h2IdleTimeout()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	left := d
	if len(c.streams) == 0 && c.live == 0 {
		left = d - time.Since(c.idleSince)
	}
	if left > 0 {
		c.idleTimer.Reset(left)
	}
	c.mu.Unlock()
	if left <= 0 {
		c.goAway(http2.ErrCodeNo)
		c.closeConn()
	}
}

// closeConn fails every stream and closes the socket; the read loop then ends.
func (c *h2Server) closeConn() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	streams := make([]*h2SrvStream, 0, len(c.streams))
	for _, s := range c.streams {
		streams = append(streams, s)
	}
	close(c.windowCh)
	c.windowCh = make(chan struct{})
	c.mu.Unlock()
	c.cancel()
	for _, s := range streams {
		s.receiveEnd(net.ErrClosed)
	}
	c.sc.Close()
}

// h2FrameSink is the Framer's writer: frames are appended to the pending bytes (under wmu).
type h2FrameSink struct{ c *h2Server }

func (w h2FrameSink) Write(p []byte) (int, error) {
	w.c.wbuf = append(w.c.wbuf, p...)
	return len(p), nil
}

// lockWrite takes wmu once fewer than h2MaxPendingWrite bytes are pending (backpressure).
func (c *h2Server) lockWrite() {
	c.wmu.Lock()
	for c.werr == nil && len(c.wbuf) >= h2MaxPendingWrite {
		c.wcond.Wait()
	}
}

// unlockWrite writes the pending frames: when another goroutine is writing, it takes them with its
// next write; otherwise this one writes them (and whatever others add meanwhile) to the socket,
// outside wmu. Frames of concurrent streams share a write, and no goroutine is started for it.
func (c *h2Server) unlockWrite() error {
	if c.writing || c.werr != nil || len(c.wbuf) == 0 {
		err := c.werr
		c.wmu.Unlock()
		return err
	}
	c.writing = true
	for len(c.wbuf) > 0 && c.werr == nil {
		b := c.wbuf
		c.wbuf = c.wspare[:0]
		c.wmu.Unlock()
		_, err := c.sc.Conn.Write(b)
		c.wmu.Lock()
		if cap(b) <= 2*h2MaxPendingWrite {
			c.wspare = b[:0]
		} else {
			c.wspare = nil
		}
		if err != nil && c.werr == nil {
			c.werr = fmt.Errorf("write to h2 client: %w", err)
		}
		c.wcond.Broadcast()
	}
	c.writing = false
	c.wcond.Broadcast()
	err := c.werr
	c.wmu.Unlock()
	if err != nil {
		c.closeConn()
	}
	return err
}

// drainWrites waits until the pending frames are written (or the writes failed), at most for d.
func (c *h2Server) drainWrites(d time.Duration) {
	t := time.AfterFunc(d, func() {
		c.wmu.Lock()
		if c.werr == nil {
			c.werr = errors.New("h2 downstream: write drain timeout")
		}
		c.wcond.Broadcast()
		c.wmu.Unlock()
		c.sc.Conn.Close() // unblocks a write in progress
	})
	defer t.Stop()
	c.wmu.Lock()
	for c.werr == nil && (c.writing || len(c.wbuf) > 0) {
		c.wcond.Wait()
	}
	c.wmu.Unlock()
}

func (c *h2Server) writeFrames(fn func(fr *http2.Framer) error) error {
	c.lockWrite()
	if c.werr == nil {
		c.werr = fn(c.fr)
	}
	return c.unlockWrite()
}

func (c *h2Server) goAway(code http2.ErrCode) {
	c.mu.Lock()
	last := c.maxID
	c.mu.Unlock()
	_ = c.writeFrames(func(fr *http2.Framer) error { return fr.WriteGoAway(last, code, nil) })
	c.drainWrites(h2LingerTimeout) // out before the connection closes
}

// resetOwn resets stream id (s, when it is still open) for its own error: RST_STREAM is written before
// the handler is woken (peerReset cancels its context), so that the peer sees the reset and no answer
// the handler might make once woken.
func (c *h2Server) resetOwn(s *h2SrvStream, id uint32, code http2.ErrCode) error {
	if s != nil {
		s.gone.Store(true)
	}
	err := c.resetStream(id, code)
	if s != nil {
		s.peerReset(code, false)
	}
	return err
}

func (c *h2Server) resetStream(id uint32, code http2.ErrCode) error {
	return c.writeFrames(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) })
}

func (c *h2Server) stream(id uint32) *h2SrvStream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

func (c *h2Server) readFrames() error {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				// An invalid header block ends its stream, not the connection.
				if se.StreamID > c.maxID {
					c.maxID = se.StreamID
				}
				if werr := c.resetOwn(c.stream(se.StreamID), se.StreamID, se.Code); werr != nil {
					return werr
				}
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return &h2ConnError{code: http2.ErrCode(ce), reason: "read frame: " + err.Error()}
			}
			return fmt.Errorf("read from h2 client: %w", err)
		}
		if err := c.process(f); err != nil {
			return err
		}
	}
}

func (c *h2Server) process(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		if err := c.applySettings(f); err != nil {
			return err
		}
		return c.writeFrames(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		return c.writeFrames(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.RSTStreamFrame:
		if f.StreamID > c.maxID {
			return &h2ConnError{code: http2.ErrCodeProtocol, reason: "RST_STREAM on an idle stream"}
		}
		if s := c.stream(f.StreamID); s != nil && s.peerReset(f.ErrCode, true) {
			c.earlyResets++
			if c.earlyResets >= h2PrematureResets && 2*c.earlyResets >= c.opened {
				return &h2ConnError{code: http2.ErrCodeEnhanceYourCalm, reason: "too many streams reset before their response"}
			}
		}
		return nil
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.GoAwayFrame:
		// The client opens no more streams; those running finish.
		c.mu.Lock()
		c.goingAway = true
		idle := len(c.streams) == 0
		c.mu.Unlock()
		if idle {
			return io.EOF
		}
		return nil
	case *http2.PushPromiseFrame:
		return &h2ConnError{code: http2.ErrCodeProtocol, reason: "PUSH_PROMISE from a client"}
	default:
		return nil // PRIORITY and unknown frames are ignored
	}
}

func (c *h2Server) applySettings(f *http2.SettingsFrame) error {
	if f.NumSettings() > 100 {
		return &h2ConnError{code: http2.ErrCodeEnhanceYourCalm, reason: "too many settings in one frame"}
	}
	var serr error
	_ = f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			if ce, ok := err.(http2.ConnectionError); ok {
				serr = &h2ConnError{code: http2.ErrCode(ce), reason: "invalid setting " + s.String()}
			} else {
				serr = &h2ConnError{code: http2.ErrCodeProtocol, reason: "invalid setting " + s.String()}
			}
			return serr
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			c.mu.Lock()
			delta := int64(s.Val) - c.peerInitWin
			c.peerInitWin = int64(s.Val)
			for _, st := range c.streams {
				st.sendWin += delta
				if st.sendWin > 1<<31-1 {
					serr = &h2ConnError{code: http2.ErrCodeFlowControl, reason: "stream window overflow"}
				}
			}
			if delta > 0 {
				close(c.windowCh)
				c.windowCh = make(chan struct{})
			}
			c.mu.Unlock()
		case http2.SettingMaxFrameSize:
			c.mu.Lock()
			c.peerMaxFrame = s.Val
			c.mu.Unlock()
		}
		return serr
	})
	return serr
}

func (c *h2Server) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	var overflow *h2SrvStream
	c.mu.Lock()
	if f.StreamID == 0 {
		c.sendWin += int64(f.Increment)
		if c.sendWin > 1<<31-1 {
			c.mu.Unlock()
			return &h2ConnError{code: http2.ErrCodeFlowControl, reason: "connection window overflow"}
		}
	} else if s := c.streams[f.StreamID]; s != nil {
		s.sendWin += int64(f.Increment)
		if s.sendWin > 1<<31-1 {
			overflow = s
		}
	} else if f.StreamID > c.maxID {
		c.mu.Unlock()
		return &h2ConnError{code: http2.ErrCodeProtocol, reason: "WINDOW_UPDATE on an idle stream"}
	}
	close(c.windowCh)
	c.windowCh = make(chan struct{})
	c.mu.Unlock()
	if overflow != nil {
		return c.resetOwn(overflow, f.StreamID, http2.ErrCodeFlowControl)
	}
	return nil
}

// credit returns n bytes of connection window to the peer, in batches.
func (c *h2Server) credit(n int64) {
	if n <= 0 {
		return
	}
	c.mu.Lock()
	c.consumed += n
	send := int64(0)
	if c.consumed >= h2ConnUploadLimit/4 {
		send, c.consumed = c.consumed, 0
		c.inflow += send
	}
	c.mu.Unlock()
	if send > 0 {
		_ = c.writeFrames(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, uint32(send)) })
	}
}

func (c *h2Server) onData(f *http2.DataFrame) error {
	n := int64(f.Length)
	c.mu.Lock()
	if n > c.inflow {
		c.mu.Unlock()
		return &h2ConnError{code: http2.ErrCodeFlowControl, reason: "DATA over the connection window"}
	}
	c.inflow -= n
	s := c.streams[f.StreamID]
	c.mu.Unlock()
	if s == nil {
		if f.StreamID > c.maxID || f.StreamID%2 == 0 {
			return &h2ConnError{code: http2.ErrCodeProtocol, reason: "DATA on an idle stream"}
		}
		c.credit(n) // a closed stream: nobody reads it
		return nil
	}
	data := f.Data()
	ended, err := s.receive(data, n, f.StreamEnded())
	if ended {
		s.maybeFree()
	}
	if err != nil {
		c.credit(n)
		var code http2.ErrCode = http2.ErrCodeProtocol
		if errors.Is(err, errH2StreamWindow) {
			code = http2.ErrCodeFlowControl
		}
		return c.resetOwn(s, f.StreamID, code)
	}
	if pad := n - int64(len(data)); pad > 0 {
		s.mu.Lock()
		s.consumed += pad
		s.mu.Unlock()
		c.credit(pad)
	}
	return nil
}

var errH2StreamWindow = errors.New("h2: DATA over the stream window")

// onHeaders opens a stream, or takes a stream's trailers.
func (c *h2Server) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return &h2ConnError{code: http2.ErrCodeProtocol, reason: "HEADERS on an even stream id"}
	}
	if id <= c.maxID {
		if s := c.stream(id); s != nil {
			return s.onTrailers(f)
		}
		return nil // a stream that ended (its handler returned): ignored
	}
	c.maxID = id
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return net.ErrClosed
	}
	if c.live >= h2MaxStreams || c.goingAway {
		c.mu.Unlock()
		return c.resetStream(id, http2.ErrCodeRefusedStream)
	}
	if len(c.streams) >= h2MaxHandlers {
		c.mu.Unlock()
		return &h2ConnError{code: http2.ErrCodeEnhanceYourCalm, reason: "too many handlers of reset streams"}
	}
	c.mu.Unlock()
	if f.Truncated {
		return c.answerLocal(id, http.StatusRequestHeaderFieldsTooLarge)
	}
	s := &h2SrvStream{c: c, id: id, inflow: h2StreamUploadLimit, slot: true}
	if err := s.buildRequest(f); err != nil {
		return c.resetStream(id, http2.ErrCodeProtocol)
	}
	c.opened++
	s.rcond.L = &s.mu
	c.mu.Lock()
	s.sendWin = c.peerInitWin
	c.streams[id] = s
	c.live++
	c.mu.Unlock()
	c.wg.Add(1)
	go s.run()
	return nil
}

// answerLocal answers a stream the engine never sees (an oversized header list).
func (c *h2Server) answerLocal(id uint32, status int) error {
	return c.writeFrames(func(fr *http2.Framer) error {
		c.hbuf.Reset()
		_ = c.henc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)})
		_ = c.henc.WriteField(hpack.HeaderField{Name: "content-length", Value: "0"})
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true, EndStream: true})
	})
}

// h2SrvStream is one downstream stream: the request handed to the engine (its body reads the
// stream's DATA) and the response writer.
type h2SrvStream struct {
	c      *h2Server
	id     uint32
	base   http.Request  // the request as decoded
	req    *http.Request // base with the stream's context: what the engine gets
	ctx    context.Context
	cancel context.CancelFunc

	sendWin int64 // guarded by c.mu
	slot    bool  // guarded by c.mu; the stream holds a MAX_CONCURRENT_STREAMS slot

	// receive side, guarded by mu
	mu        sync.Mutex
	rcond     sync.Cond
	buf       []byte
	off       int
	eof       bool  // END_STREAM received
	err       error // the stream was reset or the connection closed
	inflow    int64 // what the peer may still send on the stream
	consumed  int64 // stream credit not yet returned
	received  int64
	declared  int64 // content-length, or -1
	deadline  bool  // SetReadDeadline passed
	dlTimer   *time.Timer
	peerEnded bool // the peer's side is over (END_STREAM or reset)
	reset     bool // the stream was reset (by the peer, or by us for its errors)
	// gone is set once the stream is reset, before its handler learns of it: nothing more is sent on it
	// (send checks it under the write lock), so a handler woken by the reset cannot answer first.
	gone       atomic.Bool
	responded  bool // the response ended
	bodyClosed bool

	// response side, handler goroutine only
	hdr         http.Header
	status      int
	wroteHeader bool
	sentHeaders bool
	pending     *[]byte
	trailers    []string // declared trailer keys, canonical
	noBody      bool
}

// buildRequest turns the decoded header block into the request handed to the engine.
func (s *h2SrvStream) buildRequest(f *http2.MetaHeadersFrame) error {
	var method, path, scheme, authority string
	n := len(f.Fields)
	vals := make([]string, n)
	h := make(http.Header, n)
	var cookies []string
	for i, hf := range f.Fields {
		if hf.IsPseudo() {
			switch hf.Name {
			case ":method":
				method = hf.Value
			case ":path":
				path = hf.Value
			case ":scheme":
				scheme = hf.Value
			case ":authority":
				authority = hf.Value
			default:
				return errors.New("unknown pseudo-header " + hf.Name)
			}
			continue
		}
		switch hf.Name {
		case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
			return errors.New("connection-specific header " + hf.Name)
		case "te":
			if hf.Value != "trailers" {
				return errors.New("te other than trailers")
			}
		case "cookie":
			cookies = append(cookies, hf.Value)
			continue
		}
		k := canonKey(hf.Name)
		if vv, ok := h[k]; ok {
			h[k] = append(vv, hf.Value)
			continue
		}
		vals[i] = hf.Value
		h[k] = vals[i : i+1 : i+1]
	}
	if len(cookies) == 1 {
		h["Cookie"] = cookies
	} else if len(cookies) > 1 {
		h["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	if method == "" || method == http.MethodConnect || path == "" || scheme == "" {
		return errors.New("missing or unsupported pseudo-headers")
	}
	if authority == "" {
		authority = h.Get("Host")
	}
	delete(h, "Host")
	u, err := url.ParseRequestURI(path)
	if err != nil {
		return fmt.Errorf("parse :path: %w", err)
	}
	s.declared = -1
	if cl := h["Content-Length"]; len(cl) > 0 {
		v, err := strconv.ParseInt(cl[0], 10, 63)
		if err != nil || len(cl) > 1 {
			return errors.New("invalid content-length")
		}
		s.declared = v
	}
	c := s.c
	s.ctx, s.cancel = context.WithCancel(c.ctx)
	r := &s.base
	r.Method, r.URL, r.Proto, r.ProtoMajor, r.ProtoMinor = method, u, "HTTP/2.0", 2, 0
	r.Header, r.Host, r.RemoteAddr, r.RequestURI = h, authority, c.remote, path
	if f.StreamEnded() {
		s.eof, s.peerEnded = true, true
		r.ContentLength, r.Body = 0, http.NoBody
		if s.declared > 0 {
			return errors.New("content-length without a body")
		}
	} else {
		r.ContentLength, r.Body = s.declared, (*h2SrvBody)(s)
	}
	if tr := h["Trailer"]; len(tr) > 0 {
		r.Trailer = http.Header{}
		for _, v := range tr {
			for k := range strings.SplitSeq(v, ",") {
				if k = http.CanonicalHeaderKey(textprotoTrim(k)); k != "" && httpguts.ValidTrailerHeader(k) {
					r.Trailer[k] = nil
				}
			}
		}
		delete(h, "Trailer")
	}
	s.req = r.WithContext(s.ctx)
	return nil
}

func textprotoTrim(s string) string { return strings.Trim(s, " \t") }

// onTrailers takes the request's trailers (which end the stream).
func (s *h2SrvStream) onTrailers(f *http2.MetaHeadersFrame) error {
	if !f.StreamEnded() {
		return &h2ConnError{code: http2.ErrCodeProtocol, reason: "trailers without END_STREAM"}
	}
	s.mu.Lock()
	if s.peerEnded {
		s.mu.Unlock()
		return s.c.resetStream(s.id, http2.ErrCodeStreamClosed)
	}
	if tr := s.base.Trailer; tr != nil {
		for _, hf := range f.Fields {
			k := canonKey(hf.Name)
			if _, ok := tr[k]; ok {
				tr[k] = append(tr[k], hf.Value)
			}
		}
	}
	s.eof, s.peerEnded = true, true
	s.rcond.Broadcast()
	s.mu.Unlock()
	s.maybeFree()
	return nil
}

// receive buffers DATA for the body reader; n is the frame's flow-controlled length.
// It reports whether the peer's side ended with it.
func (s *h2SrvStream) receive(data []byte, n int64, end bool) (ended bool, _ error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.peerEnded {
		return false, errors.New("DATA after END_STREAM")
	}
	if n > s.inflow {
		return false, errH2StreamWindow
	}
	s.inflow -= n
	s.received += int64(len(data))
	if s.declared >= 0 && (s.received > s.declared || end && s.received != s.declared) {
		return false, errors.New("body length differs from content-length")
	}
	if s.bodyClosed || s.err != nil {
		// Nobody reads it: the connection's credit goes back at once.
		defer s.c.credit(int64(len(data)))
	} else if len(data) > 0 {
		if s.off == len(s.buf) {
			s.buf, s.off = s.buf[:0], 0
		}
		s.buf = append(s.buf, data...)
	}
	if end {
		s.eof, s.peerEnded = true, true
	}
	s.rcond.Broadcast()
	return end, nil
}

// peerReset ends the stream's receive side with a reset (from the peer when fromPeer, else sent by
// us); it reports whether the response had not ended yet (a premature reset).
func (s *h2SrvStream) peerReset(code http2.ErrCode, fromPeer bool) bool {
	s.gone.Store(true)
	s.mu.Lock()
	early := !s.responded
	s.peerEnded = true
	s.reset = true
	if s.err == nil {
		s.err = errH2StreamReset
	}
	unread := int64(len(s.buf) - s.off)
	s.buf, s.off = nil, 0
	s.rcond.Broadcast()
	s.mu.Unlock()
	s.cancel()
	s.c.credit(unread)
	c := s.c
	c.mu.Lock()
	c.releaseSlotLocked(s)
	close(c.windowCh)
	c.windowCh = make(chan struct{})
	c.mu.Unlock()
	return early && fromPeer
}

// receiveEnd fails the body reader (the connection closed).
func (s *h2SrvStream) receiveEnd(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.rcond.Broadcast()
	s.mu.Unlock()
	s.cancel()
}

// maybeFree releases the stream's slot once the peer's side ended and the response ended.
func (s *h2SrvStream) maybeFree() {
	s.mu.Lock()
	done := s.peerEnded && s.responded
	s.mu.Unlock()
	if done {
		c := s.c
		c.mu.Lock()
		c.releaseSlotLocked(s)
		c.mu.Unlock()
	}
}

// releaseSlotLocked gives back the stream's MAX_CONCURRENT_STREAMS slot once.
func (c *h2Server) releaseSlotLocked(s *h2SrvStream) {
	if s.slot {
		s.slot = false
		c.live--
	}
}

// run serves the stream's request with the engine and ends the stream.
func (s *h2SrvStream) run() {
	c := s.c
	defer c.wg.Done()
	aborted := func() (aborted bool) {
		defer func() {
			if p := recover(); p != nil {
				aborted = true
				if p != http.ErrAbortHandler {
					c.e.log.Error("panic serving h2 stream", "panic", p)
				}
			}
		}()
		c.e.ServeHTTP(s, s.req)
		return false
	}()
	if !aborted {
		if err := s.finishResponse(); err != nil {
			aborted = true
		}
	}
	s.releasePending()
	s.mu.Lock()
	s.responded = true
	s.bodyClosed = true
	peerEnded, reset := s.peerEnded, s.reset
	unread := int64(len(s.buf) - s.off)
	s.buf, s.off = nil, 0
	if s.dlTimer != nil {
		s.dlTimer.Stop()
	}
	s.mu.Unlock()
	c.credit(unread)
	s.cancel()
	switch {
	case reset:
	case aborted:
		_ = c.resetStream(s.id, http2.ErrCodeInternal)
	case !peerEnded:
		_ = c.resetStream(s.id, http2.ErrCodeNo) // the response is complete; the rest of the body is not wanted
	}
	c.mu.Lock()
	delete(c.streams, s.id)
	c.releaseSlotLocked(s)
	if len(c.streams) == 0 {
		c.idleSince = time.Now()
	}
	c.mu.Unlock()
}

// h2SrvBody is the request body: it reads the stream's DATA.
type h2SrvBody h2SrvStream

func (b *h2SrvBody) Read(p []byte) (int, error) {
	s := (*h2SrvStream)(b)
	s.mu.Lock()
	for s.off == len(s.buf) && !s.eof && s.err == nil && !s.deadline {
		s.rcond.Wait()
	}
	if s.off < len(s.buf) {
		n := copy(p, s.buf[s.off:])
		s.off += n
		s.consumed += int64(n)
		var sn int64
		if s.consumed >= h2StreamUploadLimit/4 && !s.eof {
			sn, s.consumed = s.consumed, 0
			s.inflow += sn
		}
		s.mu.Unlock()
		c := s.c
		if sn > 0 {
			_ = c.writeFrames(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(s.id, uint32(sn)) })
		}
		c.credit(int64(n))
		return n, nil
	}
	defer s.mu.Unlock()
	switch {
	case s.err != nil:
		return 0, s.err
	case s.eof:
		return 0, io.EOF
	}
	return 0, os.ErrDeadlineExceeded
}

func (b *h2SrvBody) Close() error {
	s := (*h2SrvStream)(b)
	s.mu.Lock()
	s.bodyClosed = true
	unread := int64(len(s.buf) - s.off)
	s.buf, s.off = nil, 0
	s.mu.Unlock()
	s.c.credit(unread)
	return nil
}

// SetReadDeadline bounds the body reads (http.ResponseController; the stream idle timeout).
func (s *h2SrvStream) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dlTimer != nil {
		s.dlTimer.Stop()
		s.dlTimer = nil
	}
	s.deadline = false
	switch d := time.Until(t); {
	case t.IsZero():
	case d <= 0:
		s.deadline = true
		s.rcond.Broadcast()
	default:
		s.dlTimer = time.AfterFunc(d, func() {
			s.mu.Lock()
			s.deadline = true
			s.rcond.Broadcast()
			s.mu.Unlock()
		})
	}
	return nil
}

// Header implements http.ResponseWriter.
func (s *h2SrvStream) Header() http.Header {
	if s.hdr == nil {
		s.hdr = make(http.Header, 8)
	}
	return s.hdr
}

// WriteHeader implements http.ResponseWriter; 1xx responses go out at once.
func (s *h2SrvStream) WriteHeader(code int) {
	if s.wroteHeader {
		return
	}
	if code >= 100 && code < 200 {
		if code == http.StatusSwitchingProtocols {
			return // no upgrades in HTTP/2
		}
		_ = s.writeInformational(code)
		return
	}
	if code < 100 || code > 999 {
		code = http.StatusInternalServerError
	}
	s.wroteHeader, s.status = true, code
	s.noBody = code == http.StatusNoContent || code == http.StatusNotModified || s.base.Method == http.MethodHead
}

// Write implements http.ResponseWriter: small writes wait in a pending buffer until the handler
// returns or flushes, or the buffer fills.
func (s *h2SrvStream) Write(p []byte) (int, error) {
	if !s.wroteHeader {
		s.WriteHeader(http.StatusOK)
	}
	if s.noBody {
		return len(p), nil
	}
	if err := s.ctx.Err(); err != nil && s.streamGone() {
		return 0, errH2StreamReset
	}
	if !s.sentHeaders {
		if s.pending == nil {
			if len(p) <= h2PendingMax {
				s.pending = writeBuffers.Get().(*[]byte)
			}
		}
		if s.pending != nil && len(*s.pending)+len(p) <= h2PendingMax {
			*s.pending = append(*s.pending, p...)
			return len(p), nil
		}
	}
	if err := s.flushPending(false); err != nil {
		return 0, err
	}
	if err := s.send(p, false); err != nil {
		return 0, err
	}
	return len(p), nil
}

// streamGone reports whether the stream was reset or the connection closed.
func (s *h2SrvStream) streamGone() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err != nil
}

// Flush implements http.Flusher: the headers and pending bytes go out.
func (s *h2SrvStream) Flush() {
	if !s.wroteHeader {
		s.WriteHeader(http.StatusOK)
	}
	_ = s.flushPending(false)
	if !s.sentHeaders {
		_ = s.send(nil, false)
	}
}

func (s *h2SrvStream) releasePending() {
	if s.pending != nil {
		*s.pending = (*s.pending)[:0]
		writeBuffers.Put(s.pending)
		s.pending = nil
	}
}

// flushPending sends the pending bytes (with the headers when not sent yet).
func (s *h2SrvStream) flushPending(end bool) error {
	if s.pending == nil || len(*s.pending) == 0 {
		return nil
	}
	err := s.send(*s.pending, end)
	s.releasePending()
	return err
}

// finishResponse ends the response after the handler returned.
func (s *h2SrvStream) finishResponse() error {
	if !s.wroteHeader {
		s.WriteHeader(http.StatusOK)
	}
	if s.pending != nil && len(*s.pending) > 0 {
		if !s.sentHeaders && s.hdr["Content-Length"] == nil {
			s.Header()["Content-Length"] = []string{strconv.Itoa(len(*s.pending))}
		}
		return s.flushPending(true)
	}
	return s.send(nil, true)
}

// declareTrailers records the trailer keys the response's Trailer header announces.
func (s *h2SrvStream) declareTrailers() {
	for _, v := range s.hdr["Trailer"] {
		for t := range strings.SplitSeq(v, ",") {
			if t = http.CanonicalHeaderKey(textprotoTrim(t)); t != "" && !slices.Contains(s.trailers, t) {
				s.trailers = append(s.trailers, t)
			}
		}
	}
}

// hasTrailers reports whether the response has trailers: declared keys with values, or keys with
// http.TrailerPrefix.
func (s *h2SrvStream) hasTrailers() bool {
	for _, k := range s.trailers {
		if len(s.hdr[k]) > 0 {
			return true
		}
	}
	for k := range s.hdr {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
	}
	return false
}

// reserve waits for send window for up to want bytes (at most one frame).
func (s *h2SrvStream) reserve(want int) (int, error) {
	c := s.c
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return 0, net.ErrClosed
		}
		if !s.slot && s.ctx.Err() != nil {
			c.mu.Unlock()
			return 0, errH2StreamReset
		}
		n := int64(min(want, int(c.peerMaxFrame)))
		n = min(n, c.sendWin, s.sendWin)
		if n > 0 {
			c.sendWin -= n
			s.sendWin -= n
			c.mu.Unlock()
			return int(n), nil
		}
		ch := c.windowCh
		c.mu.Unlock()
		select {
		case <-ch:
		case <-s.ctx.Done():
			if s.streamGone() {
				return 0, errH2StreamReset
			}
			// The request's context ended (the handler is ending): the response may still complete.
			<-ch
		}
	}
}

// send writes the headers when not yet sent, then p as DATA, ending the stream with end (with the
// trailers, when there are any).
func (s *h2SrvStream) send(p []byte, end bool) error {
	c := s.c
	if !s.sentHeaders {
		s.declareTrailers()
	}
	trailers := end && s.hasTrailers()
	for {
		n := 0
		if len(p) > 0 {
			var err error
			if n, err = s.reserve(len(p)); err != nil {
				return err
			}
		}
		last := n == len(p)
		c.lockWrite()
		if s.gone.Load() {
			_ = c.unlockWrite()
			return errH2StreamReset
		}
		if c.werr == nil && !s.sentHeaders {
			s.sentHeaders = true
			c.werr = s.writeHeaderBlock(end && len(p) == 0 && !trailers)
		} else if c.werr == nil && end && len(p) == 0 && !trailers {
			c.werr = c.fr.WriteData(s.id, true, nil)
		}
		if c.werr == nil && n > 0 {
			c.werr = c.fr.WriteData(s.id, last && end && !trailers, p[:n])
		}
		if c.werr == nil && last && trailers {
			c.werr = s.writeTrailerBlock()
		}
		err := c.unlockWrite()
		if err != nil {
			return err
		}
		p = p[n:]
		if last {
			return nil
		}
	}
}

// h2SkipResponse are the response headers not sent over HTTP/2 (connection-specific).
func h2SkipResponse(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// writeHeaderBlock encodes and writes the response HEADERS (under wmu).
func (s *h2SrvStream) writeHeaderBlock(endStream bool) error {
	c := s.c
	c.hbuf.Reset()
	enc := c.henc
	var err error
	w := func(name, value string) {
		if err == nil {
			err = enc.WriteField(hpack.HeaderField{Name: name, Value: value})
		}
	}
	w(":status", statusString(s.status))
	if _, ok := s.hdr["Date"]; !ok {
		w("date", httpDate()) // as net/http's servers (and Envoy) add it
	}
	for k, vv := range s.hdr {
		if h2SkipResponse(k) || strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		if len(s.trailers) > 0 && slices.Contains(s.trailers, k) {
			continue // sent as a trailer
		}
		lk := lowerKey(k)
		if !httpguts.ValidHeaderFieldName(lk) {
			continue
		}
		for _, v := range vv {
			if httpguts.ValidHeaderFieldValue(v) {
				w(lk, v)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("encode response headers: %w", err)
	}
	return c.writeBlock(s.id, endStream)
}

// writeTrailerBlock encodes and writes the response trailers with END_STREAM (under wmu).
func (s *h2SrvStream) writeTrailerBlock() error {
	c := s.c
	c.hbuf.Reset()
	var err error
	w := func(k string, vv []string) {
		lk := lowerKey(k)
		if !httpguts.ValidHeaderFieldName(lk) {
			return
		}
		for _, v := range vv {
			if err == nil && httpguts.ValidHeaderFieldValue(v) {
				err = c.henc.WriteField(hpack.HeaderField{Name: lk, Value: v})
			}
		}
	}
	for _, k := range s.trailers {
		w(k, s.hdr[k])
	}
	for k, vv := range s.hdr {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			w(http.CanonicalHeaderKey(k[len(http.TrailerPrefix):]), vv)
		}
	}
	if err != nil {
		return fmt.Errorf("encode response trailers: %w", err)
	}
	return c.writeBlock(s.id, true)
}

// writeInformational sends a 1xx response with the current header map.
func (s *h2SrvStream) writeInformational(code int) error {
	c := s.c
	c.lockWrite()
	if c.werr == nil && !s.gone.Load() {
		c.hbuf.Reset()
		_ = c.henc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(code)})
		for k, vv := range s.hdr {
			if h2SkipResponse(k) {
				continue
			}
			lk := lowerKey(k)
			for _, v := range vv {
				if httpguts.ValidHeaderFieldName(lk) && httpguts.ValidHeaderFieldValue(v) {
					_ = c.henc.WriteField(hpack.HeaderField{Name: lk, Value: v})
				}
			}
		}
		c.werr = c.writeBlock(s.id, false)
	}
	return c.unlockWrite()
}

// writeBlock writes the encoded block in c.hbuf as HEADERS and CONTINUATION frames (under wmu).
func (c *h2Server) writeBlock(id uint32, endStream bool) error {
	c.mu.Lock()
	maxFrame := int(c.peerMaxFrame)
	c.mu.Unlock()
	block := c.hbuf.Bytes()
	first := block[:min(len(block), maxFrame)]
	block = block[len(first):]
	err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: endStream, EndHeaders: len(block) == 0})
	for len(block) > 0 && err == nil {
		n := min(len(block), maxFrame)
		err = c.fr.WriteContinuation(id, len(block) == n, block[:n])
		block = block[n:]
	}
	return err
}

// dateCache holds the Date header value of the current second.
var dateCache struct {
	sec atomic.Int64
	val atomic.Pointer[string]
}

// httpDate returns the current time as an HTTP Date value, formatted once per second.
func httpDate() string {
	now := time.Now()
	if sec := now.Unix(); dateCache.sec.Load() == sec {
		if v := dateCache.val.Load(); v != nil {
			return *v
		}
	}
	v := now.UTC().Format(http.TimeFormat)
	dateCache.val.Store(&v)
	dateCache.sec.Store(now.Unix())
	return v
}

func statusString(code int) string {
	switch code {
	case 200:
		return "200"
	case 404:
		return "404"
	case 503:
		return "503"
	}
	return strconv.Itoa(code)
}

var (
	_ http.ResponseWriter = (*h2SrvStream)(nil)
	_ http.Flusher        = (*h2SrvStream)(nil)
	_ io.ReadCloser       = (*h2SrvBody)(nil)
)
