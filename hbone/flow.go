package hbone

// flow.go: flow-control accounting, both directions (x/net/http2 keeps its own in flow.go).
//
// Invariant: readLoop charges the receive windows when DATA arrives; they are recredited when the
// application reads (or the bytes are discarded) and the credit goes back to the peer in WINDOW_UPDATEs
// of at least a quarter window. Writers reserve send window frame by frame, before taking wsem; the
// peer's WINDOW_UPDATEs and SETTINGS_INITIAL_WINDOW_SIZE changes replenish it.

import (
	"os"

	"golang.org/x/net/http2"
)

// consumed recredits n bytes of connection window that were read or discarded and queues a
// WINDOW_UPDATE once a quarter window has accumulated.
func (c *conn) consumed(n int64) {
	if c.credit(n) {
		c.settle()
	}
}

// discarded is consumed for readLoop, which never writes itself (kick).
func (c *conn) discarded(n int64) {
	if c.credit(n) {
		c.kick()
	}
}

// credit recredits n bytes of connection window and reports whether it queued a WINDOW_UPDATE.
func (c *conn) credit(n int64) bool {
	if n <= 0 {
		return false
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
	return queued
}

// consumed returns flow-control credit for n bytes the application read.
func (s *Stream) consumed(n int) {
	if s.credit(n) {
		s.c.settle()
	}
	s.c.consumed(int64(n))
}

// discarded is consumed for readLoop (padding, which is flow-controlled but never read).
func (s *Stream) discarded(n int) {
	if s.credit(n) {
		s.c.kick()
	}
	s.c.discarded(int64(n))
}

// credit recredits n bytes of s's window and reports whether it queued a WINDOW_UPDATE.
func (s *Stream) credit(n int) bool {
	s.rmu.Lock()
	s.recvUnacked += int64(n)
	var inc int64
	if s.recvUnacked >= int64(s.c.cfg.settings.StreamWindow)/4 && s.rerr == nil {
		inc = s.recvUnacked
		s.recvUnacked = 0
		s.recvWindow += inc
	}
	s.rmu.Unlock()
	if inc == 0 {
		return false
	}
	c := s.c
	c.mu.Lock()
	c.queueLocked(ctrlFrame{kind: ctrlWindowUpdate, streamID: s.id, val: uint32(inc)})
	c.mu.Unlock()
	return true
}

// applyInitialWindowLocked applies the peer's new SETTINGS_INITIAL_WINDOW_SIZE to the send windows of
// the open streams and returns them, to be woken. mu is held.
func (c *conn) applyInitialWindowLocked(v int64) ([]*Stream, error) {
	delta := v - c.peerInitWindow
	c.peerInitWindow = v
	if delta == 0 {
		return nil, nil
	}
	wake := make([]*Stream, 0, len(c.streams))
	for _, st := range c.streams {
		st.sendWindow += delta
		if st.sendWindow > maxWindow {
			return nil, connError{code: http2.ErrCodeFlowControl, reason: "stream window overflow"}
		}
		wake = append(wake, st)
	}
	return wake, nil
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

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	if err := c.checkWindowUpdate(); err != nil {
		return err
	}
	inc := int64(f.Increment)
	c.mu.Lock()
	if f.StreamID == 0 {
		was := c.sendWindow
		c.sendWindow += inc
		if c.sendWindow > maxWindow {
			c.mu.Unlock()
			return connError{code: http2.ErrCodeFlowControl, reason: "connection window overflow"}
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
			return connError{code: http2.ErrCodeProtocol, reason: "WINDOW_UPDATE on idle stream"}
		}
		return nil
	}
	s.sendWindow += inc
	overflow := s.sendWindow > maxWindow
	c.mu.Unlock()
	if overflow {
		return c.resetStream(f.StreamID, http2.ErrCodeFlowControl)
	}
	signal(s.wready)
	return nil
}
