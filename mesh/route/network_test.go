package route_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/config/local"
	"github.com/ambit-mesh/ambit/mesh/route"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// networks: namespace app on network1 (the cluster's network, from istio-system) with a client; service
// remote (10.0.0.1:80 -> 8080) whose only endpoint is on network2, service mixed with one endpoint on
// each network, service nogw whose endpoint is on network3 (no gateway), service badgw on network4
// (gateway address known to no workload or service), service wped bound to waypoint wp, whose only
// instance is on network2. Network2's east-west gateway is at 172.30.0.201 (its pod ew2-0 holds that
// address, as a LoadBalancer's backend identity).
const networks = `
apiVersion: v1
kind: Namespace
metadata: {name: istio-system, labels: {topology.istio.io/network: network1}}
---
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: app, labels: {app: client}}
spec: {nodeName: a, serviceAccountName: client, containers: [{name: c, image: c}]}
status: {podIP: 10.244.0.10}
---
apiVersion: v1
kind: Service
metadata: {name: remote, namespace: app}
spec: {clusterIP: 10.0.0.1, selector: {app: remote}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: remote-0, namespace: app, labels: {app: remote, topology.istio.io/network: network2}}
spec: {nodeName: b, serviceAccountName: remote, containers: [{name: c, image: c}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: app}
spec: {clusterIP: 10.0.0.2, selector: {app: local}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: local-0, namespace: app, labels: {app: local}}
spec: {nodeName: a, serviceAccountName: local, containers: [{name: c, image: c}]}
status: {podIP: 10.244.0.3}
---
apiVersion: v1
kind: Service
metadata: {name: nogw, namespace: app}
spec: {clusterIP: 10.0.0.3, selector: {app: nogw}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: nogw-0, namespace: app, labels: {app: nogw, topology.istio.io/network: network3}}
spec: {nodeName: c, containers: [{name: c, image: c}]}
status: {podIP: 10.244.3.2}
---
apiVersion: v1
kind: Service
metadata: {name: badgw, namespace: app}
spec: {clusterIP: 10.0.0.4, selector: {app: badgw}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: badgw-0, namespace: app, labels: {app: badgw, topology.istio.io/network: network4}}
spec: {nodeName: d, containers: [{name: c, image: c}]}
status: {podIP: 10.244.4.2}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ew4, namespace: istio-system, labels: {topology.istio.io/network: network4}}
spec:
  gatewayClassName: istio-east-west
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status: {addresses: [{type: IPAddress, value: 172.30.0.204}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ew2, namespace: istio-system, labels: {topology.istio.io/network: network2}}
spec:
  gatewayClassName: istio-east-west
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status: {addresses: [{type: IPAddress, value: 172.30.0.201}]}
---
apiVersion: v1
kind: Pod
metadata: {name: ew2-0, namespace: istio-system, labels: {gateway.networking.k8s.io/gateway-name: ew2, topology.istio.io/network: network2}}
spec: {nodeName: b, serviceAccountName: ew2, containers: [{name: c, image: c}]}
status: {podIP: 172.30.0.201}
---
apiVersion: v1
kind: Service
metadata: {name: wped, namespace: app, labels: {istio.io/use-waypoint: wp}}
spec: {clusterIP: 10.0.0.5, selector: {app: remote}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: app}
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
metadata: {name: wp-0, namespace: app, labels: {gateway.networking.k8s.io/gateway-name: wp, istio.io/dataplane-mode: none, topology.istio.io/network: network2}}
spec: {nodeName: b, serviceAccountName: wp, containers: [{name: c, image: c}]}
status: {podIP: 10.244.1.20}
`

func networkStore(t testing.TB) *state.Store {
	t.Helper()
	objs := &local.Objects{}
	if err := objs.Decode("networks.yaml", []byte(networks)); err != nil {
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

func TestBuildDoubleHBONE(t *testing.T) {
	s := networkStore(t)
	type want struct {
		path     route.Path
		nextHop  string
		upstream string // inner identity's workload
		gateway  string // outer identity's workload; "" = not double HBONE
		host     string
		reason   route.Reason
	}
	cases := []struct {
		name string
		to   string
		want want
	}{
		{"remote-only endpoint goes through the network gateway", "10.0.0.1:80",
			want{route.PathDirect, "172.30.0.201:15008", "remote-0", "ew2-0", "remote.app.svc.cluster.local:80", route.ReasonServiceEndpoint}},
		{"same-network endpoint is direct", "10.0.0.2:80",
			want{route.PathDirect, "10.244.0.3:15008", "local-0", "", "", route.ReasonServiceEndpoint}},
		{"remote endpoint without a network gateway is rejected", "10.0.0.3:80",
			want{path: route.PathReject, upstream: "nogw-0", reason: route.ReasonNoNetworkGateway}},
		{"unknown network gateway is rejected", "10.0.0.4:80",
			want{path: route.PathReject, upstream: "badgw-0", reason: route.ReasonUnknownNetworkGateway}},
		{"service waypoint on another network goes through its gateway", "10.0.0.5:80",
			want{route.PathWaypoint, "172.30.0.201:15008", "wp-0", "ew2-0", "wped.app.svc.cluster.local:80", route.ReasonServiceWaypoint}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := &route.Request{Source: workload(t, s, "app", "client"), SourceIP: netip.MustParseAddr("10.244.0.10"),
				Destination: netip.MustParseAddrPort(tc.to), Network: "network1", Rand: fixed}
			p := route.Build(s, req)
			desc := route.Describe(s, req, &p)
			got := want{path: p.Path, reason: p.Reason}
			if p.NextHop.IsValid() {
				got.nextHop = p.NextHop.String()
			}
			if p.Upstream != nil {
				got.upstream = p.Upstream.Name
			}
			if p.DoubleHBONE() {
				got.gateway = p.GatewayUpstream.Name
				got.host = p.Host + ":" + itoa(p.HostPort)
				if p.Authority.IsValid() || p.Protocol != route.ProtocolHBONE {
					t.Errorf("double HBONE plan with authority %v, protocol %v", p.Authority, p.Protocol)
				}
			}
			if got != tc.want {
				t.Errorf("plan %+v, want %+v (%s)", got, tc.want, desc)
			}
			if tc.want.gateway != "" && !strings.Contains(desc, "double HBONE") {
				t.Errorf("description does not say double HBONE: %s", desc)
			}
		})
	}
}

// TestBuildDoubleHBONEIdentities: the outer connection expects the gateway's identity, the inner one the
// destination's (and the service's SANs), never each other's.
func TestBuildDoubleHBONEIdentities(t *testing.T) {
	s := networkStore(t)
	req := &route.Request{Source: workload(t, s, "app", "client"), Destination: netip.MustParseAddrPort("10.0.0.1:80"),
		Network: "network1", Rand: fixed}
	p := route.Build(s, req)
	var outer, inner []string
	p.GatewayIdentities(func(id string) { outer = append(outer, id) })
	p.ExpectedIdentities(func(id string) { inner = append(inner, id) })
	if strings.Join(outer, ",") != "spiffe://cluster.local/ns/istio-system/sa/ew2" {
		t.Errorf("outer identities %v", outer)
	}
	if strings.Join(inner, ",") != "spiffe://cluster.local/ns/app/sa/remote" {
		t.Errorf("inner identities %v", inner)
	}
	if n := testing.AllocsPerRun(100, func() { route.Build(s, req) }); n != 0 {
		t.Errorf("Build allocates %v times for double HBONE", n)
	}
}

func itoa(n uint16) string {
	return netip.AddrPortFrom(netip.IPv4Unspecified(), n).String()[len("0.0.0.0:"):]
}
