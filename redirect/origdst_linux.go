package redirect

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (SOL_IP) and IP6T_SO_ORIGINAL_DST (SOL_IPV6).
const soOriginalDst = 80

// OriginalDst returns the destination that the client of conn dialled. It asks conntrack first
// (SO_ORIGINAL_DST, for connections that were NATed by a REDIRECT or DNAT rule) and otherwise returns the local
// address, which is the original destination for connections captured by eBPF (sk_lookup) or tproxy. IPv4 addresses
// are returned unmapped.
func OriginalDst(conn net.Conn) (netip.AddrPort, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: %T has no file descriptor", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	var dst netip.AddrPort
	err = control(raw, func(fd int) error {
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return fmt.Errorf("getsockname: %w", err)
		}
		local, err := sockaddrAddrPort(sa)
		if err != nil {
			return fmt.Errorf("getsockname: %w", err)
		}
		ct, ok := conntrackDst(fd)
		if !ok {
			dst = local
			return nil
		}
		pa, err := unix.Getpeername(fd)
		if err != nil {
			return fmt.Errorf("getpeername: %w", err)
		}
		remote, err := sockaddrAddrPort(pa)
		if err != nil {
			return fmt.Errorf("getpeername: %w", err)
		}
		dst = originalDst(local, remote, ct, ok)
		return nil
	})
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	return dst, nil
}

// originalDst decides the original destination of an accepted connection from its local and remote addresses
// and conntrack's answer (ct, if ctOK). SO_ORIGINAL_DST looks up the connection's tuple from the socket's side
// and returns the original direction's destination. For a connection conntrack saw from its first packet that
// is the client's pre-NAT destination. For one whose client packets it never saw (captured packets skip
// conntrack) but whose socket's packets it did, conntrack picked the connection up mid-stream with the socket
// as the originator: the answer is then the client itself, the remote address, and the local address is the
// original destination (captured connections are never rewritten).
func originalDst(local, remote, ct netip.AddrPort, ctOK bool) netip.AddrPort {
	if !ctOK || ct == remote {
		return local
	}
	return ct
}

func sockaddrAddrPort(sa unix.Sockaddr) (netip.AddrPort, error) {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port)), nil
	default:
		return netip.AddrPort{}, fmt.Errorf("unexpected %T", sa)
	}
}

// conntrackDst asks conntrack for the pre-NAT destination of fd's connection.
func conntrackDst(fd int) (netip.AddrPort, bool) {
	var buf [unix.SizeofSockaddrInet6]byte
	for _, level := range []int{unix.SOL_IP, unix.SOL_IPV6} {
		n := uint32(len(buf))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), soOriginalDst,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		if errno != 0 {
			continue
		}
		port := binary.BigEndian.Uint16(buf[2:4])
		switch family := binary.NativeEndian.Uint16(buf[0:2]); {
		case family == unix.AF_INET && n >= unix.SizeofSockaddrInet4:
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(buf[4:8])), port), true
		case family == unix.AF_INET6 && n >= unix.SizeofSockaddrInet6:
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(buf[8:24])).Unmap(), port), true
		}
	}
	return netip.AddrPort{}, false
}
