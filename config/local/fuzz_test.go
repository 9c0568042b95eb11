package local

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/ambit-mesh/ambit/mesh/route"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// FuzzCompile feeds arbitrary YAML to the loader, compiler and planner. Whatever the input, they must
// either reject it with an error or produce a state the planner can route over, without panicking.
func FuzzCompile(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.yaml")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint16(80), byte(1))
	}
	f.Add([]byte(fixture{appNS: lbl("istio.io/use-waypoint", "wp"), gateways: []gwSpec{wp("app", "wp", "all")}}.yaml()), uint16(80), byte(1))
	f.Fuzz(func(t *testing.T, data []byte, port uint16, last byte) {
		objs := &Objects{}
		if err := objs.Decode("fuzz.yaml", data); err != nil {
			return
		}
		res, err := Compile(objs, Options{})
		if err != nil {
			return
		}
		s := state.NewStore()
		s.Replace(&res.Snapshot)
		for _, src := range res.Snapshot.Workloads {
			for _, dst := range []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, last}), netip.AddrFrom4([4]byte{10, 1, 0, last})} {
				p := route.Build(s, &route.Request{Source: src, Destination: netip.AddrPortFrom(dst, port)})
				_ = route.Describe(s, &route.Request{Source: src, Destination: netip.AddrPortFrom(dst, port)}, &p)
			}
		}
	})
}
