package main

import (
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/admin/dump"
)

func TestWaypointName(t *testing.T) {
	svcs := sortedServices([]*dump.Service{
		{Name: "wp", Namespace: "ns", Hostname: "wp.ns.svc.cluster.local", Vips: []string{"/10.96.0.10"}},
		{Name: "other-wp", Namespace: "other", Hostname: "wp.ns.svc.cluster.local", Vips: []string{"net1/10.96.0.10"}},
	})
	cases := []struct {
		name string
		g    *dump.GatewayAddress
		want string
	}{
		{"no waypoint", nil, "None"},
		{"by namespaced hostname", &dump.GatewayAddress{Destination: "ns/wp.ns.svc.cluster.local"}, "wp"},
		{"by VIP with the default network", &dump.GatewayAddress{Destination: "/10.96.0.10"}, "wp"},
		{"by VIP on another network", &dump.GatewayAddress{Destination: "net1/10.96.0.10"}, "other-wp"},
		{"hostname in the wrong namespace", &dump.GatewayAddress{Destination: "third/wp.ns.svc.cluster.local"}, "NA"},
		{"VIP without network prefix is not a match", &dump.GatewayAddress{Destination: "10.96.0.10"}, "NA"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := waypointName(tc.g, svcs); got != tc.want {
				t.Errorf("waypointName = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestCertValid(t *testing.T) {
	now := time.Date(2030, 6, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name     string
		from, to string
		want     bool
	}{
		{"within", "2030-01-01T00:00:00Z", "2031-01-01T00:00:00Z", true},
		{"expired", "2029-01-01T00:00:00Z", "2030-01-01T00:00:00Z", false},
		{"not yet valid", "2030-07-01T00:00:00Z", "2031-01-01T00:00:00Z", false},
		{"ends exactly now", "2030-01-01T00:00:00Z", "2030-06-01T00:00:00Z", false},
		{"unparseable", "yesterday", "2031-01-01T00:00:00Z", false},
		{"missing", "", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := certValid(&dump.Cert{ValidFrom: tc.from, ExpirationTime: tc.to}, now); got != tc.want {
				t.Errorf("certValid = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestTargetFilter(t *testing.T) {
	cases := []struct {
		name, arg, rootNS, flagNS string
		wantName, wantNS          string
	}{
		{"name only keeps the flag", "pod", "", "flagns", "pod", "flagns"},
		{"-n replaces the flag", "pod", "rootns", "flagns", "pod", "rootns"},
		{"name.namespace wins", "pod.ns", "rootns", "flagns", "pod", "ns"},
		{"first dot splits", "pod.ns.extra", "", "", "pod", "ns.extra"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ns := tc.flagNS
			if name := targetFilter(tc.arg, tc.rootNS, &ns); name != tc.wantName || ns != tc.wantNS {
				t.Errorf("targetFilter = %q, %q; want %q, %q", name, ns, tc.wantName, tc.wantNS)
			}
		})
	}
}

func TestParseLogLevels(t *testing.T) {
	cases := []struct {
		spec, want, err string
	}{
		{"debug", "debug", ""},
		{"warning", "warn", ""},
		{"access:critical,info", "access:error,info", ""},
		{"ztunnel::proxy=warning", "ztunnel::proxy=warn", ""},
		{"loud", "", "unrecognized logging level: loud"},
		{"access:", "", "unrecognized logging level: "},
	}
	for _, tc := range cases {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := parseLogLevels(tc.spec)
			if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && err.Error() != tc.err) {
				t.Errorf("parseLogLevels(%q) = %q, %v; want %q, %q", tc.spec, got, err, tc.want, tc.err)
			}
		})
	}
}

// TestPrintConnectionsFilters checks the direction and workload filters on a small dump.
func TestPrintConnectionsFilters(t *testing.T) {
	d := &dump.ConfigDump{
		Workloads: []*dump.Workload{{Name: "a", Namespace: "ns", WorkloadIPs: []string{"10.0.0.1"}}},
		Services:  []*dump.Service{{Hostname: "s.ns.svc", Vips: []string{"/10.96.0.1"}}},
		WorkloadState: map[string]dump.WorkloadState{
			"u2": {Info: dump.WorkloadInfo{Name: "b", Namespace: "ns"}, Connections: dump.WorkloadConnections{
				Inbound: []dump.InboundConnection{{Src: "10.0.0.1:5", ActualDst: "10.0.0.2:80", Protocol: "TCP"}}}},
			"u1": {Info: dump.WorkloadInfo{Name: "a", Namespace: "ns"}, Connections: dump.WorkloadConnections{
				Outbound: []dump.OutboundConnection{{Src: "10.0.0.1:6", OriginalDst: "10.96.0.1:80", ActualDst: "10.0.0.2:15008", Protocol: "HBONE"}}}},
		},
	}
	cases := []struct {
		name string
		f    connFilter
		want string
	}{
		{"all", connFilter{}, "WORKLOAD DIRECTION LOCAL       REMOTE         REMOTE TARGET PROTOCOL\n" +
			"a.ns     Outbound  a.ns:6      10.0.0.2:15008 s.ns.svc:80   HBONE\n" +
			"b.ns     Inbound   10.0.0.2:80 a.ns:5                       TCP\n"},
		{"inbound only", connFilter{direction: "inbound"}, "WORKLOAD DIRECTION LOCAL       REMOTE REMOTE TARGET PROTOCOL\n" +
			"b.ns     Inbound   10.0.0.2:80 a.ns:5               TCP\n"},
		{"outbound only, raw", connFilter{direction: "outbound", raw: true}, "WORKLOAD DIRECTION LOCAL      REMOTE         REMOTE TARGET PROTOCOL\n" +
			"a.ns     Outbound  10.0.0.1:6 10.0.0.2:15008 10.96.0.1:80  HBONE\n"},
		{"workload name.namespace", connFilter{name: "A.ns"}, "WORKLOAD DIRECTION LOCAL  REMOTE         REMOTE TARGET PROTOCOL\n" +
			"a.ns     Outbound  a.ns:6 10.0.0.2:15008 s.ns.svc:80   HBONE\n"},
		{"namespace compares exactly", connFilter{namespace: "NS"}, "WORKLOAD DIRECTION LOCAL REMOTE REMOTE TARGET PROTOCOL\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			if err := printConnections(&b, d, tc.f); err != nil {
				t.Fatal(err)
			}
			if b.String() != tc.want {
				t.Errorf("got:\n%q\nwant:\n%q", b.String(), tc.want)
			}
		})
	}
}
