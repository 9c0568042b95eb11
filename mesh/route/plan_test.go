package route_test

import (
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/config/local"
	"github.com/ambit-mesh/ambit/mesh/route"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// base is a small ambient namespace: a client, service svc (10.0.0.1:80 -> 8080) with two pods on two
// nodes, a namespace-less waypoint wp (for all) and a workload waypoint pwp, each with its Service and
// one instance, plus a namespace outside the mesh.
const base = `
apiVersion: v1
kind: Namespace
metadata:
  name: app
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Namespace
metadata:
  name: ext
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: app, labels: {app: client}}
spec: {nodeName: node1, serviceAccountName: client, containers: [{name: c, image: c}]}
status: {podIP: 10.1.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: svc-a, namespace: app, labels: {app: svc, SVCPODLABELS}}
spec: {nodeName: node1, serviceAccountName: svc, containers: [{name: c, image: c, ports: [{name: web, containerPort: 8080}]}]}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: svc-b, namespace: app, labels: {app: svc, SVCPODLABELS}}
spec: {nodeName: node2, serviceAccountName: svc, containers: [{name: c, image: c, ports: [{name: web, containerPort: 8080}]}]}
status: {podIP: 10.1.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: app, labels: {SVCLABELS}}
spec:
  clusterIP: 10.0.0.1
  selector: {app: svc}
  ports: [{name: http, port: 80, targetPort: web}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: app, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status:
  addresses: [{type: IPAddress, value: 10.96.0.50}, {type: Hostname, value: wp.app.svc.cluster.local}]
---
apiVersion: v1
kind: Service
metadata: {name: wp, namespace: app, labels: {gateway.istio.io/managed: istio.io-mesh-controller}}
spec:
  clusterIP: 10.96.0.50
  selector: {gateway.networking.k8s.io/gateway-name: wp}
  ports: [{name: mesh, port: 15008}]
---
apiVersion: v1
kind: Pod
metadata: {name: wp-0, namespace: app, labels: {gateway.networking.k8s.io/gateway-name: wp, istio.io/dataplane-mode: none}}
spec: {nodeName: node2, serviceAccountName: wp, containers: [{name: c, image: c}]}
status: {podIP: 10.1.0.20}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: pwp, namespace: app, labels: {istio.io/waypoint-for: workload}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status:
  addresses: [{type: IPAddress, value: 10.96.0.51}, {type: Hostname, value: pwp.app.svc.cluster.local}]
---
apiVersion: v1
kind: Service
metadata: {name: pwp, namespace: app, labels: {gateway.istio.io/managed: istio.io-mesh-controller}}
spec:
  clusterIP: 10.96.0.51
  selector: {gateway.networking.k8s.io/gateway-name: pwp}
  ports: [{name: mesh, port: 15008}]
---
apiVersion: v1
kind: Pod
metadata: {name: pwp-0, namespace: app, labels: {gateway.networking.k8s.io/gateway-name: pwp, istio.io/dataplane-mode: none}}
spec: {nodeName: node1, serviceAccountName: pwp, containers: [{name: c, image: c}]}
status: {podIP: 10.1.0.21}
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: ext, labels: {app: plain}}
spec: {nodeName: node2, containers: [{name: c, image: c}]}
status: {podIP: 10.3.0.1}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: ext}
spec:
  clusterIP: 10.0.0.2
  selector: {app: plain}
  ports: [{port: 80, targetPort: 8080}]
`

func store(t testing.TB, svcLabels, podLabels, extra string) *state.Store {
	t.Helper()
	src := strings.NewReplacer("SVCLABELS", svcLabels, "SVCPODLABELS", podLabels).Replace(base) + extra
	objs := &local.Objects{}
	if err := objs.Decode("plan.yaml", []byte(src)); err != nil {
		t.Fatal(err)
	}
	res, err := local.Compile(objs, local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := state.NewStore()
	s.Replace(&res.Snapshot)
	return s
}

func workload(t testing.TB, s *state.Store, ns, name string) *state.Workload {
	t.Helper()
	w := s.Workload("Kubernetes//Pod/" + ns + "/" + name)
	if w == nil {
		t.Fatalf("no workload %s/%s", ns, name)
	}
	return w
}

// fixed always picks the first candidate.
func fixed(uint64) uint64 { return 0 }

func TestBuild(t *testing.T) {
	type want struct {
		path      route.Path
		proto     route.Protocol
		nextHop   string
		authority string
		waypoint  string
		reason    route.Reason
	}
	cases := []struct {
		name                       string
		svcLabels, podLabels, from string
		fromIP                     string
		extra                      string
		to                         string
		want                       want
	}{
		{name: "D1 service waypoint takes service-addressed traffic", svcLabels: "istio.io/use-waypoint: wp", to: "10.0.0.1:80",
			want: want{route.PathWaypoint, route.ProtocolHBONE, "10.1.0.20:15008", "10.0.0.1:80", "app/wp", route.ReasonServiceWaypoint}},
		{name: "D2 pod waypoint is not used for service-addressed traffic", podLabels: "istio.io/use-waypoint: pwp", to: "10.0.0.1:80",
			want: want{route.PathDirect, route.ProtocolHBONE, "10.1.0.1:15008", "10.1.0.1:8080", "", route.ReasonServiceEndpoint}},
		{name: "D3 pod waypoint takes workload-addressed traffic", podLabels: "istio.io/use-waypoint: pwp", to: "10.1.0.2:8080",
			want: want{route.PathWaypoint, route.ProtocolHBONE, "10.1.0.21:15008", "10.1.0.2:8080", "app/pwp", route.ReasonWorkloadWaypoint}},
		{name: "D4 service waypoint is not used for workload-addressed traffic", svcLabels: "istio.io/use-waypoint: wp", to: "10.1.0.2:8080",
			want: want{route.PathDirect, route.ProtocolHBONE, "10.1.0.2:15008", "10.1.0.2:8080", "", route.ReasonWorkload}},
		{name: "D9 no waypoint from istiod means direct", svcLabels: "istio.io/use-waypoint: missing", to: "10.0.0.1:80",
			want: want{route.PathDirect, route.ProtocolHBONE, "10.1.0.1:15008", "10.1.0.1:8080", "", route.ReasonServiceEndpoint}},
		{name: "D10 unknown source is rejected", from: "-", to: "10.0.0.1:80",
			want: want{path: route.PathReject, reason: route.ReasonUnknownSource}},
		{name: "waypoint instance reaches the pod it serves directly", podLabels: "istio.io/use-waypoint: pwp", from: "pwp-0", fromIP: "10.1.0.21", to: "10.1.0.2:8080",
			want: want{route.PathDirect, route.ProtocolHBONE, "10.1.0.2:15008", "10.1.0.2:8080", "", route.ReasonFromWaypoint}},
		{name: "waypoint identity from another IP is not the waypoint", podLabels: "istio.io/use-waypoint: pwp", from: "pwp-0", fromIP: "10.9.9.9", to: "10.1.0.2:8080",
			want: want{route.PathWaypoint, route.ProtocolHBONE, "10.1.0.21:15008", "10.1.0.2:8080", "app/pwp", route.ReasonWorkloadWaypoint}},
		{name: "service waypoint instance calling the service does not loop", svcLabels: "istio.io/use-waypoint: wp", from: "wp-0", fromIP: "10.1.0.20", to: "10.0.0.1:80",
			want: want{route.PathDirect, route.ProtocolHBONE, "10.1.0.1:15008", "10.1.0.1:8080", "", route.ReasonServiceEndpoint}},
		{name: "service outside the mesh is plain TCP to its endpoint", to: "10.0.0.2:80",
			want: want{route.PathDirect, route.ProtocolTCP, "10.3.0.1:8080", "", "", route.ReasonServiceEndpoint}},
		{name: "workload outside the mesh is plain TCP", to: "10.3.0.1:9000",
			want: want{route.PathDirect, route.ProtocolTCP, "10.3.0.1:9000", "", "", route.ReasonWorkload}},
		{name: "unknown destination passes through", to: "192.0.2.7:443",
			want: want{route.PathPassthrough, route.ProtocolTCP, "192.0.2.7:443", "", "", route.ReasonNotInMesh}},
		{name: "undeclared service port is rejected", to: "10.0.0.1:81",
			want: want{path: route.PathReject, reason: route.ReasonNoServicePort}},
		{name: "agent port on loopback is rejected", to: "127.0.0.1:15001",
			want: want{path: route.PathReject, reason: route.ReasonRecursive}},
		{name: "other loopback ports pass through", to: "127.0.0.1:8080",
			want: want{route.PathPassthrough, route.ProtocolTCP, "127.0.0.1:8080", "", "", route.ReasonNotInMesh}},
		{name: "37 headless service pods are reached directly", to: "10.1.0.5:9090", extra: `
---
apiVersion: v1
kind: Service
metadata: {name: hl, namespace: app, labels: {istio.io/use-waypoint: wp}}
spec: {clusterIP: None, selector: {app: hl}, ports: [{port: 9090}]}
---
apiVersion: v1
kind: Pod
metadata: {name: hl-0, namespace: app, labels: {app: hl}}
spec: {nodeName: node1, containers: [{name: c, image: c}]}
status: {podIP: 10.1.0.5}
`, want: want{route.PathDirect, route.ProtocolHBONE, "10.1.0.5:15008", "10.1.0.5:9090", "", route.ReasonWorkload}},
		{name: "38 headless service in a namespace waypoint for all uses it for pod IPs", to: "10.1.0.5:9090", extra: `
---
apiVersion: v1
kind: Pod
metadata: {name: hl-0, namespace: app, labels: {app: hl, istio.io/use-waypoint: wp}}
spec: {nodeName: node1, containers: [{name: c, image: c}]}
status: {podIP: 10.1.0.5}
`, want: want{route.PathWaypoint, route.ProtocolHBONE, "10.1.0.20:15008", "10.1.0.5:9090", "app/wp", route.ReasonWorkloadWaypoint}},
		{name: "service entry with resolution NONE passes through", to: "240.0.0.9:443", extra: `
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: any, namespace: app}
spec: {hosts: [any.example.com], addresses: [240.0.0.9], ports: [{number: 443, name: tls, protocol: TLS}], resolution: NONE}
`, want: want{route.PathPassthrough, route.ProtocolTCP, "240.0.0.9:443", "", "", route.ReasonServicePassthrough}},
		{name: "service entry endpoints are load balanced", to: "240.0.0.1:443", extra: `
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: app}
spec:
  hosts: [a.example.com]
  addresses: [240.0.0.1]
  ports: [{number: 443, name: tls, protocol: TLS, targetPort: 8443}]
  resolution: STATIC
  endpoints: [{address: 240.0.1.1}]
`, want: want{route.PathDirect, route.ProtocolTCP, "240.0.1.1:8443", "", "", route.ReasonServiceEndpoint}},
		{name: "unhealthy endpoints are skipped until none is left", to: "10.0.0.9:80", extra: `
---
apiVersion: v1
kind: Service
metadata: {name: sick, namespace: app}
spec: {clusterIP: 10.0.0.9, selector: {app: sick}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: sick-0, namespace: app, labels: {app: sick}}
spec: {nodeName: node1, containers: [{name: c, image: c}]}
status: {podIP: 10.1.0.30, conditions: [{type: Ready, status: "False"}]}
`, want: want{path: route.PathReject, reason: route.ReasonNoHealthyEndpoint}},
		{name: "waypoint without instances rejects", svcLabels: "istio.io/use-waypoint: empty", to: "10.0.0.1:80", extra: `
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: empty, namespace: app}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status:
  addresses: [{type: Hostname, value: empty.app.svc.cluster.local}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: app, labels: {gateway.istio.io/managed: istio.io-mesh-controller}}
spec: {clusterIP: 10.96.0.52, selector: {gateway.networking.k8s.io/gateway-name: empty}, ports: [{name: mesh, port: 15008}]}
`, want: want{path: route.PathReject, waypoint: "app/empty", reason: route.ReasonNoWaypointEndpoint}},
		{name: "waypoint whose service is unknown rejects", svcLabels: "istio.io/use-waypoint: ghost", to: "10.0.0.1:80", extra: `
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ghost, namespace: app}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status:
  addresses: [{type: Hostname, value: ghost.app.svc.cluster.local}]
`, want: want{path: route.PathReject, waypoint: "app/ghost.app.svc.cluster.local", reason: route.ReasonUnknownWaypoint}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := store(t, tc.svcLabels, tc.podLabels, tc.extra)
			req := &route.Request{Destination: netip.MustParseAddrPort(tc.to), Rand: fixed}
			switch tc.from {
			case "-":
			case "":
				req.Source, req.SourceIP = workload(t, s, "app", "client"), netip.MustParseAddr("10.1.0.10")
			default:
				req.Source, req.SourceIP = workload(t, s, "app", tc.from), netip.MustParseAddr(tc.fromIP)
			}
			p := route.Build(s, req)
			got := want{path: p.Path, proto: p.Protocol, waypoint: route.WaypointName(s, &p), reason: p.Reason}
			if p.NextHop.IsValid() {
				got.nextHop = p.NextHop.String()
			}
			if p.Authority.IsValid() {
				got.authority = p.Authority.String()
			}
			if got != tc.want {
				t.Errorf("plan = %+v\nwant   %+v\nreason: %s", got, tc.want, route.Describe(s, req, &p))
			}
			if d := route.Describe(s, req, &p); d == "" || d == p.Path.String() {
				t.Errorf("no description for %+v", p)
			}
		})
	}
}

func TestBuildExpectedIdentities(t *testing.T) {
	s := store(t, "istio.io/use-waypoint: wp", "", "")
	req := &route.Request{Source: workload(t, s, "app", "client"), SourceIP: netip.MustParseAddr("10.1.0.10"),
		Destination: netip.MustParseAddrPort("10.0.0.1:80"), Rand: fixed}
	p := route.Build(s, req)
	var ids []string
	p.ExpectedIdentities(func(id string) { ids = append(ids, id) })
	if strings.Join(ids, ",") != "spiffe://cluster.local/ns/app/sa/wp" {
		t.Errorf("waypoint identities = %v", ids)
	}
	req.Destination = netip.MustParseAddrPort("10.1.0.1:8080")
	p = route.Build(s, req)
	ids = ids[:0]
	p.ExpectedIdentities(func(id string) { ids = append(ids, id) })
	if strings.Join(ids, ",") != "spiffe://cluster.local/ns/app/sa/svc" {
		t.Errorf("direct identities = %v", ids)
	}
}

// TestBuildLoadBalancing checks capacity weighting and the locality modes over many seeded draws.
func TestBuildLoadBalancing(t *testing.T) {
	weighted := `
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: app}
spec: {clusterIP: 10.0.0.7, selector: {app: lb}, ports: [{port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: heavy, namespace: app, labels: {app: lb}}
spec: {address: 10.4.0.1, weight: 3}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: light, namespace: app, labels: {app: lb}}
spec: {address: 10.4.0.2, weight: 1}
`
	s := store(t, "", "", weighted)
	r := rand.New(rand.NewPCG(1, 2))
	req := &route.Request{Source: workload(t, s, "app", "client"), Destination: netip.MustParseAddrPort("10.0.0.7:80"), Rand: r.Uint64N}
	counts := map[string]int{}
	const n = 4000
	for range n {
		p := route.Build(s, req)
		counts[p.NextHop.Addr().String()]++
	}
	if h := counts["10.4.0.1"]; h < n*70/100 || h > n*80/100 {
		t.Errorf("weight 3:1 gave %v", counts)
	}

	localYAML := strings.Replace(base, "selector: {app: svc}", "selector: {app: svc}\n  internalTrafficPolicy: Local", 1)
	localYAML = strings.NewReplacer("SVCLABELS", "", "SVCPODLABELS", "").Replace(localYAML)
	objs := &local.Objects{}
	if err := objs.Decode("local.yaml", []byte(localYAML)); err != nil {
		t.Fatal(err)
	}
	res, err := local.Compile(objs, local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s = state.NewStore()
	s.Replace(&res.Snapshot)
	req = &route.Request{Source: workload(t, s, "app", "client"), Destination: netip.MustParseAddrPort("10.0.0.1:80"), Rand: r.Uint64N}
	for range 200 {
		if p := route.Build(s, req); p.NextHop.Addr().String() != "10.1.0.1" {
			t.Fatalf("internalTrafficPolicy Local picked %v (client is on node1, only svc-a is)", p.NextHop)
		}
	}
	req.Source = workload(t, s, "app", "wp-0")
	for range 200 {
		if p := route.Build(s, req); p.NextHop.Addr().String() != "10.1.0.2" {
			t.Fatalf("internalTrafficPolicy Local picked %v (wp-0 is on node2, only svc-b is)", p.NextHop)
		}
	}
	// A client on a node with no endpoint gets nothing under STRICT node locality.
	req.Source = &state.Workload{UID: "x", Name: "x", Namespace: "app", Node: "node3", Addresses: []netip.Addr{netip.MustParseAddr("10.1.9.9")}}
	if err := req.Source.Validate(); err != nil {
		t.Fatal(err)
	}
	if p := route.Build(s, req); p.Path != route.PathReject || p.Reason != route.ReasonNoHealthyEndpoint {
		t.Errorf("STRICT locality with no local endpoint: %+v", p)
	}
}
