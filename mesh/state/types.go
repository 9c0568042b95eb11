package state

import (
	"net/netip"
	"strconv"
)

// Defaults applied when a producer leaves a field empty, as istiod and ztunnel do.
const (
	DefaultTrustDomain    = "cluster.local"
	DefaultServiceAccount = "default"
	DefaultClusterID      = "Kubernetes"
	// HBONEPort is the port every node agent and waypoint accepts HBONE on.
	HBONEPort = 15008
)

// TunnelProtocol says how a workload expects to receive traffic.
type TunnelProtocol uint8

const (
	// TunnelNone means plain TCP: the workload is outside the mesh.
	TunnelNone TunnelProtocol = iota
	// TunnelHBONE means the workload is captured by a node agent (or terminates HBONE itself).
	TunnelHBONE
)

// String returns the protocol as ztunnel's config dump prints it: "TCP" or "HBONE".
func (p TunnelProtocol) String() string {
	if p == TunnelHBONE {
		return "HBONE"
	}
	return "TCP"
}

// WorkloadStatus is a workload's health as seen by the control plane.
type WorkloadStatus uint8

const (
	Healthy WorkloadStatus = iota
	Unhealthy
)

// String returns "Healthy" or "Unhealthy".
func (s WorkloadStatus) String() string {
	if s == Unhealthy {
		return "Unhealthy"
	}
	return "Healthy"
}

// NetworkMode says whether a workload's IPs are its own (Standard) or shared with its host.
type NetworkMode uint8

const (
	NetworkStandard NetworkMode = iota
	// NetworkHost marks host-network workloads: they are never looked up by IP.
	NetworkHost
)

// AppProtocol is the application protocol declared on a service port.
type AppProtocol uint8

const (
	AppProtocolUnknown AppProtocol = iota
	AppProtocolHTTP11
	AppProtocolHTTP2
	AppProtocolGRPC
	AppProtocolTCP
	AppProtocolTLS
)

var appProtocolNames = [...]string{"UNKNOWN", "HTTP11", "HTTP2", "GRPC", "TCP", "TLS"}

// String returns the WDS enum name of p.
func (p AppProtocol) String() string {
	if int(p) < len(appProtocolNames) {
		return appProtocolNames[p]
	}
	return "AppProtocol(" + strconv.Itoa(int(p)) + ")"
}

// NetworkAddress is an IP on a named network ("" is the default network).
// It is comparable and is the key of the by-address index.
type NetworkAddress struct {
	Network string
	Addr    netip.Addr
}

// String formats a as ztunnel does: "<network>/<ip>".
func (a NetworkAddress) String() string { return a.Network + "/" + a.Addr.String() }

// NamespacedHostname names a service by namespace and FQDN. It is comparable and keys the service index.
type NamespacedHostname struct {
	Namespace string
	Hostname  string
}

// String formats n as "<namespace>/<hostname>", the WDS resource name of a service.
func (n NamespacedHostname) String() string { return n.Namespace + "/" + n.Hostname }

// GatewayAddress references a waypoint or network gateway, either by hostname or by address.
// Exactly one of Hostname and Address is set.
type GatewayAddress struct {
	Hostname      NamespacedHostname
	Address       NetworkAddress
	HBONEMTLSPort uint16
}

// IsHostname reports whether g refers to its destination by hostname.
func (g *GatewayAddress) IsHostname() bool { return g.Hostname.Hostname != "" }

// Destination formats the destination the way ztunnel's config dump does:
// "<namespace>/<hostname>" or "<network>/<ip>".
func (g *GatewayAddress) Destination() string {
	if g.IsHostname() {
		return g.Hostname.String()
	}
	return g.Address.String()
}

// Locality is a workload's failure domain.
type Locality struct {
	Region, Zone, Subzone string
}

// ApplicationTunnelProtocol is the protocol spoken to a workload behind an application tunnel.
type ApplicationTunnelProtocol uint8

const (
	AppTunnelNone ApplicationTunnelProtocol = iota
	AppTunnelProxy
)

// ApplicationTunnel describes a workload (a "sandwiched" waypoint) that wants inbound HBONE traffic
// delivered on a fixed port, optionally behind a PROXY protocol header.
type ApplicationTunnel struct {
	Protocol ApplicationTunnelProtocol
	Port     uint16
}

// PortMapping maps a service port to the port the workload listens on.
type PortMapping struct {
	ServicePort uint16
	TargetPort  uint16
}

// ServiceRef is a workload's membership in a service, with its own port mappings
// (named target ports are resolved per workload).
type ServiceRef struct {
	Service NamespacedHostname
	Ports   []PortMapping
}

// Target returns the target port for servicePort and whether the workload declares one.
func (r *ServiceRef) Target(servicePort uint16) (uint16, bool) {
	for _, p := range r.Ports {
		if p.ServicePort == servicePort {
			return p.TargetPort, true
		}
	}
	return 0, false
}

// WorkloadType is the kind of controller behind a workload, used in telemetry.
type WorkloadType uint8

const (
	WorkloadDeployment WorkloadType = iota
	WorkloadCronJob
	WorkloadPod
	WorkloadJob
)

var workloadTypeNames = [...]string{"deployment", "cronjob", "pod", "job"}

// String returns the lower-case name used in baggage keys (k8s.<type>.name).
func (t WorkloadType) String() string {
	if int(t) < len(workloadTypeNames) {
		return workloadTypeNames[t]
	}
	return "pod"
}

// Workload is one addressable unit of compute: a pod, a WorkloadEntry or a ServiceEntry endpoint.
// It mirrors istio.workload.Workload. A Workload is immutable once given to a Store.
type Workload struct {
	UID       string
	Name      string
	Namespace string
	// Addresses are the workload's IPs; Hostname is used instead for address-less workloads.
	Addresses []netip.Addr
	Hostname  string
	Network   string
	// TrustDomain and ServiceAccount form the workload's SPIFFE identity; Validate fills defaults.
	TrustDomain    string
	ServiceAccount string
	// Waypoint receives workload-addressed traffic for this workload, when set.
	Waypoint          *GatewayAddress
	NetworkGateway    *GatewayAddress
	Node              string
	CanonicalName     string
	CanonicalRevision string
	WorkloadName      string
	ApplicationTunnel *ApplicationTunnel
	// Services lists the services this workload is an endpoint of.
	Services []ServiceRef
	// AuthorizationPolicies names ("ns/name") the workload-selector policies that apply.
	AuthorizationPolicies []string
	ClusterID             string
	Locality              Locality
	// Capacity is the load-balancing weight; Validate turns 0 into 1.
	Capacity     uint32
	Protocol     TunnelProtocol
	Status       WorkloadStatus
	NetworkMode  NetworkMode
	WorkloadType WorkloadType
	// NativeTunnel is set for workloads that terminate HBONE themselves (sidecars, waypoints).
	NativeTunnel bool

	identity string // spiffe://<td>/ns/<ns>/sa/<sa>, set by Validate
}

// Identity returns the workload's SPIFFE ID, spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
func (w *Workload) Identity() string {
	if w.identity == "" {
		return SPIFFEID(w.TrustDomain, w.Namespace, w.ServiceAccount)
	}
	return w.identity
}

// ServiceRef returns the workload's membership entry for svc, if any.
func (w *Workload) ServiceRef(svc NamespacedHostname) *ServiceRef {
	for i := range w.Services {
		if w.Services[i].Service == svc {
			return &w.Services[i]
		}
	}
	return nil
}

// HasAddress reports whether ip is one of the workload's addresses.
func (w *Workload) HasAddress(ip netip.Addr) bool {
	for _, a := range w.Addresses {
		if a == ip {
			return true
		}
	}
	return false
}

// SPIFFEID formats an Istio workload identity, applying the default trust domain and service account.
func SPIFFEID(trustDomain, namespace, serviceAccount string) string {
	if trustDomain == "" {
		trustDomain = DefaultTrustDomain
	}
	if serviceAccount == "" {
		serviceAccount = DefaultServiceAccount
	}
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + serviceAccount
}

// Port is a service port.
type Port struct {
	ServicePort uint16
	// TargetPort is 0 for a named target port, resolved per workload through ServiceRef.
	TargetPort  uint16
	AppProtocol AppProtocol
	// Name is the port's name, kept for protocol selection in waypoint mode (not on the wire).
	Name string
}

// LoadBalancingScope is one level of a routing preference.
type LoadBalancingScope uint8

const (
	ScopeUnspecified LoadBalancingScope = iota
	ScopeRegion
	ScopeZone
	ScopeSubzone
	ScopeNode
	ScopeCluster
	ScopeNetwork
)

// LoadBalancingMode selects how routing preferences are applied.
type LoadBalancingMode uint8

const (
	// LBStandard ignores locality.
	LBStandard LoadBalancingMode = iota
	// LBStrict only uses endpoints that match every preference.
	LBStrict
	// LBFailover prefers the best-matching endpoints and falls back to others.
	LBFailover
	// LBPassthrough sends traffic to the original destination (no endpoint selection).
	LBPassthrough
)

// HealthPolicy says whether unhealthy endpoints may receive traffic.
type HealthPolicy uint8

const (
	OnlyHealthy HealthPolicy = iota
	AllowAll
)

// LoadBalancing mirrors istio.workload.LoadBalancing.
type LoadBalancing struct {
	RoutingPreference []LoadBalancingScope
	Mode              LoadBalancingMode
	HealthPolicy      HealthPolicy
}

// IPFamilies restricts which endpoint IP family a service uses.
type IPFamilies uint8

const (
	IPFamiliesAutomatic IPFamilies = iota
	IPv4Only
	IPv6Only
	IPFamiliesDual
)

// Visibility restricts which clients may use a service.
type Visibility uint8

const (
	VisibilityPublic Visibility = iota
	// VisibilityNamespace limits a service to clients in its own namespace.
	VisibilityNamespace
)

// Service mirrors istio.workload.Service. A Service is immutable once given to a Store.
type Service struct {
	Name      string
	Namespace string
	Hostname  string
	// Addresses are the service VIPs; empty for headless services.
	Addresses          []NetworkAddress
	Ports              []Port
	SubjectAltNames    []string
	Waypoint           *GatewayAddress
	LoadBalancing      *LoadBalancing
	IPFamilies         IPFamilies
	Canonical          bool
	IngressUseWaypoint bool
	Visibility         Visibility
}

// Key returns the service's namespaced hostname.
func (s *Service) Key() NamespacedHostname {
	return NamespacedHostname{Namespace: s.Namespace, Hostname: s.Hostname}
}

// Port returns the service port entry for port, if the service declares it.
func (s *Service) Port(port uint16) (Port, bool) {
	for _, p := range s.Ports {
		if p.ServicePort == port {
			return p, true
		}
	}
	return Port{}, false
}
