package state

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Validation errors. Producers reject the offending resource (NACK, or an error naming the object)
// and keep serving the rest.
var (
	ErrMissingUID      = errors.New("missing uid")
	ErrMissingName     = errors.New("missing name")
	ErrInvalidAddress  = errors.New("invalid address")
	ErrInvalidGateway  = errors.New("gateway address has no destination")
	ErrMissingHostname = errors.New("missing hostname")
	ErrInvalidPort     = errors.New("invalid port")
	ErrInvalidPolicy   = errors.New("invalid policy")
)

// Validate checks w and fills istiod's defaults (trust domain, service account, cluster id, capacity).
// Call it off-lock before handing w to Store.Apply; after that w must not be modified.
func (w *Workload) Validate() error { return w.validate(nil) }

// validate is Validate; with in set, the identity is interned.
func (w *Workload) validate(in *Interner) error {
	if w.UID == "" {
		return ErrMissingUID
	}
	if w.Name == "" || w.Namespace == "" {
		return fmt.Errorf("workload %s: %w", w.UID, ErrMissingName)
	}
	// A workload with neither addresses nor a hostname is accepted, as ztunnel does: it may be reachable
	// only through its network gateway. The planner never picks it as a direct destination.
	for _, a := range w.Addresses {
		if !a.IsValid() || a.Zone() != "" {
			return fmt.Errorf("workload %s: %w %q", w.UID, ErrInvalidAddress, a)
		}
	}
	for _, g := range []*GatewayAddress{w.Waypoint, w.NetworkGateway} {
		if g != nil {
			if err := g.validate(); err != nil {
				return fmt.Errorf("workload %s: %w", w.UID, err)
			}
		}
	}
	if w.TrustDomain == "" {
		w.TrustDomain = DefaultTrustDomain
	}
	if w.ServiceAccount == "" {
		w.ServiceAccount = DefaultServiceAccount
	}
	if w.ClusterID == "" {
		w.ClusterID = DefaultClusterID
	}
	if w.Capacity == 0 {
		w.Capacity = 1
	}
	if in != nil {
		w.identity = in.identity(w.TrustDomain, w.Namespace, w.ServiceAccount)
	} else {
		w.identity = SPIFFEID(w.TrustDomain, w.Namespace, w.ServiceAccount)
	}
	return nil
}

func (g *GatewayAddress) validate() error {
	if g.IsHostname() {
		if g.Hostname.Namespace == "" && strings.Count(g.Hostname.Hostname, ".") == 0 {
			return fmt.Errorf("%w: hostname %q has no namespace", ErrInvalidGateway, g.Hostname.Hostname)
		}
	} else if !g.Address.Addr.IsValid() {
		return ErrInvalidGateway
	}
	if g.HBONEMTLSPort == 0 {
		g.HBONEMTLSPort = HBONEPort
	}
	return nil
}

// Validate checks s. Call it off-lock before handing s to Store.Apply.
func (s *Service) Validate() error {
	if s.Hostname == "" {
		return ErrMissingHostname
	}
	if s.Namespace == "" {
		return fmt.Errorf("service %s: %w", s.Hostname, ErrMissingName)
	}
	if s.Name == "" {
		s.Name = s.Hostname
	}
	for _, a := range s.Addresses {
		if !a.Addr.IsValid() {
			return fmt.Errorf("service %s: %w", s.Key(), ErrInvalidAddress)
		}
	}
	for _, p := range s.Ports {
		if p.ServicePort == 0 {
			return fmt.Errorf("service %s: %w: service port 0", s.Key(), ErrInvalidPort)
		}
	}
	if s.Waypoint != nil {
		if err := s.Waypoint.validate(); err != nil {
			return fmt.Errorf("service %s: %w", s.Key(), err)
		}
	}
	return nil
}

// Validate checks a. Call it off-lock before handing a to Store.Apply.
func (a *Authorization) Validate() error {
	if a.Name == "" || a.Namespace == "" {
		return fmt.Errorf("authorization %s/%s: %w", a.Namespace, a.Name, ErrMissingName)
	}
	if a.Scope > ScopeWorkloadSelector {
		return fmt.Errorf("authorization %s: %w: unknown scope %d", a.Key(), ErrInvalidPolicy, a.Scope)
	}
	if a.Action > ActionDeny {
		return fmt.Errorf("authorization %s: %w: unknown action %d", a.Key(), ErrInvalidPolicy, a.Action)
	}
	for gi := range a.Groups {
		for ri := range a.Groups[gi].Rules {
			for mi := range a.Groups[gi].Rules[ri].Matches {
				m := &a.Groups[gi].Rules[ri].Matches[mi]
				for _, list := range [][]StringMatch{m.Namespaces, m.NotNamespaces, m.Principals, m.NotPrincipals} {
					for _, sm := range list {
						if sm.Kind > MatchPresence {
							return fmt.Errorf("authorization %s: %w: unknown string match kind %d", a.Key(), ErrInvalidPolicy, sm.Kind)
						}
					}
				}
				for _, list := range [][]netip.Prefix{m.SourceIPs, m.NotSourceIPs, m.DestinationIPs, m.NotDestinationIPs} {
					for _, p := range list {
						if !p.IsValid() {
							return fmt.Errorf("authorization %s: %w: invalid CIDR", a.Key(), ErrInvalidPolicy)
						}
					}
				}
			}
		}
	}
	return nil
}
