package xdstest

import (
	"net/netip"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ambit-mesh/ambit/xdsclient/workloadapi"
	"github.com/ambit-mesh/ambit/xdsclient/workloadapi/security"
)

// Type URLs, for brevity in tests.
const (
	AddressType       = workloadapi.AddressTypeURL
	AuthorizationType = security.AuthorizationTypeURL
)

// Any wraps m, panicking on error (test fixtures only).
func Any(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

// IP returns the 4- or 16-byte form of ip.
func IP(ip string) []byte { return netip.MustParseAddr(ip).AsSlice() }

// PodUID is istiod's UID of a Kubernetes pod in cluster Kubernetes.
func PodUID(ns, name string) string { return "Kubernetes//Pod/" + ns + "/" + name }

// Hostname is the cluster.local FQDN of a Kubernetes service.
func Hostname(ns, name string) string { return name + "." + ns + ".svc.cluster.local" }

// ServiceName is the resource name of a Kubernetes service: "<ns>/<fqdn>".
func ServiceName(ns, name string) string { return ns + "/" + Hostname(ns, name) }

// Pod returns an Address holding an HBONE pod workload on node1 with IP ip, shaped as istiod sends it.
func Pod(ns, name, ip string, opts ...func(*workloadapi.Workload)) *workloadapi.Address {
	w := &workloadapi.Workload{
		Uid: PodUID(ns, name), Name: name, Namespace: ns, Addresses: [][]byte{IP(ip)},
		TunnelProtocol: workloadapi.TunnelProtocol_HBONE, ServiceAccount: name, Node: "node1",
		CanonicalName: name, CanonicalRevision: "latest", WorkloadType: workloadapi.WorkloadType_POD,
		WorkloadName: name, ClusterId: "Kubernetes",
	}
	for _, o := range opts {
		o(w)
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
}

// InService makes a pod an endpoint of service ns/name with port 80 → 8080.
func InService(ns, name string) func(*workloadapi.Workload) {
	return func(w *workloadapi.Workload) {
		if w.Services == nil {
			w.Services = map[string]*workloadapi.PortList{}
		}
		w.Services[ServiceName(ns, name)] = &workloadapi.PortList{Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}
	}
}

// Service returns an Address holding Kubernetes service ns/name with VIP vip (none if empty) and port 80 →
// 8080 (HTTP/1.1).
func Service(ns, name, vip string, opts ...func(*workloadapi.Service)) *workloadapi.Address {
	s := &workloadapi.Service{
		Name: name, Namespace: ns, Hostname: Hostname(ns, name), Canonical: true,
		Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080, AppProtocol: workloadapi.AppProtocol_HTTP11}},
	}
	if vip != "" {
		s.Addresses = []*workloadapi.NetworkAddress{{Address: IP(vip)}}
	}
	for _, o := range opts {
		o(s)
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
}

// WaypointHost is a GatewayAddress naming the waypoint service ns/name by hostname on port 15008, as istiod
// derives it from a Gateway's status.
func WaypointHost(ns, name string) *workloadapi.GatewayAddress {
	return &workloadapi.GatewayAddress{
		Destination: &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{
			Namespace: ns, Hostname: Hostname(ns, name)}},
		HboneMtlsPort: 15008,
	}
}

// Policy returns an Authorization allowing (or denying) the given principals.
func Policy(ns, name string, scope security.Scope, action security.Action, principals ...string) *security.Authorization {
	m := &security.Match{}
	for _, p := range principals {
		m.Principals = append(m.Principals, &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: p}})
	}
	return &security.Authorization{Name: name, Namespace: ns, Scope: scope, Action: action,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{m}}}}}}
}

// StaticStrict is istiod's converted STRICT PeerAuthentication policy in root namespace ns.
func StaticStrict(ns string) *security.Authorization {
	return &security.Authorization{Name: "istio_converted_static_strict", Namespace: ns,
		Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{
			NotPrincipals: []*security.StringMatch{{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}},
		}}}}}}}
}
