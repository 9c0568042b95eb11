package hbone

// idle.go: idle timeouts: a server connection without streams (Server.IdleTimeout) and a stream without
// bytes either way (Stream.SetIdleTimeout, Server.StreamIdleTimeout).
//
// Invariants:
//   - The hot path pays one atomic add per DATA frame sent or received (Stream.activity) and nothing else:
//     an idle stream's timer ticks every timeout/idleTicks and the stream expires after idleTicks ticks in
//     a row without activity, so between the timeout and 1+1/idleTicks times it after its last byte.
//   - A connection's idle clock (idleSince) restarts when its last stream leaves and its last handler
//     returns (markIdleLocked); its timer checks the clock rather than being reset on every change.
//   - Expiry goes through the ordinary paths: a connection goes away with GOAWAY(NO_ERROR) and closes
//     gracefully (finishGoAway); a stream is reset with CANCEL (a clean end for ztunnel and for Stream.Read)
//     and fails locally with ErrStreamIdleTimeout, which cancels a server handler's context.

import (
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// idleTicks is the number of quiet timer ticks after which a stream is idle.
const idleTicks = 4

// startIdleTimer (server) arms the connection's idle timer.
func (c *conn) startIdleTimer() {
	d := c.cfg.idleTimeout
	if !c.cfg.server || d <= 0 {
		return
	}
	c.mu.Lock()
	if !c.closed {
		c.idleSince = time.Now()
		c.idleTimer = time.AfterFunc(d, c.idleTick)
	}
	c.mu.Unlock()
}

// markIdleLocked restarts the idle clock when the connection has just become idle. mu is held.
func (c *conn) markIdleLocked() {
	if c.idleTimer != nil && len(c.streams) == 0 && c.handlers == 0 {
		c.idleSince = time.Now()
	}
}

// idleTick runs when the idle timer fires: it closes a connection idle for the whole timeout, or waits
// for the rest of it.
func (c *conn) idleTick() {
	d := c.cfg.idleTimeout
	c.mu.Lock()
	if c.closed || c.goAwaySent {
		c.mu.Unlock()
		return
	}
	next := d
	if len(c.streams) == 0 && c.handlers == 0 {
		if quiet := time.Since(c.idleSince); quiet < d {
			next = d - quiet
		} else {
			c.mu.Unlock()
			c.cfg.stats.idleTimeout()
			c.goAway()
			return
		}
	}
	c.idleTimer.Reset(next)
	c.mu.Unlock()
}

// streamIdle is a stream's idle timer.
type streamIdle struct {
	mu      sync.Mutex
	timer   *time.Timer
	seen    uint32 // Stream.activity at the last tick
	quiet   int    // ticks in a row without activity
	stopped bool
}

// idleStep advances an idle clock by one tick that saw activity counter now (prev at the previous
// tick) and returns the new count of quiet ticks and whether the stream is now idle.
func idleStep(prev, now uint32, quiet int) (int, bool) {
	if now != prev {
		return 0, false
	}
	quiet++
	return quiet, quiet >= idleTicks
}

// SetIdleTimeout resets the stream with CANCEL when no DATA has been sent or received on it for d (give
// or take a quarter of d); its Reads and Writes then fail with ErrStreamIdleTimeout, and a server
// handler's context is cancelled. Zero or negative d removes the timeout. Envoy's stream_idle_timeout is
// 5 minutes for HTTP (DefaultStreamIdleTimeoutHTTP) and tcp_proxy's idle_timeout one hour
// (DefaultStreamIdleTimeoutTCP); ztunnel has none.
func (s *Stream) SetIdleTimeout(d time.Duration) {
	s.stopIdle()
	s.startIdle(d)
}

// startIdle arms the idle timer for d (no-op for d <= 0 or a closed stream).
func (s *Stream) startIdle(d time.Duration) {
	if d <= 0 || s.closed.Load() {
		return
	}
	si := &streamIdle{seen: s.activity.Load()}
	tick := max(d/idleTicks, time.Millisecond)
	si.mu.Lock()
	si.timer = time.AfterFunc(tick, func() { s.idleTick(si, tick) })
	si.mu.Unlock()
	if old := s.idle.Swap(si); old != nil {
		old.stop()
	}
}

func (s *Stream) stopIdle() {
	if si := s.idle.Swap(nil); si != nil {
		si.stop()
	}
}

func (si *streamIdle) stop() {
	si.mu.Lock()
	si.stopped = true
	if si.timer != nil {
		si.timer.Stop()
	}
	si.mu.Unlock()
}

func (s *Stream) idleTick(si *streamIdle, tick time.Duration) {
	si.mu.Lock()
	if si.stopped {
		si.mu.Unlock()
		return
	}
	now := s.activity.Load()
	var expired bool
	si.quiet, expired = idleStep(si.seen, now, si.quiet)
	si.seen = now
	if !expired {
		si.timer.Reset(tick)
	}
	si.mu.Unlock()
	if expired {
		s.c.expireStream(s)
	}
}

// expireStream resets s, idle for its timeout, with CANCEL and fails it with ErrStreamIdleTimeout.
func (c *conn) expireStream(s *Stream) {
	c.mu.Lock()
	_, open := c.streams[s.id]
	if open {
		c.removeLocked(s)
		c.queueLocked(ctrlFrame{kind: ctrlRST, streamID: s.id, code: http2.ErrCodeCancel})
	}
	c.mu.Unlock()
	if !open {
		return
	}
	c.settle()
	c.cfg.stats.streamIdleTimeout()
	s.fail(ErrStreamIdleTimeout)
	c.streamLeft(false)
}
