//go:build e2e

package e2e

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ambit-mesh/ambit/config/local"
	"github.com/ambit-mesh/ambit/config/xds"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/xdsclient"
)

// scenario is the mesh the tests create: two ambient namespaces, a namespace waypoint in demo that accepts
// routes from all namespaces, a workload waypoint (waypoint-for: all), services bound by namespace label,
// opted out by service label and bound across namespaces by service labels, a pod bound by pod label,
// L4 policies and a mesh-wide STRICT PeerAuthentication. Pods get no IPs here (no kubelet): see podIPs.
const scenario = `
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: echo, namespace: demo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: remote, namespace: demo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: waypoint, namespace: demo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: special, namespace: demo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: cross, namespace: other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp-all, namespace: demo, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
---
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: demo, labels: {gateway.istio.io/managed: istio.io-mesh-controller}}
spec:
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  ports: [{name: mesh, port: 15008}]
---
apiVersion: v1
kind: Service
metadata: {name: wp-all, namespace: demo, labels: {gateway.istio.io/managed: istio.io-mesh-controller}}
spec:
  selector: {gateway.networking.k8s.io/gateway-name: wp-all}
  ports: [{name: mesh, port: 15008}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: optout, namespace: demo, labels: {istio.io/use-waypoint: none}}
spec:
  selector: {app: optout}
  ports: [{name: tcp, port: 9000}]
---
apiVersion: v1
kind: Service
metadata:
  name: cross
  namespace: other
  labels: {istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: demo}
spec:
  selector: {app: cross}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: demo
  labels: {gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none}
spec: {nodeName: node1, serviceAccountName: waypoint, containers: [{name: istio-proxy, image: ambit}]}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-1, namespace: demo, labels: {app: echo}, annotations: {ambient.istio.io/redirection: enabled}}
spec: {nodeName: node1, serviceAccountName: echo, containers: [{name: app, image: echo}]}
---
apiVersion: v1
kind: Pod
metadata: {name: remote-1, namespace: demo, labels: {app: echo}, annotations: {ambient.istio.io/redirection: enabled}}
spec: {nodeName: node2, serviceAccountName: remote, containers: [{name: app, image: echo}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: special
  namespace: demo
  labels: {app: special, istio.io/use-waypoint: wp-all}
  annotations: {ambient.istio.io/redirection: enabled}
spec: {nodeName: node1, serviceAccountName: special, containers: [{name: app, image: echo}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cross-1, namespace: other, labels: {app: cross}, annotations: {ambient.istio.io/redirection: enabled}}
spec: {nodeName: node1, serviceAccountName: cross, containers: [{name: app, image: echo}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-echo, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}], to: [{operation: {ports: ["8080"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-other, namespace: demo}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [other]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
`

var podIPs = map[string]string{
	"demo/waypoint-0": "10.244.0.2", "demo/echo-1": "10.244.0.5", "demo/remote-1": "10.244.1.6",
	"demo/special": "10.244.0.7", "other/cross-1": "10.244.0.8",
}

var scenarioOnce sync.Once

// setUpScenario creates the scenario once per run, then does what kubelet and the gateway controller would:
// pod IPs and readiness, and waypoint Gateway addresses (hostname first, as istiod prefers).
func setUpScenario(t *testing.T, ctx context.Context) {
	t.Helper()
	scenarioOnce.Do(func() { createScenario(t, ctx) })
}

func createScenario(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := stack.Apply(ctx, scenario); err != nil {
		t.Fatal(err)
	}
	for key, ip := range podIPs {
		ns, name, _ := strings.Cut(key, "/")
		patchPodIP(t, ctx, ns, name, ip)
	}
	for _, gw := range []string{"waypoint", "wp-all"} {
		vip, err := stack.Kubectl(ctx, "get", "svc", gw, "-n", "demo", "-o", "jsonpath={.spec.clusterIP}")
		if err != nil {
			t.Fatal(err)
		}
		patch := `{"status":{"addresses":[{"type":"Hostname","value":"` + gw + `.demo.svc.cluster.local"},{"type":"IPAddress","value":"` +
			string(vip) + `"}]}}`
		if _, err := stack.Kubectl(ctx, "patch", "gateway", gw, "-n", "demo", "--subresource=status", "--type=merge", "-p", patch); err != nil {
			t.Fatal(err)
		}
	}
}

func patchPodIP(t *testing.T, ctx context.Context, ns, name, ip string) {
	t.Helper()
	patch := `{"status":{"phase":"Running","podIP":"` + ip + `","podIPs":[{"ip":"` + ip +
		`"}],"hostIP":"10.0.0.1","conditions":[{"type":"Ready","status":"True"}]}}`
	if _, err := stack.Kubectl(ctx, "patch", "pod", name, "-n", ns, "--subresource=status", "--type=merge", "-p", patch); err != nil {
		t.Fatal(err)
	}
}

var nodeInfo = xdsclient.NodeInfo{IP: "10.0.0.1", PodName: "ztunnel-abc", PodNamespace: "istio-system", NodeName: "node1",
	ServiceAccount: "ztunnel", Metadata: map[string]any{"ISTIO_VERSION": "1.31.0"}}

func startSource(t *testing.T, ctx context.Context, st *state.Store) *xds.Source {
	t.Helper()
	src, err := xds.NewSource(xds.SourceOptions{Address: stack.XDSAddr, RootCertFile: stack.RootCertFile,
		ServerName: stack.IstiodServerName, TokenFile: stack.TokenFile, Node: nodeInfo, Store: st,
		Logger: Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("source Run = %v", err)
		}
	})
	select {
	case <-src.Ready():
	case <-time.After(30 * time.Second):
		t.Fatalf("source not ready after 30 s; stats %+v", src.Stats())
	}
	return src
}

func svcKey(ns, name string) state.NamespacedHostname {
	return state.NamespacedHostname{Namespace: ns, Hostname: name + "." + ns + ".svc.cluster.local"}
}

func podUID(ns, name string) string { return "Kubernetes//Pod/" + ns + "/" + name }

func waypointOf(g *state.GatewayAddress) string {
	if g == nil {
		return ""
	}
	return g.Destination()
}

// TestIstiodState runs Ambit's xDS source against istiod over TLS with a pod-bound token, exactly as a
// node agent, and checks that the store holds istiod's view of the scenario.
func TestIstiodState(t *testing.T) {
	testutil.CheckGoroutines(t)
	ctx := context.Background()
	st := state.NewStore()
	src := startSource(t, ctx, st) // before the scenario: everything below arrives as live updates
	setUpScenario(t, ctx)

	want := map[state.NamespacedHostname]string{ // service -> expected waypoint destination
		svcKey("demo", "echo"):   "demo/waypoint.demo.svc.cluster.local", // namespace label
		svcKey("demo", "optout"): "",                                     // service label use-waypoint=none
		svcKey("other", "cross"): "demo/waypoint.demo.svc.cluster.local", // service labels, cross-namespace
	}
	testutil.WaitFor(t, 60*time.Second, "istiod's scenario in the store", func() bool {
		for k, wp := range want {
			s := st.Service(k)
			if s == nil || waypointOf(s.Waypoint) != wp {
				return false
			}
		}
		w := st.Workload(podUID("demo", "special"))
		e := st.Workload(podUID("demo", "echo-1"))
		return w != nil && w.Waypoint != nil && e != nil && len(e.Addresses) == 1 &&
			slices.Contains(e.AuthorizationPolicies, "demo/allow-echo") &&
			st.Policy("istio-system/istio_converted_static_strict") != nil && st.Policy("demo/deny-other") != nil
	})

	t.Run("services and waypoints", func(t *testing.T) {
		for k, wp := range want {
			s := st.Service(k)
			if got := waypointOf(s.Waypoint); got != wp {
				t.Errorf("%s waypoint = %q, want %q", k, got, wp)
			}
			if s.Waypoint != nil && s.Waypoint.HBONEMTLSPort != 15008 {
				t.Errorf("%s waypoint port = %d", k, s.Waypoint.HBONEMTLSPort)
			}
			if len(s.Addresses) != 1 || !s.Addresses[0].Addr.Is4() {
				t.Errorf("%s VIPs = %v", k, s.Addresses)
			}
		}
		echo := st.Service(svcKey("demo", "echo"))
		if p, ok := echo.Port(80); !ok || p.TargetPort != 8080 {
			t.Errorf("echo port 80 = %+v, %v", p, ok)
		}
		// Endpoints come from the workloads' services maps, with their target ports.
		var eps []string
		for _, w := range st.Endpoints(echo.Key()) {
			eps = append(eps, w.Name)
			if tp, ok := w.ServiceRef(echo.Key()).Target(80); !ok || tp != 8080 {
				t.Errorf("endpoint %s target = %d, %v", w.Name, tp, ok)
			}
		}
		if !slices.Equal(eps, []string{"echo-1", "remote-1"}) {
			t.Errorf("echo endpoints = %v", eps)
		}
	})

	t.Run("workloads", func(t *testing.T) {
		e := st.Workload(podUID("demo", "echo-1"))
		if e.Protocol != state.TunnelHBONE || e.Addresses[0] != netip.MustParseAddr("10.244.0.5") || e.Node != "node1" ||
			e.Identity() != "spiffe://cluster.local/ns/demo/sa/echo" || e.ClusterID != "Kubernetes" || e.Status != state.Healthy {
			t.Errorf("echo-1 = %+v", e)
		}
		// waypoint-for defaults to service: workload-addressed traffic to echo-1 bypasses the waypoint.
		if e.Waypoint != nil {
			t.Errorf("echo-1 has a workload waypoint %s", e.Waypoint.Destination())
		}
		if sp := st.Workload(podUID("demo", "special")); waypointOf(sp.Waypoint) != "demo/wp-all.demo.svc.cluster.local" {
			t.Errorf("special waypoint = %q (pod label use-waypoint=wp-all)", waypointOf(sp.Waypoint))
		}
		if wp := st.Workload(podUID("demo", "waypoint-0")); wp == nil || wp.Protocol == state.TunnelHBONE {
			t.Errorf("waypoint pod = %+v (not captured: dataplane-mode none)", wp)
		}
		for _, uid := range []string{podUID("demo", "echo-1"), podUID("demo", "special"), podUID("other", "cross-1")} {
			if w := st.Workload(uid); !slices.Contains(w.AuthorizationPolicies, "istio-system/istio_converted_static_strict") {
				t.Errorf("%s policies = %v; STRICT mTLS not attached", uid, w.AuthorizationPolicies)
			}
		}
		local := st.WorkloadsOnNode("node1")
		if len(local) < 4 {
			t.Errorf("workloads on node1 = %d", len(local))
		}
	})

	t.Run("authorization", func(t *testing.T) {
		allow := st.Policy("demo/allow-echo")
		if allow == nil || allow.Scope != state.ScopeWorkloadSelector || allow.Action != state.ActionAllow {
			t.Fatalf("allow-echo = %+v", allow)
		}
		var principals []string
		var ports []uint16
		for _, g := range allow.Groups {
			for _, r := range g.Rules {
				for _, m := range r.Matches {
					for _, p := range m.Principals {
						principals = append(principals, p.Value)
					}
					ports = append(ports, m.DestinationPorts...)
				}
			}
		}
		if !slices.Contains(principals, "cluster.local/ns/demo/sa/client") || !slices.Contains(ports, 8080) {
			t.Errorf("allow-echo principals %v ports %v", principals, ports)
		}
		if d := st.Policy("demo/deny-other"); d.Scope != state.ScopeNamespace || d.Action != state.ActionDeny {
			t.Errorf("deny-other = %+v", d)
		}
		strict := st.Policy("istio-system/istio_converted_static_strict")
		if strict.Action != state.ActionDeny || strict.Groups[0].Rules[0].Matches[0].NotPrincipals[0].Kind != state.MatchPresence {
			t.Errorf("static strict = %+v", strict)
		}
		e := st.Workload(podUID("demo", "echo-1"))
		var applied []string
		for _, p := range st.PoliciesFor(e) {
			applied = append(applied, p.Key())
		}
		slices.Sort(applied)
		if !slices.Equal(applied, []string{"demo/allow-echo", "demo/deny-other", "istio-system/istio_converted_static_strict"}) {
			t.Errorf("policies for echo-1 = %v", applied)
		}
	})

	t.Run("live pod add and delete", func(t *testing.T) {
		pod := `apiVersion: v1
kind: Pod
metadata: {name: echo-3, namespace: demo, labels: {app: echo}, annotations: {ambient.istio.io/redirection: enabled}}
spec: {nodeName: node1, serviceAccountName: echo, containers: [{name: app, image: echo}]}
`
		if err := stack.Apply(ctx, pod); err != nil {
			t.Fatal(err)
		}
		patchPodIP(t, ctx, "demo", "echo-3", "10.244.0.9")
		testutil.WaitFor(t, 30*time.Second, "echo-3 by address", func() bool {
			w := st.WorkloadByAddr(state.AddrOf(netip.MustParseAddr("10.244.0.9")))
			return w != nil && w.Name == "echo-3" && len(st.Endpoints(svcKey("demo", "echo"))) == 3
		})
		if _, err := stack.Kubectl(ctx, "delete", "pod", "echo-3", "-n", "demo", "--grace-period=0", "--force"); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, 30*time.Second, "echo-3 removed", func() bool { return st.Workload(podUID("demo", "echo-3")) == nil })
	})

	// The same cluster objects compiled by Ambit's local-file compiler (what ambit agent --config-file and
	// ambitctl use) must give istiod's bindings: one set of rules, two producers.
	t.Run("local compiler agrees with istiod", func(t *testing.T) {
		out, err := stack.Kubectl(ctx, "get", "namespaces,nodes,services,pods,gateways.gateway.networking.k8s.io,"+
			"gatewayclasses.gateway.networking.k8s.io,authorizationpolicies.security.istio.io,"+
			"peerauthentications.security.istio.io", "-A", "-o", "yaml")
		if err != nil {
			t.Fatal(err)
		}
		objs := &local.Objects{}
		if err := objs.Decode("cluster.yaml", out); err != nil {
			t.Fatal(err)
		}
		res, err := local.Compile(objs, local.Options{})
		if err != nil {
			t.Fatal(err)
		}
		compared := 0
		for _, ls := range res.Snapshot.Services {
			is := st.Service(ls.Key())
			if is == nil || (ls.Namespace != "demo" && ls.Namespace != "other") {
				continue
			}
			compared++
			if a, b := waypointOf(ls.Waypoint), waypointOf(is.Waypoint); a != b {
				t.Errorf("service %s: local compiler waypoint %q, istiod %q", ls.Key(), a, b)
			}
		}
		for _, lw := range res.Snapshot.Workloads {
			iw := st.Workload(lw.UID)
			if iw == nil || (lw.Namespace != "demo" && lw.Namespace != "other") {
				continue
			}
			compared++
			if a, b := waypointOf(lw.Waypoint), waypointOf(iw.Waypoint); a != b {
				t.Errorf("workload %s: local compiler waypoint %q, istiod %q", lw.UID, a, b)
			}
			if lw.Protocol != iw.Protocol || lw.Identity() != iw.Identity() {
				t.Errorf("workload %s: local %v %s, istiod %v %s", lw.UID, lw.Protocol, lw.Identity(), iw.Protocol, iw.Identity())
			}
			a, b := slices.Sorted(slices.Values(lw.AuthorizationPolicies)), slices.Sorted(slices.Values(iw.AuthorizationPolicies))
			if !slices.Equal(a, b) {
				t.Errorf("workload %s: local policies %v, istiod %v", lw.UID, a, b)
			}
		}
		if compared < 8 {
			t.Errorf("only %d objects compared", compared)
		}
	})

	// istiod agreed with everything it sent: no NACK, nothing parked.
	for typ, s := range src.Stats() {
		if s.NACKs != 0 {
			t.Errorf("%s: %d NACKs, last %q", typ, s.NACKs, s.LastNACK)
		}
	}
	if p := src.Parked(); len(p) != 0 {
		t.Errorf("parked = %v", p)
	}
	if strings.Contains(stack.IstiodLog(), "ACK ERROR") {
		t.Error("istiod logged a NACK from Ambit")
	}
}

// TestIstiodCertificates gets certificates from istiod's CA the way the node agent does: the prefetcher
// follows the store and impersonates each local HBONE workload's identity; a service account without a pod
// on this node is refused.
func TestIstiodCertificates(t *testing.T) {
	testutil.CheckGoroutines(t)
	ctx := context.Background()
	st := state.NewStore()
	startSource(t, ctx, st)
	setUpScenario(t, ctx)
	testutil.WaitFor(t, 60*time.Second, "the scenario's workloads", func() bool {
		return st.Workload(podUID("demo", "echo-1")) != nil && st.Workload(podUID("demo", "remote-1")) != nil
	})

	ca, err := identity.NewIstiodCA(identity.IstiodCAOptions{Address: stack.XDSAddr, RootCertFile: stack.RootCertFile,
		ServerName: stack.IstiodServerName, TokenFile: stack.TokenFile, Impersonate: true, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	mgr, err := identity.NewManager(identity.ManagerOptions{Issuer: ca, Logger: Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	mdone, pdone := make(chan error, 1), make(chan error, 1)
	go func() { mdone <- mgr.Run(rctx) }()
	go func() {
		pdone <- xds.NewCertPrefetcher(xds.CertPrefetcherOptions{Store: st, Certs: mgr, Node: "node1"}).Run(rctx)
	}()
	defer func() {
		cancel()
		<-pdone
		<-mdone
		mgr.Close()
	}()

	// Every HBONE identity on node1 is prefetched and issued by istiod; remote (node2) is not requested.
	wantIDs := []string{"spiffe://cluster.local/ns/demo/sa/echo", "spiffe://cluster.local/ns/demo/sa/special",
		"spiffe://cluster.local/ns/other/sa/cross"}
	testutil.WaitFor(t, 60*time.Second, "prefetched certificates", func() bool {
		var got []string
		for _, s := range mgr.Snapshot() {
			if s.State == identity.StateAvailable {
				got = append(got, s.Identity)
			}
		}
		return slices.Equal(got, wantIDs)
	})
	echoID := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/echo")
	cert, err := mgr.Fetch(ctx, echoID)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := identity.LeafID(cert.Leaf()); got != echoID {
		t.Errorf("leaf identity = %v", got)
	}
	if len(cert.Roots()) == 0 {
		t.Error("no root bundle from istiod")
	}
	if _, err := cert.Leaf().Verify(x509Opts(cert)); err != nil {
		t.Errorf("leaf does not chain to istiod's roots: %v", err)
	}

	// demo/remote has a pod only on node2: istiod refuses to let node1's agent impersonate it.
	remote := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/remote")
	_, err = ca.Issue(ctx, remote)
	if st, ok := status.FromError(errors.Unwrap(err)); err == nil || !ok || st.Code() != codes.Unauthenticated {
		t.Errorf("impersonating a workload on another node = %v, want Unauthenticated", err)
	}
}

// TestIstiodPlaintextAndOnDemand uses istiod's plaintext port (development mode) with an on-demand Address
// subscription: nothing but this node's workloads is pushed until a lookup by "<network>/<ip>" or by name
// asks; a name istiod does not know is answered with a removal.
func TestIstiodPlaintextAndOnDemand(t *testing.T) {
	testutil.CheckGoroutines(t)
	ctx := context.Background()
	setUpScenario(t, ctx)
	st := state.NewStore()
	src, err := xds.NewSource(xds.SourceOptions{Address: stack.PlainXDSAddr, Plaintext: true, Node: nodeInfo, Store: st,
		OnDemand: true, Logger: Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(rctx) }()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("source Run = %v", err)
		}
	}()
	select {
	case <-src.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("on-demand source not ready")
	}
	lctx, lcancel := context.WithTimeout(ctx, 30*time.Second)
	defer lcancel()
	// remote-1 runs on node2, so istiod does not push it to node1 unasked.
	if st.Workload(podUID("demo", "remote-1")) != nil {
		t.Fatal("a workload of another node was pushed without a lookup")
	}
	found, err := src.Lookup(lctx, "/"+podIPs["demo/remote-1"])
	if err != nil || !found {
		t.Fatalf("Lookup by address = %v, %v", found, err)
	}
	if w := st.WorkloadByAddr(state.AddrOf(netip.MustParseAddr(podIPs["demo/remote-1"]))); w == nil || w.Name != "remote-1" {
		t.Errorf("looked-up workload = %+v", w)
	}
	found, err = src.Lookup(lctx, "demo/nothing.demo.svc.cluster.local")
	if err != nil || found {
		t.Errorf("Lookup of an unknown service = %v, %v; want false, nil", found, err)
	}
	if p := st.Policy("istio-system/istio_converted_static_strict"); p == nil {
		t.Error("Authorization (always wildcard) missing")
	}
}
