package hbone

// conn.go: one HTTP/2 connection carrying HBONE streams, in either role: its state, the stream
// lifecycle (open, end, reset, go away) and closing. The rest of the connection is split as x/net/http2
// splits its own: read.go (readLoop and inbound frames), write.go (the write lock, the control queue and
// outbound frames), flow.go (flow-control accounting), keepalive.go (PING keepalive), flood.go (flood
// limits), idle.go (idle timeouts).
//
// Invariants:
//   - mu guards the stream map, the send windows, the peer's settings, the control queue and the
//     go-away/closed state. Stream.rmu guards one stream's receive side. mu and an rmu are never held
//     together, and neither is held across I/O or while waiting for wsem (wsem may be held while taking
//     mu).
//   - A stream is in streams from its HEADERS until it is closed both ways or reset; leaving calls
//     cfg.onStreamDone exactly once. A connection that is going away closes when its last stream leaves:
//     readLoop stops, lets the GOAWAY out, half-closes and drains the peer's input for at most
//     lingerTimeout (closeAfterGoAway), so that a peer that opened a stream meanwhile reads the GOAWAY,
//     which refuses that stream (safe to retry), instead of losing it to a RST.
//   - Server: a stream counts towards MAX_CONCURRENT_STREAMS from its HEADERS until its handler has
//     returned (handlers), even if the peer reset it earlier; streams beyond the limit wait in unstarted
//     for a handler slot (flood.go).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const (
	readBufSize  = 4 << 10  // br: frame headers and control frames; DATA payloads bypass it
	writeBufSize = 16 << 10 // bw: one TLS record
	pieceSize    = 16 << 10 // DATA is published to a stream one TLS record at a time
	tlsRecord    = 16 << 10 // crypto/tls's largest record payload
)

// lingerTimeout bounds how long a connection that sent GOAWAY for a connection error waits for the write
// lock and then drains the peer's input before closing (x/net/http2's goAwayTimeout is the same second).
const lingerTimeout = time.Second

// connConfig is what a conn needs from its owner (Server or Pool).
type connConfig struct {
	server    bool
	settings  Settings // ours, defaults applied
	keepalive keepalive
	logger    *slog.Logger
	// onStreamDone is called once for every stream that leaves the connection, and once for every
	// openStream call that failed before registering its stream. Called without locks held.
	onStreamDone func()
	// onRequest (server) receives a new request stream; it must not block. The fields are a copy.
	onRequest func(s *Stream, fields []hpack.HeaderField, truncated bool)
	// onClose is called once when the connection has closed.
	onClose func(err error)
	// onGoAway (client) is called when the peer sends GOAWAY, before the connection closes, and when a
	// stream is refused because the connection is going away or closed; it must be idempotent.
	onGoAway func()
	// idleTimeout (server) closes the connection with GOAWAY once it has had no stream and no running
	// handler for this long; zero disables it.
	idleTimeout time.Duration
	// streamIdleTimeout is every new stream's idle timeout (Stream.SetIdleTimeout); zero disables it.
	streamIdleTimeout time.Duration
	// stats receives the connection's events; nil discards them.
	stats *counters
}

type conn struct {
	cfg    connConfig
	nc     net.Conn   // the TLS connection
	sock   *coalescer // the socket under nc; nil when nc is not TLS over a coalescer (fuzz tests)
	br     *bufio.Reader
	fr     *http2.Framer
	piece  []byte      // readLoop's buffer for the next piece of DATA, within one frame
	spare  spareChunks // pieces recycled by readers
	peerID spiffeid.ID
	local  netip.AddrPort
	remote netip.AddrPort

	// write side, owned by the holder of wsem
	wsem    chan struct{}
	wwait   atomic.Int32 // goroutines waiting for wsem
	dirty   atomic.Bool  // bw holds unflushed bytes
	ctrlNew atomic.Bool  // ctrl is not empty
	bw      writeBuf     // released while the connection has no stream (wbuf.go)
	henc    *hpack.Encoder
	hbuf    bytes.Buffer
	hdr     [9]byte

	done         chan struct{} // closed when the connection is closed
	readerDone   chan struct{} // closed when readLoop returned
	settingsRecv chan struct{} // closed at the peer's first SETTINGS
	closeOnce    sync.Once
	lingering    atomic.Bool  // readLoop holds the closed socket open to drain it (closeAfterGoAway)
	streamCount  atomic.Int32 // len(streams), readable without mu
	handlerCount atomic.Int32 // handlers, readable without mu
	draining     atomic.Bool  // going away with no stream left: readLoop is told to finish (finishGoAway)
	flushing     atomic.Bool  // a flusher goroutine runs (kick)
	flushers     sync.WaitGroup
	ctrlFull     atomic.Bool   // the control queue reached maxQueuedControlFrames
	dataUnits    atomic.Uint64 // DATA sent, in dataUnit bytes rounded up (writers)
	opened       atomic.Uint64 // streams opened on the connection, by either side
	idleHeld     atomic.Bool   // buffers may be held that an idle connection gives back (wbuf.go)

	// readLoop only
	guard headerGuard
	flood floodCounters

	mu             sync.Mutex
	streams        map[uint32]*Stream
	nextID         uint32 // client: id of the next stream to open
	maxPeerID      uint32 // server: highest stream id the peer opened
	sendWindow     int64
	sendWindowCh   chan struct{} // closed (and replaced) when sendWindow turns positive
	recvWindow     int64         // connection-level bytes the peer may still send
	recvUnacked    int64         // consumed bytes not yet credited back
	peerMaxFrame   uint32
	peerInitWindow int64
	peerMaxStreams uint32
	peerTableSize  uint32 // latest SETTINGS_HEADER_TABLE_SIZE, applied by the next HEADERS writer
	tableSizeDirty bool
	ctrl           []ctrlFrame
	ctrlSpare      []ctrlFrame // the drained queue's array, reused
	goAwaySent     bool
	goAwayRecv     bool
	closed         bool
	closeErr       error
	pingOut        bool
	pingData       [8]byte
	pingSent       time.Time
	kaTimer        *time.Timer
	handlers       int       // server: running handlers
	unstarted      []*Stream // server: streams waiting for a handler slot, in order
	idleSince      time.Time // server: when the connection last had no stream and no handler
	idleTimer      *time.Timer
}

// newConn wraps an established TLS connection (ALPN h2 already checked). The caller has consumed nothing
// from nc; on the server the client preface is read by run.
func newConn(nc net.Conn, sock *coalescer, cfg connConfig, peer spiffeid.ID) *conn {
	c := &conn{
		sock:           sock,
		cfg:            cfg,
		nc:             nc,
		br:             bufio.NewReaderSize(nc, readBufSize),
		bw:             writeBuf{w: nc},
		peerID:         peer,
		local:          addrPortOf(nc.LocalAddr()),
		remote:         addrPortOf(nc.RemoteAddr()),
		wsem:           make(chan struct{}, 1),
		done:           make(chan struct{}),
		readerDone:     make(chan struct{}),
		settingsRecv:   make(chan struct{}),
		streams:        make(map[uint32]*Stream),
		nextID:         1,
		sendWindow:     http2DefaultWindow,
		sendWindowCh:   make(chan struct{}),
		recvWindow:     int64(cfg.settings.ConnWindow),
		peerMaxFrame:   http2DefaultFrameSize,
		peerInitWindow: http2DefaultWindow,
		peerMaxStreams: 1<<32 - 1,
	}
	c.guard.r = c.br
	c.fr = http2.NewFramer(&c.bw, &c.guard)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = cfg.settings.MaxHeaderListSize
	c.fr.SetMaxReadFrameSize(cfg.settings.MaxFrameSize)
	c.henc = hpack.NewEncoder(&c.hbuf)
	return c
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// start writes this side's preface (client magic, SETTINGS, connection WINDOW_UPDATE). The caller then
// runs readLoop on its own goroutine.
func (c *conn) start() error {
	if err := c.lockWrite(nil, nil); err != nil {
		return err
	}
	var err error
	if !c.cfg.server {
		_, err = c.bw.WriteString(http2.ClientPreface)
	}
	s := c.cfg.settings
	settings := []http2.Setting{
		{ID: http2.SettingInitialWindowSize, Val: s.StreamWindow},
		{ID: http2.SettingMaxFrameSize, Val: s.MaxFrameSize},
		{ID: http2.SettingMaxHeaderListSize, Val: s.MaxHeaderListSize},
	}
	if c.cfg.server {
		settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: s.MaxConcurrentStreams})
	} else {
		settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	}
	if err == nil {
		err = c.fr.WriteSettings(settings...)
	}
	if err == nil && s.ConnWindow > http2DefaultWindow {
		err = c.fr.WriteWindowUpdate(0, s.ConnWindow-http2DefaultWindow)
	}
	c.dirty.Store(true)
	c.unlockWrite()
	if err != nil {
		return fmt.Errorf("write preface: %w", err)
	}
	c.startKeepalive()
	c.startIdleTimer()
	return nil
}

// removeLocked takes s out of the stream map; the caller calls streamLeft after unlocking.
func (c *conn) removeLocked(s *Stream) {
	if _, ok := c.streams[s.id]; ok {
		delete(c.streams, s.id)
		c.streamCount.Add(-1)
		s.req = nil // a stream still waiting for a handler slot never gets one
		c.markIdleLocked()
	}
}

// streamLeft reports one departed stream to the owner, gives back the buffers of a connection left
// without streams and closes a connection going away once empty. reader: called by readLoop.
func (c *conn) streamLeft(reader bool) {
	if c.cfg.onStreamDone != nil {
		c.cfg.onStreamDone()
	}
	c.releaseIdle(reader)
	c.maybeCloseIdle()
}

// maybeCloseIdle closes a connection that is going away once no stream is left: gracefully when this
// side sent the GOAWAY (finishGoAway), at once when only the peer did.
func (c *conn) maybeCloseIdle() {
	c.mu.Lock()
	empty := len(c.streams) == 0 && !c.closed
	sent, recv := c.goAwaySent, c.goAwayRecv
	c.mu.Unlock()
	switch {
	case !empty:
	case sent:
		c.finishGoAway()
	case recv:
		c.close(nil)
	}
}

// finishGoAway ends a connection that sent GOAWAY and has no stream left: it interrupts readLoop's read,
// and readLoop then closes the connection once the GOAWAY is out (closeAfterGoAway), so that a stream the
// peer opened meanwhile is refused by the GOAWAY it reads rather than lost to a RST.
func (c *conn) finishGoAway() {
	if c.draining.CompareAndSwap(false, true) {
		_ = c.nc.SetReadDeadline(time.Unix(1, 0))
	}
}

// remoteEnd records END_STREAM from the peer.
func (c *conn) remoteEnd(s *Stream) {
	s.rmu.Lock()
	s.remoteEOFLocked()
	s.rmu.Unlock()
	c.mu.Lock()
	s.remoteEnded = true
	// Gone when both sides ended, unless Close or a reset removed it meanwhile (readLoop held s since
	// before): its departure was reported then, and a second report would free its pool slot twice.
	gone := s.localEnded && c.streams[s.id] == s
	if gone {
		c.removeLocked(s)
	}
	c.mu.Unlock()
	if gone {
		c.streamLeft(true)
	}
}

// resetStream (readLoop) sends RST_STREAM(code) for id because of the peer's error and, if the stream is
// open here, fails it. It returns a connection error once the peer has caused too many such resets.
func (c *conn) resetStream(id uint32, code http2.ErrCode) error {
	c.mu.Lock()
	s := c.streams[id]
	if s != nil {
		c.removeLocked(s)
	}
	c.queueLocked(ctrlFrame{kind: ctrlRST, streamID: id, code: code})
	c.mu.Unlock()
	c.kick()
	if s != nil {
		s.fail(&ResetError{Code: code})
		c.streamLeft(true)
	}
	return c.countLocalReset()
}

// handlerDone (server) frees the handler slot of a stream whose handler returned and starts the handlers
// of streams waiting for one, skipping those the peer reset meanwhile.
func (c *conn) handlerDone() {
	type request struct {
		s         *Stream
		fields    []hpack.HeaderField
		truncated bool
	}
	var next []request
	c.mu.Lock()
	c.handlers--
	limit := int(c.cfg.settings.MaxConcurrentStreams)
	i := 0
	for ; i < len(c.unstarted) && c.handlers < limit; i++ {
		s := c.unstarted[i]
		c.unstarted[i] = nil
		if c.streams[s.id] != s || s.req == nil {
			continue // reset before its handler could start
		}
		c.handlers++
		next = append(next, request{s, s.req, s.reqTruncated})
		s.req = nil
	}
	c.unstarted = c.unstarted[i:]
	if len(c.unstarted) == 0 {
		c.unstarted = nil
	}
	c.handlerCount.Store(int32(c.handlers))
	c.markIdleLocked()
	c.mu.Unlock()
	for _, r := range next {
		c.cfg.onRequest(r.s, r.fields, r.truncated)
	}
}

// openStream starts a CONNECT stream (client) and waits for the response headers. The stream is
// returned only on 200; other statuses are *StatusError. Whatever happens, cfg.onStreamDone is called
// once for this call when the stream ends or fails.
func (c *conn) openStream(ctx context.Context, fields []hpack.HeaderField) (*Stream, error) {
	if err := c.lockWrite(ctx.Done(), nil); err != nil {
		c.cfg.onStreamDone()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	c.mu.Lock()
	if c.closed || c.goAwayRecv || c.goAwaySent || c.nextID > maxWindow {
		exhausted := !c.closed && c.nextID > maxWindow && !c.goAwaySent
		if exhausted {
			// Out of stream ids: drain like a GOAWAY so the pool dials a fresh connection.
			c.goAwaySent = true
			c.queueLocked(ctrlFrame{kind: ctrlGoAway, code: http2.ErrCodeNo})
		}
		c.mu.Unlock()
		c.unlockWrite()
		if c.cfg.onGoAway != nil {
			// Unpool it now: readLoop may not have told the pool yet, and a retry must not find it again.
			c.cfg.onGoAway()
		}
		c.streamLeft(false)
		return nil, errRefused
	}
	s := newStream(c, c.nextID)
	c.nextID += 2
	s.sendWindow = c.peerInitWindow
	s.client = true
	c.streams[s.id] = s
	c.streamCount.Add(1)
	c.opened.Add(1)
	c.busyLocked()
	c.mu.Unlock()
	s.startIdle(c.cfg.streamIdleTimeout)
	err := c.writeHeadersLocked(s.id, fields, false)
	c.unlockWrite()
	if err != nil {
		c.mu.Lock()
		c.removeLocked(s)
		c.mu.Unlock()
		s.fail(err)
		c.streamLeft(false)
		return nil, err
	}
	if err := s.waitResponse(ctx); err != nil {
		_ = s.Close()
		return nil, err
	}
	if s.respErr != nil {
		_ = s.Close()
		return nil, s.respErr
	}
	if s.status != 200 {
		_ = s.Close()
		return nil, &StatusError{Code: s.status, Err: errors.New("peer refused CONNECT")}
	}
	return s, nil
}

// goAway starts a graceful close: GOAWAY(NO_ERROR) now, close once no stream is left.
func (c *conn) goAway() {
	c.mu.Lock()
	if !c.goAwaySent {
		c.goAwaySent = true
		c.queueLocked(ctrlFrame{kind: ctrlGoAway, val: c.maxPeerID, code: http2.ErrCodeNo})
	}
	c.mu.Unlock()
	c.settle()
	c.maybeCloseIdle()
}

// close closes the connection (err nil for a clean close) and fails every stream still open. Called again,
// or during closeAfterGoAway's linger, it closes the socket at once.
func (c *conn) close(err error) {
	c.closeOnce.Do(func() { c.shut(err, true) })
	if c.lingering.Load() {
		_ = c.nc.Close()
	}
}

// shut does close's work, in closeOnce; the socket stays open unless closeSocket.
func (c *conn) shut(err error, closeSocket bool) {
	c.mu.Lock()
	c.closed = true
	c.closeErr = err
	streams := make([]*Stream, 0, len(c.streams))
	for _, s := range c.streams {
		streams = append(streams, s)
	}
	clear(c.streams)
	c.streamCount.Store(0)
	if c.kaTimer != nil {
		c.kaTimer.Stop()
	}
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	close(c.done)
	c.mu.Unlock()
	if err == nil || errors.Is(err, ErrKeepaliveTimeout) || errors.As(err, new(connError)) {
		// Let a queued GOAWAY out first when the write lock is free; never wait for it, nor for a peer
		// that does not read.
		select {
		case c.wsem <- struct{}{}:
			_ = c.nc.SetWriteDeadline(time.Now().Add(lingerTimeout))
			c.writeCtrlLocked()
			if c.bw.Flush() == nil && c.sock != nil {
				_ = c.sock.setBatching(false)
			}
			<-c.wsem
		default:
		}
	}
	if closeSocket {
		_ = c.nc.Close()
	}
	ferr := ErrConnClosed
	if err != nil && !errors.Is(err, io.EOF) {
		ferr = fmt.Errorf("%w: %w", ErrConnClosed, err)
	}
	for _, s := range streams {
		s.fail(ferr)
		if c.cfg.onStreamDone != nil {
			c.cfg.onStreamDone()
		}
	}
	if c.cfg.onClose != nil {
		c.cfg.onClose(err)
	}
}

// err returns the reason the connection closed.
func (c *conn) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeErr != nil {
		return fmt.Errorf("%w: %w", ErrConnClosed, c.closeErr)
	}
	return ErrConnClosed
}

// signal wakes the goroutine waiting on ch (capacity 1) without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
