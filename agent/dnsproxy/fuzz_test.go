package dnsproxy

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// FuzzHandle feeds arbitrary bytes to the query path as both transports (no upstream: a forward fails
// locally with SERVFAIL). The proxy must never panic, and a reply, when there is one, must be a DNS
// response with the query's ID that fits the UDP bound.
func FuzzHandle(f *testing.F) {
	for _, name := range []string{"reviews.demo.svc.cluster.local.", "reviews.demo.svc.cluster.local.demo.svc.cluster.local.", "example.org."} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.SetEdns0(4096, true)
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 7, 'e', 'x', 'a'})
	f.Add([]byte{0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	srv, err := New(Config{Lookup: meshStore(f), Source: func(netip.Addr) (Source, bool) { return Source{Namespace: "demo"}, true }})
	if err != nil {
		f.Fatal(err)
	}
	src := netip.MustParseAddrPort("10.0.0.5:40000")
	f.Fuzz(func(t *testing.T, q []byte) {
		for _, proto := range []Protocol{UDP, TCP} {
			reply := srv.Handle(context.Background(), q, src, proto)
			if reply == nil {
				continue
			}
			if len(q) < 12 || len(q) > MaxQuery {
				t.Fatalf("%s: a reply to %d bytes", proto, len(q))
			}
			if proto == UDP && len(reply) > maxUDPReply {
				t.Fatalf("UDP reply of %d bytes", len(reply))
			}
			r := new(dns.Msg)
			if err := r.Unpack(reply); err != nil {
				t.Fatalf("%s: reply does not parse: %v", proto, err)
			}
			if !r.Response || r.Id != binary.BigEndian.Uint16(q) {
				t.Fatalf("%s: reply %v to query id %d", proto, r, binary.BigEndian.Uint16(q))
			}
		}
	})
}
