package hbone

// read.go: the read side of a connection: readLoop and the handling of every inbound frame.
//
// Invariant: one goroutine, readLoop, reads the socket (through br and fr). It never waits for the write
// lock while reading: frames it must send (SETTINGS and PING acks, RST_STREAM, GOAWAY), like the
// WINDOW_UPDATEs that readers return, go into the control queue and are written by whoever holds or next
// takes the write lock. Only after a connection error, when it has stopped reading frames, does it wait
// (bounded) for the lock, to get its GOAWAY out before the connection closes (closeAfterGoAway).

import (
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"strconv"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

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
