package route

import (
	"fmt"

	"github.com/ambit-mesh/ambit/mesh/state"
)

// WaypointName returns "<namespace>/<name>" of the waypoint a plan uses (the name of the waypoint's
// service, which istiod names after the Gateway), or "" when the plan uses none.
func WaypointName(v View, p *Plan) string {
	switch {
	case p.Waypoint == nil:
		return ""
	case p.WaypointService != nil:
		return p.WaypointService.Namespace + "/" + p.WaypointService.Name
	case p.Upstream != nil && p.Path == PathWaypoint:
		return p.Upstream.Namespace + "/" + p.Upstream.Name
	}
	return p.Waypoint.Destination()
}

// Describe explains a plan in one sentence for people (ambitctl explain, logs).
func Describe(v View, r *Request, p *Plan) string {
	dst := r.Destination
	svcName := func(s *state.Service) string { return s.Namespace + "/" + s.Name }
	wlName := func(w *state.Workload) string { return w.Namespace + "/" + w.Name }
	switch p.Reason {
	case ReasonUnknownSource:
		return "the source is not a known workload on this node"
	case ReasonRecursive:
		return fmt.Sprintf("%s is one of the agent's own capture ports on loopback", dst)
	case ReasonServiceWaypoint:
		return fmt.Sprintf("%s is service %s, bound to waypoint %s; HBONE to waypoint instance %s", dst, svcName(p.Service), WaypointName(v, p), wlName(p.Upstream)) +
			gatewaySuffix(p)
	case ReasonWorkloadWaypoint:
		return fmt.Sprintf("%s is workload %s, bound to waypoint %s; HBONE to waypoint instance %s", dst, wlName(p.Workload), WaypointName(v, p), wlName(p.Upstream))
	case ReasonServiceEndpoint:
		s := fmt.Sprintf("%s is service %s with no waypoint; endpoint %s selected", dst, svcName(p.Service), wlName(p.Workload))
		return s + directSuffix(p) + gatewaySuffix(p)
	case ReasonWorkload:
		return fmt.Sprintf("%s is workload %s with no waypoint", dst, wlName(p.Workload)) + directSuffix(p)
	case ReasonFromWaypoint:
		return fmt.Sprintf("%s is workload %s and the source is its own waypoint, so it goes direct", dst, wlName(p.Workload)) + directSuffix(p)
	case ReasonNotInMesh:
		return fmt.Sprintf("%s is not a known service or workload: plain TCP passthrough", dst)
	case ReasonServicePassthrough:
		return fmt.Sprintf("%s is service %s with PASSTHROUGH load balancing: plain TCP to the original destination", dst, svcName(p.Service))
	case ReasonNoServicePort:
		return fmt.Sprintf("service %s does not declare port %d", svcName(p.Service), dst.Port())
	case ReasonNoHealthyEndpoint:
		return fmt.Sprintf("service %s has no healthy endpoint for port %d", svcName(p.Service), dst.Port())
	case ReasonUnknownWaypoint:
		return fmt.Sprintf("%s is %s, bound to waypoint %s, which is not a known service or workload", dst, target(p), p.Waypoint.Destination())
	case ReasonNoWaypointEndpoint:
		return fmt.Sprintf("%s is %s, bound to waypoint %s, which has no healthy instance", dst, target(p), waypointRef(v, p))
	case ReasonNoNetworkGateway:
		return fmt.Sprintf("%s is %s; its upstream %s is on network %q, which has no network gateway", dst, target(p), wlName(p.Upstream), p.Upstream.Network)
	case ReasonUnknownNetworkGateway:
		return fmt.Sprintf("%s is %s; its upstream %s is on network %q, whose gateway %s is not a known workload or service", dst, target(p),
			wlName(p.Upstream), p.Upstream.Network, p.Gateway.Destination())
	case ReasonNoUsableIP:
		if p.Workload != nil {
			return fmt.Sprintf("workload %s has no usable IP address", wlName(p.Workload))
		}
		return "the selected workload has no usable IP address"
	}
	return p.Path.String()
}

func target(p *Plan) string {
	switch {
	case p.Service != nil:
		return "service " + p.Service.Namespace + "/" + p.Service.Name
	case p.Workload != nil:
		return "workload " + p.Workload.Namespace + "/" + p.Workload.Name
	}
	return "a mesh destination"
}

// gatewaySuffix describes the outer hop of double HBONE.
func gatewaySuffix(p *Plan) string {
	if !p.DoubleHBONE() {
		return ""
	}
	return fmt.Sprintf(", on network %q: double HBONE through network gateway %s (instance %s/%s), authority %s:%d",
		p.Upstream.Network, p.NextHop, p.GatewayUpstream.Namespace, p.GatewayUpstream.Name, p.Host, p.HostPort)
}

func directSuffix(p *Plan) string {
	if p.DoubleHBONE() {
		return ""
	}
	if p.Protocol == ProtocolHBONE {
		return fmt.Sprintf("; direct HBONE to %s", p.NextHop)
	}
	return "; the destination is not in the mesh, so plain TCP"
}

func waypointRef(v View, p *Plan) string {
	if n := WaypointName(v, p); n != "" {
		return n
	}
	return "?"
}
