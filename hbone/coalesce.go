package hbone

// coalesce.go: the socket under the TLS connection.
//
// Invariant: while the write lock is held (batching), TLS records of up to heldMax bytes are held back
// and go out with the next record in one writev, or at the end of the write section (flush). Outside
// write sections (handshake, TLS alerts, key updates written by crypto/tls itself) every write goes
// straight to the socket, after anything held.

import (
	"net"
	"sync"
)

const heldMax = 2 << 10

// coalescer wraps the TCP connection that crypto/tls writes records to.
type coalescer struct {
	net.Conn
	mu       sync.Mutex
	batching bool
	held     []byte
	bufs     net.Buffers
}

func (c *coalescer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.batching && len(p) <= heldMax && len(c.held)+len(p) <= 2*heldMax {
		c.held = append(c.held, p...)
		return len(p), nil
	}
	if len(c.held) == 0 {
		return c.Conn.Write(p)
	}
	c.bufs = append(c.bufs[:0], c.held, p)
	_, err := c.bufs.WriteTo(c.Conn) // one writev
	c.held = c.held[:0]
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// setBatching starts (true) or ends (false) a write section; ending it writes what is held.
func (c *coalescer) setBatching(on bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batching = on
	if on || len(c.held) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.held)
	c.held = c.held[:0]
	return err
}
