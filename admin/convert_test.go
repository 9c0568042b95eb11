package admin

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/admin/dump"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
)

func TestConvertWorkload(t *testing.T) {
	port := uint16(15088)
	cases := []struct {
		name string
		in   *state.Workload
		want *dump.Workload
	}{
		{"address-less host-network workload with tunnel and locality",
			&state.Workload{UID: "u1", Name: "n", Namespace: "ns", Hostname: "h.example", NetworkMode: state.NetworkHost,
				ApplicationTunnel: &state.ApplicationTunnel{Protocol: state.AppTunnelProxy, Port: 15088},
				Locality:          state.Locality{Region: "r", Zone: "z"}, Status: state.Unhealthy, WorkloadType: state.WorkloadJob,
				NetworkGateway: &state.GatewayAddress{Address: state.NetworkAddress{Network: "net2", Addr: netip.MustParseAddr("192.0.2.1")}, HBONEMTLSPort: 15009}},
			&dump.Workload{WorkloadIPs: []string{}, Protocol: "TCP", NetworkMode: "HostNetwork", UID: "u1", Name: "n", Namespace: "ns",
				Hostname: "h.example", ApplicationTunnel: &dump.ApplicationTunnel{Protocol: "PROXY", Port: &port},
				Locality: &dump.Locality{Region: "r", Zone: "z"}, Status: "Unhealthy", WorkloadType: "job",
				NetworkGateway: &dump.GatewayAddress{Destination: "net2/192.0.2.1", HBONEMTLSPort: 15009}}},
		{"captured pod with a hostname waypoint and services",
			&state.Workload{UID: "u2", Name: "p", Namespace: "ns", Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")},
				Protocol: state.TunnelHBONE, TrustDomain: "td", ServiceAccount: "sa", ClusterID: "c", Capacity: 2, Node: "node",
				Waypoint:          &state.GatewayAddress{Hostname: state.NamespacedHostname{Namespace: "ns", Hostname: "wp.ns.svc.cluster.local"}, HBONEMTLSPort: 15008},
				Services:          []state.ServiceRef{{Service: state.NamespacedHostname{Namespace: "ns", Hostname: "s.ns.svc.cluster.local"}}},
				ApplicationTunnel: &state.ApplicationTunnel{}, AuthorizationPolicies: []string{"ns/p"}},
			&dump.Workload{WorkloadIPs: []string{"10.0.0.1", "fd00::1"}, Protocol: "HBONE", NetworkMode: "Standard", UID: "u2", Name: "p",
				Namespace: "ns", TrustDomain: "td", ServiceAccount: "sa", ClusterID: "c", Capacity: 2, Node: "node", Status: "Healthy",
				WorkloadType: "deployment", Waypoint: &dump.GatewayAddress{Destination: "ns/wp.ns.svc.cluster.local", HBONEMTLSPort: 15008},
				Services: dump.ServiceNames{"ns/s.ns.svc.cluster.local"}, ApplicationTunnel: &dump.ApplicationTunnel{Protocol: "NONE"},
				AuthorizationPolicies: []string{"ns/p"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got, want := mustJSON(t, ConvertWorkload(tc.in)), mustJSON(t, tc.want); got != want {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestConvertService(t *testing.T) {
	key := state.NamespacedHostname{Namespace: "ns", Hostname: "s.ns.svc.cluster.local"}
	healthy := &state.Workload{UID: "a", Services: []state.ServiceRef{{Service: key, Ports: []state.PortMapping{{ServicePort: 80, TargetPort: 8080}}}}}
	sick := &state.Workload{UID: "b", Status: state.Unhealthy}
	svc := &state.Service{Name: "s", Namespace: "ns", Hostname: key.Hostname,
		Addresses: []state.NetworkAddress{{Addr: netip.MustParseAddr("10.96.0.1")}, {Network: "n2", Addr: netip.MustParseAddr("fd00::1")}},
		Ports:     []state.Port{{ServicePort: 80}}, SubjectAltNames: []string{"spiffe://td/ns/ns/sa/s"},
		LoadBalancing: &state.LoadBalancing{RoutingPreference: []state.LoadBalancingScope{state.ScopeZone, state.ScopeNode},
			Mode: state.LBFailover, HealthPolicy: state.AllowAll},
		IPFamilies: state.IPFamiliesDual, Visibility: state.VisibilityNamespace, Canonical: true}
	want := &dump.Service{Name: "s", Namespace: "ns", Hostname: key.Hostname, Vips: []string{"/10.96.0.1", "n2/fd00::1"},
		Ports: map[uint16]uint16{80: 0}, SubjectAltNames: []string{"spiffe://td/ns/ns/sa/s"},
		Endpoints: map[string]*dump.Endpoint{
			"a": {WorkloadUID: "a", Service: key.String(), Port: map[uint16]uint16{80: 8080}, Status: "Healthy"},
			"b": {WorkloadUID: "b", Service: key.String(), Port: map[uint16]uint16{}, Status: "Unhealthy"},
		},
		LoadBalancer: &dump.LoadBalancer{RoutingPreferences: []string{"Zone", "Node"}, Mode: "Failover", HealthPolicy: "AllowAll"},
		IPFamilies:   "Dual", Visibility: "Namespace", Canonical: true}
	if got, w := mustJSON(t, ConvertService(svc, []*state.Workload{healthy, sick})), mustJSON(t, want); got != w {
		t.Errorf("got:\n%s\nwant:\n%s", got, w)
	}
	if got := mustJSON(t, ConvertService(&state.Service{Name: "h", Namespace: "ns", Hostname: "h"}, nil)); got !=
		"{\n \"name\": \"h\",\n \"namespace\": \"ns\",\n \"hostname\": \"h\",\n \"vips\": [],\n \"ports\": {},\n \"endpoints\": {},\n \"subjectAltNames\": []\n}" {
		t.Errorf("headless service without anything: %s", got)
	}
}

func TestConvertPolicy(t *testing.T) {
	p := &state.Authorization{Name: "p", Namespace: "ns", Scope: state.ScopeNamespace, Action: state.ActionDeny, DryRun: true,
		Groups: []state.Group{
			{Rules: []state.Rules{
				{Matches: []state.Match{{Namespaces: []state.StringMatch{{Kind: state.MatchExact, Value: "a"}, {Kind: state.MatchPrefix, Value: "b"}}}}},
				{Matches: []state.Match{
					{DestinationPorts: []uint16{80}, NotSourceIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
					{NotPrincipals: []state.StringMatch{{Kind: state.MatchSuffix, Value: "/sa/x"}, {Kind: state.MatchPresence}},
						ServiceAccounts: []state.ServiceAccountMatch{{Namespace: "ns", ServiceAccount: "sa"}}},
				}},
			}},
			{},
		}}
	want := `{
 "name": "p",
 "namespace": "ns",
 "scope": "Namespace",
 "action": "Deny",
 "rules": [
  [
   [
    {
     "namespaces": [
      {
       "Exact": "a"
      },
      {
       "Prefix": "b"
      }
     ]
    }
   ],
   [
    {
     "notSourceIps": [
      "10.0.0.0/8"
     ],
     "destinationPorts": [
      80
     ]
    },
    {
     "notPrincipals": [
      {
       "Suffix": "/sa/x"
      },
      {
       "Presence": {}
      }
     ],
     "serviceAccounts": [
      {
       "namespace": "ns",
       "serviceAccount": "sa"
      }
     ]
    }
   ]
  ],
  []
 ],
 "dryRun": true
}`
	if got := mustJSON(t, ConvertPolicy(p)); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestConvertCertificate(t *testing.T) {
	nb := time.Date(2030, 1, 1, 0, 0, 0, 500, time.FixedZone("x", 3600))
	cases := []struct {
		name string
		in   identity.Status
		want dump.Certificate
	}{
		{"unavailable without a recorded error", identity.Status{Identity: "i", State: identity.StateUnavailable},
			dump.Certificate{Identity: "i", State: "Unavailable", CertChain: []*dump.Cert{}, RootCerts: []*dump.Cert{}}},
		{"times in UTC to the second",
			identity.Status{Identity: "i", State: identity.StateAvailable, NextAttempt: nb,
				CertChain: []identity.CertInfo{{PEM: "p", SerialNumber: "10", ValidFrom: nb, ExpirationTime: nb.Add(time.Hour)}}},
			dump.Certificate{Identity: "i", State: "Available", NextAttempt: "2029-12-31T23:00:00Z", RootCerts: []*dump.Cert{},
				CertChain: []*dump.Cert{{PEM: "p", SerialNumber: "10", ValidFrom: "2029-12-31T23:00:00Z", ExpirationTime: "2030-01-01T00:00:00Z"}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got, want := mustJSON(t, ConvertCertificate(&tc.in)), mustJSON(t, tc.want); got != want {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestBuildWorkloadState(t *testing.T) {
	pod := &state.Workload{UID: "pod", Name: "pod", Namespace: "ns", Protocol: state.TunnelHBONE, TrustDomain: "td", ServiceAccount: "sa"}
	plain := &state.Workload{UID: "plain", Name: "plain", Namespace: "ns"}
	waypoint := &state.Workload{UID: "wp", Name: "wp", Namespace: "ns", Protocol: state.TunnelHBONE, NativeTunnel: true}
	mapped := netip.MustParseAddrPort("[::ffff:10.0.0.9]:1234")
	conns := []*connmgr.Conn{
		{Direction: connmgr.Inbound, Workload: plain, Src: mapped, Dst: netip.MustParseAddrPort("10.0.0.2:80")},
		{Direction: connmgr.Inbound, Workload: pod, Src: mapped, Dst: netip.MustParseAddrPort("10.0.0.1:80"), PeerIdentity: "spiffe://td/ns/ns/sa/x"},
		{Direction: connmgr.Outbound, Workload: pod, Src: netip.MustParseAddrPort("10.0.0.1:5555"), Dst: netip.MustParseAddrPort("10.0.0.2:80")},
		{Direction: connmgr.Outbound, Src: netip.MustParseAddrPort("10.0.0.7:1"), Dst: netip.MustParseAddrPort("10.0.0.2:80")},
	}
	got := BuildWorkloadState([]*state.Workload{pod, plain, waypoint}, conns)
	want := map[string]dump.WorkloadState{
		"pod": {Info: dump.WorkloadInfo{Name: "pod", Namespace: "ns", TrustDomain: "td", ServiceAccount: "sa"},
			Connections: dump.WorkloadConnections{
				Inbound:  []dump.InboundConnection{{Src: "10.0.0.9:1234", ActualDst: "10.0.0.1:80", Protocol: "HBONE"}},
				Outbound: []dump.OutboundConnection{{Src: "10.0.0.1:5555", OriginalDst: "10.0.0.2:80", ActualDst: "10.0.0.2:80", Protocol: "TCP"}}}},
		"plain": {Info: dump.WorkloadInfo{Name: "plain", Namespace: "ns"},
			Connections: dump.WorkloadConnections{Outbound: []dump.OutboundConnection{},
				Inbound: []dump.InboundConnection{{Src: "10.0.0.9:1234", ActualDst: "10.0.0.2:80", Protocol: "TCP"}}}},
	}
	if g, w := mustJSON(t, got), mustJSON(t, want); g != w {
		t.Errorf("got:\n%s\nwant:\n%s", g, w)
	}
}
