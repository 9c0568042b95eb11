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

// TestUpstream opens both kinds of next hop over loopback: plain TCP, and an HBONE stream to a real
// hbone.Server whose identity must be one the plan expects.
func TestUpstream(t *testing.T) {
	tu.CheckGoroutines(t)
	ca, err := tu.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	client := spiffeid.RequireFromString("spiffe://cluster.local/ns/app/sa/client")
	server := spiffeid.RequireFromString("spiffe://cluster.local/ns/app/sa/server")
	creds := func(id spiffeid.ID) *hbone.Credentials {
		cert, roots, err := ca.Issue(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return &hbone.Credentials{ID: id, Certificate: cert, Roots: roots}
	}
	srvCreds, cliCreds := creds(server), creds(client)
	authority := make(chan string, 2)
	srv := &hbone.Server{
		Credentials: func(context.Context, netip.AddrPort) (*hbone.Credentials, error) { return srvCreds, nil },
		Handler: hbone.HandlerFunc(func(_ context.Context, r *hbone.Request) error {
			authority <- r.Authority
			c, err := r.Accept(nil)
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = io.WriteString(c, "ok")
			return err
		}),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	pool, err := hbone.NewPool(hbone.PoolOptions{
		Credentials: func(context.Context, spiffeid.ID) (*hbone.Credentials, error) { return cliCreds, nil },
		DialTCP: func(ctx context.Context, _ netip.Addr, dst netip.AddrPort) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", dst.String())
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pool.Close()
		cancel()
		srv.Close()
		<-served
	})

	hop := netip.MustParseAddrPort(ln.Addr().String())
	up := &state.Workload{UID: "u", Name: "server", Namespace: "app", ServiceAccount: "server", TrustDomain: "cluster.local",
		Addresses: []netip.Addr{hop.Addr()}}
	plan := &route.Plan{Protocol: route.ProtocolHBONE, NextHop: hop, Authority: netip.MustParseAddrPort("10.1.0.1:8080"), Upstream: up}
	if got := ExpectedIdentities(plan); len(got) != 1 || got[0] != server {
		t.Fatalf("expected identities %v", got)
	}
	c, err := Upstream(ctx, plan, pool, &net.Dialer{}, hbone.Target{Source: client})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(b) != "ok" || <-authority != "10.1.0.1:8080" {
		t.Errorf("HBONE upstream read %q, %v", b, err)
	}
	// A server with another identity than the plan expects is refused.
	wrong := *plan
	wrong.Upstream = &state.Workload{UID: "v", Name: "other", Namespace: "app", ServiceAccount: "other", TrustDomain: "cluster.local"}
	if c, err := Upstream(ctx, &wrong, pool, &net.Dialer{}, hbone.Target{Source: client}); err == nil {
		c.Close()
		t.Error("a server presenting an unexpected identity was accepted")
	}

	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcpLn.Close()
	go func() {
		if c, err := tcpLn.Accept(); err == nil {
			io.WriteString(c, "tcp")
			c.Close()
		}
	}()
	tcp := &route.Plan{Protocol: route.ProtocolTCP, NextHop: netip.MustParseAddrPort(tcpLn.Addr().String())}
	c, err = Upstream(ctx, tcp, pool, &net.Dialer{}, hbone.Target{Source: client})
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(c)
	c.Close()
	if string(b) != "tcp" {
		t.Errorf("TCP upstream read %q", b)
	}
}
