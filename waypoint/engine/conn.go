package engine

import (
	"bytes"
	"errors"
	"net"

	"golang.org/x/net/http2"
	"sync"
	"sync/atomic"
	"time"
)

// streamConn is an HBONE stream carrying its ConnInfo to the server's ConnContext; done closes with it.
//
// Small reads are served from a pooled buffer: the HTTP/2 server reads each frame as a 9-byte header
// and then its payload, which would otherwise be two reads of the stream per frame. The buffer is
// borrowed only while it holds unread bytes, so idle connections keep none.
//
// On an HTTP/2 connection (seen from the client preface), writes are coalesced: the HTTP/2 server
// flushes after each frame it writes when it has nothing else queued (a response's HEADERS, then its
// DATA, each handed over by the handler and waited for), so Write copies into a pending buffer that
// one goroutine, running while there are pending bytes, writes to the stream; frames queued while it
// writes go out together in its next write. Write blocks while maxPendingWrite bytes are pending
// (backpressure), reports the first error of an earlier write, and Close writes what is pending
// (waiting at most closeDrainTimeout) before closing.
type streamConn struct {
	net.Conn
	info *ConnInfo
	once sync.Once
	done chan struct{}

	// Read state, used by one reader at a time (as net.Conn reads are).
	rbuf       *[]byte // borrowed from readBuffers while rpos < rend
	rpos, rend int
	rerr       error // error that came with buffered bytes, returned once they are read
	first      bool  // the first read happened
	h2         atomic.Bool

	rdl readDeadline

	wmu     sync.Mutex
	wcond   *sync.Cond    // signalled when pending bytes were written or an error was seen
	wbuf    *[]byte       // pending bytes (from writeBuffers), nil when none
	werr    error         // first write error; later writes fail with it
	wdone   chan struct{} // closed when the running writer goroutine exits; nil when none runs
	wclosed bool          // the stream is closed; writes fail
}

const (
	// readBufferSize is the read-ahead for small reads; reads at least this large go to the stream directly.
	readBufferSize = 4 << 10
	// maxPendingWrite bounds the bytes Write accepts before they are written to the stream.
	maxPendingWrite = 64 << 10
	// closeDrainTimeout bounds how long Close waits for pending bytes to be written.
	closeDrainTimeout = 2 * time.Second
)

var (
	readBuffers  = sync.Pool{New: func() any { b := make([]byte, readBufferSize); return &b }}
	writeBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}
	h2Preface    = []byte("PRI * HTTP/2.0") // what the server's first read asks for
)

func newStreamConn(c net.Conn, info *ConnInfo) *streamConn {
	s := &streamConn{Conn: c, info: info, done: make(chan struct{})}
	s.wcond = sync.NewCond(&s.wmu)
	return s
}

// readDeadline is a streamConn's read deadline. net/http's server moves it six times per request
// (header timeout, cleared, its background read started and aborted, the idle timeout, the next
// header timeout), and on an HBONE stream each future deadline is a new runtime timer with its own
// closure. streamConn keeps one timer instead, armed at the earliest future deadline it was given and
// re-armed when it fires if the deadline has moved later since (net/http's deadlines move later from
// request to request, so they cost no timer operation). A deadline that has passed goes to the stream
// at once (it fails a pending read, as net/http's abort of its background read needs), and is cleared
// there when a deadline in the future or none replaces it.
type readDeadline struct {
	mu      sync.Mutex
	at      time.Time   // the deadline in force; zero: none
	timer   *time.Timer // nil until the first future deadline
	armedAt time.Time   // when timer fires; zero: not armed
	passed  bool        // the stream was given a deadline in the past: its reads fail
}

// SetReadDeadline implements net.Conn (see readDeadline).
func (s *streamConn) SetReadDeadline(t time.Time) error {
	d := &s.rdl
	d.mu.Lock()
	defer d.mu.Unlock()
	d.at = t
	if !t.IsZero() && !t.After(time.Now()) {
		d.passed = true
		return s.Conn.SetReadDeadline(t)
	}
	var err error
	if d.passed {
		d.passed = false
		err = s.Conn.SetReadDeadline(time.Time{})
	}
	if !t.IsZero() && (d.armedAt.IsZero() || t.Before(d.armedAt)) {
		s.armReadDeadline(t)
	}
	return err
}

// SetDeadline implements net.Conn.
func (s *streamConn) SetDeadline(t time.Time) error {
	return errors.Join(s.SetReadDeadline(t), s.Conn.SetWriteDeadline(t))
}

// armReadDeadline makes the timer fire at t; s.rdl.mu is held.
func (s *streamConn) armReadDeadline(t time.Time) {
	d := &s.rdl
	d.armedAt = t
	if d.timer == nil {
		d.timer = time.AfterFunc(time.Until(t), s.readDeadlineFired)
		return
	}
	d.timer.Reset(time.Until(t))
}

// readDeadlineFired hands a deadline that has passed to the stream, or re-arms the timer for a
// deadline that moved later.
func (s *streamConn) readDeadlineFired() {
	d := &s.rdl
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	if d.armedAt.IsZero() || now.Before(d.armedAt) {
		return // a fire the timer was re-armed after: it fires again at armedAt
	}
	d.armedAt = time.Time{}
	switch {
	case d.at.IsZero():
	case d.at.After(now):
		s.armReadDeadline(d.at)
	case !d.passed:
		d.passed = true
		_ = s.Conn.SetReadDeadline(d.at)
	}
}

// Read implements net.Conn, buffering small reads.
func (s *streamConn) Read(p []byte) (int, error) {
	n, err := s.read(p)
	if !s.first && n > 0 {
		s.first = true
		if bytes.HasPrefix(p[:n], h2Preface) {
			s.h2.Store(true) // the HTTP/2 server writes only after reading the preface
		}
	}
	return n, err
}

func (s *streamConn) read(p []byte) (int, error) {
	if s.rbuf != nil {
		n := copy(p, (*s.rbuf)[s.rpos:s.rend])
		s.rpos += n
		if s.rpos == s.rend {
			readBuffers.Put(s.rbuf)
			s.rbuf = nil
		}
		return n, nil
	}
	if err := s.rerr; err != nil {
		s.rerr = nil
		return 0, err
	}
	if len(p) >= readBufferSize || len(p) == 0 {
		return s.Conn.Read(p)
	}
	buf := readBuffers.Get().(*[]byte)
	n, err := s.Conn.Read(*buf)
	c := copy(p, (*buf)[:n])
	if c == n {
		readBuffers.Put(buf)
		return c, err
	}
	s.rbuf, s.rpos, s.rend, s.rerr = buf, c, n, err
	return c, nil
}

// readIdle reads into p: from the read-ahead when it holds bytes, else straight from the stream
// without borrowing a buffer (the idle wait between HTTP/1.1 requests, into the connection's own
// small buffer).
func (s *streamConn) readIdle(p []byte) (int, error) {
	if s.rbuf != nil || s.rerr != nil {
		return s.read(p)
	}
	for {
		n, err := s.Conn.Read(p)
		if n > 0 {
			s.rerr = err
			return n, nil
		}
		if err != nil {
			return 0, err
		}
	}
}

// detectPreface reads the start of the stream and reports whether it is the HTTP/2 client preface
// (consumed then); otherwise the bytes read are replayed to the next reads (HTTP/1.1). A client that
// sends nothing within timeout gets its stream closed.
func (s *streamConn) detectPreface(timeout time.Duration) (bool, error) {
	t := time.AfterFunc(timeout, func() { s.Conn.Close() })
	defer t.Stop()
	buf := readBuffers.Get().(*[]byte)
	n := 0
	var rerr error
	for {
		m, err := s.Conn.Read((*buf)[n:])
		n += m
		k := min(n, len(http2.ClientPreface))
		if string((*buf)[:k]) != http2.ClientPreface[:k] || k == len(http2.ClientPreface) {
			rerr = err
			break
		}
		if err != nil {
			readBuffers.Put(buf)
			return false, err
		}
	}
	s.first = true
	h2 := n >= len(http2.ClientPreface) && string((*buf)[:len(http2.ClientPreface)]) == http2.ClientPreface
	pos := 0
	if h2 {
		pos = len(http2.ClientPreface)
	}
	if pos == n {
		readBuffers.Put(buf)
		s.rerr = rerr
	} else {
		s.rbuf, s.rpos, s.rend, s.rerr = buf, pos, n, rerr
	}
	return h2, nil
}

// Write implements net.Conn; on HTTP/2 connections it queues p for the writer goroutine.
func (s *streamConn) Write(p []byte) (int, error) {
	if !s.h2.Load() {
		return s.Conn.Write(p)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for s.werr == nil && !s.wclosed && s.wbuf != nil && len(*s.wbuf) >= maxPendingWrite {
		s.wcond.Wait()
	}
	if s.werr != nil {
		return 0, s.werr
	}
	if s.wclosed {
		return 0, net.ErrClosed
	}
	if s.wbuf == nil {
		s.wbuf = writeBuffers.Get().(*[]byte)
	}
	*s.wbuf = append(*s.wbuf, p...)
	if s.wdone == nil {
		s.wdone = make(chan struct{})
		go s.writeLoop(s.wdone)
	}
	return len(p), nil
}

// writeLoop writes pending bytes until none are left or a write fails, then exits.
func (s *streamConn) writeLoop(done chan struct{}) {
	s.wmu.Lock()
	for s.wbuf != nil && s.werr == nil {
		b := s.wbuf
		s.wbuf = nil
		s.wmu.Unlock()
		_, err := s.Conn.Write(*b)
		if cap(*b) <= maxPendingWrite {
			*b = (*b)[:0]
			writeBuffers.Put(b)
		}
		s.wmu.Lock()
		if err != nil && s.werr == nil {
			s.werr = err
		}
		s.wcond.Broadcast()
	}
	if s.wbuf != nil { // a write failed: drop what is pending
		s.wbuf = nil
	}
	s.wdone = nil
	close(done)
	s.wmu.Unlock()
}

// drain waits until pending bytes are written, at most for d.
func (s *streamConn) drain(d time.Duration) {
	s.wmu.Lock()
	done := s.wdone
	s.wmu.Unlock()
	if done == nil {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// Close writes what is pending, half-closes and closes the stream.
func (s *streamConn) Close() error {
	s.drain(closeDrainTimeout)
	s.CloseWrite() // END_STREAM first: the client reads a clean end, not a reset
	s.wmu.Lock()
	s.wclosed = true
	s.wcond.Broadcast()
	s.wmu.Unlock()
	err := s.Conn.Close()
	s.rdl.mu.Lock()
	if s.rdl.timer != nil {
		s.rdl.timer.Stop()
		s.rdl.armedAt = time.Time{}
	}
	s.rdl.mu.Unlock()
	s.once.Do(func() { close(s.done) })
	return err
}

// CloseWrite half-closes the stream (END_STREAM) after the pending bytes; the HTTP server does this
// before closing a connection it ends, so the client sees a clean end rather than a reset.
func (s *streamConn) CloseWrite() error {
	s.drain(closeDrainTimeout)
	if cw, ok := s.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
