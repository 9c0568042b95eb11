package local

import (
	"cmp"
	"fmt"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/config/resource"
	"github.com/ambit-mesh/ambit/mesh/binding"
	"github.com/ambit-mesh/ambit/mesh/istio"
	"github.com/ambit-mesh/ambit/mesh/state"
)

func (c *compiler) indexPods() error {
	for _, p := range c.objs.Pods {
		if err := resource.ValidateMeta(&p.ObjectMeta, true); err != nil {
			return c.inputErr(p, "Pod", &p.ObjectMeta, err)
		}
		if err := validatePod(p); err != nil {
			return c.inputErr(p, "Pod", &p.ObjectMeta, err)
		}
		c.podsByNS[p.Namespace] = append(c.podsByNS[p.Namespace], p)
	}
	return nil
}

func (c *compiler) indexGatewayClasses() error {
	for _, gc := range c.objs.GatewayClasses {
		if err := resource.ValidateMeta(&gc.ObjectMeta, false); err != nil {
			return c.inputErr(gc, "GatewayClass", &gc.ObjectMeta, err)
		}
		c.classes[gc.Name] = gc
	}
	return nil
}

// buildWaypoints applies R1: every Gateway with a status address is a ready waypoint.
func (c *compiler) buildWaypoints() error {
	for _, gw := range c.objs.Gateways {
		if err := resource.ValidateMeta(&gw.ObjectMeta, true); err != nil {
			return c.inputErr(gw, "Gateway", &gw.ObjectMeta, err)
		}
		if isEastWest(gw) {
			continue // a network gateway (networks.go), not a waypoint
		}
		wp, err := c.makeWaypoint(gw)
		if err != nil {
			return c.inputErr(gw, "Gateway", &gw.ObjectMeta, err)
		}
		if wp != nil {
			c.waypoints[wp.Key()] = wp
		}
	}
	return nil
}

func (c *compiler) makeWaypoint(gw *gwv1.Gateway) (*binding.Waypoint, error) {
	for i, l := range gw.Spec.Listeners {
		if err := validPort(fmt.Sprintf("spec.listeners[%d]", i), int64(l.Port)); err != nil {
			return nil, err
		}
	}
	addr, err := gatewayAddress(gw, c.opts.Network)
	if err != nil {
		return nil, err
	}
	if len(gw.Status.Addresses) == 0 {
		return nil, nil
	}
	traffic := binding.TrafficService
	class := c.classes[string(gw.Spec.GatewayClassName)]
	if class != nil {
		if tt, ok := class.Labels[istio.LabelWaypointFor]; ok {
			traffic = tt
		}
	}
	if tt, ok := gw.Labels[istio.LabelWaypointFor]; ok {
		traffic = tt
	}
	wp := &binding.Waypoint{
		Namespace:    gw.Namespace,
		Name:         gw.Name,
		TrafficType:  traffic,
		Address:      addr,
		GatewayClass: string(gw.Spec.GatewayClassName),
	}
	if err := allowedRoutes(wp, gw, class); err != nil {
		return nil, err
	}
	for _, p := range c.podsByNS[gw.Namespace] {
		if p.Labels[istio.LabelGatewayName] == gw.Name {
			wp.ServiceAccounts = append(wp.ServiceAccounts, cmp.Or(p.Spec.ServiceAccountName, state.DefaultServiceAccount))
		}
	}
	slices.Sort(wp.ServiceAccounts)
	wp.ServiceAccounts = slices.Compact(wp.ServiceAccounts)
	return wp, nil
}

// gatewayAddress applies R13: the first Hostname status address, else the first IPAddress one. An address
// without a type is an IPAddress (the CRD default). Port 15008 is fixed, as in istiod.
func gatewayAddress(gw *gwv1.Gateway, network string) (*state.GatewayAddress, error) {
	for _, a := range gw.Status.Addresses {
		if a.Type != nil && *a.Type == gwv1.HostnameAddressType {
			return &state.GatewayAddress{
				Hostname:      state.NamespacedHostname{Namespace: gw.Namespace, Hostname: a.Value},
				HBONEMTLSPort: state.HBONEPort,
			}, nil
		}
	}
	for i, a := range gw.Status.Addresses {
		if a.Type == nil || *a.Type == gwv1.IPAddressType {
			ip, err := parseIP(fmt.Sprintf("status.addresses[%d]", i), a.Value)
			if err != nil {
				return nil, err
			}
			return &state.GatewayAddress{
				Address:       state.NetworkAddress{Network: network, Addr: ip},
				HBONEMTLSPort: state.HBONEPort,
			}, nil
		}
	}
	return nil, nil
}

// allowedRoutes applies R7: the listener named by the inbound-binding annotation, else the HBONE/15008
// listener, else Same.
func allowedRoutes(wp *binding.Waypoint, gw *gwv1.Gateway, class *gwv1.GatewayClass) error {
	wp.From = binding.FromSame
	l := boundListener(gw, class)
	if l == nil {
		for i := range gw.Spec.Listeners {
			if gw.Spec.Listeners[i].Protocol == "HBONE" && gw.Spec.Listeners[i].Port == state.HBONEPort {
				l = &gw.Spec.Listeners[i]
				break
			}
		}
	}
	if l == nil || l.AllowedRoutes == nil || l.AllowedRoutes.Namespaces == nil {
		return nil
	}
	ns := l.AllowedRoutes.Namespaces
	if ns.From != nil {
		switch *ns.From {
		case gwv1.NamespacesFromAll:
			wp.From = binding.FromAll
		case gwv1.NamespacesFromSelector:
			wp.From = binding.FromSelector
		case gwv1.NamespacesFromSame:
		default:
			return fmt.Errorf("listener %s: unknown allowedRoutes.namespaces.from %q", l.Name, *ns.From)
		}
	}
	sel, err := metav1.LabelSelectorAsSelector(ns.Selector)
	if err != nil {
		return fmt.Errorf("listener %s: allowedRoutes.namespaces.selector: %w", l.Name, err)
	}
	if ns.Selector == nil {
		sel = labels.Nothing()
	}
	wp.Selector = sel
	return nil
}

// boundListener finds the listener selected by the inbound-binding annotation ("PROXY", "NONE" or
// "<protocol>/<port>") on the Gateway or its class.
func boundListener(gw *gwv1.Gateway, class *gwv1.GatewayClass) *gwv1.Listener {
	v, ok := gw.Annotations[istio.AnnotationInboundBinding]
	if !ok && class != nil {
		v, ok = class.Annotations[istio.AnnotationInboundBinding]
	}
	if !ok {
		return nil
	}
	proto, portStr, hasPort := cutSlash(v)
	if proto != "NONE" && proto != "PROXY" {
		return nil
	}
	var port int
	if hasPort {
		if _, err := fmt.Sscanf(portStr, "%d", &port); err != nil {
			return nil
		}
	}
	for i := range gw.Spec.Listeners {
		l := &gw.Spec.Listeners[i]
		switch {
		case port != 0 && int(l.Port) == port:
			return l
		case port == 0 && proto == "PROXY" && l.Protocol == "istio.io/PROXY":
			return l
		}
	}
	return nil
}

func cutSlash(s string) (before, after string, found bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}
