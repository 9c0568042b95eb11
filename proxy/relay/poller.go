package relay

// poller.go: the readiness watch of parked TCP sources.
//
// Invariants:
//   - One epoll instance for the process, open while at least one source is registered and closed (its
//     goroutine ends) when the last one is removed. Its goroutine waits in the runtime's network poller
//     (the epoll descriptor is an os.File), so no thread blocks while every relay is idle.
//   - A source is watched with EPOLLONESHOT: one event per arm, so a parked half is woken once, and
//     re-armed (EPOLL_CTL_MOD) only by the goroutine that drained it. Events carry a registration id, never
//     a descriptor number: ids are not reused, descriptors are.
//   - epoll_ctl runs inside syscall.RawConn.Read (the half's one callback; only the goroutine draining
//     the half reads, arms and removes it), which holds a reference on the descriptor: a socket closed
//     meanwhile fails the call (and the kernel dropped its registration with it); a descriptor number
//     reused by another socket is never touched.

import (
	"fmt"
	"os"
	"sync"
	"syscall"
)

const watchEvents = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT

type poller struct {
	mu   sync.Mutex
	ep   *os.File         // the epoll instance; nil while nothing is registered
	epfd int              // ep's descriptor
	regs map[uint64]*half // registered sources by id
	next uint64
	// pipes are kernel pipes for splice drains, kept while any source is registered (a drain's source
	// is) and closed with the epoll instance, so that an idle process holds none.
	pipes []kpipe
}

// kpipe is a kernel pipe: read end, write end, and its capacity.
type kpipe struct{ r, w, size int }

const maxPipes = 16

// getPipe returns an empty pipe, from the pool or new.
func (p *poller) getPipe() (kpipe, error) {
	p.mu.Lock()
	if n := len(p.pipes); n > 0 {
		kp := p.pipes[n-1]
		p.pipes = p.pipes[:n-1]
		p.mu.Unlock()
		return kp, nil
	}
	p.mu.Unlock()
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		return kpipe{}, fmt.Errorf("pipe2: %w", err)
	}
	kp := kpipe{r: fds[0], w: fds[1], size: 64 << 10} // the default
	if got, err := setPipeSize(kp.w, pipeSize); err == nil {
		kp.size = got
	}
	return kp, nil
}

// putPipe gives back a pipe from getPipe; empty says it holds no data (else it is closed).
func (p *poller) putPipe(kp kpipe, empty bool) {
	p.mu.Lock()
	if empty && p.ep != nil && len(p.pipes) < maxPipes {
		p.pipes = append(p.pipes, kp)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	kp.close()
}

func (kp kpipe) close() {
	syscall.Close(kp.r)
	syscall.Close(kp.w)
}

var sources = &poller{regs: make(map[uint64]*half)}

// arm watches h's TCP source for one readiness event, which wakes h (half.wake). An error (the socket
// was closed, epoll failed) means h must not wait: its next read reports why.
func (p *poller) arm(h *half) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ep == nil {
		if err := p.openLocked(); err != nil {
			return err
		}
	}
	op := syscall.EPOLL_CTL_MOD
	if h.pollID == 0 {
		p.next++
		h.pollID = p.next
		p.regs[h.pollID] = h
		op = syscall.EPOLL_CTL_ADD
	}
	h.ctl.op, h.ctl.epfd = op, p.epfd
	h.ctl.ev = syscall.EpollEvent{Events: watchEvents, Fd: int32(uint32(h.pollID)), Pad: int32(uint32(h.pollID >> 32))}
	if err := h.rc.Read(h.sys); err != nil {
		h.ctl.op = 0
		return err
	}
	if err := h.ctl.err; err != nil {
		h.ctl.err = nil
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

// remove stops watching h's source (h ended); the last removal closes the epoll instance.
func (p *poller) remove(h *half) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if h.pollID == 0 {
		return
	}
	delete(p.regs, h.pollID)
	h.pollID = 0
	h.ctl.op, h.ctl.epfd = syscall.EPOLL_CTL_DEL, p.epfd
	_ = h.rc.Read(h.sys)
	h.ctl.op, h.ctl.err = 0, nil
	if len(p.regs) == 0 {
		_ = p.ep.Close() // interrupts loop's wait: it returns
		p.ep, p.epfd = nil, -1
		for _, kp := range p.pipes {
			kp.close()
		}
		p.pipes = nil
	}
}

// openLocked creates the epoll instance and starts its goroutine.
func (p *poller) openLocked() error {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return fmt.Errorf("epoll nonblocking: %w", err)
	}
	f := os.NewFile(uintptr(fd), "relay-epoll") // non-blocking: the runtime poller watches it
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return fmt.Errorf("epoll raw conn: %w", err)
	}
	p.ep, p.epfd = f, fd
	go p.loop(rc) // owned: ends when remove closes f
	return nil
}

// loop waits for readiness events on one epoll instance and wakes their halves, until the instance is
// closed.
func (p *poller) loop(rc syscall.RawConn) {
	events := make([]syscall.EpollEvent, 64)
	var ready []*half
	var n int
	var werr error
	wait := func(fd uintptr) bool {
		for {
			n, werr = syscall.EpollWait(int(fd), events, 0)
			if werr != syscall.EINTR {
				return n > 0 || werr != nil // nothing yet: the runtime waits for the instance to be readable
			}
		}
	}
	for {
		err := rc.Read(wait)
		if err != nil || werr != nil {
			// Closed by remove (epoll_wait on an instance rc.Read holds open fails only on bad arguments).
			return
		}
		p.mu.Lock()
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if h := p.regs[id]; h != nil {
				ready = append(ready, h)
			}
		}
		p.mu.Unlock()
		for i, h := range ready {
			h.wake()
			ready[i] = nil
		}
		ready = ready[:0]
	}
}

// Linux constants the syscall package lacks (include/uapi/linux/splice.h, fcntl.h).
const (
	spliceMove     = 0x1
	spliceNonblock = 0x2
	fSetPipeSize   = 0x407 // F_SETPIPE_SZ
)

// setPipeSize asks for a pipe capacity of size and returns the one the kernel set.
func setPipeSize(fd, size int) (int, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), fSetPipeSize, uintptr(size))
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}
