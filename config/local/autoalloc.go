package local

import (
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"

	networkingapi "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
)

// Address auto-allocation for ServiceEntries without addresses, as istiod does for ambient (its IP
// allocation controller, on by default): each non-wildcard host of an eligible entry gets one IPv4
// address from 240.240.0.0/16 and one IPv6 address from 2001:2::/48 (istiod's default prefixes,
// PILOT_IP_AUTOALLOCATE_IPV4_PREFIX and _IPV6_PREFIX), so that the DNS proxy can answer the host and
// capture can route a connection to the address to the entry (through its waypoint when bound). An
// entry is eligible unless it has spec.addresses, its resolution is NONE (the original destination
// must be kept), or it opts out with the label networking.istio.io/enable-autoallocate-ip: "false".
// Addresses istiod already allocated (status.addresses, per host) are used as they are.
//
// istiod allocates in order and remembers its choice in the entry's status; a file has no status to
// write, so the compiler allocates deterministically instead: a host's slot is the FNV-1a hash of
// "<namespace>/<host>" in the 65,024 addresses of the IPv4 range that end in neither .0 nor .255, with
// collisions moved to the next free slot in the order of the sorted keys. A host keeps its address
// while the set of allocated hosts stays collision-free, whatever the order of the files.

// LabelEnableAutoallocateIP opts a ServiceEntry out of auto-allocation when "false".
const LabelEnableAutoallocateIP = "networking.istio.io/enable-autoallocate-ip"

var (
	autoAllocV4 = netip.MustParsePrefix("240.240.0.0/16")
	autoAllocV6 = netip.MustParsePrefix("2001:2::/48")
)

// autoAllocSlots is the number of allocatable addresses: 256 /24s of 254 addresses each.
const autoAllocSlots = 256 * 254

func shouldAutoAllocate(se *networkingv1.ServiceEntry) bool {
	if len(se.Spec.Addresses) > 0 || se.Spec.Resolution == networkingapi.ServiceEntry_NONE {
		return false
	}
	return !strings.EqualFold(se.Labels[LabelEnableAutoallocateIP], "false")
}

// slotAddrs returns the IPv4 and IPv6 addresses of slot s.
func slotAddrs(s uint32) (netip.Addr, netip.Addr) {
	third, fourth := byte(s/254), byte(s%254+1)
	v4 := autoAllocV4.Addr().As4()
	v4[2], v4[3] = third, fourth
	v6 := autoAllocV6.Addr().As16()
	v6[14], v6[15] = third, fourth
	return netip.AddrFrom4(v4), netip.AddrFrom16(v6)
}

// slotOf returns the slot of an IPv4 address in the range, if it is one.
func slotOf(a netip.Addr) (uint32, bool) {
	if !a.Is4() || !autoAllocV4.Contains(a) {
		return 0, false
	}
	b := a.As4()
	if b[3] == 0 || b[3] == 255 {
		return 0, false
	}
	return uint32(b[2])*254 + uint32(b[3]) - 1, true
}

// autoAllocate returns the addresses of every eligible host of ses, keyed by "<namespace>/<host>".
func autoAllocate(ses []*networkingv1.ServiceEntry) map[string][]netip.Addr {
	out := map[string][]netip.Addr{}
	used := map[uint32]bool{}
	var pending []string
	for _, se := range ses {
		if !shouldAutoAllocate(se) {
			continue
		}
		given := map[string][]netip.Addr{} // status.addresses by host ("" for all hosts)
		for _, a := range se.Status.Addresses {
			if a == nil {
				continue
			}
			ip, err := netip.ParseAddr(a.Value)
			if err != nil {
				continue
			}
			given[a.Host] = append(given[a.Host], ip)
		}
		for _, h := range se.Spec.Hosts {
			if h == "" || strings.HasPrefix(h, "*") {
				continue
			}
			key := se.Namespace + "/" + h
			if _, dup := out[key]; dup {
				continue
			}
			ips := append(given[h], given[""]...)
			if len(ips) == 0 {
				pending = append(pending, key)
				out[key] = nil
				continue
			}
			out[key] = ips
			for _, ip := range ips {
				if s, ok := slotOf(ip); ok {
					used[s] = true
				}
			}
		}
	}
	slices.Sort(pending)
	for _, key := range pending {
		if len(used) >= autoAllocSlots {
			delete(out, key) // the range is full: the host gets no address
			continue
		}
		h := fnv.New32a()
		h.Write([]byte(key))
		s := h.Sum32() % autoAllocSlots
		for used[s] {
			s = (s + 1) % autoAllocSlots
		}
		used[s] = true
		v4, v6 := slotAddrs(s)
		out[key] = []netip.Addr{v4, v6}
	}
	return out
}
