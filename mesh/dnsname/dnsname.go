package dnsname

import (
	"net/netip"
	"strings"

	"github.com/ambit-mesh/ambit/mesh/state"
)

// Type is the record type asked for.
type Type uint8

const (
	// TypeOther is any type but A and AAAA: a known name gets an empty answer (NODATA).
	TypeOther Type = iota
	TypeA
	TypeAAAA
)

// Query is one question.
type Query struct {
	// Name is the queried name, absolute ("reviews.demo.svc.cluster.local." or without the final dot);
	// case does not matter.
	Name string
	Type Type
	// Namespace is the client's namespace (the source workload's), "" when the client is unknown: then
	// only exact names are answered and namespace-private services are not visible.
	Namespace string
}

// Kind is what the proxy does with a query.
type Kind uint8

const (
	// Forward sends the query to the upstream resolver: the mesh does not know the name.
	Forward Kind = iota
	// Answer replies from the mesh: Addrs (maybe none: NODATA for this type), behind a CNAME from the
	// queried name to Host when Host differs from it.
	Answer
)

// String returns "forward" or "answer".
func (k Kind) String() string {
	if k == Answer {
		return "answer"
	}
	return "forward"
}

// Result is the decision.
type Result struct {
	Kind Kind
	// Host is the canonical host the name matched (lower case, no final dot), when Kind is Answer.
	Host string
	// CNAME is set when the queried name is Host with one of the client's search domains appended.
	CNAME bool
	// Addrs are the addresses of Host of the asked family, in the state's order.
	Addrs []netip.Addr
}

// Lookup is the part of the state store Resolve reads (*state.Store implements it).
type Lookup interface {
	ServiceByHostname(host, clientNamespace string) *state.Service
	Endpoints(key state.NamespacedHostname) []*state.Workload
}

// SearchDomains returns the search path Kubernetes writes into the resolv.conf of a pod in namespace ns
// (ClusterFirst DNS policy) for cluster domain domain.
func SearchDomains(ns, domain string) []string {
	domain = canonical(domain)
	if ns == "" {
		return []string{domain}
	}
	return []string{ns + ".svc." + domain, "svc." + domain, domain}
}

// Resolve decides the answer to q for a mesh whose cluster domain is domain (default cluster.local).
func Resolve(l Lookup, domain string, q Query) Result {
	if domain == "" {
		domain = "cluster.local"
	}
	name := canonical(q.Name)
	if name == "" || strings.HasPrefix(name, "*") {
		return Result{Kind: Forward}
	}
	if svc := l.ServiceByHostname(name, q.Namespace); svc != nil {
		return Result{Kind: Answer, Host: name, Addrs: addrs(l, svc, q.Type)}
	}
	if q.Namespace == "" {
		return Result{Kind: Forward}
	}
	for _, sd := range SearchDomains(q.Namespace, domain) {
		host, ok := strings.CutSuffix(name, "."+sd)
		if !ok || host == "" {
			continue
		}
		if svc := l.ServiceByHostname(host, q.Namespace); svc != nil {
			return Result{Kind: Answer, Host: host, CNAME: true, Addrs: addrs(l, svc, q.Type)}
		}
	}
	return Result{Kind: Forward}
}

// canonical lower-cases name and removes its final dot.
func canonical(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// addrs returns the addresses a query of type t gets for svc: its VIPs, or for a headless service (no VIPs)
// the addresses of its endpoints, of the family t asks for and that the service's IP families allow.
func addrs(l Lookup, svc *state.Service, t Type) []netip.Addr {
	if t == TypeOther {
		return nil
	}
	want4 := t == TypeA
	switch {
	case svc.IPFamilies == state.IPv4Only && !want4, svc.IPFamilies == state.IPv6Only && want4:
		return nil
	}
	var out []netip.Addr
	add := func(a netip.Addr) {
		a = a.Unmap()
		if a.Is4() != want4 {
			return
		}
		for _, o := range out {
			if o == a {
				return
			}
		}
		out = append(out, a)
	}
	if len(svc.Addresses) > 0 {
		for _, na := range svc.Addresses {
			add(na.Addr)
		}
		return out
	}
	for _, w := range l.Endpoints(svc.Key()) {
		if w.Status != state.Healthy {
			continue
		}
		for _, a := range w.Addresses {
			add(a)
		}
	}
	return out
}
