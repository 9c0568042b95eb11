// Package synth generates large, realistic Kubernetes configurations for benchmarks: namespaces (half
// of them ambient, every tenth with a namespace waypoint), services with ClusterIPs and pods spread
// over nodes. Production code never imports it.
package synth

import (
	"fmt"
	"strings"
)

// Size says how big a configuration to generate.
type Size struct {
	Namespaces, Services, Pods, Nodes int
}

// Default is the benchmark size of issue 2: 500 namespaces, 2,000 services, 10,000 pods.
var Default = Size{Namespaces: 500, Services: 2000, Pods: 10000, Nodes: 50}

// YAML returns a multi-document YAML stream of the configuration.
func YAML(sz Size) []byte {
	var b strings.Builder
	b.Grow(sz.Pods*400 + sz.Services*300)
	for n := range sz.Namespaces {
		fmt.Fprintf(&b, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns%d\n  labels:\n", n)
		if n%2 == 0 {
			b.WriteString("    istio.io/dataplane-mode: ambient\n")
		} else {
			b.WriteString("    team: t\n")
		}
		if n%10 == 0 {
			b.WriteString("    istio.io/use-waypoint: waypoint\n")
		}
		b.WriteString("---\n")
		if n%10 == 0 {
			fmt.Fprintf(&b, `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: ns%d
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
status:
  addresses:
  - type: IPAddress
    value: %s
  - type: Hostname
    value: waypoint.ns%d.svc.cluster.local
---
apiVersion: v1
kind: Service
metadata:
  name: waypoint
  namespace: ns%d
  labels:
    gateway.istio.io/managed: istio.io-mesh-controller
spec:
  clusterIP: %s
  selector:
    gateway.networking.k8s.io/gateway-name: waypoint
  ports:
  - name: mesh
    port: 15008
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: ns%d
  labels:
    gateway.networking.k8s.io/gateway-name: waypoint
    istio.io/dataplane-mode: none
spec:
  nodeName: node%d
  serviceAccountName: waypoint
  containers:
  - name: proxy
    image: ambit
status:
  podIP: %s
---
`, n, ip(96, n), n, n, ip(96, n), n, n%sz.Nodes, ip(11, n))
		}
	}
	for s := range sz.Services {
		ns := s % sz.Namespaces
		fmt.Fprintf(&b, `apiVersion: v1
kind: Service
metadata:
  name: svc%d
  namespace: ns%d
spec:
  clusterIP: %s
  selector:
    app: svc%d
  ports:
  - name: http
    port: 80
    targetPort: 8080
  - name: grpc
    port: 9090
---
`, s, ns, ip(100, s), s)
	}
	for p := range sz.Pods {
		s := p % sz.Services
		ns := s % sz.Namespaces
		fmt.Fprintf(&b, `apiVersion: v1
kind: Pod
metadata:
  name: pod%d
  namespace: ns%d
  labels:
    app: svc%d
    version: v%d
spec:
  nodeName: node%d
  serviceAccountName: sa%d
  containers:
  - name: app
    image: app
    ports:
    - name: http
      containerPort: 8080
status:
  podIP: %s
---
`, p, ns, s, p%3, p%sz.Nodes, s, ip(10, p))
	}
	return []byte(b.String())
}

// ip returns a distinct IPv4 address in <first>.0.0.0/8 for index i.
func ip(first, i int) string {
	return fmt.Sprintf("%d.%d.%d.%d", first, (i>>16)&0xff, (i>>8)&0xff, i&0xff+0)
}
