package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/mesh/route"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// On-demand xDS (Config.XDSOnDemand, ztunnel's XDS_ON_DEMAND): istiod pushes only this node's workloads,
// so the first connection to any other address finds nothing in the state. ztunnel then asks istiod for
// the address ("<network>/<ip>", the alias istiod gives workloads and service VIPs), waits for the answer
// and looks again; it does the same for the source workload of an inbound connection. The agent does the
// same, with bounds ztunnel does not have: one fetch per address at a time (concurrent connections share
// it), a wait of at most Config.XDSOnDemandTimeout, a brief negative cache (so a pod scanning addresses
// costs istiod one request per address and window, not one per connection) and a cap on fetches in flight.
// Whatever is still unknown after that is what ztunnel does with an unknown address: passthrough outbound,
// no source workload inbound.
const (
	// DefaultXDSOnDemandTimeout bounds the wait for istiod's answer.
	DefaultXDSOnDemandTimeout = 5 * time.Second
	// onDemandNegativeTTL is how long an address istiod did not know (or did not answer for) is not asked again.
	onDemandNegativeTTL = 2 * time.Second
	// onDemandMaxNegative bounds the negative cache; onDemandMaxInFlight the fetches waiting for istiod.
	onDemandMaxNegative = 4096
	onDemandMaxInFlight = 64
)

// demandKey is the pure part of the outbound decision: whether the plan for a connection missed something
// istiod may have, and then the on-demand key to ask for. Three misses ask:
//   - the source is not a known workload (a pod captured before istiod pushed it): ask for
//     "<network>/<source ip>", as ztunnel's shared-proxy outbound fetches its source workload;
//   - the original destination is not in the state (passthrough as not in the mesh): ask for
//     "<network>/<ip>";
//   - the waypoint the destination uses is unknown (in on-demand mode istiod sends the waypoint service only
//     when asked): ask for its "<namespace>/<hostname>" or "<network>/<ip>", as ztunnel's fetch_destination
//     does for a service's waypoint.
//
// A plan that found what it needed, or refused the connection for another reason, asks nothing.
func demandKey(network string, p *route.Plan, r *route.Request) (string, bool) {
	switch {
	case p.Reason == route.ReasonUnknownSource && p.Path == route.PathReject && r.SourceIP.IsValid():
		return addressKey(network, r.SourceIP), true
	case p.Reason == route.ReasonNotInMesh && p.Path == route.PathPassthrough:
		return addressKey(network, r.Destination.Addr()), true
	case p.Reason == route.ReasonUnknownWaypoint && p.Path == route.PathReject && p.Waypoint != nil:
		return p.Waypoint.Destination(), true
	}
	return "", false
}

// maxDemandRounds bounds the lookups of one connection: its source, its destination, then that
// destination's waypoint.
const maxDemandRounds = 3

// demandPlan asks istiod for what plan missed (demandKey) and plans again, up to maxDemandRounds times;
// it returns the last plan, with req.Source updated when the source was what it asked for. Only the miss
// path gets here.
func (o *outbound) demandPlan(ctx context.Context, req *route.Request, plan route.Plan) route.Plan {
	for range maxDemandRounds {
		key, ask := demandKey(o.network, &plan, req)
		if !ask || !o.demand.fetch(ctx, key) {
			break
		}
		// istiod had it: the state holds it now.
		if plan.Reason == route.ReasonUnknownSource {
			if req.Source = o.localWorkload(req.SourceIP); req.Source == nil {
				break // a workload of another node: still refused
			}
		}
		plan = route.Build(o.store, req)
	}
	return plan
}

// addressKey is istiod's on-demand alias of an address: "<network>/<ip>".
func addressKey(network string, ip netip.Addr) string { return network + "/" + ip.Unmap().String() }

// demandAction is what to do with one request for a key.
type demandAction uint8

const (
	demandFetch    demandAction = iota // ask istiod (this caller leads the fetch)
	demandJoin                         // a fetch for the key is in flight: wait for it
	demandNegative                     // istiod did not know the key a moment ago: do not ask
	demandLimited                      // too many fetches in flight: do not ask
)

// demandEntry is what the agent knows about one key when a connection needs it.
type demandEntry struct {
	inFlight      bool      // a fetch for the key is running
	negativeUntil time.Time // the key is cached as unknown until then (zero: not cached)
}

// decideDemand is the pure decision for one request: join a running fetch, skip a key cached as unknown,
// refuse when inFlight fetches reach the bound, else fetch.
func decideDemand(now time.Time, e demandEntry, inFlight, maxInFlight int) demandAction {
	switch {
	case e.inFlight:
		return demandJoin
	case now.Before(e.negativeUntil):
		return demandNegative
	case inFlight >= maxInFlight:
		return demandLimited
	}
	return demandFetch
}

// demandFetchResult is how a fetch ended (the result label of ambit_xds_on_demand_fetches_total).
type demandFetchResult string

const (
	fetchFound    demandFetchResult = "found"
	fetchNotFound demandFetchResult = "not_found"
	fetchTimeout  demandFetchResult = "timeout"
	fetchError    demandFetchResult = "error"
)

// classifyFetch names the outcome of a lookup; parent is the context the fetch ran under (its end is the
// agent stopping, not istiod's silence).
func classifyFetch(found bool, err error, parent context.Context) demandFetchResult {
	switch {
	case err == nil && found:
		return fetchFound
	case err == nil:
		return fetchNotFound
	case errors.Is(err, context.DeadlineExceeded) && parent.Err() == nil:
		return fetchTimeout
	}
	return fetchError
}

// onDemand runs the fetches: the I/O half of the decisions above.
type onDemand struct {
	lookup      func(ctx context.Context, key string) (bool, error) // xds.Source.Lookup
	timeout     time.Duration
	negativeTTL time.Duration
	maxInFlight int
	maxNegative int
	now         func() time.Time
	log         *slog.Logger

	requests *prometheus.CounterVec // by outcome: fetched, coalesced, negative_cached, limited
	fetches  *prometheus.CounterVec // by result
	inFlight prometheus.Gauge

	mu       sync.Mutex
	running  map[string]*demandCall // guarded by mu
	negative map[string]time.Time   // guarded by mu; key -> cached as unknown until
}

// demandCall is one fetch in flight; done closes when found is set.
type demandCall struct {
	done  chan struct{}
	found bool
}

func newOnDemand(lookup func(context.Context, string) (bool, error), timeout time.Duration, reg prometheus.Registerer, log *slog.Logger) *onDemand {
	d := &onDemand{lookup: lookup, timeout: timeout, negativeTTL: onDemandNegativeTTL, maxInFlight: onDemandMaxInFlight,
		maxNegative: onDemandMaxNegative, now: time.Now, log: log,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ambit_xds_on_demand_requests_total",
			Help: "Connections that needed an address the state lacked, by outcome (fetched, coalesced, negative_cached, limited)"},
			[]string{"outcome"}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ambit_xds_on_demand_fetches_total",
			Help: "On-demand xDS lookups sent to istiod, by result (found, not_found, timeout, error)"}, []string{"result"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ambit_xds_on_demand_in_flight",
			Help: "On-demand xDS lookups waiting for istiod"}),
		running: map[string]*demandCall{}, negative: map[string]time.Time{}}
	if reg != nil {
		reg.MustRegister(d.requests, d.fetches, d.inFlight)
	}
	return d
}

// fetch asks istiod for key once (coalesced, bounded, negatively cached) and reports whether istiod has it:
// the state holds it when this returns true. It waits at most the timeout, or until ctx ends.
func (d *onDemand) fetch(ctx context.Context, key string) bool {
	d.mu.Lock()
	now := d.now()
	c := d.running[key]
	until, cached := d.negative[key]
	if cached && !now.Before(until) {
		delete(d.negative, key)
	}
	switch decideDemand(now, demandEntry{inFlight: c != nil, negativeUntil: until}, len(d.running), d.maxInFlight) {
	case demandJoin:
		d.mu.Unlock()
		d.requests.WithLabelValues("coalesced").Inc()
		select {
		case <-c.done:
			return c.found
		case <-ctx.Done():
			return false
		}
	case demandNegative:
		d.mu.Unlock()
		d.requests.WithLabelValues("negative_cached").Inc()
		return false
	case demandLimited:
		d.mu.Unlock()
		d.requests.WithLabelValues("limited").Inc()
		d.log.Warn("on-demand lookup skipped: too many in flight", "key", key, "in_flight", d.maxInFlight)
		return false
	}
	c = &demandCall{done: make(chan struct{})}
	d.running[key] = c
	d.mu.Unlock()
	d.requests.WithLabelValues("fetched").Inc()
	d.inFlight.Inc()

	fctx, cancel := context.WithTimeout(ctx, d.timeout)
	found, err := d.lookup(fctx, key)
	cancel()
	res := classifyFetch(found, err, ctx)
	d.fetches.WithLabelValues(string(res)).Inc()
	d.inFlight.Dec()
	if res != fetchFound {
		d.log.Debug("on-demand lookup: address unknown", "key", key, "result", res, "err", err)
	}

	d.mu.Lock()
	delete(d.running, key)
	if res == fetchNotFound || res == fetchTimeout {
		d.rememberLocked(key, d.now().Add(d.negativeTTL))
	}
	c.found = found && err == nil
	d.mu.Unlock()
	close(c.done)
	return c.found
}

// rememberLocked caches key as unknown until until, keeping the cache within maxNegative entries: expired
// entries go first, then (a scan of more distinct addresses than the bound within one TTL) an arbitrary one.
// Requires d.mu.
func (d *onDemand) rememberLocked(key string, until time.Time) {
	if len(d.negative) >= d.maxNegative {
		now := d.now()
		for k, u := range d.negative {
			if !now.Before(u) {
				delete(d.negative, k)
			}
		}
		for k := range d.negative {
			if len(d.negative) < d.maxNegative {
				break
			}
			delete(d.negative, k)
		}
	}
	d.negative[key] = until
}

// negativeLen is the size of the negative cache (tests).
func (d *onDemand) negativeLen() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.negative)
}

// demandSource asks istiod for the source workload of an inbound connection when the state lacks it
// (on-demand xDS only), as ztunnel does before it labels and authorizes the connection. A connection
// through an east-west gateway has the gateway as its TCP peer: nothing to ask.
func (in *inputs) demandSource(ctx context.Context, d *delivery) {
	if in.demand == nil || d.remoteNetwork {
		return
	}
	src := d.src.Addr()
	if in.store.WorkloadByAddr(state.NetworkAddress{Network: in.network, Addr: src}) == nil {
		in.demand.fetch(ctx, addressKey(in.network, src))
	}
}
