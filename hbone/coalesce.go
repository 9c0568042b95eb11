package hbone

// coalesce.go: the socket under the TLS connection.
//
// Invariant: inside a write section (batching, while the write lock is held) the TLS records written are
// gathered in a pooled buffer of batchSize bytes and reach the socket together: in one write when the
// section ends, or in one writev of the buffer and the next record when that record does not fit.
// crypto/tls writes each record (at most 16 KiB of payload) with its own Write, so a 256 KiB DATA frame
// costs one syscall instead of sixteen. Outside write sections (handshake, TLS alerts, key updates written
// by crypto/tls itself) every write goes straight to the socket, after anything held. The buffer is taken
// when a section first writes and given back when it ends, so an idle connection holds none; a section
// whose socket write blocks (peer not reading) holds it until the write returns.

import (
	"net"
	"sync"
)

// batchSize is the capacity of the gathering buffer: sixteen full TLS records with their overhead, plus
// room for the small first record of a DATA frame (frame header and the frame's odd-sized head).
// Sixteen measured clearly better than four (HBONE's CPU per MB against plain TLS about 10% lower; four
// records were within noise of the former two-record hold).
const batchSize = 16*(tlsRecord+tlsOverhead) + 1<<10

// tlsOverhead is what TLS 1.3 adds to a record: header, content type, AEAD tag.
const tlsOverhead = 5 + 1 + 16

var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, batchSize); return &b }}

// coalescer wraps the TCP connection that crypto/tls writes records to.
type coalescer struct {
	net.Conn
	mu       sync.Mutex
	batching bool
	held     *[]byte   // from batchPool while a section has written; nil otherwise
	iov      [2][]byte // backing array of bufs, cleared after each writev
	bufs     net.Buffers
}

func (c *coalescer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.batching {
		if c.held == nil {
			c.held = batchPool.Get().(*[]byte)
		}
		if h := *c.held; len(h)+len(p) <= cap(h) {
			*c.held = append(h, p...)
			return len(p), nil
		}
	}
	if c.held == nil || len(*c.held) == 0 {
		return c.Conn.Write(p)
	}
	c.iov = [2][]byte{*c.held, p}
	c.bufs = c.iov[:]
	_, err := c.bufs.WriteTo(c.Conn) // one writev; consumes c.bufs
	c.iov = [2][]byte{}
	*c.held = (*c.held)[:0]
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// setBatching starts (true) or ends (false) a write section; ending it writes what is held and gives the
// buffer back to the pool.
func (c *coalescer) setBatching(on bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batching = on
	if on || c.held == nil {
		return nil
	}
	var err error
	if h := *c.held; len(h) > 0 {
		_, err = c.Conn.Write(h)
	}
	*c.held = (*c.held)[:0]
	batchPool.Put(c.held)
	c.held = nil
	return err
}
