package kubelet

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
)

func TestResolvConf(t *testing.T) {
	for _, c := range []struct {
		ns     string
		server netip.Addr
		want   string
	}{
		{"default", netip.Addr{}, "nameserver 127.0.0.53\noptions ndots:1\n"},
		{"gateway-conformance-mesh", netip.MustParseAddr("10.96.0.10"),
			"nameserver 10.96.0.10\nsearch gateway-conformance-mesh.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 use-vc\n"},
	} {
		if got := resolvConf(c.ns, c.server); got != c.want {
			t.Errorf("resolvConf(%q, %v) = %q, want %q", c.ns, c.server, got, c.want)
		}
	}
}

func TestServiceOf(t *testing.T) {
	for _, c := range []struct {
		qname, ns, name string
		ok              bool
	}{
		{"echo.gateway-conformance-mesh.svc.cluster.local.", "gateway-conformance-mesh", "echo", true},
		{"Echo-V1.NS.SVC.Cluster.Local.", "ns", "echo-v1", true},
		{"echo.ns.svc.cluster.local", "ns", "echo", true},
		{"echo.svc.cluster.local.", "", "", false},
		{"pod.echo.ns.svc.cluster.local.", "", "", false},
		{"echo.ns.svc.example.org.", "", "", false},
		{"echo.ns.pod.cluster.local.", "", "", false},
		{"example.org.", "", "", false},
		{".ns.svc.cluster.local.", "", "", false},
		{".", "", "", false},
	} {
		ns, name, ok := serviceOf(c.qname)
		if ns != c.ns || name != c.name || ok != c.ok {
			t.Errorf("serviceOf(%q) = %q, %q, %v; want %q, %q, %v", c.qname, ns, name, ok, c.ns, c.name, c.ok)
		}
	}
}

func TestAnswer(t *testing.T) {
	dual := &corev1.Service{Spec: corev1.ServiceSpec{ClusterIP: "10.96.1.2", ClusterIPs: []string{"10.96.1.2", "fd00::2"}}}
	old := &corev1.Service{Spec: corev1.ServiceSpec{ClusterIP: "10.96.1.3"}}
	headless := &corev1.Service{Spec: corev1.ServiceSpec{ClusterIP: "None", ClusterIPs: []string{"None"}}}
	q := func(t uint16) dns.Question {
		return dns.Question{Name: "echo.ns.svc.cluster.local.", Qtype: t, Qclass: dns.ClassINET}
	}
	for _, c := range []struct {
		name  string
		q     dns.Question
		svc   *corev1.Service
		rcode int
		want  []string
	}{
		{"no such service", q(dns.TypeA), nil, dns.RcodeNameError, nil},
		{"A of dual stack", q(dns.TypeA), dual, dns.RcodeSuccess, []string{"echo.ns.svc.cluster.local.\t5\tIN\tA\t10.96.1.2"}},
		{"AAAA of dual stack", q(dns.TypeAAAA), dual, dns.RcodeSuccess, []string{"echo.ns.svc.cluster.local.\t5\tIN\tAAAA\tfd00::2"}},
		{"AAAA of IPv4 only: no data", q(dns.TypeAAAA), old, dns.RcodeSuccess, nil},
		{"A from clusterIP alone", q(dns.TypeA), old, dns.RcodeSuccess, []string{"echo.ns.svc.cluster.local.\t5\tIN\tA\t10.96.1.3"}},
		{"headless: no records", q(dns.TypeA), headless, dns.RcodeSuccess, nil},
		{"other type: no data", q(dns.TypeMX), dual, dns.RcodeSuccess, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			rcode, rrs := answer(c.q, c.svc)
			var got []string
			for _, rr := range rrs {
				got = append(got, rr.String())
			}
			if rcode != c.rcode || len(got) != len(c.want) {
				t.Fatalf("answer = %d %q, want %d %q", rcode, got, c.rcode, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Errorf("record %d = %q, want %q", i, got[i], c.want[i])
				}
			}
		})
	}
}

func TestHostAnswer(t *testing.T) {
	hosts := map[string]netip.Addr{"api.example.test.": netip.MustParseAddr("10.10.1.5"), "v6.example.test.": netip.MustParseAddr("fd00::5")}
	for _, c := range []struct {
		qname string
		qtype uint16
		rcode int
		want  []string
	}{
		{"api.example.test.", dns.TypeA, dns.RcodeSuccess, []string{"api.example.test.\t5\tIN\tA\t10.10.1.5"}},
		{"API.Example.Test.", dns.TypeA, dns.RcodeSuccess, []string{"API.Example.Test.\t5\tIN\tA\t10.10.1.5"}},
		{"api.example.test.", dns.TypeAAAA, dns.RcodeSuccess, nil},
		{"v6.example.test.", dns.TypeAAAA, dns.RcodeSuccess, []string{"v6.example.test.\t5\tIN\tAAAA\tfd00::5"}},
		{"other.example.test.", dns.TypeA, dns.RcodeNameError, nil},
		{"api.example.test.istio-egress.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, nil},
	} {
		rcode, rrs := hostAnswer(dns.Question{Name: c.qname, Qtype: c.qtype, Qclass: dns.ClassINET}, hosts)
		var got []string
		for _, rr := range rrs {
			got = append(got, rr.String())
		}
		if rcode != c.rcode || strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("hostAnswer(%s %s) = %d %q, want %d %q", c.qname, dns.TypeToString[c.qtype], rcode, got, c.rcode, c.want)
		}
	}
}
