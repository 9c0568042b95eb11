package xds_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/config/xds"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/test/xdstest"
	"github.com/ambit-mesh/ambit/xdsclient"
	wapi "github.com/ambit-mesh/ambit/xdsclient/workloadapi"
	"github.com/ambit-mesh/ambit/xdsclient/workloadapi/security"
)

var testNode = xdsclient.NodeInfo{IP: "10.0.0.1", PodName: "ztunnel-abc", PodNamespace: "istio-system", NodeName: "node1"}

// runSource starts a Source until test cleanup.
func runSource(t *testing.T, opts xds.SourceOptions) *xds.Source {
	t.Helper()
	opts.Node = testNode
	opts.InitialBackoff, opts.MaxBackoff = 5*time.Millisecond, 50*time.Millisecond
	s, err := xds.NewSource(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v", err)
		}
	})
	return s
}

func waitReady(t *testing.T, s *xds.Source) {
	t.Helper()
	select {
	case <-s.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("source not ready within 10 s")
	}
}

func TestSourceReadinessStateAndOutage(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := xdstest.Start(t, xdstest.Options{TypeURLs: []string{xdstest.AddressType, xdstest.AuthorizationType},
		Hold: []string{xdstest.AuthorizationType}})
	bad := xdstest.Pod("demo", "bad", "10.0.0.9")
	bad.GetWorkload().TunnelProtocol = wapi.TunnelProtocol_LEGACY_ISTIO_MTLS
	srv.Set(xdstest.AddressType, map[string]proto.Message{
		podA:                          xdstest.Pod("demo", "a", "10.0.0.1", xdstest.InService("demo", "echo")),
		svcEcho:                       xdstest.Service("demo", "echo", "10.96.0.1"),
		xdstest.PodUID("demo", "bad"): bad,
	})
	st := state.NewStore()
	s := runSource(t, xds.SourceOptions{Address: srv.Addr, Plaintext: true, Store: st})

	// Addresses arrive, but readiness also waits for the first Authorization response.
	testutil.WaitFor(t, 10*time.Second, "workloads", func() bool { return st.Workload(podA) != nil })
	select {
	case <-s.Ready():
		t.Fatal("ready before the Authorization snapshot")
	case <-time.After(100 * time.Millisecond):
	}
	srv.Set(xdstest.AuthorizationType, map[string]proto.Message{
		"istio-system/istio_converted_static_strict": xdstest.StaticStrict("istio-system")})
	srv.Release(xdstest.AuthorizationType)
	waitReady(t, s)
	if st.Policy("istio-system/istio_converted_static_strict") == nil {
		t.Error("policy missing at readiness")
	}
	// The malformed workload was NACKed alone.
	nack, _ := srv.WaitRequest(0, func(r *discovery.DeltaDiscoveryRequest) bool { return r.GetErrorDetail() != nil })
	if !strings.HasPrefix(nack.GetErrorDetail().GetMessage(), xdstest.PodUID("demo", "bad")+": ") {
		t.Errorf("NACK detail = %q", nack.GetErrorDetail().GetMessage())
	}
	if w, sv, _ := st.Counts(); w != 1 || sv != 1 {
		t.Errorf("counts = %d, %d", w, sv)
	}
	if got := s.Stats()[xds.AddressTypeURL]; got.NACKs != 1 {
		t.Errorf("stats = %+v", got)
	}

	// istiod goes away: the last good state keeps serving.
	srv.Stop()
	gen := st.Generation()
	srv.Delete(xdstest.AddressType, podA)
	srv.Set(xdstest.AddressType, map[string]proto.Message{podB: xdstest.Pod("demo", "b", "10.0.0.2")})
	time.Sleep(200 * time.Millisecond)
	if st.Generation() != gen || st.Workload(podA) == nil {
		t.Fatal("state changed while istiod was unreachable")
	}
	// It comes back: the client resumes from its versions and catches up.
	srv.Restart()
	testutil.WaitFor(t, 10*time.Second, "catch-up after reconnect", func() bool {
		return st.Workload(podA) == nil && st.Workload(podB) != nil
	})
	if st.Service(keyEcho) == nil {
		t.Error("unchanged service lost over the reconnect")
	}
}

func TestSourceOnDemandLookup(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := xdstest.Start(t, xdstest.Options{TypeURLs: []string{xdstest.AddressType, xdstest.AuthorizationType}})
	srv.Set(xdstest.AddressType, map[string]proto.Message{
		podA: xdstest.Pod("demo", "a", "10.0.0.1", func(w *wapi.Workload) { w.Waypoint = xdstest.WaypointHost("demo", "waypoint") }),
		podB: xdstest.Pod("demo", "b", "10.0.0.2"),
	})
	srv.Set(xdstest.AuthorizationType, map[string]proto.Message{"demo/p": xdstest.Policy("demo", "p", security.Scope_NAMESPACE, 0)})
	st := state.NewStore()
	s := runSource(t, xds.SourceOptions{Address: srv.Addr, Plaintext: true, Store: st, OnDemand: true})
	// Readiness needs only the wildcard Authorization type.
	waitReady(t, s)
	if w, _, _ := st.Counts(); w != 0 {
		t.Fatalf("on-demand source received %d workloads unasked", w)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	found, err := s.Lookup(ctx, podA)
	if err != nil || !found {
		t.Fatalf("Lookup = %v, %v", found, err)
	}
	// In on-demand mode a waypoint service that was not asked for does not block the workload.
	if w := st.Workload(podA); w == nil || w.Waypoint == nil {
		t.Errorf("looked-up workload = %v", w)
	}
	if st.Workload(podB) != nil {
		t.Error("an unrequested workload arrived")
	}
}

func TestSourceWildcardLookupRefused(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := xdstest.Start(t, xdstest.Options{TypeURLs: []string{xdstest.AddressType, xdstest.AuthorizationType}})
	s := runSource(t, xds.SourceOptions{Address: srv.Addr, Plaintext: true, Store: state.NewStore()})
	if _, err := s.Lookup(context.Background(), podA); !errors.Is(err, xdsclient.ErrNotOnDemand) {
		t.Errorf("Lookup on a wildcard source = %v", err)
	}
}

func TestLocalIdentities(t *testing.T) {
	w := func(uid, ns, sa, node string, p state.TunnelProtocol, native bool) *state.Workload {
		return &state.Workload{UID: uid, Namespace: ns, ServiceAccount: sa, Node: node, Protocol: p, NativeTunnel: native}
	}
	cases := []struct {
		name string
		ws   []*state.Workload
		node string
		want []string
		bad  int
	}{
		{"hbone on node", []*state.Workload{w("a", "demo", "echo", "n1", state.TunnelHBONE, false)}, "n1",
			[]string{"spiffe://cluster.local/ns/demo/sa/echo"}, 0},
		{"other node", []*state.Workload{w("a", "demo", "echo", "n2", state.TunnelHBONE, false)}, "n1", nil, 0},
		{"plain tcp", []*state.Workload{w("a", "demo", "echo", "n1", state.TunnelNone, false)}, "n1", nil, 0},
		{"native tunnel", []*state.Workload{w("a", "demo", "wp", "n1", state.TunnelNone, true)}, "n1",
			[]string{"spiffe://cluster.local/ns/demo/sa/wp"}, 0},
		{"one identity for many pods, sorted", []*state.Workload{
			w("a", "demo", "z", "n1", state.TunnelHBONE, false), w("b", "demo", "echo", "n1", state.TunnelHBONE, false),
			w("c", "demo", "echo", "n1", state.TunnelHBONE, false)}, "n1",
			[]string{"spiffe://cluster.local/ns/demo/sa/echo", "spiffe://cluster.local/ns/demo/sa/z"}, 0},
		{"no node name", []*state.Workload{w("a", "demo", "echo", "", state.TunnelHBONE, false)}, "", nil, 0},
		{"invalid identity", []*state.Workload{w("a", "Demo Space", "echo", "n1", state.TunnelHBONE, false)}, "n1", nil, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ids, bad := xds.LocalIdentities(tc.ws, tc.node)
			var got []string
			for _, id := range ids {
				got = append(got, id.String())
			}
			if !slices.Equal(got, tc.want) || len(bad) != tc.bad {
				t.Errorf("LocalIdentities = %v, invalid %v; want %v, %d invalid", got, bad, tc.want, tc.bad)
			}
		})
	}
}

func TestCertPrefetcherFollowsLocalWorkloads(t *testing.T) {
	testutil.CheckGoroutines(t)
	ca, err := identity.NewLocalCA(identity.LocalCAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := identity.NewManager(identity.ManagerOptions{Issuer: ca})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	mdone := make(chan error, 1)
	go func() { mdone <- m.Run(ctx) }()
	st := state.NewStore()
	pdone := make(chan error, 1)
	go func() {
		pdone <- xds.NewCertPrefetcher(xds.CertPrefetcherOptions{Store: st, Certs: m, Node: "node1"}).Run(ctx)
	}()
	defer func() {
		cancel()
		<-pdone
		<-mdone
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	}()

	mk := func(name, sa, node string) *state.Workload {
		w := &state.Workload{UID: xdstest.PodUID("demo", name), Name: name, Namespace: "demo", ServiceAccount: sa, Node: node,
			Hostname: name, Protocol: state.TunnelHBONE}
		if err := w.Validate(); err != nil {
			t.Fatal(err)
		}
		return w
	}
	st.Apply(&state.Update{Workloads: []*state.Workload{mk("a", "echo", "node1"), mk("b", "echo", "node1"), mk("c", "other", "node2")}})
	managed := func() []string {
		var out []string
		for _, s := range m.Snapshot() {
			if s.State == identity.StateAvailable {
				out = append(out, s.Identity)
			}
		}
		return out
	}
	testutil.WaitFor(t, 10*time.Second, "echo's certificate", func() bool {
		return slices.Equal(managed(), []string{"spiffe://cluster.local/ns/demo/sa/echo"})
	})
	// One of two pods leaves: the identity stays; the last one leaves: it is forgotten.
	st.Apply(&state.Update{RemoveWorkloads: []string{xdstest.PodUID("demo", "a")}})
	time.Sleep(50 * time.Millisecond)
	if got := managed(); len(got) != 1 {
		t.Errorf("managed after one pod left = %v", got)
	}
	st.Apply(&state.Update{RemoveWorkloads: []string{xdstest.PodUID("demo", "b")}})
	testutil.WaitFor(t, 10*time.Second, "identity forgotten", func() bool { return len(m.Snapshot()) == 0 })
}
