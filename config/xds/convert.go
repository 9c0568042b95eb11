package xds

import (
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/xdsclient/workloadapi"
	"github.com/ambit-mesh/ambit/xdsclient/workloadapi/security"
)

// Type URLs of the resources this package converts.
const (
	AddressTypeURL       = workloadapi.AddressTypeURL
	AuthorizationTypeURL = security.AuthorizationTypeURL
)

// DecodeAddress unmarshals an Any holding an istio.workload.Address.
func DecodeAddress(a *anypb.Any) (*workloadapi.Address, error) {
	if a.GetTypeUrl() != AddressTypeURL {
		return nil, fmt.Errorf("%w: %q", ErrWrongType, a.GetTypeUrl())
	}
	m := &workloadapi.Address{}
	if err := proto.Unmarshal(a.GetValue(), m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	return m, nil
}

// DecodeAuthorization unmarshals an Any holding an istio.security.Authorization.
func DecodeAuthorization(a *anypb.Any) (*security.Authorization, error) {
	if a.GetTypeUrl() != AuthorizationTypeURL {
		return nil, fmt.Errorf("%w: %q", ErrWrongType, a.GetTypeUrl())
	}
	m := &security.Authorization{}
	if err := proto.Unmarshal(a.GetValue(), m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	return m, nil
}

// ConvertAddress converts the Address resource called name into exactly one of a validated workload or
// service. name must be the workload's UID or the service's "<namespace>/<hostname>". The result is owned by
// the caller until it is handed to a Store.
//
// Service VIPs given as a CIDR (NetworkAddress.length shorter than the address) are skipped: mesh/state
// indexes host VIPs only.
func ConvertAddress(name string, a *workloadapi.Address) (*state.Workload, *state.Service, error) {
	switch t := a.GetType().(type) {
	case *workloadapi.Address_Workload:
		if t.Workload == nil {
			return nil, nil, ErrEmptyAddress
		}
		w, err := ConvertWorkload(t.Workload)
		if err != nil {
			return nil, nil, err
		}
		if w.UID != name {
			return nil, nil, fmt.Errorf("%w: workload uid %q", ErrNameMismatch, w.UID)
		}
		return w, nil, nil
	case *workloadapi.Address_Service:
		if t.Service == nil {
			return nil, nil, ErrEmptyAddress
		}
		s, err := ConvertService(t.Service)
		if err != nil {
			return nil, nil, err
		}
		if k := s.Key().String(); k != name {
			return nil, nil, fmt.Errorf("%w: service key %q", ErrNameMismatch, k)
		}
		return nil, s, nil
	default:
		return nil, nil, ErrEmptyAddress
	}
}

// ConvertWorkload converts and validates one istio.workload.Workload.
func ConvertWorkload(in *workloadapi.Workload) (*state.Workload, error) {
	w := &state.Workload{
		UID:                   in.GetUid(),
		Name:                  in.GetName(),
		Namespace:             in.GetNamespace(),
		Hostname:              in.GetHostname(),
		Network:               in.GetNetwork(),
		TrustDomain:           in.GetTrustDomain(),
		ServiceAccount:        in.GetServiceAccount(),
		Node:                  in.GetNode(),
		CanonicalName:         in.GetCanonicalName(),
		CanonicalRevision:     in.GetCanonicalRevision(),
		WorkloadName:          in.GetWorkloadName(),
		NativeTunnel:          in.GetNativeTunnel(),
		AuthorizationPolicies: in.GetAuthorizationPolicies(),
		ClusterID:             in.GetClusterId(),
	}
	fail := func(err error) (*state.Workload, error) {
		return nil, fmt.Errorf("workload %s: %w", w.UID, err)
	}
	if n := len(in.GetAddresses()); n > 0 {
		w.Addresses = make([]netip.Addr, n)
		for i, b := range in.GetAddresses() {
			ip, err := ipFromBytes(b)
			if err != nil {
				return fail(err)
			}
			w.Addresses[i] = ip
		}
	}
	var err error
	if w.Protocol, err = tunnelProtocol(int32(in.GetTunnelProtocol())); err != nil {
		return fail(err)
	}
	if w.Status, err = workloadStatus(int32(in.GetStatus())); err != nil {
		return fail(err)
	}
	if w.NetworkMode, err = networkMode(int32(in.GetNetworkMode())); err != nil {
		return fail(err)
	}
	w.WorkloadType = workloadType(int32(in.GetWorkloadType()))
	if w.Waypoint, err = convertGateway(in.GetWaypoint()); err != nil {
		return fail(fmt.Errorf("waypoint: %w", err))
	}
	if w.NetworkGateway, err = convertGateway(in.GetNetworkGateway()); err != nil {
		return fail(fmt.Errorf("network gateway: %w", err))
	}
	if at := in.GetApplicationTunnel(); at != nil {
		p, err := appTunnelProtocol(int32(at.GetProtocol()))
		if err != nil {
			return fail(err)
		}
		port, err := port16(at.GetPort())
		if err != nil {
			return fail(fmt.Errorf("application tunnel: %w", err))
		}
		w.ApplicationTunnel = &state.ApplicationTunnel{Protocol: p, Port: port}
	}
	if svcs := in.GetServices(); len(svcs) > 0 {
		w.Services = make([]state.ServiceRef, 0, len(svcs))
		for key, pl := range svcs {
			ns, host, ok := strings.Cut(key, "/")
			if !ok || ns == "" || host == "" {
				return fail(fmt.Errorf("%w: %q", ErrServiceKey, key))
			}
			ref := state.ServiceRef{Service: state.NamespacedHostname{Namespace: ns, Hostname: host}}
			if n := len(pl.GetPorts()); n > 0 {
				ref.Ports = make([]state.PortMapping, n)
				for i, p := range pl.GetPorts() {
					sp, err1 := port16(p.GetServicePort())
					tp, err2 := port16(p.GetTargetPort())
					if err := cmp.Or(err1, err2); err != nil {
						return fail(fmt.Errorf("service %s: %w", key, err))
					}
					ref.Ports[i] = state.PortMapping{ServicePort: sp, TargetPort: tp}
				}
			}
			w.Services = append(w.Services, ref)
		}
		// Map order is random; a stable order keeps dumps and comparisons deterministic.
		sortServiceRefs(w.Services)
	}
	if l := in.GetLocality(); l != nil {
		w.Locality = state.Locality{Region: l.GetRegion(), Zone: l.GetZone(), Subzone: l.GetSubzone()}
	}
	if c := in.GetCapacity(); c != nil {
		w.Capacity = c.GetValue()
	}
	var strs state.Interner
	w.Intern(&strs)
	if err := w.ValidateWith(&strs); err != nil {
		return nil, err
	}
	if _, err := spiffeid.FromString(w.Identity()); err != nil {
		return nil, fmt.Errorf("workload %s: %w %q: %w", w.UID, ErrInvalidIdentity, w.Identity(), err)
	}
	return w, nil
}

// ConvertService converts and validates one istio.workload.Service.
func ConvertService(in *workloadapi.Service) (*state.Service, error) {
	s := &state.Service{
		Name:               in.GetName(),
		Namespace:          in.GetNamespace(),
		Hostname:           in.GetHostname(),
		SubjectAltNames:    in.GetSubjectAltNames(),
		Canonical:          in.GetCanonical(),
		IngressUseWaypoint: in.GetIngressUseWaypoint(),
	}
	fail := func(err error) (*state.Service, error) {
		return nil, fmt.Errorf("service %s/%s: %w", s.Namespace, s.Hostname, err)
	}
	for _, a := range in.GetAddresses() {
		ip, err := ipFromBytes(a.GetAddress())
		if err != nil {
			return fail(err)
		}
		if a.Length != nil {
			if int(a.GetLength()) > ip.BitLen() {
				return fail(fmt.Errorf("%w: prefix /%d of %s", ErrAddressLength, a.GetLength(), ip))
			}
			if int(a.GetLength()) < ip.BitLen() {
				continue // a CIDR VIP; not indexed (see ConvertAddress)
			}
		}
		s.Addresses = append(s.Addresses, state.NetworkAddress{Network: a.GetNetwork(), Addr: ip})
	}
	if n := len(in.GetPorts()); n > 0 {
		s.Ports = make([]state.Port, n)
		for i, p := range in.GetPorts() {
			sp, err1 := port16(p.GetServicePort())
			tp, err2 := port16(p.GetTargetPort())
			if err := cmp.Or(err1, err2); err != nil {
				return fail(err)
			}
			ap := state.AppProtocolUnknown // ignored by ztunnel; unknown values are not an error
			if v := p.GetAppProtocol(); v >= 0 && v <= workloadapi.AppProtocol_TLS {
				ap = state.AppProtocol(v)
			}
			s.Ports[i] = state.Port{ServicePort: sp, TargetPort: tp, AppProtocol: ap}
		}
	}
	var err error
	if s.Waypoint, err = convertGateway(in.GetWaypoint()); err != nil {
		return fail(fmt.Errorf("waypoint: %w", err))
	}
	if lb := in.GetLoadBalancing(); lb != nil {
		out := &state.LoadBalancing{}
		for _, sc := range lb.GetRoutingPreference() {
			if sc <= workloadapi.LoadBalancing_UNSPECIFIED_SCOPE || sc > workloadapi.LoadBalancing_NETWORK {
				return fail(fmt.Errorf("%w: load balancing scope %v", ErrUnknownEnum, sc))
			}
			out.RoutingPreference = append(out.RoutingPreference, state.LoadBalancingScope(sc))
		}
		if m := lb.GetMode(); m < 0 || m > workloadapi.LoadBalancing_PASSTHROUGH {
			return fail(fmt.Errorf("%w: load balancing mode %v", ErrUnknownEnum, m))
		}
		out.Mode = state.LoadBalancingMode(lb.GetMode())
		if h := lb.GetHealthPolicy(); h < 0 || h > workloadapi.LoadBalancing_ALLOW_ALL {
			return fail(fmt.Errorf("%w: health policy %v", ErrUnknownEnum, h))
		}
		out.HealthPolicy = state.HealthPolicy(lb.GetHealthPolicy())
		s.LoadBalancing = out
	}
	if f := in.GetIpFamilies(); f < 0 || f > workloadapi.IPFamilies_DUAL {
		return fail(fmt.Errorf("%w: ip families %v", ErrUnknownEnum, f))
	}
	s.IPFamilies = state.IPFamilies(in.GetIpFamilies())
	// Unknown visibilities mean PUBLIC, as in ztunnel.
	if in.GetVisibility() == workloadapi.Service_NAMESPACE {
		s.Visibility = state.VisibilityNamespace
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return s, nil
}

// convertGateway converts a waypoint or network gateway reference; nil stays nil.
func convertGateway(g *workloadapi.GatewayAddress) (*state.GatewayAddress, error) {
	if g == nil {
		return nil, nil
	}
	port, err := port16(g.GetHboneMtlsPort())
	if err != nil {
		return nil, err
	}
	out := &state.GatewayAddress{HBONEMTLSPort: port}
	switch d := g.GetDestination().(type) {
	case *workloadapi.GatewayAddress_Hostname:
		if d.Hostname.GetHostname() == "" {
			return nil, fmt.Errorf("%w: empty hostname", state.ErrInvalidGateway)
		}
		out.Hostname = state.NamespacedHostname{Namespace: d.Hostname.GetNamespace(), Hostname: d.Hostname.GetHostname()}
	case *workloadapi.GatewayAddress_Address:
		ip, err := ipFromBytes(d.Address.GetAddress())
		if err != nil {
			return nil, err
		}
		out.Address = state.NetworkAddress{Network: d.Address.GetNetwork(), Addr: ip}
	default:
		return nil, state.ErrInvalidGateway
	}
	return out, nil
}

// ConvertAuthorization converts and validates the Authorization resource called name, which must be
// "<namespace>/<name>" of the policy.
func ConvertAuthorization(name string, in *security.Authorization) (*state.Authorization, error) {
	p := &state.Authorization{Name: in.GetName(), Namespace: in.GetNamespace(), DryRun: in.GetDryRun()}
	fail := func(err error) (*state.Authorization, error) {
		return nil, fmt.Errorf("authorization %s: %w", p.Key(), err)
	}
	if k := p.Key(); k != name {
		return fail(fmt.Errorf("%w: policy key %q", ErrNameMismatch, k))
	}
	switch in.GetScope() {
	case security.Scope_GLOBAL:
		p.Scope = state.ScopeGlobal
	case security.Scope_NAMESPACE:
		p.Scope = state.ScopeNamespace
	case security.Scope_WORKLOAD_SELECTOR:
		p.Scope = state.ScopeWorkloadSelector
	default:
		return fail(fmt.Errorf("%w: scope %v", ErrUnknownEnum, in.GetScope()))
	}
	switch in.GetAction() {
	case security.Action_ALLOW:
		p.Action = state.ActionAllow
	case security.Action_DENY:
		p.Action = state.ActionDeny
	default:
		return fail(fmt.Errorf("%w: action %v", ErrUnknownEnum, in.GetAction()))
	}
	if n := len(in.GetGroups()); n > 0 {
		p.Groups = make([]state.Group, n)
		for gi, g := range in.GetGroups() {
			if n := len(g.GetRules()); n > 0 {
				p.Groups[gi].Rules = make([]state.Rules, n)
			}
			for ri, r := range g.GetRules() {
				if n := len(r.GetMatches()); n > 0 {
					p.Groups[gi].Rules[ri].Matches = make([]state.Match, n)
				}
				for mi, m := range r.GetMatches() {
					if err := convertMatch(m, &p.Groups[gi].Rules[ri].Matches[mi]); err != nil {
						return fail(fmt.Errorf("group %d rule %d match %d: %w", gi, ri, mi, err))
					}
				}
			}
		}
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// DenyAll returns what an Authorization that ConvertAuthorization rejects leaves in force: for a DENY
// policy whose name, namespace and scope are valid, a policy of that scope denying every connection
// (one group without rules), so that an invalid DENY never denies less (istiod turns an invalid DENY
// into a deny-all for its selection); nil for anything else, which is only rejected.
func DenyAll(name string, in *security.Authorization) *state.Authorization {
	if in.GetAction() != security.Action_DENY {
		return nil
	}
	p := &state.Authorization{Name: in.GetName(), Namespace: in.GetNamespace(), Action: state.ActionDeny,
		DryRun: in.GetDryRun(), Groups: []state.Group{{}}}
	switch in.GetScope() {
	case security.Scope_GLOBAL:
		p.Scope = state.ScopeGlobal
	case security.Scope_NAMESPACE:
		p.Scope = state.ScopeNamespace
	case security.Scope_WORKLOAD_SELECTOR:
		p.Scope = state.ScopeWorkloadSelector
	default:
		return nil
	}
	if p.Key() != name || p.Validate() != nil {
		return nil
	}
	return p
}

func convertMatch(in *security.Match, out *state.Match) error {
	var err error
	set := func(dst *[]state.StringMatch, src []*security.StringMatch) {
		if err == nil {
			*dst, err = stringMatches(src)
		}
	}
	set(&out.Namespaces, in.GetNamespaces())
	set(&out.NotNamespaces, in.GetNotNamespaces())
	set(&out.Principals, in.GetPrincipals())
	set(&out.NotPrincipals, in.GetNotPrincipals())
	pfx := func(dst *[]netip.Prefix, src []*security.Address) {
		if err == nil {
			*dst, err = prefixes(src)
		}
	}
	pfx(&out.SourceIPs, in.GetSourceIps())
	pfx(&out.NotSourceIPs, in.GetNotSourceIps())
	pfx(&out.DestinationIPs, in.GetDestinationIps())
	pfx(&out.NotDestinationIPs, in.GetNotDestinationIps())
	ports := func(dst *[]uint16, src []uint32) {
		if err != nil || len(src) == 0 {
			return
		}
		*dst = make([]uint16, len(src))
		for i, v := range src {
			if (*dst)[i], err = port16(v); err != nil {
				return
			}
		}
	}
	ports(&out.DestinationPorts, in.GetDestinationPorts())
	ports(&out.NotDestinationPorts, in.GetNotDestinationPorts())
	out.ServiceAccounts = serviceAccounts(in.GetServiceAccounts())
	out.NotServiceAccounts = serviceAccounts(in.GetNotServiceAccounts())
	return err
}

func stringMatches(in []*security.StringMatch) ([]state.StringMatch, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]state.StringMatch, len(in))
	for i, m := range in {
		switch t := m.GetMatchType().(type) {
		case *security.StringMatch_Exact:
			out[i] = state.StringMatch{Kind: state.MatchExact, Value: t.Exact}
		case *security.StringMatch_Prefix:
			out[i] = state.StringMatch{Kind: state.MatchPrefix, Value: t.Prefix}
		case *security.StringMatch_Suffix:
			out[i] = state.StringMatch{Kind: state.MatchSuffix, Value: t.Suffix}
		case *security.StringMatch_Presence:
			out[i] = state.StringMatch{Kind: state.MatchPresence}
		default:
			return nil, ErrInvalidMatch
		}
	}
	return out, nil
}

func prefixes(in []*security.Address) ([]netip.Prefix, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]netip.Prefix, len(in))
	for i, a := range in {
		ip, err := ipFromBytes(a.GetAddress())
		if err != nil {
			return nil, err
		}
		if int(a.GetLength()) > ip.BitLen() {
			return nil, fmt.Errorf("%w: prefix /%d of %s", ErrAddressLength, a.GetLength(), ip)
		}
		out[i] = netip.PrefixFrom(ip, int(a.GetLength()))
	}
	return out, nil
}

func serviceAccounts(in []*security.ServiceAccountMatch) []state.ServiceAccountMatch {
	if len(in) == 0 {
		return nil
	}
	out := make([]state.ServiceAccountMatch, len(in))
	for i, m := range in {
		out[i] = state.ServiceAccountMatch{Namespace: m.GetNamespace(), ServiceAccount: m.GetServiceAccount()}
	}
	return out
}

// tunnelProtocol maps the wire tunnel protocol; LEGACY_ISTIO_MTLS is refused by ztunnel as well.
func tunnelProtocol(v int32) (state.TunnelProtocol, error) {
	switch workloadapi.TunnelProtocol(v) {
	case workloadapi.TunnelProtocol_NONE:
		return state.TunnelNone, nil
	case workloadapi.TunnelProtocol_HBONE:
		return state.TunnelHBONE, nil
	}
	return 0, fmt.Errorf("%w: tunnel protocol %v", ErrUnknownEnum, workloadapi.TunnelProtocol(v))
}

func workloadStatus(v int32) (state.WorkloadStatus, error) {
	switch workloadapi.WorkloadStatus(v) {
	case workloadapi.WorkloadStatus_HEALTHY:
		return state.Healthy, nil
	case workloadapi.WorkloadStatus_UNHEALTHY:
		return state.Unhealthy, nil
	}
	return 0, fmt.Errorf("%w: status %v", ErrUnknownEnum, workloadapi.WorkloadStatus(v))
}

func networkMode(v int32) (state.NetworkMode, error) {
	switch workloadapi.NetworkMode(v) {
	case workloadapi.NetworkMode_STANDARD:
		return state.NetworkStandard, nil
	case workloadapi.NetworkMode_HOST_NETWORK:
		return state.NetworkHost, nil
	}
	return 0, fmt.Errorf("%w: network mode %v", ErrUnknownEnum, workloadapi.NetworkMode(v))
}

// workloadType maps the wire workload type; unknown types fall back to the default, as in ztunnel.
func workloadType(v int32) state.WorkloadType {
	if t := workloadapi.WorkloadType(v); t >= 0 && t <= workloadapi.WorkloadType_JOB {
		return state.WorkloadType(t)
	}
	return state.WorkloadDeployment
}

func appTunnelProtocol(v int32) (state.ApplicationTunnelProtocol, error) {
	switch workloadapi.ApplicationTunnel_Protocol(v) {
	case workloadapi.ApplicationTunnel_NONE:
		return state.AppTunnelNone, nil
	case workloadapi.ApplicationTunnel_PROXY:
		return state.AppTunnelProxy, nil
	}
	return 0, fmt.Errorf("%w: application tunnel protocol %v", ErrUnknownEnum, workloadapi.ApplicationTunnel_Protocol(v))
}

// ipFromBytes reads a 4- or 16-byte IP, as the workload API encodes them.
func ipFromBytes(b []byte) (netip.Addr, error) {
	switch len(b) {
	case 4:
		return netip.AddrFrom4([4]byte(b)), nil
	case 16:
		return netip.AddrFrom16([16]byte(b)), nil
	}
	return netip.Addr{}, fmt.Errorf("%w: %d bytes", ErrAddressLength, len(b))
}

func port16(p uint32) (uint16, error) {
	if p > math.MaxUint16 {
		return 0, fmt.Errorf("%w: %d", ErrPortRange, p)
	}
	return uint16(p), nil
}
