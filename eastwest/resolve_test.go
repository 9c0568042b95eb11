package eastwest

import (
	"testing"

	"github.com/ambit-mesh/ambit/config/local"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// resolveYAML: service svc in app (8080 via named port web) with endpoints on network2 (ready, not
// ready, outside the mesh) and network1; service tcp (numeric target 9090) whose only endpoint is on
// network1; a same-named service in namespace other.
const resolveYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient, topology.istio.io/network: network2}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy, labels: {topology.istio.io/network: network2}}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: app}
spec: {clusterIP: 10.96.0.10, selector: {app: svc}, ports: [{port: 80, targetPort: web}]}
---
apiVersion: v1
kind: Service
metadata: {name: tcp, namespace: app}
spec: {clusterIP: 10.96.0.11, selector: {app: tcp}, ports: [{port: 70, targetPort: 9090}]}
---
apiVersion: v1
kind: Pod
metadata: {name: ready, namespace: app, labels: {app: svc}}
spec: {nodeName: b, containers: [{name: c, image: c, ports: [{name: web, containerPort: 8080}]}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: notready, namespace: app, labels: {app: svc}}
spec: {nodeName: b, containers: [{name: c, image: c, ports: [{name: web, containerPort: 8080}]}]}
status: {podIP: 10.244.1.3, conditions: [{type: Ready, status: "False"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere, namespace: app, labels: {app: svc, topology.istio.io/network: network1}}
spec: {nodeName: a, containers: [{name: c, image: c, ports: [{name: web, containerPort: 8080}]}]}
status: {podIP: 10.244.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: tcp-0, namespace: app, labels: {app: tcp, topology.istio.io/network: network1}}
spec: {nodeName: a, containers: [{name: c, image: c}]}
status: {podIP: 10.244.0.3}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: legacy}
spec: {clusterIP: 10.96.0.12, selector: {app: plain}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: plain-0, namespace: legacy, labels: {app: plain}}
spec: {nodeName: b, containers: [{name: c, image: c}]}
status: {podIP: 10.244.1.9}
`

func TestResolve(t *testing.T) {
	objs := &local.Objects{}
	if err := objs.Decode("resolve.yaml", []byte(resolveYAML)); err != nil {
		t.Fatal(err)
	}
	res, err := local.Compile(objs, local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := state.NewStore()
	s.Replace(&res.Snapshot)
	cases := []struct {
		name, host string
		port       uint16
		why        Why
		endpoint   string
		hop        string
	}{
		{"only the ready mesh endpoint on the gateway's network", "svc.app.svc.cluster.local", 80, Found, "ready", "10.244.1.2:15008"},
		{"unknown hostname", "nope.app.svc.cluster.local", 80, NoService, "", ""},
		{"undeclared port", "svc.app.svc.cluster.local", 81, NoPort, "", ""},
		{"endpoints only on another network", "tcp.app.svc.cluster.local", 70, NoEndpoint, "", ""},
		{"endpoints outside the mesh cannot take the inner HBONE", "plain.legacy.svc.cluster.local", 80, NoEndpoint, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for range 20 { // every pick, not one lucky draw
				tgt, why := Resolve(s, "network2", "istio-system", tc.host, tc.port, nil)
				got := ""
				if tgt.Endpoint != nil {
					got = tgt.Endpoint.Name
				}
				if why != tc.why || got != tc.endpoint || tc.hop != "" && tgt.NextHop.String() != tc.hop {
					t.Fatalf("Resolve = %v %q %v, want %v %q %s", why, got, tgt.NextHop, tc.why, tc.endpoint, tc.hop)
				}
			}
		})
	}
}
