package waypoint_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/test/lab"
	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/waypoint"
)

// startWaypoint runs `ambit waypoint` in-process inside pod p's network namespace.
func startWaypoint(t *testing.T, c *cluster, p *lab.Pod, ns, name string) *syncBuffer {
	t.Helper()
	buf := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(buf, testWriter{T: t, Node: 100 + p.Index}), nil))
	w, err := waypoint.New(waypoint.Config{
		Name: name, Namespace: ns, PodIP: p.IP, ConfigFiles: []string{c.Config}, ConfigPoll: 100 * time.Millisecond,
		CADir: filepath.Join(filepath.Dir(c.Config), "ca"), NetNS: p.NS.Path(),
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := w.Run(ctx); err != nil {
			t.Errorf("waypoint %s: %v", name, err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	tu.WaitFor(t, 10*time.Second, "waypoint ready", func() bool { ok, _ := w.Ready(); return ok })
	return buf
}

// waypointYAML returns a Gateway (ready, with status addresses), its Service and one instance pod.
func waypointYAML(ns, name, forType, allowed, vip string, p *lab.Pod) string {
	ar := ""
	if allowed != "" {
		ar = fmt.Sprintf(", allowedRoutes: {namespaces: {from: %s}}", allowed)
	}
	return fmt.Sprintf(`---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: %[2]s, namespace: %[1]s, labels: {istio.io/waypoint-for: %[3]s}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE%[4]s}]
status:
  addresses: [{type: IPAddress, value: %[5]s}, {type: Hostname, value: %[2]s.%[1]s.svc.cluster.local}]
---
apiVersion: v1
kind: Service
metadata: {name: %[2]s, namespace: %[1]s, labels: {gateway.istio.io/managed: istio.io-mesh-controller}}
spec: {clusterIP: %[5]s, selector: {gateway.networking.k8s.io/gateway-name: %[2]s}, ports: [{name: mesh, port: 15008}]}
---
apiVersion: v1
kind: Pod
metadata: {name: %[2]s-0, namespace: %[1]s, labels: {gateway.networking.k8s.io/gateway-name: %[2]s, istio.io/dataplane-mode: none}}
spec: {nodeName: node%[6]d, serviceAccountName: %[2]s, containers: [{name: c, image: c}]}
status: {podIP: %[7]s}
`, ns, name, forType, ar, vip, p.Node.Index, p.IP)
}

// TestAgentWaypoints walks the data-plane table of docs/waypoint-rules.md §8.2 through real waypoints: the
// pod that answers reports the client address it saw, which is the waypoint's when the connection
// transited one.
func TestAgentWaypoints(t *testing.T) {
	var wpPod, pwpPod, egressPod *lab.Pod
	base := func(svcLabels, serverBLabels string) func(*lab.Lab) string {
		return func(l *lab.Lab) string {
			n0, n1 := l.Nodes[0].Pods, l.Nodes[1].Pods
			wpPod, pwpPod, egressPod = n0[2], n1[2], n1[1]
			return `apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: infra}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: app, labels: {` + svcLabels + `}}
spec: {clusterIP: 10.96.0.10, selector: {app: server}, ports: [{name: http, port: 80, targetPort: http}]}
` + pod("client", "app", "client", "", n0[0]) + pod("server-a", "app", "server", "", n0[1]) +
				pod("server-b", "app", "server", serverBLabels, n1[0]) +
				waypointYAML("app", "wp", "service", "", "10.96.1.1", wpPod) +
				waypointYAML("app", "pwp", "workload", "", "10.96.1.2", pwpPod) +
				waypointYAML("infra", "egress", "service", "All", "10.96.1.3", egressPod)
		}
	}
	c := startCluster(t, 2, 3, agent.CaptureEBPF, base("", ""))
	n0, n1 := c.Lab.Nodes[0].Pods, c.Lab.Nodes[1].Pods
	client, serverA, serverB := n0[0], n0[1], n1[0]
	serve(t, serverA, 8080)
	serve(t, serverB, 8080)
	wpLog := startWaypoint(t, c, wpPod, "app", "wp")
	pwpLog := startWaypoint(t, c, pwpPod, "app", "pwp")
	egressLog := startWaypoint(t, c, egressPod, "infra", "egress")

	// seen returns, for each answer to n calls, the server and the client IP it saw.
	seen := func(t *testing.T, addr string, n int) map[string]bool {
		t.Helper()
		out := map[string]bool{}
		for range n {
			got, err := call(t, client, addr)
			if err != nil {
				t.Fatalf("call %s: %v", addr, err)
			}
			f := strings.Fields(got)
			ip, _, _ := strings.Cut(f[1], ":")
			out[f[0]+" from "+ip] = true
		}
		return out
	}
	from := func(p *lab.Pod, via *lab.Pod) string { return p.Name + " from " + via.IP.String() }
	apply := func(t *testing.T, svcLabels, serverBLabels string) {
		t.Helper()
		gen := c.Agents[0].Store.Generation()
		c.Rewrite(t, base(svcLabels, serverBLabels)(c.Lab))
		for _, a := range c.Agents {
			tu.WaitFor(t, 10*time.Second, "config applied", func() bool { return a.Store.Generation() > gen })
		}
		time.Sleep(300 * time.Millisecond) // waypoints poll the same file
	}

	t.Run("no waypoint: direct", func(t *testing.T) {
		got := seen(t, "10.96.0.10:80", 20)
		if !got[from(serverA, client)] || !got[from(serverB, client)] || len(got) != 2 {
			t.Errorf("answers %v", got)
		}
	})
	t.Run("D1 service waypoint takes service-addressed traffic", func(t *testing.T) {
		apply(t, "istio.io/use-waypoint: wp", "")
		got := seen(t, "10.96.0.10:80", 20)
		if !got[from(serverA, wpPod)] || !got[from(serverB, wpPod)] || len(got) != 2 {
			t.Errorf("answers %v, want both servers seeing the waypoint %s", got, wpPod.IP)
		}
		if !strings.Contains(wpLog.String(), "dst.hbone_addr=") {
			t.Error("waypoint logged no forwarded connection")
		}
	})
	t.Run("D4 service waypoint is not used for pod IPs", func(t *testing.T) {
		got := seen(t, serverB.IP.String()+":8080", 3)
		if !got[from(serverB, client)] || len(got) != 1 {
			t.Errorf("answers %v", got)
		}
	})
	t.Run("D3 pod waypoint takes workload-addressed traffic", func(t *testing.T) {
		apply(t, "", ", istio.io/use-waypoint: pwp")
		got := seen(t, serverB.IP.String()+":8080", 3)
		if !got[from(serverB, pwpPod)] || len(got) != 1 {
			t.Errorf("answers %v, want server-b seeing the pod waypoint %s", got, pwpPod.IP)
		}
		if !strings.Contains(pwpLog.String(), "dst.hbone_addr="+serverB.IP.String()+":8080") {
			t.Error("pod waypoint logged no forwarded connection")
		}
	})
	t.Run("D2 pod waypoint is not used for the service VIP", func(t *testing.T) {
		got := seen(t, "10.96.0.10:80", 20)
		if !got[from(serverB, client)] || !got[from(serverA, client)] || len(got) != 2 {
			t.Errorf("answers %v", got)
		}
	})
	t.Run("no double transit with both waypoints", func(t *testing.T) {
		apply(t, "istio.io/use-waypoint: wp", ", istio.io/use-waypoint: pwp")
		got := seen(t, "10.96.0.10:80", 20)
		if !got[from(serverB, wpPod)] || !got[from(serverA, wpPod)] || len(got) != 2 {
			t.Errorf("answers %v: service traffic must transit wp only", got)
		}
	})
	t.Run("cross-namespace waypoint with allowedRoutes All", func(t *testing.T) {
		apply(t, "istio.io/use-waypoint: egress, istio.io/use-waypoint-namespace: infra", "")
		got := seen(t, "10.96.0.10:80", 10)
		for k := range got {
			if !strings.HasSuffix(k, " from "+egressPod.IP.String()) {
				t.Errorf("answer %q did not transit infra/egress", k)
			}
		}
		if !strings.Contains(egressLog.String(), "dst.service=svc.app.svc.cluster.local") {
			t.Error("egress waypoint logged no connection for svc")
		}
	})
}
