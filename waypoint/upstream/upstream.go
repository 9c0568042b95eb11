package upstream

import (
	"context"
	"hash/fnv"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/waypoint/model"
)

// Endpoint is one destination: a workload and its address (pod IP and target port).
type Endpoint struct {
	Workload *state.Workload
	Addr     netip.AddrPort
}

type epState struct {
	active       int
	consec5xx    int
	consecGW     int
	ejections    int
	ejectedUntil time.Time
}

// Cluster is one destination (service host, port and subset).
type Cluster struct {
	Key string

	mu      sync.Mutex
	policy  model.TrafficPolicy         // guarded by mu
	eps     map[netip.AddrPort]*epState // guarded by mu
	active  int                         // guarded by mu; admitted requests in flight
	waiters []chan struct{}             // guarded by mu; pending requests, FIFO
	rr      uint64                      // guarded by mu
	rel     func()                      // c.release, made once (Admit returns it to every request)
}

// Manager holds clusters by key.
type Manager struct {
	mu       sync.Mutex
	clusters map[string]*Cluster // guarded by mu
}

// Cluster returns the cluster for key with policy p, creating it or updating its policy.
func (m *Manager) Cluster(key string, p model.TrafficPolicy) *Cluster {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.clusters == nil {
		m.clusters = map[string]*Cluster{}
	}
	c := m.clusters[key]
	if c == nil {
		c = &Cluster{Key: key, eps: map[netip.AddrPort]*epState{}}
		c.rel = c.release
		m.clusters[key] = c
	}
	c.mu.Lock()
	c.policy = p
	c.mu.Unlock()
	return c
}

// Policy returns the cluster's current policy.
func (c *Cluster) Policy() model.TrafficPolicy {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.policy
}

// Admit applies the connection pool limits: a request runs when fewer than the limit are in flight
// (MaxRequests, and MaxConnections for HTTP/1.1 where each request holds a connection); otherwise it
// waits as pending, up to MaxPending waiters (0: unlimited), else fails with ErrOverflow. MaxRequests
// overflow fails at once. The returned release must be called when the request ends.
func (c *Cluster) Admit(ctx context.Context, http1 bool) (release func(), err error) {
	c.mu.Lock()
	p := c.policy.Pool
	limit := p.MaxRequests
	if http1 && p.MaxConnections > 0 && (limit == 0 || p.MaxConnections < limit) {
		limit = p.MaxConnections
	}
	if limit == 0 || c.active < limit {
		c.active++
		c.mu.Unlock()
		return c.rel, nil
	}
	queueable := http1 && p.MaxConnections > 0 && p.MaxConnections == limit
	if !queueable || p.MaxPending > 0 && len(c.waiters) >= p.MaxPending {
		c.mu.Unlock()
		return nil, ErrOverflow
	}
	ch := make(chan struct{})
	c.waiters = append(c.waiters, ch)
	c.mu.Unlock()
	select {
	case <-ch:
		return c.rel, nil // the slot was handed over by release
	case <-ctx.Done():
		c.mu.Lock()
		for i, w := range c.waiters {
			if w == ch {
				c.waiters = append(c.waiters[:i], c.waiters[i+1:]...)
				c.mu.Unlock()
				return nil, ctx.Err()
			}
		}
		c.mu.Unlock()
		<-ch // handed over concurrently: give it back
		c.release()
		return nil, ctx.Err()
	}
}

func (c *Cluster) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.waiters) > 0 {
		w := c.waiters[0]
		c.waiters = c.waiters[1:]
		close(w) // the slot passes to the waiter; active is unchanged
		return
	}
	c.active--
}

// Active returns the admitted requests in flight and the pending ones.
func (c *Cluster) Active() (active, pending int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.active, len(c.waiters)
}

// PickRequest is the per-request input of Pick.
type PickRequest struct {
	// HashKey is the consistent-hash key (header, cookie, source IP or query value), "" when unset.
	HashKey string
	// Exclude lists endpoints already tried (retries go elsewhere when possible).
	Exclude []netip.AddrPort
	Now     time.Time
	// Rand returns a uniform integer in [0, n); nil uses math/rand/v2.
	Rand func(n uint64) uint64
}

// Pick chooses an endpoint among eps with the cluster's load balancer, skipping ejected endpoints
// (unless all are) and excluded ones (unless all are). It counts the request as active on it; call
// Done with the result.
func (c *Cluster) Pick(eps []Endpoint, r PickRequest) (Endpoint, error) {
	if len(eps) == 0 {
		return Endpoint{}, ErrNoHealthy
	}
	rnd := r.Rand
	if rnd == nil {
		rnd = rand.Uint64N
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cands := make([]int, 0, len(eps))
	for pass := 0; pass < 3 && len(cands) == 0; pass++ {
		for i, e := range eps {
			st := c.eps[e.Addr]
			if pass < 2 && st != nil && r.Now.Before(st.ejectedUntil) {
				continue
			}
			if pass < 1 && excluded(r.Exclude, e.Addr) {
				continue
			}
			cands = append(cands, i)
		}
	}
	var pick int
	switch c.policy.LB.Kind {
	case model.LBRoundRobin:
		pick = cands[c.rr%uint64(len(cands))]
		c.rr++
	case model.LBRandom:
		pick = cands[rnd(uint64(len(cands)))]
	case model.LBConsistentHash:
		if r.HashKey == "" {
			pick = cands[rnd(uint64(len(cands)))]
			break
		}
		// Rendezvous hashing: stable per key, minimal movement when endpoints change.
		var best uint64
		for _, i := range cands {
			h := fnv.New64a()
			h.Write([]byte(r.HashKey))
			h.Write([]byte{0})
			h.Write([]byte(eps[i].Addr.String()))
			if s := h.Sum64(); s >= best {
				best, pick = s, i
			}
		}
	default: // least request: power of two choices
		a := cands[rnd(uint64(len(cands)))]
		b := cands[rnd(uint64(len(cands)))]
		pick = a
		if c.activeOnLocked(eps[b].Addr) < c.activeOnLocked(eps[a].Addr) {
			pick = b
		}
	}
	e := eps[pick]
	c.stateLocked(e.Addr).active++
	return e, nil
}

func excluded(ex []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range ex {
		if x == a {
			return true
		}
	}
	return false
}

func (c *Cluster) activeOnLocked(a netip.AddrPort) int {
	if st := c.eps[a]; st != nil {
		return st.active
	}
	return 0
}

func (c *Cluster) stateLocked(a netip.AddrPort) *epState {
	st := c.eps[a]
	if st == nil {
		st = &epState{}
		c.eps[a] = st
	}
	return st
}

// Outcome is the result of one attempt, for outlier detection.
type Outcome struct {
	Status int
	// ConnectFailure, Reset and Timeout are local-origin failures (counted as gateway errors).
	ConnectFailure, Reset, Timeout bool
}

func (o Outcome) gatewayError() bool {
	return o.ConnectFailure || o.Reset || o.Timeout || o.Status == 502 || o.Status == 503 || o.Status == 504
}

func (o Outcome) serverError() bool { return o.gatewayError() || o.Status >= 500 }

// Done ends an attempt on e and updates outlier detection; it reports whether e was ejected now.
func (c *Cluster) Done(e Endpoint, o Outcome, now time.Time, total int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.stateLocked(e.Addr)
	if st.active > 0 {
		st.active--
	}
	od := c.policy.Outlier
	if od == nil {
		return false
	}
	if o.serverError() {
		st.consec5xx++
	} else {
		st.consec5xx = 0
	}
	if o.gatewayError() {
		st.consecGW++
	} else {
		st.consecGW = 0
	}
	trip := od.Consecutive5xx > 0 && st.consec5xx >= od.Consecutive5xx ||
		od.ConsecutiveGateway > 0 && st.consecGW >= od.ConsecutiveGateway
	if !trip || now.Before(st.ejectedUntil) {
		return false
	}
	// Envoy ejects at least one host regardless of max_ejection_percent.
	ejected := 0
	for _, s := range c.eps {
		if now.Before(s.ejectedUntil) {
			ejected++
		}
	}
	maxEj := max(1, total*od.MaxEjectionPercent/100)
	if ejected >= maxEj {
		return false
	}
	st.ejections++
	st.ejectedUntil = now.Add(od.BaseEjection * time.Duration(st.ejections))
	st.consec5xx, st.consecGW = 0, 0
	return true
}

// Ejected reports whether the endpoint at a is ejected at now.
func (c *Cluster) Ejected(a netip.AddrPort, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.eps[a]
	return st != nil && now.Before(st.ejectedUntil)
}
