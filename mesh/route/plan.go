package route

import (
	"math/rand/v2"
	"net/netip"

	"github.com/ambit-mesh/ambit/mesh/state"
)

// Path is the kind of route a connection takes.
type Path uint8

const (
	// PathReject refuses the connection.
	PathReject Path = iota
	// PathWaypoint sends HBONE to a waypoint instance; the authority is the original destination.
	PathWaypoint
	// PathDirect sends to the destination workload: HBONE to its :15008 when it is in the mesh, else TCP.
	PathDirect
	// PathPassthrough sends plain TCP to the original destination (not a mesh address).
	PathPassthrough
)

var pathNames = [...]string{"reject", "waypoint", "direct", "passthrough"}

// String returns the path's name: reject, waypoint, direct or passthrough.
func (p Path) String() string { return pathNames[p] }

// Protocol is the wire protocol of the next hop.
type Protocol uint8

const (
	ProtocolTCP Protocol = iota
	ProtocolHBONE
)

// String returns "TCP" or "HBONE".
func (p Protocol) String() string {
	if p == ProtocolHBONE {
		return "HBONE"
	}
	return "TCP"
}

// Reason says why a plan was chosen; Describe turns a plan into a sentence.
type Reason uint8

const (
	ReasonUnknownSource Reason = iota
	ReasonRecursive
	ReasonServiceWaypoint
	ReasonWorkloadWaypoint
	ReasonServiceEndpoint
	ReasonWorkload
	ReasonFromWaypoint
	ReasonNotInMesh
	ReasonServicePassthrough
	ReasonNoServicePort
	ReasonNoHealthyEndpoint
	ReasonUnknownWaypoint
	ReasonNoWaypointEndpoint
	ReasonNoUsableIP
	// ReasonNoNetworkGateway: the chosen upstream is on another network and has no network gateway.
	ReasonNoNetworkGateway
	// ReasonUnknownNetworkGateway: the upstream's network gateway is not a known workload or service.
	ReasonUnknownNetworkGateway
)

// Plan is the decision for one connection. Pointers refer to immutable state objects.
type Plan struct {
	Path     Path
	Protocol Protocol
	// NextHop is where the agent connects: a waypoint or workload :15008 for HBONE, else the TCP target.
	NextHop netip.AddrPort
	// Authority is the HBONE CONNECT target: the original destination via a waypoint, podIP:targetPort
	// direct. Invalid for TCP.
	Authority netip.AddrPort
	// Service is the destination service when the original destination was a service VIP.
	Service *state.Service
	// Workload is the destination workload when it is known: the selected endpoint, or the workload that
	// owns the dialled IP. Via a service waypoint the waypoint picks the endpoint, so it is nil.
	Workload *state.Workload
	// Waypoint is the waypoint reference used, and WaypointService the waypoint's own service when the
	// reference resolved to one.
	Waypoint        *state.GatewayAddress
	WaypointService *state.Service
	// Upstream is the workload the agent connects to (waypoint instance or destination); its identity
	// is the expected peer identity. Nil for passthrough.
	Upstream *state.Workload
	// SANs are extra accepted peer identities (the subject alt names of the service used to pick the
	// upstream), besides Upstream's own identity.
	SANs []string
	// Gateway is set for double HBONE (2.8): the upstream is on another network than the source, so the
	// connection goes through that network's east-west gateway. NextHop is then the gateway's address
	// and port; GatewayUpstream (the gateway instance) and GatewaySANs (its service's SANs) are the
	// identities the outer connection expects; Upstream and SANs those the inner TLS, run inside the
	// outer stream, expects. Both CONNECTs carry :authority Host:HostPort (the service's hostname and
	// port) and Authority is invalid.
	Gateway         *state.GatewayAddress
	GatewayUpstream *state.Workload
	GatewaySANs     []string
	Host            string
	HostPort        uint16
	Reason          Reason
}

// DoubleHBONE reports whether p goes through a network gateway (a rejected plan may name the gateway
// it could not use, in Gateway, but never goes through one).
func (p *Plan) DoubleHBONE() bool { return p.GatewayUpstream != nil }

// GatewayIdentities calls fn for every SPIFFE identity the network gateway may present (outer
// connection of double HBONE). It allocates nothing.
func (p *Plan) GatewayIdentities(fn func(id string)) {
	if p.GatewayUpstream != nil {
		fn(p.GatewayUpstream.Identity())
	}
	for _, s := range p.GatewaySANs {
		fn(s)
	}
}

// ExpectedIdentities calls fn for every SPIFFE identity the HBONE peer may present: Upstream's own and
// the service SANs. It allocates nothing.
func (p *Plan) ExpectedIdentities(fn func(id string)) {
	if p.Upstream != nil {
		fn(p.Upstream.Identity())
	}
	for _, s := range p.SANs {
		fn(s)
	}
}

// View is the read-only state Build consults. *state.Store implements it.
type View interface {
	WorkloadByAddr(state.NetworkAddress) *state.Workload
	ServiceByVIP(addr state.NetworkAddress, clientNamespace string) *state.Service
	Service(state.NamespacedHostname) *state.Service
	Endpoints(state.NamespacedHostname) []*state.Workload
}

var _ View = (*state.Store)(nil)

// Request is the input of Build.
type Request struct {
	// Source is the workload that opened the connection; nil when the agent does not know it.
	Source *state.Workload
	// SourceIP is the connection's source address (used to recognise a waypoint's own traffic).
	SourceIP netip.Addr
	// Destination is the original destination the application dialled.
	Destination netip.AddrPort
	// Network is the agent's network ("" by default).
	Network string
	// Rand returns a uniform integer in [0, n); nil uses math/rand/v2. Tests inject a fixed source.
	Rand func(n uint64) uint64
}

// AgentPorts are the node agent's own capture ports: a connection to them on loopback would loop.
var AgentPorts = [...]uint16{15001, 15006, 15008}

// Build returns the plan for r.
func Build(v View, r *Request) Plan {
	src := r.Source
	if src == nil {
		return Plan{Path: PathReject, Reason: ReasonUnknownSource}
	}
	dst := r.Destination
	if dst.Addr().IsLoopback() {
		for _, p := range AgentPorts {
			if dst.Port() == p {
				return Plan{Path: PathReject, Reason: ReasonRecursive}
			}
		}
	}
	addr := state.NetworkAddress{Network: r.Network, Addr: dst.Addr()}
	wl := v.WorkloadByAddr(addr)
	var svc *state.Service
	if wl == nil {
		svc = v.ServiceByVIP(addr, src.Namespace)
	}

	if svc != nil {
		// 1. A service waypoint takes service-addressed traffic, unless the caller is that waypoint.
		if svc.Waypoint != nil && !fromWaypoint(v, r, svc.Waypoint) {
			p := viaWaypoint(v, r, svc.Waypoint, ReasonServiceWaypoint)
			p.Service = svc
			if p.Path == PathWaypoint && p.Upstream.Network != r.Network {
				// 1. The chosen waypoint instance is on another network: through its network gateway.
				viaGateway(v, r, &p, svc)
			}
			return p
		}
		if svc.LoadBalancing != nil && svc.LoadBalancing.Mode == state.LBPassthrough {
			return Plan{Path: PathPassthrough, Protocol: ProtocolTCP, NextHop: dst, Service: svc, Reason: ReasonServicePassthrough}
		}
		// 2. Pick an endpoint; the pod's own workload waypoint is not consulted (no double transit).
		port, ok := svc.Port(dst.Port())
		if !ok {
			return Plan{Path: PathReject, Service: svc, Reason: ReasonNoServicePort}
		}
		ep, target, ok := pickEndpoint(v.Endpoints(svc.Key()), svc, port, src, r, false)
		if !ok {
			return Plan{Path: PathReject, Service: svc, Reason: ReasonNoHealthyEndpoint}
		}
		p := direct(ep, svc, dst, target, ReasonServiceEndpoint)
		p.Service = svc
		if p.Path == PathDirect && ep.Network != r.Network {
			// 4. A remote-network endpoint: double HBONE through its network gateway.
			viaGateway(v, r, &p, svc)
		}
		return p
	}
	if wl == nil {
		// 3. Not a mesh address: pass through untouched.
		return Plan{Path: PathPassthrough, Protocol: ProtocolTCP, NextHop: dst, Reason: ReasonNotInMesh}
	}
	// 5. Workload-addressed traffic uses the workload's waypoint, unless the caller is that waypoint.
	if wl.Waypoint != nil {
		if !fromWaypoint(v, r, wl.Waypoint) {
			p := viaWaypoint(v, r, wl.Waypoint, ReasonWorkloadWaypoint)
			p.Workload = wl
			return p
		}
		return direct(wl, nil, dst, dst.Port(), ReasonFromWaypoint)
	}
	// 6. Direct.
	return direct(wl, nil, dst, dst.Port(), ReasonWorkload)
}

// viaGateway turns p, planned to an upstream on another network, into double HBONE through the
// upstream's network gateway (2.8), or a rejection when it has none or the gateway is unknown. The
// gateway is resolved like a waypoint but in standard mode: an address names a workload or a service
// VIP (whose endpoint gives the identity; the next hop stays the gateway's address, the only one
// reachable from this network), a hostname names a service, reached at its first VIP.
func viaGateway(v View, r *Request, p *Plan, svc *state.Service) {
	up := p.Upstream
	g := up.NetworkGateway
	if g == nil {
		*p = Plan{Path: PathReject, Service: svc, Workload: p.Workload, Waypoint: p.Waypoint, WaypointService: p.WaypointService,
			Upstream: up, Reason: ReasonNoNetworkGateway}
		return
	}
	var inst *state.Workload
	var gsvc *state.Service
	hop := g.Address.Addr
	if g.IsHostname() {
		gsvc = v.Service(g.Hostname)
		if gsvc != nil && len(gsvc.Addresses) > 0 {
			hop = gsvc.Addresses[0].Addr
		}
	} else if inst = v.WorkloadByAddr(g.Address); inst == nil {
		gsvc = v.ServiceByVIP(g.Address, r.Source.Namespace)
	}
	if gsvc != nil {
		sp, ok := gsvc.Port(g.HBONEMTLSPort)
		if !ok {
			sp = state.Port{ServicePort: g.HBONEMTLSPort, TargetPort: g.HBONEMTLSPort}
		}
		inst, _, _ = pickEndpoint(v.Endpoints(gsvc.Key()), gsvc, sp, r.Source, r, true)
	}
	if inst == nil || !hop.IsValid() {
		*p = Plan{Path: PathReject, Service: svc, Workload: p.Workload, Waypoint: p.Waypoint, WaypointService: p.WaypointService,
			Upstream: up, Gateway: g, Reason: ReasonUnknownNetworkGateway}
		return
	}
	p.Protocol = ProtocolHBONE
	p.NextHop = netip.AddrPortFrom(hop, g.HBONEMTLSPort)
	p.Authority = netip.AddrPort{}
	p.Gateway, p.GatewayUpstream = g, inst
	if gsvc != nil {
		p.GatewaySANs = gsvc.SubjectAltNames
	}
	p.Host, p.HostPort = svc.Hostname, r.Destination.Port()
}

// direct plans a connection straight to workload w on target port.
func direct(w *state.Workload, svc *state.Service, dst netip.AddrPort, target uint16, reason Reason) Plan {
	ip, ok := pickIP(w, svc, dst.Addr())
	if !ok {
		return Plan{Path: PathReject, Workload: w, Reason: ReasonNoUsableIP}
	}
	p := Plan{Path: PathDirect, Workload: w, Upstream: w, Reason: reason}
	if svc != nil {
		p.SANs = svc.SubjectAltNames
	}
	if w.Protocol == state.TunnelHBONE {
		p.Protocol = ProtocolHBONE
		p.NextHop = netip.AddrPortFrom(ip, state.HBONEPort)
		p.Authority = netip.AddrPortFrom(ip, target)
		return p
	}
	p.Protocol = ProtocolTCP
	p.NextHop = netip.AddrPortFrom(ip, target)
	return p
}

// pickIP chooses the destination IP of w: the dialled IP when it is w's, else the first IP allowed by the
// service's IP families, preferring the dialled IP's family.
func pickIP(w *state.Workload, svc *state.Service, dialled netip.Addr) (netip.Addr, bool) {
	if w.HasAddress(dialled) {
		return dialled, true
	}
	fam := state.IPFamiliesAutomatic
	if svc != nil {
		fam = svc.IPFamilies
	}
	allowed := func(a netip.Addr) bool {
		switch fam {
		case state.IPv4Only:
			return a.Is4()
		case state.IPv6Only:
			return a.Is6()
		}
		return true
	}
	var fallback netip.Addr
	for _, a := range w.Addresses {
		if !allowed(a) {
			continue
		}
		if a.Is4() == dialled.Is4() {
			return a, true
		}
		if !fallback.IsValid() {
			fallback = a
		}
	}
	return fallback, fallback.IsValid()
}

// viaWaypoint plans HBONE to an instance of waypoint g; the authority stays the original destination.
func viaWaypoint(v View, r *Request, g *state.GatewayAddress, reason Reason) Plan {
	inst, wsvc, target, why := resolveWaypoint(v, r, g)
	if inst == nil {
		return Plan{Path: PathReject, Waypoint: g, WaypointService: wsvc, Reason: why}
	}
	ip, ok := pickIP(inst, wsvc, r.Destination.Addr())
	if !ok {
		return Plan{Path: PathReject, Waypoint: g, WaypointService: wsvc, Reason: ReasonNoUsableIP}
	}
	p := Plan{
		Path:            PathWaypoint,
		Protocol:        ProtocolHBONE,
		NextHop:         netip.AddrPortFrom(ip, target),
		Authority:       r.Destination,
		Waypoint:        g,
		WaypointService: wsvc,
		Upstream:        inst,
		Reason:          reason,
	}
	if wsvc != nil {
		p.SANs = wsvc.SubjectAltNames
	}
	return p
}

// resolveWaypoint finds an instance of waypoint g and the port to dial it on (2.6). A hostname reference
// names the waypoint's service, load-balanced in waypoint mode on hbone_mtls_port; an address
// reference names a workload (used directly) or a service VIP.
func resolveWaypoint(v View, r *Request, g *state.GatewayAddress) (*state.Workload, *state.Service, uint16, Reason) {
	port := g.HBONEMTLSPort
	var wsvc *state.Service
	if g.IsHostname() {
		wsvc = v.Service(g.Hostname)
	} else {
		if w := v.WorkloadByAddr(g.Address); w != nil {
			return w, nil, port, 0
		}
		wsvc = v.ServiceByVIP(g.Address, r.Source.Namespace)
	}
	if wsvc == nil {
		return nil, nil, 0, ReasonUnknownWaypoint
	}
	sp, ok := wsvc.Port(port)
	if !ok {
		sp = state.Port{ServicePort: port}
	}
	ep, target, ok := pickEndpoint(v.Endpoints(wsvc.Key()), wsvc, sp, r.Source, r, true)
	if !ok {
		return nil, wsvc, 0, ReasonNoWaypointEndpoint
	}
	return ep, wsvc, target, 0
}

// fromWaypoint reports whether the caller is an instance of waypoint g: its identity and source IP
// belong to a workload behind g (ztunnel's check_from_waypoint). It keeps a waypoint's own traffic to
// the workloads it serves from looping back into it.
func fromWaypoint(v View, r *Request, g *state.GatewayAddress) bool {
	src := r.Source
	is := func(w *state.Workload) bool {
		return w.Identity() == src.Identity() && (w.HasAddress(r.SourceIP) || !r.SourceIP.IsValid() && w.UID == src.UID)
	}
	if g.IsHostname() {
		if wsvc := v.Service(g.Hostname); wsvc != nil {
			for _, ep := range v.Endpoints(wsvc.Key()) {
				if is(ep) {
					return true
				}
			}
		}
		return false
	}
	if w := v.WorkloadByAddr(g.Address); w != nil {
		return is(w)
	}
	if wsvc := v.ServiceByVIP(g.Address, src.Namespace); wsvc != nil {
		for _, ep := range v.Endpoints(wsvc.Key()) {
			if is(ep) {
				return true
			}
		}
	}
	return false
}

// pickEndpoint load-balances over eps (7.3): healthy endpoints (or all, with AllowAll) that have an IP
// and a port mapping, narrowed by the service's routing preferences, chosen at random weighted by
// capacity. It returns the endpoint and its target port.
func pickEndpoint(eps []*state.Workload, svc *state.Service, port state.Port, src *state.Workload, r *Request, waypointMode bool) (*state.Workload, uint16, bool) {
	lb := svc.LoadBalancing
	allowAll := lb != nil && lb.HealthPolicy == state.AllowAll
	var prefs []state.LoadBalancingScope
	strict := false
	if lb != nil && (lb.Mode == state.LBStrict || lb.Mode == state.LBFailover) {
		prefs = lb.RoutingPreference
		strict = lb.Mode == state.LBStrict
	}
	key := svc.Key()
	usable := func(w *state.Workload) (uint16, bool) {
		if w.Status != state.Healthy && !allowAll || len(w.Addresses) == 0 {
			return 0, false
		}
		if ref := w.ServiceRef(key); ref != nil {
			if t, ok := ref.Target(port.ServicePort); ok {
				return t, true
			}
		}
		if port.TargetPort != 0 {
			return port.TargetPort, true
		}
		if waypointMode && (w.ApplicationTunnel != nil && w.ApplicationTunnel.Port != 0 || len(svc.Ports) == 0) {
			return port.ServicePort, true
		}
		return 0, false
	}
	maxRank, total := -1, uint64(0)
	for _, w := range eps {
		if _, ok := usable(w); !ok {
			continue
		}
		rk := rank(prefs, src, w)
		if strict && rk < len(prefs) {
			continue
		}
		switch {
		case rk > maxRank:
			maxRank, total = rk, uint64(w.Capacity)
		case rk == maxRank:
			total += uint64(w.Capacity)
		}
	}
	if total == 0 {
		return nil, 0, false
	}
	var n uint64
	if r.Rand != nil {
		n = r.Rand(total)
	} else {
		n = rand.Uint64N(total)
	}
	for _, w := range eps {
		t, ok := usable(w)
		if !ok || rank(prefs, src, w) != maxRank {
			continue
		}
		if c := uint64(w.Capacity); n >= c {
			n -= c
			continue
		}
		return w, t, true
	}
	return nil, 0, false // unreachable: total counted the same endpoints
}

// rank counts how many leading routing preferences the endpoint shares with the source.
func rank(prefs []state.LoadBalancingScope, src, ep *state.Workload) int {
	n := 0
	for _, s := range prefs {
		var same bool
		switch s {
		case state.ScopeRegion:
			same = src.Locality.Region == ep.Locality.Region
		case state.ScopeZone:
			same = src.Locality.Zone == ep.Locality.Zone
		case state.ScopeSubzone:
			same = src.Locality.Subzone == ep.Locality.Subzone
		case state.ScopeNode:
			same = src.Node == ep.Node
		case state.ScopeCluster:
			same = src.ClusterID == ep.ClusterID
		case state.ScopeNetwork:
			same = src.Network == ep.Network
		}
		if !same {
			break
		}
		n++
	}
	return n
}
