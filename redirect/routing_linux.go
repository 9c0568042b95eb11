package redirect

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// policyRules are the rules "fwmark Capture/CaptureMask lookup RouteTable" for IPv4 and IPv6.
func policyRules(o Options) []*netlink.Rule {
	var out []*netlink.Rule
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		r := netlink.NewRule()
		r.Family = fam
		r.Mark = o.Marks.Capture
		mask := o.Marks.CaptureMask
		r.Mask = &mask
		r.Table = o.RouteTable
		r.Priority = o.RulePriority
		out = append(out, r)
	}
	return out
}

// localRoutes are "local 0.0.0.0/0 dev lo table RouteTable" and "local ::/0 dev lo table RouteTable".
func localRoutes(o Options, lo int) []*netlink.Route {
	return []*netlink.Route{
		{LinkIndex: lo, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Table: o.RouteTable, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST},
		{LinkIndex: lo, Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, Table: o.RouteTable, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST},
	}
}

// installRouting adds the policy rules and local routes that deliver captured (marked) packets locally. It is
// idempotent.
func installRouting(h *netlink.Handle, o Options) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	for _, r := range localRoutes(o, lo.Attrs().Index) {
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("add local route %s table %d: %w", r.Dst, o.RouteTable, err)
		}
	}
	for _, r := range policyRules(o) {
		if err := h.RuleAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add rule fwmark %#x/%#x lookup %d: %w", r.Mark, *r.Mask, r.Table, err)
		}
	}
	return nil
}

// removeRouting deletes what installRouting added; missing pieces are not errors.
func removeRouting(h *netlink.Handle, o Options) error {
	var errs []error
	for _, r := range policyRules(o) {
		for {
			err := h.RuleDel(r)
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
				break
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("delete rule fwmark %#x lookup %d: %w", r.Mark, r.Table, err))
				break
			}
		}
	}
	if lo, err := h.LinkByName("lo"); err == nil {
		for _, r := range localRoutes(o, lo.Attrs().Index) {
			if err := h.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete local route %s table %d: %w", r.Dst, o.RouteTable, err))
			}
		}
	}
	return errors.Join(errs...)
}

// podLink finds the local interface that routes to a, which must be a directly connected (gateway-less) route
// other than loopback: the pod's host-side veth.
func podLink(h *netlink.Handle, a net.IP) (netlink.Link, error) {
	routes, err := h.RouteGet(a)
	if err != nil {
		return nil, fmt.Errorf("route to %s: %w", a, err)
	}
	if len(routes) == 0 {
		return nil, fmt.Errorf("%w: no route to %s", ErrNotLocal, a)
	}
	r := routes[0]
	if r.Gw != nil || r.Type == unix.RTN_LOCAL {
		return nil, fmt.Errorf("%w: %s is routed via %v (type %d)", ErrNotLocal, a, r.Gw, r.Type)
	}
	l, err := h.LinkByIndex(r.LinkIndex)
	if err != nil {
		return nil, fmt.Errorf("link %d of route to %s: %w", r.LinkIndex, a, err)
	}
	if l.Attrs().Flags&net.FlagLoopback != 0 {
		return nil, fmt.Errorf("%w: %s is on loopback", ErrNotLocal, a)
	}
	return l, nil
}
