package dump

// This file is the whole schema. Field order follows ztunnel's serialisation; json names and value shapes
// are those ztunnel writes and istioctl reads. Fields marked "Ambit" are extensions other readers ignore.

// ConfigDump is the document served at GET /config_dump.
type ConfigDump struct {
	// Workloads are every workload the agent knows (not only local ones).
	Workloads []*Workload `json:"workloads"`
	// Services are every service the agent knows, with their endpoints.
	Services []*Service `json:"services"`
	// Policies are the L4 authorizations (istio.security.Authorization) the agent enforces.
	Policies []*Policy `json:"policies"`
	// Certificates has one entry per managed identity. It never contains private keys.
	Certificates []*Certificate `json:"certificates"`
	// WorkloadState is keyed by workload UID and lists the local workloads with their live connections.
	WorkloadState map[string]WorkloadState `json:"workloadState"`
	// Version describes the agent build.
	Version *BuildInfo `json:"version,omitempty"`
	// Config is the agent's effective configuration, free form.
	Config any `json:"config,omitempty"`
	// NodeName is the node the agent serves (Ambit).
	NodeName string `json:"nodeName,omitempty"`
}

// Workload mirrors ztunnel's workload (istio.workload.Workload as ztunnel stores it).
type Workload struct {
	// WorkloadIPs are plain IPs, without network prefix.
	WorkloadIPs []string `json:"workloadIps"`
	// Waypoint, when set, receives traffic addressed to this workload.
	Waypoint       *GatewayAddress `json:"waypoint,omitempty"`
	NetworkGateway *GatewayAddress `json:"networkGateway,omitempty"`
	// Protocol is "HBONE" (captured or native HBONE) or "TCP".
	Protocol string `json:"protocol"`
	// NetworkMode is "Standard" or "HostNetwork".
	NetworkMode       string             `json:"networkMode,omitempty"`
	UID               string             `json:"uid,omitempty"`
	Name              string             `json:"name"`
	Namespace         string             `json:"namespace"`
	TrustDomain       string             `json:"trustDomain,omitempty"`
	ServiceAccount    string             `json:"serviceAccount,omitempty"`
	Network           string             `json:"network,omitempty"`
	WorkloadName      string             `json:"workloadName,omitempty"`
	WorkloadType      string             `json:"workloadType,omitempty"`
	CanonicalName     string             `json:"canonicalName,omitempty"`
	CanonicalRevision string             `json:"canonicalRevision,omitempty"`
	Hostname          string             `json:"hostname,omitempty"`
	Node              string             `json:"node,omitempty"`
	NativeTunnel      bool               `json:"nativeTunnel,omitempty"`
	ApplicationTunnel *ApplicationTunnel `json:"applicationTunnel,omitempty"`
	// AuthorizationPolicies names ("<namespace>/<name>") the workload-selector policies of this workload.
	AuthorizationPolicies []string `json:"authorizationPolicies,omitempty"`
	// Status is "Healthy" or "Unhealthy".
	Status    string    `json:"status"`
	ClusterID string    `json:"clusterId"`
	Locality  *Locality `json:"locality,omitempty"`
	// Services are the "<namespace>/<hostname>" of the services this workload is an endpoint of.
	Services ServiceNames `json:"services,omitempty"`
	Capacity uint32       `json:"capacity"`
}

// ServiceNames is a workload's list of "<namespace>/<hostname>". It decodes from a list (ztunnel's dump)
// or from a map keyed by those names (ztunnel's local configuration format), sorted then.
type ServiceNames []string

// GatewayAddress references a waypoint or network gateway. Destination is "<namespace>/<hostname>" or
// "<network>/<ip>" (the default network is empty: "/10.96.0.10").
type GatewayAddress struct {
	Destination   string `json:"destination"`
	HBONEMTLSPort uint16 `json:"hboneMtlsPort,omitempty"`
}

// ApplicationTunnel is how a workload wants inbound tunnelled traffic delivered. Protocol is "NONE" or "PROXY".
type ApplicationTunnel struct {
	Protocol string  `json:"protocol"`
	Port     *uint16 `json:"port,omitempty"`
}

// Locality is a workload's failure domain.
type Locality struct {
	Region  string `json:"region"`
	Zone    string `json:"zone"`
	Subzone string `json:"subzone"`
}

// Service mirrors ztunnel's service.
type Service struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Hostname  string `json:"hostname"`
	// Vips are "<network>/<ip>".
	Vips []string `json:"vips"`
	// Ports maps service port to target port (0: a named target port, resolved per endpoint).
	Ports map[uint16]uint16 `json:"ports"`
	// Endpoints are keyed by workload UID.
	Endpoints       map[string]*Endpoint `json:"endpoints"`
	SubjectAltNames []string             `json:"subjectAltNames"`
	Waypoint        *GatewayAddress      `json:"waypoint,omitempty"`
	LoadBalancer    *LoadBalancer        `json:"loadBalancer,omitempty"`
	// IPFamilies is "Dual", "IPv4" or "IPv6"; empty means automatic.
	IPFamilies string `json:"ipFamilies,omitempty"`
	Canonical  bool   `json:"canonical,omitempty"`
	// Visibility is "Namespace" for services only clients in their namespace may use; empty means public.
	Visibility string `json:"visibility,omitempty"`
}

// Endpoint is one workload behind a service.
type Endpoint struct {
	WorkloadUID string `json:"workloadUid"`
	// Service and Address appear in older ztunnel dumps; Ambit writes Service.
	Service string `json:"service,omitempty"`
	Address string `json:"address,omitempty"`
	// Port maps service port to this workload's target port.
	Port   map[uint16]uint16 `json:"port"`
	Status string            `json:"status,omitempty"`
}

// LoadBalancer mirrors istio.workload.LoadBalancing. RoutingPreferences are Region, Zone, Subzone, Node,
// Cluster or Network; Mode is Standard, Strict, Failover or Passthrough; HealthPolicy OnlyHealthy or AllowAll.
type LoadBalancer struct {
	RoutingPreferences []string `json:"routingPreferences"`
	Mode               string   `json:"mode"`
	HealthPolicy       string   `json:"healthPolicy"`
}

// Policy mirrors istio.security.Authorization. Scope is Global, Namespace or WorkloadSelector; Action is
// Allow or Deny. Rules is a list of rules (any matches), each a list of clauses (all must match), each a
// list of matches (any matches).
type Policy struct {
	Name      string       `json:"name"`
	Namespace string       `json:"namespace"`
	Scope     string       `json:"scope"`
	Action    string       `json:"action"`
	Rules     [][][]*Match `json:"rules"`
	DryRun    bool         `json:"dryRun,omitempty"`
}

// Match is one istio.security.Match. IPs are CIDRs.
type Match struct {
	Namespaces          []StringMatch         `json:"namespaces,omitempty"`
	NotNamespaces       []StringMatch         `json:"notNamespaces,omitempty"`
	Principals          []StringMatch         `json:"principals,omitempty"`
	NotPrincipals       []StringMatch         `json:"notPrincipals,omitempty"`
	SourceIps           []string              `json:"sourceIps,omitempty"`
	NotSourceIps        []string              `json:"notSourceIps,omitempty"`
	DestinationIps      []string              `json:"destinationIps,omitempty"`
	NotDestinationIps   []string              `json:"notDestinationIps,omitempty"`
	DestinationPorts    []uint16              `json:"destinationPorts,omitempty"`
	NotDestinationPorts []uint16              `json:"notDestinationPorts,omitempty"`
	ServiceAccounts     []ServiceAccountMatch `json:"serviceAccounts,omitempty"`
	NotServiceAccounts  []ServiceAccountMatch `json:"notServiceAccounts,omitempty"`
}

// StringMatch is externally tagged like ztunnel's: exactly one of {"Exact": v}, {"Prefix": v},
// {"Suffix": v} or {"Presence": {}}.
type StringMatch struct {
	Exact    string `json:"Exact,omitempty"`
	Suffix   string `json:"Suffix,omitempty"`
	Prefix   string `json:"Prefix,omitempty"`
	Presence any    `json:"Presence,omitempty"`
}

// ServiceAccountMatch matches a peer's namespace and service account.
type ServiceAccountMatch struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
}

// Certificate is the state of one managed identity. State is "Available", "Initializing" or
// "Unavailable: <last error>". CertChain is the leaf then intermediates; RootCerts the trust bundle.
type Certificate struct {
	Identity  string  `json:"identity"`
	State     string  `json:"state"`
	CertChain []*Cert `json:"certChain"`
	RootCerts []*Cert `json:"rootCerts"`
	// NextAttempt is when the next renewal or retry is scheduled, RFC 3339 (Ambit).
	NextAttempt string `json:"nextAttempt,omitempty"`
	// Failures counts consecutive failed issuance attempts (Ambit).
	Failures int `json:"failures,omitempty"`
}

// Cert is one public certificate. SerialNumber is decimal; times are RFC 3339 UTC to the second.
type Cert struct {
	PEM            string `json:"pem"`
	SerialNumber   string `json:"serialNumber"`
	ValidFrom      string `json:"validFrom"`
	ExpirationTime string `json:"expirationTime"`
}

// WorkloadState is a local workload and its live connections, as in ztunnel's "workloadState".
type WorkloadState struct {
	// State is ztunnel's in-pod proxy state ("Up", "Pending"); Ambit leaves it empty.
	State       string              `json:"state,omitempty"`
	Connections WorkloadConnections `json:"connections"`
	Info        WorkloadInfo        `json:"info"`
}

// WorkloadConnections are a workload's live connections, oldest first.
type WorkloadConnections struct {
	Inbound  []InboundConnection  `json:"inbound"`
	Outbound []OutboundConnection `json:"outbound"`
}

// WorkloadInfo identifies a local workload.
type WorkloadInfo struct {
	Name           string `json:"name"`
	Namespace      string `json:"namespace"`
	TrustDomain    string `json:"trustDomain"`
	ServiceAccount string `json:"serviceAccount"`
}

// InboundConnection is a connection towards a local workload: Src is the client, OriginalDst the
// destination service hostname when known (else empty), ActualDst the pod address the agent delivers
// to, Protocol "HBONE" (mutual TLS) or "TCP".
type InboundConnection struct {
	Src         string `json:"src"`
	OriginalDst string `json:"originalDst"`
	ActualDst   string `json:"actualDst"`
	Protocol    string `json:"protocol"`
}

// OutboundConnection is a connection from a local workload: Src is the client, OriginalDst the address
// it dialled, ActualDst the next hop (a pod or waypoint :15008 for HBONE), Protocol "HBONE" or "TCP".
type OutboundConnection struct {
	Src         string `json:"src"`
	OriginalDst string `json:"originalDst"`
	ActualDst   string `json:"actualDst"`
	Protocol    string `json:"protocol"`
}

// BuildInfo describes the agent build. Ambit fills Version, GitRevision and GoVersion; the other fields
// are read from ztunnel dumps.
type BuildInfo struct {
	Version      string `json:"version"`
	GitRevision  string `json:"gitRevision,omitempty"`
	GoVersion    string `json:"goVersion,omitempty"`
	RustVersion  string `json:"rustVersion,omitempty"`
	BuildProfile string `json:"buildProfile,omitempty"`
	BuildStatus  string `json:"buildStatus,omitempty"`
	GitTag       string `json:"gitTag,omitempty"`
	IstioVersion string `json:"istioVersion,omitempty"`
}

// Connection is one entry of GET /connections (Ambit): a connection the agent is relaying now.
type Connection struct {
	ID uint64 `json:"id"`
	// Direction is "inbound" or "outbound".
	Direction string `json:"direction"`
	// Src is the client; Dst the original destination; Hop the address the agent connected to.
	Src string `json:"src"`
	Dst string `json:"dst"`
	Hop string `json:"hop,omitempty"`
	// Authority is the HBONE :authority, when HBONE is used.
	Authority string `json:"authority,omitempty"`
	Protocol  string `json:"protocol"`
	// Workload is the local workload ("<namespace>/<name>"): the source for outbound, the destination
	// for inbound. Peer is the other side when known.
	Workload    string `json:"workload,omitempty"`
	WorkloadUID string `json:"workloadUid,omitempty"`
	Peer        string `json:"peer,omitempty"`
	// PeerIdentity is the verified SPIFFE ID of an inbound mTLS client.
	PeerIdentity string `json:"peerIdentity,omitempty"`
	// Service is the destination service ("<namespace>/<hostname>"), when there is one.
	Service  string `json:"service,omitempty"`
	Waypoint string `json:"waypoint,omitempty"`
	// BytesUpstream counts client-to-destination bytes, BytesDownstream the reverse.
	BytesUpstream   int64 `json:"bytesUpstream"`
	BytesDownstream int64 `json:"bytesDownstream"`
	// Start is RFC 3339 with nanoseconds; DurationSeconds is the age at the time of the response.
	Start           string  `json:"start"`
	DurationSeconds float64 `json:"durationSeconds"`
}
