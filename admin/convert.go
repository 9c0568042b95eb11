package admin

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/admin/dump"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
)

// BuildConfigDump assembles the /config_dump document from o's sources. It reads each source once and
// does no other I/O. Missing sources give empty sections.
func BuildConfigDump(o *Options) *dump.ConfigDump {
	d := &dump.ConfigDump{
		Workloads:     []*dump.Workload{},
		Services:      []*dump.Service{},
		Policies:      []*dump.Policy{},
		Certificates:  []*dump.Certificate{},
		WorkloadState: map[string]dump.WorkloadState{},
		Config:        o.Config,
		NodeName:      o.NodeName,
	}
	if o.Version.Version != "" {
		v := o.Version
		d.Version = &v
	}
	if o.Store != nil {
		for _, w := range o.Store.Workloads() {
			d.Workloads = append(d.Workloads, ConvertWorkload(w))
		}
		for _, s := range o.Store.Services() {
			d.Services = append(d.Services, ConvertService(s, o.Store.Endpoints(s.Key())))
		}
		for _, p := range o.Store.Policies() {
			d.Policies = append(d.Policies, ConvertPolicy(p))
		}
	}
	if o.Certificates != nil {
		for _, st := range o.Certificates() {
			d.Certificates = append(d.Certificates, ConvertCertificate(&st))
		}
		sortCertificates(d.Certificates)
	}
	var local []*state.Workload
	if o.Store != nil && o.NodeName != "" {
		local = o.Store.WorkloadsOnNode(o.NodeName)
	}
	var conns []*connmgr.Conn
	if o.Connections != nil {
		conns = o.Connections()
	}
	d.WorkloadState = BuildWorkloadState(local, conns)
	return d
}

// ConvertWorkload converts a state workload to its dump form.
func ConvertWorkload(w *state.Workload) *dump.Workload {
	out := &dump.Workload{
		WorkloadIPs:           make([]string, 0, len(w.Addresses)),
		Waypoint:              convertGateway(w.Waypoint),
		NetworkGateway:        convertGateway(w.NetworkGateway),
		Protocol:              w.Protocol.String(),
		NetworkMode:           "Standard",
		UID:                   w.UID,
		Name:                  w.Name,
		Namespace:             w.Namespace,
		TrustDomain:           w.TrustDomain,
		ServiceAccount:        w.ServiceAccount,
		Network:               w.Network,
		WorkloadName:          w.WorkloadName,
		WorkloadType:          w.WorkloadType.String(),
		CanonicalName:         w.CanonicalName,
		CanonicalRevision:     w.CanonicalRevision,
		Hostname:              w.Hostname,
		Node:                  w.Node,
		NativeTunnel:          w.NativeTunnel,
		AuthorizationPolicies: slices.Clone(w.AuthorizationPolicies),
		Status:                w.Status.String(),
		ClusterID:             w.ClusterID,
		Capacity:              w.Capacity,
	}
	for _, a := range w.Addresses {
		out.WorkloadIPs = append(out.WorkloadIPs, a.String())
	}
	if w.NetworkMode == state.NetworkHost {
		out.NetworkMode = "HostNetwork"
	}
	if t := w.ApplicationTunnel; t != nil {
		at := &dump.ApplicationTunnel{Protocol: "NONE"}
		if t.Protocol == state.AppTunnelProxy {
			at.Protocol = "PROXY"
		}
		if t.Port != 0 {
			p := t.Port
			at.Port = &p
		}
		out.ApplicationTunnel = at
	}
	if l := w.Locality; l != (state.Locality{}) {
		out.Locality = &dump.Locality{Region: l.Region, Zone: l.Zone, Subzone: l.Subzone}
	}
	for _, ref := range w.Services {
		out.Services = append(out.Services, ref.Service.String())
	}
	return out
}

func convertGateway(g *state.GatewayAddress) *dump.GatewayAddress {
	if g == nil {
		return nil
	}
	return &dump.GatewayAddress{Destination: g.Destination(), HBONEMTLSPort: g.HBONEMTLSPort}
}

var (
	scopeNames = map[state.LoadBalancingScope]string{
		state.ScopeRegion: "Region", state.ScopeZone: "Zone", state.ScopeSubzone: "Subzone",
		state.ScopeNode: "Node", state.ScopeCluster: "Cluster", state.ScopeNetwork: "Network",
	}
	modeNames = map[state.LoadBalancingMode]string{
		state.LBStandard: "Standard", state.LBStrict: "Strict", state.LBFailover: "Failover", state.LBPassthrough: "Passthrough",
	}
	ipFamilyNames = map[state.IPFamilies]string{state.IPv4Only: "IPv4", state.IPv6Only: "IPv6", state.IPFamiliesDual: "Dual"}
)

// ConvertService converts a state service and its endpoints (as returned by Store.Endpoints) to the dump
// form. Unhealthy endpoints are listed too, with their status, so that ENDPOINTS reads healthy/total.
func ConvertService(s *state.Service, endpoints []*state.Workload) *dump.Service {
	out := &dump.Service{
		Name:            s.Name,
		Namespace:       s.Namespace,
		Hostname:        s.Hostname,
		Vips:            make([]string, 0, len(s.Addresses)),
		Ports:           make(map[uint16]uint16, len(s.Ports)),
		Endpoints:       make(map[string]*dump.Endpoint, len(endpoints)),
		SubjectAltNames: append([]string{}, s.SubjectAltNames...),
		Waypoint:        convertGateway(s.Waypoint),
		IPFamilies:      ipFamilyNames[s.IPFamilies],
		Canonical:       s.Canonical,
	}
	for _, a := range s.Addresses {
		out.Vips = append(out.Vips, a.String())
	}
	for _, p := range s.Ports {
		out.Ports[p.ServicePort] = p.TargetPort
	}
	key := s.Key()
	for _, w := range endpoints {
		ep := &dump.Endpoint{WorkloadUID: w.UID, Service: key.String(), Port: map[uint16]uint16{}, Status: w.Status.String()}
		if ref := w.ServiceRef(key); ref != nil {
			for _, p := range ref.Ports {
				ep.Port[p.ServicePort] = p.TargetPort
			}
		}
		out.Endpoints[w.UID] = ep
	}
	if lb := s.LoadBalancing; lb != nil {
		l := &dump.LoadBalancer{RoutingPreferences: []string{}, Mode: modeNames[lb.Mode], HealthPolicy: "OnlyHealthy"}
		for _, sc := range lb.RoutingPreference {
			if n, ok := scopeNames[sc]; ok {
				l.RoutingPreferences = append(l.RoutingPreferences, n)
			}
		}
		if lb.HealthPolicy == state.AllowAll {
			l.HealthPolicy = "AllowAll"
		}
		out.LoadBalancer = l
	}
	if s.Visibility == state.VisibilityNamespace {
		out.Visibility = "Namespace"
	}
	return out
}

// ConvertPolicy converts an authorization: Groups become rules, a group's Rules its clauses, and their
// Matches the matches, the nesting of istio.security.Authorization.
func ConvertPolicy(p *state.Authorization) *dump.Policy {
	out := &dump.Policy{
		Name:      p.Name,
		Namespace: p.Namespace,
		Scope:     p.Scope.String(),
		Action:    p.Action.String(),
		Rules:     make([][][]*dump.Match, 0, len(p.Groups)),
		DryRun:    p.DryRun,
	}
	for _, g := range p.Groups {
		clauses := make([][]*dump.Match, 0, len(g.Rules))
		for _, r := range g.Rules {
			ms := make([]*dump.Match, 0, len(r.Matches))
			for i := range r.Matches {
				ms = append(ms, convertMatch(&r.Matches[i]))
			}
			clauses = append(clauses, ms)
		}
		out.Rules = append(out.Rules, clauses)
	}
	return out
}

func convertMatch(m *state.Match) *dump.Match {
	return &dump.Match{
		Namespaces:          stringMatches(m.Namespaces),
		NotNamespaces:       stringMatches(m.NotNamespaces),
		Principals:          stringMatches(m.Principals),
		NotPrincipals:       stringMatches(m.NotPrincipals),
		SourceIps:           prefixes(m.SourceIPs),
		NotSourceIps:        prefixes(m.NotSourceIPs),
		DestinationIps:      prefixes(m.DestinationIPs),
		NotDestinationIps:   prefixes(m.NotDestinationIPs),
		DestinationPorts:    slices.Clone(m.DestinationPorts),
		NotDestinationPorts: slices.Clone(m.NotDestinationPorts),
		ServiceAccounts:     serviceAccounts(m.ServiceAccounts),
		NotServiceAccounts:  serviceAccounts(m.NotServiceAccounts),
	}
}

func stringMatches(in []state.StringMatch) []dump.StringMatch {
	if len(in) == 0 {
		return nil
	}
	out := make([]dump.StringMatch, len(in))
	for i, m := range in {
		switch m.Kind {
		case state.MatchExact:
			out[i].Exact = m.Value
		case state.MatchPrefix:
			out[i].Prefix = m.Value
		case state.MatchSuffix:
			out[i].Suffix = m.Value
		case state.MatchPresence:
			out[i].Presence = struct{}{}
		}
	}
	return out
}

func prefixes(in []netip.Prefix) []string {
	if len(in) == 0 {
		return nil
	}
	out := make([]string, len(in))
	for i, p := range in {
		out[i] = p.String()
	}
	return out
}

func serviceAccounts(in []state.ServiceAccountMatch) []dump.ServiceAccountMatch {
	if len(in) == 0 {
		return nil
	}
	out := make([]dump.ServiceAccountMatch, len(in))
	for i, sa := range in {
		out[i] = dump.ServiceAccountMatch{Namespace: sa.Namespace, ServiceAccount: sa.ServiceAccount}
	}
	return out
}

// ConvertCertificate converts an identity's status. Only public certificates are copied.
func ConvertCertificate(st *identity.Status) *dump.Certificate {
	out := &dump.Certificate{
		Identity:  st.Identity,
		State:     st.State.String(),
		CertChain: convertCerts(st.CertChain),
		RootCerts: convertCerts(st.RootCerts),
		Failures:  st.Failures,
	}
	if st.State == identity.StateUnavailable && st.LastError != "" {
		out.State += ": " + st.LastError
	}
	if !st.NextAttempt.IsZero() {
		out.NextAttempt = rfc3339(st.NextAttempt)
	}
	return out
}

func convertCerts(in []identity.CertInfo) []*dump.Cert {
	out := make([]*dump.Cert, len(in))
	for i, c := range in {
		out[i] = &dump.Cert{
			PEM:            c.PEM,
			SerialNumber:   c.SerialNumber,
			ValidFrom:      rfc3339(c.ValidFrom),
			ExpirationTime: rfc3339(c.ExpirationTime),
		}
	}
	return out
}

// rfc3339 formats t as ztunnel does: UTC, whole seconds, "Z".
func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// BuildWorkloadState builds ztunnel's "workloadState": an entry per local captured workload (HBONE, not a
// native-HBONE workload such as a waypoint), plus one per workload that owns a connection, each listing
// its connections oldest first. It is keyed by workload UID.
func BuildWorkloadState(local []*state.Workload, conns []*connmgr.Conn) map[string]dump.WorkloadState {
	out := map[string]dump.WorkloadState{}
	add := func(w *state.Workload) dump.WorkloadState {
		ws, ok := out[w.UID]
		if !ok {
			ws = dump.WorkloadState{
				Connections: dump.WorkloadConnections{Inbound: []dump.InboundConnection{}, Outbound: []dump.OutboundConnection{}},
				Info:        dump.WorkloadInfo{Name: w.Name, Namespace: w.Namespace, TrustDomain: w.TrustDomain, ServiceAccount: w.ServiceAccount},
			}
		}
		return ws
	}
	for _, w := range local {
		if w.Protocol == state.TunnelHBONE && !w.NativeTunnel {
			out[w.UID] = add(w)
		}
	}
	for _, c := range conns {
		if c.Workload == nil {
			continue
		}
		ws := add(c.Workload)
		switch c.Direction {
		case connmgr.Inbound:
			ic := dump.InboundConnection{Src: addrString(c.Src), ActualDst: addrString(cmp.Or(c.Hop, c.Dst)), Protocol: c.Protocol}
			if c.Service != nil {
				ic.OriginalDst = c.Service.Hostname
			}
			if ic.Protocol == "" {
				ic.Protocol = "TCP"
				if c.PeerIdentity != "" {
					ic.Protocol = "HBONE"
				}
			}
			ws.Connections.Inbound = append(ws.Connections.Inbound, ic)
		case connmgr.Outbound:
			ws.Connections.Outbound = append(ws.Connections.Outbound, dump.OutboundConnection{
				Src: addrString(c.Src), OriginalDst: addrString(c.Dst), ActualDst: addrString(cmp.Or(c.Hop, c.Dst)),
				Protocol: cmp.Or(c.Protocol, "TCP"),
			})
		}
		out[c.Workload.UID] = ws
	}
	return out
}

// ConvertConnections builds the GET /connections list at time now, in the order given.
func ConvertConnections(conns []*connmgr.Conn, now time.Time) []dump.Connection {
	out := make([]dump.Connection, 0, len(conns))
	for _, c := range conns {
		dc := dump.Connection{
			ID:           c.ID(),
			Direction:    string(c.Direction),
			Src:          addrString(c.Src),
			Dst:          addrString(c.Dst),
			Hop:          addrString(c.Hop),
			Authority:    c.Authority,
			Protocol:     c.Protocol,
			Workload:     workloadName(c.Workload),
			Peer:         workloadName(c.Peer),
			PeerIdentity: c.PeerIdentity,
			Waypoint:     c.Waypoint,
		}
		if c.Workload != nil {
			dc.WorkloadUID = c.Workload.UID
		}
		if c.Service != nil {
			dc.Service = c.Service.Key().String()
		}
		if c.Counters != nil {
			dc.BytesUpstream = c.Counters.AToB.Load()
			dc.BytesDownstream = c.Counters.BToA.Load()
		}
		if !c.Start.IsZero() {
			dc.Start = c.Start.UTC().Format(time.RFC3339Nano)
			dc.DurationSeconds = now.Sub(c.Start).Seconds()
		}
		out = append(out, dc)
	}
	return out
}

func workloadName(w *state.Workload) string {
	if w == nil {
		return ""
	}
	return w.Namespace + "/" + w.Name
}

func addrString(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	// Unmap so that IPv4 clients accepted on a dual-stack socket print as IPv4.
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()).String()
}

// sortCertificates orders certificates by identity, as ztunnel does.
func sortCertificates(cs []*dump.Certificate) {
	slices.SortStableFunc(cs, func(a, b *dump.Certificate) int { return strings.Compare(a.Identity, b.Identity) })
}
