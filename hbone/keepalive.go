package hbone

// keepalive.go: PING keepalive (ztunnel's: a PING every interval, the connection closed when one is
// not acknowledged within the timeout) and the answers to the peer's PINGs.

import (
	"crypto/rand"
	"time"

	"golang.org/x/net/http2"
)

// keepalive configures PING keepalive: a PING every Interval, the connection closed when one is not
// acknowledged within Timeout. Interval <= 0 disables it.
type keepalive struct {
	Interval, Timeout time.Duration
}

func (k keepalive) withDefaults() keepalive {
	if k.Interval == 0 {
		k.Interval = DefaultKeepaliveInterval
	}
	if k.Timeout == 0 {
		k.Timeout = DefaultKeepaliveTimeout
	}
	return k
}

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

// onPing (readLoop) answers the peer's PING and takes the answer to ours.
func (c *conn) onPing(f *http2.PingFrame) {
	c.mu.Lock()
	if !f.IsAck() {
		c.queueLocked(ctrlFrame{kind: ctrlPingAck, data: f.Data})
		c.mu.Unlock()
		c.kick()
		return
	}
	if c.pingOut && f.Data == c.pingData {
		c.pingOut = false
	}
	c.mu.Unlock()
}
