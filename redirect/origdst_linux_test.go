package redirect

import (
	"net/netip"
	"testing"
)

func TestOriginalDstDecision(t *testing.T) {
	ap := netip.MustParseAddrPort
	client, vip, endpoint := ap("10.244.0.2:40000"), ap("10.96.0.10:80"), ap("10.244.1.2:8080")
	for _, tc := range []struct {
		name              string
		local, remote, ct netip.AddrPort
		ctOK              bool
		want              netip.AddrPort
	}{
		{"untracked: the local address", endpoint, client, netip.AddrPort{}, false, endpoint},
		{"DNAT before capture: conntrack's pre-NAT destination", endpoint, client, vip, true, vip},
		{"tracked without NAT: the same as the local address", endpoint, client, endpoint, true, endpoint},
		// conntrack saw only the agent's side and made it the originator: its answer names the client.
		{"picked up from the socket's own packets: the local address", endpoint, client, client, true, endpoint},
		{"IPv6 picked up from the socket's own packets", ap("[fd00:244:1::2]:8080"), ap("[fd00:244::2]:40000"),
			ap("[fd00:244::2]:40000"), true, ap("[fd00:244:1::2]:8080")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := originalDst(tc.local, tc.remote, tc.ct, tc.ctOK); got != tc.want {
				t.Errorf("originalDst(%s, %s, %s, %v) = %s, want %s", tc.local, tc.remote, tc.ct, tc.ctOK, got, tc.want)
			}
		})
	}
}
