//go:build !linux

package redirect

import (
	"context"
	"fmt"
	"net"
	"net/netip"
)

// New returns ErrNotSupported: capture needs Linux.
func New(ctx context.Context, o Options) (Redirector, error) {
	return nil, fmt.Errorf("%w: traffic capture needs Linux", ErrNotSupported)
}

// Cleanup returns ErrNotSupported: capture needs Linux.
func Cleanup(ctx context.Context, o Options) error {
	return fmt.Errorf("%w: traffic capture needs Linux", ErrNotSupported)
}

// Probe returns ErrNotSupported: capture needs Linux.
func Probe(ctx context.Context, mode Mode, o Options) error {
	return fmt.Errorf("%w: traffic capture needs Linux", ErrNotSupported)
}

// OriginalDst returns the local address of conn (there is no conntrack outside Linux).
func OriginalDst(conn net.Conn) (netip.AddrPort, error) {
	a, ok := conn.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: %T is not TCP", conn.LocalAddr())
	}
	ap := a.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// SocketFactory makes the agent's sockets; outside Linux it cannot make transparent or marked ones.
type SocketFactory struct {
	NetNS string
	Mark  uint32
}

// Listen returns ErrNotSupported outside Linux.
func (f SocketFactory) Listen(ctx context.Context, addr netip.AddrPort) (*net.TCPListener, error) {
	return nil, fmt.Errorf("%w: transparent listeners need Linux", ErrNotSupported)
}

// ListenTracked returns ErrNotSupported outside Linux.
func (f SocketFactory) ListenTracked(ctx context.Context, addr netip.AddrPort) (*net.TCPListener, error) {
	return nil, fmt.Errorf("%w: transparent listeners need Linux", ErrNotSupported)
}

// DialContext dials without a mark outside Linux.
func (f SocketFactory) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

// DialFrom returns ErrNotSupported outside Linux.
func (f SocketFactory) DialFrom(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	return nil, fmt.Errorf("%w: transparent dials need Linux", ErrNotSupported)
}

// DNSPort is the destination port of the DNS traffic capture takes.
const DNSPort = 53

// DNSConn is the agent's DNS socket (Linux only).
type DNSConn struct {
	*net.UDPConn
}

// ListenDNS returns ErrNotSupported outside Linux.
func (f SocketFactory) ListenDNS(ctx context.Context, addr netip.AddrPort) (*DNSConn, error) {
	return nil, fmt.Errorf("%w: the DNS socket needs Linux", ErrNotSupported)
}

// DNSConnOf wraps a DNS socket.
func (f SocketFactory) DNSConnOf(uc *net.UDPConn) *DNSConn { return &DNSConn{UDPConn: uc} }

// ReadQuery returns ErrNotSupported outside Linux.
func (c *DNSConn) ReadQuery(b []byte) (int, netip.AddrPort, netip.AddrPort, error) {
	return 0, netip.AddrPort{}, netip.AddrPort{}, ErrNotSupported
}

// Reply returns ErrNotSupported outside Linux.
func (c *DNSConn) Reply(b []byte, from, to netip.AddrPort) error { return ErrNotSupported }
