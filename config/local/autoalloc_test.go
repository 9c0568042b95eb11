package local

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/mesh/istio"
	"github.com/ambit-mesh/ambit/mesh/route"
	"github.com/ambit-mesh/ambit/mesh/state"
)

func serviceAddrs(res *Result, ns, host string) []netip.Addr {
	for _, s := range res.Snapshot.Services {
		if s.Namespace == ns && s.Hostname == host {
			var out []netip.Addr
			for _, a := range s.Addresses {
				out = append(out, a.Addr)
			}
			return out
		}
	}
	return nil
}

func seYAML(name, labels, hosts, resolution, extra string) string {
	return fmt.Sprintf(`---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: %s, namespace: egress%s}
spec:
  hosts: %s
  resolution: %s
  ports: [{number: 443, name: tls, protocol: TLS}]
%s`, name, labels, hosts, resolution, extra)
}

func TestAutoAllocate(t *testing.T) {
	ns := "apiVersion: v1\nkind: Namespace\nmetadata: {name: egress}\n"
	docs := []string{
		seYAML("api", "", "[api.example.com, www.example.com, \"*.wild.example.com\"]", "DNS", ""),
		seYAML("static", "", "[static.example.com]", "STATIC", "  endpoints: [{address: 192.0.2.1}]\n"),
		seYAML("given", "", "[given.example.com]", "DNS", "  addresses: [10.10.0.1]\n"),
		seYAML("none", "", "[none.example.com]", "NONE", ""),
		seYAML("optout", ", labels: {networking.istio.io/enable-autoallocate-ip: \"False\"}", "[optout.example.com]", "DNS", ""),
		seYAML("status", "", "[status.example.com, other.example.com]", "DNS",
			"status:\n  addresses: [{value: 240.240.7.7, host: status.example.com}, {value: \"2001:2::7:7\", host: status.example.com}]\n"),
	}
	res := compileYAML(t, ns+strings.Join(docs, ""))
	v4, v6 := netip.MustParsePrefix("240.240.0.0/16"), netip.MustParsePrefix("2001:2::/48")
	seen := map[netip.Addr]string{}
	for _, host := range []string{"api.example.com", "www.example.com", "static.example.com", "other.example.com"} {
		got := serviceAddrs(res, "egress", host)
		if len(got) != 2 || !v4.Contains(got[0]) || !v6.Contains(got[1]) {
			t.Errorf("%s: addresses %v, want one in %s and one in %s", host, got, v4, v6)
			continue
		}
		if b := got[0].As4(); b[3] == 0 || b[3] == 255 {
			t.Errorf("%s: allocated %s", host, got[0])
		}
		for _, a := range got {
			if other, dup := seen[a]; dup {
				t.Errorf("%s and %s both got %s", host, other, a)
			}
			seen[a] = host
		}
	}
	for host, want := range map[string][]netip.Addr{
		"given.example.com":  {netip.MustParseAddr("10.10.0.1")},
		"status.example.com": {netip.MustParseAddr("240.240.7.7"), netip.MustParseAddr("2001:2::7:7")},
		"none.example.com":   nil,
		"optout.example.com": nil,
		"*.wild.example.com": nil,
	} {
		if got := serviceAddrs(res, "egress", host); !slices.Equal(got, want) {
			t.Errorf("%s: addresses %v, want %v", host, got, want)
		}
	}

	t.Run("stable across file order", func(t *testing.T) {
		rev := slices.Clone(docs)
		slices.Reverse(rev)
		res2 := compileYAML(t, ns+strings.Join(rev, ""))
		for _, s := range res.Snapshot.Services {
			if got, want := serviceAddrs(res2, s.Namespace, s.Hostname), serviceAddrs(res, s.Namespace, s.Hostname); !slices.Equal(got, want) {
				t.Errorf("%s: %v in reverse order, %v in order", s.Hostname, got, want)
			}
		}
	})
}

func TestAutoAllocateUnique(t *testing.T) {
	// Enough hosts that FNV-1a collides (birthday bound of 65,024 slots): every host still gets its own.
	var hosts []string
	for i := range 3000 {
		hosts = append(hosts, fmt.Sprintf("h%d.example.com", i))
	}
	res := compileYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: egress}\n"+
		seYAML("many", "", "["+strings.Join(hosts, ", ")+"]", "DNS", ""))
	seen := map[netip.Addr]bool{}
	for _, h := range hosts {
		got := serviceAddrs(res, "egress", h)
		if len(got) != 2 {
			t.Fatalf("%s: %v", h, got)
		}
		for _, a := range got {
			if seen[a] {
				t.Fatalf("%s: %s allocated twice", h, a)
			}
			seen[a] = true
		}
	}
}

// TestAutoAllocatedAddressRoutes: a captured connection to a host's allocated address is carried to the
// entry's waypoint, as one to a declared address is.
func TestAutoAllocatedAddressRoutes(t *testing.T) {
	extra := `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: app, labels: {istio.io/use-waypoint: egress}}
spec:
  hosts: [api.example.com]
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: v1
kind: Service
metadata: {name: egress, namespace: app, labels: {gateway.istio.io/managed: istio.io-mesh-controller}}
spec: {clusterIP: 10.96.1.9, selector: {gateway.networking.k8s.io/gateway-name: egress}, ports: [{name: mesh, port: 15008}]}
---
apiVersion: v1
kind: Pod
metadata: {name: egress-0, namespace: app, labels: {gateway.networking.k8s.io/gateway-name: egress, istio.io/dataplane-mode: none}}
spec: {nodeName: node0, serviceAccountName: egress, containers: [{name: c, image: c}]}
status: {podIP: 10.0.9.9}
---
`
	res := compileYAML(t, fixture{appNS: lbl(istio.LabelDataplaneMode, istio.DataplaneModeAmbient),
		gateways: []gwSpec{wp("app", "egress", "")}, extra: extra, noWE: true}.yaml())
	s := state.NewStore()
	s.Replace(&res.Snapshot)
	var src *state.Workload
	for _, w := range res.Snapshot.Workloads {
		if w.Namespace == "app" && w.Name == "pod" {
			src = w
		}
	}
	if src == nil {
		t.Fatal("no source pod")
	}
	for _, a := range serviceAddrs(res, "app", "api.example.com") {
		p := route.Build(s, &route.Request{Source: src, SourceIP: src.Addresses[0], Destination: netip.AddrPortFrom(a, 443)})
		if p.Path != route.PathWaypoint || p.Service == nil || p.Service.Hostname != "api.example.com" ||
			p.Waypoint == nil || p.Waypoint.Destination() != "app/egress.app.svc.cluster.local" {
			t.Errorf("connection to %s: %s", a, route.Describe(s, &route.Request{Source: src, Destination: netip.AddrPortFrom(a, 443)}, &p))
		}
	}
}
