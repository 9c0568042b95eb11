package dial

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/mesh/route"
	"github.com/ambit-mesh/ambit/mesh/state"
	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// TestUpstreamDoubleHBONE executes a double HBONE plan against a gateway (an hbone.Server relaying each
// stream over TCP to the destination's hbone.Server): the outer CONNECT expects the gateway's identity
// and carries no x-forwarded-network, the inner one expects the destination's and carries it; both
// carry the service hostname authority.
func TestUpstreamDoubleHBONE(t *testing.T) {
	tu.CheckGoroutines(t)
	ca, err := tu.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	creds := func(s string) *hbone.Credentials {
		id := spiffeid.RequireFromString(s)
		cert, roots, err := ca.Issue(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return &hbone.Credentials{ID: id, Certificate: cert, Roots: roots}
	}
	client := creds("spiffe://cluster.local/ns/app/sa/client")
	gwCreds := creds("spiffe://cluster.local/ns/istio-system/sa/eastwest")
	dstCreds := creds("spiffe://cluster.local/ns/app/sa/server")
	type seen struct{ authority, network string }
	outerSeen, innerSeen := make(chan seen, 4), make(chan seen, 4)
	serve := func(c *hbone.Credentials, h hbone.HandlerFunc) netip.AddrPort {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &hbone.Server{Credentials: func(context.Context, netip.AddrPort) (*hbone.Credentials, error) { return c, nil }, Handler: h}
		done := make(chan error, 1)
		go func() { done <- srv.Serve(context.Background(), ln) }()
		t.Cleanup(func() { srv.Close(); <-done })
		return netip.MustParseAddrPort(ln.Addr().String())
	}
	dst := serve(dstCreds, func(_ context.Context, r *hbone.Request) error {
		innerSeen <- seen{r.Authority, r.Header.Get(hbone.HeaderForwardedNetwork)}
		c, err := r.Accept(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = io.WriteString(c, "inner ok")
		return err
	})
	gw := serve(gwCreds, func(ctx context.Context, r *hbone.Request) error {
		outerSeen <- seen{r.Authority, r.Header.Get(hbone.HeaderForwardedNetwork)}
		up, err := net.Dial("tcp", dst.String())
		if err != nil {
			return err
		}
		c, err := r.Accept(nil)
		if err != nil {
			up.Close()
			return err
		}
		go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
		io.Copy(c, up)
		up.Close()
		return c.Close()
	})
	pool, err := hbone.NewPool(hbone.PoolOptions{Credentials: func(context.Context, spiffeid.ID) (*hbone.Credentials, error) { return client, nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })

	wl := func(ns, sa string) *state.Workload {
		return &state.Workload{UID: sa, Name: sa, Namespace: ns, ServiceAccount: sa, TrustDomain: "cluster.local"}
	}
	plan := &route.Plan{Path: route.PathDirect, Protocol: route.ProtocolHBONE, NextHop: gw, Upstream: wl("app", "server"),
		Gateway:         &state.GatewayAddress{Address: state.NetworkAddress{Network: "net2", Addr: gw.Addr()}, HBONEMTLSPort: gw.Port()},
		GatewayUpstream: wl("istio-system", "eastwest"), Host: "svc.app.svc.cluster.local", HostPort: 80}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Upstream(ctx, plan, pool, &net.Dialer{}, hbone.Target{Source: client.ID}, "net1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(b) != "inner ok" {
		t.Fatalf("read %q, %v", b, err)
	}
	if o, i := <-outerSeen, <-innerSeen; o != (seen{"svc.app.svc.cluster.local:80", ""}) || i != (seen{"svc.app.svc.cluster.local:80", "net1"}) {
		t.Errorf("outer saw %+v, inner %+v", o, i)
	}
	// The gateway's identity is only accepted for the outer hop, the destination's only for the inner.
	swapped := *plan
	swapped.Upstream, swapped.GatewayUpstream = plan.GatewayUpstream, plan.Upstream
	if c, err := Upstream(ctx, &swapped, pool, &net.Dialer{}, hbone.Target{Source: client.ID}, "net1"); err == nil {
		c.Close()
		t.Error("swapped identities were accepted")
	}
}
