package hbone

// write.go: the write side of a connection: the write lock, the control queue and outbound frames.
//
// Invariant: bytes reach the socket only while holding the write lock wsem (a 1-slot channel, so that
// waiting for it can be cancelled): bw, the Framer's write side and the hpack encoder belong to the
// holder. Before releasing, the holder writes the queued control frames and flushes bw unless another
// writer is waiting, so the last writer out flushes; settle re-checks after each release so that nothing
// queued is stranded. readLoop never writes to the socket itself: what it queues is written by the
// holder, or by a flusher goroutine it starts (kick), so a peer that does not read cannot stop the
// connection from reading, and the control queue, bounded by maxQueuedControlFrames (flood.go), is the
// only thing that grows meanwhile.

import (
	"fmt"
	"os"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

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

// queueLocked appends a control frame; the caller calls settle (kick in readLoop) after unlocking mu.
func (c *conn) queueLocked(f ctrlFrame) {
	if c.closed {
		return
	}
	c.ctrl = append(c.ctrl, f)
	c.ctrlNew.Store(true)
	if len(c.ctrl) >= maxQueuedControlFrames {
		c.ctrlFull.Store(true) // readLoop closes the connection after the current frame
	}
}

// kick is readLoop's settle: it makes sure that what readLoop queued gets written, by a flusher goroutine
// (at most one at a time) that waits for the write lock, so that readLoop itself never blocks on the
// socket.
func (c *conn) kick() {
	if !c.ctrlNew.Load() || !c.flushing.CompareAndSwap(false, true) {
		return
	}
	c.flushers.Add(1)
	go c.flush()
}

// flush is the flusher goroutine: it takes the write lock (or gives up when the connection closes),
// writes the control queue and loops while readLoop queued more after it looked. readLoop waits for it
// before returning.
func (c *conn) flush() {
	defer c.flushers.Done()
	for {
		if c.lockWrite(nil, nil) != nil {
			c.flushing.Store(false)
			return
		}
		c.unlockWrite()
		c.flushing.Store(false)
		if !c.ctrlNew.Load() || !c.flushing.CompareAndSwap(false, true) {
			return
		}
	}
}

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
		if err == nil && c.streamCount.Load() == 0 {
			c.releaseIdleLocked()
			return
		}
	} else if c.bw.Buffered() > 0 {
		c.dirty.Store(true)
	}
	if !c.idleHeld.Load() {
		c.idleHeld.Store(true)
	}
}

// settle writes what is queued or buffered if nobody else will, and gives back the buffers of a
// connection left without streams: it runs after every release of the write lock and after queueing, and
// takes the lock only when it is free.
func (c *conn) settle() {
	for c.ctrlNew.Load() || (c.wwait.Load() == 0 && (c.dirty.Load() || c.idleHeld.Load() && c.streamCount.Load() == 0)) {
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

// writeData writes one DATA frame (flow control already reserved). Small payloads are copied into bw with
// the 9-byte header. Large ones go to the TLS connection straight from p, aligned so that all but the
// first TLS record are full 16 KiB records: the header and the odd-sized head of p form the first record.
// They are written in a write section (sock batching on): the coalescer gathers the records, which
// crypto/tls writes one by one, in a pooled buffer and sends up to 16 full ones per write or writev, the
// rest when the section ends (finishWriteLocked, by the last writer out). A large Write thus costs the
// records plain TLS would use (plus a 9-byte one when len(p) is a multiple of 16 KiB) but about one
// syscall per 256 KiB instead of one per record.
func (c *conn) writeData(s *Stream, p []byte) error {
	if err := s.lockWrite(); err != nil {
		return err
	}
	id := s.id
	n := len(p)
	c.dataUnits.Add(uint64((n + dataUnit - 1) / dataUnit))
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
