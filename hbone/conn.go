package hbone

// conn.go: one HTTP/2 connection carrying HBONE streams, in either role.
//
// Invariants:
//   - One goroutine, readLoop, reads the socket (through br and fr). It never waits for the write lock
//     while reading: frames it must send (SETTINGS and PING acks, RST_STREAM, GOAWAY), like the
//     WINDOW_UPDATEs that readers return, go into the control queue and are written by whoever holds or
//     next takes the write lock. Only after a connection error, when it has stopped reading frames, does
//     it wait (bounded) for the lock, to get its GOAWAY out before the connection closes
//     (closeAfterGoAway).
//   - Bytes reach the socket only while holding the write lock wsem (a 1-slot channel, so that waiting
//     for it can be cancelled): bw, the Framer's write side and the hpack encoder belong to the holder.
//     Before releasing, the holder writes the queued control frames and flushes bw unless another writer
//     is waiting, so the last writer out flushes; settle re-checks after each release so that nothing
//     queued is stranded.
//   - mu guards the stream map, the send windows, the peer's settings, the control queue and the
//     go-away/closed state. Stream.rmu guards one stream's receive side. mu and an rmu are never held
//     together, and neither is held across I/O or while waiting for wsem (wsem may be held while taking
//     mu).
//   - Flow control: readLoop charges the receive windows when DATA arrives; they are recredited when the
//     application reads (or the bytes are discarded) and the credit goes back to the peer in
//     WINDOW_UPDATEs of at least a quarter window. Writers reserve send window frame by frame, before
//     taking wsem.
//   - A stream is in streams from its HEADERS until it is closed both ways or reset; leaving calls
//     cfg.onStreamDone exactly once. A connection that is going away closes when its last stream leaves.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"strconv"
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
	// onGoAway (client) is called when the peer sends GOAWAY, before the connection closes.
	onGoAway func()
}

type ctrlKind uint8

const (
	ctrlSettingsAck ctrlKind = iota
	ctrlPing
	ctrlPingAck
	ctrlWindowUpdate
	ctrlRST
	ctrlGoAway
	ctrlEndStream // empty DATA with END_STREAM
)

type ctrlFrame struct {
	kind     ctrlKind
	streamID uint32
	val      uint32 // window increment, or last stream id for GOAWAY
	code     http2.ErrCode
	data     [8]byte
}

type conn struct {
	cfg    connConfig
	nc     net.Conn   // the TLS connection
	sock   *coalescer // the socket under nc; nil when nc is not TLS over a coalescer (fuzz tests)
	br     *bufio.Reader
	fr     *http2.Framer
	piece  []byte      // readLoop's buffer for the next piece of DATA
	spare  spareChunks // pieces recycled by readers
	peerID spiffeid.ID
	local  netip.AddrPort
	remote netip.AddrPort

	// write side, owned by the holder of wsem
	wsem    chan struct{}
	wwait   atomic.Int32 // goroutines waiting for wsem
	dirty   atomic.Bool  // bw holds unflushed bytes
	ctrlNew atomic.Bool  // ctrl is not empty
	bw      *bufio.Writer
	henc    *hpack.Encoder
	hbuf    bytes.Buffer
	hdr     [9]byte

	done         chan struct{} // closed when the connection is closed
	readerDone   chan struct{} // closed when readLoop returned
	settingsRecv chan struct{} // closed at the peer's first SETTINGS
	closeOnce    sync.Once
	lingering    atomic.Bool  // readLoop holds the closed socket open to drain it (closeAfterGoAway)
	streamCount  atomic.Int32 // len(streams), readable without mu

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
}

// newConn wraps an established TLS connection (ALPN h2 already checked). The caller has consumed nothing
// from nc; on the server the client preface is read by run.
func newConn(nc net.Conn, sock *coalescer, cfg connConfig, peer spiffeid.ID) *conn {
	c := &conn{
		sock:           sock,
		cfg:            cfg,
		nc:             nc,
		br:             bufio.NewReaderSize(nc, readBufSize),
		bw:             bufio.NewWriterSize(nc, writeBufSize),
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
	c.fr = http2.NewFramer(c.bw, c.br)
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
	return nil
}

// readLoop reads frames until the connection fails or closes, then closes it.
func (c *conn) readLoop() {
	defer close(c.readerDone)
	err := c.readFrames()
	if errors.As(err, new(connError)) {
		c.closeAfterGoAway(err)
		return
	}
	c.close(err)
}

// closeAfterGoAway closes the connection after readLoop found a connection error, for which goAwayErr
// queued a GOAWAY, so that the peer reads that GOAWAY before the connection ends:
//   - Unlike close, it waits for the write lock (at most lingerTimeout: a write deadline makes a holder
//     stuck on a peer that does not read give up) and writes and flushes the GOAWAY itself if the holder
//     has not, so that closing cannot overtake a GOAWAY sitting in bw or in the coalescer.
//   - Closing a socket with unread input makes the kernel send RST instead of FIN, and a RST discards
//     whatever the peer has not read yet, the GOAWAY included (the peer typically is still sending:
//     that is what broke flow control). So it half-closes (TLS close_notify, TCP FIN), then reads and
//     discards the peer's input until the peer closes or lingerTimeout passes, and only then closes.
//     x/net/http2 waits a second for the same reason (golang.org/issue/18701).
//
// Streams fail and onClose runs before the linger. It holds the write lock until the socket is closed,
// so nothing else is written after the GOAWAY; a close call during the linger closes the socket at once.
func (c *conn) closeAfterGoAway(err error) {
	deadline := time.Now().Add(lingerTimeout)
	_ = c.nc.SetWriteDeadline(deadline)
	t := time.NewTimer(lingerTimeout)
	defer t.Stop()
	select {
	case c.wsem <- struct{}{}:
	case <-c.done: // a write failed, or the owner closed the connection
		c.close(err)
		return
	case <-t.C:
		c.close(err)
		return
	}
	defer func() { <-c.wsem }()
	c.writeCtrlLocked()
	if c.bw.Flush() == nil && c.sock != nil {
		_ = c.sock.setBatching(false)
	}
	shut := false
	c.closeOnce.Do(func() {
		shut = true
		c.lingering.Store(true)
		c.shut(err, false)
	})
	if !shut {
		return // closed meanwhile (writeCtrlLocked failed): the socket is closed
	}
	defer c.close(err) // closes the socket (shut did not)
	raw := c.nc
	if c.sock != nil {
		raw = c.sock.Conn
	}
	if tc, ok := c.nc.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite() // *tls.Conn: close_notify
	}
	if raw != c.nc {
		if tc, ok := raw.(interface{ CloseWrite() error }); ok {
			_ = tc.CloseWrite() // *net.TCPConn: FIN
		}
	}
	// The TLS layer is done with: drain the socket itself, nothing needs decrypting.
	_ = raw.SetReadDeadline(deadline)
	var buf [4 << 10]byte
	for {
		if _, err := raw.Read(buf[:]); err != nil {
			return
		}
	}
}

// connError is a connection error found while reading, sent to the peer in a GOAWAY before closing.
type connError struct {
	code   http2.ErrCode
	reason string
}

func (e connError) Error() string {
	return "hbone: connection error: " + e.code.String() + ": " + e.reason
}

func (c *conn) readFrames() error {
	if c.cfg.server {
		var pre [len(http2.ClientPreface)]byte
		if _, err := io.ReadFull(c.br, pre[:]); err != nil {
			return fmt.Errorf("read client preface: %w", err)
		}
		if string(pre[:]) != http2.ClientPreface {
			return fmt.Errorf("read client preface: %w", ErrNotH2)
		}
	}
	first := true
	for {
		fh, err := c.fr.ReadFrameHeader()
		if err != nil {
			return c.readError(err)
		}
		if first {
			if fh.Type != http2.FrameSettings || fh.Flags.Has(http2.FlagSettingsAck) {
				return c.goAwayErr(connError{http2.ErrCodeProtocol, "first frame is not SETTINGS"})
			}
			first = false
		}
		if fh.Type == http2.FrameData {
			if err := c.readData(fh); err != nil {
				return c.goAwayErr(err)
			}
			continue
		}
		f, err := c.fr.ReadFrameForHeader(fh)
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetStream(se.StreamID, se.Code)
				continue
			}
			return c.readError(err)
		}
		if err := c.processFrame(f); err != nil {
			return c.goAwayErr(err)
		}
	}
}

// readError turns a Framer read error into the connection's close error, telling the peer when it broke
// the protocol.
func (c *conn) readError(err error) error {
	var ce http2.ConnectionError
	switch {
	case errors.Is(err, http2.ErrFrameTooLarge):
		return c.goAwayErr(connError{http2.ErrCodeFrameSize, "frame too large"})
	case errors.As(err, &ce):
		reason := "frame error"
		if d := c.fr.ErrorDetail(); d != nil {
			reason = d.Error()
		}
		return c.goAwayErr(connError{http2.ErrCode(ce), reason})
	}
	return err
}

// goAwayErr queues a GOAWAY for a connError and returns err for close.
func (c *conn) goAwayErr(err error) error {
	var ce connError
	if errors.As(err, &ce) {
		c.mu.Lock()
		c.queueLocked(ctrlFrame{kind: ctrlGoAway, val: c.maxPeerID, code: ce.code})
		c.goAwaySent = true
		c.mu.Unlock()
		c.settle()
	}
	return err
}

func (c *conn) processFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		return c.applySettings(f)
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.PingFrame:
		c.onPing(f)
	case *http2.RSTStreamFrame:
		return c.onRST(f)
	case *http2.GoAwayFrame:
		c.onGoAway(f)
	case *http2.PushPromiseFrame:
		return connError{http2.ErrCodeProtocol, "PUSH_PROMISE"}
	}
	// PRIORITY, PRIORITY_UPDATE and unknown frames are ignored.
	return nil
}

func (c *conn) applySettings(f *http2.SettingsFrame) error {
	var wake []*Stream
	c.mu.Lock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return connError{http2.ErrCode(err.(http2.ConnectionError)), "bad setting " + s.String()}
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerInitWindow
			c.peerInitWindow = int64(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
				if st.sendWindow > maxWindow {
					return connError{http2.ErrCodeFlowControl, "stream window overflow"}
				}
				wake = append(wake, st)
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = s.Val
		case http2.SettingHeaderTableSize:
			c.peerTableSize = s.Val
			c.tableSizeDirty = true
		}
		return nil
	})
	if err == nil {
		c.queueLocked(ctrlFrame{kind: ctrlSettingsAck})
	}
	c.mu.Unlock()
	if err != nil {
		return err
	}
	for _, st := range wake {
		signal(st.wready)
	}
	select {
	case <-c.settingsRecv:
	default:
		close(c.settingsRecv)
	}
	c.settle()
	return nil
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	c.mu.Lock()
	if f.StreamID == 0 {
		was := c.sendWindow
		c.sendWindow += inc
		if c.sendWindow > maxWindow {
			c.mu.Unlock()
			return connError{http2.ErrCodeFlowControl, "connection window overflow"}
		}
		if was <= 0 && c.sendWindow > 0 {
			close(c.sendWindowCh)
			c.sendWindowCh = make(chan struct{})
		}
		c.mu.Unlock()
		return nil
	}
	s := c.streams[f.StreamID]
	if s == nil {
		idle := c.idleLocked(f.StreamID)
		c.mu.Unlock()
		if idle {
			return connError{http2.ErrCodeProtocol, "WINDOW_UPDATE on idle stream"}
		}
		return nil
	}
	s.sendWindow += inc
	overflow := s.sendWindow > maxWindow
	c.mu.Unlock()
	if overflow {
		c.resetStream(f.StreamID, http2.ErrCodeFlowControl)
		return nil
	}
	signal(s.wready)
	return nil
}

func (c *conn) onPing(f *http2.PingFrame) {
	c.mu.Lock()
	if !f.IsAck() {
		c.queueLocked(ctrlFrame{kind: ctrlPingAck, data: f.Data})
		c.mu.Unlock()
		c.settle()
		return
	}
	if c.pingOut && f.Data == c.pingData {
		c.pingOut = false
	}
	c.mu.Unlock()
}

func (c *conn) onRST(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	s := c.streams[f.StreamID]
	if s == nil {
		idle := c.idleLocked(f.StreamID)
		c.mu.Unlock()
		if idle {
			return connError{http2.ErrCodeProtocol, "RST_STREAM on idle stream"}
		}
		return nil
	}
	c.removeLocked(s)
	c.mu.Unlock()
	s.peerReset(f.ErrCode)
	c.streamLeft()
	return nil
}

func (c *conn) onGoAway(f *http2.GoAwayFrame) {
	var refused []*Stream
	c.mu.Lock()
	c.goAwayRecv = true
	for id, s := range c.streams {
		if id > f.LastStreamID && (id%2 == 1) != c.cfg.server {
			refused = append(refused, s)
			c.removeLocked(s)
		}
	}
	c.mu.Unlock()
	if f.ErrCode != http2.ErrCodeNo {
		c.cfg.logger.Debug("peer sent GOAWAY", "code", f.ErrCode.String(), "debug", string(f.DebugData()))
	}
	if c.cfg.onGoAway != nil {
		c.cfg.onGoAway()
	}
	for _, s := range refused {
		s.fail(errRefused)
		c.streamLeft()
	}
	c.maybeCloseIdle()
}

// idleLocked reports whether id names a stream that was never opened, a protocol error to mention.
func (c *conn) idleLocked(id uint32) bool {
	if (id%2 == 1) == c.cfg.server { // peer-initiated
		return id > c.maxPeerID
	}
	return id >= c.nextID
}

// onHeaders handles a complete header block: a new request (server), a response or trailers.
func (c *conn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	s := c.streams[id]
	if s == nil && c.cfg.server && id%2 == 1 && id > c.maxPeerID {
		return c.newPeerStreamLocked(f) // unlocks
	}
	if s == nil {
		idle := c.idleLocked(id)
		c.mu.Unlock()
		if idle {
			return connError{http2.ErrCodeProtocol, "HEADERS on idle stream " + strconv.Itoa(int(id))}
		}
		c.resetStream(id, http2.ErrCodeStreamClosed)
		return nil
	}
	c.mu.Unlock()
	if c.cfg.server || s.responded() {
		// Trailers: HBONE sends none, but a trailer block that ends the stream is a clean end.
		if !f.StreamEnded() {
			c.resetStream(id, http2.ErrCodeProtocol)
			return nil
		}
		c.remoteEnd(s)
		return nil
	}
	status, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || status < 100 || status > 999 {
		c.resetStream(id, http2.ErrCodeProtocol)
		return nil
	}
	if status < 200 {
		if f.StreamEnded() {
			c.resetStream(id, http2.ErrCodeProtocol)
		}
		return nil // informational
	}
	s.setResponse(status, headerOf(f.RegularFields()))
	if f.StreamEnded() {
		c.remoteEnd(s)
	}
	return nil
}

func (c *conn) newPeerStreamLocked(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.maxPeerID = id
	if c.goAwaySent || uint32(len(c.streams)) >= c.cfg.settings.MaxConcurrentStreams {
		c.queueLocked(ctrlFrame{kind: ctrlRST, streamID: id, code: http2.ErrCodeRefusedStream})
		c.mu.Unlock()
		c.settle()
		return nil
	}
	s := newStream(c, id)
	s.sendWindow = c.peerInitWindow
	c.streams[id] = s
	c.streamCount.Add(1)
	c.mu.Unlock()
	if f.StreamEnded() {
		c.remoteEnd(s)
	}
	fields := make([]hpack.HeaderField, len(f.Fields))
	copy(fields, f.Fields)
	c.cfg.onRequest(s, fields, f.Truncated)
	return nil
}

func headerOf(fields []hpack.HeaderField) map[string][]string {
	if len(fields) == 0 {
		return nil
	}
	h := make(map[string][]string, len(fields))
	for _, f := range fields {
		k := textproto.CanonicalMIMEHeaderKey(f.Name)
		h[k] = append(h[k], f.Value)
	}
	return h
}

// readData handles one DATA frame whose header was read: it charges flow control and hands the payload
// to the stream (or discards it), reading the payload from br.
func (c *conn) readData(fh http2.FrameHeader) error {
	n := int64(fh.Length)
	if fh.StreamID == 0 {
		return connError{http2.ErrCodeProtocol, "DATA on stream 0"}
	}
	c.mu.Lock()
	if n > c.recvWindow {
		c.mu.Unlock()
		return connError{http2.ErrCodeFlowControl, "connection window exceeded"}
	}
	c.recvWindow -= n
	s := c.streams[fh.StreamID]
	idle := s == nil && c.idleLocked(fh.StreamID)
	c.mu.Unlock()
	if idle {
		return connError{http2.ErrCodeProtocol, "DATA on idle stream"}
	}
	if s == nil {
		// A stream we closed or reset: frames in flight are expected. Drop them, keep the window.
		if _, err := c.br.Discard(int(n)); err != nil {
			return err
		}
		c.consumed(n)
		return nil
	}
	return s.receive(fh)
}

// consumed recredits n bytes of connection window that were read or discarded and queues a
// WINDOW_UPDATE once a quarter window has accumulated.
func (c *conn) consumed(n int64) {
	if n <= 0 {
		return
	}
	c.mu.Lock()
	c.recvUnacked += n
	var queued bool
	if c.recvUnacked >= int64(c.cfg.settings.ConnWindow)/4 && !c.closed {
		c.recvWindow += c.recvUnacked
		c.queueLocked(ctrlFrame{kind: ctrlWindowUpdate, val: uint32(c.recvUnacked)})
		c.recvUnacked = 0
		queued = true
	}
	c.mu.Unlock()
	if queued {
		c.settle()
	}
}

// queueLocked appends a control frame; the caller calls settle after unlocking mu.
func (c *conn) queueLocked(f ctrlFrame) {
	if c.closed {
		return
	}
	c.ctrl = append(c.ctrl, f)
	c.ctrlNew.Store(true)
}

// queue is queueLocked plus settle.
func (c *conn) queue(fs ...ctrlFrame) {
	c.mu.Lock()
	for _, f := range fs {
		c.queueLocked(f)
	}
	c.mu.Unlock()
	c.settle()
}

// resetStream sends RST_STREAM(code) for id and, if the stream is open here, fails it.
func (c *conn) resetStream(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	s := c.streams[id]
	if s != nil {
		c.removeLocked(s)
	}
	c.queueLocked(ctrlFrame{kind: ctrlRST, streamID: id, code: code})
	c.mu.Unlock()
	c.settle()
	if s != nil {
		s.fail(&ResetError{Code: code})
		c.streamLeft()
	}
}

// removeLocked takes s out of the stream map; the caller calls streamLeft after unlocking.
func (c *conn) removeLocked(s *Stream) {
	if _, ok := c.streams[s.id]; ok {
		delete(c.streams, s.id)
		c.streamCount.Add(-1)
	}
}

// streamLeft reports one departed stream to the owner and closes a connection going away once empty.
func (c *conn) streamLeft() {
	if c.cfg.onStreamDone != nil {
		c.cfg.onStreamDone()
	}
	c.maybeCloseIdle()
}

func (c *conn) maybeCloseIdle() {
	c.mu.Lock()
	closeNow := (c.goAwaySent || c.goAwayRecv) && len(c.streams) == 0 && !c.closed
	c.mu.Unlock()
	if closeNow {
		c.close(nil)
	}
}

// remoteEnd records END_STREAM from the peer.
func (c *conn) remoteEnd(s *Stream) {
	s.rmu.Lock()
	s.remoteEOFLocked()
	s.rmu.Unlock()
	c.mu.Lock()
	s.remoteEnded = true
	gone := s.localEnded
	if gone {
		c.removeLocked(s)
	}
	c.mu.Unlock()
	if gone {
		c.streamLeft()
	}
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
	close(c.done)
	c.mu.Unlock()
	if err == nil || errors.Is(err, ErrKeepaliveTimeout) || errors.As(err, new(connError)) {
		// Let a queued GOAWAY out first when the write lock is free; never wait for it.
		select {
		case c.wsem <- struct{}{}:
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

// --- write side ---

// lockWrite takes the write lock, giving up with os.ErrDeadlineExceeded when cancel or cancel2 (either
// may be nil) is closed, and with the connection's error when it closes.
func (c *conn) lockWrite(cancel, cancel2 <-chan struct{}) error {
	if c.tryLockWrite() {
		return nil
	}
	c.wwait.Add(1)
	select {
	case c.wsem <- struct{}{}:
		c.wwait.Add(-1)
		return nil
	case <-cancel:
		c.wwait.Add(-1)
		c.settle()
		return os.ErrDeadlineExceeded
	case <-cancel2:
		c.wwait.Add(-1)
		c.settle()
		return os.ErrDeadlineExceeded
	case <-c.done:
		c.wwait.Add(-1)
		return c.err()
	}
}

// tryLockWrite takes the write lock if it is free.
func (c *conn) tryLockWrite() bool {
	select {
	case c.wsem <- struct{}{}:
		return true
	default:
		return false
	}
}

// unlockWrite writes queued control frames, flushes unless another writer waits, releases the write
// lock and settles.
func (c *conn) unlockWrite() {
	c.finishWriteLocked()
	<-c.wsem
	c.settle()
}

func (c *conn) finishWriteLocked() {
	c.writeCtrlLocked()
	if c.wwait.Load() == 0 {
		err := c.bw.Flush()
		if err == nil && c.sock != nil {
			err = c.sock.setBatching(false)
		}
		if err != nil {
			c.writeFailed(err)
		}
		c.dirty.Store(false)
	} else if c.bw.Buffered() > 0 {
		c.dirty.Store(true)
	}
}

// settle writes what is queued or buffered if nobody else will: it runs after every release of the write
// lock and after queueing, and takes the lock only when it is free.
func (c *conn) settle() {
	for c.ctrlNew.Load() || (c.dirty.Load() && c.wwait.Load() == 0) {
		select {
		case c.wsem <- struct{}{}:
		default:
			return // the holder settles after releasing
		}
		select {
		case <-c.done:
			<-c.wsem
			return
		default:
		}
		c.finishWriteLocked()
		<-c.wsem
	}
}

func (c *conn) writeCtrlLocked() {
	if !c.ctrlNew.Load() {
		return
	}
	c.mu.Lock()
	q := c.ctrl
	c.ctrl = c.ctrlSpare[:0]
	c.ctrlSpare = nil
	c.ctrlNew.Store(false)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if cap(q) <= 64 {
			c.ctrlSpare = q[:0]
		}
		c.mu.Unlock()
	}()
	var err error
	for _, f := range q {
		switch f.kind {
		case ctrlSettingsAck:
			err = c.fr.WriteSettingsAck()
		case ctrlPing:
			err = c.fr.WritePing(false, f.data)
		case ctrlPingAck:
			err = c.fr.WritePing(true, f.data)
		case ctrlWindowUpdate:
			err = c.fr.WriteWindowUpdate(f.streamID, f.val)
		case ctrlRST:
			err = c.fr.WriteRSTStream(f.streamID, f.code)
		case ctrlGoAway:
			err = c.fr.WriteGoAway(f.val, f.code, nil)
		case ctrlEndStream:
			err = c.fr.WriteData(f.streamID, true, nil)
		}
		if err != nil {
			c.writeFailed(err)
			return
		}
	}
	if len(q) > 0 {
		c.dirty.Store(true)
	}
}

// writeFailed closes the connection after a socket write error. It may run with wsem held: close only
// tries the write lock.
func (c *conn) writeFailed(err error) {
	c.close(fmt.Errorf("write: %w", err))
}

// reserveSend waits until s may send and reserves up to want bytes of both windows, at most one frame.
func (c *conn) reserveSend(s *Stream, want int, cancel <-chan struct{}) (int, error) {
	// Close interrupts the wait by expiring the write deadline (cancel) and signalling wready.
	for {
		c.mu.Lock()
		if err := s.writeErrLocked(); err != nil {
			c.mu.Unlock()
			return 0, err
		}
		if s.sendWindow > 0 && c.sendWindow > 0 {
			n := min(int64(want), s.sendWindow, c.sendWindow, int64(c.peerMaxFrame))
			s.sendWindow -= n
			c.sendWindow -= n
			c.mu.Unlock()
			return int(n), nil
		}
		var connCh chan struct{}
		if c.sendWindow <= 0 {
			connCh = c.sendWindowCh
		}
		c.mu.Unlock()
		select {
		case <-s.wready:
		case <-connCh:
		case <-cancel:
			return 0, os.ErrDeadlineExceeded
		case <-c.done:
			return 0, c.err()
		}
	}
}

// unreserve gives back window reserved for bytes that were not sent.
func (c *conn) unreserve(s *Stream, n int) {
	c.mu.Lock()
	s.sendWindow += int64(n)
	c.sendWindow += int64(n)
	c.mu.Unlock()
}

// writeData writes one DATA frame (flow control already reserved). Small payloads are copied into bw with
// the 9-byte header. Large ones go to the TLS connection straight from p, aligned so that all but the
// first TLS record are full 16 KiB records: the header and the odd-sized head of p form the first record.
// They are written in a write section (sock batching on): the coalescer gathers the records, which
// crypto/tls writes one by one, in a pooled buffer and sends up to 16 full ones per write or writev, the
// rest when the section ends (finishWriteLocked, by the last writer out). A large Write thus costs the
// records plain TLS would use (plus a 9-byte one when len(p) is a multiple of 16 KiB) but about one
// syscall per 256 KiB instead of one per record.
func (c *conn) writeData(id uint32, p []byte, cancel, cancel2 <-chan struct{}) error {
	if err := c.lockWrite(cancel, cancel2); err != nil {
		return err
	}
	n := len(p)
	c.hdr = [9]byte{byte(n >> 16), byte(n >> 8), byte(n), byte(http2.FrameData), 0,
		byte(id >> 24 & 0x7f), byte(id >> 16), byte(id >> 8), byte(id)}
	_, err := c.bw.Write(c.hdr[:])
	if err == nil {
		if n < tlsRecord || c.sock == nil {
			_, err = c.bw.Write(p)
		} else {
			k := n % tlsRecord
			if c.bw.Buffered()+k > tlsRecord {
				err = c.bw.Flush()
			}
			if err == nil {
				_, err = c.bw.Write(p[:k])
			}
			if err == nil {
				err = c.sock.setBatching(true)
			}
			if err == nil {
				err = c.bw.Flush()
			}
			if err == nil {
				_, err = c.nc.Write(p[k:])
			}
		}
	}
	if err != nil {
		c.writeFailed(err)
		c.unlockWrite()
		return fmt.Errorf("%w: write: %w", ErrConnClosed, err)
	}
	c.dirty.Store(true)
	c.unlockWrite()
	return nil
}

// writeHeadersLocked encodes fields and writes them as HEADERS plus CONTINUATIONs. wsem is held.
func (c *conn) writeHeadersLocked(id uint32, fields []hpack.HeaderField, endStream bool) error {
	c.mu.Lock()
	maxFrame := int(c.peerMaxFrame)
	if c.tableSizeDirty {
		c.henc.SetMaxDynamicTableSizeLimit(c.peerTableSize)
		c.tableSizeDirty = false
	}
	c.mu.Unlock()
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return fmt.Errorf("encode headers: %w", err)
		}
	}
	block := c.hbuf.Bytes()
	first := true
	for first || len(block) > 0 {
		chunk := block[:min(len(block), maxFrame)]
		block = block[len(chunk):]
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{
				StreamID: id, BlockFragment: chunk, EndStream: endStream, EndHeaders: len(block) == 0,
			})
			first = false
		} else {
			err = c.fr.WriteContinuation(id, len(block) == 0, chunk)
		}
		if err != nil {
			c.writeFailed(err)
			return fmt.Errorf("%w: write headers: %w", ErrConnClosed, err)
		}
	}
	c.dirty.Store(true)
	return nil
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
		if exhausted && c.cfg.onGoAway != nil {
			c.cfg.onGoAway()
		}
		c.streamLeft()
		return nil, errRefused
	}
	s := newStream(c, c.nextID)
	c.nextID += 2
	s.sendWindow = c.peerInitWindow
	s.client = true
	c.streams[s.id] = s
	c.streamCount.Add(1)
	c.mu.Unlock()
	err := c.writeHeadersLocked(s.id, fields, false)
	c.unlockWrite()
	if err != nil {
		c.mu.Lock()
		c.removeLocked(s)
		c.mu.Unlock()
		s.fail(err)
		c.streamLeft()
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

// --- keepalive ---

func (c *conn) startKeepalive() {
	if c.cfg.keepalive.Interval <= 0 {
		return
	}
	c.mu.Lock()
	if !c.closed {
		c.kaTimer = time.AfterFunc(c.cfg.keepalive.Interval, c.keepaliveTick)
	}
	c.mu.Unlock()
}

// keepaliveTick sends a PING when none is outstanding and closes the connection when one has been
// outstanding for the timeout.
func (c *conn) keepaliveTick() {
	ka := c.cfg.keepalive
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	now := time.Now()
	if c.pingOut {
		if now.Sub(c.pingSent) >= ka.Timeout {
			c.mu.Unlock()
			c.close(ErrKeepaliveTimeout)
			return
		}
	} else {
		c.pingOut = true
		c.pingSent = now
		_, _ = rand.Read(c.pingData[:])
		c.queueLocked(ctrlFrame{kind: ctrlPing, data: c.pingData})
	}
	next := ka.Interval
	if c.pingOut {
		next = min(next, max(c.pingSent.Add(ka.Timeout).Sub(now), time.Millisecond))
	}
	c.kaTimer.Reset(next)
	c.mu.Unlock()
	c.settle()
}

// --- helpers ---

// signal wakes the goroutine waiting on ch (capacity 1) without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
