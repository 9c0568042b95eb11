package upstream

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/ambit-mesh/ambit/mesh/state"
)

func TestEndpoints(t *testing.T) {
	svc := &state.Service{Name: "web", Namespace: "app", Hostname: "web.app.svc.cluster.local",
		Ports: []state.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 90}}}
	wl := func(uid, ip string, status state.WorkloadStatus, refs ...state.PortMapping) *state.Workload {
		w := &state.Workload{UID: uid, Status: status}
		if ip != "" {
			w.Addresses = []netip.Addr{netip.MustParseAddr(ip)}
		}
		if len(refs) > 0 {
			w.Services = []state.ServiceRef{{Service: svc.Key(), Ports: refs}}
		}
		return w
	}
	all := []*state.Workload{
		wl("a", "10.0.0.1", state.Healthy),
		wl("b", "10.0.0.2", state.Healthy, state.PortMapping{ServicePort: 80, TargetPort: 9000}, state.PortMapping{ServicePort: 90, TargetPort: 9090}),
		wl("sick", "10.0.0.3", state.Unhealthy),
		wl("noaddr", "", state.Healthy),
	}
	labels := map[string]map[string]string{"a": {"version": "v1"}, "b": {"version": "v2"}}
	addrs := func(eps []Endpoint) []string {
		var out []string
		for _, e := range eps {
			out = append(out, e.Addr.String())
		}
		return out
	}
	for _, c := range []struct {
		name   string
		svc    *state.Service
		port   uint16
		subset map[string]string
		want   []string
	}{
		{"healthy with an address, at the service's target port or the workload's own", svc, 80, nil,
			[]string{"10.0.0.1:8080", "10.0.0.2:9000"}},
		{"named target port: only workloads that map it", svc, 90, nil, []string{"10.0.0.2:9090"}},
		{"port the service does not have", svc, 81, nil, nil},
		{"subset by pod labels", svc, 80, map[string]string{"version": "v2"}, []string{"10.0.0.2:9000"}},
		{"subset nothing matches", svc, 80, map[string]string{"version": "v3"}, nil},
		{"service without ports uses the port as is", &state.Service{Name: "bare", Namespace: "app", Hostname: "bare"}, 7000, nil,
			[]string{"10.0.0.1:7000", "10.0.0.2:7000"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := addrs(Endpoints(all, c.svc, c.port, c.subset, labels)); !slices.Equal(got, c.want) {
				t.Errorf("Endpoints = %v, want %v", got, c.want)
			}
		})
	}
}
