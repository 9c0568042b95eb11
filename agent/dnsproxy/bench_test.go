package dnsproxy

import (
	"context"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// BenchmarkHandle measures the query path for an answer from the mesh: a full name and a search-domain
// form (CNAME), and a FORMERR.
func BenchmarkHandle(b *testing.B) {
	srv, err := New(Config{Lookup: meshStore(b), Source: func(netip.Addr) (Source, bool) { return Source{Namespace: "demo"}, true }})
	if err != nil {
		b.Fatal(err)
	}
	src := netip.MustParseAddrPort("10.0.0.5:40000")
	pack := func(name string) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		q, err := m.Pack()
		if err != nil {
			b.Fatal(err)
		}
		return q
	}
	for _, bc := range []struct {
		name string
		q    []byte
	}{
		{"fqdn", pack("reviews.demo.svc.cluster.local.")},
		{"search-form", pack("reviews.demo.svc.cluster.local.demo.svc.cluster.local.")},
		{"formerr", []byte{0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 7, 'e', 'x', 'a'}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if srv.Handle(context.Background(), bc.q, src, UDP) == nil {
					b.Fatal("no reply")
				}
			}
		})
	}
}
