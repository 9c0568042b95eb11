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
	// byAddr holds the addresses one workload claims; sharedAddr those several claim, in the order they
	// were added (WorkloadByAddr prefers the first among equals). An address is in exactly one of them.
	// Most addresses have one owner, and a map to a pointer costs a third of a map to a slice.
	byAddr     map[NetworkAddress]*Workload
	sharedAddr map[NetworkAddress][]*Workload
	// byNode indexes the workloads of the nodes WorkloadsOnNode was asked about (an agent asks about its
	// own): a map per node for every node cost 5% of the store at a million workloads (41 MB), for
	// queries no process makes. A watched node keeps its (possibly empty) map.
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

// endpointSet is the set of workloads behind one service, sorted by UID. list is rebuilt (copy on write)
// after each batch that touched it, so readers may keep the slice they got. The set keeps no map by UID:
// the batch's changes are staged in pending and merged into a new list at the end of the batch, which
// costs O(len(list) + changes) as the rebuild did before.
type endpointSet struct {
	key  NamespacedHostname
	list []*Workload
	// pending holds the batch's changes in order (a nil workload removes the UID); nil outside apply.
	pending []endpointChange
}

type endpointChange struct {
	uid string
	w   *Workload
}

func newIndex() *index {
	return &index{
		workloads:  map[string]*Workload{},
		byAddr:     map[NetworkAddress]*Workload{},
		sharedAddr: map[NetworkAddress][]*Workload{},
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
	if n := len(u.Workloads); n >= presizeThreshold && len(ix.workloads) == 0 {
		// A first full response (or a replacement): size the largest tables once instead of growing them.
		ix.workloads = make(map[string]*Workload, n)
		ix.byAddr = make(map[NetworkAddress]*Workload, n)
	}
	for _, uid := range u.RemoveWorkloads {
		ix.removeWorkload(uid)
	}
	if !ix.bulkAddWorkloads(u.Workloads) {
		for _, w := range u.Workloads {
			ix.removeWorkload(w.UID)
			ix.addWorkload(w)
		}
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
		es.rebuild()
		if len(es.list) == 0 && ix.endpoints[es.key] == es {
			delete(ix.endpoints, es.key)
		}
	}
	clear(ix.dirty)
	ix.dirty = ix.dirty[:0]
}

// presizeThreshold is the batch size from which apply sizes empty tables up front and fills them in
// parallel (bulkAddWorkloads).
const presizeThreshold = 1024

// bulkAddWorkloads adds ws to an index that holds no workload (istiod's first response, or a
// replacement), filling the three independent tables at once: by UID; by address; by node and the
// endpoint sets. Each goroutine owns its tables and walks ws in order, so the result is the one the
// serial loop gives, provided no UID repeats; if one does, the work is undone and it returns false, and
// the serial loop (where the last copy wins) runs instead. It returns false without doing anything for
// small batches or a non-empty index.
func (ix *index) bulkAddWorkloads(ws []*Workload) bool {
	if len(ws) < presizeThreshold || len(ix.workloads) != 0 || len(ix.byAddr) != 0 || len(ix.sharedAddr) != 0 ||
		len(ix.endpoints) != 0 || len(ix.dirty) != 0 {
		return false
	}
	var (
		wg     sync.WaitGroup
		unique = true
	)
	wg.Go(func() {
		for _, w := range ws {
			if _, dup := ix.workloads[w.UID]; dup {
				unique = false
				return
			}
			ix.workloads[w.UID] = w
		}
	})
	wg.Go(func() {
		for _, w := range ws {
			if w.NetworkMode == NetworkStandard {
				for _, a := range w.Addresses {
					ix.addAddr(NetworkAddress{Network: w.Network, Addr: a}, w)
				}
			}
		}
	})
	for _, w := range ws {
		ix.addNodeAndEndpoints(w)
	}
	wg.Wait()
	if unique {
		return true
	}
	clear(ix.workloads)
	clear(ix.byAddr)
	clear(ix.sharedAddr)
	for _, m := range ix.byNode {
		clear(m) // the watches stay
	}
	clear(ix.endpoints)
	clear(ix.dirty)
	ix.dirty = ix.dirty[:0]
	return false
}

// stage records that uid joins (w set) or leaves (w nil) es, for the rebuild at the end of the batch.
func (ix *index) stage(es *endpointSet, uid string, w *Workload) {
	if es.pending == nil {
		ix.dirty = append(ix.dirty, es)
	}
	es.pending = append(es.pending, endpointChange{uid: uid, w: w})
}

func (ix *index) addWorkload(w *Workload) {
	ix.workloads[w.UID] = w
	if w.NetworkMode == NetworkStandard {
		for _, a := range w.Addresses {
			ix.addAddr(NetworkAddress{Network: w.Network, Addr: a}, w)
		}
	}
	ix.addNodeAndEndpoints(w)
}

// addNodeAndEndpoints indexes w by node and stages it into its services' endpoint sets.
func (ix *index) addNodeAndEndpoints(w *Workload) {
	if m := ix.byNode[w.Node]; m != nil && w.Node != "" {
		m[w.UID] = w
	}
	for _, ref := range w.Services {
		es := ix.endpoints[ref.Service]
		if es == nil {
			es = &endpointSet{key: ref.Service}
			ix.endpoints[ref.Service] = es
		}
		ix.stage(es, w.UID, w)
	}
}

func (ix *index) addAddr(k NetworkAddress, w *Workload) {
	if ws, ok := ix.sharedAddr[k]; ok {
		ix.sharedAddr[k] = append(slices.Clip(ws), w)
		return
	}
	if first, ok := ix.byAddr[k]; ok {
		delete(ix.byAddr, k)
		ix.sharedAddr[k] = []*Workload{first, w}
		return
	}
	ix.byAddr[k] = w
}

func (ix *index) removeAddr(k NetworkAddress, uid string) {
	if ws, ok := ix.sharedAddr[k]; ok {
		ws = slices.DeleteFunc(slices.Clone(ws), func(x *Workload) bool { return x.UID == uid })
		switch len(ws) {
		case 0:
			delete(ix.sharedAddr, k)
		case 1:
			delete(ix.sharedAddr, k)
			ix.byAddr[k] = ws[0]
		default:
			ix.sharedAddr[k] = ws
		}
		return
	}
	if w, ok := ix.byAddr[k]; ok && w.UID == uid {
		delete(ix.byAddr, k)
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
			ix.removeAddr(NetworkAddress{Network: w.Network, Addr: a}, uid)
		}
	}
	if m := ix.byNode[w.Node]; m != nil {
		delete(m, uid)
	}
	for _, ref := range w.Services {
		if es := ix.endpoints[ref.Service]; es != nil {
			ix.stage(es, uid, nil)
		}
	}
}

// rebuild merges the staged changes into a new list, sorted by UID (a stable order keeps load balancing
// and dumps deterministic for a given state). For a UID changed several times the last change wins.
func (es *endpointSet) rebuild() {
	ch := es.pending
	es.pending = nil
	// Sort the changes by UID keeping their order among equals, then keep the last of each UID.
	slices.SortStableFunc(ch, func(a, b endpointChange) int { return strings.Compare(a.uid, b.uid) })
	n := 0
	for i := range ch {
		if i+1 < len(ch) && ch[i+1].uid == ch[i].uid {
			continue
		}
		ch[n] = ch[i]
		n++
	}
	ch = ch[:n]
	old := es.list
	list := make([]*Workload, 0, len(old)+len(ch))
	i, j := 0, 0
	for i < len(old) || j < len(ch) {
		switch {
		case j == len(ch) || (i < len(old) && old[i].UID < ch[j].uid):
			list = append(list, old[i])
			i++
		default:
			if i < len(old) && old[i].UID == ch[j].uid {
				i++ // replaced or removed by the change
			}
			if ch[j].w != nil {
				list = append(list, ch[j].w)
			}
			j++
		}
	}
	if len(list) == 0 {
		list = nil
	}
	es.list = slices.Clip(list)
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
	w, ok := s.idx.byAddr[addr]
	ws := s.idx.sharedAddr[addr]
	s.mu.RUnlock()
	if ok {
		return w
	}
	if len(ws) == 0 {
		return nil
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

// WorkloadsOnNode returns the workloads scheduled on node, sorted by UID. The first call for a node scans
// every workload and indexes the node from then on (byNode).
func (s *Store) WorkloadsOnNode(node string) []*Workload {
	s.mu.RLock()
	m, ok := s.idx.byNode[node]
	if !ok {
		s.mu.RUnlock()
		s.mu.Lock()
		if _, ok := s.idx.byNode[node]; !ok {
			m := map[string]*Workload{}
			if node != "" {
				for uid, w := range s.idx.workloads {
					if w.Node == node {
						m[uid] = w
					}
				}
			}
			s.idx.byNode[node] = m
		}
		s.mu.Unlock()
		s.mu.RLock()
		m = s.idx.byNode[node]
	}
	out := make([]*Workload, 0, len(m))
	for _, w := range m {
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
