package waypoint_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/rest"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/waypoint"
	"github.com/ambit-mesh/ambit/waypoint/kube"
)

// localWaypointYAML: waypoint wp (instance at 127.0.0.1) and service web bound to it on HTTP port 80.
const localWaypointYAML = `apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: app}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status:
  addresses: [{type: IPAddress, value: 10.96.0.99}, {type: Hostname, value: wp.app.svc.cluster.local}]
---
apiVersion: v1
kind: Service
metadata: {name: wp, namespace: app, labels: {gateway.istio.io/managed: istio.io-mesh-controller}}
spec: {clusterIP: 10.96.0.99, selector: {gateway.networking.k8s.io/gateway-name: wp}, ports: [{name: mesh, port: 15008}]}
---
apiVersion: v1
kind: Pod
metadata: {name: wp-0, namespace: app, labels: {gateway.networking.k8s.io/gateway-name: wp, istio.io/dataplane-mode: none}}
spec: {nodeName: node1, serviceAccountName: wp, containers: [{name: c, image: c}]}
status: {podIP: 127.0.0.1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app, labels: {istio.io/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
`

// localWaypoint is a waypoint run in-process in the test's network namespace on loopback ports.
type localWaypoint struct {
	*waypoint.Waypoint
	hbone, metrics, ready string
}

// kubeL7 makes a waypoint take its L7 configuration from the API server through client.
func kubeL7(client dynamic.Interface) func(*waypoint.Config) {
	return func(c *waypoint.Config) { c.L7Source, c.KubeClient = waypoint.L7SourceKubernetes, client }
}

// startLocalWaypoint starts waypoint app/wp on free loopback ports with dir/mesh.yaml as its
// configuration, adjusted by mutate; it does not wait for readiness.
func startLocalWaypoint(t *testing.T, dir string, mutate func(*waypoint.Config)) *localWaypoint {
	t.Helper()
	ports, err := tu.FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	at := func(i int) netip.AddrPort { return netip.MustParseAddrPort(fmt.Sprintf("127.0.0.1:%d", ports[i])) }
	cfg := waypoint.Config{Name: "wp", Namespace: "app", PodIP: netip.MustParseAddr("127.0.0.1"),
		ConfigFiles: []string{filepath.Join(dir, "mesh.yaml")}, CADir: filepath.Join(dir, "ca"),
		HBONEAddr: at(0), MetricsAddr: at(1), ReadinessAddr: at(2)}
	mutate(&cfg)
	w, err := waypoint.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := w.Run(ctx); err != nil {
			t.Errorf("waypoint: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return &localWaypoint{Waypoint: w, hbone: at(0).String(), metrics: at(1).String(), ready: at(2).String()}
}

// localWaypointSetup writes the configuration and the CA of local waypoints into a new directory and
// returns it with a function that opens a CONNECT stream to authority through a waypoint, as a client
// workload of namespace app.
func localWaypointSetup(t *testing.T) (string, func(*localWaypoint, string) (net.Conn, error)) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(localWaypointYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewLocalCA(identity.LocalCAOptions{Dir: filepath.Join(dir, "ca")})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := hbone.NewPool(hbone.PoolOptions{Credentials: func(ctx context.Context, id spiffeid.ID) (*hbone.Credentials, error) {
		c, err := ca.Issue(ctx, id)
		if err != nil {
			return nil, err
		}
		return &hbone.Credentials{ID: c.ID(), Certificate: *c.TLSCertificate(), Roots: c.RootPool()}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	return dir, func(w *localWaypoint, authority string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return pool.Dial(ctx, hbone.Target{NextHop: netip.MustParseAddrPort(w.hbone), Authority: authority,
			Source: spiffeid.RequireFromString("spiffe://cluster.local/ns/app/sa/client")})
	}
}

// TestWaypointStreamIdleTimeout: with --stream-idle-timeout, an HBONE stream to an HTTP port that moves
// no data is reset, counted in /metrics, and its goroutines end (issue 14 item 3).
func TestWaypointStreamIdleTimeout(t *testing.T) {
	tu.RequireRoot(t) // transparent listeners
	tu.CheckGoroutines(t)
	dir, dial := localWaypointSetup(t)
	w := startLocalWaypoint(t, dir, func(c *waypoint.Config) { c.StreamIdleTimeout = 200 * time.Millisecond })
	tu.WaitFor(t, 20*time.Second, "waypoint ready", func() bool { ok, _ := w.Ready(); return ok })
	c, err := dial(w, "10.96.0.10:80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
		t.Fatalf("idle stream: read %d, %v; want it reset", n, err)
	}
	// The reset reaches the client before the server's handler has returned and counted it: poll.
	want := `ambit_hbone_stream_idle_timeouts_total{name="waypoint",side="server"} 1`
	tu.WaitFor(t, 10*time.Second, "the idle reset in /metrics", func() bool {
		resp, err := http.Get("http://" + w.metrics + "/metrics")
		if err != nil {
			return false
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return strings.Contains(string(page), want)
	})
}

// TestWaypointReadyAfterPolicySync: a waypoint whose L7 policies come from the API server is not ready,
// and answers 503 to every stream, until its informers have synced: with the API server down it never
// turns ready and never serves with no policy; with it up, it does (issue 14 item 4).
func TestWaypointReadyAfterPolicySync(t *testing.T) {
	tu.RequireRoot(t) // transparent listeners
	tu.CheckGoroutines(t)
	dir, dial := localWaypointSetup(t)
	connect := func(w *localWaypoint) error {
		c, err := dial(w, "10.96.0.10:80")
		if err == nil {
			c.Close()
		}
		return err
	}
	readiness := func(w *localWaypoint) int {
		resp, err := http.Get("http://" + w.ready + "/healthz/ready")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	down, err := dynamic.NewForConfig(&rest.Config{Host: "http://127.0.0.1:1", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	unsynced := startLocalWaypoint(t, dir, kubeL7(down))
	up := startLocalWaypoint(t, dir, kubeL7(dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), kube.ListKinds)))
	tu.WaitFor(t, 20*time.Second, "waypoint with the API server up ready", func() bool { ok, _ := up.Ready(); return ok })
	if err := connect(up); err != nil {
		t.Fatalf("CONNECT to a synced waypoint: %v", err)
	}
	if code := readiness(up); code != http.StatusOK {
		t.Errorf("synced waypoint readiness %d, want 200", code)
	}

	// The API server stays down: by now the other waypoint has had all the time the synced one needed.
	if ok, pending := unsynced.Ready(); ok || !strings.Contains(strings.Join(pending, ","), "L7 policy") {
		t.Errorf("waypoint without the API server: ready %v, pending %v; want not ready, pending L7 policy", ok, pending)
	}
	if code := readiness(unsynced); code != http.StatusInternalServerError {
		t.Errorf("unsynced waypoint readiness %d, want 500", code)
	}
	var se *hbone.StatusError
	if err := connect(unsynced); !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable {
		t.Errorf("CONNECT to a waypoint without its L7 policy: %v, want 503", err)
	}
}
