package redirect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Listener hand-off between two agent processes on one node (zero-gap restart and upgrade).
//
// The running agent serves a unix socket (HandoffServer). A new agent connects to it (Take) and receives
// the running agent's listening sockets over SCM_RIGHTS: the same kernel sockets, so the capture listener
// held in the eBPF SOCKMAP, the ports nftables TPROXY sends to and the accept queues stay as they are in
// both modes. Both processes then hold each socket; the old one keeps accepting until the new one is ready
// and commits (one byte back), after which the old one stops accepting and drains. If the new process
// dies or gives up before committing, the old one notices the closed connection and keeps serving.
//
// The socket file is created mode 0600 in a directory of mode 0700 and both sides check that the peer
// runs as the same user (SO_PEERCRED), so only the agent's own user can take its listeners.

// handoffHeader is the payload sent with the descriptors; Names[i] names descriptor i.
type handoffHeader struct {
	Version int      `json:"version"`
	Names   []string `json:"names"`
}

const handoffVersion = 1

// maxHandoffListeners bounds the descriptors one hand-off carries (the receive buffer is sized for it).
const maxHandoffListeners = 16

// ErrNoPredecessor is returned by Take when no running process serves the hand-off socket.
var ErrNoPredecessor = errors.New("no process serves the hand-off socket")

// NamedListener is a listening socket with the name both processes know it by ("outbound", "admin", ...):
// a TCP listener (Ln) or a UDP socket (PC, the DNS proxy's), exactly one of them.
type NamedListener struct {
	Name string
	Ln   *net.TCPListener
	PC   *net.UDPConn
}

// HandoffServer serves a process's listeners to its successor. Create it with ListenHandoff.
type HandoffServer struct {
	ln   *net.UnixListener
	path string
	ino  uint64

	closeOnce sync.Once
}

// ListenHandoff serves the hand-off socket at path. A socket file nobody serves any more (left by a process
// that crashed) is replaced; one that a live process serves is taken over atomically (the caller took that
// process's listeners with Take first): a new socket is bound next to it and renamed over it, so a
// successor always finds one of the two.
func ListenHandoff(path string) (*HandoffServer, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create hand-off directory: %w", err)
	}
	tmp := fmt.Sprintf("%s.%d", path, os.Getpid())
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on hand-off socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("chmod hand-off socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("install hand-off socket: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		ln.Close()
		return nil, fmt.Errorf("stat hand-off socket: %w", err)
	}
	return &HandoffServer{ln: ln, path: path, ino: st.Ino}, nil
}

// Serve hands lns to the first successor that commits, then returns nil; a successor that disconnects
// before committing is logged by the caller through the returned errors only when ctx is still live, and
// Serve waits for the next one. It returns ctx.Err() when ctx ends and the error of a failed accept.
func (s *HandoffServer) Serve(ctx context.Context, lns []NamedListener, failed func(error)) error {
	if len(lns) > maxHandoffListeners {
		return fmt.Errorf("hand off %d listeners: at most %d", len(lns), maxHandoffListeners)
	}
	stop := context.AfterFunc(ctx, func() { s.ln.Close() })
	defer stop()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("accept on hand-off socket: %w", err)
		}
		err = s.handOff(ctx, c, lns)
		c.Close()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if failed != nil {
			failed(err)
		}
	}
}

// handOff sends lns on c and waits for the commit byte.
func (s *HandoffServer) handOff(ctx context.Context, c *net.UnixConn, lns []NamedListener) error {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := checkPeer(c); err != nil {
		return err
	}
	h := handoffHeader{Version: handoffVersion}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	fds := make([]int, 0, len(lns))
	for _, l := range lns {
		var f *os.File
		var err error
		if l.PC != nil {
			f, err = l.PC.File()
		} else {
			f, err = l.Ln.File() // a duplicate; the listener keeps serving
		}
		if err != nil {
			return fmt.Errorf("duplicate listener %s: %w", l.Name, err)
		}
		files = append(files, f)
		fds = append(fds, int(f.Fd()))
		h.Names = append(h.Names, l.Name)
	}
	payload, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("encode hand-off header: %w", err)
	}
	if _, _, err := c.WriteMsgUnix(payload, syscall.UnixRights(fds...), nil); err != nil {
		return fmt.Errorf("send listeners: %w", err)
	}
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return fmt.Errorf("successor did not commit the hand-off: %w", err)
	}
	if ack[0] != 'y' {
		return fmt.Errorf("successor refused the hand-off (%q)", ack[0])
	}
	return nil
}

// Close stops serving hand-offs. It removes the socket file only if it is still this server's (not one a
// successor renamed over it).
func (s *HandoffServer) Close() {
	s.closeOnce.Do(func() {
		s.ln.Close()
		var st unix.Stat_t
		if unix.Stat(s.path, &st) == nil && st.Ino == s.ino {
			os.Remove(s.path)
		}
	})
}

// Takeover is the successor's side of a hand-off in progress. Commit tells the predecessor to stop
// accepting; Abort (or the process's exit) leaves it serving.
type Takeover struct {
	c         *net.UnixConn
	Listeners map[string]*net.TCPListener
	// PacketConns are the UDP sockets received (the DNS proxy's), by name.
	PacketConns map[string]*net.UDPConn
}

// Take connects to the hand-off socket at path and receives the listeners of the process serving it. It
// returns ErrNoPredecessor (wrapped) when no process serves path.
func Take(ctx context.Context, path string) (*Takeover, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w: %w", ErrNoPredecessor, err)
		}
		return nil, fmt.Errorf("connect to hand-off socket: %w", err)
	}
	c := conn.(*net.UnixConn)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	t, err := receive(c)
	if err != nil {
		c.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("take listeners: %w", ctx.Err())
		}
		return nil, err
	}
	return t, nil
}

func receive(c *net.UnixConn) (*Takeover, error) {
	if err := checkPeer(c); err != nil {
		return nil, err
	}
	buf := make([]byte, 4096)
	oob := make([]byte, syscall.CmsgSpace(4*maxHandoffListeners))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, fmt.Errorf("receive listeners: %w", err)
	}
	fds, err := parseRights(oob[:oobn])
	t := &Takeover{c: c, Listeners: map[string]*net.TCPListener{}, PacketConns: map[string]*net.UDPConn{}}
	defer func() { // what is not a listener of t is not kept
		for _, fd := range fds {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}()
	if err != nil {
		return nil, err
	}
	if flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0 {
		return nil, fmt.Errorf("receive listeners: message truncated")
	}
	var h handoffHeader
	if err := json.Unmarshal(buf[:n], &h); err != nil {
		return nil, fmt.Errorf("decode hand-off header: %w", err)
	}
	if h.Version != handoffVersion {
		return nil, fmt.Errorf("hand-off version %d, want %d", h.Version, handoffVersion)
	}
	if len(h.Names) != len(fds) {
		return nil, fmt.Errorf("hand-off names %d listeners but carries %d descriptors", len(h.Names), len(fds))
	}
	for i, name := range h.Names {
		if _, dup := t.Listeners[name]; dup {
			t.Abort()
			return nil, fmt.Errorf("listener %s sent twice", name)
		}
		if _, dup := t.PacketConns[name]; dup {
			t.Abort()
			return nil, fmt.Errorf("listener %s sent twice", name)
		}
		if typ, err := unix.GetsockoptInt(fds[i], unix.SOL_SOCKET, unix.SO_TYPE); err == nil && typ == unix.SOCK_DGRAM {
			f := os.NewFile(uintptr(fds[i]), name)
			fds[i] = -1
			pc, err := net.FilePacketConn(f) // duplicates the descriptor
			f.Close()
			if err != nil {
				t.Abort()
				return nil, fmt.Errorf("socket %s: %w", name, err)
			}
			uc, ok := pc.(*net.UDPConn)
			if !ok {
				pc.Close()
				t.Abort()
				return nil, fmt.Errorf("socket %s is not UDP", name)
			}
			t.PacketConns[name] = uc
			continue
		}
		f := os.NewFile(uintptr(fds[i]), name)
		fds[i] = -1
		ln, err := net.FileListener(f) // duplicates the descriptor
		f.Close()
		if err != nil {
			t.Abort()
			return nil, fmt.Errorf("listener %s: %w", name, err)
		}
		tl, ok := ln.(*net.TCPListener)
		if !ok {
			ln.Close()
			t.Abort()
			return nil, fmt.Errorf("listener %s is not TCP", name)
		}
		t.Listeners[name] = tl
	}
	return t, nil
}

// parseRights returns the descriptors of SCM_RIGHTS messages in oob.
func parseRights(oob []byte) ([]int, error) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		got, err := syscall.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// Commit tells the predecessor that this process serves the listeners now: it stops accepting and drains.
func (t *Takeover) Commit() error {
	defer t.c.Close()
	if _, err := t.c.Write([]byte{'y'}); err != nil {
		return fmt.Errorf("commit hand-off: %w", err)
	}
	return nil
}

// Abort gives up the hand-off: the listeners received are closed (the predecessor's stay open and it keeps
// serving).
func (t *Takeover) Abort() {
	for _, ln := range t.Listeners {
		ln.Close()
	}
	for _, pc := range t.PacketConns {
		pc.Close()
	}
	t.Listeners, t.PacketConns = nil, nil
	t.c.Close()
}

// checkPeer refuses a peer running as another user.
func checkPeer(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("hand-off peer: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return fmt.Errorf("hand-off peer: %w", err)
	}
	if cerr != nil {
		return fmt.Errorf("hand-off peer credentials: %w", cerr)
	}
	if int(cred.Uid) != os.Getuid() {
		return fmt.Errorf("hand-off peer runs as uid %d, want %d", cred.Uid, os.Getuid())
	}
	return nil
}
