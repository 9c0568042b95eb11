package agent_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/config/xds"
	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/test/xdstest"
)

// TestNoServiceBeforePolicy: until istiod's first Authorization response has arrived (it may hold a
// DENY), the agent is not ready and refuses inbound HBONE with 503 rather than forwarding it; once
// it arrives, the agent turns ready and serves (issue 14 item 4).
func TestNoServiceBeforePolicy(t *testing.T) {
	tu.CheckGoroutines(t)
	srv := xdstest.Start(t, xdstest.Options{TypeURLs: []string{xds.AddressTypeURL, xds.AuthorizationTypeURL},
		Hold: []string{xds.AuthorizationTypeURL}})
	srv.Set(xds.AddressTypeURL, map[string]proto.Message{xdstest.PodUID("app", "local"): xdstest.Pod("app", "local", "127.0.0.1")})
	// The pod's application: an echo.
	app := startEchoApp(t, nil)

	caDir := filepath.Join(t.TempDir(), "ca")
	ca, err := identity.NewLocalCA(identity.LocalCAOptions{Dir: caDir})
	if err != nil {
		t.Fatal(err)
	}
	a := startLocalAgent(t, func(c *agent.Config) {
		c.CADir, c.XDSAddress, c.XDSPlaintext, c.PodName, c.PodNamespace = caDir, srv.Addr, true, "ztunnel", "istio-system"
		c.TokenFile = ""
	})
	tu.WaitFor(t, 20*time.Second, "workload from istiod", func() bool { w, _, _ := a.Store.Counts(); return w == 1 })

	client := spiffeid.RequireFromString("spiffe://cluster.local/ns/app/sa/client")
	pool := testPool(t, ca)
	connect := func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return pool.Dial(ctx, hbone.Target{NextHop: netip.MustParseAddrPort(a.hbone), Authority: app.Addr().String(),
			Source: client, Expected: []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/app/sa/local")}})
	}

	if code, body := get(t, "http://"+a.ready+"/healthz/ready"); code != http.StatusInternalServerError {
		t.Errorf("readiness before Authorization: %d %q, want 500", code, body)
	}
	c, err := connect()
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable {
		if c != nil {
			c.Close()
		}
		t.Fatalf("CONNECT before Authorization arrived: %v, want 503", err)
	}

	srv.Set(xds.AuthorizationTypeURL, map[string]proto.Message{})
	srv.Release(xds.AuthorizationTypeURL)
	tu.WaitFor(t, 20*time.Second, "agent ready", func() bool { ok, _ := a.Ready(); return ok })
	if code, body := get(t, "http://"+a.ready+"/healthz/ready"); code != http.StatusOK {
		t.Errorf("readiness after Authorization: %d %q, want 200", code, body)
	}
	c, err = connect()
	if err != nil {
		t.Fatalf("CONNECT once ready: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("echo %q, %v", buf, err)
	}
}
