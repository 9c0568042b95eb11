package engine

// h2client.go: the engine's HTTP/2 (h2c, prior knowledge) client for plain HTTP/2 and gRPC upstreams,
// built on x/net/http2's Framer and hpack instead of http.Transport.
//
// Invariants:
//   - Connections are multiplexed per endpoint: a request takes a stream slot on a connection that is
//     not going away and has fewer streams than min(the peer's MAX_CONCURRENT_STREAMS,
//     h2MaxStreamsPerConn); at most one dial per endpoint is in flight and at most h2MaxConnsPerEndpoint
//     connections are open per endpoint; beyond that a request waits for a slot (or its context).
//   - A stream's slot is released exactly once (h2Stream.finish): when its response is read to the end
//     and its request sent, when its body is closed (RST_STREAM CANCEL if either side is unfinished), on
//     reset, on its context's end, or when the connection fails.
//   - wmu guards the write side (bufio.Writer, Framer writes, the hpack encoder, stream ids); c.mu guards
//     the stream map, the send windows and the peer's settings; a stream's mu its receive side. wmu may
//     be taken before c.mu or a stream's mu, never after; none is held across a wait. A writer skips the
//     flush when another one waits for wmu (that one flushes): frames of concurrent streams share a
//     socket write.
//   - Only readLoop reads the connection. It never blocks on a stream's reader: DATA is buffered up to
//     the stream's receive window (h2StreamWindow; FLOW_CONTROL_ERROR beyond), and credit goes back as
//     the body is read. Response header lists are bounded by MaxHeaderBytes (the Framer stops decoding
//     past it, CONTINUATION included), informational responses by max1xxResponses.
//   - A connection with no stream for h2IdleTimeout is closed (expire). GOAWAY takes the connection out
//     of the pool; streams above its last stream id fail with REFUSED_STREAM (retried as refused
//     streams), the others finish, and the connection closes with its last stream.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
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
	h2MaxStreamsPerConn   = 256
	h2MaxConnsPerEndpoint = 16
	h2IdleTimeout         = 90 * time.Second
	h2StreamWindow        = 256 << 10
	h2ConnWindow          = 4 << 20
	h2MaxFrameSize        = 1 << 20
	h2DefaultMaxStreams   = 100 // until the peer's SETTINGS arrive
	// A connection with streams that has read nothing for h2PingAfter is sent a PING; without an answer
	// (or any frame) for h2PingTimeout more it is closed, failing its streams (http.Transport's
	// SendPingTimeout and PingTimeout as the engine configured them). Checked on every expire tick.
	h2PingAfter   = 30 * time.Second
	h2PingTimeout = 15 * time.Second
)

var errH2PingTimeout = errors.New("h2 upstream: no answer to PING")

var errH2ConnClosed = errors.New("h2 upstream: connection closed")

// h2Error is a stream reset by the upstream (or refused by its GOAWAY); its text names the code, which
// is how REFUSED_STREAM is recognized as safe to retry (isDialError).
type h2Error struct {
	code   http2.ErrCode
	goAway bool
}

func (e *h2Error) Error() string {
	if e.goAway {
		return "h2 upstream: stream refused by GOAWAY: REFUSED_STREAM"
	}
	return "h2 upstream: stream reset: " + e.code.String()
}

// h2Client multiplexes requests over h2c connections per endpoint.
type h2Client struct {
	dial func(ctx context.Context, addr string) (net.Conn, error)
	log  *slog.Logger
	now  func() time.Time

	mu      sync.Mutex
	conns   map[netip.AddrPort][]*h2Conn // guarded by mu
	dialing map[netip.AddrPort]bool      // guarded by mu
	slot    chan struct{}                // guarded by mu; closed and replaced when a slot may have freed
	closed  bool                         // guarded by mu

	wg sync.WaitGroup // read loops and request body writers
}

func newH2Client(dial func(ctx context.Context, addr string) (net.Conn, error), log *slog.Logger) *h2Client {
	return &h2Client{dial: dial, log: log, now: time.Now, conns: map[netip.AddrPort][]*h2Conn{},
		dialing: map[netip.AddrPort]bool{}, slot: make(chan struct{})}
}

// wakeLocked wakes the requests waiting for a slot. Called with mu held.
func (hc *h2Client) wakeLocked() {
	close(hc.slot)
	hc.slot = make(chan struct{})
}

// take returns a connection to addr with a stream slot taken for the caller.
func (hc *h2Client) take(ctx context.Context, addr netip.AddrPort) (*h2Conn, error) {
	hc.mu.Lock()
	for {
		if hc.closed {
			hc.mu.Unlock()
			return nil, errH2ConnClosed
		}
		l := hc.conns[addr]
		for _, c := range l {
			if !c.goingAway && c.active < c.maxStreams() {
				c.active++
				hc.mu.Unlock()
				return c, nil
			}
		}
		if !hc.dialing[addr] && len(l) < h2MaxConnsPerEndpoint {
			hc.dialing[addr] = true
			hc.mu.Unlock()
			c, err := hc.connect(ctx, addr)
			hc.mu.Lock()
			delete(hc.dialing, addr)
			hc.wakeLocked()
			if err != nil {
				hc.mu.Unlock()
				return nil, err
			}
			if hc.closed {
				hc.mu.Unlock()
				c.close(errH2ConnClosed)
				return nil, errH2ConnClosed
			}
			hc.conns[addr] = append(hc.conns[addr], c)
			c.active++
			hc.mu.Unlock()
			return c, nil
		}
		wait := hc.slot
		hc.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		hc.mu.Lock()
	}
}

// release gives back a stream slot of c.
func (hc *h2Client) release(c *h2Conn) {
	hc.mu.Lock()
	c.active--
	if c.active == 0 {
		c.idleSince = hc.now()
	}
	closeIt := c.goingAway && c.active == 0 && !c.closing.Load()
	hc.wakeLocked()
	hc.mu.Unlock()
	if closeIt {
		c.close(errH2ConnClosed)
	}
}

// unpool takes c out of the pool (GOAWAY or failure): no new stream goes to it.
func (hc *h2Client) unpool(c *h2Conn) (idle bool) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	c.goingAway = true
	l := hc.conns[c.addr]
	for i, x := range l {
		if x == c {
			l = append(l[:i:i], l[i+1:]...)
			break
		}
	}
	if len(l) == 0 {
		delete(hc.conns, c.addr)
	} else {
		hc.conns[c.addr] = l
	}
	hc.wakeLocked()
	return c.active == 0
}

// expire closes the connections without streams for h2IdleTimeout, and checks the liveness of those
// with streams: a PING after h2PingAfter without reading anything, closed h2PingTimeout later.
func (hc *h2Client) expire() {
	now := hc.now()
	var idle, busy []*h2Conn
	hc.mu.Lock()
	for _, l := range hc.conns {
		for _, c := range l {
			if c.active == 0 && now.Sub(c.idleSince) >= h2IdleTimeout {
				idle = append(idle, c)
			} else if c.active > 0 {
				busy = append(busy, c)
			}
		}
	}
	hc.mu.Unlock()
	for _, c := range idle {
		if c.cl.unpool(c) {
			c.close(errH2ConnClosed)
		}
	}
	for _, c := range busy {
		c.checkAlive(now)
	}
}

// checkAlive pings c when it has read nothing for h2PingAfter, and closes it when the PING went
// unanswered (nothing read) for h2PingTimeout.
func (c *h2Conn) checkAlive(now time.Time) {
	last := time.Unix(0, c.lastRead.Load())
	sent := c.pingSent.Load()
	switch {
	case sent != 0 && last.UnixNano() < sent && now.Sub(time.Unix(0, sent)) >= h2PingTimeout:
		c.close(errH2PingTimeout)
	case sent != 0 && last.UnixNano() < sent:
		// waiting for the answer
	case now.Sub(last) >= h2PingAfter:
		c.pingSent.Store(now.UnixNano())
		_ = c.writeFrames(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{'a', 'm', 'b', 'i', 't'}) })
	}
}

// closeAll closes every connection (streams in flight fail) and waits for the read loops and body
// writers, at most until ctx ends.
func (hc *h2Client) closeAll(ctx context.Context) {
	hc.mu.Lock()
	hc.closed = true
	var all []*h2Conn
	for _, l := range hc.conns {
		all = append(all, l...)
	}
	hc.conns = map[netip.AddrPort][]*h2Conn{}
	hc.wakeLocked()
	hc.mu.Unlock()
	for _, c := range all {
		c.close(errH2ConnClosed)
	}
	done := make(chan struct{})
	go func() { hc.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// connect dials addr and starts an HTTP/2 connection on it (preface, SETTINGS, connection window).
func (hc *h2Client) connect(ctx context.Context, addr netip.AddrPort) (*h2Conn, error) {
	nc, err := hc.dial(ctx, addr.String())
	if err != nil {
		return nil, err
	}
	c := &h2Conn{cl: hc, addr: addr, nc: nc, streams: map[uint32]*h2Stream{}, nextID: 1,
		sendWin: 65535, peerInitWin: 65535, inflow: h2ConnWindow, peerMaxFrame: 16384, windowCh: make(chan struct{}),
		done: make(chan struct{}), idleSince: hc.now()}
	c.maxStr.Store(h2DefaultMaxStreams)
	c.lastRead.Store(hc.now().UnixNano())
	c.bw = bufio.NewWriterSize(nc, 16<<10)
	c.fr = http2.NewFramer(c.bw, bufio.NewReaderSize(nc, 16<<10))
	c.fr.SetMaxReadFrameSize(h2MaxFrameSize)
	c.fr.MaxHeaderListSize = MaxHeaderBytes
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	// An encoder table of size 0: per-request values (x-request-id, traceparent) would otherwise churn
	// the HPACK table on every request; names still come from the static table.
	c.henc.SetMaxDynamicTableSizeLimit(0)
	_, err = c.bw.WriteString(http2.ClientPreface)
	if err == nil {
		err = c.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2StreamWindow},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: h2MaxFrameSize},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: MaxHeaderBytes})
	}
	if err == nil {
		err = c.fr.WriteWindowUpdate(0, h2ConnWindow-65535)
	}
	if err == nil {
		err = c.bw.Flush()
	}
	if err != nil {
		nc.Close()
		return nil, &connectError{err: fmt.Errorf("start h2 connection: %w", err)}
	}
	hc.wg.Go(c.readLoop)
	return c, nil
}

// h2Conn is one h2c connection to an endpoint.
type h2Conn struct {
	cl   *h2Client
	addr netip.AddrPort
	nc   net.Conn

	// write side, guarded by wmu
	wmu     sync.Mutex
	waiters atomic.Int32 // goroutines waiting for wmu
	bw      *bufio.Writer
	fr      *http2.Framer // writes under wmu; reads by readLoop only
	henc    *hpack.Encoder
	hbuf    bytes.Buffer
	nextID  uint32
	werr    error

	mu           sync.Mutex
	streams      map[uint32]*h2Stream // guarded by mu
	sendWin      int64                // guarded by mu; the connection's send window
	peerInitWin  int64                // guarded by mu
	peerMaxFrame uint32               // guarded by mu
	windowCh     chan struct{}        // guarded by mu; closed when a send window grows
	err          error                // guarded by mu; set when closed
	inflow       int64                // guarded by mu; what the peer may still send on the connection
	consumed     int64                // guarded by mu; connection credit not yet returned
	maxStr       atomic.Uint32        // the peer's MAX_CONCURRENT_STREAMS

	// guarded by cl.mu
	active    int
	goingAway bool
	idleSince time.Time

	lastRead atomic.Int64 // unix ns of the last frame read (by the client's clock)
	pingSent atomic.Int64 // unix ns of the last liveness PING sent

	done      chan struct{}
	closeOnce sync.Once
	closing   atomic.Bool // close has started (its streams' releases must not close again)
}

func (c *h2Conn) maxStreams() int { return int(min(c.maxStr.Load(), h2MaxStreamsPerConn)) }

// lockWrite takes wmu; unlockWrite flushes unless another writer waits (it will flush), then releases it.
func (c *h2Conn) lockWrite() {
	c.waiters.Add(1)
	c.wmu.Lock()
	c.waiters.Add(-1)
}

func (c *h2Conn) unlockWrite() error {
	if c.werr == nil && c.waiters.Load() == 0 {
		if err := c.bw.Flush(); err != nil {
			c.werr = err
		}
	}
	err := c.werr
	c.wmu.Unlock()
	if err != nil {
		c.close(fmt.Errorf("write to h2 upstream: %w", err))
	}
	return err
}

// writeFrames runs fn with the write side locked and flushes.
func (c *h2Conn) writeFrames(fn func(fr *http2.Framer) error) error {
	c.lockWrite()
	if c.werr == nil {
		c.werr = fn(c.fr)
	}
	return c.unlockWrite()
}

// close fails every stream with err and closes the socket; readLoop then ends.
func (c *h2Conn) close(err error) {
	c.closeOnce.Do(func() {
		c.closing.Store(true)
		c.cl.unpool(c)
		c.mu.Lock()
		c.err = err
		streams := c.streams
		c.streams = map[uint32]*h2Stream{}
		close(c.windowCh)
		c.windowCh = make(chan struct{})
		c.mu.Unlock()
		close(c.done)
		c.nc.Close()
		for _, s := range streams {
			s.fail(err, false)
		}
	})
}

// readLoop reads frames until the connection fails.
func (c *h2Conn) readLoop() {
	err := c.readFrames()
	c.close(err)
}

func (c *h2Conn) readFrames() error {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				// A malformed header block (too large, invalid field) ends the stream, not the connection.
				if s := c.stream(se.StreamID); s != nil {
					s.fail(fmt.Errorf("h2 upstream: %w", se), true)
				} else if werr := c.writeFrames(func(fr *http2.Framer) error { return fr.WriteRSTStream(se.StreamID, se.Code) }); werr != nil {
					return werr
				}
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.goAwayErr(http2.ErrCode(ce))
			}
			return fmt.Errorf("read from h2 upstream: %w", err)
		}
		if n := c.cl.now().UnixNano(); n > c.lastRead.Load() {
			c.lastRead.Store(n)
		}
		if err := c.process(f); err != nil {
			return err
		}
	}
}

// goAwayErr tells the peer why the connection ends (best effort).
func (c *h2Conn) goAwayErr(code http2.ErrCode) {
	_ = c.writeFrames(func(fr *http2.Framer) error { return fr.WriteGoAway(0, code, nil) })
}

// protocolError ends the connection with a PROTOCOL_ERROR GOAWAY.
func (c *h2Conn) protocolError(format string, args ...any) error {
	c.goAwayErr(http2.ErrCodeProtocol)
	return fmt.Errorf("h2 upstream protocol error: "+format, args...)
}

func (c *h2Conn) stream(id uint32) *h2Stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

func (c *h2Conn) process(f http2.Frame) error {
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
		if s := c.stream(f.StreamID); s != nil {
			s.peerResetErr(&h2Error{code: f.ErrCode})
		}
		return nil
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.GoAwayFrame:
		c.onGoAway(f)
		return nil
	case *http2.PushPromiseFrame:
		return c.protocolError("PUSH_PROMISE with push disabled")
	default:
		return nil // PRIORITY and unknown frames are ignored
	}
}

func (c *h2Conn) applySettings(f *http2.SettingsFrame) error {
	var changed []*h2Stream
	var delta int64
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingMaxConcurrentStreams:
			c.maxStr.Store(s.Val)
		case http2.SettingInitialWindowSize:
			c.mu.Lock()
			delta = int64(s.Val) - c.peerInitWin
			c.peerInitWin = int64(s.Val)
			for _, st := range c.streams {
				st.sendWin += delta
				changed = append(changed, st)
			}
			c.mu.Unlock()
		case http2.SettingMaxFrameSize:
			c.mu.Lock()
			c.peerMaxFrame = s.Val
			c.mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return c.protocolError("settings: %v", err)
	}
	if delta > 0 && len(changed) > 0 {
		c.mu.Lock()
		c.growLocked()
		c.mu.Unlock()
	}
	c.cl.mu.Lock()
	c.cl.wakeLocked()
	c.cl.mu.Unlock()
	return nil
}

// growLocked wakes the writers waiting for send window. Called with mu held.
func (c *h2Conn) growLocked() {
	close(c.windowCh)
	c.windowCh = make(chan struct{})
}

func (c *h2Conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		if c.sendWin+int64(f.Increment) > 1<<31-1 {
			c.mu.Unlock()
			err := c.protocolError("connection window overflow")
			c.mu.Lock()
			return err
		}
		c.sendWin += int64(f.Increment)
	} else if s := c.streams[f.StreamID]; s != nil {
		s.sendWin += int64(f.Increment)
	}
	c.growLocked()
	return nil
}

func (c *h2Conn) onGoAway(f *http2.GoAwayFrame) {
	idle := c.cl.unpool(c)
	c.mu.Lock()
	var refused []*h2Stream
	for id, s := range c.streams {
		if id > f.LastStreamID {
			refused = append(refused, s)
		}
	}
	c.mu.Unlock()
	for _, s := range refused {
		s.peerResetErr(&h2Error{code: http2.ErrCodeRefusedStream, goAway: true})
	}
	if idle {
		c.close(errH2ConnClosed)
	}
}

func (c *h2Conn) onHeaders(f *http2.MetaHeadersFrame) error {
	s := c.stream(f.StreamID)
	if s == nil {
		return nil // a stream this side already reset or finished
	}
	return s.onHeaders(f)
}

func (c *h2Conn) onData(f *http2.DataFrame) error {
	n := int64(f.Length) // padding counts towards flow control
	c.mu.Lock()
	if n > c.inflow {
		c.mu.Unlock()
		c.goAwayErr(http2.ErrCodeFlowControl)
		return errors.New("h2 upstream overran the connection window")
	}
	c.inflow -= n
	s := c.streams[f.StreamID]
	c.mu.Unlock()
	if s == nil {
		c.consume(n, nil, 0) // data for a stream already gone: its connection credit comes back now
		return nil
	}
	return s.onData(f.Data(), int(n)-len(f.Data()), f.StreamEnded())
}

// consume accounts n bytes consumed (read, discarded or padding): the connection's credit goes back
// once half its window is consumed; sn is stream credit for s to return with it.
func (c *h2Conn) consume(n int64, s *h2Stream, sn int32) {
	c.mu.Lock()
	c.consumed += n
	var conn uint32
	if c.consumed >= h2ConnWindow/2 {
		conn = uint32(c.consumed)
		c.inflow += c.consumed
		c.consumed = 0
	}
	closed := c.err != nil
	c.mu.Unlock()
	if closed || conn == 0 && sn == 0 {
		return
	}
	_ = c.writeFrames(func(fr *http2.Framer) error {
		if conn > 0 {
			if err := fr.WriteWindowUpdate(0, conn); err != nil {
				return err
			}
		}
		if sn > 0 {
			return fr.WriteWindowUpdate(s.id, uint32(sn))
		}
		return nil
	})
}

// h2Stream is one request on an h2Conn.
type h2Stream struct {
	c   *h2Conn
	id  uint32
	req *http.Request

	sendWin int64 // guarded by c.mu

	mu        sync.Mutex
	notify    chan struct{} // cap 1: the reader has something to look at
	resp      *http.Response
	infos     []*http.Response // informational responses not yet handed to on1xx
	ninfo     int
	buf       []byte
	off       int
	eof       bool // END_STREAM received
	err       error
	inflow    int32       // what the peer may still send on the stream
	consumed  int32       // stream credit not yet returned
	trailer   http.Header // received trailers, published to resp.Trailer at EOF by the reader
	sentEnd   bool        // END_STREAM sent
	peerReset bool        // the peer reset or refused the stream: no RST_STREAM back
	finished  bool
	stopCtx   func() bool
	bodyDone  chan struct{} // closed when the stream finishes: the body writer stops
}

// roundTrip sends req to addr over HTTP/2 and returns the response; its body finishes the stream when
// read to the end or closed. on1xx (may be nil) receives informational responses. body, when not nil,
// is the whole request body (buffered); otherwise req.Body streams.
func (hc *h2Client) roundTrip(ctx context.Context, req *http.Request, addr netip.AddrPort, body []byte, on1xx func(int, http.Header)) (*http.Response, error) {
	c, err := hc.take(ctx, addr)
	if err != nil {
		return nil, err
	}
	s := &h2Stream{c: c, req: req, notify: make(chan struct{}, 1), bodyDone: make(chan struct{}), inflow: h2StreamWindow}
	streamed := body == nil && req.Body != nil && req.Body != http.NoBody && req.ContentLength != 0
	endHeaders := body == nil && !streamed
	if registered, err := c.writeRequestHeaders(s, req, addr, endHeaders, len(body)); err != nil {
		if !registered {
			hc.release(c)
		}
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { s.fail(ctx.Err(), true) })
	s.mu.Lock()
	s.stopCtx = stop
	finished := s.finished
	s.mu.Unlock()
	if finished {
		stop()
	}
	switch {
	case body != nil && s.tryWriteInline(body):
	case body != nil:
		hc.wg.Go(func() { s.writeBody(bytes.NewReader(body)) })
	case streamed:
		hc.wg.Go(func() { s.writeBody(req.Body) })
	}
	for {
		select {
		case <-s.notify:
		case <-ctx.Done():
			s.fail(ctx.Err(), true)
		}
		s.mu.Lock()
		infos := s.infos
		s.infos = nil
		resp, serr := s.resp, s.err
		s.mu.Unlock()
		for _, r := range infos {
			if on1xx != nil {
				on1xx(r.StatusCode, r.Header)
			}
		}
		if resp != nil {
			return resp, nil
		}
		if serr != nil {
			return nil, serr
		}
	}
}

// keyCache remembers a header-name conversion (bounded: past headerCacheMax names it converts without
// remembering), so that the common names cost a map load instead of an allocation per request.
type keyCache struct {
	m sync.Map
	n atomic.Int32
}

const headerCacheMax = 1024

func (c *keyCache) get(k string, convert func(string) string) string {
	if v, ok := c.m.Load(k); ok {
		return v.(string)
	}
	v := convert(k)
	if c.n.Load() < headerCacheMax {
		c.n.Add(1)
		c.m.Store(k, v)
	}
	return v
}

// headerLower maps canonical header keys to their lower-case HTTP/2 names, headerCanon the other way.
var headerLower, headerCanon keyCache

func lowerKey(k string) string { return headerLower.get(k, strings.ToLower) }

func canonKey(l string) string { return headerCanon.get(l, http.CanonicalHeaderKey) }

// h2SkipRequest are the request headers that do not go into an HTTP/2 request (connection-specific or
// pseudo-header sources); Te is sent only as "trailers".
func h2SkipRequest(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade", "Host", "Te", "Content-Length", "Trailer":
		return true
	}
	return false
}

// writeRequestHeaders registers s and writes its HEADERS (and CONTINUATION) frames.
// registered reports whether s was registered (it then owns the slot, released when it finishes).
func (c *h2Conn) writeRequestHeaders(s *h2Stream, req *http.Request, addr netip.AddrPort, endStream bool, bodyLen int) (registered bool, _ error) {
	authority := req.Host
	if authority == "" {
		authority = addr.String()
	}
	path := req.URL.RequestURI()
	c.lockWrite()
	if c.werr != nil {
		err := c.werr
		c.wmu.Unlock()
		return false, &connectError{err: fmt.Errorf("write to h2 upstream: %w", err)}
	}
	c.hbuf.Reset()
	enc := c.henc
	var err error
	w := func(name, value string) {
		if err == nil {
			err = enc.WriteField(hpack.HeaderField{Name: name, Value: value})
		}
	}
	w(":method", req.Method)
	w(":scheme", "http")
	w(":authority", authority)
	w(":path", path)
	for k, vv := range req.Header {
		if h2SkipRequest(k) {
			if k == "Te" && httpguts.HeaderValuesContainsToken(vv, "trailers") {
				w("te", "trailers")
			}
			continue
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
	if bodyLen > 0 {
		w("content-length", strconv.Itoa(bodyLen))
	} else if req.ContentLength > 0 {
		w("content-length", strconv.FormatInt(req.ContentLength, 10))
	}
	if err != nil {
		c.wmu.Unlock()
		return false, fmt.Errorf("encode request headers: %w", err)
	}
	c.mu.Lock()
	if c.err != nil {
		cerr := c.err
		c.mu.Unlock()
		c.wmu.Unlock()
		return false, &connectError{err: cerr}
	}
	s.id = c.nextID
	c.nextID += 2
	s.sendWin = c.peerInitWin
	maxFrame := int(c.peerMaxFrame)
	c.streams[s.id] = s
	c.mu.Unlock()
	if endStream {
		s.sentEnd = true
	}
	block := c.hbuf.Bytes()
	first := block
	if len(first) > maxFrame {
		first = first[:maxFrame]
	}
	block = block[len(first):]
	c.werr = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: s.id, BlockFragment: first, EndStream: endStream, EndHeaders: len(block) == 0})
	for len(block) > 0 && c.werr == nil {
		n := min(len(block), maxFrame)
		c.werr = c.fr.WriteContinuation(s.id, len(block) == n, block[:n])
		block = block[n:]
	}
	if id := c.nextID; id > 1<<31-1-2 && c.werr == nil {
		c.cl.unpool(c) // stream ids exhausted: new requests go to a new connection
	}
	if err := c.unlockWrite(); err != nil {
		s.finish(err, false) // already failed by close: a no-op then
		return true, &connectError{err: err}
	}
	return true, nil
}

// tryWriteInline writes the whole buffered body with END_STREAM now when the send windows allow it.
func (s *h2Stream) tryWriteInline(body []byte) bool {
	c := s.c
	c.mu.Lock()
	ok := int64(len(body)) <= s.sendWin && int64(len(body)) <= c.sendWin && len(body) <= int(c.peerMaxFrame)
	if ok {
		s.sendWin -= int64(len(body))
		c.sendWin -= int64(len(body))
	}
	c.mu.Unlock()
	if !ok {
		return false
	}
	if err := c.writeFrames(func(fr *http2.Framer) error { return fr.WriteData(s.id, true, body) }); err != nil {
		return true // the connection failed: so did s
	}
	s.mu.Lock()
	s.sentEnd = true
	s.mu.Unlock()
	s.maybeFinish()
	return true
}

// reserve waits for send window and returns how many bytes (at most want) s may send now.
func (s *h2Stream) reserve(want int) (int, error) {
	c := s.c
	c.mu.Lock()
	for {
		if c.err != nil {
			err := c.err
			c.mu.Unlock()
			return 0, err
		}
		if n := min(int64(want), s.sendWin, c.sendWin, int64(c.peerMaxFrame)); n > 0 {
			s.sendWin -= n
			c.sendWin -= n
			c.mu.Unlock()
			return int(n), nil
		}
		ch := c.windowCh
		c.mu.Unlock()
		select {
		case <-ch:
		case <-s.bodyDone:
			return 0, errH2ConnClosed
		}
		c.mu.Lock()
	}
}

// writeBody streams r as DATA frames and ends the stream; a read error resets the stream.
func (s *h2Stream) writeBody(r io.Reader) {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp
	for {
		nr, rerr := r.Read(buf)
		p := buf[:nr]
		for len(p) > 0 {
			n, err := s.reserve(len(p))
			if err != nil {
				return
			}
			select {
			case <-s.bodyDone:
				return
			default:
			}
			if err := s.c.writeFrames(func(fr *http2.Framer) error { return fr.WriteData(s.id, false, p[:n]) }); err != nil {
				return
			}
			p = p[n:]
		}
		if rerr == io.EOF {
			select {
			case <-s.bodyDone:
				return
			default:
			}
			if err := s.c.writeFrames(func(fr *http2.Framer) error { return fr.WriteData(s.id, true, nil) }); err != nil {
				return
			}
			s.mu.Lock()
			s.sentEnd = true
			s.mu.Unlock()
			s.maybeFinish()
			return
		}
		if rerr != nil {
			s.fail(fmt.Errorf("read request body: %w", rerr), true)
			return
		}
	}
}

// onHeaders handles a header block for s: informational, final response, or trailers.
func (s *h2Stream) onHeaders(f *http2.MetaHeadersFrame) error {
	s.mu.Lock()
	if s.resp != nil {
		if !f.StreamEnded() {
			s.mu.Unlock()
			s.fail(errors.New("h2 upstream: trailers without END_STREAM"), true)
			return nil
		}
		tr := make(http.Header, len(f.Fields))
		for _, hf := range f.RegularFields() {
			k := canonKey(hf.Name)
			tr[k] = append(tr[k], hf.Value)
		}
		s.trailer = tr
		s.eof = true
		s.mu.Unlock()
		s.wake()
		s.maybeFinish()
		return nil
	}
	s.mu.Unlock()
	status, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || status < 100 || status > 999 {
		s.fail(fmt.Errorf("h2 upstream: bad :status %q", f.PseudoValue("status")), true)
		return nil
	}
	h := make(http.Header, len(f.Fields))
	var trailerKeys []string
	for _, hf := range f.RegularFields() {
		k := canonKey(hf.Name)
		if k == "Trailer" {
			trailerKeys = append(trailerKeys, hf.Value)
			continue
		}
		h[k] = append(h[k], hf.Value)
	}
	resp := &http.Response{StatusCode: status, Status: strconv.Itoa(status) + " " + http.StatusText(status),
		Proto: "HTTP/2.0", ProtoMajor: 2, Header: h, Request: s.req, ContentLength: -1}
	if status < 200 {
		s.mu.Lock()
		s.ninfo++
		n := s.ninfo
		if n <= max1xxResponses && status != http.StatusSwitchingProtocols {
			s.infos = append(s.infos, resp)
		}
		s.mu.Unlock()
		if n > max1xxResponses {
			s.fail(fmt.Errorf("h2 upstream: more than %d informational responses", max1xxResponses), true)
		} else if f.StreamEnded() {
			s.fail(errors.New("h2 upstream: END_STREAM on an informational response"), true)
		} else {
			s.wake()
		}
		return nil
	}
	if cl := h["Content-Length"]; len(cl) == 1 {
		n, err := strconv.ParseInt(cl[0], 10, 64)
		if err != nil || n < 0 {
			s.fail(fmt.Errorf("h2 upstream: bad content-length %q", cl[0]), true)
			return nil
		}
		resp.ContentLength = n
	}
	if len(trailerKeys) > 0 {
		resp.Trailer = http.Header{}
		for _, v := range trailerKeys {
			for k := range strings.SplitSeq(v, ",") {
				if k = strings.TrimSpace(k); k != "" {
					resp.Trailer[canonKey(k)] = nil
				}
			}
		}
	}
	resp.Body = &h2Body{s: s}
	if f.StreamEnded() && resp.ContentLength < 0 {
		resp.ContentLength = 0 // before the response is published: the engine reads it at once
	}
	s.mu.Lock()
	s.resp = resp
	s.eof = f.StreamEnded()
	s.mu.Unlock()
	s.wake()
	if f.StreamEnded() {
		s.maybeFinish()
	}
	return nil
}

// onData buffers a DATA payload for the reader; pad is the padding length (flow-controlled, not data).
func (s *h2Stream) onData(p []byte, pad int, end bool) error {
	s.mu.Lock()
	if s.finished || s.resp == nil {
		s.mu.Unlock()
		if !s.finished {
			s.fail(errors.New("h2 upstream: DATA before the response headers"), true)
		}
		s.c.consume(int64(len(p)+pad), nil, 0)
		return nil
	}
	if s.eof {
		s.mu.Unlock()
		s.fail(errors.New("h2 upstream: DATA after END_STREAM"), true)
		return nil
	}
	if int64(len(p)+pad) > int64(s.inflow) {
		s.mu.Unlock()
		s.fail(errors.New("h2 upstream overran the stream window"), true)
		s.c.consume(int64(len(p)+pad), nil, 0)
		return nil
	}
	s.inflow -= int32(len(p) + pad)
	if s.off == len(s.buf) {
		s.buf, s.off = s.buf[:0], 0
	}
	s.buf = append(s.buf, p...)
	s.consumed += int32(pad)
	s.eof = end
	s.mu.Unlock()
	if pad > 0 {
		s.c.consume(int64(pad), nil, 0)
	}
	s.wake()
	return nil
}

func (s *h2Stream) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// fail ends s with err (the reader sees it); reset sends RST_STREAM CANCEL when the stream is still open.
func (s *h2Stream) fail(err error, reset bool) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
	s.wake()
	s.finish(err, reset)
}

// peerResetErr ends s after the peer reset or refused it. A reset after the complete response (a
// server that answered before reading the whole request body ends it with RST_STREAM NO_ERROR, as
// gRPC servers do) only stops the request body: the response stays readable to its end.
func (s *h2Stream) peerResetErr(err error) {
	s.mu.Lock()
	s.peerReset = true
	complete := s.eof && s.err == nil
	s.mu.Unlock()
	if complete {
		s.finish(nil, false)
		return
	}
	s.fail(err, false)
}

// maybeFinish finishes s cleanly once the response is complete, the reader has seen it and the request
// was sent.
func (s *h2Stream) maybeFinish() {
	s.mu.Lock()
	done := s.eof && s.sentEnd && s.off == len(s.buf) && s.resp != nil
	s.mu.Unlock()
	if done {
		s.finish(nil, false)
	}
}

// finish removes s from its connection once, resetting it when reset (or when either side is still
// open), returns its unread connection credit and releases its slot.
func (s *h2Stream) finish(err error, reset bool) {
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return
	}
	s.finished = true
	if s.err == nil && !s.eof {
		s.err = err
		if err == nil {
			s.err = errors.New("h2 upstream: response body closed")
		}
	}
	open := !s.peerReset && (!s.eof || !s.sentEnd)
	var unread int64
	if s.err != nil { // the reader gets the error: what it has not read is dropped
		unread = int64(len(s.buf) - s.off)
		s.buf, s.off = nil, 0
	}
	close(s.bodyDone)
	stop := s.stopCtx
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
	c := s.c
	c.mu.Lock()
	_, registered := c.streams[s.id]
	delete(c.streams, s.id)
	closed := c.err != nil
	c.mu.Unlock()
	if registered && !closed && (reset || open) {
		_ = c.writeFrames(func(fr *http2.Framer) error { return fr.WriteRSTStream(s.id, http2.ErrCodeCancel) })
	}
	if unread > 0 {
		c.consume(unread, nil, 0)
	}
	s.wake()
	c.cl.release(c)
}

// h2Body is a response body.
type h2Body struct {
	s *h2Stream
}

func (b *h2Body) Read(p []byte) (int, error) {
	s := b.s
	for {
		s.mu.Lock()
		if s.off < len(s.buf) {
			n := copy(p, s.buf[s.off:])
			s.off += n
			s.consumed += int32(n)
			var sn int32
			if s.consumed >= h2StreamWindow/4 && !s.eof {
				sn, s.consumed = s.consumed, 0
				s.inflow += sn
			}
			drained := s.off == len(s.buf) && s.eof
			s.mu.Unlock()
			s.c.consume(int64(n), s, sn)
			if drained {
				s.maybeFinish()
			}
			return n, nil
		}
		if s.err != nil {
			err := s.err
			s.mu.Unlock()
			return 0, err
		}
		if s.eof {
			if s.trailer != nil {
				if s.resp.Trailer == nil {
					s.resp.Trailer = s.trailer
				} else {
					for k, vv := range s.trailer {
						s.resp.Trailer[k] = vv
					}
				}
				s.trailer = nil
			}
			s.mu.Unlock()
			s.maybeFinish()
			return 0, io.EOF
		}
		s.mu.Unlock()
		<-s.notify
	}
}

// Close finishes the stream; an unfinished one is reset (CANCEL).
func (b *h2Body) Close() error {
	b.s.finish(nil, false)
	return nil
}
