package dial

import (
	"context"
	"errors"
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
	authority := make(chan string, 16) // a stream that should not exist must not block the server
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
	if got, err := ExpectedIdentities(plan); err != nil || len(got) != 1 || got[0] != server {
		t.Fatalf("expected identities %v, %v", got, err)
	}
	c, err := Upstream(ctx, plan, pool, &net.Dialer{}, hbone.Target{Source: client}, "")
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
	if c, err := Upstream(ctx, &wrong, pool, &net.Dialer{}, hbone.Target{Source: client}, ""); err == nil {
		c.Close()
		t.Error("a server presenting an unexpected identity was accepted")
	}

	// Fail closed (issue 14 item 8): an upstream identity that does not parse (an upper-case trust
	// domain) or no identity at all never means "anyone in the trust domain": nothing is dialled.
	for name, p := range map[string]route.Plan{
		"invalid upstream identity": {Protocol: route.ProtocolHBONE, NextHop: hop, Authority: plan.Authority,
			Upstream: &state.Workload{UID: "w", Name: "server", Namespace: "app", ServiceAccount: "server", TrustDomain: "Cluster.Local"}},
		"invalid upstream identity with a valid SAN": {Protocol: route.ProtocolHBONE, NextHop: hop, Authority: plan.Authority,
			Upstream: &state.Workload{UID: "w", Name: "server", Namespace: "app", ServiceAccount: "server", TrustDomain: "Cluster.Local"},
			SANs:     []string{server.String()}},
		"no identity":         {Protocol: route.ProtocolHBONE, NextHop: hop, Authority: plan.Authority},
		"only an invalid SAN": {Protocol: route.ProtocolHBONE, NextHop: hop, Authority: plan.Authority, SANs: []string{"spiffe://Cluster.Local/x"}},
	} {
		c, err := Upstream(ctx, &p, pool, &net.Dialer{}, hbone.Target{Source: client}, "")
		if err == nil {
			c.Close()
			t.Errorf("%s: dialled and accepted the server", name)
		} else if !errors.Is(err, ErrNoIdentity) {
			t.Errorf("%s: error %v, want ErrNoIdentity", name, err)
		}
	}
	select {
	case a := <-authority:
		t.Errorf("a plan without a valid expected identity reached the server (authority %s)", a)
	default:
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
	c, err = Upstream(ctx, tcp, pool, &net.Dialer{}, hbone.Target{Source: client}, "")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(c)
	c.Close()
	if string(b) != "tcp" {
		t.Errorf("TCP upstream read %q", b)
	}
}
