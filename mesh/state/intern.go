package state

import (
	"strings"
	"unique"
)

// Interner deduplicates the strings that many workloads and services repeat (namespaces, service
// accounts, nodes, cluster IDs, trust domains, networks, waypoint and service names, identities), so
// that a million workloads hold one copy of each instead of a million.
//
// The zero value takes its canonical copies from the unique package: they are shared by every such
// Interner and by later updates, and released by the runtime once no object refers to them, so it never
// pins a string. NewLocalInterner's Interner makes its own copies instead (see there): cheaper, for a
// decoder that lives as long as the state it fills.
//
// Either way an Interner keeps a cache looked up with the bytes being decoded, so that a hit allocates
// nothing. The cache holds at most maxInterned entries (it is cleared when full). An Interner is not safe
// for concurrent use: give each decoding goroutine its own.
type Interner struct {
	m map[string]string
	// local: a miss is copied, not made canonical through unique.Make.
	local bool
}

// NewLocalInterner returns an Interner whose canonical copies are its own: a miss costs one allocation,
// where unique.Make costs a global lookup and a weak pointer that every collection then tracks (at a
// million workloads, 20% of the first response's CPU). In exchange the Interner holds each string it saw
// until its cache fills and is cleared, so up to maxInterned strings the state no longer uses (tens of
// MB at worst), and strings that two local Interners both saw have two copies. Keep one per decoding
// goroutine for the life of the store it fills (config/xds's AddressHandler does), so that later updates
// share the copies the first response made.
func NewLocalInterner() *Interner { return &Interner{local: true} }

// maxInterned bounds an Interner's cache.
const maxInterned = 1 << 19

// String returns the canonical copy of s.
func (in *Interner) String(s string) string {
	if s == "" {
		return ""
	}
	if c, ok := in.m[s]; ok {
		return c
	}
	var c string
	if in.local {
		c = strings.Clone(s)
	} else {
		c = unique.Make(s).Value()
	}
	in.add(c)
	return c
}

// Bytes returns the canonical string equal to b. It allocates only when b was not seen before.
func (in *Interner) Bytes(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if c, ok := in.m[string(b)]; ok {
		return c
	}
	c := string(b)
	if !in.local {
		c = unique.Make(c).Value()
	}
	in.add(c)
	return c
}

func (in *Interner) add(c string) {
	if in.m == nil {
		in.m = map[string]string{}
	} else if len(in.m) >= maxInterned {
		clear(in.m)
	}
	in.m[c] = c
}

// identity returns the interned SPIFFE ID of td, ns and sa (defaults already applied), building it in a
// stack buffer so that a known identity allocates nothing.
func (in *Interner) identity(td, ns, sa string) string {
	var buf [128]byte
	b := append(buf[:0], "spiffe://"...)
	b = append(b, td...)
	b = append(b, "/ns/"...)
	b = append(b, ns...)
	b = append(b, "/sa/"...)
	b = append(b, sa...)
	return in.Bytes(b)
}

// Intern replaces w's repeated strings by their canonical copies. Call it before ValidateWith.
func (w *Workload) Intern(in *Interner) {
	w.Namespace = in.String(w.Namespace)
	w.Network = in.String(w.Network)
	w.TrustDomain = in.String(w.TrustDomain)
	w.ServiceAccount = in.String(w.ServiceAccount)
	w.Node = in.String(w.Node)
	w.CanonicalName = in.String(w.CanonicalName)
	w.CanonicalRevision = in.String(w.CanonicalRevision)
	if w.WorkloadName == w.Name {
		w.WorkloadName = w.Name
	} else {
		w.WorkloadName = in.String(w.WorkloadName)
	}
	w.ClusterID = in.String(w.ClusterID)
	w.Locality = Locality{Region: in.String(w.Locality.Region), Zone: in.String(w.Locality.Zone),
		Subzone: in.String(w.Locality.Subzone)}
	for _, g := range []*GatewayAddress{w.Waypoint, w.NetworkGateway} {
		if g != nil {
			g.intern(in)
		}
	}
	for i := range w.Services {
		w.Services[i].Service = w.Services[i].Service.intern(in)
	}
	for i, p := range w.AuthorizationPolicies {
		w.AuthorizationPolicies[i] = in.String(p)
	}
}

// ValidateWith is Validate, with the identity it computes interned through in.
func (w *Workload) ValidateWith(in *Interner) error { return w.validate(in) }

func (g *GatewayAddress) intern(in *Interner) {
	g.Hostname = g.Hostname.intern(in)
	g.Address.Network = in.String(g.Address.Network)
}

func (n NamespacedHostname) intern(in *Interner) NamespacedHostname {
	return NamespacedHostname{Namespace: in.String(n.Namespace), Hostname: in.String(n.Hostname)}
}

// Intern replaces s's repeated strings by their canonical copies.
func (s *Service) Intern(in *Interner) {
	s.Namespace = in.String(s.Namespace)
	for i := range s.Addresses {
		s.Addresses[i].Network = in.String(s.Addresses[i].Network)
	}
	if s.Waypoint != nil {
		s.Waypoint.intern(in)
	}
}
