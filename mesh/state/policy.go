package state

import "net/netip"

// PolicyScope says which workloads an Authorization applies to.
type PolicyScope uint8

const (
	// ScopeGlobal policies apply to every workload in the mesh (istiod sends root-namespace policies so).
	ScopeGlobal PolicyScope = iota
	// ScopeNamespace policies apply to every workload in their namespace.
	ScopeNamespace
	// ScopeWorkloadSelector policies apply to the workloads that list them in AuthorizationPolicies.
	ScopeWorkloadSelector
)

// String returns the scope as istioctl's policy table prints it.
func (s PolicyScope) String() string {
	switch s {
	case ScopeNamespace:
		return "Namespace"
	case ScopeWorkloadSelector:
		return "WorkloadSelector"
	default:
		return "Global"
	}
}

// PolicyAction is ALLOW or DENY.
type PolicyAction uint8

const (
	ActionAllow PolicyAction = iota
	ActionDeny
)

// String returns "Allow" or "Deny".
func (a PolicyAction) String() string {
	if a == ActionDeny {
		return "Deny"
	}
	return "Allow"
}

// Authorization mirrors istio.security.Authorization: an L4 policy evaluated by the destination's
// node agent. It is immutable once given to a Store.
type Authorization struct {
	Name      string
	Namespace string
	Scope     PolicyScope
	Action    PolicyAction
	// Groups: the policy matches when any group matches.
	Groups []Group
	DryRun bool
}

// Key returns "<namespace>/<name>", the resource name of the policy.
func (a *Authorization) Key() string { return a.Namespace + "/" + a.Name }

// Group matches when all of its Rules match (a group without rules matches everything).
type Group struct {
	Rules []Rules
}

// Rules matches when any of its Matches matches (no matches: matches everything).
type Rules struct {
	Matches []Match
}

// Match matches when every populated pair matches: the positive list (if non-empty) has a hit and the
// negative list (if non-empty) has none. An entirely empty Match matches nothing.
type Match struct {
	Namespaces          []StringMatch
	NotNamespaces       []StringMatch
	Principals          []StringMatch
	NotPrincipals       []StringMatch
	SourceIPs           []netip.Prefix
	NotSourceIPs        []netip.Prefix
	DestinationIPs      []netip.Prefix
	NotDestinationIPs   []netip.Prefix
	DestinationPorts    []uint16
	NotDestinationPorts []uint16
	ServiceAccounts     []ServiceAccountMatch
	NotServiceAccounts  []ServiceAccountMatch
}

// IsEmpty reports whether m has no populated field.
func (m *Match) IsEmpty() bool {
	return len(m.Namespaces) == 0 && len(m.NotNamespaces) == 0 &&
		len(m.Principals) == 0 && len(m.NotPrincipals) == 0 &&
		len(m.SourceIPs) == 0 && len(m.NotSourceIPs) == 0 &&
		len(m.DestinationIPs) == 0 && len(m.NotDestinationIPs) == 0 &&
		len(m.DestinationPorts) == 0 && len(m.NotDestinationPorts) == 0 &&
		len(m.ServiceAccounts) == 0 && len(m.NotServiceAccounts) == 0
}

// StringMatchKind selects how a StringMatch compares.
type StringMatchKind uint8

const (
	MatchExact StringMatchKind = iota
	MatchPrefix
	MatchSuffix
	// MatchPresence matches any non-empty value.
	MatchPresence
)

// StringMatch is istio.security.StringMatch.
type StringMatch struct {
	Kind  StringMatchKind
	Value string
}

// Matches reports whether s satisfies m.
func (m StringMatch) Matches(s string) bool {
	switch m.Kind {
	case MatchExact:
		return s == m.Value
	case MatchPrefix:
		return len(s) >= len(m.Value) && s[:len(m.Value)] == m.Value
	case MatchSuffix:
		return len(s) >= len(m.Value) && s[len(s)-len(m.Value):] == m.Value
	case MatchPresence:
		return s != ""
	}
	return false
}

// ServiceAccountMatch matches a peer's namespace and service account exactly.
type ServiceAccountMatch struct {
	Namespace      string
	ServiceAccount string
}
