package authz

import (
	"net/netip"
	"strings"

	"github.com/ambit-mesh/ambit/mesh/state"
)

// Peer is the authenticated identity of the connecting side. The zero Peer is a plaintext client.
type Peer struct {
	// Principal is the SPIFFE ID without "spiffe://" (trustdomain/ns/<ns>/sa/<sa>); "" when plaintext.
	Principal      string
	Namespace      string
	ServiceAccount string
}

// PeerFromSPIFFE parses an Istio SPIFFE ID (spiffe://<td>/ns/<ns>/sa/<sa>, exactly five path
// components). Anything else is not an identity and yields the zero Peer.
func PeerFromSPIFFE(id string) Peer {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return Peer{}
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[0] == "" || parts[1] != "ns" || parts[2] == "" || parts[3] != "sa" || parts[4] == "" {
		return Peer{}
	}
	return Peer{Principal: rest, Namespace: parts[2], ServiceAccount: parts[4]}
}

// Conn is what a policy is evaluated against.
type Conn struct {
	Peer Peer
	// SourceIP is the TCP source of the connection (HBONE peer or plaintext client).
	SourceIP netip.Addr
	// DestinationIP is the destination workload's IP the connection targets.
	DestinationIP netip.Addr
	// DestinationPort is the resolved target port (the pod's port, not 15008, not the service port).
	DestinationPort uint16
}

// Decision is the outcome of Evaluate.
type Decision struct {
	Allow bool
	// Policy is the policy that decided: the matching DENY, or the matching ALLOW; nil when no policy
	// decided (allowed because there are no ALLOW policies, or denied because none of them matched).
	Policy *state.Authorization
	// DryRun is the first dry-run policy that would have denied the connection by itself (a matching
	// DENY, or an ALLOW that does not match); it is reported for logging and never decides.
	DryRun *state.Authorization
}

// Reason explains d in the words ztunnel logs.
func (d Decision) Reason() string {
	switch {
	case !d.Allow && d.Policy != nil:
		return "explicitly denied by " + d.Policy.Key()
	case !d.Allow:
		return "allow policies exist, but none allowed"
	case d.Policy != nil:
		return "allowed by " + d.Policy.Key()
	}
	return "no allow policies"
}

// Evaluate decides c against the policies that apply to the destination workload
// (state.Store.PoliciesFor).
func Evaluate(policies []*state.Authorization, c *Conn) Decision {
	var dry *state.Authorization
	// 1. Any matching DENY denies.
	for _, p := range policies {
		if p.Action != state.ActionDeny || !matches(p, c) {
			continue
		}
		if p.DryRun {
			if dry == nil {
				dry = p
			}
			continue
		}
		return Decision{Policy: p}
	}
	// 2. Without ALLOW policies, allow; 3. else one of them must match.
	haveAllow := false
	for _, p := range policies {
		if p.Action != state.ActionAllow {
			continue
		}
		if p.DryRun {
			if dry == nil && !matches(p, c) {
				dry = p
			}
			continue
		}
		haveAllow = true
		if matches(p, c) {
			return Decision{Allow: true, Policy: p, DryRun: dry}
		}
	}
	if !haveAllow {
		return Decision{Allow: true, DryRun: dry}
	}
	return Decision{DryRun: dry}
}

// matches: a policy without groups never matches; otherwise any group must match.
func matches(p *state.Authorization, c *Conn) bool {
	for i := range p.Groups {
		if groupMatches(&p.Groups[i], c) {
			return true
		}
	}
	return false
}

// groupMatches: all rules must match (a group without rules matches everything).
func groupMatches(g *state.Group, c *Conn) bool {
	for i := range g.Rules {
		if !rulesMatch(&g.Rules[i], c) {
			return false
		}
	}
	return true
}

// rulesMatch: any match must match; no matches matches everything; an empty Match matches nothing.
func rulesMatch(r *state.Rules, c *Conn) bool {
	if len(r.Matches) == 0 {
		return true
	}
	for i := range r.Matches {
		m := &r.Matches[i]
		if !m.IsEmpty() && matchMatches(m, c) {
			return true
		}
	}
	return false
}

func matchMatches(m *state.Match, c *Conn) bool {
	return pair(m.Namespaces, m.NotNamespaces, func(s state.StringMatch) bool { return s.Matches(c.Peer.Namespace) }) &&
		pair(m.Principals, m.NotPrincipals, func(s state.StringMatch) bool { return s.Matches(c.Peer.Principal) }) &&
		pair(m.SourceIPs, m.NotSourceIPs, func(p netip.Prefix) bool { return p.Contains(c.SourceIP) }) &&
		pair(m.DestinationIPs, m.NotDestinationIPs, func(p netip.Prefix) bool { return p.Contains(c.DestinationIP) }) &&
		pair(m.DestinationPorts, m.NotDestinationPorts, func(p uint16) bool { return p == c.DestinationPort }) &&
		pair(m.ServiceAccounts, m.NotServiceAccounts, func(sa state.ServiceAccountMatch) bool {
			return c.Peer.Principal != "" && sa.Namespace == c.Peer.Namespace && sa.ServiceAccount == c.Peer.ServiceAccount
		})
}

// pair applies one positive/negative field pair: the positive list, when non-empty, needs a hit; the
// negative list, when non-empty, must have none.
func pair[T any](pos, neg []T, hit func(T) bool) bool {
	if len(pos) > 0 && !anyHit(pos, hit) {
		return false
	}
	return len(neg) == 0 || !anyHit(neg, hit)
}

func anyHit[T any](l []T, hit func(T) bool) bool {
	for _, v := range l {
		if hit(v) {
			return true
		}
	}
	return false
}
