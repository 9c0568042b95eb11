package redirect

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// DNSPort is the destination port of the DNS traffic capture takes (UDP and TCP) when Listeners.DNSUDP
// and Listeners.DNSTCP are set.
const DNSPort = 53

// DNSConn is the agent's DNS socket for captured UDP queries: a transparent UDP socket that learns the
// original destination of each datagram (IP_RECVORIGDSTADDR / IPV6_RECVORIGDSTADDR) and replies from it,
// so that the pod's resolver sees the answer come from the nameserver it asked (for example
// 10.96.0.10:53). Make it with SocketFactory.ListenDNS.
type DNSConn struct {
	*net.UDPConn
	f     SocketFactory
	local netip.AddrPort
}

// ListenDNS makes the DNS UDP socket on addr (an IPv6 wildcard address serves both families) in the node
// namespace: IP_TRANSPARENT and IPV6_TRANSPARENT (capture delivers datagrams addressed to other hosts to
// it) and the original-destination control messages. On a zero-gap restart the socket itself is handed
// off (NamedListener.PC), like the TCP listeners: see DNSConnOf.
func (f SocketFactory) ListenDNS(ctx context.Context, addr netip.AddrPort) (*DNSConn, error) {
	network := "udp6"
	switch {
	case addr.Addr().Is4():
		network = "udp4"
	case addr.Addr() == netip.IPv6Unspecified():
		network = "udp"
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return control(c, func(fd int) error {
			v4 := addr.Addr().Is4() || addr.Addr() == netip.IPv6Unspecified()
			if v4 {
				if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
					return fmt.Errorf("set IP_TRANSPARENT: %w", err)
				}
				if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1); err != nil {
					return fmt.Errorf("set IP_RECVORIGDSTADDR: %w", err)
				}
			}
			if !addr.Addr().Is4() {
				if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1); err != nil {
					return fmt.Errorf("set IPV6_TRANSPARENT: %w", err)
				}
				if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, 1); err != nil {
					return fmt.Errorf("set IPV6_RECVORIGDSTADDR: %w", err)
				}
			}
			return nil
		})
	}}
	var pc net.PacketConn
	err := f.ns().do(func() error {
		var err error
		pc, err = lc.ListenPacket(ctx, network, addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen dns on %s: %w", addr, err)
	}
	return f.DNSConnOf(pc.(*net.UDPConn)), nil
}

// DNSConnOf wraps a DNS socket that ListenDNS made, possibly in another process (taken over a hand-off):
// its socket options are the kernel socket's.
func (f SocketFactory) DNSConnOf(uc *net.UDPConn) *DNSConn {
	return &DNSConn{UDPConn: uc, f: f, local: uc.LocalAddr().(*net.UDPAddr).AddrPort()}
}

// oobSize holds one original-destination control message of either family.
var oobSize = unix.CmsgSpace(unix.SizeofSockaddrInet6)

// ReadQuery reads one datagram into b and returns its length, its source and its original destination
// (the socket's own address when the datagram was sent to it directly). Addresses are unmapped.
func (c *DNSConn) ReadQuery(b []byte) (int, netip.AddrPort, netip.AddrPort, error) {
	oob := make([]byte, oobSize)
	n, oobn, _, src, err := c.ReadMsgUDPAddrPort(b, oob)
	if err != nil {
		return 0, netip.AddrPort{}, netip.AddrPort{}, err
	}
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	dst, ok := origDstFromOOB(oob[:oobn])
	if !ok {
		dst = netip.AddrPortFrom(c.local.Addr().Unmap(), c.local.Port())
	}
	return n, src, dst, nil
}

// origDstFromOOB finds the IP_ORIGDSTADDR or IPV6_ORIGDSTADDR control message in oob.
func origDstFromOOB(oob []byte) (netip.AddrPort, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}, false
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= unix.SizeofSockaddrInet4:
			port := binary.BigEndian.Uint16(m.Data[2:4])
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[4:8])), port), true
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(m.Data) >= unix.SizeofSockaddrInet6:
			port := binary.BigEndian.Uint16(m.Data[2:4])
			a := netip.AddrFrom16([16]byte(m.Data[8:24])).Unmap()
			return netip.AddrPortFrom(a, port), true
		}
	}
	return netip.AddrPort{}, false
}

// Reply sends b to to from the address from. A query sent to the socket itself is answered on it; a
// captured one from its original destination, on a transparent socket of its own (IP_TRANSPARENT,
// SO_REUSEADDR so that replies from one nameserver address may overlap) connected to the client, so that
// it only ever matches that client's datagrams, for the moment it exists.
func (c *DNSConn) Reply(b []byte, from, to netip.AddrPort) error {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	to = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	local := netip.AddrPortFrom(c.local.Addr().Unmap(), c.local.Port())
	if from == local || (from.Port() == local.Port() && local.Addr().IsUnspecified()) {
		_, err := c.WriteToUDPAddrPort(b, to)
		return err
	}
	if from.Addr().Is4() != to.Addr().Is4() {
		return fmt.Errorf("reply to %s from %s: address families differ", to, from)
	}
	network := "udp6"
	if from.Addr().Is4() {
		network = "udp4"
	}
	d := net.Dialer{
		LocalAddr: net.UDPAddrFromAddrPort(from),
		Control: func(_, _ string, rc syscall.RawConn) error {
			return control(rc, func(fd int) error {
				if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
					return fmt.Errorf("set SO_REUSEADDR: %w", err)
				}
				return setTransparent(fd, from.Addr())
			})
		},
	}
	var conn net.Conn
	err := c.f.ns().do(func() error {
		var err error
		conn, err = d.DialContext(context.Background(), network, to.String())
		return err
	})
	if err != nil {
		return fmt.Errorf("reply to %s from %s: %w", to, from, err)
	}
	defer conn.Close()
	if _, err := conn.Write(b); err != nil {
		return fmt.Errorf("reply to %s from %s: %w", to, from, err)
	}
	return nil
}
