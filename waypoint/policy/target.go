package policy

import "github.com/ambit-mesh/ambit/waypoint/model"

// Destination is what a policy's targetRefs are matched against: this waypoint (its Gateway, and the
// GatewayClass whose policies live in the root namespace), the destination service, and (for
// policies that may target routes) the selected route. The HTTP path and both TCP paths of the
// waypoint (a TCP port, and the non-HTTP fallback on an HTTP port) select policies with the same
// Destination, so a policy that applies to one applies to all three.
type Destination struct {
	// GatewayNamespace and GatewayName name the waypoint's Gateway.
	GatewayNamespace, GatewayName string
	// RootNamespace holds the GatewayClass-targeted (mesh-wide) policies; GatewayClass is the
	// waypoint's class (istio-waypoint).
	RootNamespace, GatewayClass string
	// ServiceNamespace and ServiceName name the destination Service or ServiceEntry; empty for
	// workload-addressed traffic.
	ServiceNamespace, ServiceName string
	// Route is the selected HTTPRoute or GRPCRoute, if any.
	Route *model.Route
}

// Targets reports whether a policy with targetRefs refs applies to d.
func Targets(refs []model.TargetRef, d *Destination) bool {
	for i := range refs {
		t := &refs[i]
		switch t.Kind {
		case model.KindGateway:
			if t.Namespace == d.GatewayNamespace && t.Name == d.GatewayName {
				return true
			}
		case model.KindGatewayClass:
			if t.Namespace == d.RootNamespace && t.Name == d.GatewayClass {
				return true
			}
		case model.KindService, model.KindServiceEntry:
			if d.ServiceName != "" && t.Namespace == d.ServiceNamespace && t.Name == d.ServiceName {
				return true
			}
		case model.KindHTTPRoute, model.KindGRPCRoute:
			if r := d.Route; r != nil && r.Kind == t.Kind && r.Namespace == t.Namespace && r.Name == t.Name {
				return true
			}
		}
	}
	return false
}

// Select returns the authorization policies that apply to d, in their order.
func Select(policies []*model.AuthzPolicy, d *Destination) []*model.AuthzPolicy {
	var out []*model.AuthzPolicy
	for _, p := range policies {
		if Targets(p.Targets, d) {
			out = append(out, p)
		}
	}
	return out
}
