package hbone

// stream.go: one CONNECT stream as a net.Conn.
//
// Invariants:
//   - Receive side (rmu): bytes queue in rbuf and are read in order; rerr is reported only once rbuf is
//     empty. A Read that finds nothing registers its buffer in pending; readLoop may then claim it
//     (filling): it moves whatever was queued in the meantime into it and reads the rest of a DATA
//     payload straight into it, so such bytes are copied once, by crypto/tls. A claimed buffer belongs
//     to readLoop until it clears filling, and Read never returns before that.
//   - Send side: wmu serialises Write, CloseWrite and the end of Close, so frames of one stream are in
//     order and END_STREAM follows the last DATA. sendWindow, localEnded, remoteEnded and werr are
//     guarded by conn.mu.
//   - Terminal states: END_STREAM from the peer reads as io.EOF; RST_STREAM NO_ERROR or CANCEL also reads
//     as io.EOF, other codes as *ResetError; writes after either RST fail with *ResetError. After Close,
//     reads and writes fail with net.ErrClosed.

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Stream is one HBONE CONNECT stream, returned by Pool.Dial and Request.Accept as a net.Conn. Besides
// net.Conn it offers CloseWrite (half-close: END_STREAM), PeerID, ResponseHeader and WriteTo (so that
// io.Copy from a stream moves received chunks without an intermediate copy). It is safe for
// one reader and one writer at a time, plus concurrent Close and deadline changes.
type Stream struct {
	c  *conn
	id uint32

	rready   chan struct{} // capacity 1: receive side changed
	wready   chan struct{} // capacity 1: send window or state changed
	closed   atomic.Bool
	activity atomic.Uint32 // DATA frames received and sent, for the idle timeout
	idle     atomic.Pointer[streamIdle]
	// NotifyReadable's one-shot callback, stored without an allocation: notifyFn under notifyMu, and
	// notifying (notifyFn != nil) for readable's check without the lock.
	notifyMu  sync.Mutex
	notifyFn  func()
	notifying atomic.Bool
	readDL    deadline
	writeDL   deadline

	// client response; set once, with respDone, under rmu
	client     bool
	status     int
	respFields []hpack.HeaderField // the response's regular fields
	respErr    error

	wmu sync.Mutex

	// guarded by conn.mu
	sendWindow   int64
	localEnded   bool
	remoteEnded  bool
	werr         error
	req          []hpack.HeaderField // server: the request of a stream waiting for a handler slot
	reqTruncated bool

	rmu         sync.Mutex
	rbuf        recvBuffer
	rerr        error // terminal read error, after rbuf drains
	rclosed     bool  // Close was called: reads fail, data is discarded
	recvWindow  int64
	recvUnacked int64
	pending     []byte // buffer of a waiting Read
	pendingN    int    // bytes readLoop put into pending
	filling     bool   // readLoop owns pending
	respDone    bool
	cancel      context.CancelFunc // server: cancels the handler's context
}

var (
	_ net.Conn    = (*Stream)(nil)
	_ io.WriterTo = (*Stream)(nil)
)

func newStream(c *conn, id uint32) *Stream {
	return &Stream{
		c:          c,
		id:         id,
		rready:     make(chan struct{}, 1),
		wready:     make(chan struct{}, 1),
		recvWindow: int64(c.cfg.settings.StreamWindow),
		rbuf:       recvBuffer{spare: &c.spare},
	}
}

// Read reads bytes the peer sent. It returns io.EOF after the peer's END_STREAM (or a RST_STREAM with
// NO_ERROR or CANCEL) once earlier bytes are read.
func (s *Stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rmu.Lock()
	for {
		if s.rclosed {
			s.rmu.Unlock()
			return 0, net.ErrClosed
		}
		if s.rbuf.len() > 0 {
			n := s.rbuf.read(p)
			s.rmu.Unlock()
			s.consumed(n)
			return n, nil
		}
		if s.rerr != nil {
			err := s.rerr
			s.rmu.Unlock()
			return 0, err
		}
		dl := s.readDL.wait()
		if isClosed(dl) {
			s.rmu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		s.pending = p
		s.rmu.Unlock()
		for range spins {
			// Data often arrives within microseconds (readLoop is decrypting it on another P): yield a
			// few times before parking, which costs a futex wake and a spinning thread.
			runtime.Gosched()
			if s.pendingReady() {
				break
			}
		}
		timedOut := false
		select {
		case <-s.rready:
		case <-dl:
			timedOut = true
		}
		s.rmu.Lock()
		for s.filling {
			s.rmu.Unlock()
			<-s.rready
			s.rmu.Lock()
		}
		s.pending = nil
		if n := s.pendingN; n > 0 {
			s.pendingN = 0
			s.rmu.Unlock()
			s.consumed(n)
			return n, nil
		}
		if timedOut && s.rbuf.len() == 0 {
			s.rmu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
	}
}

// WriteTo writes the bytes the peer sends to w until the peer's END_STREAM (then it returns nil), an
// error, or the read deadline. It implements io.WriterTo, so io.Copy(w, s) hands w the received chunks
// themselves instead of copying them into an intermediate buffer first.
func (s *Stream) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		s.rmu.Lock()
		for s.rbuf.len() == 0 && s.rerr == nil && !s.rclosed {
			dl := s.readDL.wait()
			if isClosed(dl) {
				s.rmu.Unlock()
				return total, os.ErrDeadlineExceeded
			}
			s.rmu.Unlock()
			select {
			case <-s.rready:
			case <-dl:
			}
			s.rmu.Lock()
		}
		s.rmu.Unlock()
		n, err := s.WriteAvailable(w)
		total += n
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return total, err
		}
	}
}

// WriteAvailable writes to w the bytes received and not yet read, without waiting for more. It returns
// nil once nothing is left and the stream is still open (NotifyReadable tells when to call it again),
// io.EOF after the peer's end of stream (or a reset with NO_ERROR or CANCEL) once everything before it
// was written, net.ErrClosed after Close, or the write's or the stream's error.
func (s *Stream) WriteAvailable(w io.Writer) (int64, error) {
	var total int64
	for {
		s.rmu.Lock()
		if s.rclosed {
			s.rmu.Unlock()
			return total, net.ErrClosed
		}
		if s.rbuf.len() == 0 {
			err := s.rerr
			s.rmu.Unlock()
			return total, err
		}
		ch := s.rbuf.pop()
		s.rmu.Unlock()
		n, err := w.Write(ch.b[ch.r:ch.w])
		s.rbuf.release(ch.b)
		total += int64(n)
		s.consumed(ch.w - ch.r)
		if err != nil {
			return total, err
		}
	}
}

// NotifyReadable arranges for f to be called once when the stream next becomes readable: bytes arrive,
// the peer ends or resets it, the connection fails or the stream is closed. It reports true, without
// arranging anything, when the stream is readable already. f runs on the connection's read loop (or the
// goroutine that closed the stream), possibly with the stream's locks held: it must only schedule work
// and return, never block or call into the stream. A later call replaces an f not yet called.
func (s *Stream) NotifyReadable(f func()) (ready bool) {
	s.notifyMu.Lock()
	s.notifyFn = f
	s.notifying.Store(true)
	s.notifyMu.Unlock()
	s.rmu.Lock()
	ready = s.rbuf.len() > 0 || s.rerr != nil || s.rclosed
	s.rmu.Unlock()
	if !ready {
		return false
	}
	s.notifyMu.Lock()
	ours := s.notifyFn != nil // else readable took f: it was or will be called
	s.notifyFn = nil
	s.notifying.Store(false)
	s.notifyMu.Unlock()
	return ours
}

// readable wakes a waiting Read or WriteTo, and calls the NotifyReadable callback. Call it after the
// change that made the stream readable.
func (s *Stream) readable() {
	signal(s.rready)
	if !s.notifying.Load() {
		return
	}
	s.notifyMu.Lock()
	f := s.notifyFn
	s.notifyFn = nil
	s.notifying.Store(false)
	s.notifyMu.Unlock()
	if f != nil {
		f()
	}
}

var spins = 3

func (s *Stream) pendingReady() bool {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	return s.pendingN > 0 || s.rerr != nil
}

// receive takes the payload of a DATA frame for s off the connection (readLoop only). The payload goes
// straight into the buffer of a waiting Read when there is one and nothing is queued before it; otherwise
// it is published to rbuf piece by piece (one TLS record at a time), so the reader can start copying
// while the rest of the frame is decrypted, and can claim the remainder directly once it waits again.
func (s *Stream) receive(fh http2.FrameHeader) error {
	c := s.c
	n := int(fh.Length)
	var padded []byte // the data of a padded frame, read in full (rare)
	if fh.Flags.Has(http2.FlagDataPadded) {
		buf := make([]byte, n)
		if _, err := io.ReadFull(c.br, buf); err != nil {
			return err
		}
		if n == 0 || int(buf[0]) >= n {
			return connError{code: http2.ErrCodeProtocol, reason: "DATA padding exceeds payload"}
		}
		padded = buf[1 : n-int(buf[0])]
	}
	discard := func(k int) error {
		if padded == nil {
			if _, err := c.br.Discard(k); err != nil {
				return err
			}
		}
		c.discarded(int64(k))
		return nil
	}

	s.rmu.Lock()
	if s.rerr != nil && !s.rclosed {
		// END_STREAM or reset already seen: the peer broke the stream's state machine.
		s.rmu.Unlock()
		if err := discard(n); err != nil {
			return err
		}
		return c.resetStream(s.id, http2.ErrCodeStreamClosed)
	}
	if int64(n) > s.recvWindow {
		s.rmu.Unlock()
		if err := discard(n); err != nil {
			return err
		}
		return c.resetStream(s.id, http2.ErrCodeFlowControl)
	}
	s.recvWindow -= int64(n)
	s.activity.Add(1)
	if padded != nil {
		dropped := s.rclosed
		if !dropped {
			s.rbuf.appendCopy(padded)
		}
		s.rmu.Unlock()
		s.readable()
		// Padding and the pad-length byte are flow-controlled but never read: credit them now.
		s.discarded(n - len(padded))
		if dropped {
			c.discarded(int64(len(padded)))
		}
		if err := c.checkEmptyData(len(padded), fh.Flags.Has(http2.FlagDataEndStream)); err != nil {
			return err
		}
	} else {
		s.rmu.Unlock()
		if err := s.receiveData(n); err != nil {
			return err
		}
	}
	if fh.Flags.Has(http2.FlagDataEndStream) {
		c.remoteEnd(s)
	}
	return nil
}

// receiveData moves n payload bytes from the connection to s (see receive). The connection's piece is
// given back to the spares when the frame is done, so that an idle connection holds none.
func (s *Stream) receiveData(n int) error {
	c := s.c
	defer func() {
		if c.piece != nil {
			c.spare.put(c.piece)
			c.piece = nil
		}
	}()
	for n > 0 {
		s.rmu.Lock()
		if s.rclosed {
			s.rmu.Unlock()
			if _, err := c.br.Discard(n); err != nil {
				return err
			}
			c.discarded(int64(n))
			return nil
		}
		if s.pending != nil && s.rbuf.len() < len(s.pending) {
			// A Read waits: move what is queued into its buffer (its own copy, done here) and read the
			// rest of its buffer's worth straight from the connection.
			k := s.rbuf.read(s.pending)
			dst := s.pending[k : k+min(len(s.pending)-k, n)]
			s.filling = true
			s.rmu.Unlock()
			err := c.readDirect(dst)
			s.rmu.Lock()
			s.filling = false
			s.pending = nil
			s.pendingN = k
			if err == nil {
				s.pendingN += len(dst)
			}
			s.rmu.Unlock()
			s.readable()
			if err != nil {
				return err
			}
			n -= len(dst)
			continue
		}
		s.rmu.Unlock()
		if c.piece == nil {
			c.piece = c.spare.get()
		}
		m, err := c.readSome(c.piece[:min(n, len(c.piece))])
		if m > 0 {
			s.rmu.Lock()
			switch {
			case s.rclosed:
				c.discarded(int64(m))
			case m >= len(c.piece)/2:
				s.rbuf.appendChunk(c.piece, m) // hand the piece over, no copy
				c.piece = nil
			default:
				s.rbuf.appendCopy(c.piece[:m]) // pack small pieces: memory stays within 2x the window
			}
			s.rmu.Unlock()
			s.readable()
			n -= m
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// readDirect fills p from the connection: first what br holds, then straight from the TLS connection.
func (c *conn) readDirect(p []byte) error {
	if k := c.br.Buffered(); k > 0 {
		m, _ := c.br.Read(p[:min(len(p), k)])
		p = p[m:]
	}
	if len(p) == 0 {
		return nil
	}
	_, err := io.ReadFull(c.nc, p)
	return err
}

// readSome reads at least one byte into p with a single read: from br if it holds bytes, else from the
// TLS connection (which returns at most one record).
func (c *conn) readSome(p []byte) (int, error) {
	if c.br.Buffered() > 0 {
		return c.br.Read(p[:min(len(p), c.br.Buffered())])
	}
	n, err := c.nc.Read(p)
	if n > 0 {
		err = nil // a later read reports it
	}
	if n == 0 && err == nil {
		err = io.ErrNoProgress
	}
	return n, err
}

// remoteEOFLocked records the peer's END_STREAM. rmu is held.
func (s *Stream) remoteEOFLocked() {
	if s.rerr == nil {
		s.rerr = io.EOF
	}
	s.readable()
}

// Write sends p as DATA frames, waiting for flow-control window. It honours the write deadline.
func (s *Stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	total := 0
	for len(p) > 0 {
		dl := s.writeDL.wait() // nil unless a deadline was set: Close interrupts reserveSend through werr
		if isClosed(dl) {
			return total, s.writeErr(os.ErrDeadlineExceeded)
		}
		n, err := s.c.reserveSend(s, len(p), dl)
		if err != nil {
			return total, s.writeErr(err)
		}
		if err := s.c.writeData(s, p[:n]); err != nil {
			s.c.unreserve(s, n)
			return total, s.writeErr(err)
		}
		s.activity.Add(1)
		total += n
		p = p[n:]
	}
	return total, nil
}

// lockWrite takes the connection's write lock for s: at once when it is free, else waiting on the write
// deadline, whose channel (which Close expires) is created only then, so that a stream that never waits
// for the lock carries none.
func (s *Stream) lockWrite() error {
	if s.c.tryLockWrite() {
		return nil
	}
	dl := s.writeDL.waitAlloc()
	if s.closed.Load() {
		// Close may have expired the deadline before its channel existed: it set closed first.
		return net.ErrClosed
	}
	return s.c.lockWrite(dl, nil)
}

// writeErr maps a wait interrupted by Close to net.ErrClosed.
func (s *Stream) writeErr(err error) error {
	if s.closed.Load() {
		return net.ErrClosed
	}
	return err
}

func (s *Stream) writeErrLocked() error {
	if s.werr != nil {
		return s.werr
	}
	if s.localEnded {
		return ErrWriteAfterClose
	}
	return nil
}

// CloseWrite half-closes the stream: it sends END_STREAM after the data already written. Reading goes
// on until the peer ends its side. Calling it again is a no-op.
func (s *Stream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	c := s.c
	c.mu.Lock()
	if err := s.writeErrLocked(); err != nil {
		c.mu.Unlock()
		if err == ErrWriteAfterClose {
			return nil
		}
		return err
	}
	s.localEnded = true
	gone := s.remoteEnded && c.streams[s.id] == s // see remoteEnd
	if gone {
		c.removeLocked(s)
	}
	c.queueLocked(ctrlFrame{kind: ctrlEndStream, streamID: s.id})
	c.mu.Unlock()
	c.settle()
	if gone {
		c.streamLeft(false)
	}
	return nil
}

// Close ends the stream. If this side has not sent END_STREAM it does so, and if the peer has not ended
// its side the stream is reset with CANCEL (which ztunnel reads as a clean end). Unread bytes are
// dropped. Blocked Reads and Writes return net.ErrClosed.
func (s *Stream) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	c := s.c
	s.rmu.Lock()
	s.rclosed = true
	dropped := s.rbuf.reset()
	cancel := s.cancel
	s.rmu.Unlock()
	s.readable()
	c.mu.Lock()
	if s.werr == nil {
		s.werr = net.ErrClosed
	}
	c.mu.Unlock()
	s.writeDL.expire() // after werr: a Write that fetched its channel earlier is interrupted, a later one sees werr
	signal(s.wready)

	s.wmu.Lock() // let an in-flight Write finish
	c.mu.Lock()
	_, open := c.streams[s.id]
	if open {
		if !s.localEnded {
			s.localEnded = true
			c.queueLocked(ctrlFrame{kind: ctrlEndStream, streamID: s.id})
		}
		if !s.remoteEnded {
			c.queueLocked(ctrlFrame{kind: ctrlRST, streamID: s.id, code: http2.ErrCodeCancel})
		}
		c.removeLocked(s)
	}
	c.mu.Unlock()
	s.wmu.Unlock()
	c.settle()
	c.consumed(int64(dropped))
	if open {
		c.streamLeft(false)
	}
	s.readDL.stop()
	s.writeDL.stop()
	s.stopIdle()
	if cancel != nil {
		cancel()
	}
	return nil
}

// fail ends the stream with err, without telling the peer (it was reset, refused or the connection
// closed). The caller has removed s from the connection.
func (s *Stream) fail(err error) {
	s.failWith(err, err, err)
}

// peerReset handles RST_STREAM from the peer.
func (s *Stream) peerReset(code http2.ErrCode) {
	rerr := &ResetError{Code: code, Remote: true}
	var readErr error = rerr
	if code == http2.ErrCodeNo || code == http2.ErrCodeCancel {
		readErr = io.EOF
	}
	var respErr error = rerr
	if code == http2.ErrCodeRefusedStream {
		respErr = errRefused
	}
	s.failWith(readErr, rerr, respErr)
}

func (s *Stream) failWith(readErr, writeErr, respErr error) {
	c := s.c
	s.stopIdle()
	c.mu.Lock()
	if s.werr == nil {
		s.werr = writeErr
	}
	c.mu.Unlock()
	signal(s.wready)
	s.rmu.Lock()
	if s.rerr == nil {
		s.rerr = readErr
	}
	cancel := s.cancel
	s.setResponseLocked(0, nil, respErr)
	s.rmu.Unlock()
	s.readable()
	if cancel != nil {
		cancel()
	}
}

// setResponse records the response headers (client).
func (s *Stream) setResponse(status int, h []hpack.HeaderField) {
	s.rmu.Lock()
	s.setResponseLocked(status, h, nil)
	s.rmu.Unlock()
}

func (s *Stream) setResponseLocked(status int, h []hpack.HeaderField, err error) {
	if s.respDone || !s.client {
		return
	}
	s.respDone = true
	s.status, s.respFields, s.respErr = status, h, err
	s.readable()
}

// waitResponse waits for the response headers (or a failure) of a client stream.
func (s *Stream) waitResponse(ctx context.Context) error {
	for {
		s.rmu.Lock()
		done := s.respDone
		s.rmu.Unlock()
		if done {
			return nil
		}
		select {
		case <-s.rready:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// responded reports whether the response headers were received (client) or sent (server).
func (s *Stream) responded() bool {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	return s.respDone
}

// setCancel installs the handler context's cancel func (server), cancelling at once if s already failed.
func (s *Stream) setCancel(cancel context.CancelFunc) {
	s.rmu.Lock()
	s.cancel = cancel
	failed := s.rerr != nil && s.rerr != io.EOF
	s.rmu.Unlock()
	if failed {
		cancel()
	}
}

// LocalAddr returns the local address of the HBONE connection.
func (s *Stream) LocalAddr() net.Addr { return s.c.nc.LocalAddr() }

// RemoteAddr returns the remote address of the HBONE connection.
func (s *Stream) RemoteAddr() net.Addr { return s.c.nc.RemoteAddr() }

// SetDeadline sets the read and write deadlines.
func (s *Stream) SetDeadline(t time.Time) error {
	s.readDL.set(t)
	s.writeDL.set(t)
	signal(s.rready)
	signal(s.wready)
	return nil
}

// SetReadDeadline sets the deadline for Read; a Read waiting past it returns os.ErrDeadlineExceeded.
func (s *Stream) SetReadDeadline(t time.Time) error {
	s.readDL.set(t)
	signal(s.rready)
	return nil
}

// SetWriteDeadline sets the deadline for Write; a Write waiting past it (for flow-control window or the
// connection) returns os.ErrDeadlineExceeded.
func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.writeDL.set(t)
	signal(s.wready)
	return nil
}

// PeerID returns the SPIFFE ID the peer's certificate was verified for.
func (s *Stream) PeerID() spiffeid.ID { return s.c.peerID }

// ResponseHeader returns the headers of the peer's 200 response (client streams; nil on the server), in
// a new map at each call.
func (s *Stream) ResponseHeader() http.Header { return headerOf(s.respFields) }
