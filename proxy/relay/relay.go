// Package relay copies bytes both ways between two connections with half-close, live byte counters and
// no buffer held while a connection is idle: a direction reading TCP waits for readability without a
// buffer (a MSG_PEEK of one byte through the runtime poller), then borrows a pooled 1 KiB buffer, and a
// 64 KiB one while reads keep filling it, and gives it back as soon as a read comes up short. When both
// sides are plain TCP the kernel splices instead (io.Copy on *net.TCPConn), with no user-space buffer at
// all; an HBONE stream hands over the chunks it received (hbone.Stream.WriteTo), also without a buffer
// of ours. Other sources read into a 1 KiB buffer of their own, as before.
//
// It imports only hbone (for its streams); never agent/ or waypoint/.
package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/hbone"
)

// Buffer sizes: small while trickling, big while a read fills the buffer. A TCP source gives its buffer
// back after every short read; other sources keep the small one while idle, and the big one until a read
// returns less than an eighth of it (256 KiB measured about 9% less mesh CPU per MB than 64 KiB, but
// would be what such a source holds idle after a burst).
const (
	smallSize = 1 << 10
	bigSize   = 64 << 10
)

var (
	smallPool = sync.Pool{New: func() any { b := make([]byte, smallSize); return &b }}
	bigPool   = sync.Pool{New: func() any { b := make([]byte, bigSize); return &b }}
)

// Counters are live byte counts of a relay; they may be read at any time.
type Counters struct {
	// AToB counts bytes read from a and written to b; BToA the other way.
	AToB, BToA atomic.Int64
}

// closeWriter is implemented by *net.TCPConn, *tls.Conn and HBONE streams.
type closeWriter interface{ CloseWrite() error }

// Bidi relays between a and b until both directions end, then closes both. When one side's reads end
// (EOF), the other side is half-closed so the peer sees the end of stream while the reverse direction
// keeps flowing. Cancelling ctx closes both connections at once (policy change, shutdown). The error is
// the first one that is not a clean end of stream or a consequence of cancellation.
func Bidi(ctx context.Context, a, b net.Conn, c *Counters) error {
	if c == nil {
		c = &Counters{}
	}
	stop := context.AfterFunc(ctx, func() {
		a.Close()
		b.Close()
	})
	defer stop()
	errs := make(chan error, 1)
	go func() { errs <- copyHalf(b, a, &c.AToB) }()
	err1 := copyHalf(a, b, &c.BToA)
	err2 := <-errs
	a.Close()
	b.Close()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.Join(err1, err2)
}

// copyHalf copies src to dst, then half-closes dst (or closes it when it cannot half-close).
func copyHalf(dst, src net.Conn, n *atomic.Int64) error {
	err := copyData(dst, src, n)
	if cw, ok := dst.(closeWriter); ok {
		if cerr := cw.CloseWrite(); err == nil {
			err = cleanEnd(cerr) // a stream the peer already reset cannot half-close
		}
	} else {
		dst.Close()
	}
	return err
}

func copyData(dst, src net.Conn, n *atomic.Int64) error {
	dt, ok1 := dst.(*net.TCPConn)
	st, ok2 := src.(*net.TCPConn)
	if ok1 && ok2 {
		// splice(2) through a kernel pipe; the count arrives when the copy ends.
		w, err := dt.ReadFrom(st)
		n.Add(w)
		return cleanEnd(err)
	}
	if hs, ok := src.(*hbone.Stream); ok {
		// The stream hands over the chunks it received; no buffer of ours, none held while idle.
		_, err := hs.WriteTo(countingWriter{dst, n})
		return cleanEnd(err)
	}
	if ok2 {
		return copyTCP(dst, st, n)
	}
	small := make([]byte, smallSize)
	buf := small
	var big *[]byte
	defer func() {
		if big != nil {
			bigPool.Put(big)
		}
	}()
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n.Add(int64(nw))
			if werr != nil {
				return cleanEnd(werr)
			}
		}
		if rerr != nil {
			return cleanEnd(rerr)
		}
		switch {
		case nr == len(buf) && big == nil:
			big = bigPool.Get().(*[]byte)
			buf = *big
		case nr < len(buf)/8 && big != nil:
			// Traffic slowed down: give the big buffer back before the next (possibly long) read.
			bigPool.Put(big)
			big, buf = nil, small
		}
	}
}

// copyTCP copies from a TCP connection holding a buffer only while data is there to read: it waits for
// readability without one (waitReadable), then reads with pooled buffers until a read comes up short.
func copyTCP(dst net.Conn, src *net.TCPConn, n *atomic.Int64) error {
	rc, err := src.SyscallConn()
	if err != nil {
		return fmt.Errorf("raw connection: %w", err)
	}
	for {
		// Blocks in the runtime poller like Read; Close and read deadlines interrupt it alike.
		if err := rc.Read(waitReadable); err != nil {
			return cleanEnd(err)
		}
		if done, err := drain(dst, src, n); done {
			return err
		}
	}
}

// drain copies what src has to read now, with pooled buffers given back before it returns. It reports
// done with the copy's result once src ends or either side fails.
func drain(dst net.Conn, src *net.TCPConn, n *atomic.Int64) (done bool, err error) {
	pool := &smallPool
	bp := pool.Get().(*[]byte)
	defer func() { pool.Put(bp) }()
	for {
		buf := *bp
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n.Add(int64(nw))
			if werr != nil {
				return true, cleanEnd(werr)
			}
		}
		if rerr != nil {
			return true, cleanEnd(rerr)
		}
		if nr < len(buf) {
			return false, nil // probably drained: wait again without a buffer
		}
		if pool == &smallPool {
			pool.Put(bp)
			pool = &bigPool
			bp = pool.Get().(*[]byte)
		}
	}
}

// waitReadable is a syscall.RawConn.Read callback that reports whether fd has something to read (bytes,
// end of stream or an error) without taking any: a MSG_PEEK of one byte. On EAGAIN it returns false and
// the runtime poller parks the goroutine until fd becomes readable.
func waitReadable(fd uintptr) bool {
	var b [1]byte
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		switch errno {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		return true // data, end of stream (0 bytes) or an error the next Read reports
	}
}

// countingWriter counts what it writes to w.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// cleanEnd maps the ways a connection ends normally to nil: end of stream, a connection closed here, and
// an HBONE stream the peer reset with NO_ERROR or CANCEL (how a peer closes a stream it no longer wants;
// reads see it as io.EOF, writes as *hbone.ResetError).
func cleanEnd(err error) error {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	var re *hbone.ResetError
	if errors.As(err, &re) && re.Remote && (re.Code == http2.ErrCodeNo || re.Code == http2.ErrCodeCancel) {
		return nil
	}
	return err
}
