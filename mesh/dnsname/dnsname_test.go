package dnsname

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/ambit-mesh/ambit/mesh/state"
)

func testStore(t *testing.T) *state.Store {
	t.Helper()
	ip := netip.MustParseAddr
	na := func(s string) state.NetworkAddress { return state.AddrOf(ip(s)) }
	svcs := []*state.Service{
		{Name: "reviews", Namespace: "demo", Hostname: "reviews.demo.svc.cluster.local",
			Addresses: []state.NetworkAddress{na("10.96.0.20"), na("fd00::20")}, Ports: []state.Port{{ServicePort: 9080, TargetPort: 9080}}},
		{Name: "v4only", Namespace: "demo", Hostname: "v4only.demo.svc.cluster.local", IPFamilies: state.IPv4Only,
			Addresses: []state.NetworkAddress{na("10.96.0.21")}, Ports: []state.Port{{ServicePort: 80, TargetPort: 80}}},
		{Name: "db", Namespace: "demo", Hostname: "db.demo.svc.cluster.local", Ports: []state.Port{{ServicePort: 5432, TargetPort: 5432}}},
		{Name: "private", Namespace: "other", Hostname: "private.other.svc.cluster.local", Visibility: state.VisibilityNamespace,
			Addresses: []state.NetworkAddress{na("10.96.0.30")}, Ports: []state.Port{{ServicePort: 80, TargetPort: 80}}},
		{Name: "api", Namespace: "egress", Hostname: "api.example.com",
			Addresses: []state.NetworkAddress{na("240.240.0.1")}, Ports: []state.Port{{ServicePort: 443, TargetPort: 443}}},
	}
	db := state.NamespacedHostname{Namespace: "demo", Hostname: "db.demo.svc.cluster.local"}
	wls := []*state.Workload{
		{UID: "db-0", Name: "db-0", Namespace: "demo", Addresses: []netip.Addr{ip("10.0.1.5")}, Services: []state.ServiceRef{{Service: db}}},
		{UID: "db-1", Name: "db-1", Namespace: "demo", Addresses: []netip.Addr{ip("10.0.1.6"), ip("fd00:1::6")}, Services: []state.ServiceRef{{Service: db}}},
		{UID: "db-2", Name: "db-2", Namespace: "demo", Addresses: []netip.Addr{ip("10.0.1.7")}, Status: state.Unhealthy,
			Services: []state.ServiceRef{{Service: db}}},
	}
	for _, s := range svcs {
		if err := s.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	for _, w := range wls {
		if err := w.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	s := state.NewStore()
	s.Apply(&state.Update{Services: svcs, Workloads: wls})
	return s
}

func TestResolve(t *testing.T) {
	s := testStore(t)
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range ss {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	tests := []struct {
		name string
		q    Query
		want Result
	}{
		{"fqdn A", Query{Name: "reviews.demo.svc.cluster.local.", Type: TypeA, Namespace: "demo"},
			Result{Kind: Answer, Host: "reviews.demo.svc.cluster.local", Addrs: addrs("10.96.0.20")}},
		{"fqdn AAAA", Query{Name: "reviews.demo.svc.cluster.local.", Type: TypeAAAA, Namespace: "demo"},
			Result{Kind: Answer, Host: "reviews.demo.svc.cluster.local", Addrs: addrs("fd00::20")}},
		{"case and no final dot", Query{Name: "Reviews.DEMO.svc.cluster.local", Type: TypeA, Namespace: "demo"},
			Result{Kind: Answer, Host: "reviews.demo.svc.cluster.local", Addrs: addrs("10.96.0.20")}},
		{"other type is NODATA", Query{Name: "reviews.demo.svc.cluster.local.", Type: TypeOther, Namespace: "demo"},
			Result{Kind: Answer, Host: "reviews.demo.svc.cluster.local"}},
		{"unknown client gets exact names", Query{Name: "reviews.demo.svc.cluster.local.", Type: TypeA},
			Result{Kind: Answer, Host: "reviews.demo.svc.cluster.local", Addrs: addrs("10.96.0.20")}},
		// What a resolver with ndots:5 and the search path of a pod in demo sends for "reviews.demo": first
		// with the first search domain (not a host: forwarded, upstream says NXDOMAIN), then the second.
		{"short svc.ns, first search domain", Query{Name: "reviews.demo.demo.svc.cluster.local.", Type: TypeA, Namespace: "demo"},
			Result{Kind: Forward}},
		{"short svc.ns, second search domain", Query{Name: "reviews.demo.svc.cluster.local.", Type: TypeA, Namespace: "demo"},
			Result{Kind: Answer, Host: "reviews.demo.svc.cluster.local", Addrs: addrs("10.96.0.20")}},
		// The full name has 4 dots (< ndots 5): the resolver tries it with the search domains first.
		{"fqdn with search domain appended", Query{Name: "reviews.demo.svc.cluster.local.demo.svc.cluster.local.", Type: TypeA, Namespace: "demo"},
			Result{Kind: Answer, Host: "reviews.demo.svc.cluster.local", CNAME: true, Addrs: addrs("10.96.0.20")}},
		{"fqdn with last search domain appended", Query{Name: "reviews.demo.svc.cluster.local.cluster.local.", Type: TypeA, Namespace: "demo"},
			Result{Kind: Answer, Host: "reviews.demo.svc.cluster.local", CNAME: true, Addrs: addrs("10.96.0.20")}},
		{"another namespace's search domain is not expanded", Query{Name: "reviews.demo.svc.cluster.local.other.svc.cluster.local.", Type: TypeA, Namespace: "demo"},
			Result{Kind: Forward}},
		{"no expansion for an unknown client", Query{Name: "reviews.demo.svc.cluster.local.demo.svc.cluster.local.", Type: TypeA},
			Result{Kind: Forward}},
		{"service entry host", Query{Name: "api.example.com.", Type: TypeA, Namespace: "demo"},
			Result{Kind: Answer, Host: "api.example.com", Addrs: addrs("240.240.0.1")}},
		{"service entry host with search domain", Query{Name: "api.example.com.demo.svc.cluster.local.", Type: TypeA, Namespace: "demo"},
			Result{Kind: Answer, Host: "api.example.com", CNAME: true, Addrs: addrs("240.240.0.1")}},
		{"service entry host AAAA has none", Query{Name: "api.example.com.", Type: TypeAAAA, Namespace: "demo"},
			Result{Kind: Answer, Host: "api.example.com"}},
		{"headless: healthy endpoints of the family", Query{Name: "db.demo.svc.cluster.local.", Type: TypeA, Namespace: "demo"},
			Result{Kind: Answer, Host: "db.demo.svc.cluster.local", Addrs: addrs("10.0.1.5", "10.0.1.6")}},
		{"headless AAAA", Query{Name: "db.demo.svc.cluster.local.", Type: TypeAAAA, Namespace: "demo"},
			Result{Kind: Answer, Host: "db.demo.svc.cluster.local", Addrs: addrs("fd00:1::6")}},
		{"IPv4-only service gets no AAAA", Query{Name: "v4only.demo.svc.cluster.local.", Type: TypeAAAA, Namespace: "demo"},
			Result{Kind: Answer, Host: "v4only.demo.svc.cluster.local"}},
		{"namespace-private service from its namespace", Query{Name: "private.other.svc.cluster.local.", Type: TypeA, Namespace: "other"},
			Result{Kind: Answer, Host: "private.other.svc.cluster.local", Addrs: addrs("10.96.0.30")}},
		{"namespace-private service from elsewhere is forwarded", Query{Name: "private.other.svc.cluster.local.", Type: TypeA, Namespace: "demo"},
			Result{Kind: Forward}},
		{"unknown cluster name is forwarded", Query{Name: "kube-dns.kube-system.svc.cluster.local.", Type: TypeA, Namespace: "demo"},
			Result{Kind: Forward}},
		{"unknown external name is forwarded", Query{Name: "example.org.", Type: TypeA, Namespace: "demo"}, Result{Kind: Forward}},
		{"root is forwarded", Query{Name: ".", Type: TypeA, Namespace: "demo"}, Result{Kind: Forward}},
		{"wildcard is forwarded", Query{Name: "*.demo.svc.cluster.local.", Type: TypeA, Namespace: "demo"}, Result{Kind: Forward}},
		{"search domain alone is forwarded", Query{Name: "demo.svc.cluster.local.", Type: TypeA, Namespace: "demo"}, Result{Kind: Forward}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Resolve(s, "cluster.local", tc.q)
			if got.Kind != tc.want.Kind || got.Host != tc.want.Host || got.CNAME != tc.want.CNAME || !slices.Equal(got.Addrs, tc.want.Addrs) {
				t.Errorf("Resolve(%+v) = %+v, want %+v", tc.q, got, tc.want)
			}
		})
	}
}

func TestSearchDomains(t *testing.T) {
	got := SearchDomains("demo", "cluster.local.")
	want := []string{"demo.svc.cluster.local", "svc.cluster.local", "cluster.local"}
	if !slices.Equal(got, want) {
		t.Errorf("SearchDomains = %v, want %v", got, want)
	}
	if got := SearchDomains("", "cluster.local"); !slices.Equal(got, []string{"cluster.local"}) {
		t.Errorf("SearchDomains without namespace = %v", got)
	}
}
