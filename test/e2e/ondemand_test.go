//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/meshlab"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// onDemandPods are the namespace and pods TestAgentOnDemandAgainstIstiod creates in the API server: a client
// on lab node 0 and a server on lab node 1, each on a node of its own (od-node0, od-node1), so that with
// XDS_ON_DEMAND istiod pushes each agent only its own pod.
const onDemandPods = `
apiVersion: v1
kind: Namespace
metadata: {name: ondemand, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: od-client, namespace: ondemand}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: od-server, namespace: ondemand}
---
apiVersion: v1
kind: Pod
metadata: {name: od-client, namespace: ondemand, labels: {app: od-client}, annotations: {ambient.istio.io/redirection: enabled}}
spec: {nodeName: od-node0, serviceAccountName: od-client, containers: [{name: app, image: echo}]}
---
apiVersion: v1
kind: Pod
metadata: {name: od-server, namespace: ondemand, labels: {app: od-server}, annotations: {ambient.istio.io/redirection: enabled}}
spec: {nodeName: od-node1, serviceAccountName: od-server, containers: [{name: app, image: echo}]}
`

// TestAgentOnDemandAgainstIstiod runs two node agents with XDS_ON_DEMAND against the real istiod, with
// kernel capture in a network-namespace lab. istiod pushes each agent only its own node's pod, so the
// client's agent has never heard of the server when the client connects to it: it must ask istiod for
// "/<server IP>" and carry the connection over HBONE (without the lookup it would pass through as
// plaintext, which the mesh-wide STRICT PeerAuthentication refuses at the server's agent). The server's
// agent, for its part, asks for the client (its inbound source). A connection to an address istiod does
// not know (a lab pod that is not in the API server) leaves as passthrough once istiod's answer (or the
// bounded wait) is in.
func TestAgentOnDemandAgainstIstiod(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	setUpScenario(t, ctx) // the mesh-wide STRICT PeerAuthentication
	var l *lab.Lab
	yaml := func(lb *lab.Lab) string {
		l = lb
		// Before the agents start: the pods exist, with their lab IPs, when istiod first answers them.
		// Pod 1 of node 0 and pod 0 of node 1: 10.244.0.3 and 10.244.1.2, addresses the scenario does not use.
		if err := stack.Apply(ctx, onDemandPods); err != nil {
			t.Fatal(err)
		}
		patchPodIP(t, ctx, "ondemand", "od-client", lb.Nodes[0].Pods[1].IP.String())
		patchPodIP(t, ctx, "ondemand", "od-server", lb.Nodes[1].Pods[0].IP.String())
		return "" // the agents read istiod, not a file
	}
	t.Cleanup(func() {
		if _, err := stack.Kubectl(ctx, "delete", "pod", "-n", "ondemand", "od-client", "od-server", "--grace-period=0", "--force"); err != nil {
			t.Logf("delete pods: %v", err)
		}
	})
	c := meshlab.StartCluster(t, 2, 2, agent.CaptureEBPF, yaml, func(i int, cfg *agent.Config) {
		cfg.NodeName = fmt.Sprintf("od-node%d", i)
		cfg.ConfigFiles = nil
		cfg.XDSAddress, cfg.XDSPlaintext, cfg.TokenFile = stack.PlainXDSAddr, true, stack.TokenFile
		cfg.XDSOnDemand, cfg.XDSOnDemandTimeout = true, 3*time.Second
		cfg.PodName, cfg.PodNamespace, cfg.ServiceAccount = fmt.Sprintf("ztunnel-od%d", i), "istio-system", "ztunnel"
		cfg.ClusterID, cfg.ConnectTimeout = "Kubernetes", 3*time.Second
	})
	client, server, outsider := l.Nodes[0].Pods[1], l.Nodes[1].Pods[0], l.Nodes[1].Pods[1]
	meshlab.Serve(t, server, 8080)
	meshlab.Serve(t, outsider, 8080)
	for i, name := range []string{"od-client", "od-server"} {
		testutil.WaitFor(t, 30*time.Second, name+" captured by its agent", func() bool {
			return logLine(c.Logs[i].String(), `msg="pod captured"`, "pod=ondemand/"+name+" ") != ""
		})
	}
	if w := c.Agents[0].Store.Workload(podUID("ondemand", "od-server")); w != nil {
		t.Fatalf("istiod pushed the other node's pod to an on-demand agent before any connection: %+v", w)
	}

	// 1. A workload istiod knows but has not pushed: found on demand, carried over HBONE.
	got, err := meshlab.Call(t, client, server.IP.String()+":8080")
	if err != nil || !strings.HasPrefix(got, server.Name+" ") {
		t.Fatalf("client -> od-server = %q, %v; want an answer from %s", got, err, server.Name)
	}
	var inbound, outbound string
	testutil.WaitFor(t, 10*time.Second, "access log lines of both agents", func() bool {
		outbound = logLine(c.Logs[0].String(), complete, "direction=outbound", "dst.addr="+server.IP.String()+":15008")
		inbound = logLine(c.Logs[1].String(), complete, "direction=inbound", "dst.addr="+server.IP.String()+":8080")
		return outbound != "" && inbound != ""
	})
	for _, want := range []string{"protocol=HBONE", "dst.workload=od-server", "dst.hbone_addr=" + server.IP.String() + ":8080"} {
		if !strings.Contains(outbound, want) {
			t.Errorf("client agent's line lacks %s: %s", want, outbound)
		}
	}
	// The destination agent saw HBONE with the client's identity, and found the client (its inbound
	// source, on another node) on demand too.
	for _, want := range []string{"protocol=HBONE", "src.identity=spiffe://cluster.local/ns/ondemand/sa/od-client", "src.workload=od-client"} {
		if !strings.Contains(inbound, want) {
			t.Errorf("server agent's line lacks %s: %s", want, inbound)
		}
	}
	if w := c.Agents[0].Store.Workload(podUID("ondemand", "od-server")); w == nil {
		t.Error("the looked-up workload is not in the client agent's state")
	}
	for i := range c.Agents {
		if n := meshlab.Counter(c.Agents[i], "ambit_xds_on_demand_fetches_total"); n < 1 {
			t.Errorf("agent %d: %v on-demand fetches; want at least 1", i, n)
		}
	}

	// 2. An address istiod does not know: asked once, then passthrough (plaintext to the pod, which no
	// agent captures).
	before := meshlab.Counter(c.Agents[0], "ambit_xds_on_demand_fetches_total")
	foundBefore := fetches(t, c.Agents[0], "found")
	subscribedBefore := meshlab.Counter(c.Agents[0], "ambit_xds_on_demand_subscribed")
	got, err = meshlab.Call(t, client, outsider.IP.String()+":8080")
	if err != nil || !strings.HasPrefix(got, outsider.Name+" ") {
		t.Fatalf("client -> unknown address = %q, %v; want an answer from %s", got, err, outsider.Name)
	}
	testutil.WaitFor(t, 10*time.Second, "passthrough access log line", func() bool {
		return logLine(c.Logs[0].String(), complete, "direction=outbound", "dst.addr="+outsider.IP.String()+":8080", "protocol=TCP") != ""
	})
	if n := meshlab.Counter(c.Agents[0], "ambit_xds_on_demand_fetches_total"); n != before+1 {
		t.Errorf("on-demand fetches for the unknown address = %v; want 1", n-before)
	}
	if n := fetches(t, c.Agents[0], "found"); n != foundBefore {
		t.Errorf("the unknown address counted as found (%v found fetches, %v before)", n, foundBefore)
	}
	// istiod answered with a removal; the name is unsubscribed again, so addresses a pod tries do not
	// accumulate in the subscription (and in every reconnect's initial request).
	if n := meshlab.Counter(c.Agents[0], "ambit_xds_on_demand_subscribed"); n != subscribedBefore {
		t.Errorf("on-demand names subscribed after the unknown address = %v, %v before; want it forgotten", n, subscribedBefore)
	}
	t.Logf("client agent's fetches: found %v, not_found %v, timeout %v", fetches(t, c.Agents[0], "found"),
		fetches(t, c.Agents[0], "not_found"), fetches(t, c.Agents[0], "timeout"))
	if w := c.Agents[0].Store.WorkloadByAddr(state.AddrOf(outsider.IP)); w != nil {
		t.Errorf("an address istiod does not know resolved to %+v", w)
	}
}

// complete marks an agent's access log line.
const complete = `msg="connection complete"`

// logLine returns the last line of log containing every one of want, or "".
func logLine(log string, want ...string) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(l, w)
		}
		if ok {
			return l
		}
	}
	return ""
}

// fetches is the value of ambit_xds_on_demand_fetches_total{result} in a's registry.
func fetches(t *testing.T, a *agent.Agent, result string) float64 {
	t.Helper()
	mfs, err := a.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ambit_xds_on_demand_fetches_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
