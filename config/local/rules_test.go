package local

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/mesh/binding"
	"github.com/ambit-mesh/ambit/mesh/istio"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// The fixture of docs/waypoint-rules.md §8.1: namespaces app and infra, Service app/svc (10.0.0.1) selecting
// Pod app/pod (10.1.0.1), WorkloadEntry app/we, and ready istio-waypoint Gateways.

type gwSpec struct {
	ns, name string
	forType  string // "" = no label
	hasFor   bool
	ar       string // "", "All", "Same", or "Selector:<k>=<v>"
	notReady bool   // no status addresses
	ipOnly   string // only an IPAddress status address
	class    string // default istio-waypoint
	labels   map[string]string
}

func gatewayYAML(g gwSpec) string {
	var b strings.Builder
	class := g.class
	if class == "" {
		class = "istio-waypoint"
	}
	fmt.Fprintf(&b, "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: %s\n  namespace: %s\n", g.name, g.ns)
	lbls := map[string]string{}
	for k, v := range g.labels {
		lbls[k] = v
	}
	if g.hasFor {
		lbls[istio.LabelWaypointFor] = g.forType
	}
	writeLabels(&b, "  ", lbls)
	fmt.Fprintf(&b, "spec:\n  gatewayClassName: %s\n  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n", class)
	switch {
	case g.ar == "":
	case strings.HasPrefix(g.ar, "Selector:"):
		k, v, _ := strings.Cut(strings.TrimPrefix(g.ar, "Selector:"), "=")
		fmt.Fprintf(&b, "    allowedRoutes:\n      namespaces:\n        from: Selector\n        selector:\n          matchLabels:\n            %s: %s\n", k, v)
	default:
		fmt.Fprintf(&b, "    allowedRoutes:\n      namespaces:\n        from: %s\n", g.ar)
	}
	switch {
	case g.notReady:
	case g.ipOnly != "":
		fmt.Fprintf(&b, "status:\n  addresses:\n  - type: IPAddress\n    value: %s\n", g.ipOnly)
	default:
		host := g.name + "." + g.ns + ".svc.cluster.local"
		if class == "istio" {
			host = g.name + "-istio." + g.ns + ".svc.cluster.local"
		}
		fmt.Fprintf(&b, "status:\n  addresses:\n  - type: IPAddress\n    value: 10.96.0.50\n  - type: Hostname\n    value: %s\n", host)
	}
	return b.String()
}

func writeLabels(b *strings.Builder, indent string, lbls map[string]string) {
	if len(lbls) == 0 {
		return
	}
	keys := make([]string, 0, len(lbls))
	for k := range lbls {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b.WriteString(indent + "labels:\n")
	for _, k := range keys {
		fmt.Fprintf(b, "%s  %s: %q\n", indent, k, lbls[k])
	}
}

type fixture struct {
	appNS, svcLabels, podLabels, weLabels map[string]string
	headless                              bool
	gateways                              []gwSpec
	classes                               map[string]map[string]string // GatewayClass name -> labels
	extra                                 string
	noWE                                  bool
}

func (f fixture) yaml() string {
	var b strings.Builder
	nsl := map[string]string{}
	for k, v := range f.appNS {
		nsl[k] = v
	}
	b.WriteString("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: app\n")
	writeLabels(&b, "  ", nsl)
	b.WriteString("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: infra\n---\n")
	b.WriteString("apiVersion: v1\nkind: Service\nmetadata:\n  name: svc\n  namespace: app\n")
	writeLabels(&b, "  ", f.svcLabels)
	clusterIP := "10.0.0.1"
	if f.headless {
		clusterIP = "None"
	}
	fmt.Fprintf(&b, "spec:\n  clusterIP: %s\n  selector:\n    app: svc\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n---\n", clusterIP)
	pl := map[string]string{"app": "svc"}
	for k, v := range f.podLabels {
		pl[k] = v
	}
	b.WriteString("apiVersion: v1\nkind: Pod\nmetadata:\n  name: pod\n  namespace: app\n")
	writeLabels(&b, "  ", pl)
	b.WriteString("spec:\n  nodeName: node1\n  containers:\n  - name: app\n    image: app\nstatus:\n  podIP: 10.1.0.1\n---\n")
	if !f.noWE {
		b.WriteString("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: we\n  namespace: app\n")
		writeLabels(&b, "  ", f.weLabels)
		b.WriteString("spec:\n  address: 10.2.0.1\n---\n")
	}
	for name, lbls := range f.classes {
		fmt.Fprintf(&b, "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: %s\n", name)
		writeLabels(&b, "  ", lbls)
		b.WriteString("spec:\n  controllerName: istio.io/mesh-controller\n---\n")
	}
	for _, g := range f.gateways {
		b.WriteString(gatewayYAML(g) + "---\n")
	}
	b.WriteString(f.extra)
	return b.String()
}

func compileYAML(t testing.TB, src string) *Result {
	t.Helper()
	objs := &Objects{}
	if err := objs.Decode("fixture.yaml", []byte(src)); err != nil {
		t.Fatalf("decode: %v\n%s", err, src)
	}
	res, err := Compile(objs, Options{})
	if err != nil {
		t.Fatalf("compile: %v\n%s", err, src)
	}
	return res
}

func findBinding(res *Result, kind, ns, name string) *Binding {
	for i := range res.Bindings {
		b := &res.Bindings[i]
		if b.Kind == kind && b.Namespace == ns && b.Name == name {
			return b
		}
	}
	return nil
}

func condString(c *binding.Condition) string {
	if c == nil {
		return "-"
	}
	return c.Status + " " + c.Reason + " " + c.Message
}

func wp(ns, name string, f string) gwSpec {
	return gwSpec{ns: ns, name: name, forType: f, hasFor: f != ""}
}

func lbl(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

const (
	accepted = "True WaypointAccepted Successfully attached to waypoint "
)

func notReadyCond(key string) string {
	return `False WaypointIsNotReady waypoint "` + key + `" is not ready`
}
func deniedCond(key string) string {
	return `False AttachmentDenied we are not permitted to attach to waypoint "` + key + `" (missing allowedRoutes?)`
}
func unsupported(ttype, key string) string {
	return `False UnsupportedTrafficType attempting to bind to traffic type "` + ttype + `" which the waypoint "` + key + `" does not support`
}

// TestWaypointRules covers every applicable row of docs/waypoint-rules.md §8.1, each subtest named after its row.
func TestWaypointRules(t *testing.T) {
	uw := istio.LabelUseWaypoint
	uwn := istio.LabelUseWaypointNamespace
	cases := []struct {
		name            string
		f               fixture
		svcWP, podWP    string
		weWP            string
		svcCond, weCond string
	}{
		{name: "1 gateway without use-waypoint anywhere", f: fixture{gateways: []gwSpec{wp("app", "wp", "")}},
			svcCond: "-", weCond: "-"},
		{name: "2 namespace waypoint service-only", f: fixture{appNS: lbl(uw, "wp"), gateways: []gwSpec{wp("app", "wp", "")}},
			svcWP: "app/wp", svcCond: accepted + "app/wp", weCond: "-"},
		{name: "3 namespace waypoint for all", f: fixture{appNS: lbl(uw, "wp"), gateways: []gwSpec{wp("app", "wp", "all")}},
			svcWP: "app/wp", podWP: "app/wp", weWP: "app/wp", svcCond: accepted + "app/wp", weCond: accepted + "app/wp"},
		{name: "4 namespace waypoint for workload", f: fixture{appNS: lbl(uw, "wp"), gateways: []gwSpec{wp("app", "wp", "workload")}},
			podWP: "app/wp", weWP: "app/wp", svcCond: unsupported("service", "app/wp"), weCond: accepted + "app/wp"},
		{name: "5 namespace waypoint for none", f: fixture{appNS: lbl(uw, "wp"), gateways: []gwSpec{wp("app", "wp", "none")}},
			svcCond: unsupported("service", "app/wp"), weCond: "-"},
		{name: "6 namespace waypoint with unknown traffic type", f: fixture{appNS: lbl(uw, "wp"), gateways: []gwSpec{wp("app", "wp", "bogus")}},
			svcCond: unsupported("service", "app/wp"), weCond: "-"},
		{name: "7 service label", f: fixture{svcLabels: lbl(uw, "wp"), gateways: []gwSpec{wp("app", "wp", "")}},
			svcWP: "app/wp", svcCond: accepted + "app/wp", weCond: "-"},
		{name: "8 pod label to service-only waypoint", f: fixture{podLabels: lbl(uw, "wp"), weLabels: lbl(uw, "wp"), gateways: []gwSpec{wp("app", "wp", "")}},
			svcCond: "-", weCond: unsupported("workload", "app/wp")},
		{name: "9 pod label to workload waypoint", f: fixture{podLabels: lbl(uw, "pwp"), weLabels: lbl(uw, "pwp"), gateways: []gwSpec{wp("app", "pwp", "workload")}},
			podWP: "app/pwp", weWP: "app/pwp", svcCond: "-", weCond: accepted + "app/pwp"},
		{name: "10 service label to missing waypoint", f: fixture{svcLabels: lbl(uw, "missing")},
			svcCond: notReadyCond("app/missing"), weCond: "-"},
		{name: "11 gateway without status addresses", f: fixture{svcLabels: lbl(uw, "wp"), gateways: []gwSpec{{ns: "app", name: "wp", notReady: true}}},
			svcCond: notReadyCond("app/wp"), weCond: "-"},
		{name: "12 namespace label to missing waypoint", f: fixture{appNS: lbl(uw, "missing")},
			svcCond: notReadyCond("app/missing"), weCond: notReadyCond("app/missing")},
		{name: "13 service label beats namespace", f: fixture{appNS: lbl(uw, "nswp"), svcLabels: lbl(uw, "svcwp"),
			gateways: []gwSpec{wp("app", "nswp", "all"), wp("app", "svcwp", "service")}},
			svcWP: "app/svcwp", podWP: "app/nswp", weWP: "app/nswp", svcCond: accepted + "app/svcwp", weCond: accepted + "app/nswp"},
		{name: "16 service opts out with none", f: fixture{appNS: lbl(uw, "nswp"), svcLabels: lbl(uw, "none"), gateways: []gwSpec{wp("app", "nswp", "")}},
			svcCond: "-", weCond: "-"},
		{name: "17 pod opts out with none", f: fixture{appNS: lbl(uw, "nswp"), podLabels: lbl(uw, "none"), weLabels: lbl(uw, "none"),
			gateways: []gwSpec{wp("app", "nswp", "all")}},
			svcWP: "app/nswp", svcCond: accepted + "app/nswp", weCond: "-"},
		{name: "18 pod label beats namespace", f: fixture{appNS: lbl(uw, "nswp"), podLabels: lbl(uw, "pwp"), weLabels: lbl(uw, "pwp"),
			gateways: []gwSpec{wp("app", "nswp", "all"), wp("app", "pwp", "workload")}},
			svcWP: "app/nswp", podWP: "app/pwp", weWP: "app/pwp", svcCond: accepted + "app/nswp", weCond: accepted + "app/pwp"},
		{name: "20 namespace none", f: fixture{appNS: lbl(uw, "none"), gateways: []gwSpec{wp("app", "none", "all")}},
			svcCond: "-", weCond: "-"},
		{name: "23 cross-namespace without allowedRoutes", f: fixture{svcLabels: lbl(uw, "wp", uwn, "infra"), gateways: []gwSpec{wp("infra", "wp", "")}},
			svcCond: deniedCond("infra/wp"), weCond: "-"},
		{name: "24 cross-namespace allowedRoutes All", f: fixture{svcLabels: lbl(uw, "wp", uwn, "infra"),
			gateways: []gwSpec{{ns: "infra", name: "wp", ar: "All"}}},
			svcWP: "infra/wp", svcCond: accepted + "infra/wp", weCond: "-"},
		{name: "25 cross-namespace allowedRoutes Selector", f: fixture{svcLabels: lbl(uw, "wp", uwn, "infra"),
			gateways: []gwSpec{{ns: "infra", name: "wp", ar: "Selector:kubernetes.io/metadata.name=app"}}},
			svcWP: "infra/wp", svcCond: accepted + "infra/wp", weCond: "-"},
		{name: "28 namespace labels cross-namespace for all", f: fixture{appNS: lbl(uw, "wp", uwn, "infra"),
			gateways: []gwSpec{{ns: "infra", name: "wp", forType: "all", hasFor: true, ar: "All"}}},
			svcWP: "infra/wp", podWP: "infra/wp", weWP: "infra/wp", svcCond: accepted + "infra/wp", weCond: accepted + "infra/wp"},
		{name: "29 namespace labels cross-namespace Same", f: fixture{appNS: lbl(uw, "wp", uwn, "infra"),
			gateways: []gwSpec{{ns: "infra", name: "wp", forType: "all", hasFor: true, ar: "Same"}}},
			svcCond: deniedCond("infra/wp"), weCond: deniedCond("infra/wp")},
		{name: "31 explicit own namespace", f: fixture{svcLabels: lbl(uw, "wp", uwn, "app"), gateways: []gwSpec{wp("app", "wp", "")}},
			svcWP: "app/wp", svcCond: accepted + "app/wp", weCond: "-"},
		{name: "32 gateway class default applies", f: fixture{appNS: lbl(uw, "wp"), classes: map[string]map[string]string{"istio-waypoint": lbl(istio.LabelWaypointFor, "all")},
			gateways: []gwSpec{wp("app", "wp", "")}},
			svcWP: "app/wp", podWP: "app/wp", weWP: "app/wp", svcCond: accepted + "app/wp", weCond: accepted + "app/wp"},
		{name: "33 gateway label beats class", f: fixture{appNS: lbl(uw, "wp"), classes: map[string]map[string]string{"istio-waypoint": lbl(istio.LabelWaypointFor, "workload")},
			gateways: []gwSpec{wp("app", "wp", "service")}},
			svcWP: "app/wp", svcCond: accepted + "app/wp", weCond: "-"},
		{name: "36 east-west service never bound", f: fixture{appNS: lbl(uw, "wp"), svcLabels: lbl(istio.LabelGatewayManaged, istio.ManagedEastWestController),
			gateways: []gwSpec{wp("app", "wp", "")}},
			svcCond: "-", weCond: "-"},
		{name: "37 headless service", f: fixture{headless: true, svcLabels: lbl(uw, "wp"), gateways: []gwSpec{wp("app", "wp", "service")}},
			svcWP: "app/wp", svcCond: accepted + "app/wp", weCond: "-"},
		{name: "38 headless service in namespace for all", f: fixture{headless: true, appNS: lbl(uw, "wp"), gateways: []gwSpec{wp("app", "wp", "all")}},
			svcWP: "app/wp", podWP: "app/wp", weWP: "app/wp", svcCond: accepted + "app/wp", weCond: accepted + "app/wp"},
		{name: "45 ingress-use-waypoint true", f: fixture{svcLabels: lbl(uw, "wp", istio.LabelIngressUseWaypoint, "true"), gateways: []gwSpec{wp("app", "wp", "")}},
			svcWP: "app/wp", svcCond: accepted + "app/wp. Ingress traffic will traverse the waypoint", weCond: "-"},
		{name: "46 ingress-use-waypoint unparseable", f: fixture{svcLabels: lbl(uw, "wp", istio.LabelIngressUseWaypoint, "eurt"), gateways: []gwSpec{wp("app", "wp", "")}},
			svcWP: "app/wp", svcCond: accepted + "app/wp. Ingress traffic is not using the waypoint, set the istio.io/ingress-use-waypoint label to true if desired.", weCond: "-"},
		{name: "48 namespace ingress label without binding", f: fixture{appNS: lbl(istio.LabelIngressUseWaypoint, "true")},
			svcCond: "-", weCond: "-"},
		{name: "49 bound then gateway deleted", f: fixture{svcLabels: lbl(uw, "wp")},
			svcCond: notReadyCond("app/wp"), weCond: "-"},
		{name: "52 quirk: class istio ingress gateway is bound", f: fixture{svcLabels: lbl(uw, "my-ingress"), gateways: []gwSpec{{ns: "app", name: "my-ingress", class: "istio"}}},
			svcWP: "app/my-ingress", svcCond: accepted + "app/my-ingress", weCond: "-"},
		// Ambit's own cases.
		{name: "uppercase None is an ordinary missing name", f: fixture{svcLabels: lbl(uw, "None")},
			svcCond: notReadyCond("app/None"), weCond: "-"},
		{name: "use-waypoint-namespace without use-waypoint is ignored", f: fixture{appNS: lbl(uw, "wp"), svcLabels: lbl(uwn, "infra"),
			gateways: []gwSpec{wp("app", "wp", ""), {ns: "infra", name: "wp", ar: "All"}}},
			svcWP: "app/wp", svcCond: accepted + "app/wp", weCond: "-"},
		{name: "rejected object label does not fall back to namespace", f: fixture{appNS: lbl(uw, "nswp"), svcLabels: lbl(uw, "pwp"),
			gateways: []gwSpec{wp("app", "nswp", "all"), wp("app", "pwp", "workload")}},
			podWP: "app/nswp", weWP: "app/nswp", svcCond: unsupported("service", "app/pwp"), weCond: accepted + "app/nswp"},
		{name: "selector applies even in the same namespace", f: fixture{appNS: lbl(uw, "wp"),
			gateways: []gwSpec{{ns: "app", name: "wp", ar: "Selector:team=blue"}}},
			svcCond: deniedCond("app/wp"), weCond: deniedCond("app/wp")},
		{name: "empty waypoint-for label acts like none", f: fixture{svcLabels: lbl(uw, "wp"), gateways: []gwSpec{{ns: "app", name: "wp", hasFor: true}}},
			svcCond: unsupported("service", "app/wp"), weCond: "-"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := compileYAML(t, tc.f.yaml())
			svc := findBinding(res, "Service", "app", "svc")
			pod := findBinding(res, "Pod", "app", "pod")
			we := findBinding(res, "WorkloadEntry", "app", "we")
			if svc.Waypoint != tc.svcWP {
				t.Errorf("service waypoint = %q, want %q", svc.Waypoint, tc.svcWP)
			}
			if pod.Waypoint != tc.podWP {
				t.Errorf("pod waypoint = %q, want %q", pod.Waypoint, tc.podWP)
			}
			if pod.Condition != nil {
				t.Errorf("pod has a condition: %+v", pod.Condition)
			}
			if we.Waypoint != tc.weWP {
				t.Errorf("workload entry waypoint = %q, want %q", we.Waypoint, tc.weWP)
			}
			if got := condString(svc.Condition); got != tc.svcCond {
				t.Errorf("service condition = %q\nwant %q", got, tc.svcCond)
			}
			if got := condString(we.Condition); got != tc.weCond {
				t.Errorf("workload entry condition = %q\nwant %q", got, tc.weCond)
			}
			// The state carries the same decision as the bindings view.
			for _, s := range res.Snapshot.Services {
				if s.Name == "svc" && (s.Waypoint != nil) != (tc.svcWP != "") {
					t.Errorf("state service waypoint = %+v, binding %q", s.Waypoint, tc.svcWP)
				}
			}
			for _, w := range res.Snapshot.Workloads {
				if w.Name == "pod" && (w.Waypoint != nil) != (tc.podWP != "") {
					t.Errorf("state pod waypoint = %+v, binding %q", w.Waypoint, tc.podWP)
				}
			}
		})
	}
}

// TestWaypointRulesInstances covers row 34: waypoint pods and the waypoint's own Service never get a
// waypoint, while everything else in the namespace does.
func TestWaypointRulesInstances(t *testing.T) {
	f := fixture{appNS: lbl(istio.LabelUseWaypoint, "wp"), gateways: []gwSpec{wp("app", "wp", "all")}, extra: `
apiVersion: v1
kind: Service
metadata:
  name: wp
  namespace: app
  labels:
    gateway.istio.io/managed: istio.io-mesh-controller
    gateway.networking.k8s.io/gateway-name: wp
spec:
  clusterIP: 10.96.0.50
  selector:
    gateway.networking.k8s.io/gateway-name: wp
  ports:
  - name: mesh
    port: 15008
---
apiVersion: v1
kind: Pod
metadata:
  name: wp-abc
  namespace: app
  labels:
    gateway.networking.k8s.io/gateway-name: wp
    istio.io/dataplane-mode: none
spec:
  serviceAccountName: wp
  containers:
  - name: proxy
    image: ambit
status:
  podIP: 10.1.0.9
`}
	res := compileYAML(t, f.yaml())
	if b := findBinding(res, "Service", "app", "wp"); b.Waypoint != "" || b.Condition != nil {
		t.Errorf("waypoint service bound: %+v", b)
	}
	if b := findBinding(res, "Pod", "app", "wp-abc"); b.Waypoint != "" {
		t.Errorf("waypoint pod bound: %+v", b)
	}
	if b := findBinding(res, "Service", "app", "svc"); b.Waypoint != "app/wp" {
		t.Errorf("svc waypoint = %q", b.Waypoint)
	}
	if b := findBinding(res, "Pod", "app", "pod"); b.Waypoint != "app/wp" {
		t.Errorf("pod waypoint = %q", b.Waypoint)
	}
	if len(res.Waypoints) != 1 || strings.Join(res.Waypoints[0].ServiceAccounts, ",") != "wp" {
		t.Errorf("waypoint service accounts: %+v", res.Waypoints)
	}
}

// TestWaypointRulesServiceEntries covers rows 39, 40 and 42, and the endpoint rule of R9.
func TestWaypointRulesServiceEntries(t *testing.T) {
	se := func(lbls, hosts, endpointLabels string) string {
		return `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ext
  namespace: app
` + lbls + `
spec:
  hosts: ` + hosts + `
  addresses: [240.0.0.1]
  ports:
  - number: 443
    name: tls
    protocol: TLS
  resolution: STATIC
  endpoints:
  - address: 240.0.1.1
` + endpointLabels + "\n---\n"
	}
	cases := []struct {
		name, extra        string
		gws                []gwSpec
		seWP, seCond, epWP string
		missing            bool
	}{
		{name: "39 service entry bound", extra: se("  labels: {istio.io/use-waypoint: egress}", "[a.example.com]", ""),
			gws: []gwSpec{wp("app", "egress", "")}, seWP: "app/egress", seCond: accepted + "app/egress"},
		{name: "40 service entry to workload-only waypoint", extra: se("  labels: {istio.io/use-waypoint: egress}", "[a.example.com]", ""),
			gws: []gwSpec{wp("app", "egress", "workload")}, seCond: unsupported("service", "app/egress")},
		{name: "42 wildcard host without waypoint", extra: se("", `["*.example.com"]`, ""), seCond: "-", missing: true},
		{name: "endpoints use their own labels, not the entry's", extra: se("  labels: {istio.io/use-waypoint: egress}", "[a.example.com]", "    labels: {istio.io/use-waypoint: epwp}"),
			gws: []gwSpec{wp("app", "egress", ""), wp("app", "epwp", "workload")}, seWP: "app/egress", seCond: accepted + "app/egress", epWP: "app/epwp"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := compileYAML(t, fixture{gateways: tc.gws, extra: tc.extra, noWE: true}.yaml())
			b := findBinding(res, "ServiceEntry", "app", "ext")
			if b.Waypoint != tc.seWP {
				t.Errorf("waypoint = %q, want %q", b.Waypoint, tc.seWP)
			}
			if got := condString(b.Condition); got != tc.seCond {
				t.Errorf("condition = %q, want %q", got, tc.seCond)
			}
			if tc.missing != (len(b.Extra) == 1 && b.Extra[0].Reason == binding.ReasonNoWaypointForWildcard) {
				t.Errorf("WaypointMissing = %+v, want %v", b.Extra, tc.missing)
			}
			var ep string
			for _, w := range res.Snapshot.Workloads {
				if strings.Contains(w.UID, "ServiceEntry") && w.Waypoint != nil {
					ep = w.Waypoint.Destination()
				}
			}
			if want := map[string]string{"app/epwp": "app/epwp.app.svc.cluster.local"}[tc.epWP]; ep != want {
				t.Errorf("endpoint waypoint = %q, want %q", ep, want)
			}
		})
	}
}

// TestWaypointAddress covers R13 and row 50: hostname preferred, IP only when no hostname.
func TestWaypointAddress(t *testing.T) {
	res := compileYAML(t, fixture{svcLabels: lbl(istio.LabelUseWaypoint, "wp"), gateways: []gwSpec{{ns: "app", name: "wp", ipOnly: "10.96.0.50"}}}.yaml())
	for _, s := range res.Snapshot.Services {
		if s.Name == "svc" {
			if s.Waypoint == nil || s.Waypoint.IsHostname() || s.Waypoint.Destination() != "/10.96.0.50" || s.Waypoint.HBONEMTLSPort != 15008 {
				t.Fatalf("row 50: waypoint = %+v", s.Waypoint)
			}
		}
	}
	res = compileYAML(t, fixture{svcLabels: lbl(istio.LabelUseWaypoint, "wp"), gateways: []gwSpec{wp("app", "wp", "")}}.yaml())
	for _, s := range res.Snapshot.Services {
		if s.Name == "svc" && (s.Waypoint == nil || s.Waypoint.Destination() != "app/wp.app.svc.cluster.local") {
			t.Fatalf("hostname form: waypoint = %+v", s.Waypoint)
		}
	}
}

func TestServiceEntryDNS(t *testing.T) {
	res := compileYAML(t, `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: istio-egress, labels: {istio.io/use-waypoint: waypoint}}
spec:
  hosts: [api.example.test]
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: https, protocol: HTTP, targetPort: 8443}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: any, namespace: istio-egress}
spec:
  hosts: ["*.example.test"]
  resolution: DYNAMIC_DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
`)
	// The DNS entry's host is its one implicit endpoint, by hostname, for the waypoint to resolve.
	var w *state.Workload
	for _, x := range res.Snapshot.Workloads {
		if x.Name == "api" {
			w = x
		}
	}
	if w == nil || w.Hostname != "api.example.test" || len(w.Addresses) != 0 || len(w.Services) != 1 {
		t.Fatalf("implicit endpoint %+v", w)
	}
	if p, _ := w.Services[0].Target(443); p != 8443 {
		t.Errorf("target of 443: %d", p)
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "ServiceEntry istio-egress/any: spec.resolution: DYNAMIC_DNS is not implemented") {
		t.Errorf("warnings %q", res.Warnings)
	}
}
