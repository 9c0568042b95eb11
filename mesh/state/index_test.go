package state

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// indexGen generates workloads and services over small pools of names and addresses, so that batches
// hit every case: updates, deletions, addresses claimed by several workloads (pods and others, HBONE and
// not, host network), VIP moves, hostnames shared across namespaces, endpoint sets emptied and refilled.
type indexGen struct {
	r *rand.Rand
}

var (
	genNamespaces = []string{"a", "b", "c"}
	genHosts      = []string{"web.a.svc", "db.b.svc", "shared.example.com", "api.example.com", "x"}
	genNetworks   = []string{"", "", "n2"}
)

func (g *indexGen) addr(pool int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 0, 0, byte(g.r.IntN(pool))})
}

func (g *indexGen) serviceKey() NamespacedHostname {
	return NamespacedHostname{Namespace: genNamespaces[g.r.IntN(len(genNamespaces))], Hostname: genHosts[g.r.IntN(len(genHosts))]}
}

func (g *indexGen) uid(pool int) string {
	i := g.r.IntN(pool)
	if i%3 == 0 {
		return fmt.Sprintf("Kubernetes//Pod/a/p%d", i)
	}
	return fmt.Sprintf("Kubernetes/networking.istio.io/WorkloadEntry/a/e%d", i)
}

func (g *indexGen) workload(t testing.TB, uid string, addrPool int) *Workload {
	w := &Workload{UID: uid, Name: uid, Namespace: genNamespaces[g.r.IntN(len(genNamespaces))],
		Network: genNetworks[g.r.IntN(len(genNetworks))], Node: fmt.Sprintf("node%d", g.r.IntN(3)),
		Protocol: TunnelProtocol(g.r.IntN(2)), CanonicalRevision: fmt.Sprint(g.r.IntN(1000))}
	if g.r.IntN(8) == 0 {
		w.NetworkMode = NetworkHost
	}
	for range g.r.IntN(3) {
		w.Addresses = append(w.Addresses, g.addr(addrPool))
	}
	if len(w.Addresses) == 0 {
		w.Hostname = "vm.example.com"
	}
	for range g.r.IntN(3) {
		k := g.serviceKey()
		if !slices.ContainsFunc(w.Services, func(r ServiceRef) bool { return r.Service == k }) {
			w.Services = append(w.Services, ServiceRef{Service: k, Ports: []PortMapping{{ServicePort: 80, TargetPort: 8080}}})
		}
	}
	if err := w.Validate(); err != nil {
		t.Fatal(err)
	}
	return w
}

func (g *indexGen) service(t testing.TB, k NamespacedHostname) *Service {
	s := &Service{Name: k.Hostname, Namespace: k.Namespace, Hostname: k.Hostname, Canonical: g.r.IntN(2) == 0,
		Visibility: Visibility(g.r.IntN(2))}
	for range g.r.IntN(3) {
		s.Addresses = append(s.Addresses, NetworkAddress{Network: genNetworks[g.r.IntN(len(genNetworks))],
			Addr: netip.AddrFrom4([4]byte{10, 96, 0, byte(g.r.IntN(8))})})
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	return s
}

// batch is a random update: upserts and removals of workloads and services.
func (g *indexGen) batch(t testing.TB, n, uidPool, addrPool int) *Update {
	u := &Update{}
	for range n {
		switch g.r.IntN(10) {
		case 0, 1:
			u.RemoveWorkloads = append(u.RemoveWorkloads, g.uid(uidPool))
		case 2:
			u.Services = append(u.Services, g.service(t, g.serviceKey()))
		case 3:
			u.RemoveServices = append(u.RemoveServices, g.serviceKey())
		default:
			u.Workloads = append(u.Workloads, g.workload(t, g.uid(uidPool), addrPool))
		}
	}
	return u
}

// TestIndexMatchesReference applies the same random batches to the compact index and to the index as it
// was before (refindex_test.go) and checks that every lookup gives the same answer after each batch.
func TestIndexMatchesReference(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			g := &indexGen{r: rand.New(rand.NewPCG(seed, 15))}
			s, ref := NewStore(), newRefIndex()
			// The first batch is large enough for apply to size the tables up front.
			first := &Update{}
			for i := range 1500 {
				first.Workloads = append(first.Workloads, g.workload(t, fmt.Sprintf("Kubernetes//Pod/a/big%d", i), 250))
			}
			if seed%2 == 1 {
				// A UID twice in the first batch: the parallel bulk fill backs out, the later copy wins.
				for i := range 3 {
					first.Workloads = append(first.Workloads, g.workload(t, fmt.Sprintf("Kubernetes//Pod/a/big%d", 7*i), 250))
				}
			}
			steps := []*Update{first}
			for range 60 {
				steps = append(steps, g.batch(t, 1+g.r.IntN(20), 40, 12))
			}
			for i, u := range steps {
				s.Apply(u)
				ref.apply(u)
				compareIndex(t, i, s, ref)
			}
			// Then remove everything, so that emptied sets and addresses are checked too.
			end := &Update{}
			for uid := range ref.workloads {
				end.RemoveWorkloads = append(end.RemoveWorkloads, uid)
			}
			for k := range ref.services {
				end.RemoveServices = append(end.RemoveServices, k)
			}
			s.Apply(end)
			ref.apply(end)
			compareIndex(t, len(steps), s, ref)
			if len(s.idx.byAddr)+len(s.idx.sharedAddr)+len(s.idx.endpoints)+len(s.idx.workloads) != 0 {
				t.Fatalf("empty store keeps %d addresses, %d shared, %d endpoint sets", len(s.idx.byAddr),
					len(s.idx.sharedAddr), len(s.idx.endpoints))
			}
		})
	}
}

func compareIndex(t *testing.T, step int, s *Store, ref *refIndex) {
	t.Helper()
	if len(s.idx.workloads) != len(ref.workloads) {
		t.Fatalf("step %d: %d workloads, reference %d", step, len(s.idx.workloads), len(ref.workloads))
	}
	for uid, w := range ref.workloads {
		if s.Workload(uid) != w {
			t.Fatalf("step %d: Workload(%s) differs", step, uid)
		}
	}
	for _, nw := range genNetworks {
		for i := range 256 {
			k := NetworkAddress{Network: nw, Addr: netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})}
			if got, want := s.WorkloadByAddr(k), refWorkloadByAddr(ref, k); got != want {
				t.Fatalf("step %d: WorkloadByAddr(%s) = %v, reference %v", step, k, got, want)
			}
			vip := NetworkAddress{Network: nw, Addr: netip.AddrFrom4([4]byte{10, 96, 0, byte(i % 8)})}
			for _, ns := range genNamespaces {
				if got, want := s.ServiceByVIP(vip, ns), pickService(ref.byVIP[vip], ns); got != want {
					t.Fatalf("step %d: ServiceByVIP(%s, %s) = %v, reference %v", step, vip, ns, got, want)
				}
			}
		}
	}
	for _, ns := range genNamespaces {
		for _, h := range genHosts {
			if got, want := s.ServiceByHostname(h, ns), pickService(ref.byHost[h], ns); got != want {
				t.Fatalf("step %d: ServiceByHostname(%s, %s) = %v, reference %v", step, h, ns, got, want)
			}
			k := NamespacedHostname{Namespace: ns, Hostname: h}
			var want []*Workload
			if es := ref.endpoints[k]; es != nil {
				want = es.list
			}
			if got := s.Endpoints(k); !slices.Equal(got, want) {
				t.Fatalf("step %d: Endpoints(%s) = %d workloads, reference %d", step, k, len(got), len(want))
			}
			if s.Service(k) != ref.services[k] {
				t.Fatalf("step %d: Service(%s) differs", step, k)
			}
		}
	}
	if len(s.idx.endpoints) != len(ref.endpoints) {
		t.Fatalf("step %d: %d endpoint sets, reference %d", step, len(s.idx.endpoints), len(ref.endpoints))
	}
	for n := range 3 {
		node := fmt.Sprintf("node%d", n)
		var want []*Workload
		for _, w := range ref.byNode[node] {
			want = append(want, w)
		}
		slices.SortFunc(want, func(a, b *Workload) int { return strings.Compare(a.UID, b.UID) })
		if got := s.WorkloadsOnNode(node); !slices.Equal(got, want) {
			t.Fatalf("step %d: WorkloadsOnNode(%s) = %d workloads, reference %d", step, node, len(got), len(want))
		}
	}
}
