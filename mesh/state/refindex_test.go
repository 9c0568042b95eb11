package state

// This file keeps the store's index as it was before issue 15 (a slice per address, a map per endpoint
// set), as the reference TestIndexMatchesReference compares the compact index with.

import (
	"slices"
	"strings"
)

// refIndex holds every table. Values are immutable objects; tables are mutated only under Store.mu.
type refIndex struct {
	workloads map[string]*Workload
	byAddr    map[NetworkAddress][]*Workload
	byNode    map[string]map[string]*Workload
	services  map[NamespacedHostname]*Service
	byVIP     map[NetworkAddress][]*Service
	byHost    map[string][]*Service
	endpoints map[NamespacedHostname]*refEndpointSet
	policies  map[string]*Authorization
	// nsPolicies holds NAMESPACE-scope policies by namespace; global holds GLOBAL-scope policies.
	nsPolicies map[string][]*Authorization
	global     []*Authorization
	generation uint64
	// dirty lists the endpoint sets touched by the batch being applied, so that apply rebuilds only them.
	dirty []*refEndpointSet
}

// refEndpointSet is the set of workloads behind one service. list is rebuilt (copy on write) after each
// batch that touched byUID, so readers may keep the slice they got.
type refEndpointSet struct {
	byUID map[string]*Workload
	list  []*Workload
	dirty bool
}

func newRefIndex() *refIndex {
	return &refIndex{
		workloads:  map[string]*Workload{},
		byAddr:     map[NetworkAddress][]*Workload{},
		byNode:     map[string]map[string]*Workload{},
		services:   map[NamespacedHostname]*Service{},
		byVIP:      map[NetworkAddress][]*Service{},
		byHost:     map[string][]*Service{},
		endpoints:  map[NamespacedHostname]*refEndpointSet{},
		policies:   map[string]*Authorization{},
		nsPolicies: map[string][]*Authorization{},
	}
}

func (ix *refIndex) apply(u *Update) {
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
func (ix *refIndex) markDirty(es *refEndpointSet) {
	if !es.dirty {
		es.dirty = true
		ix.dirty = append(ix.dirty, es)
	}
}

func (ix *refIndex) addWorkload(w *Workload) {
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
			es = &refEndpointSet{byUID: map[string]*Workload{}}
			ix.endpoints[ref.Service] = es
		}
		es.byUID[w.UID] = w
		ix.markDirty(es)
	}
}

func (ix *refIndex) removeWorkload(uid string) {
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

func (es *refEndpointSet) rebuild() {
	list := make([]*Workload, 0, len(es.byUID))
	for _, w := range es.byUID {
		list = append(list, w)
	}
	// A stable order keeps load balancing and dumps deterministic for a given state.
	slices.SortFunc(list, func(a, b *Workload) int { return strings.Compare(a.UID, b.UID) })
	es.list = list
	es.dirty = false
}

func (ix *refIndex) addService(svc *Service) {
	k := svc.Key()
	ix.services[k] = svc
	for _, a := range svc.Addresses {
		ix.byVIP[a] = append(ix.byVIP[a], svc)
	}
	ix.byHost[svc.Hostname] = append(ix.byHost[svc.Hostname], svc)
}

func (ix *refIndex) removeService(k NamespacedHostname) {
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

func (ix *refIndex) addPolicy(p *Authorization) {
	ix.policies[p.Key()] = p
	switch p.Scope {
	case ScopeGlobal:
		ix.global = append(slices.Clip(ix.global), p)
	case ScopeNamespace:
		ix.nsPolicies[p.Namespace] = append(slices.Clip(ix.nsPolicies[p.Namespace]), p)
	}
}

func (ix *refIndex) removePolicy(key string) {
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

// refWorkloadByAddr is Store.WorkloadByAddr as it was.
func refWorkloadByAddr(ix *refIndex, addr NetworkAddress) *Workload {
	ws := ix.byAddr[addr]
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
