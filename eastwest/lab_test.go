package eastwest_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/eastwest"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/meshlab"
	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// The lab's two networks: node0 (pods 10.244.0.0/24) is network1, node1 (10.244.1.0/24) network2. The
// test removes the routes between their pod ranges, so that only the east-west gateway's address,
// 172.30.0.201 on the fabric (network2's LoadBalancer address), is reachable across.
const gatewayIP = "172.30.0.201"

// multiNetworkYAML: namespace app (network1) with client (n0-p0); service svc (10.96.0.10:80 -> http)
// whose only endpoint is server-b (n1-p0, labelled network2, service account sa); network2's east-west
// Gateway and its instance ew-0 at the gateway address.
func multiNetworkYAML(l *lab.Lab, serverSA string) string {
	n0, n1 := l.Nodes[0].Pods, l.Nodes[1].Pods
	return `apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient, topology.istio.io/network: network1}}
---
apiVersion: v1
kind: Namespace
metadata: {name: istio-system, labels: {topology.istio.io/network: network2}}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: app}
spec: {clusterIP: 10.96.0.10, selector: {app: server}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: eastwest, namespace: istio-system, labels: {topology.istio.io/network: network2}}
spec:
  gatewayClassName: istio-east-west
  listeners: [{name: mesh, port: 15008, protocol: HBONE, tls: {mode: Terminate, options: {gateway.istio.io/tls-terminate-mode: ISTIO_MUTUAL}}}]
status: {addresses: [{type: IPAddress, value: ` + gatewayIP + `}]}
---
apiVersion: v1
kind: Pod
metadata: {name: ew-0, namespace: istio-system, labels: {gateway.networking.k8s.io/gateway-name: eastwest}}
spec: {nodeName: gateway-host, serviceAccountName: eastwest, containers: [{name: c, image: c}]}
status: {podIP: ` + gatewayIP + `}
` + meshlab.Pod("client", "app", "client", "", n0[0]) +
		strings.Replace(meshlab.Pod("server-b", "app", "server", ", topology.istio.io/network: network2", n1[0]),
			"serviceAccountName: server-b", "serviceAccountName: "+serverSA, 1)
}

func ip(t *testing.T, ns lab.NS, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", ns.Name}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v in %s: %v\n%s", args, ns.Name, err, out)
	}
}

// capture records every frame on every interface of a namespace (AF_PACKET, ETH_P_ALL) until stopped.
type capture struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	fd   int
	done chan struct{}
}

func startCapture(t *testing.T, ns lab.NS) *capture {
	t.Helper()
	c := &capture{done: make(chan struct{})}
	const ethPAll = 0x0300 // htons(ETH_P_ALL)
	err := ns.Do(func() error {
		fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, ethPAll)
		c.fd = fd
		return err
	})
	if err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	tv := syscall.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := syscall.SetsockoptTimeval(c.fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	go func() {
		defer close(c.done)
		b := make([]byte, 1<<16)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, _, err := syscall.Recvfrom(c.fd, b, 0)
			if err != nil {
				continue // the receive timeout, to look at stop
			}
			c.mu.Lock()
			c.buf.Write(b[:n])
			c.buf.WriteByte(0) // no marker spans two frames
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-c.done
		syscall.Close(c.fd)
	})
	return c
}

func (c *capture) contains(s string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Contains(c.buf.Bytes(), []byte(s))
}

// exchange sends line from a pod to addr and returns the server's first answer line and the echo.
func exchange(t *testing.T, from *lab.Pod, addr, line string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := from.NS.Dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, line+"\n"+line+"\n"); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	hello, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	echo, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if strings.TrimSpace(echo) != line {
		return "", fmt.Errorf("echo %q", echo)
	}
	return strings.TrimSpace(hello), nil
}

// TestDoubleHBONE: a pod on network1 reaches a service whose only endpoint is on network2, whose pod
// addresses it cannot route to, through network2's east-west gateway (ambit eastwest): double HBONE.
// Identities are checked end to end (the destination's agent sees the client's identity; a destination
// presenting another identity than the client expects fails the connection), and the gateway never sees
// plaintext (a packet capture of its namespace never holds the payload).
func TestDoubleHBONE(t *testing.T) {
	tu.RequireRoot(t)
	for _, mode := range []string{agent.CaptureEBPF, agent.CaptureTPROXY} {
		t.Run(mode, func(t *testing.T) { testDoubleHBONE(t, mode) })
	}
}

func testDoubleHBONE(t *testing.T, mode string) {
	dir := t.TempDir()
	configB := filepath.Join(dir, "network2.yaml")
	var l *lab.Lab
	yaml := func(lb *lab.Lab) string {
		l = lb
		y := multiNetworkYAML(lb, "server")
		if err := os.WriteFile(configB, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		return y
	}
	c := meshlab.StartCluster(t, 2, 2, mode, yaml, func(i int, cfg *agent.Config) {
		cfg.Network = fmt.Sprintf("network%d", i+1)
		cfg.ConnectTimeout = 3 * time.Second
		if i == 1 {
			cfg.ConfigFiles = []string{configB} // network2's view, changed below to a wrong identity
		}
	})
	n0, n1 := l.Nodes[0], l.Nodes[1]
	client, server := n0.Pods[0], n1.Pods[0]
	meshlab.Serve(t, server, 8080)

	// Two networks: no route between the pod ranges, the gateway's address on the fabric, and a route
	// from the gateway to its own network's pods only.
	ip(t, n0.NS, "route", "del", "10.244.1.0/24")
	ip(t, n1.NS, "route", "del", "10.244.0.0/24")
	ip(t, l.Fabric, "addr", "add", gatewayIP+"/24", "dev", "br0")
	ip(t, l.Fabric, "route", "add", "10.244.1.0/24", "via", n1.IP.String())
	if conn, err := n0.NS.Dial(t.Context(), "tcp", server.IP.String()+":8080"); err == nil {
		conn.Close()
		t.Fatal("network1 can route to network2's pods: the lab is not multi-network")
	}

	var gwLog meshlab.SyncBuffer
	log := slog.New(slog.NewTextHandler(io.MultiWriter(&gwLog, meshlab.TestWriter{T: t, Node: 9}), nil))
	gw, err := eastwest.New(eastwest.Config{Name: "eastwest", Namespace: "istio-system", Network: "network2",
		ConfigFiles: []string{configB}, ConfigPoll: 100 * time.Millisecond, CADir: filepath.Join(c.Dir, "ca"),
		NetNS: l.Fabric.Path(), HBONEAddr: netip.MustParseAddrPort(gatewayIP + ":15008")}, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway: %v", err)
		}
	})
	tu.WaitFor(t, 20*time.Second, "gateway ready", func() bool { ok, _ := gw.Ready(); return ok })

	capt := startCapture(t, l.Fabric)
	const marker = "PLAINTEXT-MARKER-7f3a9c"
	got, err := exchange(t, client, "10.96.0.10:80", marker)
	if err != nil {
		t.Fatalf("client -> svc through the gateway: %v\nnode0:\n%s\nnode1:\n%s\ngateway:\n%s", err, c.Logs[0], c.Logs[1], gwLog.String())
	}
	if !strings.HasPrefix(got, server.Name+" "+gatewayIP+":") {
		t.Errorf("answer %q: want %s (server-b), reached from the gateway's address", got, server.Name)
	}
	// Positive control: plaintext crossing the gateway's namespace is seen by the capture.
	ctl, err := n1.NS.Listen(t.Context(), "tcp", n1.IP.String()+":9999")
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	go func() {
		if a, err := ctl.Accept(); err == nil {
			io.Copy(io.Discard, a)
			a.Close()
		}
	}()
	cc, err := l.Fabric.Dial(t.Context(), "tcp", n1.IP.String()+":9999")
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(cc, "CONTROL-MARKER-1b2c")
	cc.Close()
	tu.WaitFor(t, 10*time.Second, "the capture sees plaintext", func() bool { return capt.contains("CONTROL-MARKER-1b2c") })
	if capt.contains(marker) {
		t.Error("the payload crossed the gateway's namespace in plaintext")
	}

	// End to end: the destination's agent delivered a connection from the client's identity (the
	// inner TLS), addressed by hostname; the gateway accounted its relay with the client's identity.
	tu.WaitFor(t, 10*time.Second, "access logs", func() bool {
		return strings.Contains(c.Logs[1].String(), "src.identity=spiffe://cluster.local/ns/app/sa/client") &&
			strings.Contains(gwLog.String(), "direction=gateway")
	})
	for _, want := range []string{"dst.hbone_addr=svc.app.svc.cluster.local:80", "dst.workload=server-b"} {
		if !strings.Contains(c.Logs[1].String(), want) {
			t.Errorf("node1's access log lacks %s:\n%s", want, c.Logs[1])
		}
	}
	// x-forwarded-network: the TCP peer of node1's agent is the gateway, which is not the source.
	if strings.Contains(c.Logs[1].String(), "src.workload=ew-0") {
		t.Errorf("node1 took the gateway for the source workload:\n%s", c.Logs[1])
	}
	if !strings.Contains(c.Logs[0].String(), "dst.hbone_addr=svc.app.svc.cluster.local:80") {
		t.Errorf("node0's access log lacks the hostname authority:\n%s", c.Logs[0])
	}
	gl := gwLog.String()
	for _, want := range []string{"src.identity=spiffe://cluster.local/ns/app/sa/client", "dst.hbone_addr=svc.app.svc.cluster.local:80",
		"upstream=" + server.IP.String() + ":15008"} {
		if !strings.Contains(gl, want) {
			t.Errorf("gateway's access log lacks %s:\n%s", want, gl)
		}
	}
	if n := counter(t, gw, "istio_tcp_connections_opened_total", "gateway"); n < 1 {
		t.Errorf("gateway opened connections %v, want >= 1", n)
	}

	// A wrong identity: network2 now says the server runs as sa/impostor, so its agent presents that
	// certificate; the client's agent still expects sa/server and the inner handshake fails.
	if err := os.WriteFile(configB, []byte(multiNetworkYAML(l, "impostor")), 0o600); err != nil {
		t.Fatal(err)
	}
	tu.WaitFor(t, 10*time.Second, "network2 applies the new identity", func() bool {
		w := c.Agents[1].Store.WorkloadByAddr(state.NetworkAddress{Network: "network2", Addr: server.IP})
		return w != nil && w.ServiceAccount == "impostor"
	})
	if got, err := exchange(t, client, "10.96.0.10:80", marker); err == nil {
		t.Fatalf("a destination with the wrong identity was reached: %q", got)
	}
	tu.WaitFor(t, 10*time.Second, "the client's agent reports the handshake failure", func() bool {
		return strings.Contains(c.Logs[0].String(), "tls handshake")
	})
	if capt.contains(marker) {
		t.Error("the payload crossed the gateway's namespace in plaintext")
	}
}

func counter(t *testing.T, g *eastwest.Gateway, name, reporter string) float64 {
	t.Helper()
	mfs, err := g.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reporter" && l.GetValue() == reporter {
					total += m.GetCounter().GetValue()
				}
			}
		}
	}
	return total
}
