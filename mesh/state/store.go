package state

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// Update is a batch of changes applied atomically by Store.Apply. Every object in it must have passed
// Validate. Removals are applied before upserts of the same kind.
type Update struct {
	Workloads       []*Workload
	RemoveWorkloads []string // UIDs
	Services        []*Service
	RemoveServices  []NamespacedHostname
	Policies        []*Authorization
	RemovePolicies  []string // "<namespace>/<name>"
}

// Empty reports whether u changes nothing.
func (u *Update) Empty() bool {
	return len(u.Workloads)+len(u.RemoveWorkloads)+len(u.Services)+len(u.RemoveServices)+
		len(u.Policies)+len(u.RemovePolicies) == 0
}

// Snapshot is a complete state, used to replace everything at once (a reloaded local file).
type Snapshot struct {
	Workloads []*Workload
	Services  []*Service
	Policies  []*Authorization
}

// Store is the indexed, concurrency-safe state. The zero value is not usable; call NewStore.
//
// Readers take a read lock for the duration of one lookup only. Writers hold the write lock while they
// apply an already converted batch, which costs O(size of the batch); a whole-state replacement builds a
// new index off-lock and swaps it in, so readers never wait for a rebuild.
type Store struct {
	mu      sync.RWMutex
	idx     *index        // guarded by mu
	changed chan struct{} // guarded by mu; closed and replaced on every change
}

// NewStore returns an empty Store.
func NewStore() *Store {
	return &Store{idx: newIndex(), changed: make(chan struct{})}
}

// index holds every table. Values are immutable objects; tables are mutated only under Store.mu.
type index struct {
	workloads map[string]*Workload
	byAddr    map[NetworkAddress][]*Workload
	byNode    map[string]map[string]*Workload
	services  map[NamespacedHostname]*Service
	byVIP     map[NetworkAddress][]*Service
	byHost    map[string][]*Service
	endpoints map[NamespacedHostname]*endpointSet
	policies  map[string]*Authorization
	// nsPolicies holds NAMESPACE-scope policies by namespace; global holds GLOBAL-scope policies.
	nsPolicies map[string][]*Authorization
	global     []*Authorization
	generation uint64
	// dirty lists the endpoint sets touched by the batch being applied, so that apply rebuilds only them.
	dirty []*endpointSet
}

// endpointSet is the set of workloads behind one service. list is rebuilt (copy on write) after each
// batch that touched byUID, so readers may keep the slice they got.
type endpointSet struct {
	byUID map[string]*Workload
	list  []*Workload
	dirty bool
}

func newIndex() *index {
	return &index{
		workloads:  map[string]*Workload{},
		byAddr:     map[NetworkAddress][]*Workload{},
		byNode:     map[string]map[string]*Workload{},
		services:   map[NamespacedHostname]*Service{},
		byVIP:      map[NetworkAddress][]*Service{},
		byHost:     map[string][]*Service{},
		endpoints:  map[NamespacedHostname]*endpointSet{},
		policies:   map[string]*Authorization{},
		nsPolicies: map[string][]*Authorization{},
	}
}

// Apply applies u atomically. Readers see either none or all of it.
func (s *Store) Apply(u *Update) {
	if u.Empty() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.idx.apply(u)
	s.notifyLocked()
}

// Replace replaces the whole state with snap. The new index is built before the lock is taken.
func (s *Store) Replace(snap *Snapshot) {
	idx := newIndex()
	idx.apply(&Update{Workloads: snap.Workloads, Services: snap.Services, Policies: snap.Policies})
	s.mu.Lock()
	defer s.mu.Unlock()
	idx.generation = s.idx.generation + 1
	s.idx = idx
	s.notifyLocked()
}

// notifyLocked wakes every waiter on Changed. Requires s.mu held for writing.
func (s *Store) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Changed returns a channel that is closed at the next change of the state.
func (s *Store) Changed() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changed
}

// Generation returns a counter that increases with every applied change.
func (s *Store) Generation() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.idx.generation
}

func (ix *index) apply(u *Update) {
	ix.generation++
	for _, uid := range u.RemoveWorkloads {
		ix.removeWorkload(uid)
	}
	for _, w := range u.Workloads {
		ix.removeWorkload(w.UID)
		ix.addWorkload(w)
	}
	for _, k := range u.RemoveServices {
		ix.removeService(k)
	}
	for _, svc := range u.Services {
		ix.removeService(svc.Key())
		ix.addService(svc)
	}
	for _, k := range u.RemovePolicies {
		ix.removePolicy(k)
	}
	for _, p := range u.Policies {
		ix.removePolicy(p.Key())
		ix.addPolicy(p)
	}
	for _, es := range ix.dirty {
		if es.dirty {
			es.rebuild()
		}
	}
	clear(ix.dirty)
	ix.dirty = ix.dirty[:0]
}

// markDirty schedules es for a rebuild at the end of the batch.
func (ix *index) markDirty(es *endpointSet) {
	if !es.dirty {
		es.dirty = true
		ix.dirty = append(ix.dirty, es)
	}
}

func (ix *index) addWorkload(w *Workload) {
	ix.workloads[w.UID] = w
	if w.NetworkMode == NetworkStandard {
		for _, a := range w.Addresses {
			k := NetworkAddress{Network: w.Network, Addr: a}
			ix.byAddr[k] = append(ix.byAddr[k], w)
		}
	}
	if w.Node != "" {
		m := ix.byNode[w.Node]
		if m == nil {
			m = map[string]*Workload{}
			ix.byNode[w.Node] = m
		}
		m[w.UID] = w
	}
	for _, ref := range w.Services {
		es := ix.endpoints[ref.Service]
		if es == nil {
			es = &endpointSet{byUID: map[string]*Workload{}}
			ix.endpoints[ref.Service] = es
		}
		es.byUID[w.UID] = w
		ix.markDirty(es)
	}
}

func (ix *index) removeWorkload(uid string) {
	w, ok := ix.workloads[uid]
	if !ok {
		return
	}
	delete(ix.workloads, uid)
	if w.NetworkMode == NetworkStandard {
		for _, a := range w.Addresses {
			k := NetworkAddress{Network: w.Network, Addr: a}
			ws := slices.DeleteFunc(slices.Clone(ix.byAddr[k]), func(x *Workload) bool { return x.UID == uid })
			if len(ws) == 0 {
				delete(ix.byAddr, k)
			} else {
				ix.byAddr[k] = ws
			}
		}
	}
	if m := ix.byNode[w.Node]; m != nil {
		delete(m, uid)
		if len(m) == 0 {
			delete(ix.byNode, w.Node)
		}
	}
	for _, ref := range w.Services {
		if es := ix.endpoints[ref.Service]; es != nil {
			delete(es.byUID, uid)
			ix.markDirty(es)
			if len(es.byUID) == 0 {
				delete(ix.endpoints, ref.Service)
			}
		}
	}
}

func (es *endpointSet) rebuild() {
	list := make([]*Workload, 0, len(es.byUID))
	for _, w := range es.byUID {
		list = append(list, w)
	}
	// A stable order keeps load balancing and dumps deterministic for a given state.
	slices.SortFunc(list, func(a, b *Workload) int { return strings.Compare(a.UID, b.UID) })
	es.list = list
	es.dirty = false
}

func (ix *index) addService(svc *Service) {
	k := svc.Key()
	ix.services[k] = svc
	for _, a := range svc.Addresses {
		ix.byVIP[a] = append(ix.byVIP[a], svc)
	}
	ix.byHost[svc.Hostname] = append(ix.byHost[svc.Hostname], svc)
}

func (ix *index) removeService(k NamespacedHostname) {
	svc, ok := ix.services[k]
	if !ok {
		return
	}
	delete(ix.services, k)
	for _, a := range svc.Addresses {
		ss := slices.DeleteFunc(slices.Clone(ix.byVIP[a]), func(x *Service) bool { return x == svc })
		if len(ss) == 0 {
			delete(ix.byVIP, a)
		} else {
			ix.byVIP[a] = ss
		}
	}
	hs := slices.DeleteFunc(slices.Clone(ix.byHost[svc.Hostname]), func(x *Service) bool { return x == svc })
	if len(hs) == 0 {
		delete(ix.byHost, svc.Hostname)
	} else {
		ix.byHost[svc.Hostname] = hs
	}
}

func (ix *index) addPolicy(p *Authorization) {
	ix.policies[p.Key()] = p
	switch p.Scope {
	case ScopeGlobal:
		ix.global = append(slices.Clip(ix.global), p)
	case ScopeNamespace:
		ix.nsPolicies[p.Namespace] = append(slices.Clip(ix.nsPolicies[p.Namespace]), p)
	}
}

func (ix *index) removePolicy(key string) {
	p, ok := ix.policies[key]
	if !ok {
		return
	}
	delete(ix.policies, key)
	drop := func(x *Authorization) bool { return x == p }
	switch p.Scope {
	case ScopeGlobal:
		ix.global = slices.DeleteFunc(slices.Clone(ix.global), drop)
	case ScopeNamespace:
		l := slices.DeleteFunc(slices.Clone(ix.nsPolicies[p.Namespace]), drop)
		if len(l) == 0 {
			delete(ix.nsPolicies, p.Namespace)
		} else {
			ix.nsPolicies[p.Namespace] = l
		}
	}
}

// Workload returns the workload with the given UID, or nil.
func (s *Store) Workload(uid string) *Workload {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.idx.workloads[uid]
}

// WorkloadByAddr returns the workload that owns addr, or nil. When several claim it, a Kubernetes pod
// is preferred, then an HBONE workload, as ztunnel does.
func (s *Store) WorkloadByAddr(addr NetworkAddress) *Workload {
	s.mu.RLock()
	ws := s.idx.byAddr[addr]
	s.mu.RUnlock()
	switch len(ws) {
	case 0:
		return nil
	case 1:
		return ws[0]
	}
	best, bestScore := ws[0], -1
	for _, w := range ws {
		score := 0
		if strings.Contains(w.UID, "//Pod/") {
			score += 2
		}
		if w.Protocol == TunnelHBONE {
			score++
		}
		if score > bestScore {
			best, bestScore = w, score
		}
	}
	return best
}

// ServiceByVIP returns the service with VIP addr that a client in clientNamespace may use, or nil.
// A service in the client's namespace wins, then a canonical one, then the first one seen.
func (s *Store) ServiceByVIP(addr NetworkAddress, clientNamespace string) *Service {
	s.mu.RLock()
	ss := s.idx.byVIP[addr]
	s.mu.RUnlock()
	return pickService(ss, clientNamespace)
}

// ServiceByHostname returns the service with FQDN host that a client in clientNamespace may use, or nil,
// with the same preferences as ServiceByVIP.
func (s *Store) ServiceByHostname(host, clientNamespace string) *Service {
	s.mu.RLock()
	ss := s.idx.byHost[host]
	s.mu.RUnlock()
	return pickService(ss, clientNamespace)
}

func pickService(ss []*Service, clientNamespace string) *Service {
	var best *Service
	for _, svc := range ss {
		if svc.Visibility == VisibilityNamespace && svc.Namespace != clientNamespace {
			continue
		}
		switch {
		case svc.Namespace == clientNamespace:
			return svc
		case best == nil, svc.Canonical && !best.Canonical:
			best = svc
		}
	}
	return best
}

// Service returns the service with the given key, or nil.
func (s *Store) Service(key NamespacedHostname) *Service {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.idx.services[key]
}

// Endpoints returns the workloads behind the service key (whether or not the service itself is known
// yet), sorted by UID. Each one's ports for the service are in its ServiceRef(key). The slice is shared
// and must not be modified.
func (s *Store) Endpoints(key NamespacedHostname) []*Workload {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if es := s.idx.endpoints[key]; es != nil {
		return es.list
	}
	return nil
}

// Policy returns the policy with key "<namespace>/<name>", or nil.
func (s *Store) Policy(key string) *Authorization {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.idx.policies[key]
}

// PoliciesFor returns the policies that apply to connections towards w: GLOBAL ones, NAMESPACE ones of
// w's namespace and the WORKLOAD_SELECTOR ones w names. Unknown names are skipped.
func (s *Store) PoliciesFor(w *Workload) []*Authorization {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*Authorization, 0, len(s.idx.global)+len(s.idx.nsPolicies[w.Namespace])+len(w.AuthorizationPolicies))
	out = append(out, s.idx.global...)
	out = append(out, s.idx.nsPolicies[w.Namespace]...)
	for _, name := range w.AuthorizationPolicies {
		if p := s.idx.policies[name]; p != nil && p.Scope == ScopeWorkloadSelector {
			out = append(out, p)
		}
	}
	return out
}

// WorkloadsOnNode returns the workloads scheduled on node, sorted by UID.
func (s *Store) WorkloadsOnNode(node string) []*Workload {
	s.mu.RLock()
	out := make([]*Workload, 0, len(s.idx.byNode[node]))
	for _, w := range s.idx.byNode[node] {
		out = append(out, w)
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *Workload) int { return strings.Compare(a.UID, b.UID) })
	return out
}

// Workloads returns every workload sorted by namespace, name, UID.
func (s *Store) Workloads() []*Workload {
	s.mu.RLock()
	out := make([]*Workload, 0, len(s.idx.workloads))
	for _, w := range s.idx.workloads {
		out = append(out, w)
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *Workload) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name), strings.Compare(a.UID, b.UID))
	})
	return out
}

// Services returns every service sorted by namespace, name, hostname.
func (s *Store) Services() []*Service {
	s.mu.RLock()
	out := make([]*Service, 0, len(s.idx.services))
	for _, svc := range s.idx.services {
		out = append(out, svc)
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *Service) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name), strings.Compare(a.Hostname, b.Hostname))
	})
	return out
}

// Policies returns every policy sorted by namespace and name.
func (s *Store) Policies() []*Authorization {
	s.mu.RLock()
	out := make([]*Authorization, 0, len(s.idx.policies))
	for _, p := range s.idx.policies {
		out = append(out, p)
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *Authorization) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	return out
}

// Counts returns the number of workloads, services and policies.
func (s *Store) Counts() (workloads, services, policies int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.idx.workloads), len(s.idx.services), len(s.idx.policies)
}

// AddrOf is a convenience for building a lookup key on the default network.
func AddrOf(ip netip.Addr) NetworkAddress { return NetworkAddress{Addr: ip} }
