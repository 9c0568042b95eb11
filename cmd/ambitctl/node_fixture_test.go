package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/admin"
	"github.com/ambit-mesh/ambit/admin/dump"
	"github.com/ambit-mesh/ambit/config/local"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
	"github.com/ambit-mesh/ambit/proxy/relay"
)

// updateAmbitDump rewrites testdata/ztunnel/ambit/dump.json from the fixture. The goldens next to it
// must then be regenerated with istioctl's writer (see testdata/ztunnel/README.md).
var updateAmbitDump = flag.Bool("update-ambit-dump", false, "rewrite testdata/ztunnel/ambit/dump.json")

const ambitDumpDir = "testdata/ztunnel/ambit"

// brokenIssuer issues through a real LocalCA except for one identity, whose CA call fails.
type brokenIssuer struct {
	identity.Issuer
	bad spiffeid.ID
}

func (b brokenIssuer) Issue(ctx context.Context, id spiffeid.ID) (*identity.Certificate, error) {
	if id == b.bad {
		return nil, errors.New("ca unreachable")
	}
	return b.Issuer.Issue(ctx, id)
}

// agentFixture holds the real parts behind an agent's admin API: the compiled example configuration of
// config/local, identities in each state, and tracked connections.
type agentFixture struct {
	opts    admin.Options
	certs   *identity.Manager
	reviews *identity.Certificate
	level   *slog.LevelVar
	access  *slog.LevelVar
}

// newAgentFixture builds the fixture; certificates live for ttl.
func newAgentFixture(t *testing.T, ttl time.Duration) *agentFixture {
	t.Helper()
	objs, err := local.LoadFiles(example)
	if err != nil {
		t.Fatal(err)
	}
	res, err := local.Compile(objs, local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	store := state.NewStore()
	store.Replace(&res.Snapshot)

	ca, err := identity.NewLocalCA(identity.LocalCAOptions{TTL: ttl, RootTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	broken := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/broken")
	certs, err := identity.NewManager(identity.ManagerOptions{Issuer: brokenIssuer{Issuer: ca, bad: broken}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { certs.Close() })
	reviews, err := certs.Fetch(t.Context(), spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/reviews"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := certs.Fetch(t.Context(), broken); err == nil {
		t.Fatal("the broken identity got a certificate")
	}
	// The manager is not running, so a prefetched identity stays Initializing.
	certs.Prefetch(spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/client"))

	ip := func(s string) *state.Workload { return store.WorkloadByAddr(state.AddrOf(netip.MustParseAddr(s))) }
	client, reviews1, reviews2 := ip("10.244.0.5"), ip("10.244.0.21"), ip("10.244.1.22")
	svc := store.ServiceByHostname("reviews.shop.svc.cluster.local", "shop")
	if client == nil || reviews1 == nil || reviews2 == nil || svc == nil {
		t.Fatal("example configuration changed: client, reviews-v1, reviews-v2 or the reviews service is missing")
	}
	start := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	var conns connmgr.Manager
	for _, c := range []*connmgr.Conn{
		{Direction: connmgr.Outbound, Protocol: "HBONE", Src: netip.MustParseAddrPort("10.244.0.5:40000"),
			Dst: netip.MustParseAddrPort("10.96.20.1:9080"), Hop: netip.MustParseAddrPort("10.244.1.10:15008"),
			Authority: "10.96.20.1:9080", Workload: client, Service: svc, Waypoint: "shop/waypoint"},
		{Direction: connmgr.Outbound, Protocol: "HBONE", Src: netip.MustParseAddrPort("10.244.0.5:40002"),
			Dst: netip.MustParseAddrPort("10.244.1.22:9080"), Hop: netip.MustParseAddrPort("10.244.0.11:15008"),
			Authority: "10.244.1.22:9080", Workload: client, Peer: reviews2, Waypoint: "shop/reviews-v2-pod-waypoint"},
		{Direction: connmgr.Inbound, Protocol: "HBONE", Src: netip.MustParseAddrPort("10.244.1.10:50000"),
			Dst: netip.MustParseAddrPort("10.244.0.21:9080"), Hop: netip.MustParseAddrPort("10.244.0.21:9080"),
			Workload: reviews1, Service: svc, PeerIdentity: "spiffe://cluster.local/ns/shop/sa/waypoint"},
		{Direction: connmgr.Inbound, Protocol: "TCP", Src: netip.MustParseAddrPort("10.244.0.40:36000"),
			Dst: netip.MustParseAddrPort("10.244.0.21:9080"), Hop: netip.MustParseAddrPort("10.244.0.21:9080"),
			Workload: reviews1},
	} {
		c.Start, c.Counters = start, &relay.Counters{}
		_, cancel := context.WithCancelCause(t.Context())
		t.Cleanup(func() { cancel(nil) })
		t.Cleanup(conns.Track(c, cancel))
	}

	f := &agentFixture{certs: certs, reviews: reviews, level: new(slog.LevelVar), access: new(slog.LevelVar)}
	f.access.Set(slog.LevelInfo)
	f.opts = admin.Options{
		Store:        store,
		Certificates: certs.Snapshot,
		Connections:  conns.Snapshot,
		Level:        f.level,
		Loggers:      map[string]*slog.LevelVar{"access": f.access},
		Version:      dump.BuildInfo{Version: "test"},
		Config:       map[string]string{"nodeName": "node-a"},
		NodeName:     "node-a",
	}
	return f
}

// serve starts the admin API on a loopback port and returns its address (host:port).
func (f *agentFixture) serve(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(admin.NewAdminHandler(f.opts))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// TestWriteAmbitDump regenerates the committed Ambit dump when -update-ambit-dump is given; otherwise it
// checks that the committed dump still matches what the admin handler writes for the fixture, ignoring
// the certificates (random keys and serials).
func TestWriteAmbitDump(t *testing.T) {
	f := newAgentFixture(t, 100*365*24*time.Hour)
	addr := f.serve(t)
	resp, err := http.Get("http://" + addr + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(ambitDumpDir, "dump.json")
	if *updateAmbitDump {
		if err := os.WriteFile(path, body, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	committed, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want, err := dump.Parse(committed)
	if err != nil {
		t.Fatal(err)
	}
	got, err := dump.Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	want.Certificates, got.Certificates = nil, nil
	if a, b := mustJSON(t, got), mustJSON(t, want); a != b {
		t.Errorf("the admin handler's dump of the fixture differs from %s (rerun with -update-ambit-dump and regenerate the goldens):\n%s\nwant:\n%s", path, a, b)
	}
}
