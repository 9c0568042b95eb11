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
		if ap, ok := conntrackDst(fd); ok {
			dst = ap
			return nil
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return fmt.Errorf("getsockname: %w", err)
		}
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			dst = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
		case *unix.SockaddrInet6:
			dst = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
		default:
			return fmt.Errorf("getsockname: unexpected %T", sa)
		}
		return nil
	})
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	return dst, nil
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
