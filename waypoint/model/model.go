package model

import (
	"fmt"
	"net/netip"
	"regexp"
	"time"
)

// Kinds of parents and policy targets.
const (
	KindService      = "Service"
	KindServiceEntry = "ServiceEntry"
	KindGateway      = "Gateway"
	KindGatewayClass = "GatewayClass"
	KindHTTPRoute    = "HTTPRoute"
	KindGRPCRoute    = "GRPCRoute"
	KindVirtual      = "VirtualService"
)

// Config is one compiled L7 configuration.
type Config struct {
	// Routes are HTTPRoutes, GRPCRoutes and VirtualServices, in input order.
	Routes []*Route
	// Destinations are DestinationRules by host (service FQDN).
	Destinations map[string]*Destination
	Authz        []*AuthzPolicy
	JWT          []*JWTPolicy
	RateLimits   []*RateLimit
	// WorkloadLabels are pod labels by workload UID (for DestinationRule subsets).
	WorkloadLabels map[string]map[string]string
	// Warnings are accepted-with-warning messages (fields Ambit ignores).
	Warnings []string
}

// Parent is what a route attaches to: a Service or ServiceEntry (by hostname) or a waypoint Gateway.
type Parent struct {
	Kind      string
	Namespace string
	Name      string
	// Hostname is the FQDN of a Service or ServiceEntry parent.
	Hostname string
	// Port restricts the attachment to one service port; 0 means every port.
	Port uint16
}

// Route is one HTTPRoute, GRPCRoute or VirtualService.
type Route struct {
	Kind      string
	Namespace string
	Name      string
	Parents   []Parent
	Rules     []*Rule
}

// Key returns "Kind/namespace/name".
func (r *Route) Key() string { return r.Kind + "/" + r.Namespace + "/" + r.Name }

// Rule is one routing rule: when a Match matches, the request goes to Backends after Filters.
type Rule struct {
	// Name is the rule's section name, or "<index>".
	Name string
	// Matches are ORed; an empty list matches every request.
	Matches  []Match
	Backends []Backend
	Filters  Filters
	Redirect *Redirect
	Mirrors  []Mirror
	// Timeout bounds the whole request (all attempts); 0 is none. PerTryTimeout bounds one attempt.
	Timeout       time.Duration
	PerTryTimeout time.Duration
	Retry         *Retry
	Fault         *Fault
}

// PathKind is how a path is matched.
type PathKind uint8

const (
	PathPrefix PathKind = iota // Gateway API's element-wise prefix
	PathExact
	PathRegex
	PathStringPrefix // Istio's VirtualService uri prefix: a plain string prefix
)

// StringKind is how a header or query value is matched.
type StringKind uint8

const (
	StringExact StringKind = iota
	StringPrefix
	StringRegex
	StringPresent
)

// Match is one request match; every set part must match.
type Match struct {
	PathKind PathKind
	Path     string
	PathRE   *regexp.Regexp
	Method   string
	Headers  []ValueMatch
	Query    []ValueMatch
}

// ValueMatch matches one header or query parameter.
type ValueMatch struct {
	Name   string
	Kind   StringKind
	Value  string
	RE     *regexp.Regexp
	Invert bool
}

// Backend is a weighted destination: a service host and port, optionally a DestinationRule subset.
type Backend struct {
	Host      string
	Namespace string
	Port      uint16
	Subset    string
	Weight    int32
	Filters   Filters
}

// Filters modify requests and responses.
type Filters struct {
	Request  HeaderMod
	Response HeaderMod
	Rewrite  *Rewrite
}

// HeaderMod sets, adds and removes headers.
type HeaderMod struct {
	Set    []Header
	Add    []Header
	Remove []string
}

// Empty reports whether m changes nothing.
func (m *HeaderMod) Empty() bool { return len(m.Set) == 0 && len(m.Add) == 0 && len(m.Remove) == 0 }

// Header is a name and value.
type Header struct{ Name, Value string }

// PathModifier changes a path: FullPath replaces the whole path; with PrefixSet, the matched
// PathPrefix or PathStringPrefix is replaced by Prefix.
type PathModifier struct {
	FullPath  string
	Prefix    string
	PrefixSet bool
}

// Rewrite rewrites the host and path before forwarding.
type Rewrite struct {
	Hostname string
	PathModifier
}

// Redirect answers with a redirect instead of forwarding.
type Redirect struct {
	Scheme     string
	Hostname   string
	Port       uint16
	StatusCode int
	PathModifier
}

// Mirror sends a copy of Percent of the requests to Backend, ignoring the answer.
type Mirror struct {
	Backend Backend
	Percent float64
}

// Retry conditions (Envoy's retry_on names).
const (
	RetryOn5xx               = "5xx"
	RetryOnGatewayError      = "gateway-error"
	RetryOnConnectFailure    = "connect-failure"
	RetryOnReset             = "reset"
	RetryOnRetriableCodes    = "retriable-status-codes"
	RetryOnRefusedStream     = "refused-stream"
	RetryOnRetriable4xx      = "retriable-4xx"
	RetryOnGRPCUnavailable   = "unavailable"
	RetryOnGRPCCancelled     = "cancelled"
	RetryOnGRPCDeadline      = "deadline-exceeded"
	RetryOnGRPCResource      = "resource-exhausted"
	RetryOnGRPCInternalError = "internal"
)

// Retry is a retry policy. Attempts counts retries after the first try.
type Retry struct {
	Attempts int
	On       []string
	Codes    []int
	Backoff  time.Duration
}

// Fault injects a delay and/or an abort into a percentage of requests.
type Fault struct {
	DelayPercent float64
	Delay        time.Duration
	AbortPercent float64
	AbortStatus  int
	// AbortGRPC, when non-zero, aborts gRPC requests with this grpc-status instead.
	AbortGRPC int
}

// LBKind is a load-balancing algorithm.
type LBKind uint8

const (
	LBRoundRobin LBKind = iota
	LBLeastRequest
	LBRandom
	LBConsistentHash
)

// LB is a load balancer setting; the hash fields apply to LBConsistentHash (one is set).
type LB struct {
	Kind          LBKind
	HashHeader    string
	HashCookie    string
	HashCookieTTL time.Duration
	HashSourceIP  bool
	HashQuery     string
}

// ConnPool bounds a destination (Envoy circuit breakers). Zero means unlimited (the defaults).
type ConnPool struct {
	MaxConnections     int
	MaxPending         int
	MaxRequests        int
	MaxRequestsPerConn int
	MaxRetries         int
	ConnectTimeout     time.Duration
	IdleTimeout        time.Duration
}

// Outlier ejects endpoints after consecutive errors.
type Outlier struct {
	Consecutive5xx     int
	ConsecutiveGateway int
	Interval           time.Duration
	BaseEjection       time.Duration
	MaxEjectionPercent int
}

// TrafficPolicy is a DestinationRule traffic policy.
type TrafficPolicy struct {
	LB      LB
	Pool    ConnPool
	Outlier *Outlier
	// TLS originates TLS to the endpoints (DestinationRule trafficPolicy.tls); nil sends what the
	// client sent (plain text, or HBONE to mesh endpoints).
	TLS *TLS
}

// TLSMode is how the waypoint originates TLS to a destination.
type TLSMode uint8

const (
	// TLSSimple verifies the server (against CACertificates, else the system roots) and presents no
	// certificate.
	TLSSimple TLSMode = iota + 1
	// TLSMutual also presents ClientCertificate and PrivateKey.
	TLSMutual
)

// TLS is DestinationRule ClientTLSSettings as the waypoint implements them. Paths are files the
// waypoint reads when it first connects with these settings (after each configuration change).
type TLS struct {
	Mode TLSMode
	// CACertificates is a PEM file of the CAs the server certificate must chain to; "" uses the
	// system roots.
	CACertificates string
	// ClientCertificate and PrivateKey are PEM files (MUTUAL).
	ClientCertificate, PrivateKey string
	// SNI is the server name sent and verified; "" uses the destination's hostname.
	SNI string
	// SubjectAltNames, when set, replace the SNI in verification: the certificate must carry one of them.
	SubjectAltNames []string
	// InsecureSkipVerify skips verifying the server certificate.
	InsecureSkipVerify bool
}

// Key returns a string identifying the settings (equal settings, equal keys).
func (t *TLS) Key() string {
	return fmt.Sprintf("%d|%q|%q|%q|%q|%q|%t", t.Mode, t.CACertificates, t.ClientCertificate, t.PrivateKey, t.SNI,
		t.SubjectAltNames, t.InsecureSkipVerify)
}

// Subset is a named group of endpoints by label, with its own policy overrides.
type Subset struct {
	Labels map[string]string
	Policy *TrafficPolicy
}

// Destination is one DestinationRule.
type Destination struct {
	Namespace, Name string
	Host            string
	Policy          TrafficPolicy
	Subsets         map[string]Subset
	// PortTLS are the tls settings of trafficPolicy.portLevelSettings by service port: they replace
	// the rule's (and a subset's) TLS on that port. A nil value turns TLS off on the port.
	PortTLS map[uint16]*TLS
}

// PolicyFor returns the policy of subset (the rule's own when the subset does not override it).
func (d *Destination) PolicyFor(subset string) TrafficPolicy {
	if d == nil {
		return TrafficPolicy{}
	}
	if s, ok := d.Subsets[subset]; ok && s.Policy != nil {
		return *s.Policy
	}
	return d.Policy
}

// PolicyForPort returns PolicyFor(subset) with the port-level TLS of port applied.
func (d *Destination) PolicyForPort(subset string, port uint16) TrafficPolicy {
	p := d.PolicyFor(subset)
	if d == nil {
		return p
	}
	if t, ok := d.PortTLS[port]; ok {
		p.TLS = t
	}
	return p
}

// TargetRef is a policy attachment target (Gateway API policy attachment).
type TargetRef struct {
	Group, Kind, Namespace, Name string
}

// Action is an authorization action.
type Action uint8

const (
	ActionAllow Action = iota
	ActionDeny
	ActionAudit
)

// AuthzPolicy is an AuthorizationPolicy with targetRefs.
type AuthzPolicy struct {
	Namespace, Name string
	Action          Action
	Targets         []TargetRef
	Rules           []AuthzRule
	DryRun          bool
}

// Key returns "namespace/name".
func (p *AuthzPolicy) Key() string { return p.Namespace + "/" + p.Name }

// AuthzRule matches when any From, any To and every When matches (empty lists match).
type AuthzRule struct {
	From []Source
	To   []Operation
	When []Condition
}

// Source is Istio's rule.from.source.
type Source struct {
	Principals, NotPrincipals               []string
	RequestPrincipals, NotRequestPrincipals []string
	Namespaces, NotNamespaces               []string
	IPBlocks, NotIPBlocks                   []netip.Prefix
	RemoteIPBlocks, NotRemoteIPBlocks       []netip.Prefix
}

// Operation is Istio's rule.to.operation.
type Operation struct {
	Hosts, NotHosts     []string
	Ports, NotPorts     []uint16
	Methods, NotMethods []string
	Paths, NotPaths     []string
}

// Condition is Istio's rule.when entry.
type Condition struct {
	Key               string
	Values, NotValues []string
}

// JWTPolicy is a RequestAuthentication with targetRefs.
type JWTPolicy struct {
	Namespace, Name string
	Targets         []TargetRef
	Rules           []JWTRule
}

// JWTRule is one jwtRules entry. Exactly one of JWKS (inline JSON) and JWKSURI (http, https or file)
// is set.
type JWTRule struct {
	Issuer               string
	Audiences            []string
	JWKS                 string
	JWKSURI              string
	FromHeaders          []JWTHeader
	FromParams           []string
	ForwardOriginalToken bool
	ClaimHeaders         []Header // Name = header, Value = claim
}

// JWTHeader is a header a token is read from, with an optional value prefix ("Bearer ").
type JWTHeader struct{ Name, Prefix string }

// RateLimit is a LocalRateLimitPolicy: a token bucket shared by every request to its targets.
type RateLimit struct {
	Namespace, Name string
	Targets         []TargetRef
	MaxTokens       int64
	TokensPerFill   int64
	FillInterval    time.Duration
}

// Key returns "namespace/name".
func (r *RateLimit) Key() string { return r.Namespace + "/" + r.Name }
