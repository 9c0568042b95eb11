//go:build linux

package bpf_test

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/bpf"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// skBuff mirrors struct __sk_buff (UAPI) for BPF_PROG_TEST_RUN contexts.
type skBuff struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto uint32
	Priority, IngressIfindex, Ifindex, TCIndex                                  uint32
	CB                                                                          [5]uint32
	Hash, TCClassid, Data, DataEnd, NapiID, Family, RemoteIP4, LocalIP4         uint32
	RemoteIP6, LocalIP6                                                         [4]uint32
	RemotePort, LocalPort, DataMeta                                             uint32
	FlowKeys, Tstamp                                                            uint64
	WireLen, GSOSegs                                                            uint32
	Sk                                                                          uint64
	GSOSize                                                                     uint32
	TstampType                                                                  uint8
	_                                                                           [3]uint8
	HWTstamp                                                                    uint64
}

const (
	tcActUnspec = ^uint32(0) // -1
	tcActOK     = 0
	tcActShot   = 2
	skDrop      = 0
	skPass      = 1
)

type tcpFlags struct{ syn, ack bool }

var (
	syn    = tcpFlags{syn: true}
	synAck = tcpFlags{syn: true, ack: true}
	ack    = tcpFlags{ack: true}
)

// packet builds an Ethernet frame with an IPv4 or IPv6 TCP segment from src to dst.
func packet(src, dst netip.AddrPort, fl tcpFlags) []byte {
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	tcp[12] = 5 << 4
	if fl.syn {
		tcp[13] |= 0x02
	}
	if fl.ack {
		tcp[13] |= 0x10
	}
	eth := make([]byte, 14)
	var ip []byte
	if src.Addr().Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip = make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(tcp)))
		ip[8] = 64
		ip[9] = 6
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
	} else {
		binary.BigEndian.PutUint16(eth[12:], 0x86dd)
		ip = make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(tcp)))
		ip[6] = 6
		ip[7] = 64
		s, d := src.Addr().As16(), dst.Addr().As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
	}
	return append(append(eth, ip...), tcp...)
}

type fixture struct {
	objs    bpf.CaptureObjects
	cookies map[bpf.CaptureListener]uint64 // socket cookies of the listeners in the listeners map
}

func loadFixture(tb testing.TB) *fixture { return loadFixtureVars(tb, nil) }

// loadFixtureVars loads the objects with the runtime constants in vars set (by variable name).
func loadFixtureVars(tb testing.TB, vars map[string]any) *fixture {
	tb.Helper()
	testutil.RequireRoot(tb)
	if err := rlimit.RemoveMemlock(); err != nil {
		tb.Fatalf("remove memlock: %v", err)
	}
	spec, err := bpf.LoadCapture()
	if err != nil {
		tb.Fatalf("load spec: %v", err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			tb.Fatalf("set %s: %v", name, err)
		}
	}
	f := &fixture{}
	if err := spec.LoadAndAssign(&f.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			tb.Fatalf("load objects: %+v", ve)
		}
		tb.Fatalf("load objects: %v", err)
	}
	tb.Cleanup(func() { f.objs.Close() })
	return f
}

func key(a netip.Addr) bpf.CapturePodKey {
	return bpf.CapturePodKey{Addr: a.As16()}
}

func (f *fixture) enroll(tb testing.TB, a netip.Addr, ifindex uint32, enrolled bool) {
	tb.Helper()
	v := bpf.CapturePodInfo{Ifindex: ifindex}
	if enrolled {
		v.Flags = bpf.CapturePodFlagsPOD_ENROLLED
	}
	if err := f.objs.Pods.Put(key(a), v); err != nil {
		tb.Fatalf("put pod: %v", err)
	}
}

// listen puts a new listener on addr in the listeners map under l and returns its socket cookie.
func (f *fixture) listen(tb testing.TB, l bpf.CaptureListener, addr string) uint64 {
	tb.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(tb.Context(), "tcp", addr)
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	tb.Cleanup(func() { ln.Close() })
	raw, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		tb.Fatalf("syscall conn: %v", err)
	}
	var perr error
	var cookie uint64
	if err := raw.Control(func(fd uintptr) {
		if perr = f.objs.Listeners.Put(l, uint64(fd)); perr == nil {
			cookie, perr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
		}
	}); err != nil {
		tb.Fatalf("control: %v", err)
	}
	if perr != nil {
		tb.Fatalf("put listener: %v", perr)
	}
	return cookie
}

type result struct {
	ret     uint32
	verdict bpf.CaptureVerdict // cb[0]
	mark    uint32
}

func (f *fixture) run(tb testing.TB, pkt []byte, ifindex, mark uint32) result {
	tb.Helper()
	in := skBuff{IngressIfindex: ifindex, Mark: mark}
	var out skBuff
	ret, err := f.objs.Capture.Run(&ebpf.RunOptions{Data: pkt, Context: in, ContextOut: &out})
	if err != nil {
		tb.Fatalf("run: %v", err)
	}
	return result{ret: ret, verdict: bpf.CaptureVerdict(out.CB[0]), mark: out.Mark}
}

// reopenEntries counts the entries of the reopen map.
func (f *fixture) reopenEntries(tb testing.TB) int {
	tb.Helper()
	var k bpf.CaptureFlowKey
	var v uint8
	n := 0
	it := f.objs.Reopen.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		tb.Fatalf("iterate reopen: %v", err)
	}
	return n
}

// stats sums the per-CPU counter of v.
func (f *fixture) stats(tb testing.TB, v bpf.CaptureVerdict) uint64 {
	tb.Helper()
	var per []uint64
	if err := f.objs.Stats.Lookup(v, &per); err != nil {
		tb.Fatalf("lookup stats: %v", err)
	}
	var n uint64
	for _, x := range per {
		n += x
	}
	return n
}

var (
	pod4     = netip.MustParseAddr("10.0.0.2")
	pod6     = netip.MustParseAddr("fd00::2")
	draining = netip.MustParseAddr("10.0.0.3")
	remote4  = netip.MustParseAddr("192.168.1.2")
	remote6  = netip.MustParseAddr("fd00:1::2")
)

const (
	podIf    = 7
	drainIf  = 8
	uplinkIf = 2
)

// standardFixture has pod4/pod6 enrolled on podIf, draining on drainIf, and all three listeners. They listen
// on the IPv6 wildcard, which is dual-stack as the agent's listeners are: capture_lookup may only select an
// IPv6 socket for an IPv4 connection when it is not IPv6-only, and binding a specific IPv6 address makes it so.
func standardFixture(tb testing.TB) *fixture {
	f := loadFixture(tb)
	f.enroll(tb, pod4, podIf, true)
	f.enroll(tb, pod6, podIf, true)
	f.enroll(tb, draining, drainIf, false)
	f.cookies = map[bpf.CaptureListener]uint64{}
	for _, l := range []bpf.CaptureListener{bpf.CaptureListenerLISTENER_OUTBOUND, bpf.CaptureListenerLISTENER_INBOUND, bpf.CaptureListenerLISTENER_HBONE} {
		f.cookies[l] = f.listen(tb, l, "[::]:0")
	}
	return f
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// withIPOptions turns a plain IPv4 packet into one with a 4-byte IP options field (IHL 6).
func withIPOptions(pkt []byte) []byte {
	out := append([]byte{}, pkt[:14+20]...)
	out = append(out, 1, 1, 1, 0) // NOP, NOP, NOP, EOL
	out = append(out, pkt[14+20:]...)
	out[14] = 0x46
	binary.BigEndian.PutUint16(out[14+2:], uint16(len(out)-14))
	return out
}

// fragment marks an IPv4 packet as a non-first fragment.
func fragment(pkt []byte) []byte {
	out := append([]byte{}, pkt...)
	binary.BigEndian.PutUint16(out[14+6:], 185)
	return out
}

// firstFragment marks an IPv4 packet as the first fragment of a larger one (MF, offset 0).
func firstFragment(pkt []byte) []byte {
	out := append([]byte{}, pkt...)
	binary.BigEndian.PutUint16(out[14+6:], 0x2000)
	return out
}

// tinyFirstFragment cuts an IPv4 packet to a first fragment carrying only the first 8 bytes of its TCP header
// (ports and sequence number; the flags come in the next fragment).
func tinyFirstFragment(pkt []byte) []byte {
	out := firstFragment(pkt)[:14+20+8]
	binary.BigEndian.PutUint16(out[14+2:], 20+8)
	return out
}

// withTotLen sets an IPv4 packet's total length.
func withTotLen(pkt []byte, n int) []byte {
	out := append([]byte{}, pkt...)
	binary.BigEndian.PutUint16(out[14+2:], uint16(n))
	return out
}

// withDataOffset sets the TCP data offset (in 32-bit words) of a packet without IP options or extension
// headers.
func withDataOffset(pkt []byte, words int) []byte {
	out := append([]byte{}, pkt...)
	at := 14 + 20
	if out[14]>>4 == 6 {
		at = 14 + 40
	}
	out[at+12] = byte(words << 4)
	return out
}

// IPv6 next-header values.
const (
	nhHop      = 0
	nhTCP      = 6
	nhUDP      = 17
	nhRouting  = 43
	nhFragment = 44
	nhAH       = 51
	nhNone     = 59
	nhDstOpts  = 60
)

// ext6 is one IPv6 extension header: its type and its bytes after the next-header byte.
type ext6 struct {
	typ  byte
	body []byte
}

// padOpts is a Hop-by-Hop or Destination Options header of 8 bytes (one PadN option).
func padOpts(typ byte) ext6 { return ext6{typ, []byte{0, 1, 4, 0, 0, 0, 0}} }

var (
	hopByHop = padOpts(nhHop)
	dstOpts  = padOpts(nhDstOpts)
	routing  = ext6{nhRouting, []byte{0, 0, 0, 0, 0, 0, 0}} // type 0, no segments left
	ah       = ext6{nhAH, []byte{1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0}[:11]}
)

// fragHdr is an IPv6 Fragment header with offset off (in 8-byte units) and the M flag.
func fragHdr(off int, more bool) ext6 {
	fo := uint16(off << 3)
	if more {
		fo |= 1
	}
	return ext6{nhFragment, []byte{0, byte(fo >> 8), byte(fo), 0, 0, 0, 42}}
}

// withExt6 inserts extension headers between the IPv6 header and the upper-layer header of an IPv6 packet,
// chaining next headers and fixing the payload length.
func withExt6(pkt []byte, hdrs ...ext6) []byte {
	out := append([]byte{}, pkt[:14+40]...)
	upper := out[14+6]
	out[14+6] = hdrs[0].typ
	for i, h := range hdrs {
		next := upper
		if i+1 < len(hdrs) {
			next = hdrs[i+1].typ
		}
		out = append(out, next)
		out = append(out, h.body...)
	}
	out = append(out, pkt[14+40:]...)
	binary.BigEndian.PutUint16(out[14+4:], uint16(len(out)-14-40))
	return out
}

// withNextHeader sets the upper-layer protocol of an IPv6 packet without extension headers.
func withNextHeader(pkt []byte, nh byte) []byte {
	out := append([]byte{}, pkt...)
	out[14+6] = nh
	return out
}

func udp(pkt []byte) []byte {
	out := append([]byte{}, pkt...)
	out[14+9] = 17
	return out
}

func TestCaptureDecisions(t *testing.T) {
	f := standardFixture(t)
	cases := []struct {
		name    string
		pkt     []byte
		ifindex uint32
		mark    uint32
		want    bpf.CaptureVerdict
	}{
		{"outbound syn", packet(ap(pod4, 40000), ap(remote4, 80), syn), podIf, 0, bpf.CaptureVerdictVERDICT_OUTBOUND},
		{"outbound syn v6", packet(ap(pod6, 40000), ap(remote6, 80), syn), podIf, 0, bpf.CaptureVerdictVERDICT_OUTBOUND},
		{"outbound syn to a remote 15008", packet(ap(pod4, 40000), ap(remote4, 15008), syn), podIf, 0, bpf.CaptureVerdictVERDICT_OUTBOUND},
		{"outbound syn with ip options", withIPOptions(packet(ap(pod4, 40000), ap(remote4, 80), syn)), podIf, 0, bpf.CaptureVerdictVERDICT_OUTBOUND},
		{"spoofed pod source on another interface", packet(ap(pod4, 40000), ap(remote4, 80), syn), uplinkIf, 0, bpf.CaptureVerdictVERDICT_PASS},
		{"inbound syn", packet(ap(remote4, 40000), ap(pod4, 8080), syn), uplinkIf, 0, bpf.CaptureVerdictVERDICT_INBOUND},
		{"inbound syn v6", packet(ap(remote6, 40000), ap(pod6, 8080), syn), uplinkIf, 0, bpf.CaptureVerdictVERDICT_INBOUND},
		{"hbone syn", packet(ap(remote4, 40000), ap(pod4, 15008), syn), uplinkIf, 0, bpf.CaptureVerdictVERDICT_HBONE},
		{"hbone syn v6", packet(ap(remote6, 40000), ap(pod6, 15008), syn), uplinkIf, 0, bpf.CaptureVerdictVERDICT_HBONE},
		{"spoofed enrolled source to enrolled pod is inbound", packet(ap(pod6, 1), ap(pod6, 15008), syn), uplinkIf, 0, bpf.CaptureVerdictVERDICT_HBONE},
		{"neither end enrolled", packet(ap(remote4, 40000), ap(netip.MustParseAddr("10.0.0.9"), 80), syn), uplinkIf, 0, bpf.CaptureVerdictVERDICT_PASS},
		{"draining destination", packet(ap(remote4, 40000), ap(draining, 80), syn), uplinkIf, 0, bpf.CaptureVerdictVERDICT_PASS},
		{"draining source", packet(ap(draining, 40000), ap(remote4, 80), syn), drainIf, 0, bpf.CaptureVerdictVERDICT_PASS},
		{"ack of a pre-existing flow", packet(ap(pod4, 40000), ap(remote4, 80), ack), podIf, 0, bpf.CaptureVerdictVERDICT_PASS},
		{"syn-ack to a pod", packet(ap(remote4, 80), ap(pod4, 40000), synAck), uplinkIf, 0, bpf.CaptureVerdictVERDICT_PASS},
		{"agent's own mark", packet(ap(pod4, 40000), ap(remote4, 80), syn), podIf, 0x539, bpf.CaptureVerdictVERDICT_PASS},
		{"own mark under its mask", packet(ap(pod4, 40000), ap(remote4, 80), syn), podIf, 0x10539, bpf.CaptureVerdictVERDICT_PASS},
		{"udp", udp(packet(ap(pod4, 40000), ap(remote4, 53), syn)), podIf, 0, bpf.CaptureVerdictVERDICT_PASS},

		// IPv4 fragments and TCP headers the program cannot check: dropped from and to captured pods.
		{"non-first fragment from a pod", fragment(packet(ap(pod4, 40000), ap(remote4, 80), syn)), podIf, 0, malformed},
		{"non-first fragment to a pod", fragment(packet(ap(remote4, 40000), ap(pod4, 80), ack)), uplinkIf, 0, malformed},
		{"first fragment with a whole syn", firstFragment(packet(ap(remote4, 40000), ap(pod4, 80), syn)), uplinkIf, 0, malformed},
		{"tiny first fragment to a pod", tinyFirstFragment(packet(ap(remote4, 40000), ap(pod4, 80), syn)), uplinkIf, 0, malformed},
		{"tiny first fragment from a pod", tinyFirstFragment(packet(ap(pod4, 40000), ap(remote4, 80), syn)), podIf, 0, malformed},
		{"truncated tcp header", packet(ap(pod4, 40000), ap(remote4, 80), syn)[:14+20+10], podIf, 0, malformed},
		{"total length cuts the tcp header", withTotLen(packet(ap(remote4, 40000), ap(pod4, 80), syn), 20+12), uplinkIf, 0, malformed},
		{"data offset under 20 bytes", withDataOffset(packet(ap(remote4, 40000), ap(pod4, 80), syn), 4), uplinkIf, 0, malformed},
		{"data offset past the segment", withDataOffset(packet(ap(remote4, 40000), ap(pod4, 80), syn), 6), uplinkIf, 0, malformed},
		{"data offset under 20 bytes v6", withDataOffset(packet(ap(remote6, 40000), ap(pod6, 80), syn), 2), uplinkIf, 0, malformed},
		{"fragment of a pod not enrolled", fragment(packet(ap(remote4, 40000), ap(netip.MustParseAddr("10.0.0.9"), 80), syn)), uplinkIf, 0, bpf.CaptureVerdictVERDICT_PASS},
		{"fragment of a draining pod", firstFragment(packet(ap(remote4, 40000), ap(draining, 80), syn)), uplinkIf, 0, bpf.CaptureVerdictVERDICT_PASS},
		{"fragment from a spoofed pod source", fragment(packet(ap(pod4, 40000), ap(remote4, 80), syn)), uplinkIf, 0, bpf.CaptureVerdictVERDICT_PASS},
		{"udp fragment to a pod", udp(fragment(packet(ap(remote4, 40000), ap(pod4, 53), syn))), uplinkIf, 0, bpf.CaptureVerdictVERDICT_PASS},

		// IPv6 extension headers: walked to find TCP.
		{"outbound syn behind destination options", withExt6(packet(ap(pod6, 40000), ap(remote6, 80), syn), dstOpts), podIf, 0, bpf.CaptureVerdictVERDICT_OUTBOUND},
		{"inbound syn behind hop-by-hop", withExt6(packet(ap(remote6, 40000), ap(pod6, 8080), syn), hopByHop), uplinkIf, 0, bpf.CaptureVerdictVERDICT_INBOUND},
		{"inbound syn behind destination options", withExt6(packet(ap(remote6, 40000), ap(pod6, 8080), syn), dstOpts), uplinkIf, 0, bpf.CaptureVerdictVERDICT_INBOUND},
		{"hbone syn behind a routing header", withExt6(packet(ap(remote6, 40000), ap(pod6, 15008), syn), routing), uplinkIf, 0, bpf.CaptureVerdictVERDICT_HBONE},
		{"syn behind hop-by-hop, routing, destination options and ah", withExt6(packet(ap(remote6, 40000), ap(pod6, 8080), syn), hopByHop, routing, dstOpts, ah), uplinkIf, 0, bpf.CaptureVerdictVERDICT_INBOUND},
		{"syn in an atomic fragment", withExt6(packet(ap(remote6, 40000), ap(pod6, 8080), syn), fragHdr(0, false)), uplinkIf, 0, bpf.CaptureVerdictVERDICT_INBOUND},
		{"syn behind six extension headers", withExt6(packet(ap(remote6, 40000), ap(pod6, 8080), syn), hopByHop, dstOpts, dstOpts, dstOpts, dstOpts, dstOpts), uplinkIf, 0, bpf.CaptureVerdictVERDICT_INBOUND},
		{"ack behind destination options, no socket", withExt6(packet(ap(pod6, 40000), ap(remote6, 80), ack), dstOpts), podIf, 0, bpf.CaptureVerdictVERDICT_PASS},
		{"syn behind seven extension headers", withExt6(packet(ap(remote6, 40000), ap(pod6, 8080), syn), hopByHop, dstOpts, dstOpts, dstOpts, dstOpts, dstOpts, dstOpts), uplinkIf, 0, malformed},
		{"first fragment v6 to a pod", withExt6(packet(ap(remote6, 40000), ap(pod6, 8080), syn), fragHdr(0, true)), uplinkIf, 0, malformed},
		{"first fragment v6 from a pod", withExt6(packet(ap(pod6, 40000), ap(remote6, 80), syn), dstOpts, fragHdr(0, true)), podIf, 0, malformed},
		{"later fragment v6 of tcp", withExt6(packet(ap(remote6, 40000), ap(pod6, 8080), ack), fragHdr(3, false)), uplinkIf, 0, malformed},
		{"later fragment v6 of destination options", withExt6(withExt6(packet(ap(remote6, 40000), ap(pod6, 8080), ack), dstOpts), fragHdr(3, true)), uplinkIf, 0, malformed},
		{"truncated extension header", withExt6(packet(ap(remote6, 40000), ap(pod6, 8080), syn), dstOpts)[:14+40+1], uplinkIf, 0, malformed},
		{"extension header past the packet", withExt6(packet(ap(remote6, 40000), ap(pod6, 8080), syn), ext6{nhDstOpts, []byte{200, 0, 0, 0, 0, 0, 0}}), uplinkIf, 0, malformed},
		{"truncated tcp header behind destination options", withExt6(packet(ap(remote6, 40000), ap(pod6, 8080), syn), dstOpts)[:14+40+8+12], uplinkIf, 0, malformed},
		{"v6 payload length cuts the tcp header", withPayloadLen(packet(ap(remote6, 40000), ap(pod6, 8080), syn), 12), uplinkIf, 0, malformed},
		{"extension headers of a pod not enrolled", withExt6(packet(ap(remote6, 40000), ap(netip.MustParseAddr("fd00::9"), 80), syn), fragHdr(0, true)), uplinkIf, 0, bpf.CaptureVerdictVERDICT_PASS},
		{"udp behind destination options", withExt6(withNextHeader(packet(ap(remote6, 40000), ap(pod6, 53), syn), nhUDP), dstOpts), uplinkIf, 0, bpf.CaptureVerdictVERDICT_PASS},
		{"no next header behind destination options", withExt6(withNextHeader(packet(ap(remote6, 40000), ap(pod6, 53), syn), nhNone), dstOpts), uplinkIf, 0, bpf.CaptureVerdictVERDICT_PASS},
		{"later fragment v6 of udp", withExt6(withNextHeader(packet(ap(remote6, 40000), ap(pod6, 53), syn), nhUDP), fragHdr(3, false)), uplinkIf, 0, bpf.CaptureVerdictVERDICT_PASS},
		{"first fragment v6 of udp", withExt6(withNextHeader(packet(ap(remote6, 40000), ap(pod6, 53), syn), nhUDP), fragHdr(0, true)), uplinkIf, 0, bpf.CaptureVerdictVERDICT_PASS},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := f.stats(t, tc.want)
			r := f.run(t, tc.pkt, tc.ifindex, tc.mark)
			counted := f.stats(t, tc.want) - before
			if tc.want == bpf.CaptureVerdictVERDICT_PASS {
				if r.verdict != tc.want || r.ret != tcActUnspec || r.mark != tc.mark {
					t.Fatalf("got %+v, want pass to the next program with the mark unchanged", r)
				}
				return
			}
			if tc.want == malformed {
				if r.verdict != tc.want || r.ret != tcActShot || r.mark != tc.mark || counted != 1 {
					t.Fatalf("got %+v (counted %d), want dropped as malformed", r, counted)
				}
				return
			}
			// A captured SYN is only marked for local delivery; capture_lookup picks the listener.
			if r.verdict != tc.want || r.ret != tcActOK || r.mark != tc.mark|0x400 || counted != 1 {
				t.Fatalf("got %+v (counted %d), want verdict %d, passed and marked 0x400", r, counted, tc.want)
			}
		})
	}
}

// malformed is the verdict for TCP the program cannot check, from or to a captured pod.
const malformed = bpf.CaptureVerdictVERDICT_MALFORMED

// withPayloadLen sets an IPv6 packet's payload length.
func withPayloadLen(pkt []byte, n int) []byte {
	out := append([]byte{}, pkt...)
	binary.BigEndian.PutUint16(out[14+4:], uint16(n))
	return out
}

func TestCaptureNoListener(t *testing.T) {
	f := standardFixture(t)
	if err := f.objs.Listeners.Delete(bpf.CaptureListenerLISTENER_HBONE); err != nil {
		t.Fatalf("delete listener: %v", err)
	}
	r := f.run(t, packet(ap(remote4, 40000), ap(pod4, 15008), syn), uplinkIf, 0)
	if r.verdict != bpf.CaptureVerdictVERDICT_NO_LISTENER || r.ret != tcActShot {
		t.Fatalf("got %+v, want the SYN dropped while the agent is away", r)
	}
	// Other roles are unaffected.
	r = f.run(t, packet(ap(remote4, 40000), ap(pod4, 80), syn), uplinkIf, 0)
	if r.verdict != bpf.CaptureVerdictVERDICT_INBOUND {
		t.Fatalf("got %+v, want inbound", r)
	}
}

// TestCaptureEstablished checks the established-first lookup against real sockets of this network namespace
// (test runs use its loopback device).
func TestCaptureEstablished(t *testing.T) {
	f := standardFixture(t)
	lo := netip.MustParseAddr("127.0.0.1")
	f.enroll(t, lo, 1, true)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	srv := ln.Addr().(*net.TCPAddr).AddrPort()
	cli := client.LocalAddr().(*net.TCPAddr).AddrPort()

	t.Run("packet of an established socket", func(t *testing.T) {
		r := f.run(t, packet(cli, srv, ack), 1, 0)
		if r.verdict != bpf.CaptureVerdictVERDICT_ESTABLISHED || r.ret != tcActOK || r.mark != 0x400 {
			t.Fatalf("got %+v, want established and marked 0x400", r)
		}
	})
	t.Run("mark keeps bits outside the mask", func(t *testing.T) {
		r := f.run(t, packet(cli, srv, ack), 1, 0x10f00)
		if r.mark != 0x10400 {
			t.Fatalf("mark = %#x, want 0x10400", r.mark)
		}
	})
	t.Run("syn matching only a listening socket is a new capture", func(t *testing.T) {
		r := f.run(t, packet(ap(lo, 50000), srv, syn), 1, 0)
		if r.verdict != bpf.CaptureVerdictVERDICT_OUTBOUND {
			t.Fatalf("got %+v, want outbound (listeners are never assigned by the lookup)", r)
		}
	})
	t.Run("time-wait socket", func(t *testing.T) {
		// A client that closes first leaves its side in TIME_WAIT: local cli, remote srv. Packets from srv to
		// cli meet it.
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		twCli := c.LocalAddr().(*net.TCPAddr).AddrPort()
		c.Close()
		if _, err := s.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("read client close: %v", err)
		}
		s.Close()
		// A pure SYN may reopen the connection: it is decided like any SYN (tcp input retires the
		// TIME_WAIT socket and capture_lookup selects the listener).
		if r := f.run(t, packet(srv, twCli, syn), 1, 0); r.verdict != bpf.CaptureVerdictVERDICT_OUTBOUND || r.mark != 0x400 {
			t.Errorf("syn: got %+v, want outbound, marked", r)
		}
		// Anything else is the TIME_WAIT socket's: marked so that it reaches it.
		for _, fl := range []tcpFlags{ack, synAck} {
			if r := f.run(t, packet(srv, twCli, fl), 1, 0); r.verdict != bpf.CaptureVerdictVERDICT_ESTABLISHED || r.mark != 0x400 {
				t.Errorf("%+v: got %+v, want established, marked", fl, r)
			}
		}
		if n := f.reopenEntries(t); n != 0 {
			t.Errorf("%d reopen entries for captured connections, want none", n)
		}

		// A draining pod's SYN is not captured, but it must reach the TIME_WAIT socket (forwarded, it would be
		// dropped), and capture_lookup then refuses it a listener, once.
		f.enroll(t, lo, 1, false)
		defer f.enroll(t, lo, 1, true)
		if r := f.run(t, packet(srv, twCli, syn), 1, 0); r.verdict != bpf.CaptureVerdictVERDICT_ESTABLISHED || r.mark != 0x400 {
			t.Fatalf("draining syn: got %+v, want established, marked", r)
		}
		if n := f.reopenEntries(t); n != 1 {
			t.Fatalf("%d reopen entries, want 1", n)
		}
		ctx := lookupCtx(srv, twCli, unix.IPPROTO_TCP)
		if ret, cookie := f.lookup(t, ctx); ret != skDrop || cookie != 0 {
			t.Fatalf("lookup for the reopened connection: verdict %d cookie %d, want drop", ret, cookie)
		}
		if ret, cookie := f.lookup(t, ctx); ret != skPass || cookie != 0 {
			t.Fatalf("second lookup: verdict %d cookie %d, want pass with nothing selected", ret, cookie)
		}
		if n := f.reopenEntries(t); n != 0 {
			t.Fatalf("%d reopen entries after the lookup, want none", n)
		}
	})
	t.Run("draining keeps established flows", func(t *testing.T) {
		f.enroll(t, lo, 1, false)
		defer f.enroll(t, lo, 1, true)
		if r := f.run(t, packet(cli, srv, ack), 1, 0); r.verdict != bpf.CaptureVerdictVERDICT_ESTABLISHED {
			t.Fatalf("got %+v, want established", r)
		}
		if r := f.run(t, packet(ap(lo, 50001), srv, syn), 1, 0); r.verdict != bpf.CaptureVerdictVERDICT_PASS {
			t.Fatalf("got %+v, want pass for a new connection of a draining pod", r)
		}
	})
}

// skLookup mirrors struct bpf_sk_lookup (UAPI) for BPF_PROG_TEST_RUN contexts. Addresses and RemotePort are
// in network byte order (stored as the wire bytes), LocalPort in host order. Test runs require IngressIfindex 0.
type skLookup struct {
	Cookie         uint64
	Family         uint32
	Protocol       uint32
	RemoteIP4      uint32
	RemoteIP6      [4]uint32
	RemotePort     uint16
	_              uint16
	LocalIP4       uint32
	LocalIP6       [4]uint32
	LocalPort      uint32
	IngressIfindex uint32
	_              uint32
}

// lookupCtx builds the sk_lookup context of a connection from remote to local.
func lookupCtx(remote, local netip.AddrPort, protocol uint32) skLookup {
	ne := binary.NativeEndian
	c := skLookup{Protocol: protocol, LocalPort: uint32(local.Port())}
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], remote.Port())
	c.RemotePort = ne.Uint16(port[:])
	if remote.Addr().Is4() {
		c.Family = unix.AF_INET
		r, l := remote.Addr().As4(), local.Addr().As4()
		c.RemoteIP4, c.LocalIP4 = ne.Uint32(r[:]), ne.Uint32(l[:])
		return c
	}
	c.Family = unix.AF_INET6
	r, l := remote.Addr().As16(), local.Addr().As16()
	for i := range 4 {
		c.RemoteIP6[i], c.LocalIP6[i] = ne.Uint32(r[4*i:]), ne.Uint32(l[4*i:])
	}
	return c
}

// lookup runs capture_lookup and returns its verdict and the cookie of the socket it selected (0 for none).
func (f *fixture) lookup(tb testing.TB, c skLookup) (uint32, uint64) {
	tb.Helper()
	var out skLookup
	ret, err := f.objs.CaptureLookup.Run(&ebpf.RunOptions{Context: c, ContextOut: &out})
	if err != nil {
		tb.Fatalf("run: %v", err)
	}
	return ret, out.Cookie
}

// TestCaptureLookup checks the listener selection of capture_lookup. Test runs have no arriving interface
// (ifindex 0), so the outbound cases use a pod enrolled on ifindex 0; enrolled pods on other interfaces show
// that a source only counts on its own interface.
func TestCaptureLookup(t *testing.T) {
	f := standardFixture(t)
	local4, local6 := netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::5")
	f.enroll(t, local4, 0, true)
	f.enroll(t, local6, 0, true)
	out, in, hbone := f.cookies[bpf.CaptureListenerLISTENER_OUTBOUND], f.cookies[bpf.CaptureListenerLISTENER_INBOUND], f.cookies[bpf.CaptureListenerLISTENER_HBONE]
	cases := []struct {
		name       string
		ctx        skLookup
		wantCookie uint64 // 0: nothing selected
	}{
		{"outbound", lookupCtx(ap(local4, 40000), ap(remote4, 80), unix.IPPROTO_TCP), out},
		{"outbound v6", lookupCtx(ap(local6, 40000), ap(remote6, 80), unix.IPPROTO_TCP), out},
		{"outbound to a remote 15008", lookupCtx(ap(local4, 40000), ap(remote4, 15008), unix.IPPROTO_TCP), out},
		{"outbound to a node address", lookupCtx(ap(local4, 40000), ap(netip.MustParseAddr("127.0.0.1"), 10250), unix.IPPROTO_TCP), out},
		{"inbound", lookupCtx(ap(remote4, 40000), ap(pod4, 8080), unix.IPPROTO_TCP), in},
		{"inbound v6", lookupCtx(ap(remote6, 40000), ap(pod6, 8080), unix.IPPROTO_TCP), in},
		{"hbone", lookupCtx(ap(remote4, 40000), ap(pod4, 15008), unix.IPPROTO_TCP), hbone},
		{"hbone v6", lookupCtx(ap(remote6, 40000), ap(pod6, 15008), unix.IPPROTO_TCP), hbone},
		{"enrolled pod to enrolled pod is outbound", lookupCtx(ap(local4, 40000), ap(pod4, 15008), unix.IPPROTO_TCP), out},
		{"source pod on another interface is not outbound", lookupCtx(ap(pod4, 40000), ap(remote4, 80), unix.IPPROTO_TCP), 0},
		{"neither end enrolled", lookupCtx(ap(remote4, 40000), ap(netip.MustParseAddr("10.0.0.9"), 80), unix.IPPROTO_TCP), 0},
		{"draining destination", lookupCtx(ap(remote4, 40000), ap(draining, 80), unix.IPPROTO_TCP), 0},
		{"udp", lookupCtx(ap(remote4, 40000), ap(pod4, 53), unix.IPPROTO_UDP), 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ret, cookie := f.lookup(t, tc.ctx)
			if ret != skPass || cookie != tc.wantCookie {
				t.Fatalf("got verdict %d cookie %d, want pass with cookie %d", ret, cookie, tc.wantCookie)
			}
		})
	}
	t.Run("missing listener drops", func(t *testing.T) {
		f := standardFixture(t)
		if err := f.objs.Listeners.Delete(bpf.CaptureListenerLISTENER_INBOUND); err != nil {
			t.Fatal(err)
		}
		before := f.stats(t, bpf.CaptureVerdictVERDICT_NO_LISTENER)
		if ret, cookie := f.lookup(t, lookupCtx(ap(remote4, 40000), ap(pod4, 8080), unix.IPPROTO_TCP)); ret != skDrop || cookie != 0 {
			t.Fatalf("got verdict %d cookie %d, want drop", ret, cookie)
		}
		if n := f.stats(t, bpf.CaptureVerdictVERDICT_NO_LISTENER) - before; n != 1 {
			t.Fatalf("no-listener count moved by %d, want 1", n)
		}
		// Other roles are unaffected.
		if ret, cookie := f.lookup(t, lookupCtx(ap(remote4, 40000), ap(pod4, 15008), unix.IPPROTO_TCP)); ret != skPass || cookie != f.cookies[bpf.CaptureListenerLISTENER_HBONE] {
			t.Fatalf("hbone: got verdict %d cookie %d", ret, cookie)
		}
	})
	t.Run("refused listener drops", func(t *testing.T) {
		f := standardFixture(t)
		// An IPv4 listener cannot take an IPv6 connection (EAFNOSUPPORT).
		f.listen(t, bpf.CaptureListenerLISTENER_HBONE, "127.0.0.1:0")
		before := f.stats(t, bpf.CaptureVerdictVERDICT_ASSIGN_FAILED)
		if ret, cookie := f.lookup(t, lookupCtx(ap(remote6, 40000), ap(pod6, 15008), unix.IPPROTO_TCP)); ret != skDrop || cookie != 0 {
			t.Fatalf("got verdict %d cookie %d, want drop", ret, cookie)
		}
		if n := f.stats(t, bpf.CaptureVerdictVERDICT_ASSIGN_FAILED) - before; n != 1 {
			t.Fatalf("assign-failed count moved by %d, want 1", n)
		}
	})
}

// BenchmarkCapture measures the program's cost per packet with BPF_PROG_TEST_RUN's repeat loop.
func BenchmarkCapture(b *testing.B) {
	f := standardFixture(b)
	cases := []struct {
		name    string
		pkt     []byte
		ifindex uint32
	}{
		{"udp", udp(packet(ap(pod4, 40000), ap(remote4, 53), syn)), podIf},
		{"tcp not enrolled", packet(ap(remote4, 40000), ap(netip.MustParseAddr("10.0.0.9"), 80), ack), uplinkIf},
		{"tcp enrolled no socket", packet(ap(pod4, 40000), ap(remote4, 80), ack), podIf},
		{"syn outbound", packet(ap(pod4, 40000), ap(remote4, 80), syn), podIf},
		{"syn outbound v6", packet(ap(pod6, 40000), ap(remote6, 80), syn), podIf},
	}
	// A real established socket in this namespace, for the established-first path.
	lo := netip.MustParseAddr("127.0.0.1")
	f.enroll(b, lo, 1, true)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	defer server.Close()
	cases = append(cases, struct {
		name    string
		pkt     []byte
		ifindex uint32
	}{"tcp established", packet(client.LocalAddr().(*net.TCPAddr).AddrPort(), ln.Addr().(*net.TCPAddr).AddrPort(), ack), 1})

	// The harness's own cost per repeat, to subtract: a program that only returns.
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		Instructions: asm.Instructions{asm.LoadImm(asm.R0, -1, asm.DWord), asm.Return()},
		License:      "Dual BSD/GPL",
	})
	if err != nil {
		b.Fatal(err)
	}
	defer empty.Close()
	b.Run("baseline empty program", func(b *testing.B) {
		if _, err := empty.Run(&ebpf.RunOptions{Data: cases[0].pkt, Context: skBuff{}, Repeat: uint32(b.N)}); err != nil {
			b.Fatal(err)
		}
	})
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			in := skBuff{IngressIfindex: tc.ifindex}
			b.ResetTimer()
			if _, err := f.objs.Capture.Run(&ebpf.RunOptions{Data: tc.pkt, Context: in, Repeat: uint32(b.N)}); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkCaptureLookup measures capture_lookup's cost per listener lookup with BPF_PROG_TEST_RUN's repeat loop.
func BenchmarkCaptureLookup(b *testing.B) {
	f := standardFixture(b)
	cases := []struct {
		name string
		ctx  skLookup
	}{
		{"not enrolled", lookupCtx(ap(remote4, 40000), ap(netip.MustParseAddr("10.0.0.9"), 80), unix.IPPROTO_TCP)},
		{"inbound", lookupCtx(ap(remote4, 40000), ap(pod4, 8080), unix.IPPROTO_TCP)},
		{"inbound v6", lookupCtx(ap(remote6, 40000), ap(pod6, 8080), unix.IPPROTO_TCP)},
	}
	// The harness's own cost per repeat, to subtract: a program that only passes.
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SkLookup,
		AttachType:   ebpf.AttachSkLookup,
		Instructions: asm.Instructions{asm.LoadImm(asm.R0, 1, asm.DWord), asm.Return()},
		License:      "Dual BSD/GPL",
	})
	if err != nil {
		b.Fatal(err)
	}
	defer empty.Close()
	b.Run("baseline empty program", func(b *testing.B) {
		if _, err := empty.Run(&ebpf.RunOptions{Context: cases[0].ctx, Repeat: uint32(b.N)}); err != nil {
			b.Fatal(err)
		}
	})
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			if _, err := f.objs.CaptureLookup.Run(&ebpf.RunOptions{Context: tc.ctx, Repeat: uint32(b.N)}); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// runEgress runs capture_egress on pkt as forwarded from interface iif.
func (f *fixture) runEgress(tb testing.TB, pkt []byte, iif uint32) result {
	tb.Helper()
	in := skBuff{IngressIfindex: iif}
	var out skBuff
	ret, err := f.objs.CaptureEgress.Run(&ebpf.RunOptions{Data: pkt, Context: in, ContextOut: &out})
	if err != nil {
		tb.Fatalf("run: %v", err)
	}
	return result{ret: ret, verdict: bpf.CaptureVerdict(out.CB[0]), mark: out.Mark}
}

// BenchmarkCaptureEgress measures the backstop at pods' host-side egress (capture_egress), which runs on every
// packet the node forwards to a pod: the common cases (a packet of an established flow, a SYN from a hooked
// interface, a packet the node sent itself) and a non-TCP one.
func BenchmarkCaptureEgress(b *testing.B) {
	f := standardFixture(b)
	if err := f.objs.Hooked.Put(uint32(uplinkIf), uint8(1)); err != nil {
		b.Fatal(err)
	}
	cases := []struct {
		name    string
		pkt     []byte
		ifindex uint32
	}{
		{"udp", udp(packet(ap(remote4, 40000), ap(pod4, 53), syn)), uplinkIf},
		{"tcp ack to a pod", packet(ap(remote4, 40000), ap(pod4, 8080), ack), uplinkIf},
		{"syn to a pod from a hooked interface", packet(ap(remote4, 40000), ap(pod4, 8080), syn), uplinkIf},
		{"syn to a pod from a hooked interface v6", packet(ap(remote6, 40000), ap(pod6, 8080), syn), uplinkIf},
		{"sent by the node", packet(ap(remote4, 40000), ap(pod4, 8080), syn), 0},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			in := skBuff{IngressIfindex: tc.ifindex}
			b.ResetTimer()
			if _, err := f.objs.CaptureEgress.Run(&ebpf.RunOptions{Data: tc.pkt, Context: in, Repeat: uint32(b.N)}); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// TestCaptureEgress checks the fail-closed backstop at pods' host-side egress: new connections to enrolled pods
// forwarded from interfaces that capture does not hook are dropped.
func TestCaptureEgress(t *testing.T) {
	f := standardFixture(t)
	const unhookedIf = 9
	if err := f.objs.Hooked.Put(uint32(uplinkIf), uint8(1)); err != nil {
		t.Fatal(err)
	}
	unhooked := bpf.CaptureVerdictVERDICT_UNHOOKED
	pass := bpf.CaptureVerdictVERDICT_PASS
	cases := []struct {
		name string
		pkt  []byte
		iif  uint32
		want bpf.CaptureVerdict
	}{
		{"syn to a pod from an unhooked interface", packet(ap(remote4, 40000), ap(pod4, 8080), syn), unhookedIf, unhooked},
		{"syn to a pod from an unhooked interface v6", packet(ap(remote6, 40000), ap(pod6, 15008), syn), unhookedIf, unhooked},
		{"syn behind destination options from an unhooked interface", withExt6(packet(ap(remote6, 40000), ap(pod6, 8080), syn), dstOpts), unhookedIf, unhooked},
		{"fragment to a pod from an unhooked interface", fragment(packet(ap(remote4, 40000), ap(pod4, 8080), ack)), unhookedIf, unhooked},
		{"tiny first fragment from an unhooked interface", tinyFirstFragment(packet(ap(remote4, 40000), ap(pod4, 8080), syn)), unhookedIf, unhooked},
		{"first fragment v6 from an unhooked interface", withExt6(packet(ap(remote6, 40000), ap(pod6, 8080), syn), fragHdr(0, true)), unhookedIf, unhooked},
		{"syn to a pod sent by the node", packet(ap(remote4, 40000), ap(pod4, 8080), syn), 0, pass},
		{"syn to a pod from a hooked interface (node DNAT)", packet(ap(remote4, 40000), ap(pod4, 8080), syn), uplinkIf, pass},
		{"ack to a pod from an unhooked interface", packet(ap(remote4, 40000), ap(pod4, 8080), ack), unhookedIf, pass},
		{"syn-ack to a pod from an unhooked interface", packet(ap(remote4, 80), ap(pod4, 40000), synAck), unhookedIf, pass},
		{"syn to a draining pod from an unhooked interface", packet(ap(remote4, 40000), ap(draining, 8080), syn), unhookedIf, pass},
		{"syn to an address not enrolled", packet(ap(remote4, 40000), ap(netip.MustParseAddr("10.0.0.9"), 8080), syn), unhookedIf, pass},
		{"udp to a pod from an unhooked interface", udp(packet(ap(remote4, 40000), ap(pod4, 53), syn)), unhookedIf, pass},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := f.stats(t, unhooked)
			r := f.runEgress(t, tc.pkt, tc.iif)
			counted := f.stats(t, unhooked) - before
			if tc.want == pass {
				if r.ret != tcActUnspec || counted != 0 {
					t.Fatalf("got %+v (counted %d), want pass to the next program", r, counted)
				}
				return
			}
			if r.ret != tcActShot || r.verdict != tc.want || counted != 1 {
				t.Fatalf("got %+v (counted %d), want dropped as unhooked", r, counted)
			}
		})
	}
}
