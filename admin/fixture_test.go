package admin

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/config/local"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
	"github.com/ambit-mesh/ambit/proxy/relay"
)

const ambientYAML = "../config/local/testdata/ambient.yaml"

// failingIssuer issues through a real LocalCA except for one identity, whose CA call fails.
type failingIssuer struct {
	identity.Issuer
	bad spiffeid.ID
}

func (f failingIssuer) Issue(ctx context.Context, id spiffeid.ID) (*identity.Certificate, error) {
	if id == f.bad {
		return nil, errors.New("ca unreachable")
	}
	return f.Issuer.Issue(ctx, id)
}

// fixture is a node agent's worth of real parts: the compiled example configuration, an identity manager
// with one available, one initializing and one unavailable identity, and two tracked connections.
type fixture struct {
	store *state.Store
	certs *identity.Manager
	conns *connmgr.Manager
	level *slog.LevelVar
	quit  chan struct{}
}

var (
	idReviews = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/reviews")
	idClient  = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/client")
	idBroken  = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/broken")
)

func newFixture(t *testing.T) *fixture {
	t.Helper()
	objs, err := local.LoadFiles(ambientYAML)
	if err != nil {
		t.Fatal(err)
	}
	res, err := local.Compile(objs, local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{store: state.NewStore(), conns: &connmgr.Manager{}, level: new(slog.LevelVar), quit: make(chan struct{}, 1)}
	f.store.Replace(&res.Snapshot)

	ca, err := identity.NewLocalCA(identity.LocalCAOptions{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// Without Run, a prefetch stays queued: that identity remains Initializing.
	f.certs, err = identity.NewManager(identity.ManagerOptions{Issuer: failingIssuer{Issuer: ca, bad: idBroken}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.certs.Close() })
	ctx := t.Context()
	if _, err := f.certs.Fetch(ctx, idReviews); err != nil {
		t.Fatal(err)
	}
	if _, err := f.certs.Fetch(ctx, idBroken); err == nil {
		t.Fatal("fetch of the broken identity succeeded")
	}
	f.certs.Prefetch(idClient)

	client := f.store.WorkloadByAddr(state.AddrOf(netip.MustParseAddr("10.244.0.5")))
	reviews1 := f.store.WorkloadByAddr(state.AddrOf(netip.MustParseAddr("10.244.0.21")))
	reviewsSvc := f.store.ServiceByHostname("reviews.shop.svc.cluster.local", "shop")
	if client == nil || reviews1 == nil || reviewsSvc == nil {
		t.Fatal("example configuration lacks client, reviews-v1 or the reviews service")
	}
	start := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	out := &connmgr.Conn{
		Direction: connmgr.Outbound, Protocol: "HBONE",
		Src:       netip.MustParseAddrPort("10.244.0.5:40000"),
		Dst:       netip.MustParseAddrPort("10.96.20.1:9080"),
		Hop:       netip.MustParseAddrPort("10.244.1.10:15008"),
		Authority: "10.96.20.1:9080", Workload: client, Service: reviewsSvc, Waypoint: "shop/waypoint",
		Start: start, Counters: &relay.Counters{},
	}
	out.Counters.AToB.Store(100)
	out.Counters.BToA.Store(2000)
	in := &connmgr.Conn{
		Direction: connmgr.Inbound, Protocol: "HBONE",
		Src:      netip.MustParseAddrPort("10.244.1.10:50000"),
		Dst:      netip.MustParseAddrPort("10.244.0.21:9080"),
		Hop:      netip.MustParseAddrPort("10.244.0.21:9080"),
		Workload: reviews1, Service: reviewsSvc, PeerIdentity: "spiffe://cluster.local/ns/shop/sa/waypoint",
		Start: start.Add(time.Second), Counters: &relay.Counters{},
	}
	for _, c := range []*connmgr.Conn{out, in} {
		_, cancel := context.WithCancelCause(ctx)
		t.Cleanup(func() { cancel(nil) })
		t.Cleanup(f.conns.Track(c, cancel))
	}
	return f
}

func (f *fixture) options() Options {
	return Options{
		Store:        f.store,
		Certificates: f.certs.Snapshot,
		Connections:  f.conns.Snapshot,
		Level:        f.level,
		Version:      BuildInfoFromBinary("1.2.3"),
		Config:       map[string]any{"nodeName": "node-a"},
		Quit:         func() { f.quit <- struct{}{} },
		NodeName:     "node-a",
	}
}
