package agent_test

import (
	"context"
	"errors"
	"fmt"
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
	wapi "github.com/ambit-mesh/ambit/xdsclient/workloadapi"
)

// TestHostnameAuthority: inbound HBONE with a "<service hostname>:<port>" authority (the inner CONNECT of double
// HBONE, relayed by an east-west gateway) reaches the local pod on the service's target port when the pod is an
// endpoint of that service; an unknown hostname or a service the pod does not back is refused with 400, a port
// the service does not have with 503, and nothing reaches the pod then.
func TestHostnameAuthority(t *testing.T) {
	tu.CheckGoroutines(t)
	accepted := make(chan struct{}, 16)
	app := startEchoApp(t, accepted)
	appPort := uint32(app.Addr().(*net.TCPAddr).Port)

	srv := xdstest.Start(t, xdstest.Options{TypeURLs: []string{xds.AddressTypeURL, xds.AuthorizationTypeURL}})
	inSvc := func(w *wapi.Workload) {
		w.Services = map[string]*wapi.PortList{xdstest.ServiceName("app", "svc"): {Ports: []*wapi.Port{{ServicePort: 80, TargetPort: appPort}}}}
	}
	srv.Set(xds.AddressTypeURL, map[string]proto.Message{
		xdstest.PodUID("app", "local"):      xdstest.Pod("app", "local", "127.0.0.1", inSvc),
		xdstest.ServiceName("app", "svc"):   xdstest.Service("app", "svc", "10.96.0.20"),
		xdstest.ServiceName("app", "other"): xdstest.Service("app", "other", "10.96.0.21"),
	})
	srv.Set(xds.AuthorizationTypeURL, map[string]proto.Message{})
	caDir := filepath.Join(t.TempDir(), "ca")
	ca, err := identity.NewLocalCA(identity.LocalCAOptions{Dir: caDir})
	if err != nil {
		t.Fatal(err)
	}
	a := startLocalAgent(t, func(c *agent.Config) {
		c.CADir, c.XDSAddress, c.XDSPlaintext, c.PodName, c.PodNamespace = caDir, srv.Addr, true, "ztunnel", "istio-system"
		c.TokenFile = ""
	})
	tu.WaitFor(t, 20*time.Second, "agent ready", func() bool { ok, _ := a.Ready(); return ok })

	client := spiffeid.RequireFromString("spiffe://cluster.local/ns/app/sa/client")
	pool := testPool(t, ca)
	connect := func(authority string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return pool.Dial(ctx, hbone.Target{NextHop: netip.MustParseAddrPort(a.hbone), Authority: authority,
			Source: client, Expected: []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/app/sa/local")}})
	}

	for _, tc := range []struct {
		authority string
		code      int
	}{
		{"unknown.app.svc.cluster.local:80", http.StatusBadRequest},
		{"other.app.svc.cluster.local:80", http.StatusBadRequest},
		{"svc.app.svc.cluster.local:81", http.StatusServiceUnavailable},
	} {
		c, err := connect(tc.authority)
		var se *hbone.StatusError
		if !errors.As(err, &se) || se.Code != tc.code {
			if c != nil {
				c.Close()
			}
			t.Errorf("CONNECT %s: %v, want %d", tc.authority, err, tc.code)
		}
	}
	select {
	case <-accepted:
		t.Fatal("a refused CONNECT reached the pod")
	default:
	}
	c, err := connect("svc.app.svc.cluster.local:80")
	if err != nil {
		t.Fatalf("CONNECT by hostname: %v", err)
	}
	defer c.Close()
	if _, err := fmt.Fprint(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("echo %q, %v", buf, err)
	}
}
