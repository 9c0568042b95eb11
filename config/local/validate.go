package local

import (
	"fmt"
	"net/netip"
)

func parseIP(what, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s: invalid IP %q", what, s)
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%s: IP %q must not have a zone", what, s)
	}
	return a.Unmap(), nil
}

func validPort(what string, p int64) error {
	if p < 1 || p > 65535 {
		return fmt.Errorf("%s: port %d out of range 1-65535", what, p)
	}
	return nil
}
