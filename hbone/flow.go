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

// consumed returns flow-control credit for n bytes the application read.
func (s *Stream) consumed(n int) {
	s.rmu.Lock()
	s.recvUnacked += int64(n)
	var inc int64
	if s.recvUnacked >= int64(s.c.cfg.settings.StreamWindow)/4 && s.rerr == nil {
		inc = s.recvUnacked
		s.recvUnacked = 0
		s.recvWindow += inc
	}
	s.rmu.Unlock()
	if inc > 0 {
		s.c.queue(ctrlFrame{kind: ctrlWindowUpdate, streamID: s.id, val: uint32(inc)})
	}
	s.c.consumed(int64(n))
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
