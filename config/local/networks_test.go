package local

import (
	"net/netip"
	"strconv"
	"testing"

	"github.com/ambit-mesh/ambit/mesh/state"
)

// networksYAML: two networks in one file, as a multi-primary istiod sees them. Namespace app is on
// network1 (the cluster's, from istio-system), pod remote carries network2, namespace far is on network2;
// each network has an east-west gateway, network2's with a custom HBONE port.
const networksYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: istio-system, labels: {topology.istio.io/network: network1}}
---
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: far, labels: {istio.io/dataplane-mode: ambient, topology.istio.io/network: network2}}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: app}
spec: {clusterIP: 10.96.0.10, selector: {app: svc}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: farsvc, namespace: far}
spec: {clusterIP: 10.97.0.10, selector: {app: svc}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: local, namespace: app, labels: {app: svc}}
spec: {nodeName: a, containers: [{name: c, image: c}]}
status: {podIP: 10.244.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: remote, namespace: app, labels: {app: svc, topology.istio.io/network: network2}}
spec: {nodeName: b, containers: [{name: c, image: c}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: faraway, namespace: far, labels: {app: svc}}
spec: {nodeName: b, containers: [{name: c, image: c}]}
status: {podIP: 10.244.1.3}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ew2, namespace: istio-system, labels: {topology.istio.io/network: network2}}
spec:
  gatewayClassName: istio-east-west
  listeners: [{name: mesh, port: 15009, protocol: HBONE}]
status:
  addresses: [{type: Hostname, value: ew2.example.com}, {type: IPAddress, value: 172.30.0.201}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ew1, namespace: istio-system}
spec:
  gatewayClassName: istio-east-west
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status:
  addresses: [{value: 172.30.0.200}]
`

func TestNetworks(t *testing.T) {
	objs := &Objects{}
	if err := objs.Decode("networks.yaml", []byte(networksYAML)); err != nil {
		t.Fatal(err)
	}
	res, err := Compile(objs, Options{Network: "ignored-when-labelled"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Waypoints) != 0 {
		t.Errorf("east-west gateways became waypoints: %v", res.Waypoints)
	}
	gw := func(network, ip string, port uint16) string {
		return (&state.GatewayAddress{Address: state.NetworkAddress{Network: network, Addr: mustAddr(ip)}, HBONEMTLSPort: port}).Destination() +
			":" + itoa(port)
	}
	wls := map[string]*state.Workload{}
	for _, w := range res.Snapshot.Workloads {
		wls[w.Name] = w
	}
	for _, c := range []struct{ name, network, gateway string }{
		{"local", "network1", gw("network1", "172.30.0.200", 15008)},
		{"remote", "network2", gw("network2", "172.30.0.201", 15009)},
		{"faraway", "network2", gw("network2", "172.30.0.201", 15009)},
	} {
		w := wls[c.name]
		if w == nil {
			t.Fatalf("no workload %s", c.name)
		}
		if w.Network != c.network {
			t.Errorf("%s: network %q, want %q", c.name, w.Network, c.network)
		}
		got := ""
		if w.NetworkGateway != nil {
			got = w.NetworkGateway.Destination() + ":" + itoa(w.NetworkGateway.HBONEMTLSPort)
		}
		if got != c.gateway {
			t.Errorf("%s: network gateway %q, want %q", c.name, got, c.gateway)
		}
	}
	for _, s := range res.Snapshot.Services {
		want := map[string]string{"svc": "network1", "farsvc": "network2"}[s.Name]
		if len(s.Addresses) != 1 || s.Addresses[0].Network != want {
			t.Errorf("service %s: VIPs %v, want one on %s", s.Name, s.Addresses, want)
		}
	}
}

// TestNetworksDefault: without any network label the Options network applies and no workload gets a
// gateway (single-network meshes are unchanged).
func TestNetworksDefault(t *testing.T) {
	objs := &Objects{}
	src := `
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: app}
spec: {nodeName: a, containers: [{name: c, image: c}]}
status: {podIP: 10.244.0.2}
`
	if err := objs.Decode("default.yaml", []byte(src)); err != nil {
		t.Fatal(err)
	}
	res, err := Compile(objs, Options{Network: "net0"})
	if err != nil {
		t.Fatal(err)
	}
	w := res.Snapshot.Workloads[0]
	if w.Network != "net0" || w.NetworkGateway != nil {
		t.Errorf("network %q gateway %v, want net0 and none", w.Network, w.NetworkGateway)
	}
}

// TestNetworkGatewayBadAddress: an east-west gateway with an unparsable address rejects the file.
func TestNetworkGatewayBadAddress(t *testing.T) {
	objs := &Objects{}
	src := `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ew, namespace: istio-system, labels: {topology.istio.io/network: net-x}}
spec:
  gatewayClassName: istio-east-west
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status:
  addresses: [{type: IPAddress, value: not-an-ip}]
`
	if err := objs.Decode("bad.yaml", []byte(src)); err != nil {
		t.Fatal(err)
	}
	if _, err := Compile(objs, Options{}); err == nil {
		t.Fatal("a bad gateway address was accepted")
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func itoa(p uint16) string { return strconv.Itoa(int(p)) }
