package redirect

import (
	"net/netip"
	"slices"
	"strings"
)

// enrolledList turns an index of enrolled addresses into Pods sorted by UID, each with sorted addresses; pods
// left without addresses are omitted.
func enrolledList(pods map[string][]netip.Addr, names map[string]string) []Pod {
	out := make([]Pod, 0, len(pods))
	for uid, addrs := range pods {
		if len(addrs) == 0 {
			continue // every address moved to other pods
		}
		ips := slices.Clone(addrs)
		slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
		out = append(out, Pod{UID: uid, Name: names[uid], IPs: ips})
	}
	slices.SortFunc(out, func(a, b Pod) int { return strings.Compare(a.UID, b.UID) })
	return out
}
