package xds_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"unsafe"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambit-mesh/ambit/config/xds"
	"github.com/ambit-mesh/ambit/mesh/authz"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/test/xdstest"
	"github.com/ambit-mesh/ambit/xdsclient"
	wapi "github.com/ambit-mesh/ambit/xdsclient/workloadapi"
	"github.com/ambit-mesh/ambit/xdsclient/workloadapi/security"
)

func res(name string, m proto.Message) xdsclient.Resource {
	return xdsclient.Resource{Name: name, Version: "v", Body: xdstest.Any(m)}
}

func update(rs ...xdsclient.Resource) *xdsclient.Update {
	return &xdsclient.Update{TypeURL: xds.AddressTypeURL, Resources: rs}
}

func rejected(rej []xdsclient.Rejection) map[string]xdsclient.Rejection {
	out := map[string]xdsclient.Rejection{}
	for _, r := range rej {
		out[r.Name] = r
	}
	return out
}

var (
	podA    = xdstest.PodUID("demo", "a")
	podB    = xdstest.PodUID("demo", "b")
	svcEcho = xdstest.ServiceName("demo", "echo")
	svcWP   = xdstest.ServiceName("demo", "waypoint")
	keyEcho = state.NamespacedHostname{Namespace: "demo", Hostname: xdstest.Hostname("demo", "echo")}
	keyWP   = state.NamespacedHostname{Namespace: "demo", Hostname: xdstest.Hostname("demo", "waypoint")}
)

func TestAddressHandlerPartialRejection(t *testing.T) {
	st := state.NewStore()
	h := xds.NewAddressHandler(xds.AddressHandlerOptions{Store: st})
	ctx := context.Background()
	bad := xdstest.Pod("demo", "bad", "10.0.0.9")
	bad.GetWorkload().Addresses = [][]byte{{1, 2, 3}}
	// A trust domain that is no SPIFFE trust domain: NACKed, never stored (issue 14 item 8).
	badID := xdstest.Pod("demo", "bad-id", "10.0.0.10")
	badID.GetWorkload().TrustDomain = "Cluster.Local"
	dup := xdstest.PodUID("demo", "dup")
	rej := h.HandleUpdate(ctx, update(
		res(podA, xdstest.Pod("demo", "a", "10.0.0.1", xdstest.InService("demo", "echo"))),
		res(svcEcho, xdstest.Service("demo", "echo", "10.96.0.1")),
		res(xdstest.PodUID("demo", "bad"), bad),
		res(xdstest.PodUID("demo", "bad-id"), badID),
		res(dup, xdstest.Pod("demo", "dup", "10.0.0.7")),
		res(dup, xdstest.Pod("demo", "dup", "10.0.0.8")),
		xdsclient.Resource{Name: "garbage", Body: &anypb.Any{TypeUrl: xds.AddressTypeURL, Value: []byte{0xff}}},
		xdsclient.Resource{Name: "wrong-type", Body: xdstest.Any(xdstest.Policy("a", "b", 0, 0))},
	))
	r := rejected(rej)
	for name, want := range map[string]error{xdstest.PodUID("demo", "bad"): xds.ErrAddressLength, dup: xds.ErrDuplicate,
		xdstest.PodUID("demo", "bad-id"): xds.ErrInvalidIdentity,
		"garbage":                        xds.ErrDecode, "wrong-type": xds.ErrWrongType} {
		if !errors.Is(r[name].Err, want) {
			t.Errorf("rejection of %s = %v, want %v", name, r[name].Err, want)
		}
		if r[name].Keep {
			t.Errorf("%s kept although nothing was held", name)
		}
	}
	if len(rej) != 5 {
		t.Errorf("rejections = %v", rej)
	}
	// The valid rest applied.
	if w, s, _ := st.Counts(); w != 1 || s != 1 {
		t.Fatalf("counts = %d workloads, %d services", w, s)
	}
	if eps := st.Endpoints(keyEcho); len(eps) != 1 || eps[0].UID != podA {
		t.Errorf("endpoints = %v", eps)
	}
	if st.WorkloadByAddr(state.AddrOf(netip.MustParseAddr("10.0.0.7"))) != nil {
		t.Error("a duplicate was applied")
	}
	if st.WorkloadByAddr(state.AddrOf(netip.MustParseAddr("10.0.0.10"))) != nil {
		t.Error("a workload with an invalid identity was applied")
	}

	// A bad new version leaves the last good one serving, and is kept so that removals still reach it.
	badA := xdstest.Pod("demo", "a", "10.0.0.1")
	badA.GetWorkload().Status = 7
	rej = h.HandleUpdate(ctx, update(res(podA, badA)))
	if len(rej) != 1 || !rej[0].Keep || !errors.Is(rej[0].Err, xds.ErrUnknownEnum) {
		t.Errorf("bad update of a held workload: %v", rej)
	}
	if w := st.Workload(podA); w == nil || w.Status != state.Healthy {
		t.Errorf("last good version not serving: %v", w)
	}
}

func TestAddressHandlerRemovals(t *testing.T) {
	st := state.NewStore()
	h := xds.NewAddressHandler(xds.AddressHandlerOptions{Store: st})
	ctx := context.Background()
	h.HandleUpdate(ctx, update(
		res(podA, xdstest.Pod("demo", "a", "10.0.0.1", xdstest.InService("demo", "echo"))),
		res(podB, xdstest.Pod("demo", "b", "10.0.0.2", xdstest.InService("demo", "echo"))),
		res(svcEcho, xdstest.Service("demo", "echo", "10.96.0.1")),
	))
	gen := st.Generation()
	// One response = one atomic batch: a removal and an upsert together.
	rej := h.HandleUpdate(ctx, &xdsclient.Update{Removed: []string{podB, svcEcho, "unknown/name", "Kubernetes//Pod/x/never"},
		Resources: []xdsclient.Resource{res(podA, xdstest.Pod("demo", "a", "10.0.0.3", xdstest.InService("demo", "echo")))}})
	if len(rej) != 0 {
		t.Fatalf("rejections = %v", rej)
	}
	if st.Generation() != gen+1 {
		t.Errorf("update applied in %d batches", st.Generation()-gen)
	}
	if st.Workload(podB) != nil || st.Service(keyEcho) != nil {
		t.Error("removed objects still present")
	}
	if w := st.Workload(podA); w == nil || w.Addresses[0] != netip.MustParseAddr("10.0.0.3") {
		t.Errorf("updated workload = %v", w)
	}
	// Endpoints stay staged for a service that is gone, as in ztunnel.
	if eps := st.Endpoints(keyEcho); len(eps) != 1 {
		t.Errorf("staged endpoints = %v", eps)
	}
}

func TestAddressHandlerWaypointParking(t *testing.T) {
	st := state.NewStore()
	h := xds.NewAddressHandler(xds.AddressHandlerOptions{Store: st})
	ctx := context.Background()
	withWP := func(w *wapi.Workload) { w.Waypoint = xdstest.WaypointHost("demo", "waypoint") }
	svcWithWP := func(s *wapi.Service) { s.Waypoint = xdstest.WaypointHost("demo", "waypoint") }

	// The waypoint service is unknown: both are reported (kept) and parked; the rest applies.
	rej := h.HandleUpdate(ctx, update(
		res(podA, xdstest.Pod("demo", "a", "10.0.0.1", withWP)),
		res(svcEcho, xdstest.Service("demo", "echo", "10.96.0.1", svcWithWP)),
		res(podB, xdstest.Pod("demo", "b", "10.0.0.2")),
	))
	r := rejected(rej)
	for _, n := range []string{podA, svcEcho} {
		if !errors.Is(r[n].Err, xds.ErrUnknownWaypoint) || !r[n].Keep {
			t.Errorf("%s: rejection %+v", n, r[n])
		}
	}
	if st.Workload(podA) != nil || st.Service(keyEcho) != nil || st.Workload(podB) == nil {
		t.Fatal("parked objects applied or the valid one not")
	}
	if p := h.Parked(); len(p) != 2 {
		t.Errorf("parked = %v", p)
	}
	// The waypoint service arrives: the parked objects are admitted in the same batch, without a new report.
	rej = h.HandleUpdate(ctx, update(res(svcWP, xdstest.Service("demo", "waypoint", "10.96.0.99"))))
	if len(rej) != 0 {
		t.Errorf("rejections = %v", rej)
	}
	if w := st.Workload(podA); w == nil || w.Waypoint.Hostname != keyWP {
		t.Errorf("parked workload not admitted: %v", w)
	}
	if s := st.Service(keyEcho); s == nil || s.Waypoint.Hostname != keyWP {
		t.Errorf("parked service not admitted: %v", s)
	}
	if len(h.Parked()) != 0 {
		t.Errorf("still parked: %v", h.Parked())
	}
	// A waypoint service in the same response as its users is fine; so is one already in the store.
	podC := xdstest.PodUID("demo", "c")
	if rej := h.HandleUpdate(ctx, update(res(podC, xdstest.Pod("demo", "c", "10.0.0.4", withWP)))); len(rej) != 0 {
		t.Errorf("known waypoint rejected: %v", rej)
	}
	// A removal of a parked resource drops it.
	h.HandleUpdate(ctx, update(res(podB, xdstest.Pod("demo", "b", "10.0.0.2", func(w *wapi.Workload) {
		w.Waypoint = xdstest.WaypointHost("demo", "missing")
	}))))
	if st.Workload(podB) == nil || st.Workload(podB).Waypoint != nil {
		t.Error("last good version of a parked update not serving")
	}
	h.HandleUpdate(ctx, &xdsclient.Update{Removed: []string{podB}})
	if len(h.Parked()) != 0 || st.Workload(podB) != nil {
		t.Errorf("removal left parked %v / stored %v", h.Parked(), st.Workload(podB))
	}
	// Removing the waypoint service in the same response as a new user parks the user.
	podD := xdstest.PodUID("demo", "d")
	rej = h.HandleUpdate(ctx, &xdsclient.Update{Removed: []string{svcWP}, Resources: []xdsclient.Resource{res(podD, xdstest.Pod("demo", "d", "10.0.0.5", withWP))}})
	if len(rej) != 1 || rej[0].Name != podD {
		t.Errorf("rejections = %v", rej)
	}
}

func TestAddressHandlerAllowUnknownWaypoints(t *testing.T) {
	st := state.NewStore()
	h := xds.NewAddressHandler(xds.AddressHandlerOptions{Store: st, AllowUnknownWaypoints: true})
	rej := h.HandleUpdate(context.Background(), update(res(podA, xdstest.Pod("demo", "a", "10.0.0.1", func(w *wapi.Workload) {
		w.Waypoint = xdstest.WaypointHost("demo", "waypoint")
	}))))
	if len(rej) != 0 || st.Workload(podA) == nil {
		t.Errorf("on-demand mode: rejections %v, workload %v", rej, st.Workload(podA))
	}
}

func TestAddressHandlerKindChange(t *testing.T) {
	st := state.NewStore()
	h := xds.NewAddressHandler(xds.AddressHandlerOptions{Store: st})
	ctx := context.Background()
	// A workload whose UID happens to look like a service key replaces the service of that name.
	name := "demo/x.example.com"
	h.HandleUpdate(ctx, update(res(name, &wapi.Address{Type: &wapi.Address_Service{Service: &wapi.Service{
		Name: "x", Namespace: "demo", Hostname: "x.example.com"}}})))
	if st.Service(state.NamespacedHostname{Namespace: "demo", Hostname: "x.example.com"}) == nil {
		t.Fatal("service not applied")
	}
	w := xdstest.Pod("demo", "x", "10.0.0.1")
	w.GetWorkload().Uid = name
	h.HandleUpdate(ctx, update(res(name, w)))
	if st.Service(state.NamespacedHostname{Namespace: "demo", Hostname: "x.example.com"}) != nil || st.Workload(name) == nil {
		t.Error("a name holds two kinds at once")
	}
}

func TestAuthorizationHandler(t *testing.T) {
	st := state.NewStore()
	h := xds.NewAuthorizationHandler(st, nil)
	ctx := context.Background()
	ares := func(name string, m proto.Message) xdsclient.Resource {
		return xdsclient.Resource{Name: name, Body: xdstest.Any(m)}
	}
	bad := xdstest.Policy("demo", "bad", 9, security.Action_ALLOW)
	rej := h.HandleUpdate(ctx, &xdsclient.Update{Resources: []xdsclient.Resource{
		ares("demo/allow", xdstest.Policy("demo", "allow", security.Scope_WORKLOAD_SELECTOR, security.Action_ALLOW, "cluster.local/ns/demo/sa/x")),
		ares("istio-system/istio_converted_static_strict", xdstest.StaticStrict("istio-system")),
		ares("demo/bad", bad),
		ares("demo/mismatch", xdstest.Policy("demo", "other", 0, 0)),
		ares("demo/d", xdstest.Policy("demo", "d", 0, 0)), ares("demo/d", xdstest.Policy("demo", "d", 0, 0)),
	}})
	r := rejected(rej)
	if len(rej) != 3 || !errors.Is(r["demo/bad"].Err, xds.ErrUnknownEnum) || !errors.Is(r["demo/mismatch"].Err, xds.ErrNameMismatch) ||
		!errors.Is(r["demo/d"].Err, xds.ErrDuplicate) {
		t.Errorf("rejections = %v", rej)
	}
	if _, _, p := st.Counts(); p != 2 {
		t.Errorf("policies = %d", p)
	}
	strict := st.Policy("istio-system/istio_converted_static_strict")
	if strict == nil || strict.Action != state.ActionDeny || strict.Groups[0].Rules[0].Matches[0].NotPrincipals[0].Kind != state.MatchPresence {
		t.Errorf("static strict = %+v", strict)
	}
	// A bad update of a held policy keeps the old one and the name; a removal drops it.
	rej = h.HandleUpdate(ctx, &xdsclient.Update{Resources: []xdsclient.Resource{ares("demo/allow", xdstest.Policy("demo", "allow", 0, 5))}})
	if len(rej) != 1 || !rej[0].Keep || st.Policy("demo/allow") == nil {
		t.Errorf("bad update: %v, policy %v", rej, st.Policy("demo/allow"))
	}
	h.HandleUpdate(ctx, &xdsclient.Update{Removed: []string{"demo/allow"}})
	if st.Policy("demo/allow") != nil {
		t.Error("removed policy still present")
	}
	if names := policyNames(st); !slices.Equal(names, []string{"istio-system/istio_converted_static_strict"}) {
		t.Errorf("policies = %v", names)
	}
}

func policyNames(st *state.Store) []string {
	var out []string
	for _, p := range st.Policies() {
		out = append(out, p.Key())
	}
	return out
}

// TestAuthorizationHandlerInvalidDeny: a DENY policy istiod sends that does not convert (here a port out
// of range; a match type newer than ours would do the same) must not deny less: it is enforced as a
// deny-all for its selection and still reported (NACK), as istiod turns an invalid DENY into a deny-all.
// An invalid ALLOW is only rejected: without it, fewer connections are allowed, never more.
func TestAuthorizationHandlerInvalidDeny(t *testing.T) {
	st := state.NewStore()
	h := xds.NewAuthorizationHandler(st, nil)
	badDeny := xdstest.Policy("demo", "deny", security.Scope_NAMESPACE, security.Action_DENY, "cluster.local/ns/demo/sa/evil")
	badDeny.Groups[0].Rules[0].Matches[0].DestinationPorts = []uint32{70000}
	badAllow := xdstest.Policy("demo", "allow", security.Scope_NAMESPACE, security.Action_ALLOW, "cluster.local/ns/demo/sa/x")
	badAllow.Groups[0].Rules[0].Matches[0].DestinationPorts = []uint32{70000}
	rej := rejected(h.HandleUpdate(context.Background(), &xdsclient.Update{Resources: []xdsclient.Resource{
		{Name: "demo/deny", Body: xdstest.Any(badDeny)}, {Name: "demo/allow", Body: xdstest.Any(badAllow)},
	}}))
	if !errors.Is(rej["demo/deny"].Err, xds.ErrPortRange) || !rej["demo/deny"].Keep || !errors.Is(rej["demo/allow"].Err, xds.ErrPortRange) {
		t.Errorf("rejections = %v, want both reported, the DENY kept", rej)
	}
	if st.Policy("demo/allow") != nil {
		t.Error("invalid ALLOW applied")
	}
	p := st.Policy("demo/deny")
	if p == nil {
		t.Fatal("invalid DENY dropped: nothing denies in its place")
	}
	conn := &authz.Conn{Peer: authz.PeerFromSPIFFE("spiffe://cluster.local/ns/demo/sa/anyone"),
		SourceIP: netip.MustParseAddr("10.0.0.1"), DestinationIP: netip.MustParseAddr("10.0.0.2"), DestinationPort: 80}
	if d := authz.Evaluate([]*state.Authorization{p}, conn); d.Allow || p.Action != state.ActionDeny || p.Scope != state.ScopeNamespace {
		t.Errorf("invalid DENY enforced as %+v (decision %+v), want a namespace deny-all", p, d)
	}
}

// TestAddressHandlerDropsBodies: once converted, a resource's body is released (xdsclient.Handler allows
// it), so that istiod's first response, the whole mesh, can be collected while it is applied instead of
// being held whole until the handler returns. Valid and rejected resources, fast and generic decoding.
func TestAddressHandlerDropsBodies(t *testing.T) {
	st := state.NewStore()
	h := xds.NewAddressHandler(xds.AddressHandlerOptions{Store: st})
	bad := xdstest.Pod("demo", "bad", "10.0.0.9")
	bad.GetWorkload().Addresses = [][]byte{{1, 2, 3}}
	u := update(
		res(podA, xdstest.Pod("demo", "a", "10.0.0.1", xdstest.InService("demo", "echo"))), // fast path
		res(svcEcho, xdstest.Service("demo", "echo", "10.96.0.1")),                         // generic path
		res(xdstest.PodUID("demo", "bad"), bad),                                            // rejected
	)
	if rej := h.HandleUpdate(context.Background(), u); len(rej) != 1 {
		t.Fatalf("rejected %v; want only the bad pod", rej)
	}
	for _, r := range u.Resources {
		if r.Body != nil {
			t.Errorf("%s: body still held after HandleUpdate", r.Name)
		}
	}
	if st.WorkloadByAddr(state.AddrOf(netip.MustParseAddr("10.0.0.1"))) == nil {
		t.Error("pod a not applied")
	}
}

// TestAddressHandlerSharesStrings: the handler's interners outlive a response, so a workload of a later
// update shares its namespace, service account and identity with the workloads already in the store, and
// never aliases the bytes it was decoded from.
func TestAddressHandlerSharesStrings(t *testing.T) {
	st := state.NewStore()
	h := xds.NewAddressHandler(xds.AddressHandlerOptions{Store: st})
	ctx := context.Background()
	withSA := func(w *wapi.Workload) { w.ServiceAccount = "reviews" }
	first := update(res(podA, xdstest.Pod("demo", "a", "10.0.0.1", withSA)))
	if rej := h.HandleUpdate(ctx, first); len(rej) != 0 {
		t.Fatal(rej)
	}
	second := update(res(podB, xdstest.Pod("demo", "b", "10.0.0.2", withSA)))
	if rej := h.HandleUpdate(ctx, second); len(rej) != 0 {
		t.Fatal(rej)
	}
	a, b := st.Workload(podA), st.Workload(podB)
	if a == nil || b == nil {
		t.Fatal("workloads not applied")
	}
	for _, f := range []struct{ name, x, y string }{
		{"namespace", a.Namespace, b.Namespace},
		{"service account", a.ServiceAccount, b.ServiceAccount},
		{"identity", a.Identity(), b.Identity()},
	} {
		if f.x != f.y || unsafe.StringData(f.x) != unsafe.StringData(f.y) {
			t.Errorf("%s: %q and %q are two copies", f.name, f.x, f.y)
		}
	}
	if b.Identity() != "spiffe://cluster.local/ns/demo/sa/reviews" {
		t.Errorf("identity %q", b.Identity())
	}
}
