package redirect_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/bpf"
	"github.com/ambit-mesh/ambit/redirect"
	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/netns"
	"github.com/ambit-mesh/ambit/test/proc"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// The tests in this file send what a hostile peer, or a pod with NET_RAW, can send to get a new TCP connection
// around capture: SYNs in IP fragments (the TCP header split or behind a Fragment header), SYNs behind IPv6
// extension headers, truncated TCP headers, and SYNs arriving on interfaces other than the pods' veths and the
// uplink (an overlay device, a second NIC, an L3 tunnel, a device capture cannot parse). Whatever the mode,
// such a SYN must land at the agent or be dropped: it never reaches the pod (inbound) or the remote server
// (outbound) directly, and a SYN to a service VIP (which the real agent sends on to the VIP's waypoint) lands
// at the agent's outbound listener or is dropped.

// outcome is where a crafted SYN went.
type outcome string

const (
	captured outcome = "captured" // the agent answered it (SYN-ACK) and the target never saw it
	dropped  outcome = "dropped"  // capture dropped it (counted in the stats map) and the target never saw it
)

// synProbe sends a crafted connection attempt and reports what answered.
type synProbe struct {
	send func() error
	// synAck reports whether a SYN-ACK for the attempt arrived by the deadline.
	synAck func(deadline time.Time) (bool, error)
}

// watcher sees the TCP segments that a namespace's IP layer delivers (after reassembly), through a raw socket.
type watcher struct{ fd4, fd6 int }

func watch(tb testing.TB, ns lab.NS) *watcher {
	tb.Helper()
	w := &watcher{fd4: -1, fd6: -1}
	err := ns.Do(func() error {
		var err error
		if w.fd4, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_TCP); err != nil {
			return err
		}
		w.fd6, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_TCP)
		return err
	})
	tb.Cleanup(func() {
		for _, fd := range []int{w.fd4, w.fd6} {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	})
	if err != nil {
		tb.Fatalf("raw socket in %s: %v", ns.Name, err)
	}
	return w
}

// sawSYN drains what the watcher has queued and reports whether a SYN from source port sport was among it.
func (w *watcher) sawSYN(tb testing.TB, sport uint16) bool {
	tb.Helper()
	seen := false
	buf := make([]byte, 65536)
	for _, fd := range []int{w.fd4, w.fd6} {
		for {
			n, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			if err != nil {
				tb.Fatalf("read watcher: %v", err)
			}
			seg := buf[:n]
			if fd == w.fd4 { // IPv4 raw sockets deliver the IP header too
				if len(seg) < 20 {
					continue
				}
				seg = seg[int(seg[0]&0x0f)*4:]
			}
			if len(seg) >= 14 && binary.BigEndian.Uint16(seg[0:]) == sport && seg[13]&0x12 == 0x02 {
				seen = true
			}
		}
	}
	return seen
}

// stats reads the sum over CPUs of one verdict counter from a node's pinned stats map (ModeEBPF).
func stats(tb testing.TB, node *lab.Node, v bpf.CaptureVerdict) uint64 {
	tb.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(node.PinDir, "stats"), nil)
	if err != nil {
		tb.Fatalf("open stats map: %v", err)
	}
	defer m.Close()
	var per []uint64
	if err := m.Lookup(v, &per); err != nil {
		tb.Fatalf("read stats: %v", err)
	}
	var n uint64
	for _, x := range per {
		n += x
	}
	return n
}

// expectOutcome runs the probe and fails unless it ends as want: for dropped, with the counter of verdict v
// moved by at least drops. The target's watcher must never see the SYN (source port sport).
func expectOutcome(t *testing.T, node *lab.Node, target *watcher, p synProbe, sport uint16, want outcome, v bpf.CaptureVerdict, drops uint64) {
	t.Helper()
	var before uint64
	if want == dropped {
		before = stats(t, node, v)
	}
	if err := p.send(); err != nil {
		t.Fatalf("send: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		got, err := p.synAck(time.Now().Add(50 * time.Millisecond))
		if err != nil {
			t.Fatalf("read replies: %v", err)
		}
		// The target's IP layer hands a SYN to raw sockets before TCP answers it, so once the SYN-ACK is
		// here a bypassing SYN is already in the watcher's queue.
		if got {
			if target.sawSYN(t, sport) {
				t.Fatalf("the SYN reached its destination around the agent")
			}
			if want != captured {
				t.Fatalf("the agent answered the SYN, want it %s", want)
			}
			return
		}
		if want == dropped && stats(t, node, v)-before >= drops {
			if target.sawSYN(t, sport) {
				t.Fatalf("the SYN reached its destination around the agent")
			}
			return
		}
	}
	if target.sawSYN(t, sport) {
		t.Fatalf("the SYN reached its destination around the agent")
	}
	t.Fatalf("nothing answered or dropped the SYN within 5 s, want it %s", want)
}

// rawSender sends hand-built IP packets from a namespace and reads the TCP segments that come back.
type rawSender struct {
	send4, send6 int // IPPROTO_RAW: the packet includes its IP header
	recv4, recv6 int // IPPROTO_TCP: incoming TCP segments
}

func newRawSender(tb testing.TB, ns lab.NS) *rawSender {
	tb.Helper()
	r := &rawSender{-1, -1, -1, -1}
	err := ns.Do(func() error {
		var err error
		for _, s := range []struct {
			fd          *int
			family, pro int
		}{
			{&r.send4, unix.AF_INET, unix.IPPROTO_RAW}, {&r.send6, unix.AF_INET6, unix.IPPROTO_RAW},
			{&r.recv4, unix.AF_INET, unix.IPPROTO_TCP}, {&r.recv6, unix.AF_INET6, unix.IPPROTO_TCP},
		} {
			if *s.fd, err = unix.Socket(s.family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, s.pro); err != nil {
				return err
			}
		}
		return nil
	})
	tb.Cleanup(func() {
		for _, fd := range []int{r.send4, r.send6, r.recv4, r.recv6} {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	})
	if err != nil {
		tb.Fatalf("raw sockets in %s: %v", ns.Name, err)
	}
	return r
}

// probe returns a synProbe that sends pkts (IP packets) to dst and waits for a SYN-ACK from dst to sport.
func (r *rawSender) probe(dst netip.AddrPort, sport uint16, pkts [][]byte) synProbe {
	return synProbe{
		send: func() error {
			for _, p := range pkts {
				var err error
				if dst.Addr().Is4() {
					err = unix.Sendto(r.send4, p, 0, &unix.SockaddrInet4{Addr: dst.Addr().As4()})
				} else {
					err = unix.Sendto(r.send6, p, 0, &unix.SockaddrInet6{Addr: dst.Addr().As16()})
				}
				if err != nil {
					return err
				}
			}
			return nil
		},
		synAck: func(deadline time.Time) (bool, error) {
			fd := r.recv6
			if dst.Addr().Is4() {
				fd = r.recv4
			}
			return readSynAck(fd, dst.Addr().Is4(), dst.Port(), sport, deadline)
		},
	}
}

// readSynAck reads segments from fd (a raw TCP socket, or a tun device when tun is set) until one is a SYN-ACK
// from port from to port to, or the deadline passes.
func readSynAck(fd int, withIP bool, from, to uint16, deadline time.Time) (bool, error) {
	buf := make([]byte, 65536)
	for {
		wait := time.Until(deadline)
		if wait <= 0 {
			return false, nil
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, int(wait.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, err
		}
		if n == 0 {
			return false, nil
		}
		m, err := unix.Read(fd, buf) // read, not recvfrom: fd may be a tun device
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, err
		}
		if isSynAck(buf[:m], withIP, from, to) {
			return true, nil
		}
	}
}

// isSynAck reports whether seg (a TCP segment, or an IP packet when withIP) is a SYN-ACK from port from to
// port to.
func isSynAck(seg []byte, withIP bool, from, to uint16) bool {
	if withIP {
		if len(seg) < 1 {
			return false
		}
		switch seg[0] >> 4 {
		case 4:
			if len(seg) < 20 || seg[9] != unix.IPPROTO_TCP {
				return false
			}
			seg = seg[int(seg[0]&0x0f)*4:]
		case 6:
			if len(seg) < 40 || seg[6] != unix.IPPROTO_TCP {
				return false
			}
			seg = seg[40:]
		default:
			return false
		}
	}
	return len(seg) >= 14 && binary.BigEndian.Uint16(seg[0:]) == from && binary.BigEndian.Uint16(seg[2:]) == to &&
		seg[13]&0x12 == 0x12
}

// tcpSegment builds a TCP segment from src to dst with the given flags (0x02 SYN, 0x10 ACK), sequence
// numbers and payload, with its checksum.
func tcpSegment(src, dst netip.AddrPort, flags byte, seq, ack uint32, payload []byte) []byte {
	seg := make([]byte, 20, 20+len(payload))
	binary.BigEndian.PutUint16(seg[0:], src.Port())
	binary.BigEndian.PutUint16(seg[2:], dst.Port())
	binary.BigEndian.PutUint32(seg[4:], seq)
	binary.BigEndian.PutUint32(seg[8:], ack)
	seg[12] = 5 << 4
	seg[13] = flags
	binary.BigEndian.PutUint16(seg[14:], 65535)
	seg = append(seg, payload...)
	var pseudo []byte
	s, d := src.Addr().AsSlice(), dst.Addr().AsSlice()
	pseudo = append(pseudo, s...)
	pseudo = append(pseudo, d...)
	if src.Addr().Is4() {
		pseudo = append(pseudo, 0, unix.IPPROTO_TCP, byte(len(seg)>>8), byte(len(seg)))
	} else {
		pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(seg)))
		pseudo = append(pseudo, 0, 0, 0, unix.IPPROTO_TCP)
	}
	binary.BigEndian.PutUint16(seg[16:], checksum(append(pseudo, seg...)))
	return seg
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// ipv4 builds an IPv4 packet carrying payload with the given id, fragment offset (in 8-byte units) and MF
// flag. The kernel fills in the total length and header checksum of packets sent on raw sockets.
func ipv4(src, dst netip.Addr, proto byte, id uint16, off int, more bool, payload []byte) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	binary.BigEndian.PutUint16(h[4:], id)
	fo := uint16(off)
	if more {
		fo |= 0x2000
	}
	binary.BigEndian.PutUint16(h[6:], fo)
	h[8] = 64
	h[9] = proto
	s, d := src.As4(), dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	binary.BigEndian.PutUint16(h[10:], checksum(h))
	return append(h, payload...)
}

// ipv6 builds an IPv6 packet whose payload (starting with next header nh) is payload.
func ipv6(src, dst netip.Addr, nh byte, payload []byte) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	h[6] = nh
	h[7] = 64
	s, d := src.As16(), dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(h, payload...)
}

// fragment6 is an IPv6 Fragment header (next header nh, offset in 8-byte units, M flag) followed by data.
func fragment6(nh byte, id uint32, off int, more bool, data []byte) []byte {
	h := make([]byte, 8)
	h[0] = nh
	fo := uint16(off << 3)
	if more {
		fo |= 1
	}
	binary.BigEndian.PutUint16(h[2:], fo)
	binary.BigEndian.PutUint32(h[4:], id)
	return append(h, data...)
}

// fragmentedSYN returns a SYN from src to dst as two IP fragments. IPv4: a tiny first fragment with only the
// first 8 bytes of the TCP header (the flags are in the second, RFC 1858). IPv6: a whole header in the first
// fragment (RFC 8200 has receivers drop a first fragment without it) behind a Fragment header, which hides TCP
// from a parser that only looks at the IPv6 header's next header.
func fragmentedSYN(src, dst netip.AddrPort) [][]byte {
	seq := rand.Uint32()
	if src.Addr().Is4() {
		seg := tcpSegment(src, dst, 0x02, seq, 0, nil)
		id := uint16(rand.Uint32())
		return [][]byte{
			ipv4(src.Addr(), dst.Addr(), unix.IPPROTO_TCP, id, 0, true, seg[:8]),
			ipv4(src.Addr(), dst.Addr(), unix.IPPROTO_TCP, id, 1, false, seg[8:]),
		}
	}
	seg := tcpSegment(src, dst, 0x02, seq, 0, []byte("0123456789ab")) // 32 bytes: 24 + 8
	id := rand.Uint32()
	return [][]byte{
		ipv6(src.Addr(), dst.Addr(), unix.IPPROTO_FRAGMENT, fragment6(unix.IPPROTO_TCP, id, 0, true, seg[:24])),
		ipv6(src.Addr(), dst.Addr(), unix.IPPROTO_FRAGMENT, fragment6(unix.IPPROTO_TCP, id, 3, false, seg[24:])),
	}
}

func randomPort() uint16 { return uint16(40000 + rand.IntN(20000)) }

// vip is a service VIP of family f, as a waypoint-bound service has: an address no interface holds and no
// route leads to, so only the agent's outbound listener can answer a SYN to it (the agent, not the harness,
// would send it on to the waypoint).
func vip(f family) netip.Addr {
	if f.name == "v4" {
		return netip.MustParseAddr("10.96.0.10")
	}
	return netip.MustParseAddr("fd00:96::a")
}

// TestCaptureFragmentedSYN: SYNs in IP fragments, to an enrolled pod and from one, never get around the
// agent. ModeEBPF drops them (tc sees raw fragments); ModeTPROXY captures them (netfilter reassembles first).
func TestCaptureFragmentedSYN(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			_, a, pod, remote := setup(t, mode)
			routerWithoutConntrack(t, remote.Node)
			want := captured
			if mode == redirect.ModeEBPF {
				want = dropped
			}
			for _, f := range families {
				t.Run(f.name+"/inbound", func(t *testing.T) {
					sport := randomPort()
					src, dst := netip.AddrPortFrom(f.ip(remote), sport), netip.AddrPortFrom(f.ip(pod), 8080)
					p := newRawSender(t, remote.NS).probe(dst, sport, fragmentedSYN(src, dst))
					expectOutcome(t, a.node, watch(t, pod.NS), p, sport, want, bpf.CaptureVerdictVERDICT_MALFORMED, 2)
				})
				t.Run(f.name+"/outbound", func(t *testing.T) {
					sport := randomPort()
					src, dst := netip.AddrPortFrom(f.ip(pod), sport), netip.AddrPortFrom(f.ip(remote), 8080)
					p := newRawSender(t, pod.NS).probe(dst, sport, fragmentedSYN(src, dst))
					expectOutcome(t, a.node, watch(t, remote.NS), p, sport, want, bpf.CaptureVerdictVERDICT_MALFORMED, 2)
				})
				t.Run(f.name+"/outbound to a service VIP", func(t *testing.T) {
					sport := randomPort()
					src, dst := netip.AddrPortFrom(f.ip(pod), sport), netip.AddrPortFrom(vip(f), 80)
					p := newRawSender(t, pod.NS).probe(dst, sport, fragmentedSYN(src, dst))
					expectOutcome(t, a.node, watch(t, remote.NS), p, sport, want, bpf.CaptureVerdictVERDICT_MALFORMED, 2)
				})
			}
			a.none(t)
		})
	}
}

// ext6 is an IPv6 extension header of type typ (Hop-by-Hop, Destination Options: one PadN option; Routing:
// type 0 with no segments left, which IPv6 input skips; Fragment: an atomic fragment, offset 0 and no more
// fragments, which is a whole packet) with next header nh, followed by payload.
func ext6(typ, nh byte, payload []byte) []byte {
	var h []byte
	switch typ {
	case unix.IPPROTO_HOPOPTS, unix.IPPROTO_DSTOPTS:
		h = []byte{nh, 0, 1, 4, 0, 0, 0, 0}
	case unix.IPPROTO_ROUTING:
		h = []byte{nh, 0, 0, 0, 0, 0, 0, 0} // type 0, segments left 0
	case unix.IPPROTO_FRAGMENT:
		return fragment6(nh, rand.Uint32(), 0, false, payload)
	default:
		panic(fmt.Sprintf("ext6: header type %d", typ))
	}
	return append(h, payload...)
}

// extSYN returns an IPv6 SYN from src to dst behind the extension headers chain (outermost first).
func extSYN(src, dst netip.AddrPort, chain []byte) [][]byte {
	payload := tcpSegment(src, dst, 0x02, rand.Uint32(), 0, nil)
	nh := byte(unix.IPPROTO_TCP)
	for i := len(chain) - 1; i >= 0; i-- {
		payload = ext6(chain[i], nh, payload)
		nh = chain[i]
	}
	return [][]byte{ipv6(src.Addr(), dst.Addr(), nh, payload)}
}

// TestCaptureIPv6ExtensionSYN: hand-built IPv6 SYNs behind extension headers (Hop-by-Hop, Destination
// Options, Routing, an atomic Fragment header, a chain of them), to an enrolled pod and from one, land at the
// agent, which answers them, and never at their destination. A chain longer than capture walks (seven
// Destination Options headers) is dropped in ModeEBPF; netfilter walks any chain and ModeTPROXY captures it.
func TestCaptureIPv6ExtensionSYN(t *testing.T) {
	const (
		hbh  = unix.IPPROTO_HOPOPTS
		dst  = unix.IPPROTO_DSTOPTS
		rt   = unix.IPPROTO_ROUTING
		frag = unix.IPPROTO_FRAGMENT
	)
	chains := []struct {
		name  string
		chain []byte
		ebpf  outcome
	}{
		{"hop-by-hop", []byte{hbh}, captured},
		{"destination options", []byte{dst}, captured},
		{"routing", []byte{rt}, captured},
		{"atomic fragment", []byte{frag}, captured},
		{"hop-by-hop destination options routing fragment destination options", []byte{hbh, dst, rt, frag, dst}, captured},
		{"seven destination options", []byte{dst, dst, dst, dst, dst, dst, dst}, dropped},
	}
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			_, a, pod, remote := setup(t, mode)
			routerWithoutConntrack(t, remote.Node)
			for _, c := range chains {
				want := captured
				if mode == redirect.ModeEBPF {
					want = c.ebpf
				}
				t.Run(c.name+"/inbound", func(t *testing.T) {
					sport := randomPort()
					src, to := netip.AddrPortFrom(remote.IP6, sport), netip.AddrPortFrom(pod.IP6, 8080)
					p := newRawSender(t, remote.NS).probe(to, sport, extSYN(src, to, c.chain))
					expectOutcome(t, a.node, watch(t, pod.NS), p, sport, want, bpf.CaptureVerdictVERDICT_MALFORMED, 1)
				})
				t.Run(c.name+"/outbound", func(t *testing.T) {
					sport := randomPort()
					src, to := netip.AddrPortFrom(pod.IP6, sport), netip.AddrPortFrom(remote.IP6, 8080)
					p := newRawSender(t, pod.NS).probe(to, sport, extSYN(src, to, c.chain))
					expectOutcome(t, a.node, watch(t, remote.NS), p, sport, want, bpf.CaptureVerdictVERDICT_MALFORMED, 1)
				})
				t.Run(c.name+"/outbound to a service VIP", func(t *testing.T) {
					sport := randomPort()
					src, to := netip.AddrPortFrom(pod.IP6, sport), netip.AddrPortFrom(vip(families[1]), 80)
					p := newRawSender(t, pod.NS).probe(to, sport, extSYN(src, to, c.chain))
					expectOutcome(t, a.node, watch(t, remote.NS), p, sport, want, bpf.CaptureVerdictVERDICT_MALFORMED, 1)
				})
			}
			a.none(t)
		})
	}
}

// truncatedSYN returns a SYN from src to dst whose TCP header does not fit in its (unfragmented) packet:
// short, 16 of the 20 bytes of the fixed header (the flags included), or whole but with a data offset of 60
// bytes past the segment's end.
func truncatedSYN(src, dst netip.AddrPort, short bool) [][]byte {
	seg := tcpSegment(src, dst, 0x02, rand.Uint32(), 0, nil)
	if short {
		seg = seg[:16]
	} else {
		seg[12] = 15 << 4
	}
	if src.Addr().Is4() {
		return [][]byte{ipv4(src.Addr(), dst.Addr(), unix.IPPROTO_TCP, uint16(rand.Uint32()), 0, false, seg)}
	}
	return [][]byte{ipv6(src.Addr(), dst.Addr(), unix.IPPROTO_TCP, seg)}
}

// TestCaptureTruncatedTCP: TCP whose header capture cannot read whole, to an enrolled pod and from one, is
// dropped (ModeEBPF) rather than passed to its destination. (ModeTPROXY is not run: netfilter forwards a
// segment it cannot parse, and the destination's TCP input discards it, as it discards any such segment.)
func TestCaptureTruncatedTCP(t *testing.T) {
	_, a, pod, remote := setup(t, redirect.ModeEBPF)
	routerWithoutConntrack(t, remote.Node)
	for _, f := range families {
		for _, short := range []bool{true, false} {
			name := f.name + "/data offset past the end"
			if short {
				name = f.name + "/short header"
			}
			t.Run(name+"/inbound", func(t *testing.T) {
				sport := randomPort()
				src, dst := netip.AddrPortFrom(f.ip(remote), sport), netip.AddrPortFrom(f.ip(pod), 8080)
				p := newRawSender(t, remote.NS).probe(dst, sport, truncatedSYN(src, dst, short))
				expectOutcome(t, a.node, watch(t, pod.NS), p, sport, dropped, bpf.CaptureVerdictVERDICT_MALFORMED, 1)
			})
			t.Run(name+"/outbound", func(t *testing.T) {
				sport := randomPort()
				src, dst := netip.AddrPortFrom(f.ip(pod), sport), netip.AddrPortFrom(f.ip(remote), 8080)
				p := newRawSender(t, pod.NS).probe(dst, sport, truncatedSYN(src, dst, short))
				expectOutcome(t, a.node, watch(t, remote.NS), p, sport, dropped, bpf.CaptureVerdictVERDICT_MALFORMED, 1)
			})
		}
	}
	a.none(t)
}

// dialWithExt dials to from ns with an IPv6 extension header (IPV6_HOPOPTS or IPV6_DSTOPTS: one PadN option)
// on every packet, as a pod with NET_RAW can.
func dialWithExt(tb testing.TB, ns lab.NS, opt int, to netip.AddrPort) *client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), 5*time.Second)
	defer cancel()
	var c net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				hdr := []byte{0, 0, 1, 4, 0, 0, 0, 0} // next header (set by the kernel), length 0, PadN(4)
				serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IPV6, opt, string(hdr))
			})
			if err != nil {
				return err
			}
			return serr
		}}
		var err error
		c, err = d.DialContext(ctx, "tcp6", to.String())
		return err
	})
	if err != nil {
		tb.Fatalf("dial %s from %s: %v", to, ns.Name, err)
	}
	tb.Cleanup(func() { c.Close() })
	return &client{c: c, br: newReader(c)}
}

// TestCaptureIPv6ExtensionHeaders: connections whose packets carry IPv6 extension headers (Hop-by-Hop,
// Destination Options) are captured like any other, inbound and outbound.
func TestCaptureIPv6ExtensionHeaders(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			l, a, pod, remote := setup(t, mode)
			for _, h := range []struct {
				name string
				opt  int
			}{{"hop-by-hop", unix.IPV6_HOPOPTS}, {"destination options", unix.IPV6_DSTOPTS}} {
				t.Run(h.name+"/inbound", func(t *testing.T) {
					dst := netip.AddrPortFrom(pod.IP6, 8080)
					c := dialWithExt(t, remote.NS, h.opt, dst)
					if got := a.next(t); got.role != "inbound" || got.orig != dst || got.remote.Addr() != remote.IP6 {
						t.Fatalf("agent saw %+v, want inbound to %s", got, dst)
					}
					if peer := peerOf(t, c.say(t, "in")); peer != remote.IP6 {
						t.Errorf("pod saw %s, want %s", peer, remote.IP6)
					}
				})
				t.Run(h.name+"/outbound", func(t *testing.T) {
					dst := netip.AddrPortFrom(remote.IP6, 8080)
					c := dialWithExt(t, pod.NS, h.opt, dst)
					if got := a.next(t); got.role != "outbound" || got.orig != dst {
						t.Fatalf("agent saw %+v, want outbound to %s", got, dst)
					}
					if peer := peerOf(t, c.say(t, "out")); peer != l.Nodes[0].IP6 {
						t.Errorf("server saw %s, want the node %s (proxied)", peer, l.Nodes[0].IP6)
					}
				})
			}
		})
	}
}

// routerWithoutConntrack turns conntrack off on node n (it removes the lab's kube-proxy table there), which a
// test uses only to route the packets it crafts in one of n's pods to the node under test. Tracking them, n
// would reassemble their fragments and drop the segments it finds invalid (kube-proxy's forward rule) before
// they reach the node under test, whose own conntrack stays on.
func routerWithoutConntrack(tb testing.TB, n *lab.Node) {
	tb.Helper()
	nsRun(tb, n.NS, "nft", "delete", "table", "inet", lab.KubeProxyTable)
}

// nsRun runs a command in ns (through test/proc) and fails the test if it fails.
func nsRun(tb testing.TB, ns lab.NS, args ...string) {
	tb.Helper()
	out, err := proc.CombinedOutput(ns.Command(tb.Context(), args[0], args[1:]...))
	if err != nil {
		tb.Fatalf("%s in %s: %v: %s", args, ns.Name, err, out)
	}
}

// tcxPrograms counts the programs attached at the TCX hook dir of interface ifindex in node.
func tcxPrograms(tb testing.TB, node *lab.Node, ifindex int, dir ebpf.AttachType) int {
	tb.Helper()
	n := 0
	err := node.NS.Do(func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: dir})
		if err != nil {
			return err
		}
		n = len(res.Programs)
		return nil
	})
	if err != nil {
		tb.Fatalf("query tcx programs of interface %d: %v", ifindex, err)
	}
	return n
}

// waitHooked waits until capture is attached at ingress of the interface name of node (ModeEBPF attaches to
// new interfaces as netlink reports them).
func waitHooked(tb testing.TB, node *lab.Node, mode redirect.Mode, name string) {
	tb.Helper()
	if mode != redirect.ModeEBPF {
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		nh, err := node.NS.Handle()
		if err != nil {
			tb.Fatal(err)
		}
		l, err := nh.LinkByName(name)
		nh.Close()
		if err != nil {
			tb.Fatalf("find %s: %v", name, err)
		}
		if tcxPrograms(tb, node, l.Attrs().Index, ebpf.AttachTCXIngress) == 1 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("capture never attached to %s", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// overlay joins nodes 0 and 1 with a VXLAN device each ("ovl0", addresses 10.99.0.1-2 and fd00:99::1-2) and
// routes the pods of each node through it, as an overlay CNI does.
func overlay(t *testing.T, l *lab.Lab) {
	t.Helper()
	for i, n := range l.Nodes[:2] {
		o := l.Nodes[1-i]
		nsRun(t, n.NS, "ip", "link", "add", "ovl0", "type", "vxlan", "id", "42", "dstport", "4789",
			"local", n.IP.String(), "remote", o.IP.String(), "dev", n.Uplink)
		nsRun(t, n.NS, "ip", "addr", "add", fmt.Sprintf("10.99.0.%d/24", i+1), "dev", "ovl0")
		nsRun(t, n.NS, "ip", "addr", "add", fmt.Sprintf("fd00:99::%d/64", i+1), "dev", "ovl0", "nodad")
		nsRun(t, n.NS, "ip", "link", "set", "ovl0", "up")
		nsRun(t, n.NS, "ip", "route", "replace", fmt.Sprintf("10.244.%d.0/24", o.Index), "via", fmt.Sprintf("10.99.0.%d", 2-i), "dev", "ovl0")
		nsRun(t, n.NS, "ip", "-6", "route", "replace", fmt.Sprintf("fd00:244:%x::/64", o.Index), "via", fmt.Sprintf("fd00:99::%d", 2-i), "dev", "ovl0")
	}
}

// secondNIC gives node 0 a second network: a macvlan "eth1" (172.31.0.1/24, fd00:31::1/64) whose peer, another
// macvlan on the same lower device, is "eth0" of a new namespace (172.31.0.2, fd00:31::2) that routes the node's
// pods through it. The namespace is named as a pod of node 0 would be, <lab>-n0-p<99>, so that the lab's Close,
// and the next Sweep if the test is killed, remove it with the lab.
func secondNIC(t *testing.T, l *lab.Lab) lab.NS {
	t.Helper()
	n := l.Nodes[0]
	ext, err := netns.Create(l.Name + "-n0-p99")
	if err != nil {
		t.Fatalf("create external namespace: %v", err)
	}
	nsRun(t, ext, "ip", "link", "set", "lo", "up")
	nsRun(t, n.NS, "ip", "link", "add", "lowr", "type", "bridge")
	nsRun(t, n.NS, "ip", "link", "set", "lowr", "up")
	nsRun(t, n.NS, "ip", "link", "add", "eth1", "link", "lowr", "type", "macvlan", "mode", "bridge")
	nsRun(t, n.NS, "ip", "link", "add", "mvext", "link", "lowr", "type", "macvlan", "mode", "bridge")
	nsRun(t, n.NS, "ip", "link", "set", "mvext", "netns", ext.Name)
	nsRun(t, n.NS, "ip", "addr", "add", "172.31.0.1/24", "dev", "eth1")
	nsRun(t, n.NS, "ip", "addr", "add", "fd00:31::1/64", "dev", "eth1", "nodad")
	nsRun(t, n.NS, "ip", "link", "set", "eth1", "up")
	nsRun(t, ext, "ip", "link", "set", "mvext", "name", "eth0")
	nsRun(t, ext, "ip", "addr", "add", "172.31.0.2/24", "dev", "eth0")
	nsRun(t, ext, "ip", "addr", "add", "fd00:31::2/64", "dev", "eth0", "nodad")
	nsRun(t, ext, "ip", "link", "set", "eth0", "up")
	nsRun(t, ext, "ip", "route", "add", "10.244.0.0/24", "via", "172.31.0.1")
	nsRun(t, ext, "ip", "-6", "route", "add", "fd00:244:0::/64", "via", "fd00:31::1")
	return ext
}

// TestCaptureOtherInterfaces: connections to an enrolled pod that arrive on an overlay device (created after
// the agent started) or on a second NIC (present before) are captured like those from the uplink.
func TestCaptureOtherInterfaces(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			t.Run("overlay", func(t *testing.T) {
				l, a, pod, remote := setup(t, mode)
				overlay(t, l)
				waitHooked(t, l.Nodes[0], mode, "ovl0")
				for _, f := range families {
					t.Run(f.name, func(t *testing.T) {
						dst := netip.AddrPortFrom(f.ip(pod), 8080)
						c := dial(t, remote.NS, dst)
						if got := a.next(t); got.role != "inbound" || got.orig != dst || got.remote.Addr() != f.ip(remote) {
							t.Fatalf("agent saw %+v, want inbound to %s from %s", got, dst, f.ip(remote))
						}
						if peer := peerOf(t, c.say(t, "over")); peer != f.ip(remote) {
							t.Errorf("pod saw %s, want %s", peer, f.ip(remote))
						}
					})
				}
			})
			t.Run("second nic", func(t *testing.T) {
				testutil.CheckGoroutines(t)
				l := lab.Start(t, lab.Options{Nodes: 1, PodsPerNode: 1})
				serveEcho(t, l)
				ext := secondNIC(t, l)
				a := startAgent(t, l.Nodes[0], agentOptions(l.Nodes[0], mode))
				pod := l.Nodes[0].Pods[0]
				a.enroll(t, pod)
				for _, f := range []struct {
					name    string
					pod, ex netip.Addr
				}{{"v4", pod.IP, netip.MustParseAddr("172.31.0.2")}, {"v6", pod.IP6, netip.MustParseAddr("fd00:31::2")}} {
					t.Run(f.name, func(t *testing.T) {
						dst := netip.AddrPortFrom(f.pod, 8080)
						c := dial(t, ext, dst)
						if got := a.next(t); got.role != "inbound" || got.orig != dst || got.remote.Addr() != f.ex {
							t.Fatalf("agent saw %+v, want inbound to %s from %s", got, dst, f.ex)
						}
						if peer := peerOf(t, c.say(t, "nic")); peer != f.ex {
							t.Errorf("pod saw %s, want %s", peer, f.ex)
						}
					})
				}
			})
		})
	}
}

// tunDevice creates a TUN device (no packet information) named name in ns and returns its file descriptor;
// packets written to it arrive on the device. linkType, if not zero, sets the device's link type (ARPHRD_*).
func tunDevice(tb testing.TB, ns lab.NS, name string, linkType int) int {
	tb.Helper()
	fd := -1
	err := ns.Do(func() error {
		var err error
		if fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0); err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			return fmt.Errorf("TUNSETIFF: %w", err)
		}
		if linkType != 0 {
			if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETLINK, uintptr(linkType)); e != 0 {
				return fmt.Errorf("TUNSETLINK: %w", e)
			}
		}
		return nil
	})
	if fd >= 0 {
		tb.Cleanup(func() { unix.Close(fd) })
	}
	if err != nil {
		tb.Fatalf("tun device in %s: %v", ns.Name, err)
	}
	return fd
}

// tunProbe returns a synProbe that writes a SYN from src to dst into the tun device fd and waits for the
// SYN-ACK the node writes back to it.
func tunProbe(fd int, src, dst netip.AddrPort) synProbe {
	var pkt []byte
	seg := tcpSegment(src, dst, 0x02, rand.Uint32(), 0, nil)
	if src.Addr().Is4() {
		pkt = ipv4(src.Addr(), dst.Addr(), unix.IPPROTO_TCP, uint16(rand.Uint32()), 0, false, seg)
	} else {
		pkt = ipv6(src.Addr(), dst.Addr(), unix.IPPROTO_TCP, seg)
	}
	return synProbe{
		send: func() error {
			_, err := unix.Write(fd, pkt)
			return err
		},
		synAck: func(deadline time.Time) (bool, error) {
			return readSynAck(fd, true, dst.Port(), src.Port(), deadline)
		},
	}
}

// TestCaptureTunnelInterfaces: a SYN to an enrolled pod that arrives on an L3 tunnel device (a TUN device:
// no link-layer header, like ipip or wireguard; created after the agent started) is captured; one that arrives
// on a device capture cannot parse (a TUN device set to a PPP link type; present when the agent starts, so
// that the agent only ever sees it as PPP) is dropped by the backstop at the pod's interface in ModeEBPF
// (ModeTPROXY captures on every device).
func TestCaptureTunnelInterfaces(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			for _, dev := range []struct {
				name     string
				linkType int
				want     outcome // in ModeEBPF
			}{{"l3 tunnel", 0, captured}, {"unsupported link type", unix.ARPHRD_PPP, dropped}} {
				t.Run(dev.name, func(t *testing.T) {
					fd := -1
					tun := func(l *lab.Lab) {
						node := l.Nodes[0]
						fd = tunDevice(t, node.NS, "tun1", dev.linkType)
						nsRun(t, node.NS, "ip", "link", "set", "tun1", "up")
						nsRun(t, node.NS, "ip", "route", "add", "172.32.0.0/24", "dev", "tun1")
						nsRun(t, node.NS, "ip", "-6", "route", "add", "fd00:32::/64", "dev", "tun1")
					}
					var a *agent
					var pod *lab.Pod
					if dev.linkType == 0 {
						var l *lab.Lab
						l, a, pod, _ = setup(t, mode)
						tun(l)
					} else {
						_, a, pod, _ = setupWith(t, mode, tun)
					}
					node := a.node
					want := captured
					if mode == redirect.ModeEBPF {
						want = dev.want
						if dev.want == captured {
							waitHooked(t, node, mode, "tun1")
						}
					}
					w := watch(t, pod.NS)
					for _, f := range []struct {
						name     string
						src, dst netip.Addr
					}{{"v4", netip.MustParseAddr("172.32.0.2"), pod.IP}, {"v6", netip.MustParseAddr("fd00:32::2"), pod.IP6}} {
						t.Run(f.name, func(t *testing.T) {
							sport := randomPort()
							p := tunProbe(fd, netip.AddrPortFrom(f.src, sport), netip.AddrPortFrom(f.dst, 8080))
							expectOutcome(t, node, w, p, sport, want, bpf.CaptureVerdictVERDICT_UNHOOKED, 1)
						})
					}
				})
			}
		})
	}
}

// setupWith is setup with prep run on the lab before the agent starts.
func setupWith(t *testing.T, mode redirect.Mode, prep func(*lab.Lab)) (*lab.Lab, *agent, *lab.Pod, *lab.Pod) {
	t.Helper()
	testutil.CheckGoroutines(t)
	l := lab.Start(t, lab.Options{Nodes: 2, PodsPerNode: 2})
	serveEcho(t, l)
	prep(l)
	a := startAgent(t, l.Nodes[0], agentOptions(l.Nodes[0], mode))
	enrolled, remote := l.Nodes[0].Pods[0], l.Nodes[1].Pods[0]
	a.enroll(t, enrolled)
	return l, a, enrolled, remote
}
