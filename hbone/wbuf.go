package hbone

// wbuf.go: the connection's write buffer, and giving back an idle connection's buffers.
//
// Invariants:
//   - writeBuf is the part of bufio.Writer the connection uses, with its memory taken from wbufPool on
//     the first byte buffered and given back (release) only when it is empty. It belongs to the holder
//     of the write lock.
//   - A connection without streams holds no write buffer and no spare receive chunk: whoever finds it
//     idle with the write lock in hand (finishWriteLocked after a flush, settle, streamLeft's
//     releaseIdle) releases them, and they come back from the pools on the next stream. idleHeld says
//     that something may be held; it is cleared only under mu with no stream registered.

import (
	"io"
	"sync"
)

var wbufPool = sync.Pool{New: func() any { b := make([]byte, writeBufSize); return &b }}

// writeBuf buffers writes to w, like a bufio.Writer of writeBufSize bytes, including its sticky error.
type writeBuf struct {
	w   io.Writer
	buf *[]byte // from wbufPool; nil when released
	n   int     // buffered bytes, (*buf)[:n]
	err error
}

// Buffered returns the number of bytes buffered.
func (b *writeBuf) Buffered() int { return b.n }

func (b *writeBuf) Write(p []byte) (int, error) {
	nn := 0
	for len(p) > 0 {
		if b.err != nil {
			return nn, b.err
		}
		if b.n == 0 && len(p) >= writeBufSize {
			// Nothing buffered and p fills the buffer anyway: write it straight through, as bufio does.
			m, err := b.w.Write(p)
			nn += m
			if err == nil && m < len(p) {
				err = io.ErrShortWrite
			}
			b.err = err
			return nn, err
		}
		if b.buf == nil {
			b.buf = wbufPool.Get().(*[]byte)
		}
		m := copy((*b.buf)[b.n:], p)
		b.n += m
		nn += m
		p = p[m:]
		if b.n == len(*b.buf) {
			if err := b.Flush(); err != nil {
				return nn, err
			}
		}
	}
	return nn, nil
}

// WriteString writes s (the client preface only: it copies s).
func (b *writeBuf) WriteString(s string) (int, error) { return b.Write([]byte(s)) }

// Flush writes what is buffered to w.
func (b *writeBuf) Flush() error {
	if b.err != nil {
		return b.err
	}
	if b.n == 0 {
		return nil
	}
	m, err := b.w.Write((*b.buf)[:b.n])
	if err == nil && m < b.n {
		err = io.ErrShortWrite
	}
	if err != nil {
		if m > 0 && m < b.n {
			copy(*b.buf, (*b.buf)[m:b.n])
		}
		b.n -= m
		b.err = err
		return err
	}
	b.n = 0
	return nil
}

// release gives the buffer back to the pool if it is empty, and reports whether none is held now.
func (b *writeBuf) release() bool {
	if b.n > 0 {
		return false
	}
	if b.buf != nil {
		wbufPool.Put(b.buf)
		b.buf = nil
	}
	return true
}

// releaseIdleLocked gives back the buffers of a connection without streams: the write buffer, if it is
// empty, and the spare receive chunks. The write lock is held, mu is not.
func (c *conn) releaseIdleLocked() {
	if c.streamCount.Load() != 0 || !c.bw.release() {
		return
	}
	c.mu.Lock()
	if len(c.streams) == 0 {
		c.spare.park()
		c.idleHeld.Store(false)
	}
	c.mu.Unlock()
}

// releaseIdle (streamLeft) releases an idle connection's buffers when the write lock is free and nothing
// waits to be written; it does no I/O, so readLoop may call it (reader). Otherwise the holder of the
// write lock releases them when it finishes (settle).
func (c *conn) releaseIdle(reader bool) {
	if c.streamCount.Load() != 0 || !c.idleHeld.Load() || c.dirty.Load() || c.ctrlNew.Load() {
		return
	}
	if !c.tryLockWrite() {
		return
	}
	if c.bw.Buffered() == 0 {
		c.releaseIdleLocked()
	}
	<-c.wsem
	// Control frames queued while this held the lock found it taken and left them to this holder.
	if reader {
		c.kick()
	} else {
		c.settle()
	}
}

// busyLocked records that a stream registered, so the connection may hold buffers again. mu is held.
func (c *conn) busyLocked() {
	c.spare.unpark()
	c.idleHeld.Store(true)
}
