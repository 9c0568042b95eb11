package local

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	networkingapi "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"

	"github.com/ambit-mesh/ambit/config/resource"
	"github.com/ambit-mesh/ambit/mesh/binding"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// svcInfo is a compiled service plus what endpoint selection needs.
type svcInfo struct {
	svc  *state.Service
	kind string // "Service" or "ServiceEntry"
	// selector selects pods and WorkloadEntries in the service's namespace (nil: selects nothing).
	selector map[string]string
	// portNames holds, per service port, the port name and (Services only) a named target port.
	portNames map[uint16]portName
	// seEndpoints is true for a ServiceEntry's own hosts (endpoint port semantics differ).
}

type portName struct {
	PortName       string
	TargetPortName string
}

func (c *compiler) buildServices() error {
	for _, s := range c.objs.Services {
		if err := resource.ValidateMeta(&s.ObjectMeta, true); err != nil {
			return c.inputErr(s, "Service", &s.ObjectMeta, err)
		}
		if errs := validation.IsDNS1035Label(s.Name); len(errs) > 0 {
			return c.inputErr(s, "Service", &s.ObjectMeta, fmt.Errorf("metadata.name %q: %s", s.Name, strings.Join(errs, "; ")))
		}
		if err := resource.ValidateLabels(s.Spec.Selector, "spec", "selector"); err != nil {
			return c.inputErr(s, "Service", &s.ObjectMeta, err)
		}
		info, err := c.convertService(s)
		if err != nil {
			return c.inputErr(s, "Service", &s.ObjectMeta, err)
		}
		if info == nil {
			continue // ExternalName: skipped entirely, as istiod does
		}
		c.svcInfos[s.Namespace] = append(c.svcInfos[s.Namespace], info)
		c.res.Snapshot.Services = append(c.res.Snapshot.Services, info.svc)
	}
	return nil
}

func (c *compiler) convertService(s *corev1.Service) (*svcInfo, error) {
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, nil
	}
	svc := &state.Service{
		Name:      s.Name,
		Namespace: s.Namespace,
		Hostname:  s.Name + "." + s.Namespace + ".svc." + c.opts.DomainSuffix,
		Canonical: true,
	}
	ips := s.Spec.ClusterIPs
	if len(ips) == 0 && s.Spec.ClusterIP != "" {
		ips = []string{s.Spec.ClusterIP}
	}
	for i, ip := range ips {
		if ip == corev1.ClusterIPNone {
			continue
		}
		a, err := parseIP(fmt.Sprintf("spec.clusterIPs[%d]", i), ip)
		if err != nil {
			return nil, err
		}
		svc.Addresses = append(svc.Addresses, state.NetworkAddress{Network: c.networkOf(s.Namespace, nil), Addr: a})
	}
	info := &svcInfo{svc: svc, kind: "Service", selector: s.Spec.Selector, portNames: map[uint16]portName{}}
	for i, p := range s.Spec.Ports {
		what := fmt.Sprintf("spec.ports[%d]", i)
		if err := validPort(what, int64(p.Port)); err != nil {
			return nil, err
		}
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue // only TCP is carried
		}
		port := state.Port{ServicePort: uint16(p.Port), Name: p.Name, AppProtocol: appProtocol(p.AppProtocol, p.Name)}
		pn := portName{PortName: p.Name}
		switch {
		case p.TargetPort.Type == intstr.String:
			if errs := validation.IsValidPortName(p.TargetPort.StrVal); len(errs) > 0 {
				return nil, fmt.Errorf("%s.targetPort %q: %s", what, p.TargetPort.StrVal, strings.Join(errs, "; "))
			}
			pn.TargetPortName = p.TargetPort.StrVal
		case p.TargetPort.IntVal == 0:
			port.TargetPort = uint16(p.Port) // the API server defaults targetPort to port
		default:
			if err := validPort(what+".targetPort", int64(p.TargetPort.IntVal)); err != nil {
				return nil, err
			}
			port.TargetPort = uint16(p.TargetPort.IntVal)
		}
		info.portNames[port.ServicePort] = pn
		svc.Ports = append(svc.Ports, port)
	}
	switch {
	case s.Spec.InternalTrafficPolicy != nil && *s.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal:
		svc.LoadBalancing = &state.LoadBalancing{RoutingPreference: []state.LoadBalancingScope{state.ScopeNode}, Mode: state.LBStrict}
	case s.Spec.TrafficDistribution != nil && (*s.Spec.TrafficDistribution == "PreferClose" || *s.Spec.TrafficDistribution == "PreferSameZone"):
		svc.LoadBalancing = &state.LoadBalancing{
			RoutingPreference: []state.LoadBalancingScope{state.ScopeNetwork, state.ScopeRegion, state.ScopeZone},
			Mode:              state.LBFailover,
		}
	case s.Spec.TrafficDistribution != nil && *s.Spec.TrafficDistribution == "PreferSameNode":
		svc.LoadBalancing = &state.LoadBalancing{
			RoutingPreference: []state.LoadBalancingScope{state.ScopeNetwork, state.ScopeRegion, state.ScopeZone, state.ScopeSubzone, state.ScopeNode},
			Mode:              state.LBFailover,
		}
	}
	if s.Spec.PublishNotReadyAddresses {
		if svc.LoadBalancing == nil {
			svc.LoadBalancing = &state.LoadBalancing{}
		}
		svc.LoadBalancing.HealthPolicy = state.AllowAll
	}
	svc.IPFamilies = ipFamilies(s.Spec.IPFamilies)
	c.bindService(svc, "Service", &s.ObjectMeta, s)
	return info, nil
}

func ipFamilies(f []corev1.IPFamily) state.IPFamilies {
	v4, v6 := false, false
	for _, x := range f {
		v4 = v4 || x == corev1.IPv4Protocol
		v6 = v6 || x == corev1.IPv6Protocol
	}
	switch {
	case v4 && v6:
		return state.IPFamiliesDual
	case v4:
		return state.IPv4Only
	case v6:
		return state.IPv6Only
	}
	return state.IPFamiliesAutomatic
}

// appProtocol derives the port protocol from appProtocol, else from the port name prefix
// ("http", "http-foo", "grpc-web", ...), as Istio's protocol selection does.
func appProtocol(app *string, name string) state.AppProtocol {
	p := ""
	if app != nil {
		p = strings.ToLower(*app)
	} else {
		p, _, _ = strings.Cut(strings.ToLower(name), "-")
	}
	switch p {
	case "http", "http1", "http/1.1":
		return state.AppProtocolHTTP11
	case "http2", "h2c", "kubernetes.io/h2c":
		return state.AppProtocolHTTP2
	case "grpc", "grpc-web":
		return state.AppProtocolGRPC
	case "tcp":
		return state.AppProtocolTCP
	case "tls", "https":
		return state.AppProtocolTLS
	}
	return state.AppProtocolUnknown
}

// bindService resolves the service waypoint of svc (from the labels of the Service or ServiceEntry in m)
// and records the binding and its condition.
func (c *compiler) bindService(svc *state.Service, kind string, m *metav1.ObjectMeta, obj any) *binding.Result {
	res := binding.ForService(c, binding.Object{Namespace: m.Namespace, Name: m.Name, Labels: m.Labels})
	ingress, present := binding.IngressUseWaypoint(m.Labels, c.namespaces[m.Namespace])
	if res.Waypoint != nil {
		svc.Waypoint = res.Waypoint.Address
		svc.IngressUseWaypoint = ingress
	}
	b := Binding{Kind: kind, Namespace: m.Namespace, Name: m.Name, Condition: binding.ServiceCondition(res, ingress, present), seq: c.seq(obj)}
	if res.Waypoint != nil {
		b.Waypoint = res.Waypoint.Key()
	}
	if kind == "Service" {
		c.res.Bindings = append(c.res.Bindings, b)
	}
	return &res
}

func (c *compiler) buildServiceEntries() error {
	c.autoAddrs = autoAllocate(c.objs.ServiceEntries)
	for _, se := range c.objs.ServiceEntries {
		if err := resource.ValidateMeta(&se.ObjectMeta, true); err != nil {
			return c.inputErr(se, "ServiceEntry", &se.ObjectMeta, err)
		}
		if err := c.convertServiceEntry(se); err != nil {
			return c.inputErr(se, "ServiceEntry", &se.ObjectMeta, err)
		}
	}
	return nil
}

func (c *compiler) convertServiceEntry(se *networkingv1.ServiceEntry) error {
	spec := &se.Spec
	if len(spec.Hosts) == 0 {
		return fmt.Errorf("spec.hosts is required")
	}
	var vips []state.NetworkAddress
	for i, a := range spec.Addresses {
		what := fmt.Sprintf("spec.addresses[%d]", i)
		if strings.Contains(a, "/") {
			p, err := netip.ParsePrefix(a)
			if err != nil {
				return fmt.Errorf("%s: invalid CIDR %q", what, a)
			}
			if p.Bits() != p.Addr().BitLen() {
				continue // CIDR VIPs (recent WDS feature) are not modelled; single-address prefixes are
			}
			vips = append(vips, state.NetworkAddress{Network: c.networkOf(se.Namespace, nil), Addr: p.Addr()})
			continue
		}
		ip, err := parseIP(what, a)
		if err != nil {
			return err
		}
		vips = append(vips, state.NetworkAddress{Network: c.networkOf(se.Namespace, nil), Addr: ip})
	}
	var ports []state.Port
	names := map[uint16]portName{}
	for i, p := range spec.Ports {
		what := fmt.Sprintf("spec.ports[%d]", i)
		if err := validPort(what, int64(p.Number)); err != nil {
			return err
		}
		if p.TargetPort != 0 {
			if err := validPort(what+".targetPort", int64(p.TargetPort)); err != nil {
				return err
			}
		}
		proto := strings.ToLower(p.Protocol)
		ports = append(ports, state.Port{
			ServicePort: uint16(p.Number), TargetPort: uint16(p.TargetPort), Name: p.Name,
			AppProtocol: appProtocol(&proto, p.Name),
		})
		names[uint16(p.Number)] = portName{PortName: p.Name}
	}
	var selector map[string]string
	if spec.WorkloadSelector != nil {
		if err := resource.ValidateLabels(spec.WorkloadSelector.Labels, "spec", "workloadSelector", "labels"); err != nil {
			return err
		}
		selector = spec.WorkloadSelector.Labels
	}
	for i, ep := range spec.Endpoints {
		if ep.Address == "" && len(ep.Labels) == 0 {
			return fmt.Errorf("spec.endpoints[%d]: address is required", i)
		}
		if err := resource.ValidateLabels(ep.Labels, "spec", fmt.Sprintf("endpoints[%d]", i), "labels"); err != nil {
			return err
		}
		for name, tp := range ep.Ports {
			if err := validPort(fmt.Sprintf("spec.endpoints[%d].ports[%s]", i, name), int64(tp)); err != nil {
				return err
			}
		}
	}
	c.serviceEntryResolutionWarnings(se)
	var lb *state.LoadBalancing
	if spec.Resolution == networkingapi.ServiceEntry_NONE {
		lb = &state.LoadBalancing{Mode: state.LBPassthrough, HealthPolicy: state.AllowAll}
	}
	wildcard := false
	var first *binding.Result
	var svcs []*state.Service
	for _, h := range spec.Hosts {
		if h == "" {
			return fmt.Errorf("spec.hosts: empty host")
		}
		wildcard = wildcard || strings.HasPrefix(h, "*")
		addrs := vips
		if len(vips) == 0 {
			for _, ip := range c.autoAddrs[se.Namespace+"/"+h] {
				addrs = append(addrs, state.NetworkAddress{Network: c.opts.Network, Addr: ip})
			}
		}
		svc := &state.Service{
			Name: se.Name, Namespace: se.Namespace, Hostname: h,
			Addresses: addrs, Ports: ports, SubjectAltNames: spec.SubjectAltNames, LoadBalancing: lb,
		}
		res := c.bindService(svc, "ServiceEntry", &se.ObjectMeta, se)
		if first == nil {
			first = res
		}
		svcs = append(svcs, svc)
		info := &svcInfo{svc: svc, kind: "ServiceEntry", selector: selector, portNames: names}
		c.svcInfos[se.Namespace] = append(c.svcInfos[se.Namespace], info)
		c.res.Snapshot.Services = append(c.res.Snapshot.Services, svc)
	}
	ingress, present := binding.IngressUseWaypoint(se.Labels, c.namespaces[se.Namespace])
	b := Binding{Kind: "ServiceEntry", Namespace: se.Namespace, Name: se.Name,
		Condition: binding.ServiceCondition(*first, ingress, present), seq: c.seq(se)}
	if first.Waypoint != nil {
		b.Waypoint = first.Waypoint.Key()
	} else if wildcard {
		b.Extra = append(b.Extra, *binding.WildcardMissingCondition())
	}
	c.res.Bindings = append(c.res.Bindings, b)
	c.seServices[se] = svcs
	return nil
}

// serviceEntryResolutionWarnings surfaces the fields the waypoint does not implement (resource.ServiceEntryWarnings).
func (c *compiler) serviceEntryResolutionWarnings(se *networkingv1.ServiceEntry) {
	for _, w := range resource.ServiceEntryWarnings(se) {
		c.res.Warnings = append(c.res.Warnings, fmt.Sprintf("ServiceEntry %s/%s: %s", se.Namespace, se.Name, w))
	}
}
