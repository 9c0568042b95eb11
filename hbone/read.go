package hbone

// read.go: the read side of a connection: readLoop and the handling of every inbound frame.
//
// Invariant: one goroutine, readLoop, reads the socket (through br, the header-block guard and fr). It
// never waits for the write lock or the socket while reading: frames it must send (SETTINGS and PING
// acks, RST_STREAM, GOAWAY), like the WINDOW_UPDATEs that readers return, go into the control queue and
// are written by whoever holds or next takes the write lock, or by a flusher goroutine (kick). Only after
// a connection error, or when a connection going away has no stream left, does it stop reading frames and
// wait (bounded) for the lock, to get its GOAWAY out before the connection closes (closeAfterGoAway).
// Every inbound frame is counted against the flood limits of flood.go.

import (
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// liveConns counts the connections whose readLoop runs, in the process (LiveConns).
var liveConns atomic.Int64

// LiveConns returns the number of HBONE connections open in the process, both roles (pooled, draining,
// inner double-HBONE and server connections, from their first frame read to their close). Each holds
// far more memory than a relayed connection (its TLS state, HPACK tables, reader and its goroutine):
// the memory releaser weighs them (memory.ConnWeight) so that a pool trimming its idle connections
// ends a burst.
func LiveConns() int { return int(liveConns.Load()) }

// readLoop reads frames until the connection fails, closes or has finished going away, then closes it.
func (c *conn) readLoop() {
	liveConns.Add(1)
	defer liveConns.Add(-1)
	defer close(c.readerDone)
	defer c.flushers.Wait()
	err := c.readFrames()
	var ce connError
	switch {
	case errors.As(err, &ce):
		c.cfg.stats.connError(ce)
		c.closeAfterGoAway(err)
	case c.draining.Load():
		c.closeAfterGoAway(nil) // finishGoAway interrupted the read
	default:
		c.close(err)
	}
}

// closeAfterGoAway closes the connection after readLoop found a connection error, for which goAwayErr
// queued a GOAWAY, or after a GOAWAY(NO_ERROR) once no stream is left (err nil), so that the peer reads
// that GOAWAY before the connection ends:
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
	flood  floodKind // the flood limit exceeded, if that is the reason
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
				return c.goAwayErr(connError{code: http2.ErrCodeProtocol, reason: "first frame is not SETTINGS"})
			}
			first = false
		}
		if fh.Type == http2.FrameData {
			if err := c.readData(fh); err != nil {
				return c.goAwayErr(err)
			}
			continue
		}
		if fh.Type == http2.FrameHeaders && !fh.Flags.Has(http2.FlagHeadersEndHeaders) {
			c.guard.arm(fh, 2*int(c.cfg.settings.MaxHeaderListSize))
		}
		f, err := c.fr.ReadFrameForHeader(fh)
		c.guard.disarm()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				if err := c.resetStream(se.StreamID, se.Code); err != nil {
					return c.goAwayErr(err)
				}
				continue
			}
			return c.readError(err)
		}
		if err := c.processFrame(f); err != nil {
			return c.goAwayErr(err)
		}
		if c.ctrlFull.Load() {
			return c.goAwayErr(calm(floodControlQueue, "control frames queued faster than the peer reads them"))
		}
	}
}

// readError turns a Framer read error into the connection's close error, telling the peer when it broke
// the protocol.
func (c *conn) readError(err error) error {
	var ce http2.ConnectionError
	switch {
	case errors.Is(err, http2.ErrFrameTooLarge):
		return c.goAwayErr(connError{code: http2.ErrCodeFrameSize, reason: "frame too large"})
	case errors.Is(err, errTooManyContinuations):
		return c.goAwayErr(calm(floodContinuation, err.Error()))
	case errors.Is(err, errHeaderBlockTooLarge):
		return c.goAwayErr(connError{code: http2.ErrCodeProtocol, reason: err.Error(), flood: floodContinuation})
	case errors.As(err, &ce):
		reason := "frame error"
		if d := c.fr.ErrorDetail(); d != nil {
			reason = d.Error()
		}
		return c.goAwayErr(connError{code: http2.ErrCode(ce), reason: reason})
	}
	return err
}

// goAwayErr queues a GOAWAY for a connError and returns err for close; readLoop's closeAfterGoAway
// writes it.
func (c *conn) goAwayErr(err error) error {
	var ce connError
	if errors.As(err, &ce) {
		c.mu.Lock()
		c.queueLocked(ctrlFrame{kind: ctrlGoAway, val: c.maxPeerID, code: ce.code})
		c.goAwaySent = true
		c.mu.Unlock()
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
		return connError{code: http2.ErrCodeProtocol, reason: "PUSH_PROMISE"}
	case *http2.PriorityFrame:
		return c.checkPriority() // otherwise ignored
	}
	// PRIORITY_UPDATE and unknown frames are ignored.
	return nil
}

func (c *conn) applySettings(f *http2.SettingsFrame) error {
	if f.NumSettings() > maxSettingsPerFrame {
		return calm(floodSettings, "SETTINGS frame with "+strconv.Itoa(f.NumSettings())+" parameters")
	}
	var wake []*Stream
	c.mu.Lock()
	initWindow := int64(-1)
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return connError{code: http2.ErrCode(err.(http2.ConnectionError)), reason: "bad setting " + s.String()}
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			initWindow = int64(s.Val) // applied once, below: the last value counts
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
	if err == nil && initWindow >= 0 {
		wake, err = c.applyInitialWindowLocked(initWindow)
	}
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
	c.kick()
	return nil
}

func (c *conn) onRST(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	s := c.streams[f.StreamID]
	if s == nil {
		idle := c.idleLocked(f.StreamID)
		c.mu.Unlock()
		if idle {
			return connError{code: http2.ErrCodeProtocol, reason: "RST_STREAM on idle stream"}
		}
		return nil
	}
	c.removeLocked(s)
	c.mu.Unlock()
	early := c.cfg.server && !s.responded()
	s.peerReset(f.ErrCode)
	c.streamLeft(true)
	if early {
		return c.countEarlyReset()
	}
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
		c.streamLeft(true)
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
			return connError{code: http2.ErrCodeProtocol, reason: "HEADERS on idle stream " + strconv.Itoa(int(id))}
		}
		return c.resetStream(id, http2.ErrCodeStreamClosed)
	}
	c.mu.Unlock()
	if c.cfg.server || s.responded() {
		// Trailers: HBONE sends none, but a trailer block that ends the stream is a clean end.
		if !f.StreamEnded() {
			return c.resetStream(id, http2.ErrCodeProtocol)
		}
		c.remoteEnd(s)
		return nil
	}
	status, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || status < 100 || status > 999 {
		return c.resetStream(id, http2.ErrCodeProtocol)
	}
	if status < 200 {
		if f.StreamEnded() {
			return c.resetStream(id, http2.ErrCodeProtocol)
		}
		return nil // informational
	}
	var fields []hpack.HeaderField
	if reg := f.RegularFields(); len(reg) > 0 {
		fields = slices.Clone(reg) // not a map: most streams never look (ResponseHeader builds one)
	}
	s.setResponse(status, fields)
	if f.StreamEnded() {
		c.remoteEnd(s)
	}
	return nil
}

// newPeerStreamLocked (server) opens the stream of a new request and starts its handler, or queues it
// until a handler slot is free: a slot is held from HEADERS until the handler returns, so resetting
// streams does not let a peer run more than MAX_CONCURRENT_STREAMS handlers (CVE-2023-44487). It unlocks
// mu.
func (c *conn) newPeerStreamLocked(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.maxPeerID = id
	limit := c.cfg.settings.MaxConcurrentStreams
	if c.goAwaySent || uint32(len(c.streams)) >= limit {
		c.queueLocked(ctrlFrame{kind: ctrlRST, streamID: id, code: http2.ErrCodeRefusedStream})
		c.mu.Unlock()
		c.kick()
		return c.countLocalReset()
	}
	fields := make([]hpack.HeaderField, len(f.Fields))
	copy(fields, f.Fields)
	s := newStream(c, id)
	s.sendWindow = c.peerInitWindow
	start := c.handlers < int(limit)
	if !start {
		if len(c.unstarted) >= maxUnstartedPerSlot*int(limit) {
			c.mu.Unlock()
			return calm(floodRapidReset, "too many streams reset before their handlers returned")
		}
		s.req, s.reqTruncated = fields, f.Truncated
		c.unstarted = append(c.unstarted, s)
	} else {
		c.handlers++
		c.handlerCount.Store(int32(c.handlers))
	}
	c.streams[id] = s
	c.streamCount.Add(1)
	c.opened.Add(1)
	c.busyLocked()
	c.mu.Unlock()
	s.startIdle(c.cfg.streamIdleTimeout)
	if f.StreamEnded() {
		c.remoteEnd(s)
	}
	if start {
		c.cfg.onRequest(s, fields, f.Truncated)
	}
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
		return connError{code: http2.ErrCodeProtocol, reason: "DATA on stream 0"}
	}
	if !fh.Flags.Has(http2.FlagDataPadded) {
		if err := c.checkEmptyData(int(n), fh.Flags.Has(http2.FlagDataEndStream)); err != nil {
			return err // padded frames are counted once their padding is known (Stream.receive)
		}
	}
	c.mu.Lock()
	if n > c.recvWindow {
		c.mu.Unlock()
		return connError{code: http2.ErrCodeFlowControl, reason: "connection window exceeded"}
	}
	c.recvWindow -= n
	s := c.streams[fh.StreamID]
	idle := s == nil && c.idleLocked(fh.StreamID)
	c.mu.Unlock()
	if idle {
		return connError{code: http2.ErrCodeProtocol, reason: "DATA on idle stream"}
	}
	if s == nil {
		// A stream we closed or reset: frames in flight are expected. Drop them, keep the window.
		if _, err := c.br.Discard(int(n)); err != nil {
			return err
		}
		c.discarded(n)
		return nil
	}
	return s.receive(fh)
}
