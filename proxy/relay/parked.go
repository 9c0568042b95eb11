package relay

// parked.go: the readiness-driven relay (Start).
//
// Invariants:
//   - Each direction (a half) is running, parked or done (state). Only the goroutine that moved it to
//     running drains it; a wake-up (readiness event, stream notification, cancellation) takes it from
//     parked to running with a compare-and-swap and starts that goroutine, so a half is drained by at most
//     one goroutine at a time and a wake-up for a half that is not parked is dropped. A half is running
//     from New on, owned by the goroutine that calls Run until it parks (a TCP source's first read is
//     that goroutine's).
//   - A half parks by storing parked and then arming its watch: a readiness that comes before the arm is
//     reported by the arm itself (level-triggered epoll, NotifyReadable's ready), so no wake-up is lost.
//   - Cancellation closes both connections, then wakes both halves: a parked half's next read fails and
//     ends it; a running one's fails on its own.
//   - The relay ends when both halves have ended: the last one closes both connections and calls done.

import (
	"context"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/hbone"
)

const (
	running int32 = iota
	parked
	ended
)

// Relay is one connection relayed by Start (or New and Run).
type Relay struct {
	ctx    context.Context
	a, b   net.Conn
	ab, ba half
	left   atomic.Int32          // halves not ended yet
	stop   func() bool           // stops the cancellation hook; nil when ctx cannot be cancelled
	cause  atomic.Pointer[error] // Cancel's cause, the relay's result
	done   func(error)

	counters Counters // when the caller passes none (one allocation fewer)
}

// relay is the package's name for Relay.
type relay = Relay

// half is one direction of a relay: src to dst.
type half struct {
	r        *relay
	src, dst net.Conn
	n        *atomic.Int64

	rc     syscall.RawConn // a TCP source: parked by the poller
	dstRC  syscall.RawConn // a TCP destination of a TCP source: drained by splice(2)
	stream *hbone.Stream   // a stream source: parked by its notification
	wakeFn func()          // h.wake for a stream's notification, allocated once
	runFn  func()          // h.run, allocated once (go h.run() would allocate a closure each time)

	state  atomic.Int32
	pollID uint64 // registration in the poller, guarded by its mu
	err    error  // the half's result, written before it counts itself out of left

	// A TCP source's one raw-connection callback (syscallCallback, through RawConn.Read), allocated once
	// rather than per call, with its arguments and results: a read for readNow (by the draining
	// goroutine) when ctl.op is 0, else the poller's epoll_ctl (by the same goroutine, under the
	// poller's mu).
	sys func(fd uintptr) bool
	io  struct {
		p   []byte
		n   int
		err error
	}
	ctl struct {
		op, epfd int
		ev       syscall.EpollEvent
		err      error
	}
}

// live counts the relays started and not ended.
var live atomic.Int64

// Live returns the number of relays running in the process (Start or Bidi).
func Live() int { return int(live.Load()) }

// Start relays between a and b like Bidi but returns at once: done is called once, with Bidi's result,
// from whichever goroutine ends the relay (it must not block for long). While a direction has nothing to
// read it holds no goroutine (see the package doc); the caller need not keep one either.
func Start(ctx context.Context, a, b net.Conn, c *Counters, done func(error)) {
	New(ctx, a, b, c, done).Run()
}

// New prepares Start's relay without starting it, so that the caller can hand r.Cancel to whoever may
// end the connection (a connection tracker) before Run starts it: one cancellation hook per connection,
// with no context of its own. Run must be called exactly once.
func New(ctx context.Context, a, b net.Conn, c *Counters, done func(error)) *Relay {
	r := &relay{ctx: ctx, a: a, b: b, done: done}
	if c == nil {
		c = &r.counters
	}
	r.left.Store(2)
	r.ab.init(r, a, b, &c.AToB)
	r.ba.init(r, b, a, &c.BToA)
	return r
}

// Run starts the relay New prepared. What a TCP source has already received (up to 1 KiB) is relayed on
// the calling goroutine before Run returns, with no poller round trip and no goroutine of its own; a
// write of it that blocks keeps the caller until it completes (or the relay is cancelled).
func (r *Relay) Run() {
	live.Add(1)
	if r.ctx.Done() != nil {
		r.stop = context.AfterFunc(r.ctx, r.cancel)
	}
	// The half whose start reads inline (a TCP source) goes last, so that the other direction is
	// already live should that write block.
	first, second := &r.ab, &r.ba
	if first.rc != nil && second.rc == nil {
		first, second = second, first
	}
	first.start()
	second.start()
}

// Cancel ends the relay (before or after Run) with cause as done's result, unless it has ended already
// or was cancelled before; a nil cause is context.Canceled.
func (r *Relay) Cancel(cause error) {
	if cause == nil {
		cause = context.Canceled
	}
	if r.cause.CompareAndSwap(nil, &cause) {
		r.cancel()
	}
}

// cancel closes both connections and wakes both halves, which then end.
func (r *relay) cancel() {
	r.a.Close()
	r.b.Close()
	r.ab.wake()
	r.ba.wake()
}

// halfEnded counts a half out; the last one ends the relay.
func (r *relay) halfEnded() {
	if r.left.Add(-1) != 0 {
		return
	}
	if r.stop != nil {
		r.stop()
	}
	// Before the closes: closing an HBONE stream cancels its handler's context, which may be ctx's parent.
	err := r.ctx.Err()
	if cause := r.cause.Load(); cause != nil {
		err = *cause
	} else if err == nil {
		err = errors.Join(r.ba.err, r.ab.err)
	}
	r.a.Close()
	r.b.Close()
	live.Add(-1)
	r.done(err)
}

func (h *half) init(r *relay, src, dst net.Conn, n *atomic.Int64) {
	h.r, h.src, h.dst, h.n = r, src, dst, n
	switch s := src.(type) {
	case *net.TCPConn:
		if rc, err := s.SyscallConn(); err == nil {
			h.rc = rc
			h.sys = h.syscallCallback
		}
		if d, ok := dst.(*net.TCPConn); ok && h.rc != nil {
			if rc, err := d.SyscallConn(); err == nil {
				h.dstRC = rc
			}
		}
	case *hbone.Stream:
		h.stream = s
		h.wakeFn = h.wake
	}
	if h.rc != nil || h.stream != nil {
		h.runFn = h.run
	}
}

// start begins the half: a TCP source is read once on the calling goroutine (first), a stream parked
// until it is readable, any other source copied on a goroutine of its own.
func (h *half) start() {
	switch {
	case h.rc != nil:
		h.first()
	case h.stream != nil:
		h.park()
	default:
		go func() { h.end(copyData(h.dst, h.src, h.n)) }() // owned: ends with src (Close interrupts it)
	}
}

// first relays what the TCP source has received already with one read of up to smallSize (the half is
// running, owned by the caller), then parks the half, continues on a goroutine when the read filled the
// buffer (more may be waiting), or ends it.
func (h *half) first() {
	bp := smallPool.Get().(*[]byte)
	buf := *bp
	nr, again, rerr := h.readNow(buf)
	var werr error
	if nr > 0 {
		var nw int
		nw, werr = h.dst.Write(buf[:nr])
		h.n.Add(int64(nw))
	}
	smallPool.Put(bp)
	switch {
	case werr != nil:
		h.end(cleanEnd(werr))
	case rerr != nil:
		h.end(cleanEnd(rerr))
	case nr == 0 && !again:
		h.end(nil) // end of stream
	case nr == len(buf):
		go h.runFn() // owned: drains, then parks or ends the half
	default:
		h.park()
	}
}

// park parks the running half, or has a goroutine drain it when it must not wait.
func (h *half) park() {
	h.state.Store(parked)
	if h.arm() && h.state.CompareAndSwap(parked, running) {
		go h.runFn() // owned: drains, then parks or ends the half
	}
}

// wake starts draining a parked half; it does nothing to a half that is running or ended.
func (h *half) wake() {
	if h.state.CompareAndSwap(parked, running) {
		go h.runFn() // owned: drains, then parks or ends the half
	}
}

// run drains the source until it has nothing more to read, then parks; or ends the half.
func (h *half) run() {
	for {
		var done bool
		var err error
		before := h.n.Load()
		switch {
		case h.stream != nil:
			done, err = h.drainStream()
		case h.dstRC != nil:
			done, err = h.drainSplice()
		default:
			done, err = h.drainTCP()
		}
		if done {
			h.end(err)
			return
		}
		if h.rc != nil && h.n.Load()-before >= lingerBytes && h.linger() {
			continue
		}
		h.state.Store(parked)
		if !h.arm() || !h.state.CompareAndSwap(parked, running) {
			return // parked, or a wake-up took it over
		}
	}
}

// A drain that moved at least lingerBytes is a bulk flow: its goroutine waits up to lingerTime for more
// (in the runtime poller, as a blocking read would) before it parks, so that a busy connection is not
// parked and woken through the poller for every burst. A connection idle for longer holds no goroutine.
const (
	lingerBytes = 64 << 10
	lingerTime  = 5 * time.Millisecond
)

// linger waits up to lingerTime for the TCP source to become readable; false when it did not.
func (h *half) linger() bool {
	c := h.src.(*net.TCPConn)
	if c.SetReadDeadline(time.Now().Add(lingerTime)) != nil {
		return false
	}
	err := h.rc.Read(waitReadable)
	_ = c.SetReadDeadline(time.Time{})
	return !errors.Is(err, os.ErrDeadlineExceeded) // readable, or an error the next read reports
}

// waitReadable is a syscall.RawConn.Read callback that reports whether fd has something to read (bytes,
// end of stream or an error) without taking any: a MSG_PEEK of one byte. On EAGAIN it returns false and
// the runtime poller parks the goroutine until fd becomes readable (or the read deadline).
func waitReadable(fd uintptr) bool {
	var b [1]byte
	for {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		return true // data, end of stream (0 bytes) or an error the next read reports
	}
}

// arm watches the source for readiness; it reports true when the half must not wait (readable now, or
// the watch failed: the next read reports why).
func (h *half) arm() (now bool) {
	if h.stream != nil {
		return h.stream.NotifyReadable(h.wakeFn)
	}
	return sources.arm(h) != nil
}

// end records the half's result, half-closes its destination and counts it out of the relay.
func (h *half) end(err error) {
	h.state.Store(ended)
	if h.rc != nil {
		sources.remove(h)
	}
	h.err = closeHalf(h.dst, err)
	h.r.halfEnded()
}

// Write writes p to dst and counts it (the writer a stream drains into).
func (h *half) Write(p []byte) (int, error) {
	n, err := h.dst.Write(p)
	h.n.Add(int64(n))
	return n, err
}

// drainStream writes to dst what the stream has received; done once the stream or dst ended.
func (h *half) drainStream() (done bool, err error) {
	_, err = h.stream.WriteAvailable(h)
	if err == nil {
		return false, nil
	}
	return true, cleanEnd(err)
}

// drainTCP copies what the TCP source has to read now, with pooled buffers given back before it
// returns; done once the source ended or either side failed. A short read ends the drain: the source
// is probably empty, and if not the arm reports it readable at once.
func (h *half) drainTCP() (done bool, err error) {
	pool := &smallPool
	bp := pool.Get().(*[]byte)
	defer func() { pool.Put(bp) }()
	for {
		buf := *bp
		nr, again, rerr := h.readNow(buf)
		if nr > 0 {
			nw, werr := h.dst.Write(buf[:nr])
			h.n.Add(int64(nw))
			if werr != nil {
				return true, cleanEnd(werr)
			}
		}
		switch {
		case rerr != nil:
			return true, cleanEnd(rerr)
		case again:
			return false, nil
		case nr == 0:
			return true, nil // end of stream
		case nr < len(buf):
			return false, nil
		}
		if pool == &smallPool {
			pool.Put(bp)
			pool = &bigPool
			bp = pool.Get().(*[]byte)
		}
	}
}

// readNow reads from the non-blocking TCP source without waiting: again when it has nothing to read.
func (h *half) readNow(p []byte) (n int, again bool, err error) {
	h.io.p = p
	cerr := h.rc.Read(h.sys)
	n, serr := h.io.n, h.io.err
	h.io.p, h.io.err = nil, nil
	if cerr != nil {
		return 0, false, cerr
	}
	switch {
	case serr == syscall.EAGAIN:
		return 0, true, nil
	case serr != nil:
		return 0, false, os.NewSyscallError("read", serr)
	}
	return n, false, nil
}

// syscallCallback is h.sys: epoll_ctl when ctl.op is set (then cleared), else a read into io.p. It never
// asks the runtime to wait (an EAGAIN read is reported to readNow).
func (h *half) syscallCallback(fd uintptr) bool {
	if h.ctl.op != 0 {
		h.ctl.err = syscall.EpollCtl(h.ctl.epfd, h.ctl.op, int(fd), &h.ctl.ev)
		h.ctl.op = 0
		return true
	}
	for {
		h.io.n, h.io.err = syscall.Read(int(fd), h.io.p)
		if h.io.err != syscall.EINTR {
			return true
		}
	}
}

// pipeSize is the kernel pipe a splice drain moves data through (asked for; the kernel may round it).
const pipeSize = 256 << 10

// drainSplice moves what the TCP source has to read now into the TCP destination through a kernel pipe
// (splice(2), no user-space copy), until the source would block; done once the source ended or either
// side failed. The pipe is the poller's (kept only while relays are registered). A write that would
// block waits in the runtime poller.
func (h *half) drainSplice() (done bool, err error) {
	kp, err := sources.getPipe()
	if err != nil {
		return h.drainTCP() // out of descriptors: copy through user space instead
	}
	empty := true
	defer func() { sources.putPipe(kp, empty) }()
	const flags = spliceNonblock | spliceMove
	for {
		var n int64
		var serr error
		if cerr := h.rc.Read(func(fd uintptr) bool {
			for {
				n, serr = syscall.Splice(int(fd), nil, kp.w, nil, kp.size, flags)
				if serr != syscall.EINTR {
					return true
				}
			}
		}); cerr != nil {
			return true, cleanEnd(cerr)
		}
		switch {
		case serr == syscall.EAGAIN:
			return false, nil // the pipe is empty here: the source is
		case serr != nil:
			return true, os.NewSyscallError("splice", serr)
		case n == 0:
			return true, nil // end of stream
		}
		empty = false
		for left := n; left > 0; {
			var k int64
			var werr error
			if cerr := h.dstRC.Write(func(fd uintptr) bool {
				for {
					k, werr = syscall.Splice(kp.r, nil, int(fd), nil, int(left), flags)
					if werr != syscall.EINTR {
						return werr != syscall.EAGAIN // EAGAIN: wait until dst is writable
					}
				}
			}); cerr != nil {
				return true, cleanEnd(cerr)
			}
			if werr != nil {
				return true, os.NewSyscallError("splice", werr)
			}
			h.n.Add(k)
			left -= k
		}
		empty = true
	}
}
