package eastwest

import (
	"math/rand/v2"
	"net/netip"

	"github.com/ambit-mesh/ambit/mesh/state"
)

// View is the state Resolve reads. *state.Store implements it.
type View interface {
	ServiceByHostname(host, clientNamespace string) *state.Service
	Endpoints(state.NamespacedHostname) []*state.Workload
}

var _ View = (*state.Store)(nil)

// Why says why Resolve found no endpoint.
type Why uint8

const (
	Found Why = iota
	// NoService: no service has the authority's hostname.
	NoService
	// NoPort: the service does not declare the authority's port.
	NoPort
	// NoEndpoint: the service has no healthy mesh endpoint on the gateway's network.
	NoEndpoint
)

var whyText = [...]string{"found", "no service with that hostname", "the service has no such port",
	"no healthy HBONE endpoint of the service on this network"}

// String explains w.
func (w Why) String() string { return whyText[w] }

// Target is where the gateway relays one stream.
type Target struct {
	Service  *state.Service
	Endpoint *state.Workload
	// NextHop is the endpoint's IP and port 15008: its node agent terminates the inner HBONE.
	NextHop netip.AddrPort
}

// Resolve picks where a stream with :authority host:port goes: the service with that hostname
// (preferring namespace, the gateway's), and among its endpoints on network those the inner HBONE can
// reach (captured or HBONE-native, healthy, with an address and a mapping of port), one at random
// weighted by capacity. rnd returns a uniform integer in [0, n); nil uses math/rand/v2.
func Resolve(v View, network, namespace, host string, port uint16, rnd func(n uint64) uint64) (Target, Why) {
	svc := v.ServiceByHostname(host, namespace)
	if svc == nil {
		return Target{}, NoService
	}
	sp, ok := svc.Port(port)
	if !ok {
		return Target{Service: svc}, NoPort
	}
	usable := func(w *state.Workload) bool {
		if w.Network != network || w.Protocol != state.TunnelHBONE || w.Status != state.Healthy || len(w.Addresses) == 0 {
			return false
		}
		if ref := w.ServiceRef(svc.Key()); ref != nil {
			if _, ok := ref.Target(port); ok {
				return true
			}
		}
		return sp.TargetPort != 0
	}
	eps := v.Endpoints(svc.Key())
	var total uint64
	for _, w := range eps {
		if usable(w) {
			total += uint64(w.Capacity)
		}
	}
	if total == 0 {
		return Target{Service: svc}, NoEndpoint
	}
	var n uint64
	if rnd != nil {
		n = rnd(total)
	} else {
		n = rand.Uint64N(total)
	}
	for _, w := range eps {
		if !usable(w) {
			continue
		}
		if c := uint64(w.Capacity); n >= c {
			n -= c
			continue
		}
		return Target{Service: svc, Endpoint: w, NextHop: netip.AddrPortFrom(w.Addresses[0], state.HBONEPort)}, Found
	}
	return Target{Service: svc}, NoEndpoint // unreachable: total counted the same endpoints
}
