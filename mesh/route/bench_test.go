package route_test

import (
	"net/netip"
	"testing"

	"github.com/ambit-mesh/ambit/config/local"
	"github.com/ambit-mesh/ambit/mesh/route"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/test/synth"
)

// BenchmarkBuild plans connections against the 10,000-pod configuration: to a service bound to a
// namespace waypoint, to a service without one (endpoint selection), and to a pod IP.
func BenchmarkBuild(b *testing.B) {
	objs := &local.Objects{}
	if err := objs.Decode("synth.yaml", synth.YAML(synth.Default)); err != nil {
		b.Fatal(err)
	}
	res, err := local.Compile(objs, local.Options{})
	if err != nil {
		b.Fatal(err)
	}
	s := state.NewStore()
	s.Replace(&res.Snapshot)
	// pod10 is in ns10 (a waypoint namespace); svc0 is in ns0 (waypoint), svc1 in ns1 (none).
	src := s.Workload("Kubernetes//Pod/ns10/pod10")
	cases := []struct {
		name string
		dst  string
		path route.Path
	}{
		{"service via waypoint", "100.0.0.0:80", route.PathWaypoint},
		{"service endpoint", "100.0.0.1:80", route.PathDirect},
		{"pod direct", "10.0.0.1:8080", route.PathDirect},
		{"passthrough", "192.0.2.1:443", route.PathPassthrough},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			req := &route.Request{Source: src, SourceIP: src.Addresses[0], Destination: netip.MustParseAddrPort(tc.dst)}
			if p := route.Build(s, req); p.Path != tc.path {
				b.Fatalf("path = %v (%s), want %v", p.Path, route.Describe(s, req, &p), tc.path)
			}
			b.ReportAllocs()
			for b.Loop() {
				p := route.Build(s, req)
				if p.Path != tc.path {
					b.Fatal(p.Path)
				}
			}
		})
	}
}

// BenchmarkBuildParallel measures the planner under concurrent readers of one Store.
func BenchmarkBuildParallel(b *testing.B) {
	objs := &local.Objects{}
	if err := objs.Decode("synth.yaml", synth.YAML(synth.Size{Namespaces: 50, Services: 200, Pods: 1000, Nodes: 5})); err != nil {
		b.Fatal(err)
	}
	res, err := local.Compile(objs, local.Options{})
	if err != nil {
		b.Fatal(err)
	}
	s := state.NewStore()
	s.Replace(&res.Snapshot)
	src := s.Workload("Kubernetes//Pod/ns10/pod10")
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req := &route.Request{Source: src, SourceIP: src.Addresses[0], Destination: netip.MustParseAddrPort("100.0.0.1:80")}
		for pb.Next() {
			if p := route.Build(s, req); p.Path != route.PathDirect {
				b.Error(p.Path)
				return
			}
		}
	})
}
