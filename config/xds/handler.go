package xds

import (
	"context"
	"runtime"

	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/xdsclient"
)

var (
	_ xdsclient.Handler = (*AddressHandler)(nil)
	_ xdsclient.Handler = (*AuthorizationHandler)(nil)
)

// AddressHandlerOptions configures NewAddressHandler.
type AddressHandlerOptions struct {
	// Store receives the converted workloads and services. Required.
	Store *state.Store
	// AllowUnknownWaypoints admits workloads and services whose waypoint hostname names no known service,
	// as ztunnel does. Set it for on-demand subscriptions, where the waypoint service arrives only when asked
	// for. By default such resources are rejected and parked until the service is known.
	AllowUnknownWaypoints bool
	// Logger; nil discards.
	Logger *slog.Logger
}

// AddressHandler applies istio.workload.Address responses to a Store. Each response becomes one
// state.Update, so readers see all of it or none of it.
type AddressHandler struct {
	store    *state.Store
	log      *slog.Logger
	allowWPs bool

	mu sync.Mutex
	// parked holds resources rejected only because their waypoint service is not known yet, by name.
	parked map[string]*parkedAddress // guarded by mu
	// interners are the conversion goroutines' string interners (state.NewLocalInterner), one per CPU,
	// kept across responses so that later updates share the copies earlier ones made.
	interners []*state.Interner // guarded by mu
}

type parkedAddress struct {
	workload *state.Workload
	service  *state.Service
}

func (p *parkedAddress) waypoint() *state.GatewayAddress {
	if p.workload != nil {
		return p.workload.Waypoint
	}
	return p.service.Waypoint
}

// NewAddressHandler returns a handler for type.googleapis.com/istio.workload.Address.
func NewAddressHandler(opts AddressHandlerOptions) *AddressHandler {
	h := &AddressHandler{store: opts.Store, log: opts.Logger, allowWPs: opts.AllowUnknownWaypoints,
		parked: map[string]*parkedAddress{}}
	for range max(1, runtime.GOMAXPROCS(0)) {
		h.interners = append(h.interners, state.NewLocalInterner())
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	return h
}

// Parked returns the names of resources waiting for their waypoint service.
func (h *AddressHandler) Parked() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, 0, len(h.parked))
	for n := range h.parked {
		out = append(out, n)
	}
	return out
}

// HandleUpdate converts u, applies the valid part atomically and returns the rejected resources.
func (h *AddressHandler) HandleUpdate(_ context.Context, u *xdsclient.Update) []xdsclient.Rejection {
	h.mu.Lock()
	defer h.mu.Unlock()
	var rej []xdsclient.Rejection
	dups := duplicates(u.Resources)
	upd := &state.Update{}
	// batch holds the converted resources in order, items their contents: two arrays for the response
	// instead of a map by name and an allocation per resource. Entries that get parked are copied out
	// (holdUnknownWaypointsLocked), so that nothing keeps the arrays alive.
	batch := make([]batchEntry, 0, len(u.Resources))
	items := make([]parkedAddress, 0, len(u.Resources))
	conv := convertAddresses(u.Resources, h.interners)
	for i := range u.Resources {
		r := &u.Resources[i]
		if reported, dup := dups[r.Name]; dup {
			if !reported {
				dups[r.Name] = true
				rej = append(rej, h.reject(r.Name, ErrDuplicate))
			}
			continue
		}
		w, s, err := conv[i].workload, conv[i].service, conv[i].err
		if err != nil {
			rej = append(rej, h.reject(r.Name, err))
			continue
		}
		// A newer version supersedes whatever was parked under the name.
		delete(h.parked, r.Name)
		items = append(items, parkedAddress{workload: w, service: s})
		batch = append(batch, batchEntry{name: r.Name, p: &items[len(items)-1]})
	}
	removedSvc := map[state.NamespacedHostname]bool{}
	for _, name := range u.Removed {
		delete(h.parked, name)
		// As ztunnel: a removed name is a workload UID, or else "<namespace>/<hostname>" of a service.
		// Removing an unknown key is a no-op, so both are attempted.
		upd.RemoveWorkloads = append(upd.RemoveWorkloads, name)
		if k, ok := serviceKey(name); ok {
			upd.RemoveServices = append(upd.RemoveServices, k)
			removedSvc[k] = true
		}
	}

	if !h.allowWPs {
		var held []xdsclient.Rejection
		batch, held = h.holdUnknownWaypointsLocked(batch, removedSvc)
		rej = append(rej, held...)
	}
	upd.Workloads = make([]*state.Workload, 0, len(batch))
	for _, e := range batch {
		if e.p.workload != nil {
			upd.Workloads = append(upd.Workloads, e.p.workload)
			// A name can only be one kind at a time; drop a service of the same name.
			if k, ok := serviceKey(e.name); ok {
				upd.RemoveServices = append(upd.RemoveServices, k)
			}
		} else {
			upd.Services = append(upd.Services, e.p.service)
			upd.RemoveWorkloads = append(upd.RemoveWorkloads, e.name)
		}
	}
	h.store.Apply(upd)
	return rej
}

// batchEntry is one converted resource of a response, or one parked earlier.
type batchEntry struct {
	name string
	p    *parkedAddress
}

// converted is the outcome of decoding and converting one Address resource.
type converted struct {
	workload *state.Workload
	service  *state.Service
	err      error
}

// parallelThreshold is the response size from which decoding and conversion are spread over the CPUs;
// below it the goroutines cost more than they save.
var parallelThreshold = 2048

// convertAddresses decodes and converts every resource of rs, in parallel for large responses (istiod's
// first response holds the whole mesh). It is pure: the results are indexed like rs. Each goroutine has its
// own decoder (fast path and string interner); what the fast path declines takes the generic path.
func convertAddresses(rs []xdsclient.Resource, interners []*state.Interner) []converted {
	out := make([]converted, len(rs))
	one := func(d *decoder, i int) {
		r := &rs[i]
		if r.Body.GetTypeUrl() == AddressTypeURL {
			if w, ok := d.address(r.Name, r.Body.GetValue()); ok {
				out[i].workload = w
				r.Body = nil
				return
			}
		}
		a, err := DecodeAddress(r.Body)
		if err == nil {
			out[i].workload, out[i].service, err = ConvertAddress(r.Name, a)
		}
		// The body is not needed again (xdsclient.Handler allows dropping it): the collector can take
		// back a large first response while the rest of it is converted.
		r.Body = nil
		if out[i].service != nil {
			out[i].service.Intern(d.in)
		}
		out[i].err = err
	}
	workers := min(len(interners), len(rs)/parallelThreshold+1)
	if workers <= 1 {
		d := &decoder{in: interners[0]}
		for i := range rs {
			one(d, i)
		}
		return out
	}
	var wg sync.WaitGroup
	chunk := (len(rs) + workers - 1) / workers
	for k, lo := 0, 0; lo < len(rs); k, lo = k+1, lo+chunk {
		hi := min(lo+chunk, len(rs))
		wg.Go(func() {
			d := &decoder{in: interners[k]}
			for i := lo; i < hi; i++ {
				one(d, i)
			}
		})
	}
	wg.Wait()
	return out
}

// reject reports a resource that failed conversion. The previous version of it, if any, keeps serving;
// then the rejection carries Keep so that the client keeps tracking the name and a later removal still
// reaches the store (otherwise the name is forgotten, as ztunnel does, and resent after a reconnect).
func (h *AddressHandler) reject(name string, err error) xdsclient.Rejection {
	held := h.store.Workload(name) != nil
	if k, ok := serviceKey(name); ok && !held {
		held = h.store.Service(k) != nil
	}
	return xdsclient.Rejection{Name: name, Err: err, Keep: held}
}

// holdUnknownWaypointsLocked decides which entries may enter the store: those without a waypoint hostname,
// and those whose waypoint service is in the store (and not removed by this response) or admitted in this
// round. Entries of batch that must wait move to h.parked and are reported with Keep; entries parked
// earlier whose service is now known are admitted. It returns the entries to apply, in order (reusing
// batch's array), and the rejections. Requires h.mu.
func (h *AddressHandler) holdUnknownWaypointsLocked(batch []batchEntry,
	removed map[state.NamespacedHostname]bool) ([]batchEntry, []xdsclient.Rejection) {
	admitted := map[state.NamespacedHostname]bool{}
	inStore := map[state.NamespacedHostname]bool{}
	known := func(k state.NamespacedHostname) bool {
		if admitted[k] {
			return true
		}
		v, ok := inStore[k]
		if !ok {
			v = !removed[k] && h.store.Service(k) != nil
			inStore[k] = v
		}
		return v
	}
	out := batch[:0] // admitted entries never outrun the ones read
	var waiting []batchEntry
	admit := func(e batchEntry) {
		out = append(out, e)
		if e.p.service != nil {
			admitted[e.p.service.Key()] = true
		}
	}
	for _, e := range batch {
		if wp := e.p.waypoint(); wp != nil && wp.IsHostname() {
			waiting = append(waiting, e)
			continue
		}
		admit(e)
	}
	for name, p := range h.parked {
		waiting = append(waiting, batchEntry{name: name, p: p})
	}
	// Admitting a service can make another entry's waypoint known; repeat until nothing changes (chains are
	// short: waypoints rarely have waypoints of their own).
	for changed := true; changed && len(waiting) > 0; {
		changed = false
		rest := waiting[:0]
		for _, e := range waiting {
			if !known(e.p.waypoint().Hostname) {
				rest = append(rest, e)
				continue
			}
			if _, was := h.parked[e.name]; was {
				delete(h.parked, e.name)
				h.log.Info("admitting resource whose waypoint is now known", "name", e.name,
					"waypoint", e.p.waypoint().Hostname.String())
			}
			admit(e)
			changed = changed || e.p.service != nil
		}
		waiting = rest
	}
	var rej []xdsclient.Rejection
	for _, e := range waiting {
		if _, was := h.parked[e.name]; was {
			continue // reported when it arrived
		}
		p := *e.p // a copy: batch's entries share one array with the whole response
		h.parked[e.name] = &p
		rej = append(rej, xdsclient.Rejection{Name: e.name, Keep: true,
			Err: fmt.Errorf("waypoint %s: %w", e.p.waypoint().Hostname, ErrUnknownWaypoint)})
	}
	return out, rej
}

// serviceKey parses a service resource name "<namespace>/<hostname>" (hostname without "/").
func serviceKey(name string) (state.NamespacedHostname, bool) {
	ns, host, ok := strings.Cut(name, "/")
	if !ok || ns == "" || host == "" || strings.Contains(host, "/") {
		return state.NamespacedHostname{}, false
	}
	return state.NamespacedHostname{Namespace: ns, Hostname: host}, true
}

// duplicates returns the names that occur more than once in rs (mapped to false: not reported yet), or
// nil.
func duplicates(rs []xdsclient.Resource) map[string]bool {
	seen := make(map[string]struct{}, len(rs))
	var dups map[string]bool
	for i := range rs {
		if _, ok := seen[rs[i].Name]; ok {
			if dups == nil {
				dups = map[string]bool{}
			}
			dups[rs[i].Name] = false
			continue
		}
		seen[rs[i].Name] = struct{}{}
	}
	return dups
}

// AuthorizationHandler applies istio.security.Authorization responses to a Store, one atomic batch per
// response.
type AuthorizationHandler struct {
	store *state.Store
	log   *slog.Logger
}

// NewAuthorizationHandler returns a handler for type.googleapis.com/istio.security.Authorization.
func NewAuthorizationHandler(store *state.Store, logger *slog.Logger) *AuthorizationHandler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &AuthorizationHandler{store: store, log: logger}
}

// HandleUpdate converts u, applies the valid part atomically and returns the rejected resources.
func (h *AuthorizationHandler) HandleUpdate(_ context.Context, u *xdsclient.Update) []xdsclient.Rejection {
	var rej []xdsclient.Rejection
	dups := duplicates(u.Resources)
	upd := &state.Update{RemovePolicies: u.Removed}
	for i := range u.Resources {
		r := &u.Resources[i]
		if reported, dup := dups[r.Name]; dup {
			if !reported {
				dups[r.Name] = true
				rej = append(rej, xdsclient.Rejection{Name: r.Name, Err: ErrDuplicate, Keep: h.store.Policy(r.Name) != nil})
			}
			continue
		}
		a, err := DecodeAuthorization(r.Body)
		if err == nil {
			var p *state.Authorization
			if p, err = ConvertAuthorization(r.Name, a); err == nil {
				upd.Policies = append(upd.Policies, p)
				continue
			}
			if p := DenyAll(r.Name, a); p != nil {
				// Fail closed: an invalid DENY never denies less. It is still reported (NACK).
				h.log.Warn("invalid DENY policy enforced as deny-all for its selection", "policy", r.Name, "err", err)
				upd.Policies = append(upd.Policies, p)
				rej = append(rej, xdsclient.Rejection{Name: r.Name, Err: err, Keep: true})
				continue
			}
		}
		rej = append(rej, xdsclient.Rejection{Name: r.Name, Err: err, Keep: h.store.Policy(r.Name) != nil})
	}
	h.store.Apply(upd)
	return rej
}
