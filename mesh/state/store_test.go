package state_test

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ambit-mesh/ambit/mesh/state"
)

func wl(t testing.TB, uid, ns, ip string, svcs ...string) *state.Workload {
	t.Helper()
	w := &state.Workload{UID: uid, Name: uid, Namespace: ns, Addresses: []netip.Addr{netip.MustParseAddr(ip)}, Node: "n1"}
	for _, s := range svcs {
		w.Services = append(w.Services, state.ServiceRef{Service: state.NamespacedHostname{Namespace: ns, Hostname: s}, Ports: []state.PortMapping{{ServicePort: 80, TargetPort: 8080}}})
	}
	if err := w.Validate(); err != nil {
		t.Fatal(err)
	}
	return w
}

func svc(t testing.TB, ns, host, vip string) *state.Service {
	t.Helper()
	s := &state.Service{Name: host, Namespace: ns, Hostname: host, Ports: []state.Port{{ServicePort: 80}}}
	if vip != "" {
		s.Addresses = []state.NetworkAddress{{Addr: netip.MustParseAddr(vip)}}
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStoreIndexes(t *testing.T) {
	s := state.NewStore()
	changed := s.Changed()
	a := wl(t, "a", "ns", "10.0.0.1", "svc.ns")
	// Endpoints are staged before their service arrives.
	s.Apply(&state.Update{Workloads: []*state.Workload{a}})
	select {
	case <-changed:
	default:
		t.Fatal("Changed not signalled")
	}
	key := state.NamespacedHostname{Namespace: "ns", Hostname: "svc.ns"}
	if eps := s.Endpoints(key); len(eps) != 1 || eps[0] != a {
		t.Fatalf("staged endpoints = %v", eps)
	}
	s.Apply(&state.Update{Services: []*state.Service{svc(t, "ns", "svc.ns", "10.96.0.1")}})
	if got := s.ServiceByVIP(state.AddrOf(netip.MustParseAddr("10.96.0.1")), "other"); got == nil || got.Key() != key {
		t.Fatalf("ServiceByVIP = %v", got)
	}
	if got := s.WorkloadByAddr(state.AddrOf(netip.MustParseAddr("10.0.0.1"))); got != a {
		t.Fatalf("WorkloadByAddr = %v", got)
	}
	if got := s.Workload("a"); got != a || got.Identity() != "spiffe://cluster.local/ns/ns/sa/default" {
		t.Fatalf("Workload = %v", got)
	}
	if got := s.WorkloadsOnNode("n1"); len(got) != 1 {
		t.Fatalf("WorkloadsOnNode = %v", got)
	}

	// Replacing a workload moves its address and endpoint membership.
	a2 := wl(t, "a", "ns", "10.0.0.2")
	old := s.Endpoints(key)
	s.Apply(&state.Update{Workloads: []*state.Workload{a2}})
	if s.WorkloadByAddr(state.AddrOf(netip.MustParseAddr("10.0.0.1"))) != nil {
		t.Error("old address still indexed")
	}
	if eps := s.Endpoints(key); len(eps) != 0 {
		t.Errorf("endpoints after leaving the service = %v", eps)
	}
	if len(old) != 1 || old[0] != a {
		t.Error("a reader's endpoint slice changed under it")
	}
	s.Apply(&state.Update{RemoveWorkloads: []string{"a"}, RemoveServices: []state.NamespacedHostname{key}})
	if w, sv, p := s.Counts(); w != 0 || sv != 0 || p != 0 {
		t.Errorf("counts after removal = %d %d %d", w, sv, p)
	}
}

func TestStoreVIPPreference(t *testing.T) {
	s := state.NewStore()
	other := svc(t, "other", "x.example.com", "240.0.0.1")
	mine := svc(t, "mine", "x.example.com", "240.0.0.1")
	hidden := svc(t, "hidden", "y.example.com", "240.0.0.2")
	hidden.Visibility = state.VisibilityNamespace
	canon := svc(t, "canon", "z.example.com", "240.0.0.3")
	canon.Canonical = true
	plain := svc(t, "plain", "z2.example.com", "240.0.0.3")
	s.Apply(&state.Update{Services: []*state.Service{other, mine, hidden, plain, canon}})
	vip := func(ip string) state.NetworkAddress { return state.AddrOf(netip.MustParseAddr(ip)) }
	if got := s.ServiceByVIP(vip("240.0.0.1"), "mine"); got != mine {
		t.Errorf("same-namespace service not preferred: %v", got.Namespace)
	}
	if got := s.ServiceByVIP(vip("240.0.0.2"), "mine"); got != nil {
		t.Errorf("namespace-visible service leaked: %v", got)
	}
	if got := s.ServiceByVIP(vip("240.0.0.2"), "hidden"); got != hidden {
		t.Errorf("namespace-visible service hidden from its own namespace")
	}
	if got := s.ServiceByVIP(vip("240.0.0.3"), "elsewhere"); got != canon {
		t.Errorf("canonical service not preferred: %v", got)
	}
}

func TestStoreReplaceAndPolicies(t *testing.T) {
	s := state.NewStore()
	w := wl(t, "a", "ns", "10.0.0.1")
	w.AuthorizationPolicies = []string{"ns/sel", "ns/missing"}
	pols := []*state.Authorization{
		{Name: "g", Namespace: "istio-system", Scope: state.ScopeGlobal},
		{Name: "n", Namespace: "ns", Scope: state.ScopeNamespace},
		{Name: "n2", Namespace: "other", Scope: state.ScopeNamespace},
		{Name: "sel", Namespace: "ns", Scope: state.ScopeWorkloadSelector},
		{Name: "unlisted", Namespace: "ns", Scope: state.ScopeWorkloadSelector},
	}
	s.Replace(&state.Snapshot{Workloads: []*state.Workload{w}, Policies: pols})
	got := map[string]bool{}
	for _, p := range s.PoliciesFor(w) {
		got[p.Key()] = true
	}
	if len(got) != 3 || !got["istio-system/g"] || !got["ns/n"] || !got["ns/sel"] {
		t.Errorf("PoliciesFor = %v", got)
	}
	gen := s.Generation()
	s.Apply(&state.Update{RemovePolicies: []string{"istio-system/g", "ns/n"}})
	if len(s.PoliciesFor(w)) != 1 || s.Generation() <= gen {
		t.Errorf("after removal: %v", s.PoliciesFor(w))
	}
	s.Replace(&state.Snapshot{})
	if s.Workload("a") != nil || s.Policy("ns/sel") != nil {
		t.Error("Replace kept old objects")
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name string
		w    state.Workload
		ok   bool
	}{
		{"no uid", state.Workload{Name: "a", Namespace: "b", Hostname: "h"}, false},
		{"no namespace", state.Workload{UID: "u", Name: "a", Hostname: "h"}, false},
		{"no address (reached through a network gateway)", state.Workload{UID: "u", Name: "a", Namespace: "b"}, true},
		{"zero address", state.Workload{UID: "u", Name: "a", Namespace: "b", Addresses: []netip.Addr{{}}}, false},
		{"gateway without destination", state.Workload{UID: "u", Name: "a", Namespace: "b", Hostname: "h", Waypoint: &state.GatewayAddress{}}, false},
		{"hostname only", state.Workload{UID: "u", Name: "a", Namespace: "b", Hostname: "h"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.w.Validate()
			if (err == nil) != tc.ok {
				t.Errorf("Validate() = %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && (tc.w.TrustDomain != "cluster.local" || tc.w.ServiceAccount != "default" || tc.w.Capacity != 1 || tc.w.ClusterID != "Kubernetes") {
				t.Errorf("defaults not applied: %+v", tc.w)
			}
		})
	}
}

// TestStoreConcurrentReaders applies batches while readers look up; run with -race.
func TestStoreConcurrentReaders(t *testing.T) {
	s := state.NewStore()
	s.Apply(&state.Update{Services: []*state.Service{svc(t, "ns", "svc.ns", "10.96.0.1")}})
	key := state.NamespacedHostname{Namespace: "ns", Hostname: "svc.ns"}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for !stop.Load() {
				for _, w := range s.Endpoints(key) {
					if w.Identity() == "" {
						t.Error("empty identity")
					}
				}
				s.WorkloadByAddr(state.AddrOf(netip.MustParseAddr("10.0.0.1")))
			}
		})
	}
	for i := range 500 {
		ip := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		s.Apply(&state.Update{Workloads: []*state.Workload{wl(t, "w", "ns", ip.String(), "svc.ns")}})
	}
	stop.Store(true)
	wg.Wait()
	if len(s.Endpoints(key)) != 1 {
		t.Errorf("endpoints = %d", len(s.Endpoints(key)))
	}
}

// TestWorkloadsOnNodeWatch: a node is indexed from the first question about it (a scan), and that index
// then follows every update: arrivals, removals, a workload moving between nodes, a bulk first batch.
func TestWorkloadsOnNodeWatch(t *testing.T) {
	s := state.NewStore()
	ip := netip.MustParseAddr("10.0.0.0")
	mk := func(name, node string) *state.Workload {
		ip = ip.Next()
		return &state.Workload{UID: "Kubernetes//Pod/demo/" + name, Name: name, Namespace: "demo", Node: node,
			Addresses: []netip.Addr{ip}}
	}
	brute := func(node string) []string {
		var out []string
		for _, w := range s.Workloads() {
			if w.Node == node && node != "" {
				out = append(out, w.UID)
			}
		}
		slices.Sort(out)
		return out
	}
	check := func(step string) {
		t.Helper()
		for _, node := range []string{"n1", "n2", "n3", ""} {
			var got []string
			for _, w := range s.WorkloadsOnNode(node) {
				got = append(got, w.UID)
			}
			if want := brute(node); !slices.Equal(got, want) {
				t.Errorf("%s: WorkloadsOnNode(%q) = %v, want %v", step, node, got, want)
			}
		}
	}
	s.Apply(&state.Update{Workloads: []*state.Workload{mk("a", "n1"), mk("b", "n1"), mk("c", "n2"), mk("d", "")}})
	if got := len(s.WorkloadsOnNode("n1")); got != 2 { // n1 watched from here, n2 and n3 not yet
		t.Fatalf("n1: %d workloads, want 2", got)
	}
	s.Apply(&state.Update{Workloads: []*state.Workload{mk("b", "n2"), mk("e", "n1"), mk("f", "n3")},
		RemoveWorkloads: []string{"Kubernetes//Pod/demo/a"}})
	check("after moves") // n2, n3 and "" are scanned here, n1 followed the update
	s.Apply(&state.Update{RemoveWorkloads: []string{"Kubernetes//Pod/demo/e", "Kubernetes//Pod/demo/f"}})
	check("after removals") // n1 and n3 empty but still watched
	s.Apply(&state.Update{Workloads: []*state.Workload{mk("g", "n3"), mk("h", "")}})
	check("after re-adding")

	// A node watched before the first response, which is large enough for the bulk fill.
	s = state.NewStore()
	if got := s.WorkloadsOnNode("n1"); len(got) != 0 {
		t.Fatalf("empty store: %d workloads on n1", len(got))
	}
	var batch []*state.Workload
	for i := range 3000 {
		batch = append(batch, mk(fmt.Sprintf("p%d", i), fmt.Sprintf("n%d", 1+i%3)))
	}
	s.Apply(&state.Update{Workloads: batch})
	if got := len(s.WorkloadsOnNode("n1")); got != 1000 {
		t.Errorf("bulk first batch: %d workloads on n1, want 1000", got)
	}
	check("bulk first batch")
}
