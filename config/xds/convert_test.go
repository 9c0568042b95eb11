package xds_test

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambit-mesh/ambit/config/xds"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/test/xdstest"
	wapi "github.com/ambit-mesh/ambit/xdsclient/workloadapi"
	"github.com/ambit-mesh/ambit/xdsclient/workloadapi/security"
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestConvertWorkloadFields(t *testing.T) {
	in := &wapi.Workload{
		Uid: "Kubernetes//Pod/demo/echo-1", Name: "echo-1", Namespace: "demo",
		Addresses: [][]byte{xdstest.IP("10.244.0.5"), xdstest.IP("fd00::5")}, Network: "net1",
		TunnelProtocol: wapi.TunnelProtocol_HBONE, TrustDomain: "td.example", ServiceAccount: "echo",
		Waypoint: xdstest.WaypointHost("demo", "waypoint"),
		NetworkGateway: &wapi.GatewayAddress{Destination: &wapi.GatewayAddress_Address{Address: &wapi.NetworkAddress{
			Network: "net2", Address: xdstest.IP("192.0.2.1")}}, HboneMtlsPort: 15009},
		Node: "node1", CanonicalName: "echo", CanonicalRevision: "v1", WorkloadType: wapi.WorkloadType_POD,
		WorkloadName: "echo", NativeTunnel: true,
		ApplicationTunnel: &wapi.ApplicationTunnel{Protocol: wapi.ApplicationTunnel_PROXY, Port: 15088},
		Services: map[string]*wapi.PortList{
			"demo/echo.demo.svc.cluster.local": {Ports: []*wapi.Port{{ServicePort: 80, TargetPort: 8080}}},
			"other/b.other.svc.cluster.local":  {Ports: []*wapi.Port{{ServicePort: 9090}}},
			"demo/a.demo.svc.cluster.local":    {},
		},
		AuthorizationPolicies: []string{"demo/allow", "istio-system/istio_converted_static_strict"},
		Status:                wapi.WorkloadStatus_UNHEALTHY, ClusterId: "c2",
		Locality:    &wapi.Locality{Region: "r", Zone: "z", Subzone: "s"},
		NetworkMode: wapi.NetworkMode_HOST_NETWORK, Capacity: wrapperspb.UInt32(7),
	}
	got, err := xds.ConvertWorkload(in)
	if err != nil {
		t.Fatal(err)
	}
	want := &state.Workload{
		UID: "Kubernetes//Pod/demo/echo-1", Name: "echo-1", Namespace: "demo",
		Addresses: []netip.Addr{addr("10.244.0.5"), addr("fd00::5")}, Network: "net1",
		TrustDomain: "td.example", ServiceAccount: "echo",
		Waypoint: &state.GatewayAddress{Hostname: state.NamespacedHostname{Namespace: "demo",
			Hostname: "waypoint.demo.svc.cluster.local"}, HBONEMTLSPort: 15008},
		NetworkGateway: &state.GatewayAddress{Address: state.NetworkAddress{Network: "net2", Addr: addr("192.0.2.1")},
			HBONEMTLSPort: 15009},
		Node: "node1", CanonicalName: "echo", CanonicalRevision: "v1", WorkloadName: "echo",
		ApplicationTunnel: &state.ApplicationTunnel{Protocol: state.AppTunnelProxy, Port: 15088},
		Services: []state.ServiceRef{
			{Service: state.NamespacedHostname{Namespace: "demo", Hostname: "a.demo.svc.cluster.local"}},
			{Service: state.NamespacedHostname{Namespace: "demo", Hostname: "echo.demo.svc.cluster.local"},
				Ports: []state.PortMapping{{ServicePort: 80, TargetPort: 8080}}},
			{Service: state.NamespacedHostname{Namespace: "other", Hostname: "b.other.svc.cluster.local"},
				Ports: []state.PortMapping{{ServicePort: 9090}}},
		},
		AuthorizationPolicies: []string{"demo/allow", "istio-system/istio_converted_static_strict"},
		ClusterID:             "c2", Locality: state.Locality{Region: "r", Zone: "z", Subzone: "s"}, Capacity: 7,
		Protocol: state.TunnelHBONE, Status: state.Unhealthy, NetworkMode: state.NetworkHost,
		WorkloadType: state.WorkloadPod, NativeTunnel: true,
	}
	if err := want.Validate(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ConvertWorkload:\n got %+v\nwant %+v", got, want)
	}
	if got.Identity() != "spiffe://td.example/ns/demo/sa/echo" {
		t.Errorf("identity = %s", got.Identity())
	}
}

func TestConvertWorkloadDefaults(t *testing.T) {
	got, err := xds.ConvertWorkload(&wapi.Workload{Uid: "u", Name: "p", Namespace: "ns", Addresses: [][]byte{xdstest.IP("10.0.0.1")},
		Waypoint:     &wapi.GatewayAddress{Destination: &wapi.GatewayAddress_Address{Address: &wapi.NetworkAddress{Address: xdstest.IP("10.96.0.9")}}},
		WorkloadType: wapi.WorkloadType(42)})
	if err != nil {
		t.Fatal(err)
	}
	if got.TrustDomain != "cluster.local" || got.ServiceAccount != "default" || got.ClusterID != "Kubernetes" ||
		got.Capacity != 1 || got.Protocol != state.TunnelNone || got.Status != state.Healthy ||
		got.WorkloadType != state.WorkloadDeployment || got.Waypoint.HBONEMTLSPort != 15008 {
		t.Errorf("defaults not applied: %+v", got)
	}
	if got.Identity() != "spiffe://cluster.local/ns/ns/sa/default" {
		t.Errorf("identity = %s", got.Identity())
	}
}

func TestConvertServiceFields(t *testing.T) {
	length32, length24 := uint32(32), uint32(24)
	in := &wapi.Service{
		Name: "echo", Namespace: "demo", Hostname: "echo.demo.svc.cluster.local",
		Addresses: []*wapi.NetworkAddress{{Address: xdstest.IP("10.96.0.10")}, {Network: "n2", Address: xdstest.IP("fd00::a"), Length: nil},
			{Address: xdstest.IP("10.96.0.11"), Length: &length32}, {Address: xdstest.IP("10.97.0.0"), Length: &length24}},
		Ports: []*wapi.Port{{ServicePort: 80, TargetPort: 8080, AppProtocol: wapi.AppProtocol_HTTP11},
			{ServicePort: 9090, AppProtocol: wapi.AppProtocol(99)}},
		SubjectAltNames: []string{"spiffe://cluster.local/ns/demo/sa/extra"},
		Waypoint:        xdstest.WaypointHost("demo", "waypoint"),
		LoadBalancing: &wapi.LoadBalancing{RoutingPreference: []wapi.LoadBalancing_Scope{wapi.LoadBalancing_NETWORK,
			wapi.LoadBalancing_REGION, wapi.LoadBalancing_ZONE}, Mode: wapi.LoadBalancing_FAILOVER, HealthPolicy: wapi.LoadBalancing_ALLOW_ALL},
		IpFamilies: wapi.IPFamilies_DUAL, Canonical: true, IngressUseWaypoint: true, Visibility: wapi.Service_NAMESPACE,
	}
	got, err := xds.ConvertService(in)
	if err != nil {
		t.Fatal(err)
	}
	want := &state.Service{
		Name: "echo", Namespace: "demo", Hostname: "echo.demo.svc.cluster.local",
		Addresses: []state.NetworkAddress{{Addr: addr("10.96.0.10")}, {Network: "n2", Addr: addr("fd00::a")}, {Addr: addr("10.96.0.11")}},
		Ports: []state.Port{{ServicePort: 80, TargetPort: 8080, AppProtocol: state.AppProtocolHTTP11},
			{ServicePort: 9090, AppProtocol: state.AppProtocolUnknown}},
		SubjectAltNames: []string{"spiffe://cluster.local/ns/demo/sa/extra"},
		Waypoint: &state.GatewayAddress{Hostname: state.NamespacedHostname{Namespace: "demo",
			Hostname: "waypoint.demo.svc.cluster.local"}, HBONEMTLSPort: 15008},
		LoadBalancing: &state.LoadBalancing{RoutingPreference: []state.LoadBalancingScope{state.ScopeNetwork, state.ScopeRegion, state.ScopeZone},
			Mode: state.LBFailover, HealthPolicy: state.AllowAll},
		IPFamilies: state.IPFamiliesDual, Canonical: true, IngressUseWaypoint: true, Visibility: state.VisibilityNamespace,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ConvertService:\n got %+v\nwant %+v", got, want)
	}
	// Unknown visibilities fall back to PUBLIC.
	in.Visibility = wapi.Service_Visibility(7)
	if got, err := xds.ConvertService(in); err != nil || got.Visibility != state.VisibilityPublic {
		t.Errorf("unknown visibility: %v, %v", got, err)
	}
}

func TestConvertAuthorizationFields(t *testing.T) {
	str := func(kind string, v string) *security.StringMatch {
		switch kind {
		case "prefix":
			return &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: v}}
		case "suffix":
			return &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: v}}
		case "presence":
			return &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}
		}
		return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: v}}
	}
	in := &security.Authorization{Name: "p", Namespace: "demo", Scope: security.Scope_WORKLOAD_SELECTOR,
		Action: security.Action_DENY, DryRun: true, Groups: []*security.Group{{Rules: []*security.Rules{
			{Matches: []*security.Match{{
				Namespaces: []*security.StringMatch{str("exact", "a")}, NotNamespaces: []*security.StringMatch{str("prefix", "b")},
				Principals: []*security.StringMatch{str("suffix", "/sa/c")}, NotPrincipals: []*security.StringMatch{str("presence", "")},
				SourceIps:      []*security.Address{{Address: xdstest.IP("10.0.0.0"), Length: 8}},
				NotSourceIps:   []*security.Address{{Address: xdstest.IP("10.1.0.1"), Length: 32}},
				DestinationIps: []*security.Address{{Address: xdstest.IP("fd00::"), Length: 64}}, NotDestinationIps: []*security.Address{},
				DestinationPorts: []uint32{8080}, NotDestinationPorts: []uint32{9090},
				ServiceAccounts:    []*security.ServiceAccountMatch{{Namespace: "demo", ServiceAccount: "x"}},
				NotServiceAccounts: []*security.ServiceAccountMatch{{Namespace: "demo", ServiceAccount: "y"}},
			}, {}}},
			{},
		}}, {}}}
	got, err := xds.ConvertAuthorization("demo/p", in)
	if err != nil {
		t.Fatal(err)
	}
	want := &state.Authorization{Name: "p", Namespace: "demo", Scope: state.ScopeWorkloadSelector, Action: state.ActionDeny,
		DryRun: true, Groups: []state.Group{{Rules: []state.Rules{{Matches: []state.Match{{
			Namespaces:       []state.StringMatch{{Kind: state.MatchExact, Value: "a"}},
			NotNamespaces:    []state.StringMatch{{Kind: state.MatchPrefix, Value: "b"}},
			Principals:       []state.StringMatch{{Kind: state.MatchSuffix, Value: "/sa/c"}},
			NotPrincipals:    []state.StringMatch{{Kind: state.MatchPresence}},
			SourceIPs:        []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
			NotSourceIPs:     []netip.Prefix{netip.MustParsePrefix("10.1.0.1/32")},
			DestinationIPs:   []netip.Prefix{netip.MustParsePrefix("fd00::/64")},
			DestinationPorts: []uint16{8080}, NotDestinationPorts: []uint16{9090},
			ServiceAccounts:    []state.ServiceAccountMatch{{Namespace: "demo", ServiceAccount: "x"}},
			NotServiceAccounts: []state.ServiceAccountMatch{{Namespace: "demo", ServiceAccount: "y"}},
		}, {}}}, {}}}, {}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ConvertAuthorization:\n got %+v\nwant %+v", got, want)
	}
}

func TestConvertRejects(t *testing.T) {
	pod := func(mut func(*wapi.Workload)) *wapi.Address {
		a := xdstest.Pod("demo", "p", "10.0.0.1")
		mut(a.GetWorkload())
		return a
	}
	svc := func(mut func(*wapi.Service)) *wapi.Address {
		a := xdstest.Service("demo", "s", "10.96.0.1")
		mut(a.GetService())
		return a
	}
	podName, svcName := xdstest.PodUID("demo", "p"), xdstest.ServiceName("demo", "s")
	cases := []struct {
		name  string
		rname string
		in    *wapi.Address
		want  error
	}{
		{"empty address", podName, &wapi.Address{}, xds.ErrEmptyAddress},
		{"nil workload", podName, &wapi.Address{Type: &wapi.Address_Workload{}}, xds.ErrEmptyAddress},
		{"name is not the uid", "other", pod(func(*wapi.Workload) {}), xds.ErrNameMismatch},
		{"empty uid", "", pod(func(w *wapi.Workload) { w.Uid = "" }), state.ErrMissingUID},
		{"empty name", podName, pod(func(w *wapi.Workload) { w.Name = "" }), state.ErrMissingName},
		{"empty namespace", podName, pod(func(w *wapi.Workload) { w.Namespace = "" }), state.ErrMissingName},
		{"5-byte address", podName, pod(func(w *wapi.Workload) { w.Addresses = [][]byte{{1, 2, 3, 4, 5}} }), xds.ErrAddressLength},
		{"empty address bytes", podName, pod(func(w *wapi.Workload) { w.Addresses = [][]byte{{}} }), xds.ErrAddressLength},
		{"legacy istio mtls", podName, pod(func(w *wapi.Workload) { w.TunnelProtocol = wapi.TunnelProtocol_LEGACY_ISTIO_MTLS }), xds.ErrUnknownEnum},
		{"unknown tunnel protocol", podName, pod(func(w *wapi.Workload) { w.TunnelProtocol = 9 }), xds.ErrUnknownEnum},
		{"unknown status", podName, pod(func(w *wapi.Workload) { w.Status = 2 }), xds.ErrUnknownEnum},
		{"unknown network mode", podName, pod(func(w *wapi.Workload) { w.NetworkMode = -1 }), xds.ErrUnknownEnum},
		{"unknown app tunnel protocol", podName, pod(func(w *wapi.Workload) {
			w.ApplicationTunnel = &wapi.ApplicationTunnel{Protocol: 5}
		}), xds.ErrUnknownEnum},
		{"app tunnel port out of range", podName, pod(func(w *wapi.Workload) {
			w.ApplicationTunnel = &wapi.ApplicationTunnel{Port: 70000}
		}), xds.ErrPortRange},
		{"waypoint without destination", podName, pod(func(w *wapi.Workload) { w.Waypoint = &wapi.GatewayAddress{} }), state.ErrInvalidGateway},
		{"waypoint with empty hostname", podName, pod(func(w *wapi.Workload) {
			w.Waypoint = &wapi.GatewayAddress{Destination: &wapi.GatewayAddress_Hostname{}}
		}), state.ErrInvalidGateway},
		{"waypoint address of wrong length", podName, pod(func(w *wapi.Workload) {
			w.Waypoint = &wapi.GatewayAddress{Destination: &wapi.GatewayAddress_Address{Address: &wapi.NetworkAddress{Address: []byte{1}}}}
		}), xds.ErrAddressLength},
		{"waypoint port out of range", podName, pod(func(w *wapi.Workload) {
			w.Waypoint = xdstest.WaypointHost("demo", "w")
			w.Waypoint.HboneMtlsPort = 1 << 16
		}), xds.ErrPortRange},
		{"upper-case trust domain", podName, pod(func(w *wapi.Workload) { w.TrustDomain = "Cluster.Local" }), xds.ErrInvalidIdentity},
		{"service account with a space", podName, pod(func(w *wapi.Workload) { w.ServiceAccount = "bad sa" }), xds.ErrInvalidIdentity},
		{"network gateway without destination", podName, pod(func(w *wapi.Workload) { w.NetworkGateway = &wapi.GatewayAddress{} }), state.ErrInvalidGateway},
		{"service key without slash", podName, pod(func(w *wapi.Workload) { w.Services = map[string]*wapi.PortList{"nope": {}} }), xds.ErrServiceKey},
		{"service key without namespace", podName, pod(func(w *wapi.Workload) { w.Services = map[string]*wapi.PortList{"/h": {}} }), xds.ErrServiceKey},
		{"service target port out of range", podName, pod(func(w *wapi.Workload) {
			w.Services = map[string]*wapi.PortList{"a/b": {Ports: []*wapi.Port{{ServicePort: 80, TargetPort: 65536}}}}
		}), xds.ErrPortRange},
		{"nil service", svcName, &wapi.Address{Type: &wapi.Address_Service{}}, xds.ErrEmptyAddress},
		{"service name mismatch", "demo/other", svc(func(*wapi.Service) {}), xds.ErrNameMismatch},
		{"service without hostname", "demo/", svc(func(s *wapi.Service) { s.Hostname = "" }), state.ErrMissingHostname},
		{"service without namespace", "/s.demo.svc.cluster.local", svc(func(s *wapi.Service) { s.Namespace = "" }), state.ErrMissingName},
		{"service VIP of wrong length", svcName, svc(func(s *wapi.Service) { s.Addresses[0].Address = []byte{1, 2, 3} }), xds.ErrAddressLength},
		{"service VIP prefix too long", svcName, svc(func(s *wapi.Service) { l := uint32(33); s.Addresses[0].Length = &l }), xds.ErrAddressLength},
		{"service port 0", svcName, svc(func(s *wapi.Service) { s.Ports[0].ServicePort = 0 }), state.ErrInvalidPort},
		{"service port out of range", svcName, svc(func(s *wapi.Service) { s.Ports[0].ServicePort = 1 << 20 }), xds.ErrPortRange},
		{"service waypoint without destination", svcName, svc(func(s *wapi.Service) { s.Waypoint = &wapi.GatewayAddress{} }), state.ErrInvalidGateway},
		{"unspecified lb scope", svcName, svc(func(s *wapi.Service) {
			s.LoadBalancing = &wapi.LoadBalancing{RoutingPreference: []wapi.LoadBalancing_Scope{wapi.LoadBalancing_UNSPECIFIED_SCOPE}}
		}), xds.ErrUnknownEnum},
		{"unknown lb scope", svcName, svc(func(s *wapi.Service) {
			s.LoadBalancing = &wapi.LoadBalancing{RoutingPreference: []wapi.LoadBalancing_Scope{7}}
		}), xds.ErrUnknownEnum},
		{"unknown lb mode", svcName, svc(func(s *wapi.Service) { s.LoadBalancing = &wapi.LoadBalancing{Mode: 4} }), xds.ErrUnknownEnum},
		{"unknown health policy", svcName, svc(func(s *wapi.Service) { s.LoadBalancing = &wapi.LoadBalancing{HealthPolicy: 2} }), xds.ErrUnknownEnum},
		{"unknown ip families", svcName, svc(func(s *wapi.Service) { s.IpFamilies = 4 }), xds.ErrUnknownEnum},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, s, err := xds.ConvertAddress(tc.rname, tc.in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("ConvertAddress error = %v, want %v", err, tc.want)
			}
			if w != nil || s != nil {
				t.Errorf("rejected resource produced an object: %v %v", w, s)
			}
		})
	}
}

func TestConvertAuthorizationRejects(t *testing.T) {
	base := func(mut func(*security.Authorization)) *security.Authorization {
		p := xdstest.Policy("demo", "p", security.Scope_NAMESPACE, security.Action_ALLOW, "cluster.local/ns/demo/sa/x")
		mut(p)
		return p
	}
	match := func(p *security.Authorization) *security.Match { return p.Groups[0].Rules[0].Matches[0] }
	cases := []struct {
		name  string
		rname string
		in    *security.Authorization
		want  error
	}{
		{"name mismatch", "demo/q", base(func(*security.Authorization) {}), xds.ErrNameMismatch},
		{"empty name", "demo/", base(func(p *security.Authorization) { p.Name = "" }), state.ErrMissingName},
		{"empty namespace", "/p", base(func(p *security.Authorization) { p.Namespace = "" }), state.ErrMissingName},
		{"unknown scope", "demo/p", base(func(p *security.Authorization) { p.Scope = 3 }), xds.ErrUnknownEnum},
		{"unknown action", "demo/p", base(func(p *security.Authorization) { p.Action = 2 }), xds.ErrUnknownEnum},
		{"string match without type", "demo/p", base(func(p *security.Authorization) {
			match(p).Principals = []*security.StringMatch{{}}
		}), xds.ErrInvalidMatch},
		{"source ip of wrong length", "demo/p", base(func(p *security.Authorization) {
			match(p).SourceIps = []*security.Address{{Address: []byte{10, 0, 0}, Length: 8}}
		}), xds.ErrAddressLength},
		{"prefix longer than the address", "demo/p", base(func(p *security.Authorization) {
			match(p).NotDestinationIps = []*security.Address{{Address: xdstest.IP("10.0.0.1"), Length: 33}}
		}), xds.ErrAddressLength},
		{"port out of range", "demo/p", base(func(p *security.Authorization) { match(p).DestinationPorts = []uint32{65536} }), xds.ErrPortRange},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := xds.ConvertAuthorization(tc.rname, tc.in)
			if !errors.Is(err, tc.want) || p != nil {
				t.Fatalf("ConvertAuthorization = %v, %v; want error %v", p, err, tc.want)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	cases := []struct {
		name string
		in   *anypb.Any
		want error
	}{
		{"wrong type", xdstest.Any(xdstest.Policy("a", "b", 0, 0)), xds.ErrWrongType},
		{"garbage", &anypb.Any{TypeUrl: xds.AddressTypeURL, Value: []byte{0xff, 0xff, 0xff}}, xds.ErrDecode},
		{"nil", nil, xds.ErrWrongType},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := xds.DecodeAddress(tc.in); !errors.Is(err, tc.want) {
				t.Errorf("DecodeAddress = %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := xds.DecodeAuthorization(xdstest.Any(xdstest.Pod("a", "b", "10.0.0.1"))); !errors.Is(err, xds.ErrWrongType) {
		t.Errorf("DecodeAuthorization of an Address = %v", err)
	}
	a, err := xds.DecodeAddress(xdstest.Any(xdstest.Pod("a", "b", "10.0.0.1")))
	if err != nil || !proto.Equal(a, xdstest.Pod("a", "b", "10.0.0.1")) || !strings.Contains(a.GetWorkload().GetUid(), "//Pod/") {
		t.Errorf("DecodeAddress round trip = %v, %v", a, err)
	}
}
