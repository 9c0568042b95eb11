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
	batch := make(map[string]*parkedAddress, len(u.Resources)) // converted, by name
	// items backs batch's entries: one allocation for the response instead of one per resource. Entries
	// that get parked are copied out (holdUnknownWaypointsLocked), so that nothing keeps items alive.
	items := make([]parkedAddress, 0, len(u.Resources))
	order := make([]string, 0, len(u.Resources))
	conv := convertAddresses(u.Resources)
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
		batch[r.Name] = &items[len(items)-1]
		order = append(order, r.Name)
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
		order, held = h.holdUnknownWaypointsLocked(batch, order, removedSvc)
		rej = append(rej, held...)
	}
	for _, name := range order {
		p := batch[name]
		if p.workload != nil {
			upd.Workloads = append(upd.Workloads, p.workload)
			// A name can only be one kind at a time; drop a service of the same name.
			if k, ok := serviceKey(name); ok {
				upd.RemoveServices = append(upd.RemoveServices, k)
			}
		} else {
			upd.Services = append(upd.Services, p.service)
			upd.RemoveWorkloads = append(upd.RemoveWorkloads, name)
		}
	}
	h.store.Apply(upd)
	return rej
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
func convertAddresses(rs []xdsclient.Resource) []converted {
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
			out[i].service.Intern(&d.in)
		}
		out[i].err = err
	}
	workers := min(runtime.GOMAXPROCS(0), len(rs)/parallelThreshold+1)
	if workers <= 1 {
		d := &decoder{}
		for i := range rs {
			one(d, i)
		}
		return out
	}
	var wg sync.WaitGroup
	chunk := (len(rs) + workers - 1) / workers
	for lo := 0; lo < len(rs); lo += chunk {
		hi := min(lo+chunk, len(rs))
		wg.Go(func() {
			d := &decoder{}
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
// earlier whose service is now known are admitted. It returns the names to apply, in order, and the
// rejections. Requires h.mu.
func (h *AddressHandler) holdUnknownWaypointsLocked(batch map[string]*parkedAddress, order []string,
	removed map[state.NamespacedHostname]bool) ([]string, []xdsclient.Rejection) {
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
	out := make([]string, 0, len(order))
	var waiting []string
	admit := func(name string, p *parkedAddress) {
		out = append(out, name)
		if p.service != nil {
			admitted[p.service.Key()] = true
		}
	}
	for _, name := range order {
		p := batch[name]
		if wp := p.waypoint(); wp != nil && wp.IsHostname() {
			waiting = append(waiting, name)
			continue
		}
		admit(name, p)
	}
	for name, p := range h.parked {
		batch[name] = p
		waiting = append(waiting, name)
	}
	// Admitting a service can make another entry's waypoint known; repeat until nothing changes (chains are
	// short: waypoints rarely have waypoints of their own).
	for changed := true; changed && len(waiting) > 0; {
		changed = false
		rest := waiting[:0]
		for _, name := range waiting {
			p := batch[name]
			if !known(p.waypoint().Hostname) {
				rest = append(rest, name)
				continue
			}
			if _, was := h.parked[name]; was {
				delete(h.parked, name)
				h.log.Info("admitting resource whose waypoint is now known", "name", name,
					"waypoint", p.waypoint().Hostname.String())
			}
			admit(name, p)
			changed = changed || p.service != nil
		}
		waiting = rest
	}
	var rej []xdsclient.Rejection
	for _, name := range waiting {
		if _, was := h.parked[name]; was {
			continue // reported when it arrived
		}
		p := *batch[name] // a copy: batch's entries share one array with the whole response
		h.parked[name] = &p
		rej = append(rej, xdsclient.Rejection{Name: name, Keep: true,
			Err: fmt.Errorf("waypoint %s: %w", p.waypoint().Hostname, ErrUnknownWaypoint)})
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
