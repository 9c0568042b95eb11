//go:build linux

package bpf_test

import (
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/bpf"
)

// listenUDP puts a new UDP socket on addr in the listeners map under l and returns its socket cookie.
func (f *fixture) listenUDP(tb testing.TB, l bpf.CaptureListener, addr string) uint64 {
	tb.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		tb.Fatalf("listen udp: %v", err)
	}
	tb.Cleanup(func() { pc.Close() })
	raw, err := pc.(*net.UDPConn).SyscallConn()
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
		tb.Fatalf("put udp socket: %v", perr)
	}
	return cookie
}

// dnsFixture is standardFixture with DNS capture on and the DNS socket and listener in the map.
func dnsFixture(tb testing.TB) *fixture {
	f := loadFixtureVars(tb, map[string]any{bpf.CaptureVarDnsCapture: uint8(1)})
	f.enroll(tb, pod4, podIf, true)
	f.enroll(tb, pod6, podIf, true)
	f.enroll(tb, draining, drainIf, false)
	f.cookies = map[bpf.CaptureListener]uint64{}
	for _, l := range []bpf.CaptureListener{bpf.CaptureListenerLISTENER_OUTBOUND, bpf.CaptureListenerLISTENER_INBOUND,
		bpf.CaptureListenerLISTENER_HBONE, bpf.CaptureListenerLISTENER_DNS_TCP} {
		f.cookies[l] = f.listen(tb, l, "[::]:0")
	}
	f.cookies[bpf.CaptureListenerLISTENER_DNS_UDP] = f.listenUDP(tb, bpf.CaptureListenerLISTENER_DNS_UDP, "[::]:0")
	return f
}

var (
	nameserver4 = netip.MustParseAddr("10.96.0.10")
	nameserver6 = netip.MustParseAddr("fd00:96::a")
)

// udp6 turns an IPv6 TCP packet into UDP (the ports sit where UDP's do).
func udp6(pkt []byte) []byte { return withNextHeader(pkt, nhUDP) }

func TestCaptureDNS(t *testing.T) {
	on, off := dnsFixture(t), standardFixture(t)
	dns := bpf.CaptureVerdictVERDICT_DNS
	pass := bpf.CaptureVerdictVERDICT_PASS
	cases := []struct {
		name    string
		f       *fixture
		pkt     []byte
		ifindex uint32
		want    bpf.CaptureVerdict
	}{
		{"udp query", on, udp(packet(ap(pod4, 40000), ap(nameserver4, 53), syn)), podIf, dns},
		{"udp query v6", on, udp6(packet(ap(pod6, 40000), ap(nameserver6, 53), syn)), podIf, dns},
		{"udp query to a node address", on, udp(packet(ap(pod4, 40000), ap(netip.MustParseAddr("169.254.20.10"), 53), syn)), podIf, dns},
		{"tcp query syn", on, packet(ap(pod4, 40000), ap(nameserver4, 53), syn), podIf, dns},
		{"tcp query syn v6", on, packet(ap(pod6, 40000), ap(nameserver6, 53), syn), podIf, dns},
		{"udp to another port", on, udp(packet(ap(pod4, 40000), ap(nameserver4, 5353), syn)), podIf, pass},
		{"udp from a spoofed pod source", on, udp(packet(ap(pod4, 40000), ap(nameserver4, 53), syn)), uplinkIf, pass},
		{"udp from a draining pod", on, udp(packet(ap(draining, 40000), ap(nameserver4, 53), syn)), drainIf, pass},
		{"udp to an enrolled pod's port 53", on, udp(packet(ap(remote4, 40000), ap(pod4, 53), syn)), uplinkIf, pass},
		{"udp fragment", on, udp(fragment(packet(ap(pod4, 40000), ap(nameserver4, 53), syn))), podIf, pass},
		{"udp behind extension headers", on, withExt6(udp6(packet(ap(pod6, 40000), ap(nameserver6, 53), syn)), dstOpts), podIf, pass},
		{"tcp to an enrolled pod's port 53 is inbound", on, packet(ap(remote4, 40000), ap(pod4, 53), syn), uplinkIf, bpf.CaptureVerdictVERDICT_INBOUND},
		{"capture off: udp query", off, udp(packet(ap(pod4, 40000), ap(nameserver4, 53), syn)), podIf, pass},
		{"capture off: tcp query is outbound", off, packet(ap(pod4, 40000), ap(nameserver4, 53), syn), podIf, bpf.CaptureVerdictVERDICT_OUTBOUND},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.f.run(t, tc.pkt, tc.ifindex, 0)
			if tc.want == pass {
				if r.verdict != pass || r.ret != tcActUnspec || r.mark != 0 {
					t.Fatalf("got %+v, want pass with the mark unchanged", r)
				}
				return
			}
			if r.verdict != tc.want || r.ret != tcActOK || r.mark != 0x400 {
				t.Fatalf("got %+v, want verdict %d, passed and marked 0x400", r, tc.want)
			}
		})
	}

	t.Run("no dns socket: the query goes to the nameserver", func(t *testing.T) {
		f := dnsFixture(t)
		if err := f.objs.Listeners.Delete(bpf.CaptureListenerLISTENER_DNS_UDP); err != nil {
			t.Fatal(err)
		}
		if r := f.run(t, udp(packet(ap(pod4, 40000), ap(nameserver4, 53), syn)), podIf, 0); r.verdict != pass || r.ret != tcActUnspec {
			t.Fatalf("got %+v, want pass", r)
		}
	})
	t.Run("no dns listener: the syn is held", func(t *testing.T) {
		f := dnsFixture(t)
		if err := f.objs.Listeners.Delete(bpf.CaptureListenerLISTENER_DNS_TCP); err != nil {
			t.Fatal(err)
		}
		if r := f.run(t, packet(ap(pod4, 40000), ap(nameserver4, 53), syn), podIf, 0); r.verdict != bpf.CaptureVerdictVERDICT_NO_LISTENER || r.ret != tcActShot {
			t.Fatalf("got %+v, want dropped for the missing listener", r)
		}
	})
}

func TestCaptureLookupDNS(t *testing.T) {
	on, off := dnsFixture(t), standardFixture(t)
	local4, local6 := netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::5")
	for _, f := range []*fixture{on, off} {
		f.enroll(t, local4, 0, true)
		f.enroll(t, local6, 0, true)
	}
	cases := []struct {
		name       string
		f          *fixture
		ctx        skLookup
		wantCookie uint64
	}{
		{"udp query", on, lookupCtx(ap(local4, 40000), ap(nameserver4, 53), unix.IPPROTO_UDP), on.cookies[bpf.CaptureListenerLISTENER_DNS_UDP]},
		{"udp query v6", on, lookupCtx(ap(local6, 40000), ap(nameserver6, 53), unix.IPPROTO_UDP), on.cookies[bpf.CaptureListenerLISTENER_DNS_UDP]},
		{"tcp query", on, lookupCtx(ap(local4, 40000), ap(nameserver4, 53), unix.IPPROTO_TCP), on.cookies[bpf.CaptureListenerLISTENER_DNS_TCP]},
		{"tcp query v6", on, lookupCtx(ap(local6, 40000), ap(nameserver6, 53), unix.IPPROTO_TCP), on.cookies[bpf.CaptureListenerLISTENER_DNS_TCP]},
		{"udp to another port", on, lookupCtx(ap(local4, 40000), ap(nameserver4, 5353), unix.IPPROTO_UDP), 0},
		{"udp from a pod on another interface", on, lookupCtx(ap(pod4, 40000), ap(nameserver4, 53), unix.IPPROTO_UDP), 0},
		{"udp from outside", on, lookupCtx(ap(remote4, 40000), ap(pod4, 53), unix.IPPROTO_UDP), 0},
		{"capture off: udp", off, lookupCtx(ap(local4, 40000), ap(nameserver4, 53), unix.IPPROTO_UDP), 0},
		{"capture off: tcp is outbound", off, lookupCtx(ap(local4, 40000), ap(nameserver4, 53), unix.IPPROTO_TCP), off.cookies[bpf.CaptureListenerLISTENER_OUTBOUND]},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ret, cookie := tc.f.lookup(t, tc.ctx)
			if ret != skPass || cookie != tc.wantCookie {
				t.Fatalf("got verdict %d cookie %d, want pass with cookie %d", ret, cookie, tc.wantCookie)
			}
		})
	}
}
