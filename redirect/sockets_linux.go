package redirect

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/nsrun"
)

// SocketFactory makes the agent's own sockets in the node network namespace: transparent capture listeners, and
// marked connections that capture never intercepts. The zero value makes sockets in the process's namespace
// with DefaultMarks.Own. It is safe for concurrent use.
type SocketFactory struct {
	// NetNS is the path of the node network namespace; empty means the process's namespace.
	NetNS string
	// Mark is the SO_MARK of dialled connections (default DefaultMarks.Own). It must match Options.Marks.Own.
	Mark uint32
}

func (f SocketFactory) ns() nsRunner { return nsRunner{path: f.NetNS} }

func (f SocketFactory) mark() uint32 {
	if f.Mark == 0 {
		return DefaultMarks.Own
	}
	return f.Mark
}

// Listen makes a transparent TCP listener on addr (IP_TRANSPARENT / IPV6_TRANSPARENT, MPTCP off so that it can
// go in a SOCKMAP, no SO_REUSEPORT). An IPv6 wildcard address gives a dual-stack listener that serves IPv4 too.
// Accepted connections keep the original destination as their local address.
func (f SocketFactory) Listen(ctx context.Context, addr netip.AddrPort) (*net.TCPListener, error) {
	network := "tcp6"
	switch {
	case addr.Addr().Is4():
		network = "tcp4"
	case addr.Addr() == netip.IPv6Unspecified():
		network = "tcp"
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return control(c, func(fd int) error { return setTransparent(fd, addr.Addr()) })
	}}
	lc.SetMultipathTCP(false)
	var ln net.Listener
	err := f.ns().do(func() error {
		var err error
		ln, err = lc.Listen(ctx, network, addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen transparent on %s: %w", addr, err)
	}
	return ln.(*net.TCPListener), nil
}

// ListenTracked makes a transparent listener like Listen whose socket carries the own mark (SO_MARK), for
// Listeners.InboundDNAT. Its SYN-ACKs and accepted connections inherit the mark, so the raw output chain leaves
// them tracked (as it does the agent's dials): conntrack then sees the connection both ways and undoes the
// node's destination NAT on the agent's replies.
func (f SocketFactory) ListenTracked(ctx context.Context, addr netip.AddrPort) (*net.TCPListener, error) {
	ln, err := f.Listen(ctx, addr)
	if err != nil {
		return nil, err
	}
	raw, err := ln.SyscallConn()
	if err == nil {
		err = control(raw, func(fd int) error { return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(f.mark())) })
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("mark listener %s: %w", addr, err)
	}
	return ln, nil
}

// DialContext connects to address with the agent's mark, from the node's own address. Its signature matches
// net.Dialer.DialContext so it can back an http.Transport or an HBONE dialer.
func (f SocketFactory) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return control(c, func(fd int) error { return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(f.mark())) })
	}}
	d.SetMultipathTCP(false)
	var conn net.Conn
	err := f.ns().do(func() error {
		var err error
		conn, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	return conn, nil
}

// DialFrom connects to dst with the agent's mark from src, which need not be a local address (IP_TRANSPARENT
// and IP_FREEBIND): inbound delivery uses it to keep the original client address towards a pod. Replies come
// back to the agent through capture (the established-socket lookup), so src must be routed via a hooked
// interface or be local.
func (f SocketFactory) DialFrom(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	src, da := src.Unmap(), dst.Addr().Unmap()
	if src.Is4() != da.Is4() {
		return nil, fmt.Errorf("dial %s from %s: address families differ", dst, src)
	}
	network := "tcp6"
	if src.Is4() {
		network = "tcp4"
	}
	d := net.Dialer{
		LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)),
		Control: func(_, _ string, c syscall.RawConn) error {
			return control(c, func(fd int) error {
				if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(f.mark())); err != nil {
					return fmt.Errorf("set SO_MARK: %w", err)
				}
				if err := setTransparent(fd, src); err != nil {
					return err
				}
				// The source port is picked at connect, unique per 4-tuple as for the pod's own sockets; a
				// bind(src, 0) would take a port unique for the whole address (exhausted by a busy client's
				// TIME_WAITs towards one server) and scan the range under the bind-hash locks to find it.
				if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
					return fmt.Errorf("set IP_BIND_ADDRESS_NO_PORT: %w", err)
				}
				if src.Is4() {
					return unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_FREEBIND, 1)
				}
				return unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
			})
		},
	}
	d.SetMultipathTCP(false)
	conn, err := nsrun.Dial(ctx, f.NetNS, d, network, netip.AddrPortFrom(da, dst.Port()).String())
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", dst, src, err)
	}
	return conn, nil
}

func setTransparent(fd int, a netip.Addr) error {
	if a.Is4() {
		if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
			return fmt.Errorf("set IP_TRANSPARENT: %w", err)
		}
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1); err != nil {
		return fmt.Errorf("set IPV6_TRANSPARENT: %w", err)
	}
	return nil
}

// control runs fn on the raw descriptor of c.
func control(c syscall.RawConn, fn func(fd int) error) error {
	var ferr error
	if err := c.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}
