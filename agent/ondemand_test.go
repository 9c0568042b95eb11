package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/config/xds"
	"github.com/ambit-mesh/ambit/mesh/route"
	"github.com/ambit-mesh/ambit/mesh/state"
	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/test/xdstest"
	"github.com/ambit-mesh/ambit/xdsclient"
	wapi "github.com/ambit-mesh/ambit/xdsclient/workloadapi"
)

func TestDemandKey(t *testing.T) {
	dst := netip.MustParseAddrPort("10.1.2.3:80")
	cases := []struct {
		name    string
		network string
		plan    route.Plan
		src     netip.Addr
		dst     netip.AddrPort
		want    string
		ask     bool
	}{
		{name: "not in mesh", plan: route.Plan{Path: route.PathPassthrough, Reason: route.ReasonNotInMesh}, dst: dst,
			want: "/10.1.2.3", ask: true},
		{name: "not in mesh on a named network", network: "net1",
			plan: route.Plan{Path: route.PathPassthrough, Reason: route.ReasonNotInMesh}, dst: dst, want: "net1/10.1.2.3", ask: true},
		{name: "ipv6", plan: route.Plan{Path: route.PathPassthrough, Reason: route.ReasonNotInMesh},
			dst: netip.MustParseAddrPort("[fd00::5]:80"), want: "/fd00::5", ask: true},
		{name: "ipv4 mapped", plan: route.Plan{Path: route.PathPassthrough, Reason: route.ReasonNotInMesh},
			dst: netip.MustParseAddrPort("[::ffff:10.1.2.3]:80"), want: "/10.1.2.3", ask: true},
		{name: "unknown waypoint by hostname", plan: route.Plan{Path: route.PathReject, Reason: route.ReasonUnknownWaypoint,
			Waypoint: &state.GatewayAddress{Hostname: state.NamespacedHostname{Namespace: "demo", Hostname: "waypoint.demo.svc.cluster.local"},
				HBONEMTLSPort: 15008}}, dst: dst, want: "demo/waypoint.demo.svc.cluster.local", ask: true},
		{name: "unknown waypoint by address", plan: route.Plan{Path: route.PathReject, Reason: route.ReasonUnknownWaypoint,
			Waypoint: &state.GatewayAddress{Address: state.NetworkAddress{Network: "net1", Addr: netip.MustParseAddr("10.96.0.9")},
				HBONEMTLSPort: 15008}}, dst: dst, want: "net1/10.96.0.9", ask: true},
		{name: "waypoint without endpoints is known", plan: route.Plan{Path: route.PathReject, Reason: route.ReasonNoWaypointEndpoint,
			Waypoint: &state.GatewayAddress{HBONEMTLSPort: 15008}}, dst: dst},
		{name: "known workload", plan: route.Plan{Path: route.PathDirect, Reason: route.ReasonWorkload}, dst: dst},
		{name: "service passthrough is known", plan: route.Plan{Path: route.PathPassthrough, Reason: route.ReasonServicePassthrough}, dst: dst},
		{name: "unknown source", plan: route.Plan{Path: route.PathReject, Reason: route.ReasonUnknownSource}, dst: dst,
			want: "/10.0.9.1", ask: true},
		{name: "unknown ipv6 source on a named network", network: "net1", plan: route.Plan{Path: route.PathReject, Reason: route.ReasonUnknownSource},
			src: netip.MustParseAddr("fd00::9"), dst: dst, want: "net1/fd00::9", ask: true},
		{name: "recursive", plan: route.Plan{Path: route.PathReject, Reason: route.ReasonRecursive}, dst: dst},
		{name: "no healthy endpoint", plan: route.Plan{Path: route.PathReject, Reason: route.ReasonNoHealthyEndpoint}, dst: dst},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := c.src
			if !src.IsValid() {
				src = netip.MustParseAddr("10.0.9.1")
			}
			got, ask := demandKey(c.network, &c.plan, &route.Request{SourceIP: src, Destination: c.dst})
			if got != c.want || ask != c.ask {
				t.Errorf("demandKey = %q, %v; want %q, %v", got, ask, c.want, c.ask)
			}
		})
	}
}

func TestDecideDemand(t *testing.T) {
	now := time.Unix(1000, 0)
	cases := []struct {
		name     string
		entry    demandEntry
		inFlight int
		want     demandAction
	}{
		{name: "new key", want: demandFetch},
		{name: "in flight joins", entry: demandEntry{inFlight: true}, want: demandJoin},
		{name: "in flight joins even at the bound", entry: demandEntry{inFlight: true}, inFlight: 4, want: demandJoin},
		{name: "negative cached", entry: demandEntry{negativeUntil: now.Add(time.Second)}, want: demandNegative},
		{name: "negative expired", entry: demandEntry{negativeUntil: now}, want: demandFetch},
		{name: "negative expired long ago", entry: demandEntry{negativeUntil: now.Add(-time.Hour)}, want: demandFetch},
		{name: "at the bound", inFlight: 4, want: demandLimited},
		{name: "below the bound", inFlight: 3, want: demandFetch},
		{name: "negative wins over the bound", entry: demandEntry{negativeUntil: now.Add(time.Second)}, inFlight: 4, want: demandNegative},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := decideDemand(now, c.entry, c.inFlight, 4); got != c.want {
				t.Errorf("decideDemand = %d; want %d", got, c.want)
			}
		})
	}
}

func TestClassifyFetch(t *testing.T) {
	live := context.Background()
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	deadline := fmt.Errorf("look up /10.0.0.1: %w", context.DeadlineExceeded)
	cases := []struct {
		name   string
		found  bool
		err    error
		parent context.Context
		want   demandFetchResult
	}{
		{name: "found", found: true, parent: live, want: fetchFound},
		{name: "removal", parent: live, want: fetchNotFound},
		{name: "no answer in time", err: deadline, parent: live, want: fetchTimeout},
		{name: "agent stopping", err: fmt.Errorf("look up: %w", context.Canceled), parent: ended, want: fetchError},
		{name: "deadline of a stopping agent", err: deadline, parent: ended, want: fetchError},
		{name: "client closed", err: xdsclient.ErrClosed, parent: live, want: fetchError},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := classifyFetch(c.found, c.err, c.parent); got != c.want {
				t.Errorf("classifyFetch = %s; want %s", got, c.want)
			}
		})
	}
}

// onDemandSource runs a real on-demand xDS source against the in-process ADS server, serving the pod
// workload demo/a at 10.0.0.1 (resource name = its UID; the test server has no aliases, and never answers
// for a name it does not have, as a silent istiod would not).
func onDemandSource(t *testing.T) (*xds.Source, *state.Store, *xdstest.Server) {
	t.Helper()
	srv := xdstest.Start(t, xdstest.Options{TypeURLs: []string{xdstest.AddressType, xdstest.AuthorizationType}})
	srv.Set(xdstest.AddressType, map[string]proto.Message{xdstest.PodUID("demo", "a"): xdstest.Pod("demo", "a", "10.0.0.1")})
	srv.Set(xdstest.AuthorizationType, map[string]proto.Message{"istio-system/istio_converted_static_strict": xdstest.StaticStrict("istio-system")})
	st := state.NewStore()
	src, err := xds.NewSource(xds.SourceOptions{Address: srv.Addr, Plaintext: true, Store: st, OnDemand: true,
		Node:           xdsclient.NodeInfo{IP: "10.0.0.100", PodName: "ztunnel", PodNamespace: "istio-system", NodeName: "node9"},
		InitialBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("source Run = %v", err)
		}
	})
	select {
	case <-src.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("source not ready within 10 s")
	}
	return src, st, srv
}

// countingLookup calls src.Lookup and counts the calls (what istiod is asked), signalling each on called.
type countingLookup struct {
	src    *xds.Source
	calls  atomic.Int64
	called chan string
}

func (c *countingLookup) lookup(ctx context.Context, key string) (bool, error) {
	c.calls.Add(1)
	if c.called != nil {
		c.called <- key
	}
	return c.src.Lookup(ctx, key)
}

// TestOnDemandCoalesces: concurrent connections needing one address share one lookup, and the state
// holds the workload once it returns.
func TestOnDemandCoalesces(t *testing.T) {
	tu.CheckGoroutines(t)
	src, st, _ := onDemandSource(t)
	cl := &countingLookup{src: src, called: make(chan string, 1)}
	gate := make(chan struct{})
	// The first lookup is held at the gate until every other caller has joined it.
	lookup := func(ctx context.Context, key string) (bool, error) {
		<-gate
		return cl.lookup(ctx, key)
	}
	reg := prometheus.NewRegistry()
	d := newOnDemand(lookup, 10*time.Second, reg, slog.New(slog.DiscardHandler))
	const n = 8
	key := xdstest.PodUID("demo", "a")
	results := make([]bool, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { results[i] = d.fetch(context.Background(), key) })
	}
	tu.WaitFor(t, 10*time.Second, "callers joined", func() bool {
		return testutil.ToFloat64(d.requests.WithLabelValues("coalesced")) == n-1
	})
	close(gate)
	wg.Wait()
	<-cl.called
	if got := cl.calls.Load(); got != 1 {
		t.Errorf("lookups = %d; want 1 for %d concurrent connections", got, n)
	}
	for i, ok := range results {
		if !ok {
			t.Errorf("caller %d: not found", i)
		}
	}
	if st.Workload(key) == nil {
		t.Error("the state lacks the fetched workload")
	}
	if got := testutil.ToFloat64(d.fetches.WithLabelValues(string(fetchFound))); got != 1 {
		t.Errorf("found fetches = %v; want 1", got)
	}
	if got := testutil.ToFloat64(d.inFlight); got != 0 {
		t.Errorf("in flight after the fetch = %v", got)
	}
}

// TestOnDemandTimeoutAndNegativeCache: an address istiod does not answer for is given up after the
// timeout and then not asked again while it is cached as unknown; once the entry expires it is asked again.
func TestOnDemandTimeoutAndNegativeCache(t *testing.T) {
	tu.CheckGoroutines(t)
	src, _, _ := onDemandSource(t)
	cl := &countingLookup{src: src}
	d := newOnDemand(cl.lookup, 50*time.Millisecond, nil, slog.New(slog.DiscardHandler))
	var clock atomic.Int64 // seconds since the epoch
	clock.Store(1000)
	d.now = func() time.Time { return time.Unix(clock.Load(), 0) }

	if d.fetch(context.Background(), "/10.9.9.9") {
		t.Fatal("an address the server does not have was found")
	}
	if got := testutil.ToFloat64(d.fetches.WithLabelValues(string(fetchTimeout))); got != 1 {
		t.Errorf("timeouts = %v; want 1", got)
	}
	for range 3 {
		if d.fetch(context.Background(), "/10.9.9.9") {
			t.Fatal("cached unknown address found")
		}
	}
	if got := cl.calls.Load(); got != 1 {
		t.Errorf("lookups = %d; want 1 (the rest answered by the negative cache)", got)
	}
	if got := testutil.ToFloat64(d.requests.WithLabelValues("negative_cached")); got != 3 {
		t.Errorf("negative cache hits = %v; want 3", got)
	}
	clock.Add(int64(onDemandNegativeTTL/time.Second) + 1)
	d.fetch(context.Background(), "/10.9.9.9")
	if got := cl.calls.Load(); got != 2 {
		t.Errorf("lookups after the entry expired = %d; want 2", got)
	}
	// A found address is not cached as unknown.
	if !d.fetch(context.Background(), xdstest.PodUID("demo", "a")) {
		t.Error("known workload not found")
	}
	if got := d.negativeLen(); got != 1 {
		t.Errorf("negative cache holds %d entries; want 1", got)
	}
}

// TestOnDemandNegativeCacheBound: a scan of more distinct unknown addresses than the bound keeps the
// negative cache at the bound.
func TestOnDemandNegativeCacheBound(t *testing.T) {
	tu.CheckGoroutines(t)
	src, _, _ := onDemandSource(t)
	d := newOnDemand(src.Lookup, 10*time.Millisecond, nil, slog.New(slog.DiscardHandler))
	d.maxNegative = 4
	for i := range 10 {
		d.fetch(context.Background(), fmt.Sprintf("/10.8.0.%d", i))
	}
	if got := d.negativeLen(); got != 4 {
		t.Errorf("negative cache holds %d entries; want the bound 4", got)
	}
}

// TestOnDemandInFlightBound: with the bound of fetches in flight reached, a connection to another unknown
// address is not asked (treated as unknown at once) and istiod sees no request for it; a connection to the
// address in flight still joins it.
func TestOnDemandInFlightBound(t *testing.T) {
	tu.CheckGoroutines(t)
	src, _, _ := onDemandSource(t)
	cl := &countingLookup{src: src, called: make(chan string, 1)}
	d := newOnDemand(cl.lookup, time.Minute, nil, slog.New(slog.DiscardHandler))
	d.maxInFlight = 1
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan bool, 1)
	go func() { first <- d.fetch(ctx, "/10.7.0.1") }() // the server never answers: held until cancel
	<-cl.called
	if d.fetch(context.Background(), "/10.7.0.2") {
		t.Error("a limited request was found")
	}
	if got := testutil.ToFloat64(d.requests.WithLabelValues("limited")); got != 1 {
		t.Errorf("limited = %v; want 1", got)
	}
	if got := cl.calls.Load(); got != 1 {
		t.Errorf("lookups = %d; want 1 (the limited request must not reach istiod)", got)
	}
	joined := make(chan bool, 1)
	go func() { joined <- d.fetch(ctx, "/10.7.0.1") }()
	tu.WaitFor(t, 10*time.Second, "second connection joined", func() bool {
		return testutil.ToFloat64(d.requests.WithLabelValues("coalesced")) == 1
	})
	cancel()
	if <-first || <-joined {
		t.Error("a cancelled lookup was found")
	}
	if got := testutil.ToFloat64(d.fetches.WithLabelValues(string(fetchError))); got != 1 {
		t.Errorf("errors = %v; want 1 (cancelled by the agent, not a timeout)", got)
	}
	if d.negativeLen() != 0 {
		t.Error("a cancelled lookup was cached as unknown")
	}
}

// TestOnDemandWaypoint: a destination whose waypoint service istiod has not sent (on demand it sends it only
// when asked) is refused as an unknown waypoint; the agent asks for the waypoint by "<namespace>/<hostname>"
// and the next plan goes through it.
func TestOnDemandWaypoint(t *testing.T) {
	tu.CheckGoroutines(t)
	src, st, srv := onDemandSource(t)
	wpPorts := func(w *wapi.Workload) {
		w.Services = map[string]*wapi.PortList{xdstest.ServiceName("demo", "waypoint"): {Ports: []*wapi.Port{{ServicePort: 15008, TargetPort: 15008}}}}
	}
	srv.Set(xdstest.AddressType, map[string]proto.Message{
		xdstest.PodUID("demo", "b"):          xdstest.Pod("demo", "b", "10.0.0.3", func(w *wapi.Workload) { w.Waypoint = xdstest.WaypointHost("demo", "waypoint") }),
		xdstest.PodUID("demo", "waypoint-0"): xdstest.Pod("demo", "waypoint-0", "10.0.0.2", wpPorts),
		xdstest.ServiceName("demo", "waypoint"): xdstest.Service("demo", "waypoint", "10.96.0.9", func(s *wapi.Service) {
			s.Ports = []*wapi.Port{{ServicePort: 15008, TargetPort: 15008}}
		}),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The destination and the waypoint's pod are known already (istiod sends a service's pods with it).
	for _, uid := range []string{xdstest.PodUID("demo", "b"), xdstest.PodUID("demo", "waypoint-0")} {
		if ok, err := src.Lookup(ctx, uid); !ok || err != nil {
			t.Fatalf("Lookup %s = %v, %v", uid, ok, err)
		}
	}
	cl := &countingLookup{src: src}
	o := &outbound{inputs: &inputs{store: st, demand: newOnDemand(cl.lookup, 10*time.Second, nil, slog.New(slog.DiscardHandler))}}
	req := route.Request{Source: &state.Workload{UID: "Kubernetes//Pod/demo/client", Name: "client", Namespace: "demo", ServiceAccount: "client",
		Node: "node9", Protocol: state.TunnelHBONE}, SourceIP: netip.MustParseAddr("10.0.9.1"), Destination: netip.MustParseAddrPort("10.0.0.3:8080")}
	before := route.Build(st, &req)
	if before.Reason != route.ReasonUnknownWaypoint {
		t.Fatalf("plan before the lookup: %v; want an unknown waypoint", before.Reason)
	}
	p := o.demandPlan(ctx, &req, before)
	if p.Path != route.PathWaypoint || p.NextHop != netip.MustParseAddrPort("10.0.0.2:15008") {
		t.Errorf("plan after the lookup: path %v via %v (reason %v); want the waypoint 10.0.0.2:15008", p.Path, p.NextHop, p.Reason)
	}
	if got := cl.calls.Load(); got != 1 {
		t.Errorf("lookups = %d; want 1 (the waypoint service)", got)
	}
}

// TestOnDemandPlan: a connection from a pod istiod has not pushed yet, to a workload it has not pushed
// either: the agent asks for the source, then for the destination ("<network>/<ip>" each), and the last
// plan is HBONE to the destination. A source istiod places on another node stays refused. The test server
// has no aliases (istiod's "<network>/<ip>" answers are covered by test/e2e against istiod), so the keys are
// translated to the resources' names before the real lookup.
func TestOnDemandPlan(t *testing.T) {
	tu.CheckGoroutines(t)
	src, st, srv := onDemandSource(t)
	srv.Set(xdstest.AddressType, map[string]proto.Message{
		xdstest.PodUID("demo", "c"): xdstest.Pod("demo", "c", "10.0.0.4"),
		xdstest.PodUID("demo", "d"): xdstest.Pod("demo", "d", "10.0.0.5", func(w *wapi.Workload) { w.Node = "node2" }),
		xdstest.PodUID("demo", "e"): xdstest.Pod("demo", "e", "10.0.0.6", func(w *wapi.Workload) { w.Node = "node2" }),
	})
	alias := map[string]string{"/10.0.0.4": xdstest.PodUID("demo", "c"), "/10.0.0.5": xdstest.PodUID("demo", "d"),
		"/10.0.0.6": xdstest.PodUID("demo", "e")}
	var asked []string
	cl := &countingLookup{src: src}
	lookup := func(ctx context.Context, key string) (bool, error) {
		asked = append(asked, key)
		return cl.lookup(ctx, alias[key])
	}
	o := &outbound{inputs: &inputs{node: "node1", store: st, demand: newOnDemand(lookup, 10*time.Second, nil, slog.New(slog.DiscardHandler))}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	req := route.Request{SourceIP: netip.MustParseAddr("10.0.0.4"), Destination: netip.MustParseAddrPort("10.0.0.5:8080")}
	p := o.demandPlan(ctx, &req, route.Build(st, &req))
	if req.Source == nil || req.Source.Name != "c" {
		t.Errorf("source after the lookup = %+v; want demo/c", req.Source)
	}
	if p.Path != route.PathDirect || p.Protocol != route.ProtocolHBONE || p.NextHop != netip.MustParseAddrPort("10.0.0.5:15008") {
		t.Errorf("plan = %v %v via %v (reason %v); want HBONE direct to 10.0.0.5:15008", p.Path, p.Protocol, p.NextHop, p.Reason)
	}
	if want := []string{"/10.0.0.4", "/10.0.0.5"}; !slices.Equal(asked, want) {
		t.Errorf("asked %q; want %q (source, then destination)", asked, want)
	}

	req = route.Request{SourceIP: netip.MustParseAddr("10.0.0.6"), Destination: netip.MustParseAddrPort("10.0.0.5:8080")}
	if p := o.demandPlan(ctx, &req, route.Build(st, &req)); p.Path != route.PathReject || p.Reason != route.ReasonUnknownSource || req.Source != nil {
		t.Errorf("source on another node: plan %v (reason %v), source %+v; want refused", p.Path, p.Reason, req.Source)
	}
	if st.Workload(xdstest.PodUID("demo", "e")) == nil {
		t.Error("the other node's workload did not arrive")
	}
	if got := cl.calls.Load(); got != 3 {
		t.Errorf("lookups = %d; want 3", got)
	}
}
