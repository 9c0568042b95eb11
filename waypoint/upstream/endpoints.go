package upstream

import (
	"net/netip"

	"github.com/ambit-mesh/ambit/mesh/state"
)

// Endpoints selects the endpoints a backend (service svc, service port port) may be load balanced
// over: the workloads of the service that are healthy and have an address, that match subset when it
// is set (a DestinationRule subset's labels, matched against labels, the pod labels by workload UID),
// each at the target port the service maps port to. A workload whose service entry does not map the
// port is skipped, unless the service lists no ports at all (the port is then used as is).
func Endpoints(workloads []*state.Workload, svc *state.Service, port uint16, subset map[string]string, labels map[string]map[string]string) []Endpoint {
	var out []Endpoint
	for _, w := range workloads {
		if w.Status != state.Healthy || len(w.Addresses) == 0 {
			continue
		}
		if subset != nil && !labelsMatch(subset, labels[w.UID]) {
			continue
		}
		t, ok := targetPort(w, svc, port)
		if !ok {
			continue
		}
		out = append(out, Endpoint{Workload: w, Addr: netip.AddrPortFrom(w.Addresses[0], t)})
	}
	return out
}

func labelsMatch(sel, lbls map[string]string) bool {
	for k, v := range sel {
		if lbls[k] != v {
			return false
		}
	}
	return true
}

func targetPort(w *state.Workload, svc *state.Service, port uint16) (uint16, bool) {
	if ref := w.ServiceRef(svc.Key()); ref != nil {
		if t, ok := ref.Target(port); ok {
			return t, true
		}
	}
	if p, ok := svc.Port(port); ok && p.TargetPort != 0 {
		return p.TargetPort, true
	}
	if len(svc.Ports) == 0 {
		return port, true
	}
	return 0, false
}
